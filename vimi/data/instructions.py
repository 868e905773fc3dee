"""The stage-2 instruction dataset (data/instructions.lance): multimodal instructions for three tasks.

Every training clip of the augmented dataset gets ``instructions.samples_per_clip`` rows with distinct
tasks drawn by ``instructions.mixture``; every evaluation clip gets one row per task. An instruction is
text with one ``<image>`` placeholder per entry of ``image_sources``, in order. Sources point at memory
documents (subject-driven generation: reference images of the clip's subject, never frames of the clip)
or at the first frames of the clip itself (video prediction). Rows hold no pixels, only ids and rows
at recorded Lance versions, so a loader reads them with one ``take`` per dataset.

Every clip draws from its own random stream keyed by (seed, stream, clip index), so the rows do not
depend on the batch size.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vimi.config import dataset_location
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.progress import progress

TASKS = ("subject", "prediction", "text_to_video")
SPLITS = ("train", "eval")
IMAGE_TOKEN = "<image>"
REFERENCE_SOURCES = ("ground_truth", "retrieval", "")
TRUTH_COLUMNS = ("subject_id", "subject_name", "subject_split", "action", "scene")

# SpriteWorld's streams are 1-4 (vimi.world.catalog); these keep instruction draws apart from them.
STREAM_TRAIN_INSTRUCTIONS, STREAM_EVAL_INSTRUCTIONS = 5, 6

IMAGE_SOURCE = pa.struct(
    [
        pa.field("kind", pa.string()),  # "memory" | "frame"
        pa.field("id", pa.string()),  # memory id, or the clip id for a frame
        pa.field("row", pa.int64()),  # memory row at memory_version, or clip row at videos_version
        pa.field("frame", pa.int32()),  # frame of the clip fitted to world.num_frames; -1 for memory
    ]
)

INSTRUCTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # ins-<split>-<clip index>-<task>
        pa.field("split", pa.string(), nullable=False),  # train | eval
        pa.field("task", pa.string(), nullable=False),  # subject | prediction | text_to_video
        pa.field("instruction", pa.string(), nullable=False),  # one <image> per image source, in order
        pa.field("caption", pa.string(), nullable=False),  # the clip's caption, as in the corpus
        pa.field("template", pa.int32(), nullable=False),  # index into instructions.templates[task]
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("clip_row", pa.int64(), nullable=False),  # row of the clip at videos_version
        pa.field("videos_path", pa.string(), nullable=False),
        pa.field("videos_version", pa.int64(), nullable=False),
        pa.field("image_sources", pa.list_(IMAGE_SOURCE), nullable=False),
        pa.field("context_frames", pa.int32(), nullable=False),  # m for prediction rows, 0 otherwise
        pa.field("reference_source", pa.string(), nullable=False),  # ground_truth | retrieval | "" (not subject)
        pa.field("memory_path", pa.string(), nullable=False),
        pa.field("memory_version", pa.int64(), nullable=False),
        # Ground truth carried from the clip (SpriteWorld); null for real data.
        *[pa.field(name, pa.string()) for name in TRUTH_COLUMNS],
    ]
)


def _bad(key: str, value: Any, need: str) -> VimiError:
    return VimiError(f"params.yaml instructions.{key} is {value!r}; it must {need}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


@dataclass(frozen=True)
class InstructionParams:
    """The checked ``instructions`` section of params.yaml (plus world.num_frames, the clip length)."""

    samples_per_clip: int
    mixture: dict[str, float]
    context_frames: int
    reference_images: tuple[int, int]
    templates: dict[str, tuple[str, ...]]
    num_frames: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "InstructionParams":
        """From the whole params.yaml mapping; bad values raise VimiError naming the key."""
        section = params.get("instructions")
        if not isinstance(section, dict):
            raise VimiError("params.yaml has no instructions section (a mapping); see the repository's params.yaml.")
        num_frames = params.get("world", {}).get("num_frames")
        if not _is_int(num_frames) or num_frames < 2:
            raise VimiError(f"params.yaml world.num_frames is {num_frames!r}; it must be an integer >= 2.")

        mixture = section.get("mixture")
        if not isinstance(mixture, dict) or set(mixture) != set(TASKS):
            raise _bad("mixture", mixture, f"map exactly the tasks {', '.join(TASKS)} to weights")
        for task in TASKS:
            if not _is_number(mixture[task]) or mixture[task] < 0:
                raise _bad(f"mixture.{task}", mixture[task], "be a non-negative number")
        if sum(mixture.values()) <= 0:
            raise _bad("mixture", mixture, "give at least one task a weight > 0")
        weighted = [t for t in TASKS if mixture[t] > 0]

        samples = section.get("samples_per_clip")
        if not _is_int(samples) or not 1 <= samples <= len(TASKS):
            raise _bad("samples_per_clip", samples, f"be an integer in 1..{len(TASKS)} (distinct tasks per clip)")
        if samples > len(weighted):
            raise _bad(
                "samples_per_clip",
                samples,
                f"be at most the number of tasks with weight > 0 in "
                f"instructions.mixture ({len(weighted)}), since a clip's tasks are distinct",
            )

        context = section.get("context_frames")
        if not _is_int(context) or not 1 <= context <= num_frames - 1:
            raise _bad(
                "context_frames",
                context,
                f"be an integer in 1..{num_frames - 1} (fewer than "
                f"world.num_frames = {num_frames}, so something is left to predict)",
            )

        refs = section.get("reference_images")
        if (
            not isinstance(refs, (list, tuple))
            or len(refs) != 2
            or not all(_is_int(r) for r in refs)
            or not 1 <= refs[0] <= refs[1]
        ):
            raise _bad("reference_images", refs, "be [min, max] integers with 1 <= min <= max")

        raw_templates = section.get("templates") or {}
        if not isinstance(raw_templates, dict) or set(raw_templates) - set(TASKS):
            raise _bad("templates", raw_templates, f"map some of the tasks {', '.join(TASKS)} to lists of templates")
        templates: dict[str, tuple[str, ...]] = {}
        for task in TASKS:
            listed = raw_templates.get(task) or []
            if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
                raise _bad(f"templates.{task}", listed, "be a list of strings")
            for i, template in enumerate(listed):
                key = f"templates.{task}[{i}]"
                if "{caption}" not in template:
                    raise _bad(key, template, "contain {caption}")
                if task == "text_to_video":
                    if "{images}" in template or IMAGE_TOKEN in template:
                        raise _bad(
                            key, template, f"contain neither {{images}} nor {IMAGE_TOKEN} (text-to-video has no images)"
                        )
                elif template.count("{images}") != 1 or IMAGE_TOKEN in template:
                    raise _bad(key, template, f"contain {{images}} exactly once and no literal {IMAGE_TOKEN}")
            if mixture[task] > 0 and not listed:
                raise _bad(
                    f"templates.{task}",
                    listed,
                    f"hold at least one template, since instructions.mixture.{task} is {mixture[task]}",
                )
            templates[task] = tuple(listed)
        return cls(
            samples_per_clip=samples,
            mixture={t: float(mixture[t]) for t in TASKS},
            context_frames=context,
            reference_images=(int(refs[0]), int(refs[1])),
            templates=templates,
            num_frames=num_frames,
        )


def render_instruction(template: str, caption: str, n_images: int) -> str:
    """``{images}`` → one ``<image>`` per image (no separator), ``{caption}`` → the caption."""
    # A caption's own "<image>" would count as a placeholder; the caption column keeps the original.
    text = caption.replace(IMAGE_TOKEN, "[image]")
    return template.replace("{images}", IMAGE_TOKEN * n_images).replace("{caption}", text)


def draw_tasks(rng: np.random.Generator, weights: list[float], k: int) -> list[int]:
    """k distinct task indices, drawn one after another by weight without replacement."""
    weights = [float(w) for w in weights]
    chosen: list[int] = []
    # Plain floats and one uniform per draw: Generator.choice(p=...) costs ~13 µs a call, which
    # matters at a million clips.
    for _ in range(min(k, sum(w > 0 for w in weights))):
        target, total, pick = rng.random() * sum(weights), 0.0, -1
        for i, weight in enumerate(weights):
            if weight > 0:
                total, pick = total + weight, i
                if target < total:
                    break
        chosen.append(pick)
        weights[pick] = 0.0
    return chosen


def _below(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in 0..n-1 (one uniform float: cheaper than Generator.integers)."""
    return min(int(rng.random() * n), n - 1)


def _sample(rng: np.random.Generator, population: int, n: int) -> list[int]:
    """n distinct indices of range(population), in random order: a partial Fisher-Yates shuffle."""
    swapped: dict[int, int] = {}
    picks = []
    for j in range(n):
        k = j + _below(rng, population - j)
        picks.append(swapped.get(k, k))
        swapped[k] = swapped.get(j, j)
    return picks


@dataclass
class _SubjectDocs:
    """Memory rows and ids of each subject's documents (ground truth), grouped once."""

    by_subject: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def from_memory(cls, memory: lance.LanceDataset) -> "_SubjectDocs":
        table = memory.to_table(columns=["id", "doc_type", "subject_id"])
        is_subject = pc.fill_null(
            pc.and_(pc.equal(table["doc_type"], "subject"), pc.is_valid(table["subject_id"])), False
        )
        rows = np.flatnonzero(is_subject.to_numpy(zero_copy_only=False))
        if not len(rows):
            return cls({})
        encoded = pc.dictionary_encode(table["subject_id"].filter(is_subject).combine_chunks())
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")  # memory order within a subject
        bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
        sorted_rows = rows[order]
        sorted_ids = np.array(table["id"].take(pa.array(sorted_rows)).to_pylist(), dtype=object)
        return cls(
            {
                name: (sorted_rows[bounds[i] : bounds[i + 1]], sorted_ids[bounds[i] : bounds[i + 1]])
                for i, name in enumerate(encoded.dictionary.to_pylist())
            }
        )


@dataclass
class _Clip:
    split: str
    index: int
    row: int
    id: str
    caption: str
    truth: dict[str, Any]  # TRUTH_COLUMNS of the clip
    retrieved_ids: list[str]
    retrieved_rows: list[int]


class _Planner:
    """Turns one clip into its instruction rows."""

    def __init__(self, cfg: InstructionParams, seed: int, docs: _SubjectDocs, provenance: dict[str, dict[str, Any]]):
        self.cfg, self.seed, self.docs, self.provenance = cfg, seed, docs, provenance
        self.weights = [cfg.mixture[t] for t in TASKS]
        self.eval_tasks = [t for t in TASKS if cfg.templates[t]]
        self.tasks: dict[str, Counter] = {split: Counter() for split in SPLITS}
        self.reference_sources: Counter = Counter()
        self.subject_unavailable: Counter = Counter()

    def _reference_pool(self, clip: _Clip) -> tuple[Sequence[int], Sequence[str], str] | None:
        """The clip's possible reference documents (rows, ids, how they were found), or None."""
        subject = clip.truth.get("subject_id")
        if self.docs.by_subject and subject is not None:
            # A memory with ground truth: the subject's own documents, or nothing (retrieval could
            # return another subject's documents).
            found = self.docs.by_subject.get(subject)
            return (*found, "ground_truth") if found is not None else None
        if clip.split == "train" and clip.retrieved_ids:
            return clip.retrieved_rows, clip.retrieved_ids, "retrieval"
        return None

    def rows(self, clip: _Clip) -> list[dict[str, Any]]:
        stream = STREAM_TRAIN_INSTRUCTIONS if clip.split == "train" else STREAM_EVAL_INSTRUCTIONS
        rng = np.random.default_rng([self.seed, stream, clip.index])
        pool = self._reference_pool(clip)
        if pool is None:
            self.subject_unavailable[clip.split] += 1
        if clip.split == "train":
            weights = list(self.weights)
            if pool is None:
                weights[TASKS.index("subject")] = 0.0
            tasks = [TASKS[i] for i in draw_tasks(rng, weights, self.cfg.samples_per_clip)]
        else:
            tasks = [t for t in self.eval_tasks if t != "subject" or pool is not None]
        return [self._row(clip, task, rng, pool) for task in tasks]

    def _row(
        self, clip: _Clip, task: str, rng: np.random.Generator, pool: tuple[Sequence[int], Sequence[str], str] | None
    ) -> dict[str, Any]:
        templates = self.cfg.templates[task]
        template = _below(rng, len(templates))
        sources: list[dict[str, Any]] = []
        reference_source = ""
        if task == "subject":
            rows, ids, reference_source = pool
            low, high = self.cfg.reference_images
            high = min(high, len(rows))
            low = min(low, high)
            n = low + _below(rng, high - low + 1)
            picks = _sample(rng, len(rows), n) if reference_source == "ground_truth" else range(n)
            sources = [{"kind": "memory", "id": str(ids[p]), "row": int(rows[p]), "frame": -1} for p in picks]
            self.reference_sources[reference_source] += 1
        elif task == "prediction":
            sources = [
                {"kind": "frame", "id": clip.id, "row": clip.row, "frame": f} for f in range(self.cfg.context_frames)
            ]
        self.tasks[clip.split][task] += 1
        return {
            "id": f"ins-{clip.split}-{clip.index:07d}-{task}",
            "split": clip.split,
            "task": task,
            "instruction": render_instruction(templates[template], clip.caption, len(sources)),
            "caption": clip.caption,
            "template": template,
            "clip_id": clip.id,
            "clip_row": clip.row,
            "image_sources": sources,
            "context_frames": self.cfg.context_frames if task == "prediction" else 0,
            "reference_source": reference_source,
            **self.provenance[clip.split],
            **clip.truth,
        }


def _open_at(uri: Path, version: int, what: str) -> lance.LanceDataset:
    ds = lance_io.open_dataset(uri, what)
    try:
        return ds if ds.version == int(version) else ds.checkout_version(int(version))
    except Exception as exc:  # lance raises ValueError/OSError for a cleaned-up version
        raise VimiError(
            f"The augmented dataset was built against {what} version {version} at {uri}, which is "
            f"gone ({exc}); rerun `vimi index build` and `vimi augment`."
        ) from None


def _single(table: pa.Table, column: str, uri: Path) -> int:
    values = pc.unique(table[column]).to_pylist()
    if len(values) != 1:
        raise VimiError(f"The augmented dataset at {uri} mixes {column} {sorted(values)}; rerun `vimi augment`.")
    return int(values[0])


def _clip_columns(videos: lance.LanceDataset) -> pa.Table:
    present = set(videos.schema.names)
    table = videos.to_table(columns=["id", "caption", *[c for c in TRUTH_COLUMNS if c in present]])
    for name in TRUTH_COLUMNS:  # real corpora written by other tools may lack them
        if name not in present:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table


CHUNK = 8192  # clips turned into Python objects at a time


def _train_clips(augmented: pa.Table, videos: pa.Table, videos_uri: Path, videos_version: int) -> Iterator[_Clip]:
    positions = pc.index_in(augmented["clip_id"], value_set=videos["id"])
    if positions.null_count:
        missing = augmented["clip_id"].filter(pc.is_null(positions))[0].as_py()
        raise VimiError(
            f"{positions.null_count} clip(s) of the augmented dataset are not in the video corpus at "
            f"{videos_uri} version {videos_version}, e.g. {missing!r}; rerun `vimi augment`."
        )
    for start in range(0, augmented.num_rows, CHUNK):
        rows = positions.slice(start, CHUNK)
        clips = videos.take(rows)
        part = augmented.slice(start, CHUNK)
        for i, (row, clip_id, caption, truth, ids, mem_rows) in enumerate(
            zip(
                rows.to_pylist(),
                clips["id"].to_pylist(),
                clips["caption"].to_pylist(),
                clips.select(list(TRUTH_COLUMNS)).to_pylist(),
                part["memory_ids"].to_pylist(),
                part["memory_rows"].to_pylist(),
            )
        ):
            yield _Clip("train", start + i, row, clip_id, caption, truth, ids, mem_rows)


def _eval_clips(videos: pa.Table) -> Iterator[_Clip]:
    for start in range(0, videos.num_rows, CHUNK):
        clips = videos.slice(start, CHUNK)
        for i, (clip_id, caption, truth) in enumerate(
            zip(clips["id"].to_pylist(), clips["caption"].to_pylist(), clips.select(list(TRUTH_COLUMNS)).to_pylist())
        ):
            yield _Clip("eval", start + i, start + i, clip_id, caption, truth, [], [])


def build_instructions(
    memory_uri: Path,
    videos_uri: Path,
    eval_videos_uri: Path | None,
    augmented_uri: Path,
    out_uri: Path,
    params: InstructionParams,
    seed: int,
    batch_rows: int = 4096,
) -> dict[str, Any]:
    """Write the instruction dataset (one Lance overwrite commit) and return what a person wants to see.

    Memory and training clips are read at the versions the augmented dataset recorded; the
    evaluation clips (when ``eval_videos_uri`` holds a dataset) at their current version.
    """
    start = time.perf_counter()
    aug = lance_io.open_dataset(augmented_uri, "augmented video dataset", "Build it with `vimi augment`.")
    augmented = aug.to_table(columns=["clip_id", "memory_ids", "memory_rows", "memory_version", "videos_version"])
    if augmented.num_rows == 0:
        raise VimiError(f"The augmented video dataset at {augmented_uri} has no rows; rerun `vimi augment`.")
    memory_version = _single(augmented, "memory_version", augmented_uri)
    videos_version = _single(augmented, "videos_version", augmented_uri)
    memory = _open_at(memory_uri, memory_version, "memory")
    videos = _clip_columns(_open_at(videos_uri, videos_version, "video corpus"))
    eval_ds = lance.dataset(str(eval_videos_uri)) if eval_videos_uri and lance_io.exists(eval_videos_uri) else None
    eval_videos = _clip_columns(eval_ds) if eval_ds is not None else None

    memory_path = lance_io.location(memory_uri)
    provenance = {
        "train": {
            "videos_path": lance_io.location(videos_uri),
            "videos_version": videos_version,
            "memory_path": memory_path,
            "memory_version": memory_version,
        }
    }
    if eval_ds is not None:
        provenance["eval"] = {
            "videos_path": lance_io.location(eval_videos_uri),
            "videos_version": eval_ds.version,
            "memory_path": memory_path,
            "memory_version": memory_version,
        }
    planner = _Planner(params, seed, _SubjectDocs.from_memory(memory), provenance)

    clips: Iterator[_Clip] = _train_clips(augmented, videos, dataset_location(videos_uri), videos_version)
    total = augmented.num_rows
    if eval_videos is not None:
        clips = itertools.chain(clips, _eval_clips(eval_videos))
        total += eval_videos.num_rows
    rows = (
        row for clip in progress(clips, total=total, desc="instructions", unit="clip") for row in planner.rows(clip)
    )

    info = {
        "memory_path": memory_path,
        "memory_version": memory_version,
        "videos_path": provenance["train"]["videos_path"],
        "videos_version": videos_version,
        "eval_videos_path": provenance["eval"]["videos_path"] if eval_ds is not None else None,
        "eval_videos_version": eval_ds.version if eval_ds is not None else None,
        "augmented_path": lance_io.location(augmented_uri),
        "augmented_version": aug.version,
    }
    # Provenance as one JSON document (sorted keys) under one metadata key.
    schema = INSTRUCTION_SCHEMA.with_metadata(
        {"provenance": json.dumps(info | {"seed": seed, "params": asdict(params)}, sort_keys=True)}
    )
    result = lance_io.write_batches(
        out_uri,
        lance_io.batches_of(rows, schema, batch_rows),
        schema,
        "overwrite",
        commit_message=f"instructions seed={seed} augmented@v{aug.version}",
    )
    meta = lance_io.summary(out_uri)
    meta["seconds"] = round(time.perf_counter() - start, 2)
    meta["fingerprint"] = lance_io.fingerprint(out_uri)
    return (
        meta
        | info
        | {
            "version": result.version,
            "tasks": {
                split: {t: planner.tasks[split][t] for t in TASKS}
                for split in SPLITS
                if split == "train" or eval_ds is not None
            },
            "subject_unavailable": {split: planner.subject_unavailable[split] for split in SPLITS},
            "reference_source": dict(sorted(planner.reference_sources.items())),
            "examples": instruction_examples(out_uri, memory_uri),
        }
    )


def describe_sources(sources: list[dict[str, Any]], memory_captions: dict[str, str]) -> list[str]:
    """Image sources as people read them: "memory mem-0000003 (caption)", "frame 0 of vid-0000012"."""
    return [
        f"memory {s['id']} ({memory_captions.get(s['id'], '?')})"
        if s["kind"] == "memory"
        else f"frame {s['frame']} of {s['id']}"
        for s in sources
    ]


def instruction_examples(uri: Path, memory_uri: Path, n: int = 3) -> list[dict[str, Any]]:
    """Up to n rows, one per task where possible (training rows first), with readable sources."""
    ds = lance_io.open_dataset(uri, "instruction dataset", "Build it with `vimi instructions build`.")
    keys = ds.to_table(columns=["split", "task"])
    splits, tasks = (keys[c].to_numpy(zero_copy_only=False) for c in ("split", "task"))
    picks: list[int] = []
    for split in SPLITS:
        for task in TASKS:
            matches = np.flatnonzero((splits == split) & (tasks == task))
            if len(picks) < n and len(matches) and task not in {tasks[p] for p in picks}:
                picks.append(int(matches[0]))
    if not picks:
        return []
    rows = ds.take(
        sorted(picks), columns=["id", "split", "task", "instruction", "image_sources", "memory_version"]
    ).to_pylist()
    memory_rows = sorted({s["row"] for r in rows for s in r["image_sources"] if s["kind"] == "memory"})
    captions: dict[str, str] = {}
    if memory_rows:
        memory = _open_at(memory_uri, rows[0]["memory_version"], "memory")
        taken = memory.take(memory_rows, columns=["id", "caption"])
        captions = dict(zip(taken["id"].to_pylist(), taken["caption"].to_pylist()))
    return [
        {
            "id": r["id"],
            "split": r["split"],
            "task": r["task"],
            "instruction": r["instruction"],
            "sources": describe_sources(r["image_sources"], captions),
        }
        for r in rows
    ]
