"""Can the real prompt context carry a sprite? A regression probe on the built tiny data (after
`make run`'s data steps and `vimi train align`, `vimi instructions build`): every training clip's
stage-1 prompt (its retrieved documents, then its caption; or the caption alone with `text`) goes once
through the frozen multimodal encoder; a context canvas (learned queries attend to the context, an MLP
decodes them into the whole clip) is trained by mean squared error to the clip. Then the evaluation
split's subject instructions (reference images from the memory + caption) and their captions alone are
decoded and measured by SpriteWorld's identity measure, seen and unseen subjects apart. Prints one JSON
line; writes /tmp/context_canvas_<mode>.png (real clips | with the reference | caption alone).

    [POOL=attn|norm|mean] [Q=8] [HEADS=4] [LR=1e-3] python benchmarks/probes/context_canvas.py [docs|text] STEPS BATCH

POOL: `attn` learned queries over the context as it is, `norm` the same after a LayerNorm (as the
denoiser's ContextCanvas), `mean` the mean of the context's rows into the MLP.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from vimi.config import Settings
from vimi.data.clips import InstructionClips
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.io import lance_io
from vimi.train.stage1 import Stage1Task

POOL = os.environ.get("POOL", "attn")
torch.manual_seed(0)
torch.set_num_threads(2)
mode, steps, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settings = Settings.load()
task = Stage1Task(
    settings.params,
    settings.path("augmented"),
    settings.path("videos"),
    settings.model_path("encoder"),
    text_only=mode == "text",
)
T, S = task.num_frames, task.frame_size
t0 = time.time()
n = len(task.dataset)


def encode(prompts, length=None):
    with torch.no_grad():
        h = task.encoder(prompts).hidden_states
    if length is not None:
        h = torch.nn.functional.pad(h, (0, 0, 0, length - h.shape[1]))
    return h


contexts, frames = [], []
for first in range(0, n, 64):
    b = task.dataset.__getitems__(list(range(first, min(n, first + 64))))
    contexts.append(encode(task.prompts(b)))
    frames.append(b.frames)
L = max(c.shape[1] for c in contexts)
ctx = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, L - c.shape[1])) for c in contexts])
x = torch.from_numpy(np.concatenate(frames)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
null = encode([[]])
print(f"{n} prompts encoded ({L} tokens) in {time.time() - t0:.0f}s", flush=True)
D = ctx.shape[-1]


class Canvas(torch.nn.Module):
    def __init__(self, queries=int(os.environ.get("Q", 8)), width=128, hidden=1024):
        super().__init__()
        self.inp = torch.nn.Linear(D, width)
        self.q = torch.nn.Parameter(torch.randn(queries, width) * 0.02)
        self.attn = torch.nn.MultiheadAttention(width, int(os.environ.get("HEADS", 4)), batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.LayerNorm(queries * width),
            torch.nn.Linear(queries * width, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, 3 * T * S * S),
        )

        self.norm = torch.nn.LayerNorm(D)
        self.mean_mlp = torch.nn.Sequential(
            torch.nn.Linear(D, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, 3 * T * S * S),
        )

    def forward(self, c):
        pad = c.abs().sum(-1) == 0
        if POOL == "mean":
            keep = (~pad).float()[..., None]
            pooled = (c * keep).sum(1) / keep.sum(1).clamp(min=1)
            return self.mean_mlp(pooled).reshape(-1, 3, T, S, S)
        kv = self.inp(self.norm(c) if POOL == "norm" else c)
        pooled = self.attn(self.q.expand(c.shape[0], -1, -1), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return self.mlp(pooled.flatten(1)).reshape(-1, 3, T, S, S)


net = Canvas()
lr = float(os.environ.get("LR", 1e-3))
opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr * min(1, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / steps))
    idx = torch.from_numpy(rng.integers(n, size=batch_size))
    c = ctx[idx].clone()
    drop = torch.rand(batch_size) < 0.1
    c[drop] = torch.nn.functional.pad(null, (0, 0, 0, L - null.shape[1]))
    loss = torch.nn.functional.mse_loss(net(c), x[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
train_s = time.time() - t0

clips = InstructionClips(settings.path("instructions"), "eval", T, S, task.vision.config.image_size)
subject_rows = [i for i, r in enumerate(clips.rows) if r["task"] == "subject"]
truth = (
    lance_io.open_dataset(settings.path("eval_videos"), "evaluation clips")
    .to_table(columns=["id", "scene", "color1", "color2", "shape", "pattern", "action", "subject_split"])
    .to_pylist()
)
truth = {r["id"]: r for r in truth}
batch = clips.__getitems__(subject_rows)
targets = [truth[clips.rows[i]["clip_id"]] for i in subject_rows]
scenes = [t["scene"] for t in targets]
split = [t["subject_split"] for t in targets]


def decoded(prompts):
    with torch.no_grad():
        z = net(
            torch.cat(
                [
                    encode([p], L if len(p) else None)
                    if len(p)
                    else torch.nn.functional.pad(null, (0, 0, 0, L - null.shape[1]))
                    for p in prompts
                ]
            )
        )
    return ((z.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


result = {
    "pool": POOL,
    "mode": mode,
    "steps": steps,
    "batch": batch_size,
    "train_s": round(train_s),
    "loss": round(loss.item(), 4),
}
shown = {}
for name, prompts in (("reference", batch.prompts), ("caption", [[c] for c in batch.captions])):
    out = decoded(prompts)
    shown[name] = out
    scale = float(settings.params["world"]["sprite_scale"])
    part = summarize(score(measure_clips(out, scenes, sprite_scale=scale), targets), split)
    for s in ("seen", "unseen"):
        result[f"{name}_{s}"] = {
            k: round(part[f"{k}_{s}"], 3)
            for k in ("subject_there_rate", "color_pair_accuracy", "shape_accuracy", "identity_accuracy")
        }
print(json.dumps(result), flush=True)
unseen = [i for i, v in enumerate(split) if v == "unseen"][:8]
rows = [
    np.concatenate(
        [np.concatenate(list(a[i]), axis=1) for a in (batch.frames, shown["reference"], shown["caption"])], axis=1
    )
    for i in unseen
]
Image.fromarray(np.concatenate(rows)).resize((T * S * 3 * 4, len(rows) * S * 4), Image.NEAREST).save(
    f"/tmp/context_canvas_{mode}.png"
)
