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
from vimi.progress import progress
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


def _rows(
    searcher: BM25Searcher, clips: Iterator[pa.RecordBatch], k: int, threads: int, provenance: dict[str, Any]
) -> Iterator[dict]:
    for batch in clips:
        ids, captions = batch.column("id").to_pylist(), batch.column("caption").to_pylist()
        results = searcher.batch_search([c or "" for c in captions], k, threads)
        for clip_id, caption, hits in zip(ids, captions, results):
            if not (caption or "").strip():
                flag = FLAG_EMPTY
            elif getattr(hits, "truncated", False):
                flag = FLAG_TRUNCATED
            elif not hits:
                flag = FLAG_NO_HIT
            else:
                flag = FLAG_OK if len(hits) == k else FLAG_FEW
            yield {
                "clip_id": clip_id,
                "caption": caption or "",
                "memory_ids": [h.id for h in hits],
                "memory_rows": [h.row for h in hits],
                "scores": [h.score for h in hits],
                "ranks": [h.rank for h in hits],
                "num_hits": len(hits),
                "flag": flag,
                "k": k,
                **provenance,
            }


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
    rows = progress(
        _rows(searcher, batches, k, resolve_workers(threads), provenance), total=n, desc="retrieving", unit="clip"
    )
    schema = AUGMENTED_SCHEMA.with_metadata({k: str(v) for k, v in provenance.items()} | {"k": str(k)})
    result = lance_io.write_batches(
        out_uri,
        lance_io.batches_of(rows, schema, batch_rows),
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
