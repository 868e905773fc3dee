"""Assets of the lineage graph: one per step of the step map (vimi/steps.py), which gives each its
upstream assets, code version, group, kinds and description; the functions here run the step and
turn what it returns into the metadata a person reads in the UI."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import dagster as dg

from orchestration import dvc_record, versions
from orchestration.metadata import dataset_metadata
from orchestration.resources import VimiSettings
from vimi.config import Settings
from vimi.errors import VimiError
from vimi.steps import STEP, Step


def step_asset(fn):
    """The asset of the step named like FN, as the step map declares it. A step without a suite is recorded
    in dvc.lock as soon as it is done (one with a suite, when its check passes: checks.py)."""
    step = STEP[fn.__name__]

    @functools.wraps(fn)
    def materialize(vimi: VimiSettings) -> dg.MaterializeResult:
        result = fn(vimi)
        if step.suite:
            return result
        note = dvc_record.commit(step, vimi.load())
        return dg.MaterializeResult(
            metadata={**(result.metadata or {}), "dvc": dg.MetadataValue.text(note)},
            data_version=result.data_version,
        )

    return dg.asset(
        name=step.name,
        deps=[dg.AssetKey(name) for name in step.upstream],
        code_version=versions.code_version(step.name),
        group_name=step.group,
        kinds=set(step.kinds),
        description=step.description,
    )(materialize)


def run_step(name: str, vimi: VimiSettings) -> dict:
    return STEP[name].run(vimi.load())


def partition_count(step: Step) -> int:
    """The step's partitions, from params.yaml as the definitions load (one op each); away from a project, one."""
    try:
        return step.partitions.count(step.scope(Settings.load()))
    except VimiError:
        return 1


def partitioned_asset(fn):
    """The asset of a partitioned step (the step map's `Partitions`), as a graph: one op per partition, which
    the executor runs side by side (multiprocess) or places anywhere (celery, k8s), and a commit op that makes
    them the step's output at once. A failed partition is re-run alone (re-execution from failure); one
    already done is reused. FN turns the commit's result into the asset's materialization."""
    step = STEP[fn.__name__]
    parts = partition_count(step)

    def partition_op(part: int) -> dg.OpDefinition:
        @dg.op(
            name=f"{step.name}_partition_{part}",
            ins={name: dg.In(dg.Nothing) for name in step.upstream},
            description=f"Partition {part} of {parts}: {step.description}",
        )
        def partition(vimi: VimiSettings) -> dg.Output:
            record = step.run_partition(vimi.load(), part, parts)
            shown = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool)) and k != "index_id"}
            return dg.Output(shown, metadata={k: v for k, v in shown.items() if not k.endswith("sha256")})

        return partition

    @dg.op(name=f"{step.name}_commit", description=f"Commit of the {parts} partitions: {step.description}")
    def commit(vimi: VimiSettings, records: list) -> dg.Output:
        settings = vimi.load()
        result = fn(step.run_commit(settings, parts))
        metadata = {**(result.metadata or {}), "partitions": dg.MetadataValue.int(parts)}
        if not step.suite:  # one with a suite is recorded in dvc.lock when its check passes (checks.py)
            metadata["dvc"] = dg.MetadataValue.text(dvc_record.commit(step, settings))
        return dg.Output(None, metadata=metadata, data_version=result.data_version)

    ops = [partition_op(part) for part in range(parts)]

    def compose(**upstream):
        return commit([op(**upstream) for op in ops])

    compose.__signature__ = inspect.Signature(  # the graph's inputs: the upstream assets, by name
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in step.upstream]
    )
    compose.__name__ = step.name
    return dg.graph_asset(
        name=step.name,
        ins={name: dg.AssetIn(dg.AssetKey(name), dagster_type=dg.Nothing) for name in step.upstream},
        code_version=versions.code_version(step.name),
        group_name=step.group,
        kinds=set(step.kinds),
        description=step.description,
    )(compose)


def not_applicable(meta: dict) -> dg.MaterializeResult | None:
    """A SpriteWorld-only step beside the user's own data: its metadata says it does not apply, and why."""
    if meta.get("applies", True):
        return None
    return dg.MaterializeResult(
        metadata={"applies": dg.MetadataValue.bool(False), "reason": dg.MetadataValue.text(meta["reason"])},
        data_version=dg.DataVersion("not-applicable"),
    )


@step_asset
def spriteworld(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("spriteworld", vimi)
    if skipped := not_applicable(meta):
        return skipped
    return dg.MaterializeResult(
        data_version=dg.DataVersion(versions.digest_files(Path(meta["path"]).parent, "catalog.json")),
        metadata={
            "path": dg.MetadataValue.path(meta["path"]),
            "seed": meta["seed"],
            "subjects": meta["subjects"],
            "unseen_subjects": meta["unseen_subjects"],
            "scenes": dg.MetadataValue.json(meta["scenes"]),
            "actions": dg.MetadataValue.json(meta["actions"]),
            "example_subjects": dg.MetadataValue.md("\n".join(f"- {s}" for s in meta["example_subjects"])),
        },
    )


@step_asset
def image_text_memory(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(run_step("image_text_memory", vimi))


@step_asset
def video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(run_step("video_corpus", vimi))


@step_asset
def eval_video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(run_step("eval_video_corpus", vimi))


@partitioned_asset
def bm25_index(meta: dict) -> dg.MaterializeResult:
    # The index is determined by the memory's rows and the BM25 parameters: that is its data version
    # (merged or not, its hits and scores are the same).
    version = versions.digest_json(
        [meta["memory_ids_sha256"], meta["k1"], meta["b"], len(meta.get("partitions") or meta["shards"])]
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "docs": dg.MetadataValue.int(meta["docs"]),
            "memory_version": dg.MetadataValue.int(meta["memory_version"]),
            "index_id": dg.MetadataValue.text(meta["index_id"]),
            "partitions": dg.MetadataValue.int(len(meta.get("partitions") or meta["shards"])),
            "shards": dg.MetadataValue.int(len(meta["shards"])),
            "merged": dg.MetadataValue.bool(bool(meta.get("merged"))),
            "size_mb": dg.MetadataValue.float(round(meta["bytes"] / 2**20, 2)),
            "build_seconds": dg.MetadataValue.float(meta["seconds"]),
            "docs_per_s": dg.MetadataValue.float(meta["docs_per_s"]),
            "bm25": dg.MetadataValue.json({"k1": meta["k1"], "b": meta["b"]}),
            "path": dg.MetadataValue.path(meta["path"]),
        },
    )


@partitioned_asset
def augmented_video_dataset(meta: dict) -> dg.MaterializeResult:
    figures = meta["figures"]
    examples = "\n".join(
        f"**{e['caption']}**\n" + "\n".join(f"- {r}" for r in e["retrieved"]) + "\n" for e in meta["examples"]
    )
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(meta["rows"]),
        "lance_version": dg.MetadataValue.int(meta["version"]),
        "k": dg.MetadataValue.int(meta["k"]),
        "coverage": dg.MetadataValue.float(figures["coverage"]),
        "flags": dg.MetadataValue.json(figures["flags"]),
        "clips_per_s": dg.MetadataValue.float(meta["clips_per_s"]),
        "memory_version": dg.MetadataValue.int(meta["memory_version"]),
        "index_id": dg.MetadataValue.text(meta["index_id"]),
        "examples": dg.MetadataValue.md(examples),
        "path": dg.MetadataValue.path(meta["path"]),
    }
    if "recall_at_k" in figures:
        metadata["recall_at_k"] = dg.MetadataValue.float(figures["recall_at_k"])
        metadata["top1_own_subject"] = dg.MetadataValue.float(figures["top1_own_subject"])
    return dg.MaterializeResult(metadata=metadata, data_version=_lance_version(meta["path"]))


def _dataset_result(meta: dict, **extra) -> dg.MaterializeResult:
    """A Lance dataset's materialization: its metadata, and its row fingerprint as the data version."""
    return dg.MaterializeResult(
        metadata={**dataset_metadata(meta), **extra}, data_version=dg.DataVersion(str(meta["fingerprint"])[:16])
    )


def _lance_version(path: str) -> dg.DataVersion:
    from vimi.io import lance_io

    return dg.DataVersion(str(lance_io.fingerprint(path))[:16])


def _model_result(meta: dict, metadata: dict) -> dg.MaterializeResult:
    """A trained model's materialization: its weights are its data version."""
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(versions.digest_files(Path(meta["path"])))
    )


def _metrics_version(result: dict) -> dg.DataVersion:
    """Metrics: the figures and the model they are of."""
    return dg.DataVersion(
        versions.digest_json(
            [
                result["model"].get("uri"),
                result["model"].get("version"),
                {k: v for k, v in result.items() if isinstance(v, float)},
            ]
        )
    )


def _training_metadata(meta: dict) -> dict:
    metadata = {
        "mlflow_run_id": dg.MetadataValue.text(str(meta["run_id"])),
        "mlflow_run": dg.MetadataValue.url(meta["run_link"]),
        "final_loss": dg.MetadataValue.float(float(meta["final_loss"])),
        "clips_per_s": dg.MetadataValue.float(float(meta["clips_per_s"])),
        "steps": dg.MetadataValue.int(int(meta["steps"])),
        "precision": dg.MetadataValue.text(meta["mixed_precision"]),
        "device": dg.MetadataValue.text(meta["device"]),
        "resumed_from": dg.MetadataValue.text(str(meta.get("resumed_from") or "")),
        "path": dg.MetadataValue.path(meta["path"]),
    }
    if meta.get("sample_gif"):
        metadata["sample_gif"] = dg.MetadataValue.path(meta["sample_gif"])
        metadata["samples"] = dg.MetadataValue.md(
            f"Real clips (top) and generated ones (bottom): `{meta['sample_gif']}`"
        )
    return metadata


@step_asset
def image_encoder(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("image_encoder", vimi)
    metadata = _training_metadata(meta)
    for key in ("caption_top1", "caption_top5", "chance_top1"):
        metadata[key] = dg.MetadataValue.float(float(meta[key]))
    return _model_result(meta, metadata)


@step_asset
def stage1_model(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("stage1_model", vimi)
    return _model_result(meta, _training_metadata(meta))


@step_asset
def instruction_dataset(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("instruction_dataset", vimi)
    metadata = dataset_metadata(meta)
    metadata["tasks"] = dg.MetadataValue.json(meta["tasks"])
    metadata["subject_unavailable"] = dg.MetadataValue.json(meta.get("subject_unavailable", {}))
    metadata["reference_source"] = dg.MetadataValue.json(meta.get("reference_source", {}))
    examples = meta.get("examples") or []
    if examples:
        metadata["examples"] = dg.MetadataValue.md(
            "\n".join(
                f"**{e['task']}**: `{e['instruction']}`\n" + "\n".join(f"- {s}" for s in e.get("sources", [])) + "\n"
                for e in examples
            )
        )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(str(meta["fingerprint"])[:16]))


@step_asset
def stage2_model(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("stage2_model", vimi)
    metadata = _training_metadata(meta)
    metadata["init_model"] = dg.MetadataValue.text(meta["init_model"])
    metadata["lineage"] = dg.MetadataValue.json(meta["lineage"])
    registered = meta.get("registered")
    if registered:
        metadata["registered_model"] = dg.MetadataValue.text(registered["uri"])
        metadata["registered_version"] = dg.MetadataValue.int(int(registered["version"]))
        metadata["checks"] = dg.MetadataValue.text(f"{registered['checks']}: {registered['checks_detail']}")
    return _model_result(meta, metadata)


@step_asset
def feature_network(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("feature_network", vimi)
    if skipped := not_applicable(meta):
        return skipped
    metadata = _training_metadata(meta)
    for key, value in (meta.get("eval_accuracy") or {}).items():
        if isinstance(value, float):
            metadata[f"eval_{key}"] = dg.MetadataValue.float(value)
    return _model_result(meta, metadata)


@step_asset
def spriteworld_metrics(vimi: VimiSettings) -> dg.MaterializeResult:
    result = run_step("spriteworld_metrics", vimi)
    if skipped := not_applicable(result):
        return skipped
    metadata = {k: dg.MetadataValue.float(float(v)) for k, v in result.items() if isinstance(v, float)}
    metadata.update(
        {
            "mlflow_run": dg.MetadataValue.url(result["run_link"]),
            "model_version": dg.MetadataValue.text(str(result["model"]["version"])),
            "videos": dg.MetadataValue.json(result["videos"]),
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=_metrics_version(result))


@step_asset
def ucf101_metrics(vimi: VimiSettings) -> dg.MaterializeResult:
    result = run_step("ucf101_metrics", vimi)
    if not result["configured"]:
        return dg.MaterializeResult(
            metadata={"configured": dg.MetadataValue.bool(False), "reason": dg.MetadataValue.text(result["reason"])},
            data_version=dg.DataVersion("not-configured"),
        )
    metadata = {k: dg.MetadataValue.float(float(v)) for k, v in result.items() if isinstance(v, float)}
    metadata.update(
        {
            "configured": dg.MetadataValue.bool(True),
            "mlflow_run": dg.MetadataValue.url(result["run_link"]),
            "model_version": dg.MetadataValue.text(str(result["model"]["version"])),
            "videos": dg.MetadataValue.int(int(result["videos"])),
            "skipped": dg.MetadataValue.json(result["skipped"]),
            "split": dg.MetadataValue.text(f"{result['split']}list0{result['fold']}"),
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=_metrics_version(result))


@step_asset
def champion_model(vimi: VimiSettings) -> dg.MaterializeResult:
    decision = run_step("champion_model", vimi)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(
            versions.digest_json([decision["name"], decision["champion"], decision["candidate"], decision["promoted"]])
        ),
        metadata={
            "promoted": dg.MetadataValue.bool(bool(decision["promoted"])),
            "reason": dg.MetadataValue.text(decision["reason"]),
            "candidate_version": dg.MetadataValue.text(decision["candidate"]),
            "champion_version": dg.MetadataValue.text(str(decision["champion"])),
            "champion_uri": dg.MetadataValue.text(f"models:/{decision['name']}@champion"),
            "decided_on": dg.MetadataValue.text(decision.get("metric") or "the checks alone"),
        },
    )


@step_asset
def report(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = run_step("report", vimi)
    metadata = {
        "path": dg.MetadataValue.path(meta["path"]),
        "open": dg.MetadataValue.url(Path(meta["path"]).as_uri()),
        "size_kb": dg.MetadataValue.float(round(meta["bytes"] / 1024, 1)),
        "sections": dg.MetadataValue.json(meta["sections"]),
        "sample_videos": dg.MetadataValue.int(meta["sample_videos"]),
    }
    if meta.get("run_link"):
        metadata["mlflow_run"] = dg.MetadataValue.url(meta["run_link"])
    return dg.MaterializeResult(metadata=metadata)
