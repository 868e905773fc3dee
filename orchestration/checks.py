"""Great Expectations suites as blocking asset checks: bad data does not flow downstream."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import (
    augmented_video_dataset, eval_video_corpus, image_text_memory, instruction_dataset, video_corpus,
)
from orchestration.metadata import check_metadata
from orchestration.resources import VimiSettings
from vimi import pipeline


def _result(vimi: VimiSettings, which: str) -> dg.AssetCheckResult:
    report = pipeline.validate_dataset(vimi.load(), which)
    return dg.AssetCheckResult(passed=report.success, metadata=check_metadata(report),
                               description=report.to_text().splitlines()[0])


@dg.asset_check(asset=image_text_memory, blocking=True,
                description="GE: schema, unique ids, non-empty captions, decodable images of declared size.")
def memory_suite(vimi: VimiSettings) -> dg.AssetCheckResult:
    return _result(vimi, "memory")


@dg.asset_check(asset=video_corpus, blocking=True,
                description="GE: schema, unique ids, non-empty captions, decodable clips, frame counts and sizes in range.")
def videos_suite(vimi: VimiSettings) -> dg.AssetCheckResult:
    return _result(vimi, "videos")


@dg.asset_check(asset=eval_video_corpus, blocking=True, description="GE: the video suite on the evaluation split.")
def eval_videos_suite(vimi: VimiSettings) -> dg.AssetCheckResult:
    return _result(vimi, "eval_videos")


@dg.asset_check(asset=augmented_video_dataset, blocking=True,
                description="Retrieval-quality gate (GE): one row per clip, k hits or a flag, scores non-increasing, "
                            "no dangling ids, coverage and recall@k above params.yaml's thresholds.")
def retrieval_quality(vimi: VimiSettings) -> dg.AssetCheckResult:
    return _result(vimi, "retrieval")


@dg.asset_check(asset=instruction_dataset, blocking=True,
                description="GE: one <image> per image source, given frames only for video prediction, subject "
                            "references from the memory (never the target clip), no dangling ids, no unseen subject "
                            "in training rows.")
def instructions_suite(vimi: VimiSettings) -> dg.AssetCheckResult:
    return _result(vimi, "instructions")
