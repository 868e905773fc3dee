"""Ingest video-caption pairs into the video corpus: WebVid's results CSV + a folder of clips.

The CSV has ``videoid`` and ``name`` (the caption); other columns (contentUrl, duration,
page_dir, ...) go to ``meta``. The clip of a row is ``<videos>/<videoid>.mp4``. Clips are kept
as their original encoded bytes; every frame is decoded once here to prove they are readable.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vimi.data.schema import GROUND_TRUTH_COLUMNS, VIDEO_SCHEMA
from vimi.errors import VimiError
from vimi.io.ingest import run_ingest
from vimi.io.lance_io import IngestReport, QuarantineRow
from vimi.io.video import VideoDecodeError, probe
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
        raise VimiError(
            f"{csv_path} lacks the WebVid column(s) {', '.join(missing)}; "
            f"its header is: {', '.join(columns) or '(empty)'}."
        )
    return columns


def _csv_rows(csv_path: Path) -> Iterator[dict[str, str] | QuarantineRow]:
    """The CSV's records; a record the csv module refuses (a field over its size limit, a NUL byte)
    is a quarantine row, and reading goes on with the next one."""
    source = f"webvid:{csv_path}"
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield QuarantineRow(source, f"line {reader.line_num}", "bad_csv_row", str(exc))
                continue
            yield record


def _check(
    record: dict[str, str] | QuarantineRow, line: int, videos_dir: Path, source: str
) -> tuple[dict[str, Any] | QuarantineRow, Path | None]:
    """Everything that can be said of a CSV row before decoding its clip."""
    if isinstance(record, QuarantineRow):
        return record, None
    videoid = (record.get("videoid") or "").strip()
    key = videoid or f"line {line}"
    if not videoid:
        return QuarantineRow(source, key, "missing_id", "empty videoid"), None
    if "\0" in videoid or len(f"{videoid}.mp4".encode()) > 255:  # no file system names such a file
        return QuarantineRow(
            source,
            key[:300],
            "bad_videoid",
            f"videoid of {len(videoid)} characters{' with a NUL byte' if chr(0) in videoid else ''} cannot name a file",
        ), None
    caption = (record.get("name") or "").strip()
    if not caption:
        return QuarantineRow(source, key, "empty_caption", "caption (name) is empty or whitespace"), None
    candidate = videos_dir / f"{videoid}.mp4"
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


@dataclass(frozen=True)
class VideoLimits:
    """What an ingested clip may be (params.yaml ingest): beyond it, a quarantine row with the reason."""

    min_frames: int
    max_frames: int
    max_pixels: int
    max_bytes: int
    min_side: int
    max_side: int

    @classmethod
    def from_params(cls, ingest: dict[str, Any]) -> "VideoLimits":
        return cls(
            int(ingest["min_video_frames"]),
            int(ingest["max_video_frames"]),
            int(ingest["max_video_pixels"]),
            int(ingest["max_video_bytes"]),
            int(ingest["min_image_size"]),
            int(ingest["max_image_size"]),
        )


def _probe_row(
    item: tuple[dict[str, Any] | QuarantineRow, Path | None], source: str, limits: VideoLimits
) -> dict | QuarantineRow:
    partial, path = item
    if isinstance(partial, QuarantineRow):
        return partial
    key = partial["id"]
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:  # checked before reading: a row holds the whole file
            return QuarantineRow(
                source, key, "video_too_large", f"{path.name}: {size:,} bytes, at most {limits.max_bytes:,}"
            )
        data = path.read_bytes()
    except OSError as exc:  # permissions, a file gone since it was listed
        return QuarantineRow(source, key, "unreadable_video", f"{path.name}: {exc.strerror or exc}")
    try:
        info = probe(data)
    except VideoDecodeError as exc:
        return QuarantineRow(source, key, "undecodable_video", f"{path.name}: {exc}")
    if info.num_frames < limits.min_frames:
        return QuarantineRow(
            source, key, "too_short_video", f"{info.num_frames} frames, at least {limits.min_frames} needed"
        )
    if info.num_frames > limits.max_frames:
        return QuarantineRow(source, key, "too_long_video", f"{info.num_frames} frames, at most {limits.max_frames}")
    if info.height * info.width > limits.max_pixels:
        return QuarantineRow(
            source, key, "video_too_large", f"{info.width}×{info.height} frames, at most {limits.max_pixels:,} pixels"
        )
    if not (limits.min_side <= min(info.height, info.width) and max(info.height, info.width) <= limits.max_side):
        return QuarantineRow(
            source,
            key,
            "bad_frame_size",
            f"{info.width}×{info.height}, each side must be {limits.min_side}..{limits.max_side}",
        )
    if not info.fps > 0:
        return QuarantineRow(source, key, "bad_fps", f"{path.name}: frame rate {info.fps}")
    return {
        "id": key,
        "video": data,
        "video_format": path.suffix.lstrip(".").lower(),
        "caption": partial["caption"],
        "num_frames": info.num_frames,
        "fps": info.fps,
        "height": info.height,
        "width": info.width,
        "source": source,
        "meta": json.dumps(partial["meta"] | {"file": path.name}, sort_keys=True),
        **GROUND_TRUTH,
    }


def webvid_candidates(
    csv_path: Path, videos_dir: Path, limits: VideoLimits, workers: int = 2
) -> Iterator[dict | QuarantineRow]:
    source = f"webvid:{csv_path}"
    checked = (_check(r, i + 2, videos_dir, source) for i, r in enumerate(_csv_rows(csv_path)))
    # Decoding dominates; PyAV releases the GIL, so threads overlap it.
    yield from progress(
        ordered_map(lambda item: _probe_row(item, source, limits), checked, max(1, workers)),
        desc="webvid clips",
        unit="clip",
    )


def video_candidates(
    fmt: str, csv_path: Path, videos_dir: Path, ingest_params: dict[str, Any]
) -> Iterator[dict | QuarantineRow]:
    """Candidate rows of one source; a bad CSV header or missing folder is raised here."""
    if fmt not in FORMATS:
        raise VimiError(f"Unknown video format {fmt!r}; use one of: {', '.join(FORMATS)}.")
    _csv_header(csv_path)
    if not videos_dir.is_dir():
        raise VimiError(f"Video folder {videos_dir} does not exist.")
    return webvid_candidates(csv_path, videos_dir, VideoLimits.from_params(ingest_params))


def ingest_videos(
    fmt: str,
    csv_path: Path,
    videos_dir: Path,
    uri: Path,
    quarantine_uri: Path,
    ingest_params: dict[str, Any],
    mode: str = "append",
) -> IngestReport:
    """Ingest a WebVid-style CSV + clip folder into the video corpus at ``uri`` as one new version."""
    candidates = video_candidates(fmt, csv_path, videos_dir, ingest_params)
    return run_ingest(str(uri), uri, quarantine_uri, VIDEO_SCHEMA, candidates, ingest_params["batch_rows"], mode=mode)
