"""Assets of the lineage graph: thin wrappers over vimi.pipeline (DESIGN.md §3)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from orchestration.metadata import dataset_metadata
from orchestration import versions
from orchestration.resources import VimiSettings
from vimi import pipeline


@dg.asset(code_version=versions.code_version("spriteworld"), group_name="data", kinds={"json"},
          description="SpriteWorld's catalog: subjects (name, shape, colours, pattern, seen/unseen), scenes, actions.")
def spriteworld(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.world_catalog(vimi.load())
    return dg.MaterializeResult(data_version=dg.DataVersion(versions.digest_files(Path(meta["path"]).parent, "catalog.json")),
                                metadata={
        "path": dg.MetadataValue.path(meta["path"]),
        "seed": meta["seed"],
        "subjects": meta["subjects"],
        "unseen_subjects": meta["unseen_subjects"],
        "scenes": dg.MetadataValue.json(meta["scenes"]),
        "actions": dg.MetadataValue.json(meta["actions"]),
        "example_subjects": dg.MetadataValue.md("\n".join(f"- {s}" for s in meta["example_subjects"])),
    })


@dg.asset(code_version=versions.code_version("image_text_memory"), deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Image-text memory (data/memory.lance): SpriteWorld documents, or the configured "
                      "webdataset/parquet sources.")
def image_text_memory(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(pipeline.build_memory(vimi.load()))


@dg.asset(code_version=versions.code_version("video_corpus"), deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Training clips (data/videos.lance): SpriteWorld, or the configured WebVid sources.")
def video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(pipeline.build_videos(vimi.load(), "train"))


@dg.asset(code_version=versions.code_version("eval_video_corpus"), deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Evaluation clips (data/eval_videos.lance): seen subjects in new combinations and "
                      "subjects that appear only in the memory.")
def eval_video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return _dataset_result(pipeline.build_videos(vimi.load(), "eval"))


@dg.asset(code_version=versions.code_version("bm25_index"), deps=[image_text_memory], group_name="retrieval", kinds={"lucene"},
          description="BM25 index (pyserini/Anserini) over the memory's captions (data/bm25/), sharded by memory rows.")
def bm25_index(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.build_bm25_index(vimi.load())
    # The index is determined by the memory's rows and the BM25 parameters: that is its data version.
    version = versions.digest_json([meta["memory_ids_sha256"], meta["k1"], meta["b"], len(meta["shards"])])
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata={
        "docs": dg.MetadataValue.int(meta["docs"]),
        "memory_version": dg.MetadataValue.int(meta["memory_version"]),
        "index_id": dg.MetadataValue.text(meta["index_id"]),
        "shards": dg.MetadataValue.int(len(meta["shards"])),
        "size_mb": dg.MetadataValue.float(round(meta["bytes"] / 2**20, 2)),
        "build_seconds": dg.MetadataValue.float(meta["seconds"]),
        "docs_per_s": dg.MetadataValue.float(meta["docs_per_s"]),
        "bm25": dg.MetadataValue.json({"k1": meta["k1"], "b": meta["b"]}),
        "path": dg.MetadataValue.path(meta["path"]),
    })


@dg.asset(code_version=versions.code_version("augmented_video_dataset"), deps=[bm25_index, video_corpus], group_name="retrieval", kinds={"lance"},
          description="Retrieval-augmented video dataset (data/augmented.lance): per training clip, the top-k "
                      "memory documents of its caption, with scores, ranks and provenance.")
def augmented_video_dataset(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.augment_videos(vimi.load())
    figures = meta["figures"]
    examples = "\n".join(f"**{e['caption']}**\n" + "\n".join(f"- {r}" for r in e["retrieved"]) + "\n"
                         for e in meta["examples"])
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
    return dg.MaterializeResult(metadata={**dataset_metadata(meta), **extra},
                                data_version=dg.DataVersion(str(meta["fingerprint"])[:16]))


def _lance_version(path: str) -> dg.DataVersion:
    from vimi import lance_io

    return dg.DataVersion(str(lance_io.fingerprint(path))[:16])


def _model_result(meta: dict, metadata: dict) -> dg.MaterializeResult:
    """A trained model's materialization: its weights are its data version."""
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(versions.digest_files(Path(meta["path"]))))


def _metrics_version(result: dict) -> dg.DataVersion:
    """Metrics: the figures and the model they are of."""
    return dg.DataVersion(versions.digest_json([result["model"].get("uri"), result["model"].get("version"),
                                                {k: v for k, v in result.items() if isinstance(v, float)}]))


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
        metadata["samples"] = dg.MetadataValue.md(f"Real clips (top) and generated ones (bottom): `{meta['sample_gif']}`")
    return metadata


@dg.asset(code_version=versions.code_version("image_encoder"), deps=[image_text_memory], group_name="models", kinds={"pytorch", "mlflow"},
          description="Image encoder aligned contrastively to all-MiniLM-L6-v2 on the memory (models/encoder/); "
                      "MLflow experiment vimi-align.")
def image_encoder(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.align_image_encoder(vimi.load())
    metadata = _training_metadata(meta)
    for key in ("caption_top1", "caption_top5", "chance_top1"):
        metadata[key] = dg.MetadataValue.float(float(meta[key]))
    return _model_result(meta, metadata)


@dg.asset(code_version=versions.code_version("stage1_model"), deps=[augmented_video_dataset, image_encoder], group_name="models", kinds={"pytorch", "mlflow"},
          description="Stage 1: the video denoiser pretrained on the retrieval-augmented dataset, conditioned by the "
                      "multimodal encoder (models/stage1/, a ViMiPipeline directory); MLflow experiment vimi-stage1.")
def stage1_model(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.train_stage1(vimi.load())
    return _model_result(meta, _training_metadata(meta))


@dg.asset(code_version=versions.code_version("instruction_dataset"), deps=[augmented_video_dataset, eval_video_corpus, image_text_memory], group_name="instructions",
          kinds={"lance"},
          description="Stage-2 instruction dataset (data/instructions.lance): subject-driven (reference images of the "
                      "subject from the memory), video prediction (first frames given), text-to-video; training rows "
                      "from the training clips, evaluation rows (unseen subjects included) from the evaluation split.")
def instruction_dataset(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.build_instruction_dataset(vimi.load())
    metadata = dataset_metadata(meta)
    metadata["tasks"] = dg.MetadataValue.json(meta["tasks"])
    metadata["subject_unavailable"] = dg.MetadataValue.json(meta.get("subject_unavailable", {}))
    metadata["reference_source"] = dg.MetadataValue.json(meta.get("reference_source", {}))
    examples = meta.get("examples") or []
    if examples:
        metadata["examples"] = dg.MetadataValue.md("\n".join(
            f"**{e['task']}**: `{e['instruction']}`\n" + "\n".join(f"- {s}" for s in e.get("sources", [])) + "\n"
            for e in examples))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(str(meta["fingerprint"])[:16]))


@dg.asset(code_version=versions.code_version("stage2_model"), deps=[stage1_model, instruction_dataset], group_name="models", kinds={"pytorch", "mlflow"},
          description="Stage 2: the stage-1 pipeline instruction-tuned on the three tasks (models/stage2/); MLflow "
                      "experiment vimi-stage2; registered as a new version of vimi-video-generator with alias @candidate.")
def stage2_model(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.train_stage2(vimi.load())
    metadata = _training_metadata(meta)
    metadata["init_model"] = dg.MetadataValue.text(meta["init_model"])
    metadata["lineage"] = dg.MetadataValue.json(meta["lineage"])
    registered = meta.get("registered")
    if registered:
        metadata["registered_model"] = dg.MetadataValue.text(registered["uri"])
        metadata["registered_version"] = dg.MetadataValue.int(int(registered["version"]))
        metadata["checks"] = dg.MetadataValue.text(f"{registered['checks']}: {registered['checks_detail']}")
    return _model_result(meta, metadata)


@dg.asset(code_version=versions.code_version("feature_network"), deps=[video_corpus, eval_video_corpus], group_name="evaluation", kinds={"pytorch", "mlflow"},
          description="SpriteWorld's feature network (models/featurenet/): a video classifier of the action and the "
                      "subject's attributes, the eye of FVD_syn, IS_syn, motion and identity accuracy.")
def feature_network(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.train_feature_network(vimi.load())
    metadata = _training_metadata(meta)
    for key, value in (meta.get("eval_accuracy") or {}).items():
        if isinstance(value, float):
            metadata[f"eval_{key}"] = dg.MetadataValue.float(value)
    return _model_result(meta, metadata)


@dg.asset(code_version=versions.code_version("spriteworld_metrics"), deps=[stage2_model, feature_network, instruction_dataset], group_name="evaluation", kinds={"mlflow"},
          description="SpriteWorld grounding metrics of the newest @candidate on the evaluation split "
                      "(reports/metrics.json, MLflow vimi-eval, tags on the registered version).")
def spriteworld_metrics(vimi: VimiSettings) -> dg.MaterializeResult:
    settings = vimi.load()
    result = pipeline.evaluate_model(settings, "spriteworld")
    metadata = {k: dg.MetadataValue.float(float(v)) for k, v in result.items() if isinstance(v, float)}
    metadata.update({"mlflow_run": dg.MetadataValue.url(result["run_link"]),
                     "model_version": dg.MetadataValue.text(str(result["model"]["version"])),
                     "videos": dg.MetadataValue.json(result["videos"])})
    return dg.MaterializeResult(metadata=metadata, data_version=_metrics_version(result))


@dg.asset(code_version=versions.code_version("ucf101_metrics"), deps=[stage2_model], group_name="evaluation", kinds={"mlflow"},
          description="Zero-shot UCF101 FVD (I3D) and IS (C3D, when its weights are configured) of the newest "
                      "@candidate, on the official split lists; params.yaml evaluate.ucf101 says where UCF101 is "
                      "(not shipped: without it this asset records that nothing was evaluated).")
def ucf101_metrics(vimi: VimiSettings) -> dg.MaterializeResult:
    result = pipeline.evaluate_model(vimi.load(), "ucf101")
    if not result["configured"]:
        return dg.MaterializeResult(metadata={"configured": dg.MetadataValue.bool(False),
                                              "reason": dg.MetadataValue.text(result["reason"])},
                                    data_version=dg.DataVersion("not-configured"))
    metadata = {k: dg.MetadataValue.float(float(v)) for k, v in result.items() if isinstance(v, float)}
    metadata.update({"configured": dg.MetadataValue.bool(True), "mlflow_run": dg.MetadataValue.url(result["run_link"]),
                     "model_version": dg.MetadataValue.text(str(result["model"]["version"])),
                     "videos": dg.MetadataValue.int(int(result["videos"])),
                     "skipped": dg.MetadataValue.json(result["skipped"]),
                     "split": dg.MetadataValue.text(f"{result['split']}list0{result['fold']}")})
    return dg.MaterializeResult(metadata=metadata, data_version=_metrics_version(result))


@dg.asset(code_version=versions.code_version("champion_model"), deps=[spriteworld_metrics, ucf101_metrics], group_name="models", kinds={"mlflow"},
          description="The registry's @champion: the promotion policy applied to the newest @candidate "
                      "(`vimi promote`); the decision and its reason are tagged on the version.")
def champion_model(vimi: VimiSettings) -> dg.MaterializeResult:
    decision = pipeline.promote_model(vimi.load())
    return dg.MaterializeResult(data_version=dg.DataVersion(versions.digest_json(
        [decision["name"], decision["champion"], decision["candidate"], decision["promoted"]])), metadata={
        "promoted": dg.MetadataValue.bool(bool(decision["promoted"])),
        "reason": dg.MetadataValue.text(decision["reason"]),
        "candidate_version": dg.MetadataValue.text(decision["candidate"]),
        "champion_version": dg.MetadataValue.text(str(decision["champion"])),
        "champion_uri": dg.MetadataValue.text(f"models:/{decision['name']}@champion"),
    })


@dg.asset(code_version=versions.code_version("report"), deps=[champion_model, augmented_video_dataset, feature_network], group_name="evaluation", kinds={"html"},
          description="The run report (reports/index.html, self-contained): retrieved examples, sample videos of each "
                      "task, loss curves, metrics, the registry and the ablation; logged to the stage-2 MLflow run.")
def report(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.build_run_report(vimi.load())
    metadata = {"path": dg.MetadataValue.path(meta["path"]), "open": dg.MetadataValue.url(Path(meta["path"]).as_uri()),
                "size_kb": dg.MetadataValue.float(round(meta["bytes"] / 1024, 1)),
                "sections": dg.MetadataValue.json(meta["sections"]),
                "sample_videos": dg.MetadataValue.int(meta["sample_videos"])}
    if meta.get("run_link"):
        metadata["mlflow_run"] = dg.MetadataValue.url(meta["run_link"])
    return dg.MaterializeResult(metadata=metadata)
