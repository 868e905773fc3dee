"""The video suite (data/videos.lance, data/eval_videos.lance): schema, unique ids, non-empty captions,
decodable clips, frame counts and sizes in range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vimi.config import dataset_location
from vimi.data.schema import RAW_FORMAT, VIDEO_SCHEMA
from vimi.io.video import VideoDecodeError, decode_video, probe
from vimi.validation.common import (
    ValidationReport,
    _common_table_expectations,
    _setting,
    _validate,
)

VIDEO_FORMATS = [RAW_FORMAT, "mp4", "webm", "mkv", "avi", "mov"]


def validate_videos(uri: Path, params: dict[str, Any], suite: str = "videos") -> ValidationReport:
    import great_expectations.expectations as gxe

    f_lo, f_hi = params["ingest"]["min_video_frames"], params["ingest"]["max_video_frames"]

    def table() -> list:
        return [
            *_common_table_expectations(params),
            gxe.ExpectColumnValuesToBeInSet(column="video_format", value_set=VIDEO_FORMATS),
            gxe.ExpectColumnValuesToBeBetween(
                column="num_frames",
                min_value=f_lo,
                max_value=f_hi,
                meta=_setting("ingest.min_video_frames", "ingest.max_video_frames"),
            ),
            gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=0, strict_min=True, max_value=1000),
        ]

    def decode(row: dict) -> dict:
        try:
            if row["video_format"] == RAW_FORMAT:
                shape = decode_video(row["video"], RAW_FORMAT, row["num_frames"], row["height"], row["width"]).shape
            else:  # count frames without holding a long clip in memory
                info = probe(row["video"])
                shape = (info.num_frames, info.height, info.width)
            ok = True
        except (VideoDecodeError, ValueError, TypeError):
            shape, ok = (-1, -1, -1), False
        return {
            "id": row["id"],
            "video_decodable": ok,
            "num_frames": row["num_frames"],
            "height": row["height"],
            "width": row["width"],
            "decoded_frames": shape[0],
            "decoded_height": shape[1],
            "decoded_width": shape[2],
        }

    def media() -> list:
        return [
            gxe.ExpectColumnValuesToBeInSet(column="video_decodable", value_set=[True]),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="num_frames", column_B="decoded_frames"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"),
        ]

    return _validate(
        suite,
        dataset_location(uri),
        VIDEO_SCHEMA,
        ["id", "caption", "video_format", "num_frames", "fps", "width", "height"],
        table,
        ["id", "video", "video_format", "num_frames", "height", "width"],
        decode,
        media,
        params,
    )
