"""The memory suite (data/memory.lance): schema, unique ids, non-empty captions, decodable images of declared size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vimi.config import dataset_location
from vimi.io.images import image_size
from vimi.memory.schema import MEMORY_SCHEMA
from vimi.validation.common import (
    ValidationReport,
    _common_table_expectations,
    _validate,
)


def validate_memory(uri: Path, params: dict[str, Any]) -> ValidationReport:
    import great_expectations.expectations as gxe

    def table() -> list:
        return [*_common_table_expectations(params), gxe.ExpectColumnValuesToNotBeNull(column="source")]

    def decode(row: dict) -> dict:
        try:
            width, height = image_size(row["image"])
            ok = True
        except (ValueError, TypeError):
            width = height = -1
            ok = False
        return {
            "id": row["id"],
            "image_decodable": ok,
            "width": row["width"],
            "height": row["height"],
            "decoded_width": width,
            "decoded_height": height,
        }

    def media() -> list:
        return [
            gxe.ExpectColumnValuesToBeInSet(column="image_decodable", value_set=[True]),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"),
        ]

    return _validate(
        "memory",
        dataset_location(uri),
        MEMORY_SCHEMA,
        ["id", "caption", "source", "width", "height"],
        table,
        ["id", "image", "width", "height"],
        decode,
        media,
        params,
    )
