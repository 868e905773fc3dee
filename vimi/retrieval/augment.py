"""The retrieval-augmented video dataset: for every training clip, its caption's top-k memory documents.

One row per clip, never dropped: a clip whose caption is empty, or that matches no document, is
kept and flagged. Provenance (memory path and version, index id, video corpus version) is in
columns of every row and in the Lance schema metadata.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from vimi.config import is_remote
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.io.files import read_json, write_json
from vimi.parallel import resolve_workers
from vimi.progress import counter
from vimi.retrieval.bm25 import BM25Searcher, open_searcher

FLAG_OK, FLAG_EMPTY, FLAG_NO_HIT, FLAG_FEW = "ok", "empty_caption", "no_hit", "fewer_than_k"
# a caption with more distinct terms than Lucene's clause limit: its first terms were searched
FLAG_TRUNCATED = "query_truncated"
FLAGS = (FLAG_OK, FLAG_EMPTY, FLAG_NO_HIT, FLAG_FEW, FLAG_TRUNCATED)

AUGMENTED_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),  # the query, as in the video corpus
        pa.field("memory_ids", pa.list_(pa.string()), nullable=False),  # best first
        pa.field("memory_rows", pa.list_(pa.int64()), nullable=False),  # rows of that memory version
        pa.field("scores", pa.list_(pa.float32()), nullable=False),  # BM25, non-increasing
        pa.field("ranks", pa.list_(pa.int32()), nullable=False),  # 1..num_hits
        pa.field("num_hits", pa.int32(), nullable=False),
        pa.field("flag", pa.string(), nullable=False),  # one of FLAGS
        pa.field("k", pa.int32(), nullable=False),
        # provenance
        pa.field("memory_path", pa.string(), nullable=False),
        pa.field("memory_version", pa.int64(), nullable=False),
        pa.field("index_id", pa.string(), nullable=False),
        pa.field("videos_version", pa.int64(), nullable=False),
    ]
)


def _batches(
    searcher: BM25Searcher, clips: Iterator[pa.RecordBatch], k: int, threads: int, provenance: dict[str, Any], tick
) -> Iterator[pa.RecordBatch]:
    """One augmented record batch per batch of clips, built from the searcher's arrays (no Python object
    per hit)."""
    import numpy as np
    import pyarrow.compute as pc

    memory_ids = searcher.id_array()
    for batch in clips:
        n = batch.num_rows
        captions = pc.fill_null(batch.column("caption"), "")
        texts = captions.to_pylist()
        found = searcher.search_arrays(texts, k, threads)
        counts = found.counts.astype(np.int32)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        keep = np.arange(found.rows.shape[1])[None, :] < counts[:, None]  # row-major: each clip's hits in order
        rows = found.rows[keep]
        ranks = (np.broadcast_to(np.arange(1, found.rows.shape[1] + 1, dtype=np.int32), found.rows.shape))[keep]
        blank = np.array([not t.strip() for t in texts], bool)
        flag = np.where(
            blank,
            FLAG_EMPTY,
            np.where(
                found.truncated,
                FLAG_TRUNCATED,
                np.where(counts == 0, FLAG_NO_HIT, np.where(counts == k, FLAG_OK, FLAG_FEW)),
            ),
        )
        columns = {
            "clip_id": batch.column("id"),
            "caption": captions,
            "memory_ids": pa.ListArray.from_arrays(offsets, memory_ids.take(pa.array(rows))),
            "memory_rows": pa.ListArray.from_arrays(offsets, pa.array(rows, pa.int64())),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(found.scores[keep], pa.float32())),
            "ranks": pa.ListArray.from_arrays(offsets, pa.array(ranks, pa.int32())),
            "num_hits": pa.array(counts, pa.int32()),
            "flag": pa.array(flag.tolist(), pa.string()),
            "k": pa.array(np.full(n, k, np.int32)),
            **{name: pa.array([value] * n, AUGMENTED_SCHEMA.field(name).type) for name, value in provenance.items()},
        }
        tick(n)
        yield pa.RecordBatch.from_arrays([columns[f.name] for f in AUGMENTED_SCHEMA], schema=AUGMENTED_SCHEMA)


def parts_dir(data_dir: Path) -> Path:
    """Where each augmentation partition records the fragments it wrote (the dataset itself may live in
    an object store; these records stay in the data directory)."""
    return Path(data_dir) / "augmented.parts"


def part_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges [start, stop) of the video corpus' rows, one per partition."""
    return [(p * total // parts, (p + 1) * total // parts) for p in range(parts)]


def _plan(videos_uri: Path, memory_uri: Path, index_dir: Path, k: int):
    if k < 1:
        raise VimiError(f"params.yaml retrieval.k must be >= 1, got {k}.")
    videos = lance_io.open_dataset(videos_uri, "video corpus", "Build it first (vimi world generate).")
    searcher = open_searcher(index_dir, memory_uri)  # refuses an index of another memory version
    info = searcher.info
    provenance = {
        "memory_path": info.memory_path,
        "memory_version": info.memory_version,
        "index_id": info.index_id,
        "videos_version": videos.version,
    }
    return videos, searcher, provenance, min(k, max(searcher.num_docs, 1))  # a memory of 5 has no 6th


def _schema(provenance: dict[str, Any], k: int) -> pa.Schema:
    return AUGMENTED_SCHEMA.with_metadata({key: str(v) for key, v in provenance.items()} | {"k": str(k)})


def _identity(provenance: dict[str, Any], k: int, part: int, parts: int, total: int) -> dict[str, Any]:
    """What a written partition must match to be reused."""
    if parts < 1:
        raise VimiError(f"retrieval.augment_partitions must be >= 1, got {parts}.")
    if not 0 <= part < parts:
        raise VimiError(f"Augmentation partition {part} does not exist: there are {parts} (0 … {parts - 1}).")
    start, stop = part_bounds(total, parts)[part]
    return provenance | {"k": k, "part": part, "parts": parts, "start": start, "rows": stop - start}


def augment_partition(
    videos_uri: Path,
    memory_uri: Path,
    index_dir: Path,
    out_uri: Path,
    records: Path,
    part: int,
    parts: int,
    k: int,
    threads: int = 0,
    batch_rows: int = 4096,
    tick=None,
) -> dict[str, Any]:
    """Partition PART of PARTS: the augmented rows of its range of clips written as fragments of the
    dataset at ``out_uri`` and not committed (no reader sees them), their metadata recorded in
    ``records/part-N.json``, written last. A partition already written from the same clips, index and
    k is kept (a rerun is idempotent); one a kill cut short leaves only unreferenced files and is
    written again."""
    started = time.perf_counter()
    videos, searcher, provenance, k = _plan(videos_uri, memory_uri, index_dir, k)
    want = _identity(provenance, k, part, parts, videos.count_rows())
    record_path = Path(records) / f"part-{part}.json"
    done = read_json(record_path)
    if isinstance(done, dict) and {key: done.get(key) for key in want} == want and _files_exist(out_uri, done):
        if tick:
            tick(want["rows"])
        return done | {"reused": True}
    batches = videos.to_batches(
        columns=["id", "caption"], batch_size=batch_rows, offset=want["start"], limit=want["rows"]
    )
    schema = _schema(provenance, k)
    fragments = lance_io.write_fragments(
        out_uri,
        (
            b.replace_schema_metadata(schema.metadata)
            for b in _batches(searcher, batches, k, resolve_workers(threads), provenance, tick or (lambda n: None))
        ),
        schema,
    )
    record = want | {"fragments": fragments, "seconds": round(time.perf_counter() - started, 3)}
    write_json(record_path, record)
    return record | {"reused": False}


def _files_exist(out_uri: Path, record: dict[str, Any]) -> bool:
    """Whether the data files a partition record names are still there (a dataset replaced or pruned
    since loses them)."""
    if is_remote(out_uri):
        return True  # checked by the commit itself
    return all(
        (Path(out_uri) / "data" / f["path"]).is_file() for fragment in record["fragments"] for f in fragment["files"]
    )


def commit_augmented(
    videos_uri: Path, memory_uri: Path, index_dir: Path, out_uri: Path, records: Path, parts: int, k: int
) -> dict[str, Any]:
    """The commit step: every partition's fragments, in partition order, become the augmented dataset
    in one new version, so readers see all partitions or none. Refuses, naming them, partitions that
    are missing or were written from other clips, another index or another k."""
    started = time.perf_counter()
    videos, _, provenance, k = _plan(videos_uri, memory_uri, index_dir, k)
    total = videos.count_rows()
    wanted = [_identity(provenance, k, p, parts, total) for p in range(max(parts, 1))]  # parts < 1: refused
    done = [read_json(Path(records) / f"part-{w['part']}.json") for w in wanted]
    missing = [
        w["part"]
        for w, d in zip(wanted, done)
        if not (isinstance(d, dict) and {key: d.get(key) for key in w} == w and _files_exist(out_uri, d))
    ]
    if missing:
        many = len(missing) > 1
        raise VimiError(
            f"Augmentation partition{'s' if many else ''} {', '.join(map(str, missing))} of {parts} "
            f"{'are' if many else 'is'} not written for video corpus version {provenance['videos_version']}, "
            f"index {provenance['index_id'][:8]} and k={k}: run {'them' if many else 'it'} first "
            f"(`vimi augment --partition N --partitions {parts}`)."
        )
    ds, committed = lance_io.commit_fragments(
        out_uri,
        [f for d in done for f in d["fragments"]],
        _schema(provenance, k),
        commit_message=f"augment k={k} index={provenance['index_id']} partitions={parts}",
    )
    rows = ds.count_rows()
    if rows != total:  # a partition record that does not hold what it says
        raise VimiError(f"The augmentation partitions in {records} hold {rows} rows, the video corpus {total}.")
    seconds = sum(d["seconds"] for d in done) + time.perf_counter() - started
    return {
        "path": str(out_uri),
        "rows": rows,
        "version": ds.version,
        "committed": committed,
        "partitions": parts,
        "k": k,
        "seconds": round(seconds, 2),
        "clips_per_s": round(rows / max(seconds, 1e-9), 1),
        **provenance,
    }


def augment(
    videos_uri: Path,
    memory_uri: Path,
    index_dir: Path,
    out_uri: Path,
    k: int,
    threads: int = 0,
    batch_rows: int = 4096,
    parts: int = 1,
    records: Path | None = None,
) -> dict[str, Any]:
    """Write the augmented dataset: every partition (one after another; each searches on every core),
    then the commit step, one Lance version. Returns what a person wants to see."""
    start = time.perf_counter()
    if records is None:  # beside a local dataset; one in an object store names a local directory
        if is_remote(out_uri):
            raise VimiError(f"Augmenting into {out_uri} needs a local directory for the partition records.")
        records = Path(f"{out_uri}.parts")
    videos, _, _, capped = _plan(videos_uri, memory_uri, index_dir, k)
    with counter(videos.count_rows(), "retrieving", "clip") as tick:
        for part in range(max(parts, 1)):
            augment_partition(
                videos_uri, memory_uri, index_dir, out_uri, records, part, parts, k, threads, batch_rows, tick
            )
    meta = commit_augmented(videos_uri, memory_uri, index_dir, out_uri, records, parts, k)
    meta["seconds"] = round(time.perf_counter() - start, 2)
    meta["clips_per_s"] = round(meta["rows"] / max(meta["seconds"], 1e-9), 1)
    return meta | ({"k_requested": k} if k != capped else {})


def examples(out_uri: Path, memory_uri: Path, n: int = 3, with_images: bool = False) -> list[dict[str, Any]]:
    """A few clips, evenly spread over the dataset, with the captions they retrieved, for people to
    read; ``with_images`` adds each clip's flag and its retrieved documents' images and scores."""
    ds = lance_io.open_dataset(out_uri, "augmented dataset")
    total = ds.count_rows()
    picks = ds.take(
        sorted({int(i * (total - 1) / max(n - 1, 1)) for i in range(min(n, total))}),
        columns=["clip_id", "caption", "memory_rows", "memory_version", "scores", "flag"],
    ).to_pylist()
    if not picks:
        return []
    import lance

    memory = lance.dataset(str(memory_uri), version=picks[0]["memory_version"])
    columns = ["caption", "image"] if with_images else ["caption"]
    out = []
    for row in picks:
        docs = memory.take(row["memory_rows"], columns=columns).to_pylist() if row["memory_rows"] else []
        item = {
            "clip_id": row["clip_id"],
            "caption": row["caption"],
            "retrieved": [f"{d['caption']} ({s:.2f})" for d, s in zip(docs, row["scores"])],
        }
        if with_images:
            item |= {"flag": row["flag"], "docs": [d | {"score": s} for d, s in zip(docs, row["scores"])]}
        out.append(item)
    return out
