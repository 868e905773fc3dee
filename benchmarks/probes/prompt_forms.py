"""Which prompt form lets a stage-1 model carry its subject, on training clips and on the evaluation
split's subject instructions: the sample and the context canvas's own guess (its output at the last
denoising step), each measured by SpriteWorld's identity measure. Prints one JSON line per form:
[subject there, colour pair, shape, identity]. Forms: the training prompt (documents, then the caption),
the same with the subject's name masked, one document image and the caption (named / masked); the
instruction, its reference image and the caption, the reference four times as "a photo of the subject".
With PALETTE=1, the canvas copies from the reference's palette (`palette_copy.py`, the same folder).

    python benchmarks/probes/prompt_forms.py MODEL_DIR [FORM,FORM,...]
"""

import json
import os
import sys
import time

if os.environ.get("PALETTE"):
    sys.path.insert(0, os.path.dirname(__file__))
    import palette_copy  # noqa: F401  (patches the canvas)
import numpy as np
import torch
from probe_clips import subject_instructions, training_clips

from vimi.config import Settings
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.models.encoder import stage1_prompt
from vimi.models.pipeline import load_pipeline, to_uint8_frames
from vimi.train.stage1 import without_name

torch.set_num_threads(2)
model_dir = sys.argv[1]
forms = sys.argv[2].split(",") if len(sys.argv) > 2 else None
s = Settings.load()
pipe = load_pipeline(model_dir, "cpu")
pipe.set_progress_bar_config(disable=True)
scale = float(s.params["world"]["sprite_scale"])
captured = {}
if pipe.transformer.context_canvas is not None:
    pipe.transformer.context_canvas.register_forward_hook(lambda m, a, o: captured.__setitem__("g", o.detach()))
tb, ttar = training_clips(s, pipe, 32)
eb, etar, split = subject_instructions(s, pipe)


def first_image(p):
    return next(x for x in p if not isinstance(x, str))


def nm(t, n):
    return without_name(t, n) if n else t


F = {
    "train_full": (
        lambda: [stage1_prompt(tb.captions[i], tb.doc_images[i], tb.doc_captions[i]) for i in range(32)],
        ttar,
        None,
    ),
    "train_full_noname": (
        lambda: [
            [
                x if not isinstance(x, str) else nm(x, tb.subject_names[i])
                for x in stage1_prompt(tb.captions[i], tb.doc_images[i], tb.doc_captions[i])
            ]
            for i in range(32)
        ],
        ttar,
        None,
    ),
    "train_1img_caption": (lambda: [[tb.doc_images[i][0], tb.captions[i]] for i in range(32)], ttar, None),
    "train_1img_noname": (
        lambda: [[tb.doc_images[i][0], nm(tb.captions[i], tb.subject_names[i])] for i in range(32)],
        ttar,
        None,
    ),
    "eval_instr": (lambda: eb.prompts, etar, split),
    "eval_1img_caption": (
        lambda: [[first_image(eb.prompts[i]), eb.captions[i]] for i in range(len(eb))],
        etar,
        split,
    ),
    "eval_4img_noname": (
        lambda: [
            sum([[first_image(eb.prompts[i]), "a photo of the subject"] for _ in range(4)], [])
            + [nm(eb.captions[i], eb.subject_names[i])]
            for i in range(len(eb))
        ],
        etar,
        split,
    ),
}
keys = ("subject_there_rate", "color_pair_accuracy", "shape_accuracy", "identity_accuracy")
for name, (mk, tar, sp) in F.items():
    if forms and name not in forms:
        continue
    t0 = time.time()
    prompts = mk()
    frames, guesses = [], []
    for a in range(0, len(prompts), 16):
        frames.append(
            pipe(
                prompts[a : a + 16],
                num_inference_steps=25,
                guidance_scale=1.0,
                generator=torch.Generator().manual_seed(a),
            ).frames
        )
        if "g" in captured:
            guesses.append(to_uint8_frames(captured["g"][-len(prompts[a : a + 16]) :].float()))
    out = {"form": name}
    for what, fr in (("sample", np.concatenate(frames)),) + ((("canvas", np.concatenate(guesses)),) if guesses else ()):
        m = summarize(score(measure_clips(fr, [t["scene"] for t in tar], sprite_scale=scale), tar), sp)
        if sp is None:
            out[what] = [round(m[k], 2) for k in keys]
        else:
            for x in ("seen", "unseen"):
                out[f"{what}_{x}"] = [round(m[f"{k}_{x}"], 2) for k in keys]
    out["s"] = round(time.time() - t0)
    print(json.dumps(out), flush=True)
