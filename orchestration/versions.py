"""Code versions and data versions, so the Dagster UI tells what is stale.

An asset's code version digests the params.yaml values its step reads (the step map's, which its
DVC stage lists too) and those of every asset upstream of it, plus CODE_REVISION: after a full run
nothing is stale, and changing one parameter marks the asset that reads it and everything downstream
of it stale, nothing else. Data versions are the content: a Lance dataset's row fingerprint, a model's weights, a report's
bytes; so a rerun that writes the same content does not make its dependents stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vimi.config import load_params
from vimi.errors import VimiError
from vimi.steps import STEPS, upstream_closure

# Bump when a step's code changes what it writes (it marks that asset and its dependents stale).
CODE_REVISION = "1"

# What each asset's step (and its suite) reads from params.yaml, and the graph's edges: the step map's.
ASSET_PARAMS: dict[str, list[str]] = {step.name: list(step.all_params) for step in STEPS}
UPSTREAM: dict[str, list[str]] = {step.name: list(step.upstream) for step in STEPS}


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _params() -> dict[str, Any]:
    try:
        return load_params()
    except VimiError:  # definitions loaded away from a project: versions of the defaults
        return {}


def code_version(asset: str, params: dict[str, Any] | None = None) -> str:
    params = _params() if params is None else params
    read = {
        name: {key: _lookup(params, key) for key in ASSET_PARAMS[name]}
        for name in sorted({asset} | upstream_closure(asset))
    }
    digest = hashlib.sha256(json.dumps([CODE_REVISION, read], sort_keys=True, default=str).encode()).hexdigest()
    return f"r{CODE_REVISION}-{digest[:12]}"


def digest_files(folder: Path, pattern: str = "**/*.safetensors") -> str:
    """A model directory's content: the sha256 of its weight files (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob(pattern)):
        h.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
