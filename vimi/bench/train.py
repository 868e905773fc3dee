"""`vimi bench train` and `vimi bench sample`: training and sampling speed, with their baselines
measured in the same run (the matmul peak of the precision used, diffusers' stock UNet3D, the
loader against what a training step consumes)."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from vimi.config import Settings
from vimi.errors import VimiError


def _best(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an n×n matmul in this precision: the peak a training step is held against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run():
        (a @ b).sum().item()

    return 2 * n**3 / _best(run, repeats)


def _count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _train_step(model, optimizer, loss_fn: Callable[[], torch.Tensor], autocast) -> Callable[[], None]:
    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train(
    settings: Settings, steps: int = 5, baseline_steps: int = 2, loader_batches: int = 20
) -> dict[str, Any]:
    from contextlib import nullcontext

    from vimi.models.denoiser import build_stock_unet3d, denoise
    from vimi.models.pipeline import to_model_frames
    from vimi.train.loop import resolve_precision
    from vimi.train.stage1 import Stage1Task

    encoder_dir = settings.model_path("encoder")
    if not (encoder_dir / "vision" / "config.json").is_file():
        raise VimiError(f"No image encoder at {encoder_dir}: run `make run` (or vimi train align) first.")
    stage = settings.params.get("stage1", {})
    precision = resolve_precision(stage.get("mixed_precision", "auto"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else nullcontext
    task = Stage1Task(settings.params, settings.path("augmented"), settings.path("videos"), encoder_dir)
    task.to(device)
    batch_size = int(stage.get("batch_size", 8))
    batch = task.dataset.__getitems__(list(range(batch_size)))
    generator = torch.Generator().manual_seed(0)
    model = task.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    # The whole stage-1 step: prompts, frozen encoder, denoiser forward/backward, optimizer.
    full_step = _train_step(model, optimizer, lambda: task.loss(model, batch, generator), autocast)
    full_seconds = _best(full_step, steps)
    full_flops = _count_flops(full_step)

    # The denoiser alone on a fixed context: what the backbone choice decides.
    with torch.no_grad():
        context = task.encoder(task.prompts(batch)).hidden_states
    clean = to_model_frames(batch.frames).to(device)
    t = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)

    def denoiser_loss(net):
        return lambda: torch.nn.functional.mse_loss(denoise(net, clean, t, context).float(), clean)

    ours_step = _train_step(model, optimizer, denoiser_loss(model), autocast)
    ours_seconds = _best(ours_step, steps)
    ours_flops = _count_flops(ours_step)
    unet = build_stock_unet3d(task.frame_size, context.shape[-1]).to(device)
    unet_opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    unet_step = _train_step(unet, unet_opt, denoiser_loss(unet), autocast)
    unet_seconds = _best(unet_step, baseline_steps)

    # The loader, cold (a fresh dataset: no decoded image cached), batches the training would read.
    from vimi.data.clips import AugmentedClips

    fresh = AugmentedClips(
        settings.path("augmented"),
        settings.path("videos"),
        task.num_frames,
        task.frame_size,
        task.vision.config.image_size,
        max_docs=task.max_docs,
    )
    order = np.random.default_rng(0).permutation(len(fresh))
    loader_batches = min(loader_batches, len(fresh) // batch_size)
    start = time.perf_counter()
    for i in range(loader_batches):
        fresh.__getitems__(order[i * batch_size : (i + 1) * batch_size].tolist())
    loader_clips_per_s = loader_batches * batch_size / (time.perf_counter() - start)

    peak = matmul_peak(dtype, device)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    train_clips_per_s = batch_size / full_seconds
    return {
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "clip": {"batch": batch_size, "frames": task.num_frames, "size": task.frame_size},
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "train_step": {
            "seconds": round(full_seconds, 4),
            "clips_per_s": round(train_clips_per_s, 2),
            "gflop": round(full_flops / 1e9, 2),
            "achieved_gflops": round(full_flops / full_seconds / 1e9, 1),
            "share_of_peak": round(full_flops / full_seconds / peak, 3),
        },
        "denoiser": {
            "name": type(model).__name__,
            "params_m": round(params(model) / 1e6, 2),
            "seconds": round(ours_seconds, 4),
            "clips_per_s": round(batch_size / ours_seconds, 2),
            "gflop": round(ours_flops / 1e9, 2),
            "achieved_gflops": round(ours_flops / ours_seconds / 1e9, 1),
            "share_of_peak": round(ours_flops / ours_seconds / peak, 3),
        },
        "baseline_unet3d": {
            "name": type(unet).__name__,
            "params_m": round(params(unet) / 1e6, 2),
            "seconds": round(unet_seconds, 4),
            "clips_per_s": round(batch_size / unet_seconds, 2),
        },
        "ratio_denoiser_vs_unet3d": round(unet_seconds / ours_seconds, 2),
        "ratio_train_step_vs_unet3d_step": round((unet_seconds + full_seconds - ours_seconds) / full_seconds, 2),
        "loader": {
            "clips_per_s": round(loader_clips_per_s, 1),
            "ratio_vs_consumption": round(loader_clips_per_s / train_clips_per_s, 1),
        },
        "targets": {"share_of_peak": 0.40, "ratio_vs_unet3d": 4.0, "loader_ratio": 10.0},
    }


def bench_sample(settings: Settings, batch_sizes: tuple[int, ...] = (1, 8, 16), steps: int = 25) -> dict[str, Any]:
    """Seconds per clip for `steps` DDIM steps with classifier-free guidance, by batch size."""
    from vimi.models.pipeline import load_pipeline

    path = settings.model_path("stage1")
    pipe = load_pipeline(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe.to(device)
    prompt = "a clip of a subject moving on the beach"
    results = []
    for b in batch_sizes:
        run = lambda: pipe([prompt] * b, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))  # noqa: E731
        seconds = _best(run, 1)
        results.append({"batch": b, "seconds": round(seconds, 3), "seconds_per_clip": round(seconds / b, 4)})
    best = min(r["seconds_per_clip"] for r in results)
    return {
        "device": device,
        "pipeline": str(path),
        "steps": steps,
        "guidance_scale": pipe.config.guidance_scale,
        "clip": {"frames": pipe.config.num_frames, "size": pipe.config.frame_size},
        "threads": torch.get_num_threads(),
        "by_batch": results,
        "best_seconds_per_clip": best,
        "target_seconds_per_clip": 1.0,
    }
