"""Model commands: promotion, generation, evaluation, the report, the ablation, FVD between two sets."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from vimi.cli.common import (
    JsonOption,
    ProfileOption,
    _emit,
    _settings,
    _step_settings,
    app,
    err_console,
)


@app.command("promote")
def promote_cmd(
    version: Optional[str] = typer.Option(
        None, "--version", help="The version to consider (default: the one with alias @candidate)."
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the decision as JSON here."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Move the registry's @champion alias to the candidate if the promotion policy says so; tag the reason."""
    from vimi.pipeline import promote_model

    decision = promote_model(_step_settings("champion_model", profile), version)
    if report:
        from vimi.io.files import write_json
        from vimi.steps import STEP

        write_json(report, STEP["champion_model"].report(decision))
    verdict = "promoted to @champion" if decision["promoted"] else "not promoted"
    _emit(
        decision,
        as_json,
        f"{decision['name']} version {decision['candidate']}: {verdict}, because "
        f"{decision['reason']}. Champion: {decision['champion'] or 'none'}.",
        markup=False,
    )


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Option(..., "--prompt", help="Text, with one <image> placeholder per --image (in order)."),
    out: Path = typer.Option(..., "--out", help="The video to write: .mp4 or .gif (a JSON sidecar goes beside it)."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="models:/<name>@<alias>, models:/<name>/<version>, "
        "runs:/<id>/pipeline or a pipeline directory (default: "
        "models:/vimi-video-generator@champion).",
    ),
    image: Optional[List[Path]] = typer.Option(None, "--image", help="A reference image (repeat for several)."),
    video: Optional[Path] = typer.Option(
        None, "--video", help="Video prediction: the clip whose first frames are given."
    ),
    context_frames: Optional[int] = typer.Option(
        None,
        "--context-frames",
        help="How many first frames of --video are given (default: params.yaml instructions.context_frames).",
    ),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames to generate (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the sampler."),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", help="Classifier-free guidance scale (default: the model's)."
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="DDIM steps (default: params.yaml diffusion.inference_steps)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if there)."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Generate a video from a registered model (or a run, or a directory), grounded in images and/or given frames."""
    from vimi.generate import generate_video, sidecar_path
    from vimi.registry import CHAMPION, model_name

    settings = _settings(profile)
    meta = generate_video(
        settings,
        model or f"models:/{model_name(settings)}@{CHAMPION}",
        prompt,
        out,
        images=image or [],
        video=video,
        context_frames=context_frames,
        num_frames=frames,
        seed=seed,
        guidance_scale=guidance,
        steps=steps,
        device=device,
    )
    version = meta["model"].get("version")
    source = f"{meta['model']['name']} version {version}" if version else meta["model"]["uri"]
    _emit(
        meta,
        as_json,
        f"Wrote {meta['video']} ({meta['num_frames']} frames, {meta['width']}×{meta['height']}, "
        f"{meta['seconds']:.1f} s) from {source}; provenance in {sidecar_path(out)}",
        markup=False,
    )


class Benchmark(str, Enum):
    spriteworld = "spriteworld"
    ucf101 = "ucf101"


@app.command("evaluate")
def evaluate_cmd(
    benchmark: Benchmark = typer.Option(
        ...,
        "--benchmark",
        help="spriteworld (grounding metrics on the evaluation split, feature network) or ucf101 (zero-shot FVD/IS).",
    ),
    videos_per_task: Optional[int] = typer.Option(
        None,
        "--videos-per-task",
        help="spriteworld: generated clips per task (default: params.yaml evaluate.videos_per_task).",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="As for vimi generate; @ALIAS is the configured registered model's (default: @champion)."
    ),
    ucf101_root: Optional[Path] = typer.Option(
        None,
        "--ucf101-root",
        help="Folder holding UCF-101/ and "
        "ucfTrainTestlist/ (the official layout; default: params.yaml "
        "evaluate.ucf101.root).",
    ),
    num_videos: Optional[int] = typer.Option(
        None, "--num-videos", help="ucf101: real and generated clips (default: params.yaml, else the protocol's 2048)."
    ),
    c3d: Optional[Path] = typer.Option(
        None,
        "--c3d",
        help="C3D weights fine-tuned on UCF101 (.safetensors, or "
        ".pt/.pth loaded with weights_only): adds the Inception Score.",
    ),
    split: Optional[str] = typer.Option(None, "--split", help="UCF101 split list: train or test (default: test)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Official split 1, 2 or 3 (default: 1)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: params.yaml)."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of the clip sample and of the sampler (default: params.yaml's)."
    ),
    allow_fewer: Optional[bool] = typer.Option(
        None,
        "--allow-fewer",
        help="Evaluate on fewer clips than --num-videos when fewer can be read (default: refuse).",
    ),
    prompts: Optional[Path] = typer.Option(
        None,
        "--prompts",
        help="Class prompts (ClassName<TAB>prompt per line; default: vimi/evaluation/ucf101_classes.txt).",
    ),
    metrics: Optional[Path] = typer.Option(
        None,
        "--metrics",
        help="The metrics file (DVC) whose benchmark section "
        "this run replaces (default: reports/metrics.json for spriteworld, "
        "reports/ucf101.json for ucf101).",
    ),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Evaluate a model: SpriteWorld grounding metrics, or UCF101 zero-shot FVD (I3D) and IS (C3D); MLflow
    vimi-eval, the metrics file, and metric tags on the registered version."""
    from vimi.pipeline import evaluate_model
    from vimi.registry import CHAMPION

    settings = _step_settings(f"{benchmark.value}_metrics", profile)
    model = model or f"@{CHAMPION}"
    if benchmark == Benchmark.spriteworld:
        result = evaluate_model(
            settings, "spriteworld", model, metrics, videos_per_task=videos_per_task, steps=steps, seed=seed
        )
        if not result.get("applies", True):
            _emit(result, as_json, f"SpriteWorld not evaluated: {result['reason']}.", markup=False)
            return
        shown = {k: round(v, 3) for k, v in result.items() if isinstance(v, float)}
        _emit(
            result,
            as_json,
            f"SpriteWorld, {sum(result['videos'].values())} clips: {shown}; MLflow vimi-eval: {result['run_link']}",
            markup=False,
        )
        return
    local = {"root": ucf101_root, "c3d": c3d, "prompts": prompts}
    result = evaluate_model(
        settings,
        "ucf101",
        model,
        metrics,
        num_videos=num_videos,
        split=split,
        fold=fold,
        steps=steps,
        seed=seed,
        allow_fewer=allow_fewer,
        **{k: v.resolve() for k, v in local.items() if v is not None},
    )
    if not result["configured"]:
        _emit(result, as_json, f"UCF101 not evaluated: {result['reason']} (or pass --ucf101-root DIR).", markup=False)
        return
    figures = f"FVD {result['fvd_ucf101']:.1f}" + (
        f", IS {result['is_ucf101']:.2f} ± {result['is_ucf101_std']:.2f}" if "is_ucf101" in result else ""
    )
    _emit(
        result,
        as_json,
        f"UCF101 {result['split']} fold {result['fold']}, {result['videos']} clips: {figures} "
        f"(skipped {result['skipped'] or 'none'}); MLflow vimi-eval: {result['run_link']}",
        markup=False,
    )


@app.command("report")
def report_cmd(profile: Optional[str] = ProfileOption, as_json: bool = JsonOption) -> None:
    """The run report, reports/index.html (self-contained): datasets, retrieved examples, sample videos per task,
    loss curves, metrics, registry, ablation; logged to the stage-2 model's MLflow run."""
    from vimi.pipeline import build_run_report

    meta = build_run_report(_step_settings("report", profile))
    _emit(
        meta,
        as_json,
        f"Wrote {meta['path']} ({meta['bytes'] / 1024:.0f} KiB: {', '.join(meta['sections'])})"
        + (f"; MLflow: {meta['run_link']}" if meta.get("run_link") else ""),
        markup=False,
    )


@app.command("ablation")
def ablation_cmd(
    profile: Optional[str] = ProfileOption,
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of the world, the training and the evaluation (default: params.yaml's)."
    ),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Where the ablation's data and models go (default: ablation/<profile>/)."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start over: delete the work directory first (default: "
        "finished steps are kept, so a killed ablation picks up).",
    ),
    report: Optional[Path] = typer.Option(
        None, "--report", help="The table (default: reports/ablation.md; the full results go beside it as .json)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """The paper's ablation: text-only stage 1, retrieval-augmented stage 1 and stage 1 + stage 2, trained and
    evaluated on SpriteWorld with everything else equal → reports/ablation.md and an MLflow parent run
    (experiment vimi-ablation). The main pipeline's data, models and registry are not touched."""
    from vimi.ablation import run_ablation
    from vimi.config import Settings

    base = Settings.load(profile=profile)
    result = run_ablation(
        base,
        profile,
        seed,
        workdir,
        fresh,
        report,
        log=lambda line: err_console.print(line, markup=False, highlight=False),
    )
    _emit(
        result,
        as_json,
        f"Ablation, profile {result['profile']}, seed {result['seed']} → {result['report']}\n{result['table']}",
        markup=False,
    )


@app.command("fvd")
def fvd_cmd(
    a: str = typer.Argument(
        ...,
        help="A folder of videos (mp4, avi, gif, …) or a Lance video dataset (a path, "
        "or an object-store URI such as s3://bucket/eval_videos.lance).",
    ),
    b: str = typer.Argument(..., help="The other set, likewise."),
    num_videos: Optional[int] = typer.Option(
        None, "--num-videos", min=2, help="Clips from each set (the protocol: 2048); default: all."
    ),
    allow_fewer: bool = typer.Option(
        False, "--allow-fewer", help="Use all clips when a set has fewer than --num-videos (default: refuse)."
    ),
    save_features: Optional[Path] = typer.Option(
        None, "--save-features", help="Also save the I3D features (arrays a, b) to this .npz."
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Clips per I3D forward pass."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Fréchet Video Distance between two sets of videos: I3D (Kinetics-400) logits of 16 frames at 224×224."""
    from vimi.evaluation.fvd import fvd_between

    settings = _settings(profile)
    result = fvd_between(a, b, settings.model_path("i3d"), num_videos, allow_fewer, save_features, batch_size)
    skipped = {k: v for k, v in result["skipped"].items() if v}
    _emit(
        result,
        as_json,
        f"FVD {result['fvd']:.2f} between {result['a']} ({result['videos'][0]} clips) and "
        f"{result['b']} ({result['videos'][1]} clips)"
        + (f"; skipped {skipped}" if skipped else "")
        + f" [{result['seconds']:.0f} s on {result['device']}]",
        markup=False,
    )
