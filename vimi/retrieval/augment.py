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

from vimi.errors import VimiError
from vimi.io import lance_io
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


def augment(
    videos_uri: Path, memory_uri: Path, index_dir: Path, out_uri: Path, k: int, threads: int = 0, batch_rows: int = 4096
) -> dict[str, Any]:
    """Write the augmented dataset (one Lance commit) and return what a person wants to see."""
    if k < 1:
        raise VimiError(f"params.yaml retrieval.k must be >= 1, got {k}.")
    start = time.perf_counter()
    videos = lance_io.open_dataset(videos_uri, "video corpus", "Build it first (vimi world generate).")
    searcher = open_searcher(index_dir, memory_uri)  # refuses an index of another memory version
    info = searcher.info
    provenance = {
        "memory_path": info.memory_path,
        "memory_version": info.memory_version,
        "index_id": info.index_id,
        "videos_version": videos.version,
    }
    requested, k = k, min(k, max(searcher.num_docs, 1))  # a memory of 5 documents has no 6th to return
    n = videos.count_rows()
    batches = videos.to_batches(columns=["id", "caption"], batch_size=batch_rows)
    schema = AUGMENTED_SCHEMA.with_metadata({k: str(v) for k, v in provenance.items()} | {"k": str(k)})
    with counter(n, "retrieving", "clip") as tick:
        result = lance_io.write_batches(
            out_uri,
            (
                b.replace_schema_metadata(schema.metadata)
                for b in _batches(searcher, batches, k, resolve_workers(threads), provenance, tick)
            ),
            schema,
            "overwrite",
            commit_message=f"augment k={k} index={info.index_id}",
        )
    seconds = time.perf_counter() - start
    return {
        "path": str(out_uri),
        "rows": result.total_rows,
        "version": result.version,
        "k": k,
        **({"k_requested": requested} if requested != k else {}),
        "seconds": round(seconds, 2),
        "clips_per_s": round(result.total_rows / seconds, 1),
        **provenance,
    }


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
