"""`vimi status`: what the data directory, the models and the registry hold now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vimi.config import Settings
from vimi.io import lance_io
from vimi.registry import describe


def data_status(settings: Settings) -> dict[str, Any]:
    """Rows, version and quarantine counts of every dataset under the data directory."""
    datasets: dict[str, Any] = {}
    for name in ("memory", "videos", "eval_videos", "augmented", "instructions"):
        uri = settings.path(name)
        if lance_io.exists(uri):
            meta = lance_io.summary(uri, n_samples=0)
            datasets[name] = {
                "rows": meta["rows"],
                "version": meta["version"],
                "path": meta["path"],
                "fragments": meta["fragments"],
                "quarantined": quarantine_counts(settings, uri),
            }
        else:
            datasets[name] = None
    models: dict[str, Any] = {}
    for name in ("encoder", "stage1", "stage1-text-only", "stage2", "featurenet"):
        summary = settings.model_path(name) / "training.json"
        models[name] = (
            {
                k: v
                for k, v in json.loads(summary.read_text()).items()
                if k in ("steps", "final_loss", "clips_per_s", "run_id")
            }
            | {"path": str(summary.parent)}
            if summary.is_file()
            else None
        )
    try:
        registry = describe(settings)
    except Exception as exc:  # status reports, it does not fail on an unreachable tracking server
        registry = {"error": str(exc).splitlines()[0]}
    return {
        "profile": settings.profile,
        "data_dir": str(settings.data_dir),
        "datasets": datasets,
        "models": models,
        "registry": registry,
    }


def quarantine_counts(settings: Settings, dataset: Path | None = None) -> dict[str, int]:
    """Quarantined rows by reason, for one target dataset (or all), over every ingest so far."""
    uri = settings.path("quarantine")
    if not lance_io.exists(uri):
        return {}
    table = lance_io.open_dataset(uri).to_table(columns=["dataset", "reason"])
    counts: dict[str, int] = {}
    for ds_name, reason in zip(table.column("dataset").to_pylist(), table.column("reason").to_pylist()):
        if dataset is None or ds_name == str(dataset):
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
