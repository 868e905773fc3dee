"""Lance fragments: appends merge them past a threshold, `vimi compact` merges on demand; rows, their
order and older versions are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lance
import numpy as np
import pyarrow as pa
import pytest

from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.pipeline import compact_datasets

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("caption", pa.string())])


def _append(uri, start: int, n: int = 1, max_fragments: int | None = lance_io.MAX_FRAGMENTS):
    rows = [{"id": i, "caption": f"row {i}"} for i in range(start, start + n)]
    return lance_io.write_batches(
        uri, lance_io.batches_of(rows, SCHEMA, 256), SCHEMA, "append", max_fragments=max_fragments
    )


def _manifest_bytes(uri) -> int:
    return sum(p.stat().st_size for p in (uri / "_versions").glob("*.manifest"))


def test_appends_past_max_fragments_are_merged_with_rows_order_and_old_versions_kept(tmp_path):
    uri = tmp_path / "d.lance"
    fragments, versions = [], []
    for i in range(20):
        result = _append(uri, 3 * i, n=3, max_fragments=8)
        ds = lance.dataset(str(uri))
        fragments.append(len(ds.get_fragments()))
        versions.append(result.version)
        assert result.version == ds.version and result.total_rows == 3 * (i + 1) and result.rows_written == 3
    # 9 fragments after the 9th append → merged to 1; then 8 more appends before the next merge.
    assert fragments == [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4]
    # the merge commits after the append (Lance 14: two versions, a rewrite and its bookkeeping)
    merge = versions[8] - 9
    assert merge >= 1 and versions == [
        *range(1, 9),
        9 + merge,
        *range(10 + merge, 17 + merge),
        17 + 2 * merge,
        *range(18 + 2 * merge, 21 + 2 * merge),
    ]
    table = lance.dataset(str(uri)).to_table()
    assert table.column("id").to_pylist() == list(range(60))
    assert table.column("caption").to_pylist()[59] == "row 59"
    # the version the 9th append wrote, before the merge, still reads its 9 fragments and rows
    before = lance.dataset(str(uri), version=9)
    assert len(before.get_fragments()) == 9 and before.to_table().column("id").to_pylist() == list(range(27))
    # same rows as one commit of all of them
    whole = tmp_path / "whole.lance"
    _append(whole, 0, n=60)
    assert lance_io.fingerprint(uri) == lance_io.fingerprint(whole)


def test_merging_keeps_manifests_linear_in_appends(tmp_path):
    merged, unmerged = tmp_path / "merged.lance", tmp_path / "unmerged.lance"
    for i in range(120):
        _append(merged, i, max_fragments=8)
        _append(unmerged, i, max_fragments=None)
    assert len(lance.dataset(str(unmerged)).get_fragments()) == 120
    assert len(lance.dataset(str(merged)).get_fragments()) <= 8
    # every manifest lists every fragment: unmerged, their sum grows with the square of the appends
    assert _manifest_bytes(unmerged) > 4 * _manifest_bytes(merged)


def test_overwrite_is_never_merged(tmp_path):
    uri = tmp_path / "d.lance"
    for i in range(3):
        _append(uri, i, max_fragments=None)
    rows = [{"id": 9, "caption": "new"}]
    result = lance_io.write_batches(uri, lance_io.batches_of(rows, SCHEMA, 256), SCHEMA, "overwrite", max_fragments=0)
    assert result.version == 4 and len(lance.dataset(str(uri)).get_fragments()) == 1


def test_vimi_compact_merges_a_dataset_other_tools_appended_to(project, settings):
    uri = settings.path("memory")
    for i in range(5):
        _append(uri, i, max_fragments=None)
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "compact", "memory", "augmented", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["augmented"] is None
    memory = result.pop("memory")
    assert memory.pop("version") > 5
    assert memory == {"path": str(uri), "fragments_before": 5, "version_before": 5, "fragments": 1, "compacted": True}
    assert lance.dataset(str(uri)).to_table().column("id").to_pylist() == [0, 1, 2, 3, 4]
    # a second run has nothing to do; --max-fragments leaves smaller datasets alone
    assert compact_datasets(settings, ["memory"])["memory"]["compacted"] is False
    version = _append(uri, 5, max_fragments=None).version
    assert compact_datasets(settings, ["memory"], max_fragments=2)["memory"] == {
        "path": str(uri),
        "fragments_before": 2,
        "version_before": version,
        "fragments": 2,
        "version": version,
        "compacted": False,
    }
    status = subprocess.run(
        [sys.executable, "-m", "vimi", "status"], capture_output=True, text=True, env=env, cwd=project
    )
    assert f"memory: 6 rows, version {version}, 2 fragments" in status.stdout


def test_compacting_an_unknown_dataset_names_the_known_ones(settings):
    with pytest.raises(VimiError, match="no dataset named bogus; the datasets are memory, videos"):
        compact_datasets(settings, ["memory", "bogus"])


def _files(uri) -> int:
    return sum(1 for f in uri.rglob("*") if f.is_file())


def test_prune_keeps_the_latest_and_every_version_other_datasets_read_at(settings):
    from vimi.data.clips import AugmentedClips, InstructionClips
    from vimi.pipeline import augment_videos, build_bm25_index, build_instruction_dataset, build_memory, generate_world

    generate_world(settings)  # memory v1, videos v1, eval_videos v1
    build_bm25_index(settings)  # built from memory v1
    augment_videos(settings)  # augmented v1
    # a rerun with unchanged inputs reuses its partitions and makes no version; split differently, the
    # rows are written again: augmented v2 (rows at memory v1, videos v1)
    settings.params["retrieval"]["augment_partitions"] = 3
    augment_videos(settings)
    build_instruction_dataset(settings)  # instructions v1: augmented v2, memory v1, videos v1, eval v1
    settings.params["retrieval"]["augment_partitions"] = 1
    augment_videos(settings)  # augmented v3
    build_memory(settings)
    build_memory(settings)  # memory v3: v2 is read by nothing
    memory, augmented = settings.path("memory"), settings.path("augmented")
    assert lance.dataset(str(memory)).version == 3 and lance.dataset(str(augmented)).version == 3
    files = {name: _files(settings.path(name)) for name in ("memory", "augmented", "videos")}

    result = compact_datasets(settings, prune=True)
    assert result["memory"]["versions_kept"] == [1, 3] and result["memory"]["versions_pruned"] == 1
    assert result["augmented"]["versions_kept"] == [2, 3] and result["augmented"]["versions_pruned"] == 1
    assert result["videos"]["versions_kept"] == [1] and result["videos"]["versions_pruned"] == 0
    assert result["eval_videos"]["versions_kept"] == [1] and result["instructions"]["versions_kept"] == [1]
    assert result["quarantine"] is None
    assert [v["version"] for v in lance.dataset(str(memory)).versions()] == [1, 3]
    assert [v["version"] for v in lance.dataset(str(augmented)).versions()] == [2, 3]
    # the pruned versions' own files are gone; nothing the others read
    assert result["memory"]["files"] < files["memory"] == result["memory"]["files_before"]
    assert result["augmented"]["files"] < files["augmented"]
    assert _files(settings.path("videos")) == files["videos"]
    with pytest.raises(ValueError):
        lance.dataset(str(augmented), version=1)
    # what reads at recorded versions still reads: the instruction dataset (memory v1 through
    # augmented v2) and the augmented dataset (memory v1)
    world = settings.params["world"]
    clips = InstructionClips(settings.path("instructions"), "train", world["num_frames"], world["frame_size"], 16)
    batch = clips.__getitems__(list(range(len(clips))))
    assert batch.frames.shape[0] == len(clips) and batch.frames.any()
    images = [part for prompt in batch.prompts for part in prompt if isinstance(part, np.ndarray)]
    assert images and all(image.any() for image in images)
    aug = AugmentedClips(augmented, settings.path("videos"), world["num_frames"], world["frame_size"], 16)
    every = aug.__getitems__(list(range(len(aug))))
    assert aug.memory_version == 1 and all(docs and all(d.any() for d in docs) for docs in every.doc_images)
    # a second prune has nothing left to do
    again = compact_datasets(settings, ["memory", "augmented"], prune=True)
    assert again["memory"]["versions_pruned"] == 0 and again["augmented"]["versions_pruned"] == 0


def test_vimi_compact_prune_says_what_it_deleted(project, settings):
    uri = settings.path("memory")
    for i in range(4):
        _append(uri, i, max_fragments=None)
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "compact", "--prune", "memory"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=project,
    )
    assert out.returncode == 0, out.stderr
    latest = lance.dataset(str(uri)).version
    files = sum(1 for f in uri.rglob("*") if f.is_file())
    assert f"memory: 4 → 1 fragments, version 4 → {latest}; pruned {latest - 1} versions, kept [{latest}]" in out.stdout
    assert out.stdout.rstrip().endswith(f"→ {files} files")
    assert lance.dataset(str(uri)).to_table().column("id").to_pylist() == [0, 1, 2, 3]


def test_batches_are_cut_by_bytes_as_well_as_rows():
    """256 rows of 1 MB each would be one 256 MB batch: cut at 4 MB, it is 64 batches of 4 rows (the row
    that fills a batch closes it); small rows still go 256 to a batch."""
    big = [{"id": i, "caption": "x" * 2**20} for i in range(256)]
    sizes = [b.num_rows for b in lance_io.batches_of(big, SCHEMA, 256, batch_bytes=4 * 2**20)]
    assert sizes == [4] * 64
    small = [{"id": i, "caption": "x"} for i in range(600)]
    assert [b.num_rows for b in lance_io.batches_of(small, SCHEMA, 256)] == [256, 256, 88]
