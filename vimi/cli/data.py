"""Data commands: SpriteWorld, the memory and the video corpus, validation, the index, search, augmentation, instructions, status, compaction."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vimi.cli.common import (
    JsonOption,
    ProfileOption,
    _dataset_line,
    _emit,
    _settings,
    _step_settings,
    _suite_settings,
    app,
    index_app,
    instructions_app,
    memory_app,
    out_console,
    videos_app,
    world_app,
)
from vimi.io import lance_io


class MemoryFormat(str, Enum):
    webdataset = "webdataset"
    parquet = "parquet"


class VideoFormat(str, Enum):
    webvid = "webvid"


class Suite(str, Enum):
    memory = "memory"
    videos = "videos"
    eval_videos = "eval_videos"
    retrieval = "retrieval"
    instructions = "instructions"


class Split(str, Enum):
    train = "train"
    eval = "eval"


@world_app.command("catalog")
def world_catalog_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """SpriteWorld's catalog alone (data/world/catalog.json): subjects, scenes, actions; the pipeline's first step."""
    from vimi.pipeline import world_catalog

    settings = _step_settings("spriteworld", profile)
    c = world_catalog(settings)
    if not c["applies"]:
        _emit(c, as_json, f"SpriteWorld's catalog does not apply: {c['reason']}.", markup=False)
        return
    _emit(
        c,
        as_json,
        f"SpriteWorld, profile [bold]{settings.profile}[/], seed {settings.seed}: {c['subjects']} "
        f"subjects ({c['unseen_subjects']} unseen), {len(c['actions'])} actions, {len(c['scenes'])} scenes → "
        f"{c['path']}",
    )


@world_app.command("generate")
def world_generate(
    profile: Optional[str] = ProfileOption,
    out: Optional[Path] = typer.Option(
        None, "--out", help="Directory to write into (default: the data directory, VIMI_DATA_DIR or ./data)."
    ),
    part: List[str] = typer.Option(
        ["catalog", "memory", "videos", "eval"],
        "--part",
        help="Only these parts: catalog, memory, videos, eval (repeatable).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Generate SpriteWorld: subject catalog, image-text memory, training clips and evaluation split,
    deterministic from params.yaml's seed."""
    from vimi.pipeline import generate_world

    settings = _settings(profile)
    results = generate_world(settings, out.resolve() if out else None, tuple(part))
    lines = [f"SpriteWorld, profile [bold]{settings.profile}[/], seed {settings.seed}"]
    if "catalog" in results:
        c = results["catalog"]
        lines.append(
            f"[bold]catalog[/]: {c['subjects']} subjects ({c['unseen_subjects']} unseen), "
            f"{len(c['actions'])} actions, {len(c['scenes'])} scenes → {c['path']}"
        )
    lines += [_dataset_line(name, meta) for name, meta in results.items() if name != "catalog"]
    _emit(results, as_json, "\n".join(lines))


def _ingest_summary(report, uri: Path, quarantine_uri: Path) -> str:
    text = f"Ingested {report.ingested} rows into {uri} (Lance version {report.version})."
    if report.already_ingested:
        text += f" {report.already_ingested} rows of the same sources were already in it (an earlier run)."
    total = sum(report.quarantined.values())
    if total:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.quarantined.items()))
        text += f"\nQuarantined {total} ({reasons}) → {quarantine_uri}"
    else:
        text += "\nNothing quarantined."
    return text


def _dataset_lock(settings, name: str, uri: Path):
    """The lock of the step that writes dataset URI (the pipeline's own dataset: that step's lock), so two
    ingests, or an ingest and the pipeline's step, never commit the same ids at once."""
    import hashlib

    from vimi.locks import step_lock

    same = str(uri) == str(settings.path(name))
    step = name if same else f"ingest-{hashlib.sha256(str(uri).encode()).hexdigest()[:12]}"
    return step_lock(settings.data_dir / ".locks", step)


@memory_app.command("ingest")
def memory_ingest(
    sources: List[str] = typer.Argument(
        ..., help="Shards or files: paths, directories, or brace/glob patterns such as 'shards/{00000..00009}.tar'."
    ),
    fmt: MemoryFormat = typer.Option(..., "--format", "-f", help="img2dataset output format."),
    out: Optional[Path] = typer.Option(None, "--out", help="Memory dataset (default: <data>/memory.lance)."),
    id_prefix: str = typer.Option("", "--id-prefix", help="Prefix for ids (sample keys), to keep datasets apart."),
    image_column: Optional[str] = typer.Option(
        None, help="parquet: image bytes column (default: first of ingest.image_columns present)."
    ),
    caption_column: Optional[str] = typer.Option(
        None, help="parquet: caption column (default: ingest.caption_column)."
    ),
    key_column: Optional[str] = typer.Option(None, help="parquet: key column (default: ingest.key_column)."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Append image-text pairs (webdataset tar shards or parquet) to the memory as one new Lance version.
    Bad samples go to the quarantine table with their reason."""
    from vimi.memory.img2dataset import ingest_memory

    settings = _settings(profile)
    uri = out.resolve() if out else settings.path("memory")
    quarantine = lance_io.quarantine_path_for(uri)
    with _dataset_lock(settings, "memory", uri):
        report = ingest_memory(
            sources,
            fmt.value,
            uri,
            quarantine,
            settings.section("ingest"),
            id_prefix=id_prefix,
            image_column=image_column,
            caption_column=caption_column,
            key_column=key_column,
        )
    _emit(report.to_json(), as_json, _ingest_summary(report, uri, quarantine), markup=False)


@memory_app.command("build")
def memory_build(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Pipeline step: (re)build the memory from params.yaml — data.memory_sources when set, else SpriteWorld."""
    from vimi.pipeline import build_memory

    meta = build_memory(_step_settings("image_text_memory", profile))
    _emit(meta, as_json, _dataset_line("memory", meta))


@videos_app.command("ingest")
def videos_ingest(
    fmt: VideoFormat = typer.Option(VideoFormat.webvid, "--format", "-f", help="Source format."),
    csv_path: Path = typer.Option(..., "--csv", help="WebVid results CSV (videoid, name, ...)."),
    videos: Path = typer.Option(..., "--videos", help="Folder holding <videoid>.mp4."),
    out: Optional[Path] = typer.Option(None, "--out", help="Video dataset (default: <data>/videos.lance)."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Append video-caption pairs (WebVid CSV + clip folder) to the video corpus as one new Lance version."""
    from vimi.data.webvid import ingest_videos

    settings = _settings(profile)
    uri = out.resolve() if out else settings.path("videos")
    quarantine = lance_io.quarantine_path_for(uri)
    with _dataset_lock(settings, "videos", uri):
        report = ingest_videos(fmt.value, csv_path, videos, uri, quarantine, settings.section("ingest"))
    _emit(report.to_json(), as_json, _ingest_summary(report, uri, quarantine), markup=False)


@videos_app.command("build")
def videos_build(
    split: Split = typer.Option(Split.train, "--split", help="train or eval."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Pipeline step: (re)build a video split from params.yaml — data.video_sources when set, else SpriteWorld."""
    from vimi.pipeline import build_videos

    step = "video_corpus" if split == Split.train else "eval_video_corpus"
    meta = build_videos(_step_settings(step, profile), split.value)
    note = "" if meta.get("applies", True) else f"\n  empty: {escape(meta['reason'])}"
    _emit(meta, as_json, _dataset_line(f"{split.value} videos", meta) + note)


@app.command("validate")
def validate_cmd(
    suite: Suite = typer.Argument(
        ...,
        help="Which suite: memory, videos, eval_videos, retrieval (the "
        "retrieval-quality gate over the augmented dataset), or instructions (the "
        "stage-2 instruction dataset).",
    ),
    path: Optional[Path] = typer.Option(None, "--path", help="Dataset to check (default: the data directory's)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    metrics: Optional[Path] = typer.Option(
        None,
        "--metrics",
        help="Also write the headline figures (success, recall@k, coverage, ...) as a small JSON file (DVC metrics).",
    ),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Run a Great Expectations suite; exit 1 when any expectation fails."""
    from vimi.pipeline import validate_dataset
    from vimi.steps import suite_step

    result = validate_dataset(_suite_settings(suite.value, profile), suite.value, path.resolve() if path else None)
    suite_step(suite.value).suite.write_reports(result, report, metrics)
    _emit(result.to_json(), as_json, result.to_text(), markup=False)
    if not result.success:
        raise typer.Exit(1)


PartitionOption = typer.Option(
    None, "--partition", min=0, help="Run only this partition (0-based); its commit comes with --commit."
)
PartitionsOption = typer.Option(None, "--partitions", min=1, help="How many partitions (default: params.yaml's).")
CommitOption = typer.Option(False, "--commit", help="Only the commit step: the built partitions become the output.")


def _partitioned(step_name: str, profile: str | None, part: int | None, parts: int | None, commit: bool):
    """The step's result: all partitions and the commit (no option), one partition, or the commit alone."""
    from vimi.errors import VimiError
    from vimi.steps import STEP

    step, settings = STEP[step_name], _settings(profile)
    if part is not None and commit:
        raise VimiError("--partition and --commit are separate steps: give one of them.")
    parts = parts or step.partitions.count(step.scope(settings))
    if part is not None:
        return step.run_partition(settings, part, parts), True
    if commit:
        return step.partitions.commit(step.scope(settings), parts), False
    if parts != step.partitions.count(step.scope(settings)):
        raise VimiError("--partitions goes with --partition or --commit; the whole step uses params.yaml's count.")
    return step.function(step.scope(settings)), False


def _partition_line(record: dict) -> str:
    what = (
        "kept (already built from the same input)" if record.get("reused") else f"written in {record['seconds']:.1f} s"
    )
    return (
        f"Partition {record.get('shard', record.get('part'))} of {record.get('shards', record.get('parts'))}: {what}."
    )


@index_app.command("build")
def index_build(
    partition: Optional[int] = PartitionOption,
    partitions: Optional[int] = PartitionsOption,
    commit: bool = CommitOption,
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Build the BM25 index over the memory's captions: each partition (a shard of the memory's rows) built
    aside, then one commit moves them into place as one index."""
    meta, is_partition = _partitioned("bm25_index", profile, partition, partitions, commit)
    if is_partition:
        _emit(meta, as_json, _partition_line(meta), markup=False)
        return
    _emit(
        meta,
        as_json,
        f"Indexed {meta['docs']} captions of memory version {meta['memory_version']} in "
        f"{meta['seconds']:.1f} s ({meta['docs_per_s']:,.0f} docs/s, {len(meta['partitions'])} shards"
        f"{' merged into one' if meta['merged'] else ''}, "
        f"{meta['bytes'] / 2**20:.1f} MiB) → {meta['path']}",
        markup=False,
    )


@app.command("search")
def search_cmd(
    query: str = typer.Argument(..., help="Free text; searched as words, never as Lucene query syntax."),
    k: Optional[int] = typer.Option(None, "-k", help="How many documents (default: retrieval.k)."),
    save_images: Optional[Path] = typer.Option(None, "--save-images", help="Write the retrieved images here."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Search the memory with BM25: rank, id, score and caption of the best documents."""
    from vimi.pipeline import fetch_documents, search_memory

    settings = _settings(profile)
    hits = search_memory(settings, query, k)
    docs = fetch_documents(settings, hits, with_images=save_images is not None)
    results = [
        {"rank": h.rank, "id": h.id, "score": round(h.score, 4), "caption": d["caption"]} for h, d in zip(hits, docs)
    ]
    if save_images is not None:
        save_images.mkdir(parents=True, exist_ok=True)
        for result, doc in zip(results, docs):
            path = save_images / f"{result['rank']:02d}_{_safe_name(result['id'])}.{doc['format']}"
            path.write_bytes(doc["image"])
            result["image"] = str(path)
    if as_json:
        _emit(results, True, "")
        return
    if not results:
        out_console.print(f"No document matches {query!r}.", markup=False, highlight=False)
        return
    table = Table(title=f"BM25 top {len(results)} for {query!r}")
    for column, justify in (("rank", "right"), ("id", "left"), ("score", "right"), ("caption", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for r in results:
        table.add_row(str(r["rank"]), r["id"], f"{r['score']:.3f}", escape(r["caption"]))
    out_console.print(table)
    if save_images is not None:
        out_console.print(f"images → {save_images}", markup=False)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


@app.command("augment")
def augment_cmd(
    partition: Optional[int] = PartitionOption,
    partitions: Optional[int] = PartitionsOption,
    commit: bool = CommitOption,
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Retrieve the top-k memory documents for every training clip's caption → data/augmented.lance: each
    partition (a range of clips) written as Lance fragments, then one commit makes them one version."""
    meta, is_partition = _partitioned("augmented_video_dataset", profile, partition, partitions, commit)
    if is_partition:
        _emit(meta, as_json, _partition_line(meta), markup=False)
        return
    lines = [
        f"Augmented {meta['rows']} clips with the top {meta['k']} memory documents in {meta['seconds']:.1f} s "
        f"({meta['clips_per_s']:,.0f} clips/s) → {meta['path']} (Lance version {meta['version']})",
        "  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in meta["figures"].items()),
    ]
    for example in meta["examples"]:
        lines.append(f"  {example['caption']!r} ←")
        lines += [f"      {r}" for r in example["retrieved"]]
    _emit(meta, as_json, "\n".join(lines), markup=False)


@instructions_app.command("build")
def instructions_build(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Pipeline step: write the stage-2 instructions (params.yaml `instructions`) for every training clip of the
    augmented dataset and every evaluation clip → data/instructions.lance. Memory and clips are read at the
    versions the augmented dataset recorded; subject references come from the memory, never the clip."""
    from vimi.pipeline import build_instruction_dataset

    meta = build_instruction_dataset(_step_settings("instruction_dataset", profile))
    lines = [
        f"Instructions: {meta['rows']} rows in {meta['seconds']:.1f} s → {meta['path']} "
        f"(Lance version {meta['version']}; memory version {meta['memory_version']}, videos version "
        f"{meta['videos_version']})"
    ]
    for split, counts in meta["tasks"].items():
        lines.append(f"  {split}: " + ", ".join(f"{task} {n}" for task, n in counts.items()))
    references = ", ".join(f"{k} {v}" for k, v in meta["reference_source"].items()) or "none"
    unavailable = ", ".join(f"{k} {v}" for k, v in meta["subject_unavailable"].items())
    lines.append(f"  subject references: {references}; clips with no reference image: {unavailable}")
    for example in meta["examples"][:1]:
        lines.append(f"  e.g. {example['task']}: {example['instruction']!r}")
        lines += [f"      <image> = {source}" for source in example["sources"]]
    _emit(meta, as_json, "\n".join(lines), markup=False)


@app.command("status")
def status_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Where the data lives and what is there: rows, Lance version and quarantine counts per dataset."""
    from vimi.status import data_status

    settings = _settings(profile)
    status = data_status(settings)
    lines = [f"profile {settings.profile}, params {settings.params_path}, data {settings.data_dir}"]
    for name, meta in status["datasets"].items():
        if meta is None:
            lines.append(f"  {name}: not built")
        else:
            quarantined = ", ".join(f"{k} {v}" for k, v in meta["quarantined"].items()) or "none"
            lines.append(
                f"  {name}: {meta['rows']} rows, version {meta['version']}, {meta['fragments']} fragments, "
                f"quarantined: {quarantined}"
            )
    for name, meta in status["models"].items():
        if meta is not None:
            lines.append(
                f"  models/{name}: {meta['steps']} steps, final loss {meta['final_loss']:.4f}, "
                f"MLflow run {meta['run_id']}"
            )
    registry = status.get("registry")
    if registry and "versions" in registry:
        for v in registry["versions"]:
            aliases = " ".join(f"@{a}" for a in v["aliases"])
            lines.append(
                f"  registry {registry['name']} v{v['version']} {aliases}: checks {v['checks']}"
                + (f"; {v['promotion']}" if v.get("promotion") else "")
            )
    elif registry and "error" in registry:
        lines.append(f"  registry: {registry['error']}")
    _emit(status, as_json, "\n".join(lines), markup=False)


@app.command("compact")
def compact_cmd(
    datasets: Optional[list[str]] = typer.Argument(
        None, help="memory, videos, eval_videos, augmented, instructions, quarantine (default: all that exist)."
    ),
    max_fragments: int = typer.Option(
        0,
        "--max-fragments",
        min=0,
        help="Leave datasets with at most this many fragments alone (0: merge whenever there is more than one).",
    ),
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Also delete older versions and the files only they use, "
        "keeping those the index, augmented and instruction datasets were built from "
        "(the history stays in DVC's commits; `lance.dataset(path, version=N)` of a pruned "
        "version then fails).",
    ),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Merge small Lance fragments into few large ones: one new version, the same rows in the same order,
    older versions still readable. Appends do it past 64 fragments; this is for data other tools
    appended, or before `dvc commit`/`dvc push` (fewer, larger files)."""
    from vimi.pipeline import compact_datasets

    result = compact_datasets(_settings(profile), datasets or None, max_fragments, prune)
    lines = []
    for name, meta in result.items():
        if meta is None:
            lines.append(f"  {name}: not built")
            continue
        if meta["compacted"]:
            line = (
                f"  {name}: {meta['fragments_before']} → {meta['fragments']} fragments, "
                f"version {meta['version_before']} → {meta['version']}"
            )
        else:
            line = f"  {name}: {meta['fragments']} fragments, left as they are (version {meta['version']})"
        if prune:
            line += (
                f"; pruned {meta['versions_pruned']} versions, kept {meta['versions_kept']}, "
                f"{meta['files_before']} → {meta['files']} files"
            )
        lines.append(line)
    _emit(result, as_json, "\n".join(lines), markup=False)
