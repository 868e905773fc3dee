"""Ingest video-caption pairs into the video corpus: WebVid's results CSV + a folder of clips.

The CSV has ``videoid`` and ``name`` (the caption); other columns (contentUrl, duration,
page_dir, ...) go to ``meta``. The clip of a row is ``<videos>/<videoid>.mp4``. Clips are kept
as their original encoded bytes; every frame is decoded once here to prove they are readable.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from vimi.data.schema import GROUND_TRUTH_COLUMNS, VIDEO_SCHEMA
from vimi.errors import VimiError
from vimi.io.ingest import run_ingest
from vimi.io.video import VideoDecodeError, probe
from vimi.io.lance_io import IngestReport, QuarantineRow
from vimi.parallel import ordered_map
from vimi.progress import progress

FORMATS = ("webvid",)
REQUIRED_COLUMNS = ("videoid", "name")
GROUND_TRUTH = {c: None for c in GROUND_TRUTH_COLUMNS}


def _csv_header(csv_path: Path) -> list[str]:
    """The CSV's columns; a clear error when it is missing or not WebVid's."""
    if not csv_path.is_file():
        raise VimiError(f"WebVid CSV {csv_path} does not exist.")
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as handle:
        columns = csv.DictReader(handle).fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise VimiError(f"{csv_path} lacks the WebVid column(s) {', '.join(missing)}; "
                        f"its header is: {', '.join(columns) or '(empty)'}.")
    return columns


def _csv_rows(csv_path: Path) -> Iterator[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as handle:
        yield from csv.DictReader(handle)


def _check(record: dict[str, str], line: int, videos_dir: Path, source: str) -> tuple[dict[str, Any] | QuarantineRow, Path | None]:
    """Everything that can be said of a CSV row before decoding its clip."""
    videoid = (record.get("videoid") or "").strip()
    key = videoid or f"line {line}"
    if not videoid:
        return QuarantineRow(source, key, "missing_id", "empty videoid"), None
    caption = (record.get("name") or "").strip()
    if not caption:
        return QuarantineRow(source, key, "empty_caption", "caption (name) is empty or whitespace"), None
    candidate = (videos_dir / f"{videoid}.mp4")
    try:
        inside = candidate.resolve().is_relative_to(videos_dir.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside or "/" in videoid or "\\" in videoid:
        return QuarantineRow(source, key, "unsafe_path", f"videoid {videoid!r} points outside {videos_dir}"), None
    if not candidate.is_file():
        return QuarantineRow(source, key, "missing_video", f"{candidate} does not exist"), None
    meta = {k: v for k, v in record.items() if k not in REQUIRED_COLUMNS and k is not None}
    return {"id": videoid, "caption": caption, "meta": meta, "line": line}, candidate


def _probe_row(item: tuple[dict[str, Any] | QuarantineRow, Path | None], source: str,
               limits: tuple[int, int]) -> dict | QuarantineRow:
    partial, path = item
    if isinstance(partial, QuarantineRow):
        return partial
    key = partial["id"]
    data = path.read_bytes()
    try:
        info = probe(data)
    except VideoDecodeError as exc:
        return QuarantineRow(source, key, "undecodable_video", f"{path.name}: {exc}")
    min_frames, max_frames = limits
    if info.num_frames < min_frames:
        return QuarantineRow(source, key, "too_short_video",
                             f"{info.num_frames} frames, at least {min_frames} needed")
    if info.num_frames > max_frames:
        return QuarantineRow(source, key, "too_long_video", f"{info.num_frames} frames, at most {max_frames}")
    return {"id": key, "video": data, "video_format": path.suffix.lstrip(".").lower(),
            "caption": partial["caption"], "num_frames": info.num_frames, "fps": info.fps,
            "height": info.height, "width": info.width, "source": source,
            "meta": json.dumps(partial["meta"] | {"file": path.name}, sort_keys=True), **GROUND_TRUTH}


def webvid_candidates(csv_path: Path, videos_dir: Path, limits: tuple[int, int],
                      workers: int = 2) -> Iterator[dict | QuarantineRow]:
    source = f"webvid:{csv_path}"
    checked = (_check(r, i + 2, videos_dir, source) for i, r in enumerate(_csv_rows(csv_path)))
    # Decoding dominates; PyAV releases the GIL, so threads overlap it.
    yield from progress(ordered_map(lambda item: _probe_row(item, source, limits), checked, max(1, workers)),
                        desc="webvid clips", unit="clip")


def video_candidates(fmt: str, csv_path: Path, videos_dir: Path,
                     ingest_params: dict[str, Any]) -> Iterator[dict | QuarantineRow]:
    """Candidate rows of one source; a bad CSV header or missing folder is raised here."""
    if fmt not in FORMATS:
        raise VimiError(f"Unknown video format {fmt!r}; use one of: {', '.join(FORMATS)}.")
    _csv_header(csv_path)
    if not videos_dir.is_dir():
        raise VimiError(f"Video folder {videos_dir} does not exist.")
    limits = (int(ingest_params.get("min_video_frames", 8)), int(ingest_params.get("max_video_frames", 100000)))
    return webvid_candidates(csv_path, videos_dir, limits)


def ingest_videos(fmt: str, csv_path: Path, videos_dir: Path, uri: Path, quarantine_uri: Path,
                  ingest_params: dict[str, Any], mode: str = "append") -> IngestReport:
    """Ingest a WebVid-style CSV + clip folder into the video corpus at ``uri`` as one new version."""
    candidates = video_candidates(fmt, csv_path, videos_dir, ingest_params)
    return run_ingest(str(uri), uri, quarantine_uri, VIDEO_SCHEMA, candidates,
                      ingest_params["batch_rows"], mode=mode)
