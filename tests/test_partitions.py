"""Partitioned retrieval steps: the BM25 index and the augmentation done as partitions and one commit give
what the unpartitioned build gives; a partition killed mid-write leaves nothing visible and reruns alone;
Dagster's multiprocess executor runs the partitions side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from tests.conftest import REPO, write_params
from tests.test_retrieval import write_memory
from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.pipeline import generate_world
from vimi.retrieval.augment import AUGMENTED_SCHEMA, augment, augment_partition, commit_augmented
from vimi.retrieval.bm25 import BM25Searcher, build_index, build_shard, commit_index

# index_id is a fresh uuid per build: everything else in a row must be the same
ROW_COLUMNS = [f.name for f in AUGMENTED_SCHEMA if f.name != "index_id"]


def _hits(index: Path, memory: Path, queries: list[str]) -> list:
    searcher = BM25Searcher(index, memory)
    return [[(h.row, h.score) for h in searcher.search(q, 5)] for q in queries]


def _reference(settings: Settings, root: Path) -> tuple[Path, Path]:
    """The unpartitioned build: one shard, one augmentation partition."""
    index, out = root / "bm25", root / "augmented.lance"
    build_index(settings.path("memory"), index, 0.9, 0.4, shards=1)
    augment(settings.path("videos"), settings.path("memory"), index, out, k=4, parts=1, records=root / "records")
    return index, out


def test_partitions_give_the_unpartitioned_rows_and_scores(settings, tmp_path):
    generate_world(settings, parts=("catalog", "memory", "videos"))
    memory, videos = settings.path("memory"), settings.path("videos")
    ref_index, ref_out = _reference(settings, tmp_path / "ref")

    index, out, records = tmp_path / "bm25", tmp_path / "augmented.lance", tmp_path / "records"
    for shard in (3, 1, 0, 2):  # any order: each partition is its own
        assert build_shard(memory, index, shard, 4)["reused"] is False
    assert not index.exists()  # nothing searchable before the commit
    # Kept as shards, they are searched as one index (global BM25 statistics); merged into one shard at
    # the commit (the default), the same: both give the one-shard build's hits and scores.
    captions = lance.dataset(str(memory)).to_table(columns=["caption"]).column(0).to_pylist()
    info = commit_index(memory, index, 4, 0.9, 0.4, merge=False)
    assert [s["docs"] for s in info.shards] == [60, 60, 60, 60] and info.docs == 240 and not info.merged
    assert _hits(index, memory, captions) == _hits(ref_index, memory, captions)
    info = commit_index(memory, index, 4, 0.9, 0.4)
    assert info.merged and info.shards == [{"path": "shard-000", "start": 0, "docs": 240}]
    assert [p["docs"] for p in info.partitions] == [60, 60, 60, 60] and info.docid_is_row
    assert sorted(p.name for p in index.iterdir()) == ["shard-000", "vimi_index.json"]
    assert _hits(index, memory, captions) == _hits(ref_index, memory, captions)

    for part in (3, 1, 0, 2):
        assert augment_partition(videos, memory, index, out, records, part, 4, 4)["reused"] is False
    assert not lance_io.exists(out) and list((out / "data").iterdir())  # written, not committed: not visible
    meta = commit_augmented(videos, memory, index, out, records, 4, 4)
    assert meta["rows"] == 24 and meta["committed"] and meta["version"] == 1
    assert lance_io.fingerprint(out, ROW_COLUMNS) == lance_io.fingerprint(ref_out, ROW_COLUMNS)
    assert [v["version"] for v in lance.dataset(str(out)).versions()] == [1]  # one commit, all partitions

    # A rerun of a finished partition, and of the commit, is idempotent: nothing rewritten, no new version.
    files = sorted(p.name for p in (out / "data").iterdir())
    assert augment_partition(videos, memory, index, out, records, 2, 4, 4)["reused"] is True
    assert build_shard(memory, index, 2, 4)["reused"] is True
    assert commit_augmented(videos, memory, index, out, records, 4, 4)["committed"] is False
    assert sorted(p.name for p in (out / "data").iterdir()) == files
    assert lance.dataset(str(out)).version == 1


def test_missing_stale_and_unknown_partitions_are_named(settings, tmp_path):
    generate_world(settings, parts=("catalog", "memory", "videos"))
    memory, videos = settings.path("memory"), settings.path("videos")
    index, out, records = tmp_path / "bm25", tmp_path / "a.lance", tmp_path / "records"
    for shard in (0, 2):
        build_shard(memory, index, shard, 4)
    with pytest.raises(VimiError, match=r"BM25 index partitions 1, 3 of 4 are not built from memory version 1"):
        commit_index(memory, index, 4, 0.9, 0.4)
    with pytest.raises(VimiError, match=r"BM25 index partition 4 does not exist: there are 4 \(0 … 3\)"):
        build_shard(memory, index, 4, 4)
    build_index(memory, index, 0.9, 0.4, shards=4)
    augment_partition(videos, memory, index, out, records, 0, 2, 4)
    with pytest.raises(VimiError, match=r"Augmentation partition 1 of 2 is not written .* run it first"):
        commit_augmented(videos, memory, index, out, records, 2, 4)
    # written with another k: stale, not reused
    with pytest.raises(VimiError, match=r"Augmentation partitions 0, 1 of 2 are not written .* and k=3"):
        commit_augmented(videos, memory, index, out, records, 2, 3)
    with pytest.raises(VimiError, match=r"retrieval.augment_partitions must be >= 1, got 0"):
        augment_partition(videos, memory, index, out, records, 0, 0, 4)
    cli = subprocess.run(
        [sys.executable, "-m", "vimi.cli", "augment", "--partition", "0", "--commit"],
        capture_output=True,
        text=True,
        env={**os.environ, "VIMI_PROGRESS": "0"},
    )
    assert cli.returncode != 0 and "error: --partition and --commit are separate steps" in cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.slow
def test_a_partition_killed_mid_write_leaves_nothing_visible_and_reruns(tmp_path):
    """SIGKILL while a partition writes its fragments: the dataset readers see is the previous version,
    row for row; the commit refuses the unfinished partition; the partition rerun alone completes it, and
    the result equals the unpartitioned build's."""
    memory, index, videos = tmp_path / "m.lance", tmp_path / "bm25", tmp_path / "v.lance"
    write_memory(memory, [f"a {c} thing number {i}" for i, c in enumerate(["red star", "blue circle"] * 150)])
    build_index(memory, index, 0.9, 0.4)
    n = 60_000  # each partition takes seconds: long enough to be killed while it writes
    captions = [f"a red thing number {i % 300}" if i % 3 else f"blue circle {i % 50}" for i in range(n)]
    lance.write_dataset(pa.table({"id": [f"c{i}" for i in range(n)], "caption": captions}), str(videos))
    out, records = tmp_path / "a.lance", tmp_path / "records"
    augment(videos, memory, index, out, k=4, parts=2, records=records)
    before = lance_io.fingerprint(out, ROW_COLUMNS)

    # k=3 makes both partitions stale: partition 1 is rewritten, and killed while it writes
    augment_partition(videos, memory, index, out, records, 0, 2, 3)
    files = set((out / "data").iterdir())
    code = (
        "from vimi.retrieval.augment import augment_partition\n"
        f"augment_partition({str(videos)!r}, {str(memory)!r}, {str(index)!r}, {str(out)!r}, {str(records)!r},"
        " 1, 2, 3, 0, 1024)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.time() + 120
    while not set((out / "data").iterdir()) - files:  # its first file is open
        assert proc.poll() is None, "the partition finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert set((out / "data").iterdir()) - files  # it had written
    assert lance.dataset(str(out)).version == 1 and lance_io.fingerprint(out, ROW_COLUMNS) == before
    with pytest.raises(VimiError, match=r"Augmentation partition 1 of 2 is not written"):
        commit_augmented(videos, memory, index, out, records, 2, 3)
    assert augment_partition(videos, memory, index, out, records, 1, 2, 3)["reused"] is False
    assert augment_partition(videos, memory, index, out, records, 0, 2, 3)["reused"] is True
    meta = commit_augmented(videos, memory, index, out, records, 2, 3)
    assert meta["rows"] == n and meta["version"] == 2 and meta["k"] == 3
    reference = tmp_path / "ref.lance"
    augment(videos, memory, index, reference, k=3, parts=1, records=tmp_path / "ref-records")
    assert lance_io.fingerprint(out) == lance_io.fingerprint(reference)


def _step_spans(instance, run_id: str, prefix: str) -> list[tuple[float, float]]:
    """Per step, from the executor launching its process to its success: the span it holds one of the
    executor's places. (From its own start instead, a step of under a second can end before the process
    beside it has booted on a busy machine, and the two look one after the other.)"""
    start, end = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not (record.step_key or "").split(".")[-1].startswith(prefix):
            continue
        if event.event_type_value == "STEP_WORKER_STARTING":
            start[record.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            end[record.step_key] = record.timestamp
    assert set(start) == set(end)
    return [(start[key], end[key]) for key in sorted(start)]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)


@pytest.mark.slow
def test_dagster_runs_four_partitions_two_at_a_time(project, tmp_path, monkeypatch):
    """`dagster asset materialize` with the multiprocess executor at 2 steps at a time: the index's and the
    augmentation's four partitions each run as their own step, two side by side, then their commits; the
    rows and scores are the unpartitioned build's."""
    import dagster as dg

    write_params(project, retrieval={"index_shards": 4, "augment_partitions": 4})
    home = tmp_path / "dagster"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VIMI_DAGSTER_EXECUTOR": "multiprocess",
        "VIMI_DAGSTER_MAX_CONCURRENT": "2",
        "VIMI_DVC_RECORD": "0",
        "VIMI_PROGRESS": "0",
    }
    command = [
        str(Path(sys.executable).with_name("dagster")),
        *("asset", "materialize", "-m", "orchestration.definitions", "--select", "*augmented_video_dataset"),
    ]
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        for asset in ("bm25_index", "augmented_video_dataset"):
            spans = _step_spans(instance, run.run_id, f"{asset}_partition_")
            assert len(spans) == 4 and _most_at_once(spans) == 2, (asset, spans)
            (commit,) = _step_spans(instance, run.run_id, f"{asset}_commit")
            assert commit[0] >= max(b for _, b in spans)  # after every partition
        materialization = instance.get_latest_materialization_event(dg.AssetKey("augmented_video_dataset"))
        assert materialization.asset_materialization.metadata["partitions"].value == 4

    settings = Settings.load()
    ref_index, ref_out = _reference(settings, tmp_path / "ref")
    augmented = settings.path("augmented")
    assert lance.dataset(str(augmented)).version == 1
    assert lance_io.fingerprint(augmented, ROW_COLUMNS) == lance_io.fingerprint(ref_out, ROW_COLUMNS)
    memory = settings.path("memory")
    captions = lance.dataset(str(memory)).to_table(columns=["caption"]).column(0).to_pylist()
    assert _hits(settings.path("bm25"), memory, captions) == _hits(ref_index, memory, captions)
