"""The stage-2 instruction dataset: tasks, templates, image sources, determinism, real-data path, suite, CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import REPO, write_params
from vimi.config import Settings, load_params
from vimi.data.instructions import (
    IMAGE_TOKEN,
    TASKS,
    InstructionParams,
    build_instructions,
    draw_tasks,
    render_instruction,
)
from vimi.errors import VimiError
from vimi.memory.schema import GROUND_TRUTH_COLUMNS
from vimi.pipeline import augment_videos, build_bm25_index, build_instruction_dataset, generate_world, validate_dataset

TRAIN_CLIPS, EVAL_CLIPS = 24, 8  # conftest's MICRO_WORLD


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Settings:
    """The micro SpriteWorld with its BM25 index and augmented dataset, built once for the module."""
    root = tmp_path_factory.mktemp("instructions")
    write_params(root)
    settings = Settings.load(params_path=root / "params.yaml", data_dir=root / "data")
    generate_world(settings, parts=("catalog", "memory", "videos", "eval"))
    build_bm25_index(settings)
    augment_videos(settings)
    return settings


@pytest.fixture(scope="module")
def built(world) -> dict:
    """data/instructions.lance with the repository's instruction params."""
    return build_instruction_dataset(world)


def build(
    world: Settings,
    out: Path,
    seed: int | None = None,
    memory: Path | None = None,
    augmented: Path | None = None,
    batch_rows: int = 4096,
    **instructions,
) -> tuple[dict, list[dict]]:
    params = copy.deepcopy(world.params)
    params["instructions"].update(instructions)
    meta = build_instructions(
        memory or world.path("memory"),
        world.path("videos"),
        world.path("eval_videos"),
        augmented or world.path("augmented"),
        out,
        InstructionParams.from_params(params),
        world.seed if seed is None else seed,
        batch_rows=batch_rows,
    )
    return meta, lance.dataset(str(out)).to_table().to_pylist()


def table_of(uri: Path, columns: list[str], version: int | None = None) -> list[dict]:
    return lance.dataset(str(uri), version=version).to_table(columns=columns).to_pylist()


ONE_TEMPLATE_EACH = {
    "subject": ["{images} show {caption}"],
    "prediction": ["{images} then {caption}"],
    "text_to_video": ["{caption}"],
}


def test_default_build_covers_every_clip_with_distinct_tasks(world, built):
    rows = table_of(world.path("instructions"), ["id", "split", "task", "clip_id", "template"])
    assert built["rows"] == len(rows) == TRAIN_CLIPS * 2 + EVAL_CLIPS * 3
    assert len({r["id"] for r in rows}) == len(rows)
    per_clip = defaultdict(list)
    for r in rows:
        per_clip[(r["split"], r["clip_id"])].append(r["task"])
        assert r["id"] == f"ins-{r['split']}-{int(r['clip_id'].split('-')[1]):07d}-{r['task']}"
    train = {c: t for (s, c), t in per_clip.items() if s == "train"}
    evals = {c: t for (s, c), t in per_clip.items() if s == "eval"}
    assert sorted(train) == [f"vid-{i:07d}" for i in range(TRAIN_CLIPS)]
    assert all(len(t) == len(set(t)) == 2 for t in train.values())
    assert sorted(evals) == [f"eval-{i:07d}" for i in range(EVAL_CLIPS)]
    assert all(sorted(t) == sorted(TASKS) for t in evals.values())
    counts = Counter(r["task"] for r in rows if r["split"] == "train")
    assert built["tasks"] == {"train": {t: counts[t] for t in TASKS}, "eval": {t: EVAL_CLIPS for t in TASKS}}
    assert built["subject_unavailable"] == {"train": 0, "eval": 0}
    assert built["reference_source"] == {"ground_truth": counts["subject"] + EVAL_CLIPS}
    # Share of clips holding each task, for two distinct draws by weights 0.4 / 0.3 / 0.3: 0.743 / 0.629 / 0.629.
    w = world.params["instructions"]["mixture"]
    for task in TASKS:
        others = [o for o in TASKS if o != task]
        expected = w[task] + sum(w[o] * w[task] / (1 - w[o]) for o in others)
        assert abs(counts[task] / TRAIN_CLIPS - expected) < 0.2, (task, counts)
    assert len({r["template"] for r in rows if r["task"] == "subject"}) > 1  # templates drawn, not fixed
    example = {e["task"]: e for e in built["examples"]}
    assert set(example) == set(TASKS)
    clip = "vid-" + example["prediction"]["id"].split("-")[2]
    assert example["prediction"]["sources"] == [f"frame 0 of {clip}", f"frame 1 of {clip}"]
    assert all(s.startswith("memory mem-") and "(" in s for s in example["subject"]["sources"])


def test_draw_tasks_follows_the_mixture():
    weights = [0.4, 0.3, 0.3]
    first, included = Counter(), Counter()
    for i in range(20000):
        picks = draw_tasks(np.random.default_rng([0, 5, i]), weights, 2)
        assert len(set(picks)) == 2
        first[picks[0]] += 1
        included.update(picks)
    assert [first[i] / 20000 for i in range(3)] == pytest.approx([0.4, 0.3, 0.3], abs=0.015)
    assert [included[i] / 20000 for i in range(3)] == pytest.approx([0.743, 0.629, 0.629], abs=0.015)
    assert draw_tasks(np.random.default_rng(0), [1.0, 0.0, 0.0], 2) == [0]  # only what is possible


def test_instructions_and_sources_are_exact(world, tmp_path):
    meta, rows = build(
        world, tmp_path / "ins.lance", templates=ONE_TEMPLATE_EACH, reference_images=[2, 2], context_frames=3
    )
    memory = {
        i: m
        for i, m in enumerate(
            table_of(world.path("memory"), ["id", "doc_type", "subject_id", "subject_split"], meta["memory_version"])
        )
    }
    clips = {
        "train": table_of(
            world.path("videos"), ["id", "caption", "subject_id", "subject_split"], meta["videos_version"]
        ),
        "eval": table_of(world.path("eval_videos"), ["id", "caption", "subject_id", "subject_split"]),
    }
    assert meta["rows"] == len(rows) == TRAIN_CLIPS * 2 + EVAL_CLIPS * 3
    for r in rows:
        clip = clips[r["split"]][r["clip_row"]]
        assert clip["id"] == r["clip_id"] and clip["caption"] == r["caption"]
        assert (r["subject_id"], r["subject_split"]) == (clip["subject_id"], clip["subject_split"])
        assert r["template"] == 0 and r["memory_version"] == meta["memory_version"]
        if r["task"] == "subject":
            assert r["instruction"] == "<image><image> show " + r["caption"]
            assert r["reference_source"] == "ground_truth" and r["context_frames"] == 0
            assert len(r["image_sources"]) == 2 and len({s["id"] for s in r["image_sources"]}) == 2
            for s in r["image_sources"]:
                doc = memory[s["row"]]
                assert (s["kind"], s["frame"], doc["id"], doc["doc_type"]) == ("memory", -1, s["id"], "subject")
                assert doc["subject_id"] == clip["subject_id"]
        elif r["task"] == "prediction":
            assert r["instruction"] == "<image><image><image> then " + r["caption"]
            assert r["image_sources"] == [
                {"kind": "frame", "id": r["clip_id"], "row": r["clip_row"], "frame": f} for f in range(3)
            ]
            assert r["context_frames"] == 3 and r["reference_source"] == ""
        else:
            assert r["instruction"] == r["caption"] and r["image_sources"] == [] and r["context_frames"] == 0
    assert not [r for r in rows if r["split"] == "train" and r["subject_split"] == "unseen"]
    unseen = [r for r in rows if r["split"] == "eval" and r["task"] == "subject" and r["subject_split"] == "unseen"]
    assert len(unseen) == EVAL_CLIPS // 2
    assert all(memory[s["row"]]["subject_split"] == "unseen" for r in unseen for s in r["image_sources"])


def test_a_single_task_mixture_gives_only_that_task(world, tmp_path):
    meta, rows = build(
        world, tmp_path / "ins.lance", samples_per_clip=1, mixture={"subject": 1, "prediction": 0, "text_to_video": 0}
    )
    assert meta["tasks"]["train"] == {"subject": TRAIN_CLIPS, "prediction": 0, "text_to_video": 0}
    assert {r["task"] for r in rows if r["split"] == "train"} == {"subject"}
    assert meta["tasks"]["eval"] == {t: EVAL_CLIPS for t in TASKS}  # evaluation: every task of every clip


def test_builds_are_deterministic(world, tmp_path):
    a, rows_a = build(world, tmp_path / "a.lance")
    b, rows_b = build(world, tmp_path / "b.lance", batch_rows=7)
    assert rows_a == rows_b and a["fingerprint"] == b["fingerprint"]
    tables = [lance.dataset(str(tmp_path / name)).to_table() for name in ("a.lance", "b.lance")]
    assert tables[0].equals(tables[1])
    c, _ = build(world, tmp_path / "c.lance", seed=world.seed + 1)
    assert c["fingerprint"] != a["fingerprint"]
    provenance = json.loads(lance.dataset(str(tmp_path / "a.lance")).schema.metadata[b"provenance"])
    assert {k: provenance[k] for k in ("memory_version", "videos_version", "augmented_version", "seed")} == {
        "memory_version": a["memory_version"],
        "videos_version": a["videos_version"],
        "augmented_version": a["augmented_version"],
        "seed": 0,
    }
    assert provenance["params"]["samples_per_clip"] == 2 and provenance["params"]["context_frames"] == 2


def test_real_data_references_are_the_first_retrieved_documents(world, tmp_path):
    # A memory without ground truth (real data), same rows and version as the one retrieval ran against.
    memory = lance.dataset(str(world.path("memory"))).to_table()
    for name in GROUND_TRUTH_COLUMNS:
        memory = memory.set_column(
            memory.schema.get_field_index(name), name, pa.nulls(memory.num_rows, memory.schema.field(name).type)
        )
    real_memory = tmp_path / "memory.lance"
    assert lance.write_dataset(memory, str(real_memory)).version == 1
    # Clip 0 retrieved nothing: it keeps its rows, without the subject task, and is counted.
    augmented = lance.dataset(str(world.path("augmented"))).to_table().to_pylist()
    assert {r["memory_version"] for r in augmented} == {1}
    augmented[0].update(memory_ids=[], memory_rows=[], scores=[], ranks=[], num_hits=0, flag="no_hit")
    aug_uri = tmp_path / "augmented.lance"
    lance.write_dataset(
        pa.Table.from_pylist(augmented, schema=lance.dataset(str(world.path("augmented"))).schema), str(aug_uri)
    )
    out = tmp_path / "ins.lance"
    meta, rows = build(world, out, memory=real_memory, augmented=aug_uri, templates=ONE_TEMPLATE_EACH)

    assert meta["subject_unavailable"] == {"train": 1, "eval": EVAL_CLIPS}  # evaluation clips have no retrieval
    assert meta["rows"] == len(rows) == TRAIN_CLIPS * 2 + EVAL_CLIPS * 2
    assert sorted(r["task"] for r in rows if r["clip_id"] == "vid-0000000") == ["prediction", "text_to_video"]
    assert not [r for r in rows if r["split"] == "eval" and r["task"] == "subject"]
    by_clip = {r["clip_id"]: r for r in augmented}
    subject_rows = [r for r in rows if r["task"] == "subject"]
    assert subject_rows and meta["reference_source"] == {"retrieval": len(subject_rows)}
    sizes = Counter()
    for r in subject_rows:
        n = len(r["image_sources"])
        sizes[n] += 1
        assert r["reference_source"] == "retrieval" and r["memory_path"] == str(real_memory.resolve())
        assert r["instruction"] == IMAGE_TOKEN * n + " show " + r["caption"]
        assert [s["id"] for s in r["image_sources"]] == by_clip[r["clip_id"]]["memory_ids"][:n]
        assert [s["row"] for s in r["image_sources"]] == by_clip[r["clip_id"]]["memory_rows"][:n]
    assert set(sizes) == {1, 2}
    report = validate_dataset(world, "instructions", out)
    assert report.success, report.to_text()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"mixture": {"subject": 1, "prediction": 1}},
            "instructions.mixture is {'subject': 1, 'prediction': 1}; it must "
            "map exactly the tasks subject, prediction, text_to_video",
        ),
        (
            {"mixture": {"subject": 1, "prediction": -0.5, "text_to_video": 0}},
            "instructions.mixture.prediction is -0.5",
        ),
        ({"mixture": {"subject": 0, "prediction": 0, "text_to_video": 0}}, "instructions.mixture .* weight > 0"),
        ({"samples_per_clip": 4}, r"instructions.samples_per_clip is 4; it must be an integer in 1..3"),
        (
            {"samples_per_clip": 2, "mixture": {"subject": 1, "prediction": 0, "text_to_video": 0}},
            r"instructions.samples_per_clip is 2; it must be at most the number of tasks with weight > 0 .*\(1\)",
        ),
        ({"context_frames": 8}, r"instructions.context_frames is 8; it must be an integer in 1..7"),
        ({"context_frames": 0}, r"instructions.context_frames is 0"),
        ({"reference_images": [2, 1]}, r"instructions.reference_images is \[2, 1\]; it must be \[min, max\]"),
        ({"reference_images": [0, 2]}, r"instructions.reference_images is \[0, 2\]"),
        (
            {"templates": {**ONE_TEMPLATE_EACH, "subject": ["{images} alone"]}},
            r"instructions.templates.subject\[0\] is '\{images\} alone'; it must contain \{caption\}",
        ),
        (
            {"templates": {**ONE_TEMPLATE_EACH, "prediction": ["{images}{images} {caption}"]}},
            r"instructions.templates.prediction\[0\] .* exactly once",
        ),
        (
            {"templates": {**ONE_TEMPLATE_EACH, "text_to_video": ["<image> {caption}"]}},
            r"instructions.templates.text_to_video\[0\] .* neither",
        ),
        (
            {"templates": {**ONE_TEMPLATE_EACH, "subject": []}},
            r"instructions.templates.subject is \[\]; it must hold at least one template, since instructions.mixture.subject",
        ),
    ],
)
def test_bad_params_are_named(change, message):
    params = load_params(REPO / "params.yaml")
    params["instructions"].update(change)
    with pytest.raises(VimiError, match=message):
        InstructionParams.from_params(params)


def test_render_keeps_placeholders_countable():
    rendered = render_instruction("{images}: {caption}", "a <image> of {images}", 2)
    assert rendered == "<image><image>: a [image] of {images}"


def test_suite_passes_and_names_what_is_wrong(world, built, tmp_path):
    report = validate_dataset(world, "instructions")
    assert report.success, report.to_text()
    assert report.figures["rows"] == built["rows"] and report.figures["tasks"]["eval"]["subject"] == EVAL_CLIPS

    table = lance.dataset(str(world.path("instructions"))).to_table()
    rows = table.to_pylist()
    subject = [i for i, r in enumerate(rows) if r["task"] == "subject"]
    rows[subject[0]]["instruction"] += IMAGE_TOKEN  # one placeholder too many
    rows[subject[1]]["image_sources"][0]["id"] = "mem-9999999"  # not the document at that row
    rows[subject[2]]["subject_split"] = "unseen"  # an unseen subject in training
    bad = tmp_path / "tampered.lance"
    lance.write_dataset(pa.Table.from_pylist(rows, schema=table.schema), str(bad))
    report = validate_dataset(world, "instructions", bad)
    assert not report.success
    assert {(c.expectation, c.column): c.unexpected_count for c in report.failed} == {
        ("expect_column_pair_values_to_be_equal", "placeholders=sources"): 1,
        ("expect_column_values_to_be_between", "dangling_memory_sources"): 1,
        ("expect_column_values_to_be_in_set", "unseen_in_train"): 1,
    }
    assert "FAIL expect_column_pair_values_to_be_equal [placeholders=sources]" in report.to_text()


def test_cli_build_json(world, built):
    env = {
        **os.environ,
        "VIMI_PARAMS": str(world.params_path),
        "VIMI_DATA_DIR": str(world.data_dir),
        "VIMI_PROGRESS": "0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "instructions", "build", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=world.root,
    )
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["rows"] == built["rows"] and meta["version"] == built["version"] + 1
    assert meta["fingerprint"] == built["fingerprint"]  # same seed, same rows, in another process
    assert meta["tasks"] == built["tasks"] and meta["examples"] == built["examples"]
