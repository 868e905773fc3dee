"""How fast can anything turn tiny's true attributes into the clip? A plain MLP (docs/training.md, "The
context canvas"): the clip's 6 attributes (colour 1, colour 2, shape, pattern, scene, action) as learned
embeddings, concatenated, two hidden layers, out the whole 8×16×16 clip; mean squared error, AdamW with
warm-up and cosine decay. Then 48 training prompts and every evaluation clip (seen subjects in new
combinations, unseen subjects) decoded and measured by SpriteWorld's identity measure. Prints two JSON
lines; writes /tmp/token_regression_<steps>_<batch>.png (real | decoded).

    python benchmarks/probes/token_regression.py STEPS BATCH
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vimi.config import load_params
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.io.video import decode_video
from vimi.world.catalog import ACTIONS, COLORS, PATTERNS, SCENES, SHAPES
from vimi.world.generate import WorldConfig, clip_rows, plan_clips

torch.manual_seed(0)
torch.set_num_threads(2)
steps, batch = int(sys.argv[1]), int(sys.argv[2])
cfg = WorldConfig.from_params(load_params(Path(__file__).resolve().parents[2] / "params.yaml"))
catalog = cfg.catalog()
T, S = cfg.num_frames, cfg.frame_size
vocab = {}
for group, names in (("c", COLORS), ("s", SHAPES), ("p", PATTERNS), ("sc", SCENES), ("a", ACTIONS)):
    for n in names:
        vocab[(group, n)] = len(vocab)


def tokens(rows):
    return torch.tensor(
        [
            [
                vocab[("c", r["color1"])],
                vocab[("c", r["color2"])],
                vocab[("s", r["shape"])],
                vocab[("p", r["pattern"])],
                vocab[("sc", r["scene"])],
                vocab[("a", r["action"])],
            ]
            for r in rows
        ]
    )


def to_uint8(z):
    return ((z.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


rows = list(clip_rows(cfg, plan_clips(cfg, catalog, "train"), "train"))
clips = np.stack([decode_video(r["video"], r["video_format"], T, S, S) for r in rows])
x = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
tok = tokens(rows)
net = torch.nn.Sequential(
    torch.nn.Embedding(len(vocab), 64),
    torch.nn.Flatten(),
    torch.nn.Linear(6 * 64, 1024),
    torch.nn.GELU(),
    torch.nn.Linear(1024, 1024),
    torch.nn.GELU(),
    torch.nn.Linear(1024, 3 * T * S * S),
)
lr = 1e-3
opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr * min(1, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / steps))
    idx = torch.from_numpy(rng.integers(len(x), size=batch))
    loss = torch.nn.functional.mse_loss(net(tok[idx]).reshape(-1, 3, T, S, S), x[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
train_s = time.time() - t0
pick = np.random.default_rng(1).choice(len(rows), 48, replace=False)
with torch.no_grad():
    samples = to_uint8(net(tok[pick]).reshape(-1, 3, T, S, S))
targets = [rows[i] for i in pick]
result = summarize(score(measure_clips(samples, [r["scene"] for r in targets], sprite_scale=cfg.sprite_scale), targets))
print(
    json.dumps(
        {
            "prompts": "train",
            "steps": steps,
            "batch": batch,
            "loss": round(loss.item(), 4),
            "train_s": round(train_s),
            **result,
        }
    )
)
erows = list(clip_rows(cfg, plan_clips(cfg, catalog, "eval"), "eval"))
with torch.no_grad():
    decoded = to_uint8(net(tokens(erows)).reshape(-1, 3, T, S, S))
measured = measure_clips(decoded, [r["scene"] for r in erows], sprite_scale=cfg.sprite_scale)
print(json.dumps({"prompts": "eval", **summarize(score(measured, erows), [r["subject_split"] for r in erows])}))
grid = np.concatenate([np.concatenate([*clips[i], *samples[k]], axis=1) for k, i in enumerate(pick[:8])], axis=0)
Image.fromarray(grid).resize((T * S * 2 * 4, 8 * S * 4), Image.NEAREST).save(
    f"/tmp/token_regression_{steps}_{batch}.png"
)
