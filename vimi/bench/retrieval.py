"""`vimi bench retrieval`: pyserini (vimi's BM25) against bm25s and rank-bm25 on synthetic memories.

Every engine runs in a fresh process (so its peak memory is its own), on the same corpus, the same
queries and the same k, in the same run. The corpus imitates SpriteWorld's captions at scale: one
made-up name per 20 documents, shapes, colours, patterns and scenes; the queries are video
captions naming a subject, an action and a scene.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vimi.bench.common import machine

# Lucene's English stop set (what Anserini's DefaultEnglishAnalyzer removes), for the Python peers.
LUCENE_STOPWORDS = [
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "but",
    "by",
    "for",
    "if",
    "in",
    "into",
    "is",
    "it",
    "no",
    "not",
    "of",
    "on",
    "or",
    "such",
    "that",
    "the",
    "their",
    "then",
    "there",
    "these",
    "they",
    "this",
    "to",
    "was",
    "will",
    "with",
]
DOCS_PER_SUBJECT = 20


def synthetic_corpus(n_docs: int, n_queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Memory captions and video-caption queries in SpriteWorld's vocabulary, at any size."""
    from vimi.world.catalog import ACTIONS, COLORS, PATTERNS, SCENES, SHAPES, make_name

    rng = np.random.default_rng(seed)
    n_subjects = max(1, n_docs // DOCS_PER_SUBJECT)
    names: dict[str, None] = {}
    while len(names) < n_subjects:
        names[make_name(rng)] = None
    name_list = list(names)
    colors, patterns, scenes = list(COLORS), [a for a, _ in PATTERNS.values()], list(SCENES.values())
    shapes, verbs = list(SHAPES), list(ACTIONS.values())
    looks = [
        (
            shapes[rng.integers(8)],
            colors[rng.integers(12)],
            colors[rng.integers(12)],
            patterns[rng.integers(len(patterns))],
        )
        for _ in range(n_subjects)
    ]
    subject = rng.integers(0, n_subjects, n_docs)
    subject[:n_subjects] = np.arange(n_subjects)  # every subject has documents
    scene = rng.integers(0, len(scenes), n_docs)
    template = rng.integers(0, 4, n_docs)
    captions = []
    for s, sc, t in zip(subject.tolist(), scene.tolist(), template.tolist()):
        shape, c1, c2, pattern = looks[s]
        name, where = name_list[s], scenes[sc]
        captions.append(
            (
                f"{name}, a {c1} and {c2} {pattern} {shape}, {where}",
                f"a photo of {name} the {pattern} {shape} {where}",
                f"{name} is a {c1} {shape} with {c2} details, seen {where}",
                f"{name} {where}",
            )[t]
        )
    q_subject = rng.integers(0, n_subjects, n_queries)
    queries = [
        f"{name_list[s]} {verbs[rng.integers(len(verbs))]} {scenes[rng.integers(len(scenes))]}"
        for s in q_subject.tolist()
    ]
    return captions, queries


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _run_vimi(folder: str, k: int, threads: int, shards: int, merge: bool = True) -> dict[str, Any]:
    """vimi's path end to end: index from Lance, augmentation Lance → Lance, then search alone."""
    import lance

    from vimi.retrieval.augment import augment
    from vimi.retrieval.bm25 import build_index, open_searcher
    from vimi.retrieval.java import start_jvm

    root = Path(folder)
    t0 = time.perf_counter()
    start_jvm()
    jvm_s = time.perf_counter() - t0
    info = build_index(root / "memory.lance", root / "bm25", 0.9, 0.4, shards=shards, merge=merge)
    t0 = time.perf_counter()
    meta = augment(
        root / "videos.lance", root / "memory.lance", root / "bm25", root / "augmented.lance", k=k, threads=threads
    )
    augment_s = time.perf_counter() - t0
    table = lance.dataset(str(root / "augmented.lance")).to_table(columns=["memory_ids", "scores"])
    results = list(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    queries = lance.dataset(str(root / "videos.lance")).to_table(columns=["caption"]).column(0).to_pylist()
    searcher = open_searcher(root / "bm25", root / "memory.lance")
    t0 = time.perf_counter()
    searcher.batch_search(queries, k, threads)
    search_s = time.perf_counter() - t0
    warm = build_index(root / "memory.lance", root / "bm25_again", 0.9, 0.4, shards=shards, merge=merge)  # warm JVM
    return {
        "jvm_start_s": jvm_s,
        "index_s": info.seconds,
        "index_docs_per_s": info.docs / info.seconds,
        "shards": len(info.partitions),
        "merged": info.merged,
        "index_thread_seconds": info.timings,
        "index_again_in_warm_jvm_docs_per_s": warm.docs / warm.seconds,
        "augment_s": augment_s,
        "augment_captions_per_s": len(queries) / augment_s,
        "search_s": search_s,
        "search_queries_per_s": len(queries) / search_s,
        "peak_rss_mb": _peak_rss_mb(),
        "results": results,
        "augment_meta_clips_per_s": meta["clips_per_s"],
    }


def _tokenize_like_lucene(texts: list[str]):
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords=LUCENE_STOPWORDS, stemmer=Stemmer.Stemmer("porter"), show_progress=False)


def _run_bm25s(captions: list[str], queries: list[str], k: int, threads: int) -> dict[str, Any]:
    """bm25s in its fastest configuration: numba backend, n_threads = cores (JIT included)."""
    import bm25s

    t0 = time.perf_counter()
    retriever = bm25s.BM25(method="lucene", k1=0.9, b=0.4, backend="numba")
    retriever.index(_tokenize_like_lucene(captions), show_progress=False)
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = _tokenize_like_lucene(queries)
    docs, scores = retriever.retrieve(tokens, k=k, n_threads=threads, show_progress=False)
    search_s = time.perf_counter() - t0
    # bm25s always returns k documents; those scoring 0 matched nothing (Lucene would not return them).
    results = [
        ([f"s{int(d)}" for d, x in zip(row, srow) if x > 0], [float(x) for x in srow if x > 0])
        for row, srow in zip(docs, scores)
    ]
    return {
        "index_s": index_s,
        "index_docs_per_s": len(captions) / index_s,
        "search_s": search_s,
        "search_queries_per_s": len(queries) / search_s,
        "peak_rss_mb": _peak_rss_mb(),
        "results": results,
    }


def _run_rank_bm25(captions: list[str], queries: list[str], k: int) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    tokenized = _tokenize_like_lucene(captions)
    vocab = {i: w for w, i in tokenized.vocab.items()}
    corpus = [[vocab[i] for i in doc] for doc in tokenized.ids]
    t0 = time.perf_counter()
    model = BM25Okapi(corpus, k1=0.9, b=0.4)
    index_s = time.perf_counter() - t0
    q_tokens = _tokenize_like_lucene(queries)
    q_vocab = {i: w for w, i in q_tokens.vocab.items()}
    t0 = time.perf_counter()
    results = []
    for q in q_tokens.ids:
        scores = model.get_scores([q_vocab[i] for i in q])
        top = [d for d in np.argsort(-scores, kind="stable")[:k] if scores[d] > 0]
        results.append(([f"s{int(d)}" for d in top], [float(scores[d]) for d in top]))
    search_s = time.perf_counter() - t0
    return {
        "index_s": index_s,
        "index_docs_per_s": len(captions) / max(index_s, 1e-9),
        "search_s": search_s,
        "search_queries_per_s": len(queries) / search_s,
        "peak_rss_mb": _peak_rss_mb(),
        "results": results,
    }


def _in_fresh_process(fn: Callable, *args) -> dict[str, Any]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def tie_aware_agreement(
    a: list[tuple[list[str], list[float]]], b: list[tuple[list[str], list[float]]], k: int, rel: float = 1e-4
) -> dict[str, float]:
    """Per query, the two top-k lists agree when every document one ranks strictly above its k-th
    score is in the other's top k (documents tied at the k-th score may be either); also the plain
    overlap |A ∩ B| / k and the share of queries whose score lists are equal (relative 1e-4)."""
    agree = overlap = same_scores = 0
    for (ids_a, sc_a), (ids_b, sc_b) in zip(a, b):

        def strict(ids, scores):
            if len(ids) < k:
                return set(ids)
            kth = scores[-1]
            return {i for i, s in zip(ids, scores) if s > kth + rel * abs(kth)}

        agree += strict(ids_a, sc_a) <= set(ids_b) and strict(ids_b, sc_b) <= set(ids_a)
        overlap += len(set(ids_a) & set(ids_b)) / k
        same_scores += len(sc_a) == len(sc_b) and all(math.isclose(x, y, rel_tol=rel) for x, y in zip(sc_a, sc_b))
    n = max(len(a), 1)
    return {
        "tie_aware_agreement": agree / n,
        "overlap_at_k": overlap / n,
        "same_scores": same_scores / n,
        "queries": len(a),
    }


def _write_inputs(folder: Path, captions: list[str], queries: list[str]) -> None:
    import pyarrow as pa

    from vimi.io import lance_io
    from vimi.memory.schema import GROUND_TRUTH_COLUMNS, MEMORY_SCHEMA

    nulls = {c: None for c in GROUND_TRUTH_COLUMNS}
    rows = (
        {"id": f"s{i}", "image": b"", "caption": c, "source": "bench", "width": 1, "height": 1, "meta": "{}", **nulls}
        for i, c in enumerate(captions)
    )
    lance_io.write_batches(
        folder / "memory.lance", lance_io.batches_of(rows, MEMORY_SCHEMA, 50_000), MEMORY_SCHEMA, "overwrite"
    )
    videos = pa.table({"id": [f"q{i}" for i in range(len(queries))], "caption": queries})
    lance_io.write_batches(folder / "videos.lance", videos.to_batches(), videos.schema, "overwrite")


def bench_retrieval(
    sizes: list[int],
    n_queries: int = 10_000,
    k: int = 10,
    rank_bm25_queries: int = 200,
    seed: int = 0,
    shards: int = 4,
    threads: int = 0,
    merge: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    threads = threads or os.cpu_count() or 1
    out: dict[str, Any] = {
        "benchmark": "retrieval",
        "k": k,
        "queries": n_queries,
        "bm25": {"k1": 0.9, "b": 0.4},
        "machine": machine(cpus=threads),
        "engines": {
            "vimi": f"pyserini/Anserini Lucene, {shards} index shards"
            + (" merged into one" if merge and shards > 1 else "")
            + f", Lucene top-k search on {threads} threads",
            "bm25s": f"bm25s method=lucene, backend=numba, n_threads={threads}, JIT included",
            "rank_bm25": "rank-bm25 BM25Okapi (its own idf and (k1+1) factor: ranking compared, not scores)",
        },
        "sizes": {},
    }
    smallest = min(sizes)
    for n_docs in sizes:
        progress(f"{n_docs:,} documents: corpus")
        captions, queries = synthetic_corpus(n_docs, n_queries, seed)
        with tempfile.TemporaryDirectory(prefix="vimi-bench-retrieval-") as tmp:
            _write_inputs(Path(tmp), captions, queries)
            progress(f"{n_docs:,} documents: vimi (pyserini)")
            ours = _in_fresh_process(_run_vimi, tmp, k, threads, shards, merge)
        progress(f"{n_docs:,} documents: bm25s")
        peer = _in_fresh_process(_run_bm25s, captions, queries, k, threads)
        size: dict[str, Any] = {
            "docs": n_docs,
            "vimi": {key: v for key, v in ours.items() if key != "results"},
            "bm25s_numba": {key: v for key, v in peer.items() if key != "results"},
            "agreement_vimi_bm25s": tie_aware_agreement(ours["results"], peer["results"], k),
        }
        size["ratio_search_vimi_vs_bm25s"] = ours["search_queries_per_s"] / peer["search_queries_per_s"]
        size["ratio_augment_end_to_end_vs_bm25s_search"] = ours["augment_captions_per_s"] / peer["search_queries_per_s"]
        if n_docs == smallest:
            progress(f"{n_docs:,} documents: rank-bm25")
            few = queries[:rank_bm25_queries]
            slow = _in_fresh_process(_run_rank_bm25, captions, few, k)
            size["rank_bm25"] = {key: v for key, v in slow.items() if key != "results"}
            size["agreement_vimi_rank_bm25"] = tie_aware_agreement(ours["results"][: len(few)], slow["results"], k)
            size["ratio_search_vimi_vs_rank_bm25"] = ours["search_queries_per_s"] / slow["search_queries_per_s"]
        out["sizes"][str(n_docs)] = size
    out["projection"] = project(out)
    return out


def project(result: dict[str, Any], docs: int = 500_000_000, captions: int = 10_000_000) -> dict[str, Any]:
    """Scale the measured rates to a 500M-document memory and 10M captions.

    Index build is linear in documents and shards are independent: time = docs / (docs/s of one
    2-core machine) / machines. Search cost per query grows with posting-list lengths; the exponent
    is fitted between the two largest measured sizes (q/s ∝ docs^-alpha) and applied per shard of
    `shard_docs` documents, with every shard searched for every caption (scatter-gather)."""
    sizes = sorted(result["sizes"].values(), key=lambda s: s["docs"])
    largest = sizes[-1]
    index_rate = largest["vimi"]["index_docs_per_s"]
    qps = largest["vimi"]["search_queries_per_s"]
    alpha = 0.0
    if len(sizes) >= 2:
        prev = sizes[-2]
        alpha = -math.log(qps / prev["vimi"]["search_queries_per_s"]) / math.log(largest["docs"] / prev["docs"])
    shard_docs = 50_000_000
    shards = math.ceil(docs / shard_docs)
    qps_per_shard = qps * (shard_docs / largest["docs"]) ** (-alpha)
    one_machine_search_h = captions * shards / qps_per_shard / 3600
    return {
        "memory_docs": docs,
        "captions": captions,
        "measured_at_docs": largest["docs"],
        "search_scaling_exponent_alpha": round(alpha, 3),
        "shard_docs": shard_docs,
        "shards": shards,
        "index_build_hours_one_machine": round(docs / index_rate / 3600, 2),
        "index_build_hours_on_shards_machines": round(shard_docs / index_rate / 3600, 2),
        "search_queries_per_s_per_shard": round(qps_per_shard, 1),
        "augment_hours_one_machine": round(one_machine_search_h, 1),
        "augment_hours_on_shards_machines": round(one_machine_search_h / shards, 1),
        "method": project.__doc__.split("\n\n", 1)[1].strip().replace("\n   ", ""),
    }
