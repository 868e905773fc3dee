"""The sensor that notices a new memory version (an ingest outside the pipeline) and rebuilds retrieval."""

from __future__ import annotations

import dagster as dg

from orchestration.resources import VimiSettings
from orchestration.schedules import operations, retrieval_job
from vimi import pipeline


@dg.sensor(
    job=retrieval_job,
    minimum_interval_seconds=int(operations()["memory_sensor_interval_s"]),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs the retrieval job when the memory's Lance version is not the one the BM25 index was "
    "built from (e.g. after `vimi memory ingest`); one run per memory version.",
)
def new_memory_version(context: dg.SensorEvaluationContext, vimi: VimiSettings):
    change = pipeline.memory_change(vimi.load())
    if change is None:
        return dg.SkipReason("The BM25 index was built from the current memory version (or there is no memory yet).")
    version = change["memory_version"]
    context.update_cursor(str(version))
    return dg.RunRequest(
        run_key=f"memory-v{version}",
        tags={"vimi/memory_version": str(version), "vimi/index_memory_version": str(change["index_memory_version"])},
    )
