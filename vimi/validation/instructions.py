"""The instruction suite (data/instructions.lance): placeholders and sources agree, given frames only for
video prediction, subject references from the memory, no dangling ids, no unseen subject in training rows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vimi.config import dataset_location
from vimi.io import lance_io
from vimi.validation.common import (
    ValidationReport,
    _run_suite,
    _schema_check,
    _setting,
)


def _versioned_ids(path: str, version: int, columns: list[str]) -> pa.Table | None:
    """Columns of a dataset at a version, or None when it cannot be read (its sources then dangle)."""
    import lance

    try:
        return lance.dataset(path, version=int(version)).to_table(columns=columns)
    except Exception:  # missing path or cleaned-up version: reported as dangling, not as a crash
        return None


def instructions_frame(uri: Path, num_frames: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per instruction with derived columns the instructions suite judges, and headline figures.

    Sources are checked column-wise (flattened lists, numpy), against the memory and video corpora at
    the paths and versions the rows record: what a loader will read.
    """
    import pyarrow.compute as pc

    from vimi.data.instructions import IMAGE_TOKEN

    ds = lance_io.open_dataset(uri, "instruction dataset", "Build it with `vimi instructions build`.")
    table = ds.to_table(
        columns=[
            "id",
            "split",
            "task",
            "instruction",
            "template",
            "clip_id",
            "clip_row",
            "videos_path",
            "videos_version",
            "image_sources",
            "context_frames",
            "reference_source",
            "memory_path",
            "memory_version",
            "subject_id",
            "subject_split",
        ]
    )
    n = table.num_rows
    sources = table["image_sources"].combine_chunks()
    flat = pc.list_flatten(sources)
    parent = pc.list_parent_indices(sources).to_numpy(zero_copy_only=False)
    kind = pc.fill_null(flat.field("kind"), "").to_numpy(zero_copy_only=False)
    src_id = flat.field("id")
    src_row = pc.fill_null(flat.field("row"), -1).to_numpy(zero_copy_only=False)
    src_frame = pc.fill_null(flat.field("frame"), -2).to_numpy(zero_copy_only=False)
    position = np.arange(len(parent)) - np.searchsorted(parent, parent, side="left")  # index within its list

    def per_row(mask: np.ndarray) -> np.ndarray:
        return np.bincount(parent[mask], minlength=n)

    task = table["task"].to_numpy(zero_copy_only=False)
    split = table["split"].to_numpy(zero_copy_only=False)
    reference = table["reference_source"].to_numpy(zero_copy_only=False)
    context = table["context_frames"].to_numpy(zero_copy_only=False)
    n_sources = pc.fill_null(pc.list_value_length(sources), 0).to_numpy(zero_copy_only=False)
    is_memory, is_frame = kind == "memory", kind == "frame"
    n_memory, n_frames = per_row(is_memory), per_row(is_frame)

    # Frame sources: frames 0..m-1, in order, of the row's own clip at its own row.
    clip_ids = table["clip_id"].combine_chunks()
    clip_rows = table["clip_row"].to_numpy(zero_copy_only=False)
    own_clip = pc.fill_null(pc.equal(src_id, clip_ids.take(pa.array(parent))), False).to_numpy(zero_copy_only=False)
    frame_ok = own_clip & (src_row == clip_rows[parent]) & (src_frame == position)
    bad_frames = per_row(is_frame & ~frame_ok)
    max_frame = np.full(n, -1)
    np.maximum.at(max_frame, parent[is_frame], src_frame[is_frame])

    # Memory sources: the id at its row of the memory version; ground-truth references of the clip's subject.
    memory_ok = np.zeros(len(parent), bool)
    own_subject = np.ones(len(parent), bool)
    row_memory = pc.binary_join_element_wise(
        table["memory_path"], pc.cast(table["memory_version"], pa.string()), "@"
    ).to_numpy(zero_copy_only=False)
    subject_ids = table["subject_id"].combine_chunks()
    for key in np.unique(row_memory[parent[is_memory]]) if is_memory.any() else []:
        path, version = key.rsplit("@", 1)
        here = is_memory & (row_memory[parent] == key)
        memory = _versioned_ids(path, int(version), ["id", "subject_id"])
        if memory is None:
            continue
        rows = src_row[here]
        inside = (rows >= 0) & (rows < memory.num_rows)
        safe = pa.array(np.where(inside, rows, 0))
        same_id = pc.fill_null(pc.equal(memory["id"].take(safe), src_id.filter(pa.array(here))), False)
        memory_ok[here] = inside & same_id.to_numpy(zero_copy_only=False) & (src_frame[here] == -1)
        truth = pc.equal(memory["subject_id"].take(safe), subject_ids.take(pa.array(parent[here])))
        own_subject[here] = pc.fill_null(truth, False).to_numpy(zero_copy_only=False) | (
            reference[parent[here]] != "ground_truth"
        )
    dangling = per_row(is_memory & ~memory_ok)
    not_own = per_row(is_memory & ~own_subject)

    # The clip of every row is at its clip_row in the corpus version the row records.
    clip_ok = np.zeros(n, bool)
    row_videos = pc.binary_join_element_wise(
        table["videos_path"], pc.cast(table["videos_version"], pa.string()), "@"
    ).to_numpy(zero_copy_only=False)
    for key in np.unique(row_videos) if n else []:
        path, version = key.rsplit("@", 1)
        here = row_videos == key
        videos = _versioned_ids(path, int(version), ["id"])
        if videos is None:
            continue
        rows = clip_rows[here]
        inside = (rows >= 0) & (rows < videos.num_rows)
        same = pc.fill_null(
            pc.equal(videos["id"].take(pa.array(np.where(inside, rows, 0))), clip_ids.filter(pa.array(here))), False
        )
        clip_ok[here] = inside & same.to_numpy(zero_copy_only=False)

    is_subject, is_prediction, is_text = task == "subject", task == "prediction", task == "text_to_video"
    frame = pd.DataFrame(
        {
            "id": table["id"].to_pandas(),
            "split": split,
            "task": task,
            "template": table["template"].to_numpy(),
            "instruction": table["instruction"].to_pandas(),
            "reference_source": reference,
            "memory_version": table["memory_version"].to_numpy(),
            "context_frames": context,
            "placeholders": pc.fill_null(pc.count_substring(table["instruction"], IMAGE_TOKEN), 0).to_numpy(),
            "sources": n_sources,
            "frame_sources": n_frames,
            "context_fits_task": (context > 0) == is_prediction,
            "subject_sources_ok": ~is_subject | ((n_memory >= 1) & (n_memory == n_sources)),
            "text_to_video_sources_ok": ~is_text | (n_sources == 0),
            "frame_sources_ok": bad_frames == 0,
            "reference_source_fits_task": np.where(
                is_subject, np.isin(reference, ["ground_truth", "retrieval"]), reference == ""
            ),
            "dangling_memory_sources": dangling,
            "references_of_own_subject": not_own == 0,
            "max_frame_index": max_frame,
            "clip_row_ok": clip_ok,
            "unseen_in_train": (split == "train") & (table["subject_split"].to_numpy(zero_copy_only=False) == "unseen"),
        }
    )
    counts = frame.groupby(["split", "task"]).size()
    figures: dict[str, Any] = {
        "rows": int(n),
        **{f"{t}_rows": int(v) for t, v in frame["task"].value_counts().sort_index().items()},
        "tasks": {s: {t: int(v) for t, v in counts[s].items()} for s in counts.index.get_level_values(0).unique()},
        "reference_source": {
            str(k): int(v) for k, v in frame.loc[is_subject, "reference_source"].value_counts().sort_index().items()
        },
        "mean_reference_images": float(n_sources[is_subject].mean()) if is_subject.any() else 0.0,
    }
    return frame, figures


def validate_instructions(uri: Path, params: dict[str, Any]) -> ValidationReport:
    """The stage-2 instruction dataset's suite: placeholders match sources, sources match the task and
    resolve in the memory and corpus versions the rows record, no unseen subject in training."""
    import great_expectations.expectations as gxe

    from vimi.data.instructions import INSTRUCTION_SCHEMA, REFERENCE_SOURCES, SPLITS, TASKS

    start = time.perf_counter()
    ds = lance_io.open_dataset(uri, "instruction dataset", "Build it with `vimi instructions build`.")
    schema_check = _schema_check(ds.schema, INSTRUCTION_SCHEMA)
    checks = [schema_check]
    figures: dict[str, Any] = {}
    if schema_check.success:
        num_frames = int(params.get("world", {}).get("num_frames", 0))
        frame, figures = instructions_frame(dataset_location(uri), num_frames)
        true = [True]
        expectations = [
            gxe.ExpectTableRowCountToBeBetween(
                min_value=params["validate"]["min_rows"], meta=_setting("validate.min_rows")
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="id"),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            gxe.ExpectColumnValuesToBeInSet(column="task", value_set=list(TASKS)),
            gxe.ExpectColumnValuesToNotBeNull(column="instruction"),
            gxe.ExpectColumnValuesToBeBetween(column="template", min_value=0),
            gxe.ExpectColumnValuesToBeInSet(column="reference_source", value_set=list(REFERENCE_SOURCES)),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="placeholders", column_B="sources"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="context_frames", column_B="frame_sources"),
            gxe.ExpectColumnValuesToBeInSet(column="context_fits_task", value_set=true),
            gxe.ExpectColumnValuesToBeInSet(column="subject_sources_ok", value_set=true),
            gxe.ExpectColumnValuesToBeInSet(column="text_to_video_sources_ok", value_set=true),
            gxe.ExpectColumnValuesToBeInSet(column="frame_sources_ok", value_set=true),
            gxe.ExpectColumnValuesToBeInSet(column="reference_source_fits_task", value_set=true),
            gxe.ExpectColumnValuesToBeBetween(column="dangling_memory_sources", min_value=0, max_value=0),
            gxe.ExpectColumnValuesToBeInSet(column="references_of_own_subject", value_set=true),
            gxe.ExpectColumnValuesToBeBetween(column="max_frame_index", min_value=-1, max_value=num_frames - 1),
            gxe.ExpectColumnValuesToBeInSet(column="clip_row_ok", value_set=true),
            gxe.ExpectColumnValuesToBeInSet(column="unseen_in_train", value_set=[False]),
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="memory_version", min_value=1, max_value=1),
        ]
        checks += _run_suite("instructions_table", frame, expectations, "table")
    return ValidationReport(
        suite="instructions",
        dataset=str(uri),
        version=ds.version,
        rows=ds.count_rows(),
        decoded_rows=0,
        success=all(c.success for c in checks),
        checks=checks,
        seconds=time.perf_counter() - start,
        figures=figures,
    )
