"""Image bytes checked before anything keeps them: fully decodable, of a size inside the configured limits
(params.yaml ingest.min_image_size..max_image_size), never a decompression bomb."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError


@dataclass
class ImageLimits:
    min_size: int = 8
    max_size: int = 16384
    max_bytes: int = 64 * 2**20  # one archive member or cell, checked before it is read

    @classmethod
    def from_params(cls, ingest: dict[str, Any]) -> "ImageLimits":
        return cls(ingest["min_image_size"], ingest["max_image_size"], ingest["max_member_bytes"])


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of fully decodable image bytes; raises ValueError naming the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.size
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
