"""Training commands: image-encoder alignment, stage 1, stage 2, the feature network."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vimi.cli.common import (
    JsonOption,
    ProfileOption,
    _emit,
    _step_settings,
    train_app,
)

ResumeOption = typer.Option(
    None,
    "--resume/--fresh",
    help="--resume: continue the unfinished run from its last "
    "checkpoint (error when there is none); --fresh: start over. Default: resume an "
    "unfinished run of the same configuration, else start over.",
)


def _check_launch() -> None:
    """A launch that would train in fewer processes than asked (`accelerate launch --cpu`) stops before
    anything loads."""
    from vimi.train.loop import check_launch

    check_launch()


def _resume_mode(resume: Optional[bool]) -> str:
    return "auto" if resume is None else ("always" if resume else "never")


def _training_summary(meta: dict[str, Any], what: str) -> str:
    precision = "fp32" if meta["mixed_precision"] == "no" else meta["mixed_precision"]
    lines = [
        f"{what}: {meta['steps']} steps, final loss {meta['final_loss']:.4f}, {meta['clips_per_s']:.1f} "
        f"samples/s ({precision} on {meta['device']}) → {meta['path']}"
    ]
    if meta.get("resumed_from"):
        lines.append(f"  resumed from {meta['resumed_from']}")
    for key in ("caption_top1", "caption_top5"):
        if key in meta:
            lines.append(f"  {key.replace('_', ' ')} {meta[key]:.3f} (chance {meta['chance_top1']:.3f})")
    if meta.get("sample_gif"):
        lines.append(f"  samples (real above generated): {meta['sample_gif']}")
    lines.append(f"  MLflow {meta['experiment']} run {meta['run_id']}: {meta['run_link']}")
    return "\n".join(lines)


def _write_metrics(path: Optional[Path], meta: dict[str, Any], step: str) -> None:
    """The step's figures file (the step map's report of its result), where --metrics asks."""
    if path:
        from vimi.io.files import write_json
        from vimi.steps import STEP

        write_json(path, STEP[step].report(meta))


@train_app.command("align")
def train_align(
    resume: Optional[bool] = ResumeOption, profile: Optional[str] = ProfileOption, as_json: bool = JsonOption
) -> None:
    """Align the image encoder to the language model on the memory (contrastive) → models/encoder/."""
    _check_launch()
    from vimi.pipeline import align_image_encoder

    meta = align_image_encoder(_step_settings("image_encoder", profile), _resume_mode(resume))
    if not meta.get("main_process", True):  # multi-process training: the main process reports
        return
    _emit(meta, as_json, _training_summary(meta, "Image encoder aligned"), markup=False)


@train_app.command("stage1")
def train_stage1_cmd(
    text_only: bool = typer.Option(
        False, "--text-only", help="The text-only baseline: the same encoder fed the clip's caption alone."
    ),
    resume: Optional[bool] = ResumeOption,
    metrics: Optional[Path] = typer.Option(
        None, "--metrics", help="Also write the final figures (loss, clips/s, MLflow run) as JSON here (DVC metrics)."
    ),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Stage 1: retrieval-augmented pretraining → models/stage1/ (MLflow experiment vimi-stage1)."""
    _check_launch()
    from vimi.pipeline import train_stage1

    meta = train_stage1(_step_settings("stage1_model", profile), text_only=text_only, resume=_resume_mode(resume))
    if not meta.get("main_process", True):  # multi-process training: the main process reports
        return
    _write_metrics(metrics, meta, "stage1_model")
    _emit(meta, as_json, _training_summary(meta, "Stage 1" + (" (text only)" if text_only else "")), markup=False)


@train_app.command("featurenet")
def train_featurenet_cmd(
    resume: Optional[bool] = ResumeOption, profile: Optional[str] = ProfileOption, as_json: bool = JsonOption
) -> None:
    """SpriteWorld's feature network (action and subject attributes) → models/featurenet/ (MLflow vimi-eval)."""
    _check_launch()
    from vimi.pipeline import train_feature_network

    meta = train_feature_network(_step_settings("feature_network", profile), _resume_mode(resume))
    if not meta.get("applies", True):
        _emit(meta, as_json, f"The feature network does not apply: {meta['reason']}.", markup=False)
        return
    human = _training_summary(meta, "Feature network")
    if meta.get("eval_accuracy"):
        acc = meta["eval_accuracy"]
        human += (
            f"\n  on the evaluation split: action {acc['action_accuracy']:.3f}, identity "
            f"{acc['identity_accuracy']:.3f} (seen {acc.get('identity_accuracy_seen', float('nan')):.3f}, "
            f"unseen {acc.get('identity_accuracy_unseen', float('nan')):.3f})"
        )
    _emit(meta, as_json, human, markup=False)


@train_app.command("stage2")
def train_stage2_cmd(
    init: Optional[str] = typer.Option(
        None,
        "--from",
        help="The stage-1 model to start from: a "
        "pipeline directory, runs:/<id>/pipeline or models:/<name>"
        "@<alias>|/<version> (default: params.yaml stage2.init).",
    ),
    resume: Optional[bool] = ResumeOption,
    register: bool = typer.Option(
        True,
        "--register/--no-register",
        help="Register the result as a new `candidate` version of the model (default) or not.",
    ),
    metrics: Optional[Path] = typer.Option(
        None, "--metrics", help="Also write the final figures (loss, clips/s, MLflow run, version) as JSON here."
    ),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Stage 2: multimodal instruction tuning (subject-driven, video prediction, text-to-video) → models/stage2/
    (MLflow experiment vimi-stage2), registered as a `candidate` version."""
    _check_launch()
    from vimi.pipeline import train_stage2

    meta = train_stage2(
        _step_settings("stage2_model", profile), init=init, resume=_resume_mode(resume), register=register
    )
    if not meta.get("main_process", True):  # multi-process training: the main process reports
        return
    _write_metrics(metrics, meta, "stage2_model")
    human = _training_summary(meta, "Stage 2") + f"\n  started from {meta['init_model']}"
    if meta.get("registered"):
        r = meta["registered"]
        human += f"\n  registered {r['uri']} @{r['alias']}; checks {r['checks']} ({r['checks_detail']})"
    _emit(meta, as_json, human, markup=False)
