"""The step map: every step of the pipeline, once.

Each row names a step, the `vimi.pipeline` function that does it, the steps upstream of it, the
params.yaml keys it reads, the files it writes and the `vimi` command that runs it. Both drivers follow
from this table: the Dagster assets and their checks (`orchestration/assets.py`, `checks.py`), the code
versions that tell the UI what is stale (`orchestration/versions.py`), and `dvc.yaml`, which is generated
from it (`vimi dvc-yaml`, `make dvc.yaml`; a test keeps the committed file current). A step's name is
its Dagster asset's and its DVC stage's.

A step with a Great Expectations suite runs it right after the step: in Dagster as a blocking asset
check, in DVC as the rest of the stage's command; the suite's report is one of the stage's outputs, so
the stages downstream depend on the suite having passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vimi import pipeline
from vimi.config import Settings
from vimi.io.files import write_json

# Where DVC's stages write, whatever VIMI_DATA_DIR says elsewhere: the paths dvc.yaml tracks.
DVC_ENV = "VIMI_DATA_DIR=data"


def figures(*keys: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A report of the named entries of a step's result (those it has)."""
    return lambda result: {key: result[key] for key in keys if key in result}


@dataclass(frozen=True)
class Out:
    """A file or folder a step writes. `cache=False`: a small file whose hash DVC records but which it does
    not keep in its cache; `metrics=True`: a DVC metrics file (`dvc metrics show`). `report`: the file is a
    JSON summary of the step's result, which this function gives; both drivers write it, so a Dagster run
    leaves every output a DVC stage declares."""

    path: str
    cache: bool = True
    metrics: bool = False
    report: Callable[[dict[str, Any]], Any] | None = None


@dataclass(frozen=True)
class Suite:
    """A Great Expectations suite that gates a step's output (`vimi validate NAME`)."""

    name: str  # the suite, as `vimi validate` and `pipeline.validate_dataset` name it
    check: str  # the Dagster asset check's name
    description: str
    params: tuple[str, ...] = ()
    metrics: str | None = None  # also the suite's headline figures as a DVC metrics file

    @property
    def report(self) -> str:
        return f"reports/validation/{self.name}.json"

    def command(self) -> str:
        return f"validate {self.name} --report {self.report}" + (f" --metrics {self.metrics}" if self.metrics else "")

    def outs(self) -> tuple[Out, ...]:
        return (Out(self.report, cache=False),) + (
            (Out(self.metrics, cache=False, metrics=True),) if self.metrics else ()
        )

    def write_reports(self, result: Any, report: Path | None, metrics: Path | None) -> None:
        """The suite's JSON report (a `ValidationReport`) and its headline figures, where asked."""
        if report:
            write_json(report, result.to_json())
        if metrics:
            shown = {k: v for k, v in result.figures.items() if not isinstance(v, dict)}
            write_json(metrics, {"success": result.success, "rows": result.rows, **shown})

    def record(self, result: Any, root: Path) -> None:
        """Write the report files the step's DVC stage declares, under the project root."""
        self.write_reports(result, root / self.report, root / self.metrics if self.metrics else None)


@dataclass(frozen=True)
class Partitions:
    """A step done as partitions and a commit step: each partition writes its part aside (an index shard,
    Lance fragments no reader sees), and the commit makes them the step's output at once. The Dagster
    asset runs each partition as its own op, so an executor places them anywhere and a failed one is re-run
    alone; `vimi CMD --partition N --partitions M` runs one by hand, `--commit` the commit; the step's plain
    command (and its DVC stage) runs them all, then the commit. A partition already done is reused."""

    count: Callable[[Settings], int]  # how many, from the settings
    run: Callable[[Settings, int, int], dict[str, Any]]  # settings, partition, partitions -> its record
    commit: Callable[[Settings, int], dict[str, Any]]  # settings, partitions -> the step's result


@dataclass(frozen=True)
class Step:
    name: str
    function: Callable[..., dict[str, Any]]  # a vimi.pipeline function, called with the settings
    command: str  # the `vimi` command line (without `vimi`) that runs it
    upstream: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[Out, ...]
    group: str
    kinds: tuple[str, ...]
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    reads: tuple[str, ...] = ()  # files read beyond the upstream steps' outputs (DVC deps)
    suite: Suite | None = None
    partitions: Partitions | None = None

    def scope(self, settings: Settings) -> Settings:
        """The settings this step sees: params narrowed to the keys it (and its suite) declares, so what
        it reads is what its code version and its DVC stage follow."""
        return settings.scoped(self.name, self.all_params)

    def run(self, settings: Settings) -> dict[str, Any]:
        """Do the step, then write its report files under the project root (the CLI writes them where its
        options say)."""
        return self._reported(settings, self.function(self.scope(settings), **self.kwargs))

    def run_partition(self, settings: Settings, part: int, parts: int) -> dict[str, Any]:
        """One partition of a partitioned step (its record: what it wrote aside, or reused)."""
        return self.partitions.run(self.scope(settings), part, parts)

    def run_commit(self, settings: Settings, parts: int) -> dict[str, Any]:
        """A partitioned step's commit: its partitions become its output; then its report files."""
        return self._reported(settings, self.partitions.commit(self.scope(settings), parts))

    def _reported(self, settings: Settings, result: dict[str, Any]) -> dict[str, Any]:
        for out in self.outs:
            if out.report:
                write_json(settings.root / out.path, out.report(result))
        return result

    def report(self, result: dict[str, Any], path: str | None = None) -> Any:
        """The content of the step's report file (the one at PATH, or its only one)."""
        reports = [out for out in self.outs if out.report and (path is None or out.path == path)]
        if len(reports) != 1:
            raise ValueError(f"step {self.name} has {len(reports)} report files" + (f" at {path}" if path else ""))
        return reports[0].report(result)

    @property
    def all_params(self) -> tuple[str, ...]:
        """What the step and its suite read from params.yaml: its code version and its DVC params."""
        extra = self.suite.params if self.suite else ()
        return self.params + tuple(p for p in extra if p not in self.params)

    @property
    def all_outs(self) -> tuple[Out, ...]:
        return self.outs + (self.suite.outs() if self.suite else ())

    @property
    def dvc_command(self) -> str:
        line = f"{DVC_ENV} vimi {self.command}"
        return line + (f" && {DVC_ENV} vimi {self.suite.command()}" if self.suite else "")

    @property
    def data_outs(self) -> tuple[str, ...]:
        """The paths the step makes (what the README's table shows)."""
        return tuple(o.path for o in self.outs if not o.metrics or len(self.outs) == 1)

    @property
    def plain_command(self) -> str:
        """The command as a person types it: without the files DVC tracks or the model it evaluates."""
        words, shown = self.command.split(), []
        for i, word in enumerate(words):
            if word not in OUTPUT_OPTIONS and not (i and words[i - 1] in OUTPUT_OPTIONS):
                shown.append(word)
        return "vimi " + " ".join(shown)


OUTPUT_OPTIONS = ("--metrics", "--report", "--model")
TRAINING_FIGURES = ("final_loss", "clips_per_s", "steps", "run_id", "mixed_precision")


def stage2_figures(result: dict[str, Any]) -> dict[str, Any]:
    """Stage 2's figures, with the registered version and its checks."""
    shown = figures(*TRAINING_FIGURES)(result)
    if result.get("registered"):
        shown.update(registered_version=result["registered"]["version"], checks=result["registered"]["checks"])
    return shown


_WORLD = ("seed", "profile", "world")
_DATASET_SUITE = ("validate", "ingest")

STEPS: tuple[Step, ...] = (
    Step(
        "spriteworld",
        pipeline.world_catalog,
        "world catalog",
        (),
        _WORLD + ("data.memory_sources", "data.video_sources"),  # both set: no catalog
        (Out("data/world"),),
        "data",
        ("json",),
        "SpriteWorld's catalog: subjects (name, shape, colours, pattern, seen/unseen), scenes, actions.",
    ),
    Step(
        "image_text_memory",
        pipeline.build_memory,
        "memory build",
        ("spriteworld",),
        _WORLD + ("data.memory_sources", "ingest"),
        (Out("data/memory.lance"),),
        "data",
        ("lance",),
        "Image-text memory (data/memory.lance): SpriteWorld documents, or the configured webdataset/parquet sources.",
        suite=Suite(
            "memory",
            "memory_suite",
            "GE: schema, unique ids, non-empty captions, decodable images of declared size.",
            _DATASET_SUITE,
        ),
    ),
    Step(
        "video_corpus",
        pipeline.build_videos,
        "videos build --split train",
        ("spriteworld",),
        _WORLD + ("data.video_sources", "ingest"),
        (Out("data/videos.lance"),),
        "data",
        ("lance",),
        "Training clips (data/videos.lance): SpriteWorld, or the configured WebVid sources.",
        kwargs={"split": "train"},
        suite=Suite(
            "videos",
            "videos_suite",
            "GE: schema, unique ids, non-empty captions, decodable clips, frame counts and sizes in range.",
            _DATASET_SUITE,
        ),
    ),
    Step(
        "eval_video_corpus",
        pipeline.build_videos,
        "videos build --split eval",
        ("spriteworld",),
        _WORLD + ("data.video_sources",),  # the user's clips: an empty split
        (Out("data/eval_videos.lance"),),
        "data",
        ("lance",),
        "Evaluation clips (data/eval_videos.lance): seen subjects in new combinations and subjects that appear "
        "only in the memory.",
        kwargs={"split": "eval"},
        suite=Suite("eval_videos", "eval_videos_suite", "GE: the video suite on the evaluation split.", _DATASET_SUITE),
    ),
    Step(
        "bm25_index",
        pipeline.build_bm25_index,
        "index build",
        ("image_text_memory",),
        (
            "retrieval.k1",
            "retrieval.b",
            "retrieval.index_shards",
            "retrieval.merge_shards",
            "retrieval.index_batch_rows",
        ),
        (Out("data/bm25"), Out("data/bm25.parts")),
        "retrieval",
        ("lucene",),
        "BM25 index (pyserini/Anserini) over the memory's captions (data/bm25/): one partition per shard of the "
        "memory's rows (data/bm25.parts/), then one commit.",
        partitions=Partitions(pipeline.index_partitions, pipeline.build_bm25_partition, pipeline.commit_bm25_index),
    ),
    Step(
        "augmented_video_dataset",
        pipeline.augment_videos,
        "augment",
        ("bm25_index", "video_corpus"),
        ("retrieval.k", "retrieval.search_threads", "retrieval.augment_partitions"),
        (Out("data/augmented.lance"), Out("data/augmented.parts")),
        "retrieval",
        ("lance",),
        "Retrieval-augmented video dataset (data/augmented.lance): per training clip, the top-k memory documents "
        "of its caption, with scores, ranks and provenance; ranges of clips written as Lance fragments, committed "
        "as one version.",
        partitions=Partitions(pipeline.augment_partitions, pipeline.augment_partition, pipeline.commit_augmented),
        reads=("data/memory.lance",),
        suite=Suite(
            "retrieval",
            "retrieval_quality",
            "Retrieval-quality gate (GE): one row per clip, k hits or a "
            "flag, scores non-increasing, no dangling ids, coverage and recall@k above params.yaml's "
            "thresholds.",
            ("retrieval.min_coverage", "retrieval.min_recall_at_k"),
            metrics="reports/retrieval.json",
        ),
    ),
    Step(
        "image_encoder",
        pipeline.align_image_encoder,
        "train align",
        ("image_text_memory",),
        ("seed", "model", "align"),
        (Out("models/encoder"),),
        "models",
        ("pytorch", "mlflow"),
        "Image encoder aligned contrastively to all-MiniLM-L6-v2 on the memory (models/encoder/); MLflow "
        "experiment vimi-align.",
    ),
    Step(
        "stage1_model",
        pipeline.train_stage1,
        "train stage1 --metrics reports/stage1.json",
        ("augmented_video_dataset", "image_encoder"),
        ("seed", "model", "diffusion", "stage1", "world.num_frames", "world.frame_size", "world.fps"),
        (
            Out("models/stage1"),
            Out("reports/stage1.json", cache=False, metrics=True, report=figures(*TRAINING_FIGURES)),
        ),
        "models",
        ("pytorch", "mlflow"),
        "Stage 1: the video denoiser pretrained on the retrieval-augmented dataset, conditioned by the multimodal "
        "encoder (models/stage1/, a ViMiPipeline directory); MLflow experiment vimi-stage1.",
        reads=("data/videos.lance", "data/memory.lance"),
    ),
    Step(
        "instruction_dataset",
        pipeline.build_instruction_dataset,
        "instructions build",
        ("augmented_video_dataset", "eval_video_corpus", "image_text_memory"),
        ("seed", "instructions", "world.num_frames"),
        (Out("data/instructions.lance"),),
        "instructions",
        ("lance",),
        "Stage-2 instruction dataset (data/instructions.lance): subject-driven (reference images of the subject "
        "from the memory), video prediction (first frames given), text-to-video; training rows from the training "
        "clips, evaluation rows (unseen subjects included) from the evaluation split.",
        reads=("data/videos.lance",),
        suite=Suite(
            "instructions",
            "instructions_suite",
            "GE: one <image> per image source, given frames only for "
            "video prediction, subject references from the memory (never the target clip), no dangling "
            "ids, no unseen subject in training rows.",
            ("validate.min_rows",),
        ),
    ),
    Step(
        "stage2_model",
        pipeline.train_stage2,
        "train stage2 --metrics reports/stage2.json",
        ("stage1_model", "instruction_dataset"),
        (
            "seed",
            "stage2",
            "diffusion.loss_weighting",
            "diffusion.snr_gamma",
            "registry.model_name",
            "registry.smoke_frames",
        ),
        (Out("models/stage2"), Out("reports/stage2.json", cache=False, metrics=True, report=stage2_figures)),
        "models",
        ("pytorch", "mlflow"),
        "Stage 2: the stage-1 pipeline instruction-tuned on the three tasks (models/stage2/); MLflow experiment "
        "vimi-stage2; registered as a new version of vimi-video-generator with alias @candidate.",
    ),
    Step(
        "feature_network",
        pipeline.train_feature_network,
        "train featurenet",
        ("video_corpus", "eval_video_corpus"),
        ("seed", "featurenet", "world.num_frames", "world.frame_size", "data.video_sources"),
        (Out("models/featurenet"),),
        "evaluation",
        ("pytorch", "mlflow"),
        "SpriteWorld's feature network (models/featurenet/): a video classifier of the action and the subject's "
        "attributes, the eye of FVD_syn, IS_syn and motion accuracy.",
    ),
    Step(
        "spriteworld_metrics",
        pipeline.evaluate_model,
        "evaluate --benchmark spriteworld --model @candidate --metrics reports/metrics.json",
        ("stage2_model", "feature_network", "instruction_dataset"),
        ("seed", "evaluate", "world.sprite_scale", "data.video_sources", "registry.model_name"),
        (Out("reports/metrics.json", cache=False, metrics=True),),
        "evaluation",
        ("mlflow",),
        "SpriteWorld grounding metrics of the newest @candidate on the evaluation split (reports/metrics.json, "
        "MLflow vimi-eval, tags on the registered version).",
        kwargs={"benchmark": "spriteworld"},
        reads=("data/eval_videos.lance",),
    ),
    Step(
        "ucf101_metrics",
        pipeline.evaluate_model,
        "evaluate --benchmark ucf101 --model @candidate --metrics reports/ucf101.json",
        ("stage2_model",),
        ("seed", "evaluate.ucf101", "diffusion.inference_steps", "registry.model_name"),
        (Out("reports/ucf101.json", cache=False, metrics=True),),
        "evaluation",
        ("mlflow",),
        "Zero-shot UCF101 FVD (I3D) and IS (C3D, when its weights are configured) of the newest @candidate, on "
        "the official split lists; params.yaml evaluate.ucf101 says where UCF101 is (not shipped: without it this "
        "step records that nothing was evaluated).",
        kwargs={"benchmark": "ucf101"},
    ),
    Step(
        "champion_model",
        pipeline.promote_model,
        "promote --report reports/promotion.json",
        ("spriteworld_metrics", "ucf101_metrics"),
        # the user's clips: fvd_ucf101 when UCF101 is configured, else the checks
        (
            "registry.model_name",
            "registry.promotion_metric",
            "registry.promotion_margin",
            "data.video_sources",
            "evaluate.ucf101.root",
        ),
        (Out("reports/promotion.json", cache=False, report=dict),),
        "models",
        ("mlflow",),
        "The registry's @champion: the promotion policy applied to the newest @candidate (`vimi promote`); the "
        "decision and its reason are tagged on the version.",
        reads=("reports/stage2.json",),
    ),
    Step(
        "report",
        pipeline.build_run_report,
        "report",
        ("champion_model", "augmented_video_dataset", "feature_network"),
        (),
        (Out("reports/index.html", cache=False),),
        "evaluation",
        ("html",),
        "The run report (reports/index.html, self-contained): retrieved examples, sample videos of each task, loss "
        "curves, metrics, the registry and the ablation; logged to the stage-2 MLflow run.",
        reads=("models/stage1", "models/stage2"),
    ),
)

STEP = {step.name: step for step in STEPS}


def suite_step(suite: str) -> Step:
    """The step whose output the named suite gates."""
    return next(step for step in STEPS if step.suite and step.suite.name == suite)


# Loss curves for `dvc plots show`: the loss.csv each training ships in its model directory.
LOSS_PLOTS = (
    "models/encoder/loss.csv",
    "models/stage1/loss.csv",
    "models/stage2/loss.csv",
    "models/featurenet/loss.csv",
)


def upstream_closure(name: str) -> set[str]:
    """Every step above NAME."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for parent in STEP[todo.pop()].upstream:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def dvc_stages() -> dict[str, Any]:
    """dvc.yaml's content: one stage per step, its deps the upstream steps' outputs and what it reads."""
    stages: dict[str, Any] = {}
    for step in STEPS:
        deps: list[str] = []
        for parent in step.upstream:
            deps += [o.path for o in STEP[parent].all_outs if o.path not in deps]
        deps += [path for path in step.reads if path not in deps]
        params = list(step.all_params)
        if params:  # the values a step reads are the base's merged with the chosen profile's
            params += [key for key in ("profile", "profiles") if key not in params]
        stage: dict[str, Any] = {"cmd": step.dvc_command}
        if deps:
            stage["deps"] = deps
        if params:
            stage["params"] = params
        outs = [o.path if o.cache else {o.path: {"cache": False}} for o in step.all_outs if not o.metrics]
        metrics = [{o.path: {"cache": False}} for o in step.all_outs if o.metrics]
        if outs:
            stage["outs"] = outs
        if metrics:
            stage["metrics"] = metrics
        stages[step.name] = stage
    return stages


DVC_HEADER = """\
# Generated from the step map (vimi/steps.py) by `vimi dvc-yaml` (`make dvc.yaml`): edit the map, not this file.
# The same steps as the Dagster assets, by the same names, over the same params.yaml. Each cmd pins
# VIMI_DATA_DIR=data so outputs land where DVC tracks them. DVC runs in its own tool environment
# (.venv-dvc): `make repro`, or `dvc repro` with .venv/bin on PATH (the project venv links `dvc` in).
"""


def dvc_yaml() -> str:
    """The text of dvc.yaml."""
    import yaml

    body = {
        "stages": dvc_stages(),
        "plots": [{"loss": {"template": "linear", "x": "step", "y": {path: "loss" for path in LOSS_PLOTS}}}],
    }
    return DVC_HEADER + yaml.safe_dump(body, sort_keys=False, width=120)


GROUP_COLOURS = {
    "data": "#dbeafe",
    "retrieval": "#dcfce7",
    "models": "#fde68a",
    "instructions": "#fce7f3",
    "evaluation": "#e9d5ff",
}


def lineage_svg() -> str:
    """The lineage graph as an SVG picture (docs/lineage.svg): one box per step, in rows by depth, an
    arrow per upstream edge, coloured by Dagster group, each box naming its step and its command."""
    from xml.sax.saxutils import escape

    depth: dict[str, int] = {}
    for step in STEPS:  # the map lists every step after its upstream steps
        depth[step.name] = 1 + max((depth[u] for u in step.upstream), default=-1)
    rows: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    column: dict[str, float] = {}
    for step in STEPS:
        rows[depth[step.name]].append(step.name)
    for row in rows:  # parents' mean column first: fewer crossings
        row.sort(key=lambda n: sum(column[u] for u in STEP[n].upstream) / max(1, len(STEP[n].upstream)))
        for i, name in enumerate(row):
            column[name] = i - (len(row) - 1) / 2
    box_w, box_h, gap_x, gap_y, lane = 240, 44, 24, 34, 70
    width = 3 * box_w + 2 * gap_x + 2 * lane
    centre = {n: (width / 2 + column[n] * (box_w + gap_x), gap_y + depth[n] * (box_h + gap_y)) for n in depth}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
        f'height="{gap_y + len(rows) * (box_h + gap_y):.0f}" font-family="sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    used = {-1: 0, 1: 0}  # edges that skip a row run down a lane beside the boxes, one lane each
    for step in STEPS:
        x2, y2 = centre[step.name]
        for parent in step.upstream:
            x1, y1 = centre[parent]
            y1 += box_h
            if depth[step.name] - depth[parent] == 1:
                mid = (y1 + y2) / 2
                d = f"M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} {x2:.0f},{y2:.0f}"
            else:
                side = (
                    -1
                    if column[parent] + column[step.name] < 0
                    or (column[parent] + column[step.name] == 0 and used[-1] <= used[1])
                    else 1
                )
                used[side] += 1
                x = width / 2 + side * (width / 2 - lane + 12 * used[side])
                xe = x2 + side * (box_w / 2 - 16 - 10 * used[side])  # into the box's top, from its side
                d = (
                    f"M{x1:.0f},{y1:.0f} C{x1:.0f},{y1 + gap_y / 2:.0f} {x:.0f},{y1:.0f} {x:.0f},{y1 + gap_y:.0f} "
                    f"L{x:.0f},{y2 - gap_y:.0f} C{x:.0f},{y2:.0f} {xe:.0f},{y2 - gap_y:.0f} {xe:.0f},{y2:.0f}"
                )
            parts.append(f'<path d="{d}" fill="none" stroke="#555" stroke-width="1.2" marker-end="url(#arrow)"/>')
    for step in STEPS:
        x, y = centre[step.name]
        command = step.plain_command
        parts.append(
            f"<g><title>{escape(step.description)}</title>"
            f'<rect x="{x - box_w / 2:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="6" '
            f'fill="{GROUP_COLOURS[step.group]}" stroke="#333"/>'
            f'<text x="{x:.0f}" y="{y + 18:.0f}" font-size="13" font-weight="bold" '
            f'text-anchor="middle">{escape(step.name)}</text>'
            f'<text x="{x:.0f}" y="{y + 35:.0f}" font-size="10" text-anchor="middle" '
            f'fill="#333">{escape(command)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
