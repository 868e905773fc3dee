"""The ablation's arms, the metrics its table shows, and ViMi's claims as paired differences between
arms over the same evaluation clips. Plain data and statistics: the ablation that runs the arms and
the report that shows their table both read them."""

from __future__ import annotations

from typing import Any

import numpy as np

from vimi.errors import VimiError

ARMS = {
    "text_only": "text-only stage 1",
    "retrieval": "retrieval-augmented stage 1",
    "retrieval_stage2": "retrieval-augmented stage 1 + stage 2",
}
# Columns of the table, with the direction that is better.
TABLE_METRICS = [
    ("fvd_syn", "FVD_syn ↓"),
    ("is_syn", "IS_syn ↑"),
    ("motion_accuracy", "motion acc. ↑"),
    ("subject_there_rate", "subject there ↑"),
    ("color_pair_accuracy_unseen", "colour pair unseen ↑"),
    ("identity_accuracy_seen", "identity seen ↑"),
    ("identity_accuracy_unseen", "identity unseen ↑"),
    ("prediction_psnr", "pred. PSNR ↑"),
    ("prediction_ssim", "pred. SSIM ↑"),
    ("final_loss", "final loss"),
]


# (name, better arm, baseline arm, per-clip attribute, which clips): ViMi's claims as paired differences,
# on the subject-driven prompts as the table's identity columns (the text-only arm reads their captions).
COMPARISONS = [
    ("identity_unseen", "retrieval", "text_only", "identity", {"split": "unseen", "task": "subject"}),
    ("color_pair_unseen", "retrieval", "text_only", "color_pair", {"split": "unseen", "task": "subject"}),
    ("identity_seen", "retrieval", "text_only", "identity", {"split": "seen", "task": "subject"}),
    ("identity_unseen_stage2", "retrieval_stage2", "retrieval", "identity", {"split": "unseen", "task": "subject"}),
    ("color_pair_unseen_stage2", "retrieval_stage2", "retrieval", "color_pair", {"split": "unseen", "task": "subject"}),
]


def paired_difference(
    better: list[bool], baseline: list[bool], resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of better − baseline over the same clips, with a paired bootstrap 95% interval (clips
    resampled with replacement, the percentile interval)."""
    a, b = np.asarray(better, float), np.asarray(baseline, float)
    if len(a) != len(b) or not len(a):
        raise VimiError(f"A paired difference needs the same clips on both sides, got {len(a)} and {len(b)}.")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))
    boots = d[idx].mean(1)
    return {
        "difference": float(d.mean()),
        "low": float(np.percentile(boots, 2.5)),
        "high": float(np.percentile(boots, 97.5)),
        "clips": int(len(d)),
    }


def comparisons(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """COMPARISONS on the arms' per-clip results (clips matched by id and task)."""
    out: dict[str, dict[str, float]] = {}
    for name, better, baseline, attribute, where in COMPARISONS:
        sides = [results.get(arm, {}).get("per_clip") for arm in (better, baseline)]
        if not all(sides):
            continue
        keyed = []
        for side in sides:
            rows = zip(side["clip_id"], side["task"], side["split"], side[attribute])
            keyed.append(
                {
                    (c, t): v
                    for c, t, s, v in rows
                    if all({"split": s, "task": t}[k] == want for k, want in where.items())
                }
            )
        common = sorted(set(keyed[0]) & set(keyed[1]))
        if common:
            out[name] = paired_difference([keyed[0][k] for k in common], [keyed[1][k] for k in common]) | {
                "better": better,
                "baseline": baseline,
            }
    return out
