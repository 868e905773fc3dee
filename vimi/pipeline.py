"""Pipeline steps: one function per step, called by the CLI (and so by DVC) and by Dagster assets.

Each step reads its knobs from Settings, writes its output atomically, and returns a plain dict
of what a person wants to know about the result (it becomes CLI output and asset metadata).

The Dagster definitions import this module, so torch, MLflow and Great Expectations are imported by the
steps that use them, not here (measured: docs/operations.md, "Imports inside functions").
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from vimi.config import Settings, dataset_location
from vimi.data.schema import VIDEO_SCHEMA
from vimi.data.webvid import video_candidates
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.io.ingest import run_ingest
from vimi.locks import locked
from vimi.memory.img2dataset import memory_candidates
from vimi.memory.schema import MEMORY_SCHEMA
from vimi.parallel import resolve_workers
from vimi.validation.suites import ValidationReport, validate
from vimi.world.generate import WorldConfig, generate_memory, generate_videos, load_or_build_catalog, write_catalog

WORLD_PARTS = ("catalog", "memory", "videos", "eval")


def _dataset_metadata(uri: Path, seconds: float, **extra: Any) -> dict[str, Any]:
    meta = lance_io.summary(uri)
    meta["seconds"] = round(seconds, 2)
    meta["fingerprint"] = lance_io.fingerprint(uri)
    meta.update(extra)
    return meta


def spriteworld_not_applicable(settings: Settings) -> str | None:
    """Why SpriteWorld's own steps (its evaluation split, the feature network, its metrics) do not apply,
    or None when they do: they score clips against SpriteWorld's ground truth, which the user's clips
    (data.video_sources) do not have."""
    if (settings.params.get("data") or {}).get("video_sources"):
        return (
            "data.video_sources is set: the clips are your own and carry none of SpriteWorld's ground truth, so "
            "SpriteWorld's evaluation split, feature network and metrics do not apply; UCF101 "
            "(evaluate.ucf101.root) scores the model on real video"
        )
    return None


def world_not_applicable(settings: Settings) -> str | None:
    """Why the SpriteWorld catalog is not made, or None: nothing reads it when both the memory and the
    clips come from the user's sources."""
    data = settings.params.get("data") or {}
    if data.get("memory_sources") and data.get("video_sources"):
        return "data.memory_sources and data.video_sources are set: no step generates SpriteWorld data"
    return None


def _not_applicable(folder: Path, reason: str) -> dict[str, Any]:
    """A step that does not apply writes why (its output folder exists, as DVC expects) and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # what an earlier SpriteWorld run left must not pass for the user's
        if stale.is_file():
            stale.unlink()
        else:
            shutil.rmtree(stale)
    (folder / "not_applicable.json").write_text(json.dumps({"applies": False, "reason": reason}, indent=1) + "\n")
    return {"applies": False, "reason": reason, "path": str(folder)}


@locked("world")
def world_catalog(settings: Settings, out_dir: Path | None = None) -> dict[str, Any]:
    """SpriteWorld's subjects, scenes and actions (data/world/catalog.json)."""
    folder = out_dir or settings.path("world")
    reason = world_not_applicable(settings)
    if reason:
        return _not_applicable(folder, reason)
    cfg = WorldConfig.from_params(settings.params)
    catalog = write_catalog(cfg, folder)
    stale = folder / "not_applicable.json"
    stale.unlink(missing_ok=True)
    return {
        "applies": True,
        "path": str(folder / "catalog.json"),
        "seed": cfg.seed,
        "subjects": len(catalog.subjects),
        "seen_subjects": len(catalog.seen),
        "unseen_subjects": len(catalog.unseen),
        "scenes": list(catalog.scenes),
        "actions": list(catalog.actions),
        "example_subjects": [f"{s.name}: {s.description()} ({s.split})" for s in catalog.subjects[:5]],
    }


def _specs(spec_list: Any, name: str) -> list[dict[str, Any]]:
    if not isinstance(spec_list, list) or not all(isinstance(s, dict) for s in spec_list):
        raise VimiError(f"params.yaml data.{name} must be a list of mappings, got {spec_list!r}.")
    return spec_list


def _ingest_configured(settings: Settings, uri: Path, schema, streams: list, start: float) -> dict[str, Any]:
    """One overwrite commit of every configured source's rows; bad rows quarantined beside it."""
    report = run_ingest(
        str(uri),
        uri,
        lance_io.quarantine_path_for(uri),
        schema,
        itertools.chain(*streams),
        settings.section("ingest")["batch_rows"],
        mode="overwrite",
    )
    return _dataset_metadata(uri, time.perf_counter() - start, source="ingest", **report.to_json())


@locked("memory")
def build_memory(settings: Settings, out: Path | None = None, world_dir: Path | None = None) -> dict[str, Any]:
    """The image-text memory: ingested from data.memory_sources when configured, else SpriteWorld."""
    uri = out or settings.path("memory")
    start = time.perf_counter()
    specs = _specs(settings.params.get("data", {}).get("memory_sources") or [], "memory_sources")
    if specs:
        ingest = settings.section("ingest")
        streams = []
        for spec in specs:
            sources = spec.get("source")
            sources = [sources] if isinstance(sources, str) else list(sources or [])
            options = {k: spec[k] for k in ("id_prefix", "image_column", "caption_column", "key_column") if k in spec}
            streams.append(memory_candidates(sources, spec.get("format", ""), ingest, **options))
        return _ingest_configured(settings, uri, MEMORY_SCHEMA, streams, start)
    cfg = WorldConfig.from_params(settings.params)
    catalog = load_or_build_catalog(cfg, world_dir or settings.path("world"))
    generate_memory(cfg, catalog, uri, settings.section("ingest")["batch_rows"])
    return _dataset_metadata(uri, time.perf_counter() - start, source="spriteworld", quarantined={})


@locked(lambda settings, split="train", *a, **k: "videos" if split == "train" else "eval_videos")
def build_videos(
    settings: Settings, split: str = "train", out: Path | None = None, world_dir: Path | None = None
) -> dict[str, Any]:
    """Training clips (split=train) or the evaluation split (split=eval): ingested from
    data.video_sources when configured (training only), else SpriteWorld."""
    if split not in ("train", "eval"):
        raise VimiError(f"split must be train or eval, not {split!r}.")
    uri = out or settings.path("videos" if split == "train" else "eval_videos")
    start = time.perf_counter()
    specs = _specs(settings.params.get("data", {}).get("video_sources") or [], "video_sources")
    if specs and split == "train":
        ingest = settings.section("ingest")
        streams = []
        for spec in specs:
            missing = [k for k in ("csv", "videos") if not spec.get(k)]
            if missing:
                raise VimiError(f"params.yaml data.video_sources entry {spec} lacks {', '.join(missing)}.")
            streams.append(
                video_candidates(spec.get("format", "webvid"), Path(spec["csv"]), Path(spec["videos"]), ingest)
            )
        return _ingest_configured(settings, uri, VIDEO_SCHEMA, streams, start)
    reason = spriteworld_not_applicable(settings) if split == "eval" else None
    if reason:  # an empty evaluation split: nothing SpriteWorld-made beside the user's clips
        import pyarrow as pa

        lance_io.write_batches(uri, [pa.RecordBatch.from_pylist([], schema=VIDEO_SCHEMA)], VIDEO_SCHEMA, "overwrite")
        return _dataset_metadata(
            uri, time.perf_counter() - start, source="none", quarantined={}, applies=False, reason=reason
        )
    cfg = WorldConfig.from_params(settings.params)
    catalog = load_or_build_catalog(cfg, world_dir or settings.path("world"))
    generate_videos(cfg, catalog, uri, split, settings.section("ingest")["batch_rows"])
    return _dataset_metadata(uri, time.perf_counter() - start, source="spriteworld", quarantined={})


def generate_world(
    settings: Settings, out_dir: Path | None = None, parts: tuple[str, ...] = WORLD_PARTS
) -> dict[str, dict[str, Any]]:
    """`vimi world generate`: SpriteWorld's catalog, memory, training clips and evaluation split."""
    unknown = [p for p in parts if p not in WORLD_PARTS]
    if unknown:
        raise VimiError(f"Unknown part(s) {', '.join(unknown)}; choose from {', '.join(WORLD_PARTS)}.")
    base = out_dir or settings.data_dir
    world_dir = base / "world"
    results: dict[str, dict[str, Any]] = {}
    # Generation ignores data.*_sources: this command always writes SpriteWorld.
    world_only = Settings(
        params={**settings.params, "data": {"memory_sources": [], "video_sources": []}},
        root=settings.root,
        data_dir=base,
        params_path=settings.params_path,
        lance_uri=None if out_dir else settings.lance_uri,
    )
    if "catalog" in parts:
        results["catalog"] = world_catalog(world_only, world_dir)
    if "memory" in parts:
        results["memory"] = build_memory(world_only, world_only.path("memory"), world_dir)
    if "videos" in parts:
        results["videos"] = build_videos(world_only, "train", world_only.path("videos"), world_dir)
    if "eval" in parts:
        results["eval_videos"] = build_videos(world_only, "eval", world_only.path("eval_videos"), world_dir)
    return results


@locked("bm25_index")
def _index_args(settings: Settings) -> dict[str, Any]:
    r = settings.section("retrieval")
    return {"k1": float(r.get("k1", 0.9)), "b": float(r.get("b", 0.4)), "merge": bool(r.get("merge_shards", True))}


def index_partitions(settings: Settings) -> int:
    """How many partitions (shards) the BM25 index is built in: retrieval.index_shards (0: one per core)."""
    return resolve_workers(int(settings.section("retrieval").get("index_shards", 4)))


def build_bm25_index(settings: Settings) -> dict[str, Any]:
    """The BM25 index over the memory's captions (data/bm25/): every partition, then the commit step."""
    from vimi.retrieval.bm25 import build_index, describe

    index_dir = settings.path("bm25")
    info = build_index(
        settings.path("memory"),
        index_dir,
        **_index_args(settings),
        shards=index_partitions(settings),
        batch_rows=int(settings.section("retrieval").get("index_batch_rows", 20000)),
    )
    return describe(info, index_dir) | {"docs_per_s": round(info.docs / max(info.seconds, 1e-9), 1)}


def build_bm25_partition(settings: Settings, part: int, parts: int) -> dict[str, Any]:
    """One partition of the BM25 index: its shard of the memory's rows (data/bm25.parts/shard-N)."""
    from vimi.retrieval.bm25 import build_shard

    batch_rows = int(settings.section("retrieval").get("index_batch_rows", 20000))
    return build_shard(settings.path("memory"), settings.path("bm25"), part, parts, batch_rows)


def commit_bm25_index(settings: Settings, parts: int) -> dict[str, Any]:
    """The BM25 index's commit step: its built partitions moved into place as one index."""
    from vimi.retrieval.bm25 import commit_index, describe

    index_dir = settings.path("bm25")
    info = commit_index(settings.path("memory"), index_dir, parts, **_index_args(settings))
    return describe(info, index_dir) | {"docs_per_s": round(info.docs / max(info.seconds, 1e-9), 1)}


def search_memory(settings: Settings, query: str, k: int | None = None) -> list:
    """The top-k memory documents for a free-text query."""
    from vimi.retrieval.bm25 import open_searcher

    k = int(k or settings.section("retrieval")["k"])
    if k < 1:
        raise VimiError(f"k must be >= 1, got {k}.")
    return open_searcher(settings.path("bm25"), settings.path("memory")).search(query, k)


def fetch_documents(settings: Settings, hits: list, with_images: bool = False) -> list[dict[str, Any]]:
    """Caption (and image bytes with their format) of each hit, from the memory."""
    if not hits:
        return []
    columns = ["caption", "image"] if with_images else ["caption"]
    rows = lance_io.open_dataset(settings.path("memory")).take([h.row for h in hits], columns=columns).to_pylist()
    if with_images:
        import io

        from PIL import Image

        for row in rows:
            with Image.open(io.BytesIO(row["image"])) as img:
                row["format"] = {"JPEG": "jpg"}.get(img.format, (img.format or "bin").lower())
    return rows


@locked("augment")
def augment_partitions(settings: Settings) -> int:
    """How many partitions the augmentation runs in: retrieval.augment_partitions."""
    return int(settings.section("retrieval").get("augment_partitions", 2))


def _augment_paths(settings: Settings) -> tuple[Path, Path, Path, Path]:
    return settings.path("videos"), settings.path("memory"), settings.path("bm25"), settings.path("augmented")


def _augment_records(settings: Settings) -> Path:
    from vimi.retrieval.augment import parts_dir

    return parts_dir(settings.data_dir)


def augment_videos(settings: Settings) -> dict[str, Any]:
    """The retrieval-augmented video dataset (data/augmented.lance) and its retrieval figures: every
    partition, then the commit step."""
    from vimi.retrieval.augment import augment

    r = settings.section("retrieval")
    meta = augment(
        *_augment_paths(settings),
        k=r["k"],
        threads=r["search_threads"],
        parts=augment_partitions(settings),
        records=_augment_records(settings),
    )
    return _augmented_figures(settings, meta)


def augment_partition(settings: Settings, part: int, parts: int) -> dict[str, Any]:
    """One partition of the augmentation: its clips' rows written as uncommitted fragments."""
    from vimi.retrieval.augment import augment_partition as write_partition

    r = settings.section("retrieval")
    record = write_partition(
        *_augment_paths(settings), _augment_records(settings), part, parts, r["k"], r["search_threads"]
    )
    return {key: value for key, value in record.items() if key != "fragments"} | {"fragments": len(record["fragments"])}


def commit_augmented(settings: Settings, parts: int) -> dict[str, Any]:
    """The augmentation's commit step: every partition's fragments as one new version, with its figures."""
    from vimi.retrieval.augment import commit_augmented as commit

    meta = commit(*_augment_paths(settings), _augment_records(settings), parts, settings.section("retrieval")["k"])
    return _augmented_figures(settings, meta)


def _augmented_figures(settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
    from vimi.retrieval.augment import examples
    from vimi.retrieval.quality import retrieval_frame

    meta["examples"] = examples(settings.path("augmented"), settings.path("memory"))
    meta["figures"] = retrieval_frame(settings.path("augmented"), settings.path("videos"), settings.path("memory"))[2]
    return meta


@locked("instructions")
def build_instruction_dataset(settings: Settings) -> dict[str, Any]:
    """The stage-2 instruction dataset (data/instructions.lance): subject-driven generation, video
    prediction and text-to-video samples for the training clips and the evaluation split."""
    from vimi.data.instructions import InstructionParams, build_instructions

    params = InstructionParams.from_params(settings.params)
    eval_videos = settings.path("eval_videos")
    return build_instructions(
        settings.path("memory"),
        settings.path("videos"),
        eval_videos if lance_io.exists(eval_videos) else None,
        settings.path("augmented"),
        settings.path("instructions"),
        params,
        settings.seed,
    )


def memory_change(settings: Settings) -> dict[str, Any] | None:
    """The memory's version when the BM25 index was not built from it (a new ingest since, or no index
    yet), else None: what the sensor that rebuilds index and augmentation watches."""
    from vimi.retrieval.bm25 import INFO_FILE

    memory = settings.path("memory")
    if not lance_io.exists(memory):
        return None
    version = lance_io.open_dataset(memory).version
    info_file = settings.path("bm25") / INFO_FILE
    indexed = json.loads(info_file.read_text()).get("memory_version") if info_file.is_file() else None
    if indexed == version:
        return None
    return {"memory_version": version, "index_memory_version": indexed}


def validate_dataset(settings: Settings, which: str, uri: Path | None = None) -> ValidationReport:
    """Run the Great Expectations suite of a dataset (memory, videos, eval_videos, retrieval, instructions)."""
    if which == "retrieval":
        from vimi.validation.retrieval import validate_retrieval

        return validate_retrieval(
            uri or settings.path("augmented"), settings.path("videos"), settings.path("memory"), settings.params
        )
    if which == "instructions":
        from vimi.validation.instructions import validate_instructions

        return validate_instructions(uri or settings.path("instructions"), settings.params)
    if which not in ("memory", "videos", "eval_videos"):
        raise VimiError(f"Unknown dataset {which!r}; validate memory, videos, eval_videos, retrieval or instructions.")
    reason = spriteworld_not_applicable(settings) if which == "eval_videos" and uri is None else None
    if reason:
        return ValidationReport(
            suite=which,
            dataset=str(settings.path(which)),
            version=0,
            rows=0,
            decoded_rows=0,
            success=True,
            checks=[],
            seconds=0.0,
            figures={"applies": False, "reason": reason},
        )
    return validate(which, uri or settings.path(which), settings.params)


# The step that writes each dataset: compaction takes its lock, so it never races that step's overwrite.
DATASET_WRITERS = {
    "memory": "memory",
    "videos": "videos",
    "eval_videos": "eval_videos",
    "augmented": "augment",
    "instructions": "instructions",
    "quarantine": "quarantine",
}


def referenced_versions(settings: Settings) -> dict[str, set[int]]:
    """Versions other datasets read rows at: the memory version the BM25 index was built from, the
    memory and clip versions in the augmented dataset's rows, and the clip, memory and augmented
    versions the instruction dataset recorded. Recorded paths are matched by their file name
    (memory.lance, ...), so a data directory that moved still protects its references."""
    from vimi.config import DATASET_FILES
    from vimi.retrieval.bm25 import INFO_FILE

    by_file = {file: name for name, file in DATASET_FILES.items() if name in DATASET_WRITERS}
    refs: dict[str, set[int]] = {name: set() for name in DATASET_WRITERS}

    def add(path: str, version: Any) -> None:
        if Path(path).name in by_file and version is not None:
            refs[by_file[Path(path).name]].add(int(version))

    info = settings.path("bm25") / INFO_FILE
    if info.is_file():
        add(DATASET_FILES["memory"], json.loads(info.read_text())["memory_version"])
    for name in ("augmented", "instructions"):
        if not lance_io.exists(settings.path(name)):
            continue
        ds = lance_io.open_dataset(settings.path(name))
        videos = ["videos_path"] if name == "instructions" else []  # augmented: always this directory's videos
        table = ds.to_table(columns=["memory_path", "memory_version", *videos, "videos_version"])
        for row in {tuple(r.values()) for r in table.to_pylist()}:
            add(row[0], row[1])
            add(row[2] if videos else DATASET_FILES["videos"], row[-1])
        if name == "instructions":
            provenance = json.loads((ds.schema.metadata or {}).get(b"provenance", b"{}"))
            add(str(provenance.get("augmented_path", "")), provenance.get("augmented_version"))
    return refs


def compact_datasets(
    settings: Settings, names: list[str] | None = None, max_fragments: int = 0, prune: bool = False
) -> dict[str, dict[str, Any] | None]:
    """Merge the fragments of the named datasets (all by default) that have more than
    ``max_fragments``: appends do it themselves past lance_io.MAX_FRAGMENTS; this is for data
    appended by other tools, or to merge everything before a `dvc commit`/push.

    ``prune`` also deletes every older version, and the files only they used, except the versions
    other datasets refer to (`referenced_versions`): what keeps a Lance directory's file count and
    size flat however often the pipeline rewrites it. The history then lives in DVC's commits."""
    from vimi.locks import step_lock

    unknown = sorted(set(names or []) - set(DATASET_WRITERS))
    if unknown:
        raise VimiError(f"no dataset named {', '.join(unknown)}; the datasets are {', '.join(DATASET_WRITERS)}.")
    refs = referenced_versions(settings) if prune else {}
    result: dict[str, dict[str, Any] | None] = {}
    for name in names or list(DATASET_WRITERS):
        uri = settings.path(name)
        if not lance_io.exists(uri):
            result[name] = None
            continue
        with step_lock(settings.data_dir / ".locks", DATASET_WRITERS[name]):
            before = lance_io.open_dataset(uri)
            fragments, version = len(before.get_fragments()), before.version
            after = lance_io.compact(uri, max_fragments) or before
            meta = {
                "path": str(uri),
                "fragments_before": fragments,
                "version_before": version,
                "fragments": len(after.get_fragments()),
                "version": after.version,
                "compacted": after.version != version,
            }
            if prune:
                files = len(lance_io.file_sizes(uri))
                pruned = lance_io.prune(uri, refs[name])
                meta |= {
                    "versions_pruned": pruned,
                    "versions_kept": [v["version"] for v in lance_io.open_dataset(uri).versions()],
                    "files_before": files,
                    "files": len(lance_io.file_sizes(uri)),
                }
        result[name] = meta
    return result


def _lance_input(uri: Path, name: str) -> tuple[Path, str, int]:
    return uri, name, lance_io.open_dataset(uri, name).version


@locked("align")
def align_image_encoder(settings: Settings, resume: str = "auto") -> dict[str, Any]:
    """The image encoder, aligned contrastively to the language model on the memory (models/encoder/)."""
    from vimi.tracking import mlflow_tracker, ui_link
    from vimi.train.align import AlignTask
    from vimi.train.loop import LoopConfig, train

    section = settings.params.get("align", {})
    cfg = LoopConfig.from_params(section, settings.seed, "align")
    task = AlignTask(settings.path("memory"), settings.params.get("model", {}), section, settings.seed)
    tracker = mlflow_tracker(
        settings,
        "vimi-align",
        "align-image-encoder",
        [_lance_input(settings.path("memory"), "memory")],
        log_model=False,
    )
    out = settings.model_path("encoder")
    summary = train(task, cfg, settings.model_path(".checkpoints") / "encoder", out, tracker, resume)
    from vimi.models.vision import load_vision

    quality = task.evaluate(load_vision(out).to(task.language_model.device))  # what was saved: the EMA weights
    (out / "alignment.json").write_text(json.dumps(quality, indent=1))
    return (
        summary
        | quality
        | {"path": str(out), "experiment": "vimi-align", "run_link": ui_link(settings, "vimi-align", summary["run_id"])}
    )


@locked(lambda settings, text_only=False, *a, **k: "stage1-text-only" if text_only else "stage1")
def train_stage1(settings: Settings, text_only: bool = False, resume: str = "auto") -> dict[str, Any]:
    """Stage 1, retrieval-augmented pretraining (models/stage1/, or models/stage1-text-only/ for the
    text-only baseline); tracked in the MLflow experiment vimi-stage1."""
    from vimi.tracking import mlflow_tracker, ui_link
    from vimi.train.loop import LoopConfig, train
    from vimi.train.stage1 import Stage1Task

    section = settings.params.get("stage1", {})
    cfg = LoopConfig.from_params(section, settings.seed, "stage1")
    task = Stage1Task(
        settings.params,
        settings.path("augmented"),
        settings.path("videos"),
        settings.model_path("encoder"),
        text_only=text_only,
    )
    inputs = [_lance_input(settings.path("augmented"), "augmented"), _lance_input(settings.path("videos"), "videos")]
    if not text_only:
        inputs.append(_lance_input(settings.path("memory"), "memory"))
    import pandas as pd

    example = (pd.DataFrame({"prompt": [task.dataset.captions[0]]}), {"num_inference_steps": 2, "seed": 0})
    tracker = mlflow_tracker(
        settings,
        "vimi-stage1",
        task.name,
        inputs,
        tags={"vimi.stage": "1", "vimi.text_only": str(text_only).lower(), "vimi.profile": settings.profile},
        input_example=example,
    )
    out = settings.model_path(task.name)
    summary = train(task, cfg, settings.model_path(".checkpoints") / task.name, out, tracker, resume)
    return summary | {
        "path": str(out),
        "experiment": "vimi-stage1",
        "text_only": text_only,
        "run_link": ui_link(settings, "vimi-stage1", summary["run_id"]),
    }


def _lineage_tags(settings: Settings, instructions: Any, init: Any) -> dict[str, str]:
    """Where a stage-2 model came from: data versions, index, code, the model it started from."""
    from vimi.registry import git_commit

    tags = {
        "vimi.instructions": f"{settings.path('instructions')}@v{instructions.version}",
        "vimi.profile": settings.profile,
        "vimi.git_commit": git_commit(settings.root),
        "vimi.init_model": init.uri,
    }
    versions = instructions.versions()
    for name in ("videos", "memory"):
        tags[f"vimi.{name}"] = ", ".join(versions[name])
    # The augmented dataset (and so the index) the instructions were built from, as they recorded it.
    metadata = lance_io.open_dataset(settings.path("instructions")).schema.metadata or {}
    provenance = json.loads(metadata.get(b"provenance", b"{}"))
    if provenance.get("augmented_path") is not None:
        path, version = provenance["augmented_path"], int(provenance["augmented_version"])
        tags["vimi.augmented"] = f"{path}@v{version}"
        try:
            aug = lance_io.open_dataset(path).checkout_version(version)
            tags["vimi.index_id"] = aug.to_table(columns=["index_id"], limit=1).column("index_id")[0].as_py()
        except Exception:  # that version was cleaned up since: the tag says so rather than failing training
            tags["vimi.index_id"] = "unknown (augmented version gone)"
    stage1_run = init.run_id
    summary = Path(init.path) / "training.json"
    if stage1_run is None and summary.is_file():
        stage1_run = json.loads(summary.read_text()).get("run_id")
    if stage1_run:
        tags["vimi.stage1_run_id"] = str(stage1_run)
    return tags


def _input_example(dataset: Any) -> tuple[Any, dict[str, Any]] | None:
    """A served request built from the first subject-driven instruction: its text and reference image(s)."""
    import base64

    import pandas as pd

    row = next((r for r in dataset.rows if r["task"] == "subject"), None)
    if row is None:
        return None
    memory = lance_io.open_dataset(row["memory_path"]).checkout_version(row["memory_version"])
    rows = [s["row"] for s in row["image_sources"]]
    images = [
        base64.b64encode(b).decode("ascii") for b in memory.take(rows, columns=["image"]).column("image").to_pylist()
    ]
    return pd.DataFrame({"prompt": [row["instruction"]], "images": [images]}), {"num_inference_steps": 2, "seed": 0}


@locked("stage2")
def train_stage2(
    settings: Settings, init: str | None = None, resume: str = "auto", register: bool = True
) -> dict[str, Any]:
    """Stage 2, multimodal instruction tuning from a stage-1 pipeline (models/stage2/); tracked in the
    MLflow experiment vimi-stage2 and registered as a new `candidate` version of the model."""
    from vimi.registry import register_pipeline, resolve_model
    from vimi.tracking import mlflow_tracker, ui_link
    from vimi.train.loop import LoopConfig, train
    from vimi.train.stage2 import Stage2Task

    section = settings.params.get("stage2", {})
    cfg = LoopConfig.from_params(section, settings.seed, "stage2")
    if init is None:
        init = str(section.get("init", "models/stage1"))
        local = Path(init) if Path(init).is_absolute() else settings.root / init
        if ":/" not in init and not local.exists():
            raise VimiError(
                f"No stage-1 pipeline at {local} (params.yaml stage2.init). Train it first "
                "(vimi train stage1), or pass --from MODEL."
            )
        source = resolve_model(settings, init, base=settings.root)
    else:
        source = resolve_model(settings, init)
    task = Stage2Task(settings.params, settings.path("instructions"), source.path)
    inputs = [_lance_input(settings.path("instructions"), "instructions")]
    inputs += [
        (dataset_location(p), name, int(v))
        for name, keys in (("videos", task.dataset.videos), ("memory", task.dataset.memory))
        for p, v in keys
    ]
    lineage = _lineage_tags(settings, task.dataset, source)
    tracker = mlflow_tracker(
        settings,
        "vimi-stage2",
        task.name,
        inputs,
        tags={"vimi.stage": "2", **lineage},
        input_example=_input_example(task.dataset),
    )
    out = settings.model_path(task.name)
    summary = train(task, cfg, settings.model_path(".checkpoints") / task.name, out, tracker, resume)
    meta = summary | {
        "path": str(out),
        "experiment": "vimi-stage2",
        "init_model": source.uri,
        "run_link": ui_link(settings, "vimi-stage2", summary["run_id"]),
        "lineage": lineage,
    }
    if register and summary.get("model_uri"):  # the main process logged the model; others have nothing to register
        meta["registered"] = register_pipeline(
            settings,
            summary["model_uri"],
            out,
            lineage,
            {"final_loss": summary["final_loss"], "clips_per_s": summary["clips_per_s"]},
        )
    return meta


@locked("promote")
def promote_model(settings: Settings, version: str | None = None) -> dict[str, Any]:
    """Apply the promotion policy to the registry's candidate (or a version): champion moves or not, and why."""
    from vimi.registry import promote

    if spriteworld_not_applicable(settings):
        # The user's clips have no SpriteWorld metrics: UCF101's FVD when it is configured, else the checks.
        ucf101 = bool(settings.params["evaluate"]["ucf101"]["root"])
        return promote(settings, version, metric="fvd_ucf101" if ucf101 else None)
    return promote(settings, version)


@locked("featurenet")
def train_feature_network(settings: Settings, resume: str = "auto") -> dict[str, Any]:
    """SpriteWorld's feature network (models/featurenet/), trained on the training clips and scored on the
    evaluation split (accuracy.json); tracked in the MLflow experiment vimi-eval."""
    from vimi.evaluation.featurenet import FeatureNetTask, LabelledClips, accuracy, load_feature_network
    from vimi.tracking import mlflow_tracker, ui_link
    from vimi.train.loop import LoopConfig, train

    reason = spriteworld_not_applicable(settings)
    if reason:
        return _not_applicable(settings.model_path("featurenet"), reason)
    section = settings.params.get("featurenet", {})
    cfg = LoopConfig.from_params(section, settings.seed, "featurenet")
    world = settings.params.get("world", {})
    memory = settings.path("memory")
    # The network may look at clips smaller than the world's (featurenet.num_frames / frame_size): clips are
    # fitted to its shape when it trains and when it classifies.
    num_frames = int(section.get("num_frames") or world.get("num_frames", 8))
    frame_size = int(section.get("frame_size") or world.get("frame_size", 32))
    task = FeatureNetTask(
        settings.path("videos"),
        num_frames,
        frame_size,
        section,
        settings.seed,
        memory if lance_io.exists(memory) else None,
    )
    inputs = [_lance_input(settings.path("videos"), "videos")] + (
        [_lance_input(memory, "memory")] if task.stills else []
    )
    tracker = mlflow_tracker(
        settings,
        "vimi-eval",
        "feature-network",
        inputs,
        tags={"vimi.stage": "featurenet", "vimi.profile": settings.profile},
        log_model=False,
    )
    out = settings.model_path(task.name)
    summary = train(task, cfg, settings.model_path(".checkpoints") / task.name, out, tracker, resume)
    quality: dict[str, Any] = {}
    if lance_io.exists(settings.path("eval_videos")):
        model = load_feature_network(out)
        clips = LabelledClips(
            settings.path("eval_videos"), model.config.labels, model.config.num_frames, model.config.frame_size
        )
        quality = accuracy(model, clips)
        (out / "accuracy.json").write_text(json.dumps(quality, indent=1))
    return summary | {
        "path": str(out),
        "experiment": "vimi-eval",
        "eval_accuracy": quality,
        "run_link": ui_link(settings, "vimi-eval", summary["run_id"]),
    }


def evaluate_model(
    settings: Settings,
    benchmark: str = "spriteworld",
    model: str | None = None,
    metrics_file: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The evaluation steps: SpriteWorld's grounding metrics (reports/metrics.json) or UCF101 zero-shot
    FVD/IS (reports/ucf101.json) of MODEL (default: the newest @candidate), into MLflow vimi-eval and the
    version's tags (which promotion reads). OPTIONS override params.yaml: for spriteworld
    `videos_per_task`, `steps`, `seed`; for ucf101 the keys of evaluate.ucf101 (`root`, `num_videos`, `c3d`,
    `split`, `fold`, `steps`, `allow_fewer`, `prompts`) and `seed`. The seed is params.yaml's unless given."""
    from vimi.evaluation.evaluate import evaluate_spriteworld
    from vimi.registry import CANDIDATE, model_uri

    model = model_uri(settings, model or f"@{CANDIDATE}")
    options = {key: value for key, value in options.items() if value is not None}
    seed = int(options.pop("seed", settings.seed))
    if benchmark == "ucf101":
        return evaluate_ucf101_configured(
            settings, model, metrics_file or settings.root / "reports" / "ucf101.json", seed=seed, **options
        )
    if benchmark != "spriteworld":
        raise VimiError(f"Unknown benchmark {benchmark!r}; the pipeline evaluates spriteworld and ucf101.")
    reason = spriteworld_not_applicable(settings)
    if reason:
        from vimi.evaluation.evaluate import update_metrics_file

        update_metrics_file(
            metrics_file or settings.root / "reports" / "metrics.json",
            "spriteworld",
            {"applies": False, "reason": reason},
        )
        return {"benchmark": "spriteworld", "applies": False, "reason": reason}
    unknown = set(options) - {"videos_per_task", "steps"}
    if unknown:
        raise VimiError(
            f"spriteworld evaluation takes no option {', '.join(sorted(unknown))}; known: videos_per_task, steps, seed."
        )
    return evaluate_spriteworld(
        settings,
        model,
        options.get("videos_per_task"),
        options.get("steps"),
        seed,
        metrics_file=metrics_file or settings.root / "reports" / "metrics.json",
    )


UCF101_OPTIONS = ("root", "num_videos", "c3d", "split", "fold", "steps", "allow_fewer", "prompts")


def evaluate_ucf101_configured(
    settings: Settings, model: str, metrics_file: Path | None, seed: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """Zero-shot UCF101 FVD (and IS with C3D) as params.yaml evaluate.ucf101 configures it (OVERRIDES win);
    with no `root` (UCF101 is not shipped: it cannot be downloaded here) it says so, records that in the
    metrics file and evaluates nothing."""
    from vimi.evaluation.evaluate import evaluate_ucf101, update_metrics_file

    unknown = set(overrides) - set(UCF101_OPTIONS)
    if unknown:
        raise VimiError(
            f"ucf101 evaluation takes no option {', '.join(sorted(unknown))}; known: {', '.join(UCF101_OPTIONS)}, seed."
        )
    section = {**(settings.params.get("evaluate", {}).get("ucf101") or {}), **overrides}
    if not section.get("root"):
        reason = (
            "params.yaml evaluate.ucf101.root is not set: point it at a folder holding UCF-101/ and "
            "ucfTrainTestlist/ (the official layout) to evaluate zero-shot FVD (and IS with c3d)"
        )
        if metrics_file is not None:
            update_metrics_file(Path(metrics_file), "ucf101", {"configured": False, "reason": reason})
        return {"benchmark": "ucf101", "configured": False, "reason": reason}

    def local(value: Any) -> Path | None:
        if not value:
            return None
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else settings.root / path

    result = evaluate_ucf101(
        settings,
        model,
        local(section["root"]),
        int(section.get("num_videos", 2048)),
        local(section.get("c3d")),
        str(section.get("split", "test")),
        int(section.get("fold", 1)),
        section.get("steps"),
        settings.seed if seed is None else seed,
        allow_fewer=bool(section.get("allow_fewer", False)),
        metrics_file=metrics_file,
        prompts_file=local(section.get("prompts")),
    )
    return result | {"configured": True}


@locked("report")
def build_run_report(settings: Settings) -> dict[str, Any]:
    """reports/index.html: datasets, retrieved examples, sample videos, loss curves, metrics, registry, ablation."""
    from vimi.report import build_report

    return build_report(settings)
