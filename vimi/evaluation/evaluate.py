"""`vimi evaluate`: SpriteWorld's grounding metrics (`evaluate_spriteworld`, at the end) and zero-shot
UCF101 FVD (and IS with user-supplied C3D weights, `evaluate_ucf101`).

UCF101: N real clips are drawn from a split (seeded; undecodable and too-short videos skipped and counted);
for each, the model generates a clip from its class's prompt (the editable list in
`ucf101_classes.txt`), so the generated set has the real set's class distribution. FVD compares the
two sets with I3D (`vimi.evaluation.fvd`); IS scores the generated set with C3D. Results go to the
MLflow experiment `vimi-eval`, to `reports/metrics.json`, and onto the registered model version
(`vimi.metric.*` tags, which the promotion policy reads).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io.files import write_text
from vimi.locks import locked


def update_metrics_file(path: Path, benchmark: str, figures: dict[str, Any]) -> None:
    """reports/metrics.json holds one section per benchmark; a run replaces its own section only."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[benchmark] = figures
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def tag_model_metrics(settings: Settings, resolved: Any, metrics: dict[str, float]) -> bool:
    """Record metrics on the registered version the model came from (nothing for a run or a directory)."""
    if not (resolved.name and resolved.version):
        return False
    from vimi.registry import METRIC_PREFIX, client

    c = client(settings)
    for key, value in metrics.items():
        c.set_model_version_tag(resolved.name, resolved.version, f"{METRIC_PREFIX}{key}", f"{float(value):.6g}")
    return True


@locked("evaluate_ucf101")
def evaluate_ucf101(
    settings: Settings,
    model: str,
    ucf101_root: Path,
    num_videos: int = 2048,
    c3d: Path | None = None,
    split: str = "test",
    fold: int = 1,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    allow_fewer: bool = False,
    metrics_file: Path | None = None,
    prompts_file: Path | None = None,
) -> dict[str, Any]:
    import torch

    from vimi.evaluation.fvd import extract_features, feature_stats, frechet_distance, i3d_weights
    from vimi.evaluation.i3d import load_i3d
    from vimi.evaluation.ucf101 import UCF101, class_prompts
    from vimi.models.pipeline import load_pipeline
    from vimi.progress import progress
    from vimi.registry import resolve_model

    start = time.perf_counter()
    if num_videos < 2:
        raise VimiError(f"--num-videos must be at least 2 (a covariance needs two clips), got {num_videos}.")
    dataset = UCF101(ucf101_root, split=split, fold=fold)
    if len(dataset) < num_videos and not allow_fewer:
        raise VimiError(
            f"UCF101 {split}list0{fold} lists {len(dataset)} video(s), fewer than the {num_videos} "
            "asked for (--num-videos); pass --allow-fewer to use them all."
        )
    prompts_by_class = class_prompts(dataset.classes, prompts_file)
    resolved = resolve_model(settings, model)  # before the slow part: a bad MODEL fails fast
    device = "cuda" if torch.cuda.is_available() else "cpu"
    stream = dataset.iter_clips(num_frames=16, size=None, limit=num_videos, seed=seed, progress_desc="UCF101 clips")
    real = list(stream)
    if len(real) < num_videos and not allow_fewer:
        raise VimiError(
            f"Only {len(real)} of the {num_videos} UCF101 videos asked for could be read "
            f"(skipped: {dict(stream.skipped)}); pass --allow-fewer to use them."
        )
    if len(real) < 2:
        raise VimiError(
            f"FVD needs at least 2 readable UCF101 videos; got {len(real)} (skipped: {dict(stream.skipped)})."
        )

    pipe = load_pipeline(resolved.path, device)
    steps = int(steps or settings.params.get("diffusion", {}).get("inference_steps", 25))
    prompts = [prompts_by_class[c.label] for c in real]
    generated: list[np.ndarray] = []
    generator = torch.Generator().manual_seed(int(seed))
    for first in progress(range(0, len(prompts), batch_size), desc="generating", unit="batch"):
        out = pipe(prompts[first : first + batch_size], num_inference_steps=steps, generator=generator).frames
        generated.extend(out)

    i3d = load_i3d(i3d_weights(settings.model_path("i3d")), device=device)

    def extract(x):
        return i3d(x.to(device))

    real_features = extract_features((c.frames for c in real), extract, total=len(real), desc="I3D real")
    fake_features = extract_features(iter(generated), extract, total=len(generated), desc="I3D generated")
    metrics: dict[str, float] = {
        "fvd_ucf101": frechet_distance(*feature_stats(real_features), *feature_stats(fake_features))
    }
    if c3d is not None:
        from vimi.evaluation.c3d import c3d_inputs, load_c3d
        from vimi.evaluation.inception import classifier_probs, inception_score

        classifier = load_c3d(Path(c3d), device=device)
        probs = classifier_probs(
            classifier,
            generated,
            batch_size=batch_size,
            device=device,
            preprocess=c3d_inputs,
            total=len(generated),
            desc="C3D",
        )
        mean, std = inception_score(probs, splits=min(10, len(generated)))
        metrics.update(is_ucf101=mean, is_ucf101_std=std)

    result: dict[str, Any] = {
        "benchmark": "ucf101",
        "model": resolved.to_json() | {"tags": None},
        "split": split,
        "fold": fold,
        "videos": len(real),
        "skipped": dict(stream.skipped),
        "steps": steps,
        "seed": seed,
        "frames_generated": int(generated[0].shape[0]),
        "protocol": "fvd2048_16f (I3D logits, 16 frames, 224×224)",
        **metrics,
    }
    record_evaluation(
        settings,
        "ucf101",
        resolved,
        metrics,
        result,
        np.stack(generated[:8]),
        float(getattr(pipe.config, "fps", 8.0)),
        metrics_file,
        {
            "eval.num_videos": len(real),
            "eval.split": split,
            "eval.fold": fold,
            "eval.steps": steps,
            "eval.seed": seed,
            "eval.c3d": str(c3d) if c3d else "",
        },
        {"videos": len(real)},
    )
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def record_evaluation(
    settings: Settings,
    benchmark: str,
    resolved: Any,
    metrics: dict[str, float],
    result: dict[str, Any],
    samples: np.ndarray,
    fps: float,
    metrics_file: Path | None,
    params: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    """One evaluation's results, everywhere they are read: an MLflow run in vimi-eval (params, metrics,
    a sample GIF, the result), the benchmark's section of the metrics file, the model version's tags.
    Adds run_id, run_link and tagged_model_version to `result`."""
    import mlflow
    from vimi.models.pipeline import save_videos
    from vimi.tracking import experiment_id, log_params, run_tags, ui_link

    exp = experiment_id(settings, "vimi-eval")
    with mlflow.start_run(
        experiment_id=exp,
        run_name=f"{benchmark}-{resolved.name or 'model'}-{resolved.version or ''}",
        tags=run_tags(
            settings,
            {
                "vimi.benchmark": benchmark,
                "vimi.model": resolved.uri,
                "vimi.model_version": str(resolved.version or ""),
            },
        ),
    ) as run:
        log_params(settings.recorded_params)
        mlflow.log_params({"eval.model": resolved.uri, **params})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for path in save_videos(samples, Path(tmp) / "generated", fps=fps, formats=("gif",), grid=True):
                mlflow.log_artifact(str(path), "samples")
        mlflow.log_dict(result, "metrics.json")
        result["run_id"] = run.info.run_id
    result["run_link"] = ui_link(settings, "vimi-eval", result["run_id"])
    result["tagged_model_version"] = tag_model_metrics(settings, resolved, metrics)
    if metrics_file is not None:
        update_metrics_file(
            Path(metrics_file),
            benchmark,
            {k: round(float(v), 4) for k, v in metrics.items()}
            | extra
            | {"model": resolved.uri, "version": resolved.version},
        )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]))


PROMPT_MODES = ("instruction", "caption")


def _identity_metrics(
    fake: np.ndarray,
    real: np.ndarray,
    tasks: np.ndarray,
    split: np.ndarray,
    targets: list[dict[str, Any]],
    given_counts: list[int],
    sprite_scale: float = 1.0,
) -> tuple[dict[str, float], dict[str, list]]:
    """`vimi.evaluation.identity` on the generated clips and on the real ones (the `_real` ceiling), for
    the clips with SpriteWorld ground truth (those without are counted; none at all is an error);
    predicted frames only for video prediction. Also, per generated clip measured: its id, task, split
    and whether the subject is there, its colour pair and its identity are right (paired comparisons)."""
    from vimi.evaluation.identity import TRUTH_KEYS, evaluation_metrics, measure_clips, missing_truth, score

    keep = [i for i, t in enumerate(targets) if not missing_truth(t)]
    if not keep:
        raise VimiError(
            f"None of the {len(targets)} evaluation clips carries SpriteWorld ground truth "
            f"({', '.join(TRUTH_KEYS)}): the identity measure is SpriteWorld's."
        )
    scenes = [targets[i]["scene"] for i in keep]
    kept = [targets[i] for i in keep]
    out: dict[str, float] = {"identity_clips_without_truth": float(len(targets) - len(keep))}
    per_clip: dict[str, list] = {}
    for clips, suffix in ((fake, ""), (real, "_real")):
        frames = [np.ascontiguousarray(clips[i, given_counts[i] :] if given_counts[i] else clips[i]) for i in keep]
        right = score(measure_clips(frames, scenes, sprite_scale=sprite_scale), kept)
        out.update(evaluation_metrics(right, tasks[keep], split[keep], suffix))
        if not suffix:
            per_clip = {
                "clip_id": [t.get("id") for t in kept],
                "task": tasks[keep].tolist(),
                "split": split[keep].tolist(),
                **{k: right[k].tolist() for k in ("subject_there", "color_pair", "identity")},
            }
    return out, per_clip


def _reference_metrics(
    pairs: dict[int, tuple], targets: list[dict[str, Any]], sprite_scale: float = 1.0
) -> dict[str, float]:
    """Unseen subjects generated with their reference image and, from the same noise, without it."""
    from vimi.evaluation.identity import measure_clips, metric_name, missing_truth, score

    keys = [i for i in sorted(pairs) if not missing_truth(targets[i])]
    if not keys:
        return {}
    out: dict[str, float] = {}
    for slot, suffix in ((1, "with_reference"), (0, "without_reference")):
        right = score(
            measure_clips(
                [pairs[i][slot] for i in keys], [targets[i]["scene"] for i in keys], sprite_scale=sprite_scale
            ),
            [targets[i] for i in keys],
        )
        for attribute in ("subject_there", "color_pair", "identity"):
            out[f"{metric_name(attribute)}_unseen_{suffix}"] = float(right[attribute].mean())
    return out


def _grounding_gif(pairs: dict[int, tuple], real: np.ndarray, path: Path, fps: float, n: int = 4) -> Path:
    """A few unseen subjects, side by side: the reference image, the clip generated with it, without it,
    and the real clip."""
    from vimi.io.video import write_video
    from vimi.models.encoder import to_image_array

    rows = []
    for i in sorted(pairs)[:n]:
        clip, with_ref, image = pairs[i]
        t, h = clip.shape[:2]
        ref = np.zeros_like(clip) if image is None else np.repeat(to_image_array(np.asarray(image), h)[None], t, 0)
        rows.append(np.concatenate([ref, with_ref, clip, real[i]], axis=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(np.concatenate(rows, axis=1), path, fps=fps)


@locked("evaluate_spriteworld")
def evaluate_spriteworld(
    settings: Settings,
    model: str,
    videos_per_task: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    metrics_file: Path | None = None,
    prompt_mode: str = "instruction",
    with_per_clip: bool = False,
) -> dict[str, Any]:
    """SpriteWorld's grounding metrics on the evaluation split's instructions (docs/evaluation.md):
    FVD_syn and IS_syn (feature network), motion accuracy, PSNR/SSIM of predicted frames, and identity
    measured against the rasterizer (`vimi.evaluation.identity`): whether exactly one sprite is there,
    and its colour pair, colours, shape, pattern and identity tuple per task and seen/unseen subject,
    for the generated clips and, as their ceiling, the real ones (`_real`). Prediction clips are
    measured on their predicted frames only.

    Every model sees the same clips and seeds. A stage-1 model (no frame conditioning) gets the given
    frames of video prediction in its prompt only, as images; `prompt_mode="caption"` gives each clip's
    caption alone (the text-only baseline's input: it was never trained on images). `with_per_clip`: the
    result also holds, per generated clip, whether its subject, colour pair and identity are right
    (`per_clip`), for paired comparisons of models on the same clips."""
    import torch

    from vimi.data.clips import InstructionClips
    from vimi.evaluation.featurenet import IDENTITY_HEADS, classify, load_feature_network
    from vimi.evaluation.fvd import feature_stats, frechet_distance
    from vimi.evaluation.inception import inception_score
    from vimi.io import lance_io
    from vimi.models.pipeline import load_pipeline
    from vimi.progress import progress
    from vimi.registry import resolve_model

    if prompt_mode not in PROMPT_MODES:
        raise VimiError(f"prompt_mode must be one of {', '.join(PROMPT_MODES)}, not {prompt_mode!r}.")
    start = time.perf_counter()
    section = settings.params.get("evaluate", {})
    videos_per_task = int(videos_per_task or section.get("videos_per_task", 64))
    steps = int(steps or section.get("inference_steps") or 25)
    resolved = resolve_model(settings, model)
    net = load_feature_network(settings.model_path("featurenet"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(resolved.path, device)
    clips = InstructionClips(
        settings.path("instructions"),
        "eval",
        pipe.config.num_frames,
        pipe.config.frame_size,
        pipe.vision.config.image_size,
    )
    truth = (
        lance_io.open_dataset(settings.path("eval_videos"), "evaluation clips")
        .to_table(columns=["id", "action", "scene", *IDENTITY_HEADS, "subject_split"])
        .to_pylist()
    )
    truth = {r["id"]: r for r in truth}
    rng = np.random.default_rng(int(seed))
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(clips.rows):
        by_task.setdefault(row["task"], []).append(i)
    chosen = {t: sorted(rng.permutation(rows)[:videos_per_task].tolist()) for t, rows in sorted(by_task.items())}
    real, fake, tasks, targets, given_counts = [], [], [], [], []
    pairs: dict[int, tuple] = {}  # unseen subject clips: (without its reference image, with it, the image)
    generator = torch.Generator().manual_seed(int(seed))
    for task, rows in chosen.items():
        for first in progress(range(0, len(rows), batch_size), desc=f"generating {task}", unit="batch"):
            batch = clips.__getitems__(rows[first : first + batch_size])
            given = [batch.frames[i, :m] if m else None for i, m in enumerate(batch.context_frames)]
            conditioned = pipe.predicts_video and any(batch.context_frames)
            prompts = batch.prompts if prompt_mode == "instruction" else [[c] for c in batch.captions]
            noise = generator.get_state()  # DDIM draws its noise once, at the start: replayable
            out = pipe(
                prompts, context_frames=given if conditioned else None, num_inference_steps=steps, generator=generator
            ).frames
            first_target = len(targets)
            real.extend(batch.frames)
            fake.extend(out)
            tasks.extend(batch.tasks)
            given_counts.extend(batch.context_frames)
            targets.extend(truth[clips.rows[r]["clip_id"]] for r in rows[first : first + batch_size])
            unseen = [b for b in range(len(batch)) if targets[first_target + b]["subject_split"] == "unseen"]
            if task == "subject" and prompt_mode == "instruction" and unseen:
                # The same prompts without their reference images, from the same noise: what the image adds.
                without = pipe(
                    [[c] for c in batch.captions],
                    num_inference_steps=steps,
                    generator=torch.Generator().set_state(noise),
                ).frames
                for b in unseen:
                    image = next((x for x in batch.prompts[b] if not isinstance(x, str)), None)
                    pairs[first_target + b] = (without[b], out[b], image)
    real, fake, tasks = np.stack(real), np.stack(fake), np.array(tasks)
    real_features, real_probs = classify(net, real)
    fake_features, fake_probs = classify(net, fake)
    labels = net.config.labels

    def correct(probs: dict[str, np.ndarray], head: str) -> np.ndarray:
        index = {v: i for i, v in enumerate(labels[head])}
        want = np.array([index.get(t[head], -1) for t in targets])
        return probs[head].argmax(1) == want

    split = np.array([t["subject_split"] or "" for t in targets])
    metrics: dict[str, float] = {
        "fvd_syn": frechet_distance(*feature_stats(real_features), *feature_stats(fake_features)),
        "is_syn": inception_score(fake_probs["action"], splits=min(10, len(fake)))[0],
        "motion_accuracy": float(correct(fake_probs, "action").mean()),
        "motion_accuracy_real": float(correct(real_probs, "action").mean()),
    }
    for task in chosen:
        metrics[f"motion_accuracy_{task}"] = float(correct(fake_probs, "action")[tasks == task].mean())
    sprite_scale = float(settings.params.get("world", {}).get("sprite_scale", 1.0))
    identity, per_clip = _identity_metrics(fake, real, tasks, split, targets, given_counts, sprite_scale)
    metrics.update(identity)
    predicted = [i for i in range(len(tasks)) if tasks[i] == "prediction"]
    if predicted:
        metrics["prediction_psnr"] = float(
            np.mean([_psnr(fake[i, given_counts[i] :], real[i, given_counts[i] :]) for i in predicted])
        )
        metrics["prediction_ssim"] = float(
            np.mean([_ssim(fake[i, given_counts[i] :], real[i, given_counts[i] :]) for i in predicted])
        )
    result: dict[str, Any] = {
        "benchmark": "spriteworld",
        "model": resolved.to_json() | {"tags": None},
        "videos": {t: len(r) for t, r in chosen.items()},
        "steps": steps,
        "seed": seed,
        "prompt_mode": prompt_mode,
        "frame_conditioning": bool(pipe.predicts_video),
        **metrics,
    }
    order = [i for t in chosen for i in np.flatnonzero(tasks == t)[:3]]
    if pairs:
        reference = _reference_metrics(pairs, targets, sprite_scale)
        metrics.update(reference)
        result.update(reference)
        if metrics_file is not None:
            result["grounding_gif"] = str(
                _grounding_gif(
                    pairs, real, Path(metrics_file).parent / "grounding.gif", float(getattr(pipe.config, "fps", 8.0))
                )
            )
    samples = np.concatenate([real[order], fake[order]], axis=2)  # real above generated, 3 per task
    record_evaluation(
        settings,
        "spriteworld",
        resolved,
        metrics,
        result,
        samples,
        float(getattr(pipe.config, "fps", 8.0)),
        metrics_file,
        {
            "eval.videos_per_task": videos_per_task,
            "eval.steps": steps,
            "eval.seed": seed,
            "eval.prompt_mode": prompt_mode,
        },
        {"videos": int(len(tasks))},
    )
    if with_per_clip:
        result["per_clip"] = per_clip
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
