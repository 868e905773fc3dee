"""Code versions and data versions, so the Dagster UI tells what is stale.

An asset's code version digests the params.yaml values its step reads (those its DVC stage lists) and
those of every asset upstream of it, plus CODE_REVISION: after a full run nothing is stale, and
changing one parameter marks the asset that reads it and everything downstream of it stale, nothing
else. Data versions are the content: a Lance dataset's row fingerprint, a model's weights, a report's
bytes; so a rerun that writes the same content does not make its dependents stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vimi.config import load_params
from vimi.errors import VimiError

# Bump when a step's code changes what it writes (it marks that asset and its dependents stale).
CODE_REVISION = "1"

# What each asset's step reads from params.yaml (the merged profile). Kept equal to dvc.yaml's params
# per stage by a test (tests/test_orchestration.py).
ASSET_PARAMS: dict[str, list[str]] = {
    "spriteworld": ["seed", "profile", "world"],
    "image_text_memory": ["seed", "profile", "world", "data.memory_sources", "ingest"],
    "video_corpus": ["seed", "profile", "world", "data.video_sources", "ingest"],
    "eval_video_corpus": ["seed", "profile", "world"],
    "bm25_index": ["retrieval.k1", "retrieval.b", "retrieval.index_shards", "retrieval.index_batch_rows"],
    "augmented_video_dataset": ["retrieval.k", "retrieval.search_threads"],
    "image_encoder": ["seed", "model", "align"],
    "stage1_model": ["seed", "model", "diffusion", "stage1", "world.num_frames", "world.frame_size"],
    "instruction_dataset": ["seed", "instructions", "world.num_frames"],
    "stage2_model": ["seed", "stage2", "diffusion.loss_weighting", "diffusion.snr_gamma", "registry.model_name",
                     "registry.smoke_frames"],
    "feature_network": ["seed", "featurenet", "world.num_frames", "world.frame_size"],
    "spriteworld_metrics": ["seed", "evaluate", "world.sprite_scale"],
    "ucf101_metrics": ["seed", "evaluate.ucf101", "diffusion.inference_steps"],
    "champion_model": ["registry.promotion_metric", "registry.promotion_margin"],
    "report": [],
}

# The graph's edges (the assets' deps), for the transitive digest; a test checks them against the graph.
UPSTREAM: dict[str, list[str]] = {
    "spriteworld": [],
    "image_text_memory": ["spriteworld"],
    "video_corpus": ["spriteworld"],
    "eval_video_corpus": ["spriteworld"],
    "bm25_index": ["image_text_memory"],
    "augmented_video_dataset": ["bm25_index", "video_corpus"],
    "image_encoder": ["image_text_memory"],
    "stage1_model": ["augmented_video_dataset", "image_encoder"],
    "instruction_dataset": ["augmented_video_dataset", "eval_video_corpus", "image_text_memory"],
    "stage2_model": ["stage1_model", "instruction_dataset"],
    "feature_network": ["video_corpus", "eval_video_corpus"],
    "spriteworld_metrics": ["stage2_model", "feature_network", "instruction_dataset"],
    "ucf101_metrics": ["stage2_model"],
    "champion_model": ["spriteworld_metrics", "ucf101_metrics"],
    "report": ["champion_model", "augmented_video_dataset", "feature_network"],
}


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
    except VimiError:      # definitions loaded away from a project: versions of the defaults
        return {}


def _ancestors(asset: str) -> set[str]:
    seen: set[str] = set()
    todo = [asset]
    while todo:
        for parent in UPSTREAM[todo.pop()]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def code_version(asset: str, params: dict[str, Any] | None = None) -> str:
    params = _params() if params is None else params
    read = {name: {key: _lookup(params, key) for key in ASSET_PARAMS[name]}
            for name in sorted({asset} | _ancestors(asset))}
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
