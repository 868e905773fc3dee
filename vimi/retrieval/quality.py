"""Retrieval quality: per augmented clip, whether its hits are consistent, sorted and present in the memory,
and, where the clips know their subject (SpriteWorld), recall@k of the subject's own documents; the
headline figures (coverage, recall@k, flags) the augmentation reports and the retrieval gate judges."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from vimi.io import lance_io


def retrieval_frame(augmented_uri: Path, videos_uri: Path, memory_uri: Path) -> tuple[pd.DataFrame, int, dict]:
    """One row per augmented clip with derived columns the retrieval suite judges, the number of
    clips in the video corpus, and headline figures."""
    import lance

    aug = lance_io.open_dataset(augmented_uri, "augmented dataset", "Build it with `vimi augment`.")
    videos = lance_io.open_dataset(videos_uri, "video corpus")
    table = aug.to_table(
        columns=["clip_id", "memory_ids", "memory_rows", "scores", "ranks", "num_hits", "flag", "k", "memory_version"]
    )
    frame = table.to_pandas()
    versions = sorted(set(frame["memory_version"].tolist()))
    memory = lance.dataset(str(memory_uri), version=int(versions[0])) if versions else lance_io.open_dataset(memory_uri)
    mem = memory.to_table(columns=["id", "subject_id"]).to_pylist()
    memory_ids = [m["id"] for m in mem]
    subject_of_doc = {m["id"]: m["subject_id"] for m in mem}
    relevant = Counter(m["subject_id"] for m in mem if m["subject_id"] is not None)
    clip_subject = dict(zip(*[videos.to_table(columns=["id", "subject_id"]).column(c).to_pylist() for c in (0, 1)]))

    def consistent(r) -> bool:
        n = len(r.memory_ids)
        shape_ok = n == len(r.scores) == len(r.ranks) == len(r.memory_rows) == r.num_hits
        ranks_ok = list(r.ranks) == list(range(1, n + 1))
        flag_ok = {
            "ok": n == r.k,
            "fewer_than_k": 0 < n < r.k,
            "no_hit": n == 0,
            "empty_caption": n == 0,
            "query_truncated": n <= r.k,
        }.get(r.flag, False)
        return bool(shape_ok and ranks_ok and flag_ok)

    def dangling(r) -> int:  # an id absent from the memory, or not at the row it claims
        return sum(
            1
            for doc_id, row in zip(r.memory_ids, r.memory_rows)
            if not (0 <= row < len(memory_ids)) or memory_ids[row] != doc_id
        )

    def own(r) -> tuple[float, float, float]:
        subject = clip_subject.get(r.clip_id)
        if subject is None or subject not in relevant:
            return float("nan"), float("nan"), float("nan")
        same = [subject_of_doc.get(d) == subject for d in r.memory_ids]
        recall = sum(same) / min(int(r.k), relevant[subject])
        return recall, float(any(same)), float(bool(same) and same[0])

    rows = list(frame.itertuples(index=False))
    frame["clip_known"] = frame["clip_id"].isin(set(clip_subject))
    frame["hits_consistent"] = [consistent(r) for r in rows]
    frame["scores_sorted"] = [all(a >= b for a, b in zip(r.scores, r.scores[1:])) for r in rows]
    frame["dangling_ids"] = [dangling(r) for r in rows]
    frame["has_hit"] = (frame["num_hits"] > 0).astype(float)
    owned = [own(r) for r in rows]
    frame["own_recall"] = [o[0] for o in owned]
    frame["own_success"] = [o[1] for o in owned]
    frame["own_top1"] = [o[2] for o in owned]
    frame = frame.drop(columns=["memory_ids", "memory_rows", "scores", "ranks"])
    truth = frame["own_recall"].notna()
    figures: dict[str, Any] = {
        "clips": int(len(frame)),
        "k": int(frame["k"].iloc[0]) if len(frame) else 0,
        "coverage": float(frame["has_hit"].mean()) if len(frame) else 0.0,
        "mean_hits": float(frame["num_hits"].mean()) if len(frame) else 0.0,
        "flags": {str(k): int(v) for k, v in frame["flag"].value_counts().sort_index().items()},
    }
    if truth.any():
        figures |= {
            "recall_at_k": float(frame.loc[truth, "own_recall"].mean()),
            "success_at_k": float(frame.loc[truth, "own_success"].mean()),
            "top1_own_subject": float(frame.loc[truth, "own_top1"].mean()),
            "clips_with_ground_truth": int(truth.sum()),
        }
    return frame, videos.count_rows(), figures
