"""Assets of the lineage graph: thin wrappers over vimi.pipeline (DESIGN.md §3)."""

from __future__ import annotations

import dagster as dg

from orchestration.metadata import dataset_metadata
from orchestration.resources import VimiSettings
from vimi import pipeline


@dg.asset(group_name="data", kinds={"json"},
          description="SpriteWorld's catalog: subjects (name, shape, colours, pattern, seen/unseen), scenes, actions.")
def spriteworld(vimi: VimiSettings) -> dg.MaterializeResult:
    meta = pipeline.world_catalog(vimi.load())
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(meta["path"]),
        "seed": meta["seed"],
        "subjects": meta["subjects"],
        "unseen_subjects": meta["unseen_subjects"],
        "scenes": dg.MetadataValue.json(meta["scenes"]),
        "actions": dg.MetadataValue.json(meta["actions"]),
        "example_subjects": dg.MetadataValue.md("\n".join(f"- {s}" for s in meta["example_subjects"])),
    })


@dg.asset(deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Image-text memory (data/memory.lance): SpriteWorld documents, or the configured "
                      "webdataset/parquet sources.")
def image_text_memory(vimi: VimiSettings) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=dataset_metadata(pipeline.build_memory(vimi.load())))


@dg.asset(deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Training clips (data/videos.lance): SpriteWorld, or the configured WebVid sources.")
def video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=dataset_metadata(pipeline.build_videos(vimi.load(), "train")))


@dg.asset(deps=[spriteworld], group_name="data", kinds={"lance"},
          description="Evaluation clips (data/eval_videos.lance): seen subjects in new combinations and "
                      "subjects that appear only in the memory.")
def eval_video_corpus(vimi: VimiSettings) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=dataset_metadata(pipeline.build_videos(vimi.load(), "eval")))
