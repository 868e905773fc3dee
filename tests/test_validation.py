"""Great Expectations suites: pass on good data, fail with the right expectations on bad data."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import lance
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vimi.data.schema import RAW_FORMAT, VIDEO_SCHEMA
from vimi.io import lance_io
from vimi.memory.schema import GROUND_TRUTH_COLUMNS, MEMORY_SCHEMA
from vimi.pipeline import generate_world, validate_dataset


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def memory_row(i: str, caption: str = "a caption", image: bytes | None = None, width: int = 32, height: int = 32):
    return {
        "id": i,
        "image": image if image is not None else png(32, 32),
        "caption": caption,
        "source": "test",
        "width": width,
        "height": height,
        "meta": "{}",
        **{c: None for c in GROUND_TRUTH_COLUMNS},
    }


def failed(report) -> dict[tuple[str, str | None], int | None]:
    return {(c.expectation, c.column): c.unexpected_count for c in report.checks if not c.success}


def test_suites_pass_on_spriteworld(settings):
    generate_world(settings)
    for which in ("memory", "videos", "eval_videos"):
        report = validate_dataset(settings, which)
        assert report.success, report.to_text()
        assert report.decoded_rows == report.rows > 0


def test_memory_suite_fails_on_bad_rows(settings):
    rows = [
        memory_row("a"),
        memory_row("a"),  # duplicate id
        memory_row("c", caption="  "),  # whitespace caption
        memory_row("d", image=b"not an image"),  # undecodable
        memory_row("e", width=33),  # declared size disagrees with the pixels
        memory_row("f", image=png(4, 4), width=4, height=4),  # too small
    ]
    uri = settings.path("memory")
    lance_io.write_batches(uri, lance_io.batches_of(rows, MEMORY_SCHEMA, 100), MEMORY_SCHEMA, "append")
    report = validate_dataset(settings, "memory")
    assert not report.success
    assert failed(report) == {
        ("expect_column_values_to_be_unique", "id"): 2,
        ("expect_column_values_to_not_match_regex", "caption"): 1,
        ("expect_column_values_to_be_between", "width"): 1,  # 4 < min_image_size 8
        ("expect_column_values_to_be_between", "height"): 1,
        ("expect_column_values_to_be_in_set", "image_decodable"): 1,
        ("expect_column_pair_values_to_be_equal", "width=decoded_width"): 2,  # e (33≠32) and d (-1)
        ("expect_column_pair_values_to_be_equal", "height=decoded_height"): 1,  # d
    }


def test_video_suite_fails_on_bad_rows(settings):
    good = np.zeros((8, 16, 16, 3), np.uint8).tobytes()
    base = {
        "caption": "x",
        "video_format": RAW_FORMAT,
        "num_frames": 8,
        "fps": 8.0,
        "height": 16,
        "width": 16,
        "source": "test",
        "meta": "{}",
        "split": None,
        "subject_id": None,
        "subject_name": None,
        "shape": None,
        "color1": None,
        "color2": None,
        "pattern": None,
        "scene": None,
        "action": None,
        "subject_split": None,
        "trajectory": None,
    }
    rows = [
        base | {"id": "ok", "video": good},
        base | {"id": "short", "video": good[: len(good) // 2]},  # raw bytes disagree with the shape
        base | {"id": "few", "video": good[: len(good) // 2], "num_frames": 4},  # fewer than 8 frames
        base | {"id": "fmt", "video": good, "video_format": "gif89"},
        base | {"id": "fps", "video": good, "fps": 0.0},
    ]
    lance_io.write_batches(settings.path("videos"), lance_io.batches_of(rows, VIDEO_SCHEMA, 10), VIDEO_SCHEMA, "append")
    report = validate_dataset(settings, "videos")
    bad = failed(report)
    assert bad[("expect_column_values_to_be_between", "num_frames")] == 1
    assert bad[("expect_column_values_to_be_in_set", "video_format")] == 1
    assert bad[("expect_column_values_to_be_between", "fps")] == 1
    assert bad[("expect_column_values_to_be_in_set", "video_decodable")] == 2  # "short", "fmt"


def test_schema_drift_is_reported(settings):
    table = pa.table({"id": ["a"], "caption": ["hello"]})
    lance.write_dataset(table, str(settings.path("memory")))
    report = validate_dataset(settings, "memory")
    assert not report.success
    schema = report.checks[0]
    assert schema.expectation == "schema_matches_vimi" and "missing column image" in schema.examples


def test_cli_exit_codes_and_json(project, settings):
    generate_world(settings, parts=("catalog", "memory"))
    ok = subprocess.run([sys.executable, "-m", "vimi", "validate", "memory", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["success"] is True
    rows = [memory_row("mem-0000000", caption="")]
    lance_io.write_batches(
        settings.path("memory"), lance_io.batches_of(rows, MEMORY_SCHEMA, 10), MEMORY_SCHEMA, "append"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "vimi", "validate", "memory", "--report", str(project / "r.json")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "memory suite FAILED" in bad.stdout and "FAIL expect_column_values_to_be_unique [id]" in bad.stdout
    assert json.loads((project / "r.json").read_text())["failed"] == 2
    missing = subprocess.run([sys.executable, "-m", "vimi", "validate", "videos"], capture_output=True, text=True)
    assert missing.returncode == 2 and "No videos dataset" in missing.stderr


@pytest.mark.parametrize("sample,expected", [(0, 240), (10, 10), (1000, 240)])
def test_decode_sample(settings, sample, expected):
    generate_world(settings, parts=("catalog", "memory"))
    settings.params["validate"]["decode_sample"] = sample
    assert validate_dataset(settings, "memory").decoded_rows == expected
