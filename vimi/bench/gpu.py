"""`vimi bench gpu`: what a lent GPU does with the stage-1 step, prepared to run on a bare machine in a
few minutes. No pipeline data is needed: the step is the real one (the frozen MiniLM and image
encoder over retrieval-augmented prompts, the profile's denoiser forward and backward in bf16,
AdamW), fed synthetic clips and prompts of the profile's shapes, since throughput does not depend on
what the pixels show. Figures: clips/s by batch size, FLOP/s counted by torch's FLOP counter against
the bf16 matmul peak measured in the same run and the device's data-sheet peak, peak memory, and
I3D clips/s for FVD."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from vimi.bench.train import _count_flops, matmul_peak
from vimi.config import Settings
from vimi.errors import VimiError

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), matched on the device name.
DATASHEET_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}

WORDS = (
    "a red blue green yellow striped dotted checkered star heart circle square triangle bounces slides "
    "rotates grows shrinks on the beach in space over the forest at night across the snow"
).split()


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise VimiError(
            "No CUDA device on this machine (torch.cuda.is_available() is False): `vimi bench gpu` measures a "
            "GPU; `vimi bench train` measures this machine."
        )


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16_PEAK.items() if key in name), None)


def _synthetic_prompts(rng: np.random.Generator, batch: int, docs: int, image_size: int) -> list[list]:
    """Stage-1 prompts of the real form: DOCS retrieved documents (image, caption), then the clip's caption."""
    from vimi.models.encoder import stage1_prompt

    def caption() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))

    prompts = []
    for _ in range(batch):
        images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(docs)]
        prompts.append(stage1_prompt(caption(), images, [caption() for _ in range(docs)]))
    return prompts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_gpu(
    settings: Settings,
    batch_sizes: tuple[int, ...] = (8, 32),
    steps: int = 20,
    i3d_batch: int = 8,
    device: str = "cuda",
    precision: str = "bf16",
) -> dict[str, Any]:
    """Stage-1 training steps of the settings' profile on DEVICE. `device`/`precision` other than
    cuda/bf16 exist so that the same code is tested on a CPU."""
    from diffusers import DDPMScheduler

    from vimi.evaluation.fvd import i3d_weights
    from vimi.evaluation.i3d import load_i3d
    from vimi.models.denoiser import build_denoiser
    from vimi.models.encoder import MultimodalEncoder, load_language_model
    from vimi.models.pipeline import to_model_frames
    from vimi.models.vision import ImageTokenizer
    from vimi.train.stage1 import diffusion_loss

    if device == "cuda":
        require_cuda()
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype != torch.float32 else nullcontext
    params = settings.params
    world, model_params = params["world"], params["model"]
    frames, size = int(world["num_frames"]), int(world["frame_size"])
    docs = int(params["stage1"].get("max_docs") or params["retrieval"]["k"])

    tokenizer, language_model = load_language_model()
    vision = ImageTokenizer(
        image_size=int(model_params["image_size"]),
        channels=tuple(model_params["image_channels"]),
        grid=int(model_params["image_grid"]),
    )
    for frozen in (language_model, vision):
        frozen.requires_grad_(False).eval().to(dev)
    encoder = MultimodalEncoder(
        tokenizer, language_model, vision, int(model_params["max_tokens"]), int(model_params["max_segment_tokens"])
    )
    torch.manual_seed(0)
    model = build_denoiser(model_params["denoiser"], frames, size, language_model.config.hidden_size).to(dev)
    diffusion = params["diffusion"]
    scheduler = DDPMScheduler(
        num_train_timesteps=int(diffusion["train_timesteps"]),
        beta_schedule=diffusion["beta_schedule"],
        prediction_type=diffusion["prediction_type"],
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    memory_image = int(world["image_size"])

    by_batch = []
    for batch in batch_sizes:
        prompts = _synthetic_prompts(rng, batch, docs, memory_image)
        clean = to_model_frames(rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8))
        generator = torch.Generator().manual_seed(0)

        def step():
            with torch.no_grad(), autocast():
                context = encoder(prompts).hidden_states
            with autocast():
                loss = diffusion_loss(model, scheduler, clean, context, generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(3):  # warm-up: allocator, cuDNN's algorithm search
            step()
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(dev)
        seconds = (time.perf_counter() - start) / steps
        flops = _count_flops(step)
        memory = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        by_batch.append(
            {
                "batch": batch,
                "step_seconds": round(seconds, 5),
                "clips_per_s": round(batch / seconds, 1),
                "gflop_per_step": round(flops / 1e9, 2),
                "achieved_tflops": round(flops / seconds / 1e12, 4),
                "peak_memory_gib": None if memory is None else round(memory, 3),
            }
        )

    measured_peak = matmul_peak(dtype, dev, n=8192 if dev.type == "cuda" else 1024)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    sheet = datasheet_peak(name) if dev.type == "cuda" else None
    for entry in by_batch:
        achieved = entry["achieved_tflops"] * 1e12
        entry["share_of_measured_matmul_peak"] = round(achieved / measured_peak, 4)
        entry["share_of_datasheet_peak"] = round(achieved / sheet, 4) if sheet else None

    # I3D, as FVD runs it (fp32, 16 frames of 224², a batch of clips).
    i3d = load_i3d(i3d_weights(settings.model_path("i3d")), device=device)
    clips = torch.from_numpy(rng.uniform(-1, 1, (i3d_batch, 3, 16, 224, 224)).astype(np.float32)).to(dev)

    def features():
        with torch.inference_mode():
            i3d(clips)
        _sync(dev)

    features()
    start = time.perf_counter()
    repeats = 5 if dev.type == "cuda" else 1
    for _ in range(repeats):
        features()
    i3d_seconds = (time.perf_counter() - start) / repeats

    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "profile": settings.params.get("profile"),
        "precision": precision,
        "clip": {"frames": frames, "size": size, "documents_per_prompt": docs},
        "denoiser": {
            "name": type(model).__name__,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        },
        "timed_steps": steps,
        "by_batch": by_batch,
        "measured_matmul_peak_tflops": round(measured_peak / 1e12, 2),
        "datasheet_bf16_peak_tflops": round(sheet / 1e12) if sheet else None,
        "i3d": {"batch": i3d_batch, "precision": "fp32", "clips_per_s": round(i3d_batch / i3d_seconds, 2)},
    }
