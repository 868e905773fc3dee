"""Jobs and the retraining schedule: stage 1 → stage 2 → evaluation → promotion, on params.yaml's cron."""

from __future__ import annotations

from typing import Any

import dagster as dg

from vimi.config import load_params
from vimi.errors import VimiError

DEFAULT_OPERATIONS = {"retrain_cron": "0 3 * * 1", "timezone": "UTC", "memory_sensor_interval_s": 300}


def operations() -> dict[str, Any]:
    """params.yaml's operations section (read when the definitions load; defaults if it cannot be found)."""
    try:
        section = load_params().get("operations") or {}
    except VimiError:
        section = {}
    return {**DEFAULT_OPERATIONS, **section}


# Everything from stage 1 on: the data assets stay as they are (the sensor rebuilds retrieval when the memory changes).
retraining_job = dg.define_asset_job(
    "retraining",
    selection=dg.AssetSelection.assets("stage1_model").downstream(),
    description="Stage 1 → stage 2 (a new @candidate) → SpriteWorld and UCF101 metrics → promotion to @champion.",
)

# A new memory version: index it again and retrieve again for every clip.
retrieval_job = dg.define_asset_job(
    "retrieval",
    selection=dg.AssetSelection.assets("bm25_index", "augmented_video_dataset"),
    description="Rebuild the BM25 index over the current memory and the retrieval-augmented video dataset.",
)

_ops = operations()
retraining_schedule = dg.ScheduleDefinition(
    name="weekly_retraining",
    job=retraining_job,
    cron_schedule=str(_ops["retrain_cron"]),
    execution_timezone=str(_ops["timezone"]),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrains on params.yaml operations.retrain_cron (weekly by default); the promotion policy decides "
    "whether the new candidate becomes @champion.",
)
