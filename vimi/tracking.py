"""MLflow tracking: where runs go, what a run records, resuming a run by id.

The tracking URI is MLFLOW_TRACKING_URI, else a sqlite store in <root>/mlflow/ with artifacts
beside it (MLflow 3 refuses plain file stores). Experiments are created with their artifact
location under mlflow/artifacts/, so nothing lands in a ./mlruns of whatever directory ran it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vimi.config import Settings, flatten, is_remote

# What `pip install` needs to load a logged pipeline (passed, so MLflow does not spend seconds inferring it).
PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "safetensors",
    "numpy",
    "pillow",
    "av==18.1.0",
]


def pyfunc_signature():
    """The served model's contract (vimi/pyfunc_model.py; docs/training.md "Serving")."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec(Array("string"), "images", required=False),
            ColSpec(Array("string"), "context_frames", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "video"),
            ColSpec("string", "format"),
            ColSpec("long", "num_frames"),
            ColSpec("long", "height"),
            ColSpec("long", "width"),
            ColSpec("long", "seed"),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("seed", "long", 0),
            ParamSpec("num_frames", "long", 0),
            ParamSpec("num_inference_steps", "long", 25),
            ParamSpec("guidance_scale", "double", 3.0),
            ParamSpec("format", "string", "mp4"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def tracking_uri(settings: Settings) -> str:
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = settings.root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(settings: Settings) -> Path:
    return settings.root / "mlflow" / "artifacts"


def experiment_id(settings: Settings, name: str) -> str:
    """The id of the named experiment (created on first use), or of settings.experiment when that is set."""
    import mlflow

    name = settings.experiment or name

    mlflow.set_tracking_uri(tracking_uri(settings))
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri(settings).startswith("sqlite:"):
        location = (artifact_root(settings) / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def ui_link(settings: Settings, experiment: str, run_id: str) -> str:
    """Link to a run of the named experiment in `make mlflow-ui` (or the tracking server when it is http)."""
    uri = tracking_uri(settings)
    base = uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
    return f"{base}/#/experiments/{experiment_id(settings, experiment)}/runs/{run_id}"


def process_tags() -> dict[str, str]:
    """Which process holds a run: host, pid and the pid's start time (pids are reused)."""
    import socket

    import psutil

    return {
        "vimi.host": socket.gethostname(),
        "vimi.pid": str(os.getpid()),
        "vimi.pid_started": f"{psutil.Process().create_time():.3f}",
    }


def run_tags(settings: Settings, tags: dict[str, str] | None = None) -> dict[str, str]:
    """A new run's tags, with its parent run when settings name one (MLflow nests it under it)."""
    out = dict(tags or {}) | process_tags()
    if settings.parent_run_id:
        out["mlflow.parentRunId"] = settings.parent_run_id
    return out


def _process_alive(pid: int, started: str) -> bool:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.3f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def close_orphan_runs(experiment: str) -> list[str]:
    """Mark KILLED the experiment's RUNNING runs whose process, on this host, is gone (kill -9, OOM,
    a lost machine's reboot), with the reason tagged (`vimi.orphaned`), so the UI does not show them
    running forever. Runs of other hosts are left alone (their processes cannot be checked from here).
    A resumed training reopens its run (MLflow sets it RUNNING again). Returns the run ids closed."""
    import socket
    import time as _time

    import mlflow

    host = socket.gethostname()
    client = mlflow.tracking.MlflowClient()
    closed = []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("vimi.host") != host or "vimi.pid" not in tags:
            continue
        if _process_alive(int(tags["vimi.pid"]), tags.get("vimi.pid_started", "")):
            continue
        client.set_tag(
            run.info.run_id,
            "vimi.orphaned",
            f"process {tags['vimi.pid']} on {host} ended without finishing the run (killed?); "
            f"found at {_time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        )
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def log_params(params: dict[str, Any]) -> None:
    """params.yaml, flattened (profiles left out: the chosen one is already merged in)."""
    import mlflow

    flat = flatten({k: v for k, v in params.items() if k != "profiles"})
    mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})


def log_lance_input(uri: Path, name: str, version: int, context: str = "training") -> None:
    """A Lance dataset as a run input: its path and version, nothing read (a Lance version is
    immutable, so path + version identify the content; MLflow digests that)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    import mlflow
    from vimi.io import lance_io

    where = f"{lance_io.location(uri)}?version={version}"
    # s3://, gs://, ... get MLflow's source for that store; a local path its local-artifact source
    source = resolve_dataset_source(where) if is_remote(uri) else LocalArtifactDatasetSource(where)
    mlflow.log_input(MetaDataset(source, name=f"{name}@v{version}"), context=context)


def log_system_snapshot(run_id: str) -> None:
    """One sample of MLflow's own system monitors (CPU, memory, disk, network, GPU) when the
    background monitor logged none: it publishes only after a full sampling interval, so a run
    shorter than that would have no system metrics at all."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    import mlflow

    if any(k.startswith("system/") for k in mlflow.tracking.MlflowClient().get_run(run_id).data.metrics):
        return
    monitor = SystemMetricsMonitor(run_id)
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())
    monitor.mlflow_logger.flush()


def mlflow_tracker(
    settings: Settings,
    experiment: str,
    run_name: str,
    inputs: list[tuple[Path, str, int]],
    tags: dict[str, str] | None = None,
    log_model: bool = True,
    input_example: Any = None,
):
    """A loop Tracker writing to MLflow: params.yaml flattened, the Lance inputs, metrics, sample
    GIFs, and at the end the pipeline directory (as an MLflow pyfunc model with its pip
    requirements given). The run stays open between start and finish/fail."""
    import tempfile

    import mlflow
    from vimi.train.loop import Tracker

    state: dict[str, Any] = {}

    def start(resume_run_id: str | None) -> str:
        exp = experiment_id(settings, experiment)
        close_orphan_runs(exp)
        if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
            mlflow.set_system_metrics_sampling_interval(5)
        mlflow.set_system_metrics_samples_before_logging(1)
        active = mlflow.start_run(
            run_id=resume_run_id,
            experiment_id=None if resume_run_id else exp,
            run_name=None if resume_run_id else run_name,
            log_system_metrics=True,
            tags=None if resume_run_id else run_tags(settings, tags),
        )
        state["run"] = active
        if resume_run_id is None:
            log_params(settings.recorded_params)
            for uri, name, version in inputs:
                log_lance_input(uri, name, version)
        else:
            mlflow.set_tags({"vimi.resumed": "true"} | process_tags())
        return active.info.run_id

    def metrics(values: dict[str, float], step: int) -> None:
        mlflow.log_metrics(values, step=step)

    def sample(frames, step: int) -> Path | None:
        from vimi.models.pipeline import save_videos

        with tempfile.TemporaryDirectory() as tmp:
            path = save_videos(frames, Path(tmp) / f"step-{step:07d}", formats=("gif",))[0]
            mlflow.log_artifact(str(path), "samples")
        return path

    def finish(out_dir: Path, summary: dict[str, Any]) -> None:
        mlflow.log_metrics({"final_loss": float(summary["final_loss"])}, step=int(summary["steps"]))
        if log_model:
            info = mlflow.pyfunc.log_model(
                name="pipeline",
                python_model=str(Path(__file__).parent / "pyfunc_model.py"),
                artifacts={"pipeline": str(out_dir)},
                pip_requirements=PIP_REQUIREMENTS,
                signature=pyfunc_signature(),
                input_example=input_example,
            )
            summary["model_uri"] = info.model_uri  # MLflow 3 keeps logged models apart: models:/m-<id>
        else:
            mlflow.log_artifacts(str(out_dir), "pipeline")
        log_system_snapshot(state["run"].info.run_id)
        mlflow.end_run(status="FINISHED")

    def fail(message: str) -> None:
        mlflow.set_tag("vimi.failure", message[:5000])
        mlflow.end_run(status="FAILED")

    return Tracker(start=start, metrics=metrics, sample=sample, finish=finish, fail=fail)
