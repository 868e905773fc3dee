"""Lance helpers shared by every dataset: streamed atomic writes, versions, fingerprints, quarantine.

A Lance write is one commit: data files are written first and the manifest last, so a write
killed midway leaves the previous version as it was (docs/data.md "Where data lives").
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import lance
import pyarrow as pa

from vimi.config import dataset_location, is_remote, object_store_env
from vimi.errors import VimiError

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),  # the dataset the row was meant for
        pa.field("source", pa.string(), nullable=False),  # file, shard or table it came from
        pa.field("key", pa.string()),  # sample key / row id inside the source
        pa.field("reason", pa.string(), nullable=False),  # machine-readable: empty_caption, ...
        pa.field("detail", pa.string()),  # human-readable
        pa.field("ingest_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


# An append adds a fragment, and every Lance manifest lists all fragments, so without compaction the
# manifests of N appends sum to O(N²) bytes (1,000 one-batch appends: 42 MB of manifests; 10,000:
# 4 GB, 37 s for `dvc commit`) and appends slow down with N. Merging the fragments once there are
# more than this keeps manifests small and DVC fast (`vimi bench lance-dvc`, docs/benchmarks.md).
MAX_FRAGMENTS = 64


@dataclass
class QuarantineRow:
    source: str
    key: str | None
    reason: str
    detail: str = ""


@dataclass
class WriteResult:
    uri: str
    version: int | None  # None when nothing was written and no dataset existed
    rows_written: int
    total_rows: int


@dataclass
class IngestReport:
    dataset: str
    ingested: int = 0
    version: int | None = None
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantine_rows: list[QuarantineRow] = field(default_factory=list)
    already_ingested: int = 0  # rows of the same source already in the dataset: a rerun, not a duplicate

    def quarantine(self, row: QuarantineRow) -> None:
        self.quarantine_rows.append(row)
        self.quarantined[row.reason] = self.quarantined.get(row.reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        out = {
            "ingested": self.ingested,
            "quarantined": dict(sorted(self.quarantined.items())),
            "version": self.version,
        }
        return out | ({"already_ingested": self.already_ingested} if self.already_ingested else {})


def exists(uri: str | Path) -> bool:
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = _object_store(uri)
        try:
            return fs.get_file_info(f"{path}/_versions").type == pafs.FileType.Directory
        except OSError as exc:  # unreachable endpoint, refused credentials: say so here, once
            raise VimiError(f"cannot reach {uri}: {str(exc).splitlines()[0]}") from None
    return (Path(uri) / "_versions").is_dir()


def _object_store(uri: str | Path):
    """pyarrow's file system for an object-store URI (credentials and endpoint from the environment,
    as Lance reads them), and the path inside it."""
    import pyarrow.fs as pafs

    object_store_env()
    try:
        return pafs.FileSystem.from_uri(str(uri))
    except (pa.ArrowInvalid, OSError) as exc:
        raise VimiError(f"cannot reach {uri}: {exc}") from None


def location(uri: str | Path) -> str:
    """How provenance names a dataset: the absolute local path, or the object-store URI as given."""
    return str(uri) if is_remote(uri) else str(Path(uri).resolve())


def file_sizes(uri: str | Path) -> list[int]:
    """The size of every file of a dataset (all its versions), local or on an object store."""
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = _object_store(uri)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise VimiError(f"cannot reach {uri}: {str(exc).splitlines()[0]}") from None
        return [i.size or 0 for i in infos if i.type == pafs.FileType.File]
    return [f.stat().st_size for f in Path(uri).rglob("*") if f.is_file()]


def total_bytes(uri: str | Path) -> int:
    return sum(file_sizes(uri))


def open_dataset(uri: str | Path, what: str = "dataset", hint: str = "") -> lance.LanceDataset:
    if not exists(uri):
        raise VimiError(f"No {what} at {uri}." + (f" {hint}" if hint else ""))
    return lance.dataset(str(uri))


BATCH_BYTES = 64 * 2**20


def _cell_bytes(row: dict[str, Any]) -> int:
    return sum(len(v) for v in row.values() if isinstance(v, (bytes, bytearray, str)))


def batches_of(
    rows: Iterable[dict[str, Any]], schema: pa.Schema, batch_rows: int, batch_bytes: int = BATCH_BYTES
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `batch_rows` rows and, counting their bytes and strings, about
    `batch_bytes` (a batch of 256 long clips is gigabytes; it is flushed when full by either)."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += _cell_bytes(row)
        if len(chunk) >= batch_rows or size >= batch_bytes:
            yield pa.RecordBatch.from_pylist(chunk, schema=schema)
            chunk, size = [], 0
    if chunk:
        yield pa.RecordBatch.from_pylist(chunk, schema=schema)


def write_batches(
    uri: str | Path,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    mode: str,
    commit_message: str | None = None,
    max_fragments: int | None = MAX_FRAGMENTS,
) -> WriteResult:
    """Stream batches into one Lance commit. ``mode`` is "append" (creates when missing) or
    "overwrite" (a new version replacing the rows; older versions stay readable).

    Nothing is committed when no batch comes (an empty ingest leaves the dataset as it was). After
    an append that leaves more than ``max_fragments`` fragments they are merged (`compact`: one more
    version, the same rows in the same order; None: never).
    """
    if mode not in ("append", "overwrite"):
        raise ValueError(f"mode must be append or overwrite, not {mode!r}")
    uri = str(uri)
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None and mode == "overwrite":
        first = pa.RecordBatch.from_pylist([], schema=schema)  # the new truth is "no rows"
    if first is None:
        if exists(uri):
            ds = lance.dataset(uri)
            return WriteResult(uri, ds.version, 0, ds.count_rows())
        return WriteResult(uri, None, 0, 0)

    counted = 0
    failure: list[BaseException] = []

    def counting() -> Iterator[pa.RecordBatch]:
        nonlocal counted
        try:
            for batch in itertools.chain([first], iterator):
                counted += batch.num_rows
                yield batch
        except BaseException as exc:  # Lance wraps it in an OSError; keep the original to re-raise
            failure.append(exc)
            raise

    if exists(uri):
        existing = lance.dataset(uri).schema
        if mode == "append" and not existing.equals(schema, check_metadata=False):
            raise VimiError(
                f"{uri} has a different schema than vimi writes; refusing to append. "
                f"Existing: {existing.names}; expected: {schema.names}."
            )
    else:
        if not is_remote(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        mode = "create"
    reader = pa.RecordBatchReader.from_batches(schema, counting())
    try:
        ds = lance.write_dataset(reader, uri, schema=schema, mode=mode, commit_message=commit_message)
    except BaseException:
        if failure:
            raise failure[0] from None
        raise
    if mode == "append" and max_fragments is not None:
        ds = compact(uri, max_fragments) or ds
    return WriteResult(uri, ds.version, counted, ds.count_rows())


def write_fragments(uri: str | Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> list[dict[str, Any]]:
    """Write batches as data files of the dataset at URI without committing them (Lance's distributed
    write: no reader sees them until `commit_fragments`); their fragment metadata, as JSON. A write cut
    short leaves only files no version refers to."""
    from lance.fragment import write_fragments as lance_write_fragments

    uri = str(uri)
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
    reader = pa.RecordBatchReader.from_batches(schema, iter(batches))
    # "overwrite": the files are checked against SCHEMA, not against a version they will replace
    fragments = lance_write_fragments(reader, uri, schema=schema, mode="overwrite")
    return [f.to_json() for f in fragments]


def _fragment_files(fragments: Iterable[Any]) -> list[list[str]]:
    return [sorted(f.path for f in fragment.data_files()) for fragment in fragments]


def commit_fragments(
    uri: str | Path, fragments: list[dict[str, Any]], schema: pa.Schema, commit_message: str | None = None
) -> tuple[lance.LanceDataset, bool]:
    """Fragments written by `write_fragments` (in order) become the dataset's rows in one new version
    (an overwrite: readers see all of them or the version before). Committing the fragments the latest
    version already holds does nothing. Returns the dataset and whether a version was made."""
    from lance.fragment import FragmentMetadata

    uri = str(uri)
    metadata = [FragmentMetadata.from_json(json.dumps(f)) for f in fragments]
    current = lance.dataset(uri) if exists(uri) else None
    if current is not None and _fragment_files(current.get_fragments()) == [
        sorted(d.path for d in m.data_files()) for m in metadata
    ]:
        return current, False
    ds = lance.LanceDataset.commit(
        uri,
        lance.LanceOperation.Overwrite(schema, metadata),
        read_version=current.version if current is not None else None,
        commit_message=commit_message,
    )
    return ds, True


def compact(uri: str | Path, max_fragments: int = MAX_FRAGMENTS) -> lance.LanceDataset | None:
    """Merge the dataset's fragments when it has more than ``max_fragments`` (0: whenever there is
    more than one). A new version with the same rows in the same order; older versions keep their
    own files, so row positions recorded at a version (instructions, MLflow inputs) stay valid.
    Returns the compacted dataset, or None when nothing was done."""
    ds = lance.dataset(str(uri))
    fragments = len(ds.get_fragments())
    if fragments <= max(max_fragments, 1):
        return None
    ds.optimize.compact_files(target_rows_per_fragment=1 << 20)
    return lance.dataset(str(uri))


def prune(uri: str | Path, keep: set[int] = frozenset()) -> int:
    """Delete every version but the latest and ``keep``, with the files only they use (Lance's
    cleanup). Returns how many versions went. Reading a pruned version fails afterwards."""
    ds = lance.dataset(str(uri))
    old = [v["version"] for v in ds.versions() if v["version"] not in keep and v["version"] != ds.version]
    if old:
        ds.cleanup_old_versions(versions=old, error_if_tagged_old_versions=False)
    return len(old)


def quarantine_path_for(uri: str | Path) -> Path:
    """The quarantine table beside a dataset: one per data directory."""
    return dataset_location(uri).parent / "quarantine.lance"


def write_quarantine(uri: str | Path, dataset: str, ingest_id: str, rows: list[QuarantineRow]) -> int | None:
    """Append the rows the quarantine does not hold yet (same dataset, source, key and reason), so
    rerunning an ingest, after a kill between its data and quarantine commits too, quarantines each bad
    row once."""
    if rows and exists(uri):
        columns = ["source", "key", "reason"]
        held = lance.dataset(str(uri)).to_table(columns=columns, filter=f"dataset = {_sql_string(dataset)}")
        known = set(zip(*(held.column(c).to_pylist() for c in columns)))
        rows = [r for r in rows if (r.source, r.key, r.reason) not in known]
    if not rows:
        return None
    now = _dt.datetime.now(_dt.timezone.utc)
    records = [
        {
            "dataset": dataset,
            "source": r.source,
            "key": r.key,
            "reason": r.reason,
            "detail": r.detail,
            "ingest_id": ingest_id,
            "created_at": now,
        }
        for r in rows
    ]
    result = write_batches(uri, batches_of(records, QUARANTINE_SCHEMA, 4096), QUARANTINE_SCHEMA, "append")
    return result.version


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def fingerprint(uri: str | Path, columns: list[str] | None = None) -> str:
    """sha256 of the dataset's rows (Arrow IPC of every column, in order), independent of Lance's
    file names and manifests, which carry UUIDs and timestamps."""
    ds = lance.dataset(str(uri))
    digest = hashlib.sha256()
    digest.update(json.dumps([str(f) for f in ds.schema]).encode())
    chunk = 1024  # re-chunked to fixed sizes so fragment boundaries do not change the hash
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def feed(table: pa.Table) -> None:
        # Rows only: Lance returns schema metadata keys in no fixed order, and the IPC bytes carry them.
        for batch in table.replace_schema_metadata(None).combine_chunks().to_batches():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            digest.update(sink.getvalue().to_pybytes())

    for batch in ds.to_batches(columns=columns, batch_size=chunk):
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= chunk:
            table = pa.Table.from_batches(pending)
            feed(table.slice(0, chunk))
            rest = table.slice(chunk)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        feed(pa.Table.from_batches(pending))
    return digest.hexdigest()


def summary(uri: str | Path, caption_column: str = "caption", n_samples: int = 5) -> dict[str, Any]:
    """What a person wants to see of a dataset: rows, version, size, a few captions."""
    ds = lance.dataset(str(uri))
    n = ds.count_rows()
    samples: list[str] = []
    if n and caption_column in ds.schema.names:
        idx = sorted({int(i * (n - 1) / max(n_samples - 1, 1)) for i in range(min(n_samples, n))})
        samples = ds.take(idx, columns=[caption_column]).column(0).to_pylist()
    size = total_bytes(uri)
    return {
        "path": str(uri),
        "rows": n,
        "version": ds.version,
        "fragments": len(ds.get_fragments()),
        "bytes": size,
        "sample_captions": samples,
    }
