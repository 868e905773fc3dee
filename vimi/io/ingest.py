"""Shared parts of the ingest adapters: finding sources, safe tar members, the ingest driver.

An adapter yields either a candidate row (a dict in the target schema) or a QuarantineRow.
The driver checks ids, streams good rows into one Lance commit and writes the quarantine table,
so a bad sample is always counted with its reason and never stops the run.
"""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow as pa
from braceexpand import braceexpand

from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.io.lance_io import IngestReport, QuarantineRow


def expand_sources(sources: Iterable[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by paths, directories (their files with one of ``suffixes``, sorted) or
    brace / glob patterns (``shards/{00000..00009}.tar``, ``data/*.parquet``)."""
    found: list[Path] = []
    for source in sources:
        matched: list[Path] = []
        for pattern in braceexpand(str(source)):
            path = Path(pattern).expanduser()
            if path.is_dir():
                matched += sorted(p for p in path.iterdir() if p.name.lower().endswith(suffixes))
            elif any(ch in pattern for ch in "*?["):
                matched += sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
            elif path.exists():
                matched.append(path)
            else:
                raise VimiError(f"Source {pattern} does not exist.")
        if not matched:
            raise VimiError(f"Source {source} matches no file ending in {', '.join(suffixes)}.")
        found += matched
    return list(dict.fromkeys(found))  # keep order, drop repeats


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member's path must not be trusted, or None when it is safe."""
    if not name or "\0" in name:
        return "empty or NUL in the member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute path {name!r}"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return f"path {name!r} climbs out with '..'"
    return None


def run_ingest(
    dataset: str,
    uri: Path,
    quarantine_uri: Path,
    schema: pa.Schema,
    candidates: Iterator[dict | QuarantineRow],
    batch_rows: int,
    mode: str = "append",
    id_column: str = "id",
) -> IngestReport:
    """Check ids and write one Lance commit of the good rows plus the quarantine rows."""
    report = IngestReport(dataset=dataset)
    existing: dict[str, str] = {}  # id → source
    if mode == "append" and lance_io.exists(uri):
        table = lance_io.open_dataset(uri).to_table(columns=[id_column, "source"])
        existing = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    seen: set[str] = set()

    def good_rows() -> Iterator[dict]:
        for item in candidates:
            if isinstance(item, QuarantineRow):
                report.quarantine(item)
                continue
            row_id = item[id_column]
            if row_id not in seen and existing.get(row_id, object()) == item.get("source"):
                # the same row of the same source, committed by an earlier run of this ingest
                seen.add(row_id)
                report.already_ingested += 1
                continue
            if row_id in seen or row_id in existing:
                where = "an earlier row of this ingest" if row_id in seen else f"the existing {dataset}"
                report.quarantine(
                    QuarantineRow(item["source"], row_id, "duplicate_id", f"id {row_id!r} already in {where}")
                )
                continue
            seen.add(row_id)
            report.ingested += 1
            yield item

    result = lance_io.write_batches(
        uri, lance_io.batches_of(good_rows(), schema, batch_rows), schema, mode, commit_message=f"ingest into {dataset}"
    )
    report.version = result.version
    lance_io.write_quarantine(quarantine_uri, dataset, uuid.uuid4().hex, report.quarantine_rows)
    return report
