"""Inception Score of videos from a classifier's class probabilities (C3D on UCF101, the feature
network's action head on SpriteWorld).

IS = exp(E_x KL(p(y|x) ‖ p(y))), computed as TGAN and StyleGAN-V do: the N samples are split, in
order, into ``splits`` consecutive chunks (chunk i = rows ⌊iN/s⌋ … ⌊(i+1)N/s⌋), each chunk is scored
with its own marginal p(y), and the mean and standard deviation (population, ``np.std``) of the
chunk scores are reported. 0·log 0 is taken as 0 (no epsilon), so a uniform classifier scores
exactly 1 and K equally frequent confident classes score K.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from vimi.errors import VimiError

ROW_SUM_TOLERANCE = 1e-3


def _validate(probs, splits: int) -> np.ndarray:
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1:
        raise VimiError(f"Inception Score splits must be a positive integer, got {splits!r}.")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise VimiError(f"Inception Score needs class probabilities as an N×K array, got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise VimiError("Inception Score got probabilities that are NaN or infinite.")
    if (p < -1e-12).any():
        raise VimiError(
            f"Inception Score got negative probabilities (min {p.min():.3g}); pass softmax outputs, not logits."
        )
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOLERANCE:
        raise VimiError(
            f"Inception Score needs rows that sum to 1 (softmax outputs): row {worst} sums to {sums[worst]:.6g}."
        )
    if p.shape[0] < splits:
        raise VimiError(f"Inception Score with {splits} splits needs at least {splits} samples, got {p.shape[0]}.")
    return np.clip(p, 0.0, None)


def _kl_score(part: np.ndarray) -> float:
    from scipy.special import xlogy

    marginal = part.mean(axis=0, keepdims=True)
    # Where p(y|x) > 0 the marginal is > 0 too; xlogy makes 0·log 0 = 0.
    kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)
    return float(np.exp(kl.mean()))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) ‖ p(y))) over ``splits`` consecutive chunks of the N×K ``probs``."""
    p = _validate(probs, splits)
    n = len(p)
    scores = [_kl_score(p[i * n // splits : (i + 1) * n // splits]) for i in range(splits)]
    return float(np.mean(scores)), float(np.std(scores))


def classifier_probs(
    model: Callable,
    clips: Iterable,
    batch_size: int = 16,
    device: str = "cpu",
    preprocess: Callable | None = None,
    outputs: str = "logits",
    total: int | None = None,
    desc: str = "classifier",
) -> np.ndarray:
    """N×K class probabilities (float64) of a classifier over clips, batched, with a progress bar.

    ``clips`` yields T×H×W×3 arrays (or objects with a ``frames`` attribute, e.g. UCF101 ``Clip``);
    ``preprocess`` maps a stacked batch (numpy B×T×H×W×3) to the model's input tensor (e.g.
    ``c3d_inputs``; default: a float tensor of the batch as is); the model's outputs are logits
    (softmax applied here) or, with ``outputs="probs"``, probabilities already."""
    import torch

    from vimi.progress import progress

    if outputs not in ("logits", "probs"):
        raise VimiError(f"outputs must be 'logits' or 'probs', got {outputs!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VimiError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if total is None and hasattr(clips, "__len__"):
        total = len(clips)  # type: ignore[arg-type]
    prepare = preprocess or (lambda batch: torch.from_numpy(np.ascontiguousarray(batch)).float())
    if hasattr(model, "eval"):
        model.eval()
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        with torch.inference_mode():
            x = prepare(np.stack(batch))
            y = model(x.to(device) if isinstance(x, torch.Tensor) else x)
            y = torch.as_tensor(y).double()
            if y.ndim != 2:
                raise VimiError(f"The classifier returned shape {tuple(y.shape)}, expected B×classes.")
            out.append((torch.softmax(y, dim=1) if outputs == "logits" else y).cpu().numpy())
        batch.clear()

    for clip in progress(clips, total=total, desc=desc, unit="clip"):
        batch.append(np.asarray(getattr(clip, "frames", clip)))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out:
        raise VimiError("No clips to classify.")
    return np.concatenate(out)
