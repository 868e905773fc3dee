"""BM25 over the memory's captions with pyserini's Anserini/Lucene: build, open, search.

**Index.** The memory is split into contiguous row ranges, one Lucene shard each, indexed in
parallel by vimi's ``BatchIndexer`` (Java, in ``vimi-lucene.jar``: the documents Anserini's indexer
makes, with its DefaultEnglishAnalyzer, Porter stemming and English stopwords), fed batches streamed
from Lance as Arrow's own bytes. One indexing thread per shard keeps Lucene's doc
ids in memory-row order, so a hit's doc id *is* its memory row: no stored-field lookups at search
time, and ties in score are broken by memory row, deterministically (Lucene's own rule: lower doc
id first). The build checks this and falls back to an explicit doc-id → row map if not.

**Search.** The shards are read together (a MultiReader: collection statistics, hence scores, are
those of one index) through Anserini's bag-of-words query generator — text is analyzed, never
parsed as Lucene query syntax — and Lucene's top-k search, which skips non-competitive documents
(block-max WAND). A batch of texts is searched in one call by vimi's ``BatchSearcher`` (Java
threads, the same queries and collector, one array of primitives back). pyserini's ``LuceneSearcher``
sorts every match to break ties by id and loads stored fields per hit; it is ~10× slower here and its
import pulls in torch (~10 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import lance
import numpy as np

from vimi.config import dataset_location
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.io.files import read_json, recover_dir, replace_dir
from vimi.parallel import ordered_map
from vimi.progress import counter
from vimi.retrieval.java import start_jvm

INFO_FILE = "vimi_index.json"
SHARD_FILE = "shard.json"  # a built partition's record, written last
ROWS_FILE = "docid_rows.npy"
FIELD = "contents"


@dataclass
class IndexInfo:
    """What an index was built from and how (written beside the Lucene shards)."""

    index_id: str
    memory_path: str  # where it was built from (for people; the index may move with the data)
    memory_version: int
    memory_ids_sha256: str  # identifies the memory's rows, wherever the data directory lives
    docs: int
    k1: float
    b: float
    shards: list[dict[str, Any]] = field(default_factory=list)  # what is searched: {"path", "start", "docs"}
    partitions: list[dict[str, Any]] = field(default_factory=list)  # what was built: {"start", "docs"}
    merged: bool = False  # the partitions merged into one shard of one segment at the commit
    docid_is_row: bool = True
    analyzer: str = "anserini DefaultEnglishAnalyzer (porter stemmer, English stopwords)"
    seconds: float = 0.0
    built_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # summed over shards (threads overlap)

    @classmethod
    def load(cls, index_dir: Path) -> "IndexInfo":
        recover_dir(Path(index_dir))
        path = Path(index_dir) / INFO_FILE
        if not path.is_file():
            raise VimiError(f"No BM25 index at {index_dir}. Build it with `vimi index build`.")
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:  # cut short, or written by another version
            raise VimiError(
                f"The BM25 index at {index_dir} is unreadable ({INFO_FILE}: {type(exc).__name__}). Rebuild it with"
                " `vimi index build`."
            ) from None


class Hit(NamedTuple):
    id: str
    score: float
    rank: int
    row: int  # row of the memory version the index was built from


def index_size(index_dir: Path) -> int:
    return sum(f.stat().st_size for f in Path(index_dir).rglob("*") if f.is_file())


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


def arrow_ids_digest(ids) -> str:
    """ids_digest of an Arrow string array, from its buffers (no Python string per id)."""
    offsets, data = _arrow_strings(ids)
    starts = np.frombuffer(offsets, "<i4")[1:-1]
    joined = np.insert(np.frombuffer(data, np.uint8), starts, 0)  # a NUL before every id but the first
    return hashlib.sha256(joined.tobytes()).hexdigest()


def _jclass(name: str):
    from jnius import autoclass

    return autoclass(name)


def _open_reader(path: Path):
    reader = _jclass("org.apache.lucene.index.DirectoryReader").open(
        _jclass("org.apache.lucene.store.FSDirectory").open(_jclass("java.nio.file.Paths").get(str(path)))
    )
    return reader


def _arrow_strings(column) -> tuple[bytes, bytes]:
    """An Arrow string column as (int32 offsets[n + 1], UTF-8 data), little-endian, nulls as empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pc.fill_null(column, "")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type != pa.string():
        column = column.cast(pa.string())
    offsets = np.frombuffer(column.buffers()[1], np.int32, len(column) + 1, column.offset * 4)
    data = column.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    return (offsets - first).astype("<i4").tobytes(), (data.to_pybytes()[first:last] if data is not None else b"")


def _index_shard(
    ds: lance.LanceDataset, start: int, stop: int, path: Path, batch_rows: int, tick, ram_mb: float
) -> dict[str, float]:
    """Index rows [start, stop) into one shard through vimi's BatchIndexer (each batch handed over as
    Arrow's bytes: no string or JSON per document on the Python side); returns the seconds spent
    reading Lance, handing batches to Java (indexing) and in the final merge and flush."""
    clock = time.perf_counter
    analyzer = _jclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
    indexer = _jclass("io.vimi.retrieval.BatchIndexer")(str(path), analyzer, FIELD, ram_mb)
    spent = {"lance_read_s": 0.0, "arrow_bytes_s": 0.0, "java_index_s": 0.0, "java_flush_s": 0.0}
    try:
        batches = iter(
            ds.to_batches(columns=["id", "caption"], batch_size=batch_rows, offset=start, limit=stop - start)
        )
        while True:
            t0 = clock()
            batch = next(batches, None)
            t1 = clock()
            spent["lance_read_s"] += t1 - t0
            if batch is None:
                break
            ids, captions = _arrow_strings(batch.column(0)), _arrow_strings(batch.column(1))
            t2 = clock()
            indexer.add(batch.num_rows, *ids, *captions)
            t3 = clock()
            spent["arrow_bytes_s"] += t2 - t1
            spent["java_index_s"] += t3 - t2
            tick(batch.num_rows)
    finally:
        t4 = clock()
        indexer.close()
        spent["java_flush_s"] += clock() - t4
    return spent


def _doc_rows_if_shuffled(
    ds: lance.LanceDataset, shard_dirs: list[Path], starts: list[int], samples: int = 64
) -> np.ndarray | None:
    """None when every shard is one segment whose doc ids follow the rows (spot-checked against
    stored ids); else the doc-id → row map, read from the stored ids of every document."""
    for path, start in zip(shard_dirs, starts):
        reader = _open_reader(path)
        stored, n = reader.storedFields(), reader.maxDoc()
        probe = sorted({0, n - 1, *np.random.default_rng(0).integers(0, n, samples).tolist()})
        expected = ds.take([start + d for d in probe], columns=["id"]).column(0).to_pylist()
        ordered = reader.leaves().size() == 1 and [stored.document(d).get("id") for d in probe] == expected
        reader.close()
        if not ordered:
            break
    else:
        return None
    row_of = {doc_id: row for row, doc_id in enumerate(ds.to_table(columns=["id"]).column(0).to_pylist())}
    rows = []
    for path in shard_dirs:
        reader = _open_reader(path)
        stored = reader.storedFields()
        rows += [row_of[stored.document(d).get("id")] for d in range(reader.maxDoc())]
        reader.close()
    return np.asarray(rows, dtype=np.int64)


def parts_dir(index_dir: Path) -> Path:
    """Where the index's partitions are built, one shard each, before the commit step puts them together."""
    index_dir = Path(index_dir)
    return index_dir.with_name(f"{index_dir.name}.parts")


def shard_bounds(total: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous memory-row ranges [start, stop), one per shard."""
    return [(s * total // shards, (s + 1) * total // shards) for s in range(shards)]


def _open_memory(memory_uri: Path) -> lance.LanceDataset:
    ds = lance_io.open_dataset(memory_uri, "memory", "Build it first (vimi world generate or vimi memory build).")
    if ds.count_rows() == 0:
        raise VimiError(f"The memory at {memory_uri} is empty: nothing to index.")
    return ds


def _memory_digest(ds: lance.LanceDataset) -> str:
    return arrow_ids_digest(ds.to_table(columns=["id"]).column(0).combine_chunks())


def _shard_identity(ds: lance.LanceDataset, shard: int, shards: int, digest: str | None = None) -> dict[str, Any]:
    """What a built shard must match to be reused: the memory's version and rows, and its row range."""
    if shards < 1:
        raise VimiError(f"retrieval.index_shards must be >= 1, got {shards}.")
    if not 0 <= shard < shards:
        raise VimiError(f"BM25 index partition {shard} does not exist: there are {shards} (0 … {shards - 1}).")
    start, stop = shard_bounds(ds.count_rows(), shards)[shard]
    return {
        "memory_version": ds.version,
        "memory_ids_sha256": digest or _memory_digest(ds),
        "shard": shard,
        "shards": shards,
        "start": start,
        "docs": stop - start,
    }


def _heap_mb() -> float:
    return _jclass("java.lang.Runtime").getRuntime().maxMemory() / 2**20


def build_shard(
    memory_uri: Path,
    index_dir: Path,
    shard: int,
    shards: int,
    batch_rows: int = 20_000,
    ram_mb: float | None = None,
    tick=None,
    digest: str | None = None,
) -> dict[str, Any]:
    """Partition SHARD of SHARDS: its memory rows indexed into ``parts_dir(index_dir)/shard-N``, written
    aside and moved into place whole, its record (``shard.json``) last. A shard already built from the
    same memory rows is kept as it is (a rerun is idempotent); one cut short by a kill is rebuilt."""
    started = time.perf_counter()
    ds = _open_memory(memory_uri)
    want = _shard_identity(ds, shard, shards, digest)
    parts = parts_dir(index_dir)
    final = parts / f"shard-{shard}"
    done = read_json(final / SHARD_FILE)
    if isinstance(done, dict) and {k: done.get(k) for k in want} == want and (final / "index").is_dir():
        if tick:
            tick(want["docs"])
        return done | {"reused": True}
    for stale in parts.glob(f".shard-{shard}.tmp-*"):  # left by a killed build of this shard
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp = parts / f".shard-{shard}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        start_jvm()
        # The writer buffers up to this much before it flushes a segment: half the JVM's heap, at most
        # 512 MB (a flush more costs a merge at the end; a buffer too big, the heap).
        ram = float(ram_mb if ram_mb is not None else max(16, min(512, _heap_mb() / 2)))
        start = want["start"]
        spent = _index_shard(ds, start, start + want["docs"], tmp / "index", batch_rows, tick or (lambda n: None), ram)
        record = want | {"timings": {k: round(v, 3) for k, v in spent.items()}}
        record["seconds"] = round(time.perf_counter() - started, 3)
        (tmp / SHARD_FILE).write_text(json.dumps(record, indent=1))
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record | {"reused": False}


def _link_tree(source: Path, dest: Path) -> None:
    """DEST as a copy of SOURCE made of hard links where the file system allows (Lucene never rewrites a
    file, so the shard's files can be shared), else of copies."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)


def commit_index(memory_uri: Path, index_dir: Path, shards: int, k1: float, b: float, merge: bool = True) -> IndexInfo:
    """The commit step: the SHARDS built partitions become the index at ``index_dir`` in one move, so a
    reader sees all of them or the previous index. With ``merge`` they are merged, in order, into one
    shard of one segment (a query then sets up its terms and scorers once, not once per shard: 1.2–1.4×
    faster search at 1M documents); without, they stay shards searched as one index, as shards on
    separate machines would be. Refuses, naming them, partitions that are missing or were built from
    other memory rows."""
    started = time.perf_counter()
    index_dir = Path(index_dir)
    ds = _open_memory(memory_uri)
    parts = parts_dir(index_dir)
    digest = _memory_digest(ds)
    wanted = [_shard_identity(ds, s, shards, digest) for s in range(max(shards, 1))]  # shards < 1: refused
    records, missing = [], []
    for want in wanted:
        done = read_json(parts / f"shard-{want['shard']}" / SHARD_FILE)
        if not isinstance(done, dict) or {k: done.get(k) for k in want} != want:
            missing.append(want["shard"])
        records.append(done)
    if missing:
        raise VimiError(
            f"BM25 index partition{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {shards} "
            f"{'are' if len(missing) > 1 else 'is'} not built from memory version {ds.version} in {parts}: build "
            f"{'them' if len(missing) > 1 else 'it'} first (`vimi index build --partition N --partitions {shards}`)."
        )
    recover_dir(index_dir)
    for stale in index_dir.parent.glob(f".{index_dir.name}.tmp-*"):  # left by a killed commit
        shutil.rmtree(stale, ignore_errors=True)
    tmp = index_dir.with_name(f".{index_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    merged = merge and shards > 1
    shard_dirs = [tmp / f"shard-{s:03d}" for s in range(1 if merged else shards)]
    searched = (
        [{"path": shard_dirs[0].name, "start": 0, "docs": sum(w["docs"] for w in wanted)}]
        if merged
        else [{"path": p.name, "start": w["start"], "docs": w["docs"]} for p, w in zip(shard_dirs, wanted)]
    )
    merge_started = time.perf_counter()
    try:
        tmp.mkdir(parents=True)
        start_jvm()
        if merged:
            _jclass("io.vimi.retrieval.BatchIndexer").merge(
                [str(parts / f"shard-{s}" / "index") for s in range(shards)], str(shard_dirs[0])
            )
        else:
            for s, path in enumerate(shard_dirs):
                _link_tree(parts / f"shard-{s}" / "index", path)
        merge_s = time.perf_counter() - merge_started
        rows = _doc_rows_if_shuffled(ds, shard_dirs, [s["start"] for s in searched])
        if rows is not None:
            np.save(tmp / ROWS_FILE, rows)
        info = IndexInfo(
            index_id=uuid.uuid4().hex,
            memory_path=lance_io.location(memory_uri),
            memory_version=ds.version,
            memory_ids_sha256=wanted[0]["memory_ids_sha256"],
            docs=ds.count_rows(),
            k1=float(k1),
            b=float(b),
            shards=searched,
            partitions=[{"start": w["start"], "docs": w["docs"]} for w in wanted],
            merged=merged,
            docid_is_row=rows is None,
            # the partitions' own time (summed: they may have run side by side) and the commit's
            seconds=round(sum(r["seconds"] for r in records) + time.perf_counter() - started, 3),
            built_at=time.time(),
            timings={k: round(sum(r["timings"][k] for r in records), 3) for k in records[0]["timings"]}
            | ({"merge_s": round(merge_s, 3)} if merged else {}),
        )
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=1))
        replace_dir(tmp, index_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for extra in parts.glob("shard-*"):  # partitions of an earlier count are no part of this index
        if extra.name.removeprefix("shard-").isdigit() and int(extra.name.removeprefix("shard-")) >= shards:
            shutil.rmtree(extra, ignore_errors=True)
    return info


def build_index(
    memory_uri: Path,
    index_dir: Path,
    k1: float,
    b: float,
    shards: int = 2,
    batch_rows: int = 20_000,
    merge: bool = True,
) -> IndexInfo:
    """Index every memory caption (doc id = memory id) into ``index_dir``: every partition (in parallel
    threads; the Java side runs outside the GIL), then the commit step (`commit_index`: ``merge``
    makes the partitions one shard). Partitions already built from the same memory rows are reused."""
    start_time = time.perf_counter()
    ds = _open_memory(memory_uri)
    total = ds.count_rows()
    shards = max(1, min(shards, total))
    start_jvm()
    ram_mb = float(max(16, min(512, _heap_mb() / 2 / shards)))  # the heap is shared by the shards' writers
    digest = _memory_digest(ds)
    with counter(total, "indexing captions", unit="doc") as tick:
        list(
            ordered_map(
                lambda s: build_shard(memory_uri, index_dir, s, shards, batch_rows, ram_mb, tick, digest),
                range(shards),
                workers=shards,
            )
        )
    info = commit_index(memory_uri, index_dir, shards, k1, b, merge)
    for stale in parts_dir(index_dir).glob(".shard-*.tmp-*"):  # every partition is done: left by killed builds
        shutil.rmtree(stale, ignore_errors=True)
    info.seconds = round(time.perf_counter() - start_time, 3)  # wall clock: the shards overlapped
    (Path(index_dir) / INFO_FILE).write_text(json.dumps(asdict(info), indent=1))
    return info


def memory_ids(info: IndexInfo, memory_uri: Path, index_dir: Path):
    """The ids of the memory version the index was built from; an error naming `vimi index build`
    when the memory at ``memory_uri`` has moved on or is another memory."""
    ds = lance_io.open_dataset(memory_uri, "memory", "Build it first (vimi world generate).")
    stale = (
        f"The BM25 index at {index_dir} was built from memory version {info.memory_version} "
        f"({info.memory_path}); the memory at {memory_uri} is version {ds.version}"
    )
    if ds.version != info.memory_version:
        raise VimiError(f"{stale}. Rebuild it: `vimi index build`.")
    ids = ds.to_table(columns=["id"]).column(0).combine_chunks()  # an Arrow string array
    if arrow_ids_digest(ids) != info.memory_ids_sha256:
        raise VimiError(f"{stale}, with other rows. Rebuild it: `vimi index build`.")
    return ids


class BatchHits(NamedTuple):
    """Hits of a batch of texts as arrays: text i's are rows[i, :counts[i]] (memory rows) with their
    scores, best first; the rest of each row is -1 / 0. ``truncated``: as Hits.truncated."""

    counts: np.ndarray  # n, int32
    rows: np.ndarray  # n × k, int64
    scores: np.ndarray  # n × k, float32
    truncated: np.ndarray  # n, bool


class Hits(list):
    """A query's hits, best first; ``truncated`` when the query had more distinct terms than Lucene's
    clause limit and only the first ones were searched."""

    truncated = False


class BM25Searcher:
    """Top-k BM25 search over an index built by :func:`build_index`. Thread-safe."""

    def __init__(self, index_dir: Path, memory_uri: Path):
        index_dir = Path(index_dir)
        self.info = IndexInfo.load(index_dir)
        self.index_dir = index_dir
        self._id_array = memory_ids(self.info, memory_uri, index_dir)
        self._id_list: list[str] | None = None
        start_jvm()
        from jnius import cast

        readers = [
            cast("org.apache.lucene.index.IndexReader", _open_reader(index_dir / s["path"])) for s in self.info.shards
        ]
        multi = _jclass("org.apache.lucene.index.MultiReader")(readers, True)  # closes the shards with it
        self._reader = cast("org.apache.lucene.index.IndexReader", multi)
        self._searcher = _jclass("org.apache.lucene.search.IndexSearcher")(self._reader)
        self._searcher.setSimilarity(
            _jclass("org.apache.lucene.search.similarities.BM25Similarity")(self.info.k1, self.info.b)
        )
        self._analyzer = _jclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
        self._generator = _jclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        self._new_collector = _jclass("org.apache.lucene.search.TopScoreDocCollector").create
        self._batch = _jclass("io.vimi.retrieval.BatchSearcher")(self._searcher, self._analyzer, FIELD)
        self._cast = cast
        self._rows = None if self.info.docid_is_row else np.load(index_dir / ROWS_FILE)
        self.num_docs = int(self._reader.numDocs())

    def id_array(self):
        """The memory's ids as one Arrow string array (index = memory row)."""
        return self._id_array

    @property
    def _ids(self) -> list[str]:
        """The ids as Python strings, for the per-hit paths; made on first use (augmentation never needs them)."""
        if self._id_list is None:
            self._id_list = self._id_array.to_pylist()
        return self._id_list

    def analyze(self, text: str) -> list[str]:
        """The terms the index sees for ``text`` (after tokenizing, stopwords, stemming)."""
        return [str(t) for t in _jclass("io.anserini.analysis.AnalyzerUtils").analyze(self._analyzer, text).toArray()]

    def search(self, text: str, k: int) -> Hits:
        """The k best documents for ``text``: BM25 score descending, then memory row ascending. A k
        beyond the memory's size is the memory's size; a query with more distinct terms than Lucene's
        clause limit searches its first terms (``Hits.truncated``)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        hits = Hits()
        if not text or not text.strip():
            return hits
        k = min(k, max(self.num_docs, 1))  # the collector allocates k slots up front
        try:
            query = self._generator.buildQuery(FIELD, self._analyzer, text)
        except Exception as exc:  # jnius.JavaException: IndexSearcher$TooManyClauses
            if "TooManyClauses" not in f"{getattr(exc, 'classname', '')} {exc}":
                raise
            query, hits.truncated = self._truncated_query(text), True
        # Counting stops at k hits, so block-max WAND skips from the start (IndexSearcher.search(q, k)
        # counts 1,000 first); the hits are the same.
        collector = self._new_collector(k, k)
        self._searcher.search(query, self._cast("org.apache.lucene.search.Collector", collector))
        ids, rows = self._ids, self._rows
        for rank, doc in enumerate(collector.topDocs().scoreDocs, start=1):
            row = doc.doc if rows is None else int(rows[doc.doc])
            hits.append(Hit(ids[row], doc.score, rank, row))
        return hits

    def _truncated_query(self, text: str):
        """The bag-of-words query of ``text``'s first distinct terms, as many as Lucene allows, each
        boosted by its count in the whole text (as Anserini's generator boosts)."""
        limit = int(_jclass("org.apache.lucene.search.IndexSearcher").getMaxClauseCount())
        counts: dict[str, int] = {}
        for term in self.analyze(text):
            if term in counts or len(counts) < limit:
                counts[term] = counts.get(term, 0) + 1
        builder = _jclass("org.apache.lucene.search.BooleanQuery$Builder")()
        should = _jclass("org.apache.lucene.search.BooleanClause$Occur").SHOULD
        term_query, boost_query = (
            _jclass("org.apache.lucene.search.TermQuery"),
            _jclass("org.apache.lucene.search.BoostQuery"),
        )
        term_class = _jclass("org.apache.lucene.index.Term")
        for term, count in counts.items():
            builder.add(boost_query(term_query(term_class(FIELD, term)), float(count)), should)
        return builder.build()

    def search_arrays(self, texts: Sequence[str], k: int, threads: int = 2) -> BatchHits:
        """search() over many texts at once, as arrays: one call into Java, whose threads search the
        batch (vimi's BatchSearcher: the same queries and collector as search(), so the same hits)."""
        if k < 1:
            raise ValueError("k must be >= 1")
        n, k = len(texts), min(k, max(self.num_docs, 1))
        if n == 0:
            empty = np.zeros((0, k), np.int64)
            return BatchHits(np.zeros(0, np.int32), empty, empty.astype(np.float32), np.zeros(0, bool))
        raw = self._batch.search([t or "" for t in texts], k, max(1, int(threads)))
        buffer = bytes(raw) if not isinstance(raw, (bytes, bytearray)) else raw
        counts = np.frombuffer(buffer, "<i4", n, 0)
        docs = np.frombuffer(buffer, "<i4", n * k, 4 * n).reshape(n, k)
        scores = np.frombuffer(buffer, "<f4", n * k, 4 * n * (1 + k)).reshape(n, k)
        truncated = np.frombuffer(buffer, "<i1", n, 4 * n * (1 + 2 * k)).astype(bool)
        rows = docs.astype(np.int64)
        if self._rows is not None:
            rows = np.where(rows >= 0, self._rows[np.maximum(rows, 0)], -1)
        return BatchHits(counts.astype(np.int32), rows, scores.copy(), truncated)

    def batch_search(self, texts: Sequence[str], k: int, threads: int = 2) -> list[Hits]:
        """search() over many texts, in order (through search_arrays)."""
        found = self.search_arrays(texts, k, threads)
        ids, out = self._ids, []
        for count, rows, scores, truncated in zip(found.counts, found.rows, found.scores, found.truncated):
            hits = Hits(
                Hit(ids[r], float(s), rank, int(r)) for rank, (r, s) in enumerate(zip(rows[:count], scores[:count]), 1)
            )
            hits.truncated = bool(truncated)
            out.append(hits)
        return out


_searchers: dict[str, BM25Searcher] = {}
_searchers_lock = threading.Lock()


def open_searcher(index_dir: Path, memory_uri: Path) -> BM25Searcher:
    """A searcher per index build and memory, cached (a rebuilt index opens anew)."""
    info = IndexInfo.load(Path(index_dir))
    key = f"{Path(index_dir).resolve()}:{info.index_id}:{lance_io.location(memory_uri)}"
    with _searchers_lock:
        if key not in _searchers:
            _searchers[key] = BM25Searcher(Path(index_dir), dataset_location(memory_uri))
        return _searchers[key]


def describe(info: IndexInfo, index_dir: Path) -> dict[str, Any]:
    return asdict(info) | {"path": str(index_dir), "bytes": index_size(index_dir)}
