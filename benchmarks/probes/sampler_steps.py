"""How the sampler and its step count change what a trained pipeline draws: the evaluation split's
subject instructions (reference image + caption), measured by SpriteWorld's identity measure, seen and
unseen subjects apart. Each CONFIG is `kind:steps` (kind: ddim, ddpm, dpm) or, with GUIDE=1,
`steps:scale` for reference guidance — the caption alone's prediction plus `scale` times the way the
reference image moves it (DDIM). Prints one JSON line per config: [subject there, colour pair, shape,
identity]; writes <PROBE_PNG>_<config>.png (real | generated, 8 rows).

    N=200 SEED=1 python benchmarks/probes/sampler_steps.py MODEL_DIR ddim:25,ddim:4,dpm:10
    GUIDE=1 python benchmarks/probes/sampler_steps.py MODEL_DIR 4:1,4:2
"""

import json
import os
import sys
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from probe_clips import subject_instructions

from vimi.config import Settings
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.models.denoiser import denoise
from vimi.models.pipeline import _pad, canvas_reference, load_pipeline, to_uint8_frames

torch.set_num_threads(2)
pipe = load_pipeline(sys.argv[1], "cpu")
pipe.set_progress_bar_config(disable=True)
configs = sys.argv[2].split(",")
guide = bool(os.environ.get("GUIDE"))
seed = int(os.environ.get("SEED", "1"))
settings = Settings.load()
sprite_scale = float(settings.params["world"]["sprite_scale"])
batch, targets, split = subject_instructions(settings, pipe, int(os.environ.get("N", "200")))
captions = [[c] for c in batch.captions]
T, S = pipe.config.num_frames, pipe.config.frame_size
schedulers = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm": DPMSolverMultistepScheduler}
base = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
keys = ("subject_there_rate", "color_pair_accuracy", "shape_accuracy", "identity_accuracy")


@torch.no_grad()
def guided(prompts, caption_prompts, steps, scale, generator):
    """DDIM from the caption alone's prediction towards the instruction's, `scale` times as far."""
    model = pipe.transformer
    full, alone = pipe.encode(prompts), pipe.encode(caption_prompts)
    length = max(full.shape[1], alone.shape[1])
    context = torch.cat([_pad(alone, length), _pad(full, length)])
    reference = canvas_reference(model, prompts, S)
    if reference is not None:
        reference = torch.cat([canvas_reference(model, caption_prompts, S), reference])
    x = torch.randn((len(prompts), 3, T, S, S), generator=generator)
    pipe.scheduler.set_timesteps(steps)
    for t in pipe.scheduler.timesteps:
        pred = denoise(model, torch.cat([x, x]), t.expand(2 * len(prompts)), context, None, reference).float()
        without, with_image = pred.chunk(2)
        x = pipe.scheduler.step(without + scale * (with_image - without), t, x, generator=generator).prev_sample
    return to_uint8_frames(x)


for config in configs:
    first, second = config.split(":")
    if not guide:
        pipe.scheduler = schedulers[first].from_config(base)
    t0, frames = time.time(), []
    for f in range(0, len(split), 16):
        generator = torch.Generator().manual_seed(f + 1000 * seed)
        if guide:
            frames.append(guided(batch.prompts[f : f + 16], captions[f : f + 16], int(first), float(second), generator))
        else:
            out = pipe(
                batch.prompts[f : f + 16], num_inference_steps=int(second), guidance_scale=1.0, generator=generator
            )
            frames.append(out.frames)
    frames = np.concatenate(frames)
    m = summarize(
        score(measure_clips(frames, [t["scene"] for t in targets], sprite_scale=sprite_scale), targets), split
    )
    result = {"config": config, "seed": seed} | {s: [round(m[f"{k}_{s}"], 3) for k in keys] for s in ("seen", "unseen")}
    result |= {"clips": {s: split.count(s) for s in ("seen", "unseen")}, "seconds": round(time.time() - t0)}
    rows = range(0, len(split), max(1, len(split) // 8))
    grid = [
        np.concatenate([np.concatenate(list(batch.frames[i]), 1), np.concatenate(list(frames[i]), 1)], 1) for i in rows
    ]
    Image.fromarray(np.concatenate(grid[:8])).resize((2 * T * S * 4, 8 * S * 4), Image.NEAREST).save(
        f"{os.environ.get('PROBE_PNG', '/tmp/sampler_steps')}_{config.replace(':', '_')}.png"
    )
    print(json.dumps(result), flush=True)
