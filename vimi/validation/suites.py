"""Great Expectations suites for the memory, the video corpus, retrieval and the instruction dataset.

Two batches per dataset: a *table* batch of every row's scalar columns (schema, unique ids,
non-empty captions, sizes and frame counts in range) and a *media* batch of decoded rows
(every row, or ``validate.decode_sample`` of them at scale) with derived columns saying whether
the bytes decode and agree with the declared size and frame count. GE cannot open images or
videos; we decode, GE judges.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from vimi.config import dataset_location
from vimi.data.schema import RAW_FORMAT, VIDEO_SCHEMA
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.io.images import image_size
from vimi.io.video import VideoDecodeError, decode_video, probe
from vimi.memory.schema import MEMORY_SCHEMA

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from validation

VIDEO_FORMATS = [RAW_FORMAT, "mp4", "webm", "mkv", "avi", "mov"]


@dataclass
class CheckResult:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None
    batch: str = "table"


@dataclass
class ValidationReport:
    suite: str
    dataset: str
    version: int
    rows: int
    decoded_rows: int
    success: bool
    checks: list[CheckResult]
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)  # headline numbers (recall@k, coverage, ...)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = len(self.failed)
        return data

    def to_text(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [
            f"{self.suite} suite {status}: {self.dataset} (version {self.version}, {self.rows} rows, "
            f"{self.decoded_rows} decoded), {len(self.checks) - len(self.failed)}/{len(self.checks)} "
            f"expectations met in {self.seconds:.1f} s"
        ]
        for check in self.checks:
            mark = "ok  " if check.success else "FAIL"
            target = f" [{check.column}]" if check.column else ""
            extra = ""
            if not check.success:
                if check.unexpected_count is not None:
                    extra = f": {check.unexpected_count} unexpected, e.g. {check.examples[:5]}"
                elif check.observed is not None:
                    extra = f": observed {check.observed}"
            lines.append(f"  {mark} {check.expectation}{target}{extra}")
        if self.figures:
            lines.append("  figures: " + ", ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items()))
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run_suite(name: str, frame: pd.DataFrame, expectations: list, batch: str) -> list[CheckResult]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    definition = ctx.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    checks = []
    for r in result.results:
        kwargs = r.expectation_config.kwargs
        column = kwargs.get("column") or (
            f"{kwargs['column_A']}={kwargs['column_B']}" if "column_A" in kwargs else None
        )
        details = r.result or {}
        checks.append(
            CheckResult(
                expectation=r.expectation_config.type,
                column=column,
                success=bool(r.success),
                unexpected_count=details.get("unexpected_count"),
                examples=[_plain(v) for v in (details.get("partial_unexpected_list") or [])[:10]],
                observed=_plain(details.get("observed_value")),
                batch=batch,
            )
        )
    return checks


def _plain(value: Any) -> Any:
    """JSON-friendly copies of what GE reports (numpy scalars, tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _schema_check(actual: pa.Schema, expected: pa.Schema) -> CheckResult:
    problems = []
    for f in expected:
        if f.name not in actual.names:
            problems.append(f"missing column {f.name}")
        elif not actual.field(f.name).type.equals(f.type):
            problems.append(f"{f.name} is {actual.field(f.name).type}, expected {f.type}")
    extra = [n for n in actual.names if n not in expected.names]
    problems += [f"unexpected column {n}" for n in extra]
    return CheckResult("schema_matches_vimi", None, not problems, len(problems) if problems else 0, problems)


def _sample_indices(n: int, sample: int, seed: int) -> list[int]:
    if sample <= 0 or sample >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=sample, replace=False).tolist())


def _validate(
    suite: str,
    uri: Path,
    expected: pa.Schema,
    table_columns: list[str],
    table_expectations: Callable[[], list],
    media_columns: list[str],
    decode: Callable[[dict], dict],
    media_expectations: Callable[[], list],
    params: dict[str, Any],
) -> ValidationReport:
    start = time.perf_counter()
    ds = lance_io.open_dataset(uri, f"{suite} dataset", "Build it first (vimi world generate, or an ingest).")
    schema_check = _schema_check(ds.schema, expected)
    present = [c for c in table_columns if c in ds.schema.names]
    frame = ds.to_table(columns=present).to_pandas()
    checks = [schema_check] + _run_suite(f"{suite}_table", frame, table_expectations(), "table")
    validate = params.get("validate", {})
    n = ds.count_rows()
    indices = _sample_indices(n, validate["decode_sample"], int(params.get("seed", 0)))
    decoded = 0
    if indices and schema_check.success:
        records = []
        for start_at in range(0, len(indices), 256):
            chunk = ds.take(indices[start_at : start_at + 256], columns=media_columns).to_pylist()
            records += [decode(r) for r in chunk]
        decoded = len(records)
        checks += _run_suite(f"{suite}_media", pd.DataFrame.from_records(records), media_expectations(), "media")
    return ValidationReport(
        suite=suite,
        dataset=str(uri),
        version=ds.version,
        rows=n,
        decoded_rows=decoded,
        success=all(c.success for c in checks),
        checks=checks,
        seconds=time.perf_counter() - start,
    )


def _common_table_expectations(params: dict[str, Any]) -> list:
    """Every dataset of captioned media: rows, unique ids, non-empty captions, sizes in range."""
    import great_expectations.expectations as gxe

    ingest = params.get("ingest", {})
    lo, hi = int(ingest.get("min_image_size", 8)), int(ingest.get("max_image_size", 16384))
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=params["validate"]["min_rows"]),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="caption", regex=r"^\s*$"),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=lo, max_value=hi),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=lo, max_value=hi),
    ]


def validate_memory(uri: Path, params: dict[str, Any]) -> ValidationReport:
    import great_expectations.expectations as gxe

    def table() -> list:
        return [*_common_table_expectations(params), gxe.ExpectColumnValuesToNotBeNull(column="source")]

    def decode(row: dict) -> dict:
        try:
            width, height = image_size(row["image"])
            ok = True
        except (ValueError, TypeError):
            width = height = -1
            ok = False
        return {
            "id": row["id"],
            "image_decodable": ok,
            "width": row["width"],
            "height": row["height"],
            "decoded_width": width,
            "decoded_height": height,
        }

    def media() -> list:
        return [
            gxe.ExpectColumnValuesToBeInSet(column="image_decodable", value_set=[True]),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"),
        ]

    return _validate(
        "memory",
        dataset_location(uri),
        MEMORY_SCHEMA,
        ["id", "caption", "source", "width", "height"],
        table,
        ["id", "image", "width", "height"],
        decode,
        media,
        params,
    )


def validate_videos(uri: Path, params: dict[str, Any], suite: str = "videos") -> ValidationReport:
    import great_expectations.expectations as gxe

    ingest = params.get("ingest", {})
    f_lo, f_hi = int(ingest.get("min_video_frames", 8)), int(ingest.get("max_video_frames", 100000))

    def table() -> list:
        return [
            *_common_table_expectations(params),
            gxe.ExpectColumnValuesToBeInSet(column="video_format", value_set=VIDEO_FORMATS),
            gxe.ExpectColumnValuesToBeBetween(column="num_frames", min_value=f_lo, max_value=f_hi),
            gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=0, strict_min=True, max_value=1000),
        ]

    def decode(row: dict) -> dict:
        try:
            if row["video_format"] == RAW_FORMAT:
                shape = decode_video(row["video"], RAW_FORMAT, row["num_frames"], row["height"], row["width"]).shape
            else:  # count frames without holding a long clip in memory
                info = probe(row["video"])
                shape = (info.num_frames, info.height, info.width)
            ok = True
        except (VideoDecodeError, ValueError, TypeError):
            shape, ok = (-1, -1, -1), False
        return {
            "id": row["id"],
            "video_decodable": ok,
            "num_frames": row["num_frames"],
            "height": row["height"],
            "width": row["width"],
            "decoded_frames": shape[0],
            "decoded_height": shape[1],
            "decoded_width": shape[2],
        }

    def media() -> list:
        return [
            gxe.ExpectColumnValuesToBeInSet(column="video_decodable", value_set=[True]),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="num_frames", column_B="decoded_frames"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"),
        ]

    return _validate(
        suite,
        dataset_location(uri),
        VIDEO_SCHEMA,
        ["id", "caption", "video_format", "num_frames", "fps", "width", "height"],
        table,
        ["id", "video", "video_format", "num_frames", "height", "width"],
        decode,
        media,
        params,
    )


def validate(which: str, uri: Path, params: dict[str, Any]) -> ValidationReport:
    if which == "memory":
        return validate_memory(uri, params)
    if which in ("videos", "eval_videos"):
        return validate_videos(uri, params, suite=which)
    raise VimiError(f"Unknown suite {which!r}; use memory, videos or eval_videos.")


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
        flag_ok = {"ok": n == r.k, "fewer_than_k": 0 < n < r.k, "no_hit": n == 0, "empty_caption": n == 0}.get(
            r.flag, False
        )
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


def validate_retrieval(
    augmented_uri: Path, videos_uri: Path, memory_uri: Path, params: dict[str, Any]
) -> ValidationReport:
    """The retrieval-quality gate over the augmented dataset (docs/retrieval.md)."""
    import great_expectations.expectations as gxe

    from vimi.retrieval.augment import AUGMENTED_SCHEMA, FLAGS

    start = time.perf_counter()
    retrieval = params.get("retrieval", {})
    ds = lance_io.open_dataset(augmented_uri, "augmented dataset", "Build it with `vimi augment`.")
    schema_check = _schema_check(ds.schema, AUGMENTED_SCHEMA)
    checks = [schema_check]
    figures: dict[str, Any] = {}
    if schema_check.success:
        frame, n_clips, figures = retrieval_frame(augmented_uri, videos_uri, memory_uri)
        expectations = [
            gxe.ExpectTableRowCountToEqual(value=n_clips),
            gxe.ExpectColumnValuesToNotBeNull(column="clip_id"),
            gxe.ExpectColumnValuesToBeUnique(column="clip_id"),
            gxe.ExpectColumnValuesToBeInSet(column="clip_known", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="flag", value_set=list(FLAGS)),
            gxe.ExpectColumnValuesToBeInSet(column="hits_consistent", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="scores_sorted", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="dangling_ids", min_value=0, max_value=0),
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="memory_version", min_value=1, max_value=1),
            gxe.ExpectColumnMeanToBeBetween(column="has_hit", min_value=float(retrieval.get("min_coverage", 0.99))),
        ]
        if "recall_at_k" in figures:
            expectations.append(
                gxe.ExpectColumnMeanToBeBetween(
                    column="own_recall", min_value=float(retrieval.get("min_recall_at_k", 0.5))
                )
            )
        checks += _run_suite("retrieval_table", frame, expectations, "table")
    return ValidationReport(
        suite="retrieval",
        dataset=str(augmented_uri),
        version=ds.version,
        rows=ds.count_rows(),
        decoded_rows=0,
        success=all(c.success for c in checks),
        checks=checks,
        seconds=time.perf_counter() - start,
        figures=figures,
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
            gxe.ExpectTableRowCountToBeBetween(min_value=params["validate"]["min_rows"]),
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
