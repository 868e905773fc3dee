"""Ingest users' image-text pairs into the memory: img2dataset's webdataset tar shards and parquet.

webdataset: members ``KEY.jpg|jpeg|png|webp`` + ``KEY.txt`` (+ optional ``KEY.json``), grouped by
key as webdataset does (the key is the member path up to the first dot of its file name).
Members are read from the archive in memory and never extracted, and a member whose path is
absolute or climbs out with ``..`` is quarantined without being read.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vimi.errors import VimiError
from vimi.io.images import ImageLimits, image_size
from vimi.io.ingest import expand_sources, run_ingest, unsafe_member_reason
from vimi.io.lance_io import IngestReport, QuarantineRow
from vimi.memory.schema import GROUND_TRUTH_COLUMNS, MEMORY_SCHEMA
from vimi.progress import progress

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
USED_EXTENSIONS = (*IMAGE_EXTENSIONS, "txt", "json")  # what a sample is read for; other members are skipped
FORMATS = ("webdataset", "parquet")


def memory_row(
    source: str, key: str, row_id: str, image: bytes | None, caption: Any, meta: dict[str, Any], limits: ImageLimits
) -> dict | QuarantineRow:
    """A memory row, or the reason it cannot be one."""
    if isinstance(image, dict):  # Hugging Face datasets write an image column as {bytes, path}
        image = image.get("bytes")
    if image is None:
        return QuarantineRow(source, key, "missing_image", "caption without image")
    if isinstance(image, str) and image.strip().lower().startswith(("http://", "https://")):
        return QuarantineRow(
            source, key, "image_is_url", f"the image column holds a URL ({image[:100]}); download the images first"
        )
    if not isinstance(image, (bytes, bytearray, memoryview)):
        return QuarantineRow(
            source, key, "image_not_binary", f"the image column holds {type(image).__name__}, not bytes"
        )
    if len(image) > limits.max_bytes:
        return QuarantineRow(
            source,
            key,
            "image_too_large",
            f"{len(image):,} bytes, at most {limits.max_bytes:,} (ingest.max_member_bytes)",
        )
    if caption is None:
        return QuarantineRow(source, key, "missing_caption", "image without caption")
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as exc:
            return QuarantineRow(source, key, "undecodable_caption", f"caption is not UTF-8: {exc}")
    caption = str(caption).strip()
    if not caption:
        return QuarantineRow(source, key, "empty_caption", "caption is empty or whitespace")
    try:
        width, height = image_size(image)
    except ValueError as exc:
        reason = "image_too_large" if "DecompressionBomb" in str(exc) else "undecodable_image"
        return QuarantineRow(source, key, reason, str(exc))
    if not (limits.min_size <= width <= limits.max_size and limits.min_size <= height <= limits.max_size):
        return QuarantineRow(
            source,
            key,
            "image_size_out_of_range",
            f"{width}x{height}, allowed sides {limits.min_size}..{limits.max_size}",
        )
    return {
        "id": row_id,
        "image": image,
        "caption": caption,
        "source": source,
        "width": width,
        "height": height,
        "meta": json.dumps(meta, default=str, sort_keys=True),
        **{c: None for c in GROUND_TRUTH_COLUMNS},
    }


def _split_key(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    key = str(path.parent / stem) if str(path.parent) != "." else stem
    return key, ext.lower()


def _sample(shard: str, key: str, files: dict[str, bytes], id_prefix: str, limits: ImageLimits) -> dict | QuarantineRow:
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    meta: dict[str, Any] = {"key": key}
    if "json" in files:
        try:
            meta["json"] = json.loads(files["json"])
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nested past Python's stack: RecursionError
            meta["json_error"] = f"{key}.json is not valid JSON: {type(exc).__name__}: {exc}"
    if image_ext is None and "txt" not in files:
        return QuarantineRow(
            shard, key, "missing_image", f"sample has neither image nor caption (members: {', '.join(sorted(files))})"
        )
    return memory_row(
        shard, key, id_prefix + key, files.get(image_ext) if image_ext else None, files.get("txt"), meta, limits
    )


def webdataset_candidates(shards: list[Path], id_prefix: str, limits: ImageLimits) -> Iterator[dict | QuarantineRow]:
    for shard in progress(shards, total=len(shards), desc="tar shards", unit="shard"):
        source = f"webdataset:{shard}"
        key: str | None = None
        files: dict[str, bytes] = {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    reason = unsafe_member_reason(member.name)
                    if reason is None and (member.issym() or member.islnk()):
                        reason = f"link member {member.name!r} -> {member.linkname!r}"
                    if reason is not None:
                        yield QuarantineRow(source, member.name, "unsafe_path", reason)
                        continue
                    if not member.isfile():
                        continue  # directories and other entries carry no sample data
                    member_key, ext = _split_key(member.name)
                    if member_key != key:
                        if key is not None:
                            yield _sample(source, key, files, id_prefix, limits)
                        key, files = member_key, {}
                    if ext not in USED_EXTENSIONS:
                        continue  # never read: a streamed archive skips what is not extracted
                    if member.size > limits.max_bytes:
                        yield QuarantineRow(
                            source,
                            member.name,
                            "member_too_large",
                            f"{member.size:,} bytes, at most {limits.max_bytes:,} (ingest.max_member_bytes)",
                        )
                        continue
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if ext in files:
                        yield QuarantineRow(
                            source, member.name, "duplicate_member", f"{key} has a second .{ext} member"
                        )
                        continue
                    files[ext] = data
        except (tarfile.TarError, OSError, EOFError) as exc:
            if key is not None:
                yield QuarantineRow(
                    source, key, "unreadable_shard", f"sample cut off by a broken archive: {type(exc).__name__}: {exc}"
                )
                key = None
            yield QuarantineRow(source, None, "unreadable_shard", f"{type(exc).__name__}: {exc}")
        if key is not None:
            yield _sample(source, key, files, id_prefix, limits)


def _parquet_columns(
    path: Path, image_column: str | None, image_columns: list[str], caption_column: str, key_column: str
) -> tuple[str, str | None]:
    names = pq.read_schema(path).names
    chosen = image_column or next((c for c in image_columns if c in names), None)
    problems = []
    if chosen is None or chosen not in names:
        problems.append(f"no image column ({image_column or 'one of ' + ', '.join(image_columns)})")
    if caption_column not in names:
        problems.append(f"no caption column {caption_column!r}")
    if problems:
        raise VimiError(
            f"{path} has {' and '.join(problems)}; its columns are: {', '.join(names)}. "
            "Name them with --image-column / --caption-column."
        )
    return chosen, key_column if key_column in names else None


def parquet_plan(
    files: list[Path], image_column: str | None, image_columns: list[str], caption_column: str, key_column: str
) -> list[tuple[Path, str | None, str | None, str]]:
    """(file, image column, key column, error) per file, checked before anything is written:
    a wrong column name is the user's to fix, an unreadable file is quarantined."""
    plan = []
    for path in files:
        try:
            plan.append((path, *_parquet_columns(path, image_column, image_columns, caption_column, key_column), ""))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:  # an unsupported codec too
            plan.append((path, None, None, f"{type(exc).__name__}: {exc}"))
    return plan


def parquet_candidates(
    plan: list[tuple[Path, str | None, str | None, str]],
    id_prefix: str,
    limits: ImageLimits,
    caption_column: str,
    batch_rows: int,
) -> Iterator[dict | QuarantineRow]:
    for path, img_col, key_col, error in progress(plan, total=len(plan), desc="parquet files", unit="file"):
        source = f"parquet:{path}"
        if img_col is None:
            yield QuarantineRow(source, None, "unreadable_shard", error)
            continue
        row_index = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                for record in batch.to_pylist():
                    key = (
                        str(record[key_col])
                        if key_col and record.get(key_col) is not None
                        else f"{path.stem}/{row_index}"
                    )
                    row_index += 1
                    image = record.get(img_col)
                    meta = {
                        k: v
                        for k, v in record.items()
                        if k not in (img_col, caption_column) and not isinstance(v, (bytes, bytearray))
                    }
                    if image is None and record.get("error_message"):
                        yield QuarantineRow(source, key, "missing_image", f"img2dataset: {record['error_message']}")
                        continue
                    yield memory_row(source, key, id_prefix + key, image, record.get(caption_column), meta, limits)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:  # an unsupported codec too
            yield QuarantineRow(
                source, None, "unreadable_shard", f"after {row_index} rows: {type(exc).__name__}: {exc}"
            )


def memory_candidates(
    sources: list[str],
    fmt: str,
    ingest_params: dict[str, Any],
    id_prefix: str = "",
    image_column: str | None = None,
    caption_column: str | None = None,
    key_column: str | None = None,
) -> Iterator[dict | QuarantineRow]:
    """Candidate rows of one source specification. Errors the user must fix (no such file, wrong
    column names, unknown format) are raised here, before anything is written."""
    limits = ImageLimits.from_params(ingest_params)
    if fmt == "webdataset":
        return webdataset_candidates(expand_sources(sources, (".tar", ".tar.gz", ".tgz")), id_prefix, limits)
    if fmt == "parquet":
        caption_column = caption_column or ingest_params.get("caption_column", "caption")
        plan = parquet_plan(
            expand_sources(sources, (".parquet",)),
            image_column,
            list(ingest_params.get("image_columns", ["jpg", "png", "webp", "image"])),
            caption_column,
            key_column or ingest_params.get("key_column", "key"),
        )
        return parquet_candidates(plan, id_prefix, limits, caption_column, ingest_params["batch_rows"])
    raise VimiError(f"Unknown memory format {fmt!r}; use one of: {', '.join(FORMATS)}.")


def ingest_memory(
    sources: list[str],
    fmt: str,
    uri: Path,
    quarantine_uri: Path,
    ingest_params: dict[str, Any],
    mode: str = "append",
    **options: Any,
) -> IngestReport:
    """Ingest image-text pairs from ``sources`` into the memory at ``uri`` as one new version.
    ``options``: id_prefix, image_column, caption_column, key_column."""
    candidates = memory_candidates(sources, fmt, ingest_params, **options)
    return run_ingest(str(uri), uri, quarantine_uri, MEMORY_SCHEMA, candidates, ingest_params["batch_rows"], mode=mode)
