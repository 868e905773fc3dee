"""What a trained pipeline draws, measured: training prompts (retrieved documents + caption, as stage 1
trained) and the evaluation split's subject instructions (reference image + caption), each at the
guidance scales given, by SpriteWorld's identity measure (seen / unseen subjects apart). Prints one
JSON line; writes <PROBE_PNG>_g<scale>.png (real | training prompt ; real | instruction), PROBE_PNG
(an environment variable) defaulting to /tmp/sample_identity.

    PROBE_PNG=/tmp/mine python benchmarks/probes/sample_identity.py MODEL_DIR [GUIDANCE ...]
"""

import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from probe_clips import subject_instructions, training_clips

from vimi.config import Settings
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.models.encoder import stage1_prompt
from vimi.models.pipeline import load_pipeline

torch.set_num_threads(2)
model_dir = sys.argv[1]
scales = [float(g) for g in sys.argv[2:]] or [3.0]
settings = Settings.load()
pipe = load_pipeline(model_dir, "cpu")
pipe.set_progress_bar_config(disable=True)
T, S = pipe.config.num_frames, pipe.config.frame_size
scale = float(settings.params["world"]["sprite_scale"])
steps = int(settings.params["diffusion"]["inference_steps"])
tb, train_targets = training_clips(settings, pipe, 48)
train_prompts = [stage1_prompt(tb.captions[i], tb.doc_images[i], tb.doc_captions[i]) for i in range(len(tb))]
eb, eval_targets, split = subject_instructions(settings, pipe)
keys = ("subject_there_rate", "color_pair_accuracy", "shape_accuracy", "identity_accuracy")
result = {"model": model_dir, "steps": steps}
for g in scales:
    t0 = time.time()
    out = {}
    for name, prompts, targets, real in (
        ("train", train_prompts, train_targets, tb.frames),
        ("eval", eb.prompts, eval_targets, eb.frames),
        ("eval_caption", [[c] for c in eb.captions], eval_targets, eb.frames),
    ):
        frames = []
        for first in range(0, len(prompts), 16):
            frames.append(
                pipe(
                    prompts[first : first + 16],
                    num_inference_steps=steps,
                    guidance_scale=g,
                    generator=torch.Generator().manual_seed(first),
                ).frames
            )
        frames = np.concatenate(frames)
        out[name] = (frames, real)
        m = summarize(
            score(measure_clips(frames, [t["scene"] for t in targets], sprite_scale=scale), targets),
            split if name != "train" else None,
        )
        if name == "train":
            result[f"g{g}_train"] = {k: round(m[k], 3) for k in keys}
        else:
            for s in ("seen", "unseen"):
                if f"subject_there_rate_{s}" in m:
                    result[f"g{g}_{name}_{s}"] = {k: round(m[f"{k}_{s}"], 3) for k in keys} | {"clips": split.count(s)}
    result[f"g{g}_seconds"] = round(time.time() - t0)
    grid = [
        np.concatenate([np.concatenate(list(out[n][1][i]), 1), np.concatenate(list(out[n][0][i]), 1)], 1)
        for n in ("train", "eval")
        for i in range(8)
    ]
    Image.fromarray(np.concatenate(grid)).resize((T * S * 2 * 4, 16 * S * 4), Image.NEAREST).save(
        f"{os.environ.get('PROBE_PNG', '/tmp/sample_identity')}_g{g}.png"
    )
print(json.dumps(result), flush=True)
