"""Which denoiser layout learns tiny's clips fastest? A stage-1 probe on the tiny world of params.yaml
(docs/training.md, "The denoiser's layout"): the clip's true attributes as 6 learned tokens (colour 1,
colour 2, shape, pattern, scene, action) instead of the encoder, x0 target, DDPM cosine schedule, AdamW
with warm-up and cosine decay; then 48 training prompts sampled (25 DDIM steps, guidance 3) and measured
by SpriteWorld's identity measure. Prints one JSON line; writes the samples beside real clips as
/tmp/probe_<layout>_<steps>_<batch>.png.

    python benchmarks/probes/denoiser_layout.py LAYOUT STEPS BATCH [LR]

LAYOUT: `stack` (tiny's FrameStackUNet layout: frames stacked along the channels), `frames` (a 2-D UNet
per frame, frames as the batch, the frame index as a class embedding), `frames_small` (the same at half
the width); a `+clip` suffix gives each frame's UNet the whole noisy clip as input channels too, a `+xy`
suffix two coordinate channels (`frames_small+clip+xy`).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image

from vimi.config import load_params
from vimi.evaluation.identity import measure_clips, score, summarize
from vimi.io.video import decode_video
from vimi.world.catalog import ACTIONS, COLORS, PATTERNS, SCENES, SHAPES
from vimi.world.generate import WorldConfig, clip_rows, plan_clips

torch.manual_seed(0)
torch.set_num_threads(2)
arch, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
xy = arch.endswith("+xy")  # coordinate channels (CoordConv): where a pixel is, for a network that must place things
arch = arch.removesuffix("+xy")
# +clip: each frame's UNet also sees the whole noisy clip (its frames stacked as input channels), the
# cheapest way for the per-frame layout to look across frames
whole = arch.endswith("+clip")
arch = arch.removesuffix("+clip")
extra = 2 if xy else 0
# +canvas: the context pooled by learned queries and decoded by an MLP into a whole-clip guess, handed to the
# UNet as input channels (+aux: that guess also trained on the clip directly)
# +res: the UNet (its output layer zero at the start) predicts a correction to that guess
res = arch.endswith("+res")
arch = arch.removesuffix("+res")
aux = arch.endswith("+aux")
arch = arch.removesuffix("+aux")
canvas = arch.endswith("+canvas")
arch = arch.removesuffix("+canvas")
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
# PROBE_REGRESS=1: train at the noisiest step only and sample in one step, i.e. plain regression from the
# tokens to the clip (tiny's clips are fixed by their caption): an upper bound on what the layout learns
regress = os.environ.get("PROBE_REGRESS") == "1"
params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
cfg = WorldConfig.from_params(params)
catalog = cfg.catalog()
t0 = time.time()
rows = list(clip_rows(cfg, plan_clips(cfg, catalog, "train"), "train"))
T, S = cfg.num_frames, cfg.frame_size
clips = np.stack([decode_video(r["video"], r["video_format"], T, S, S) for r in rows])  # N T H W 3
print(f"{len(rows)} clips in {time.time() - t0:.1f}s", flush=True)
vocab = {}
for group, names in (("c", COLORS), ("s", SHAPES), ("p", PATTERNS), ("sc", SCENES), ("a", ACTIONS)):
    for n in names:
        vocab[(group, n)] = len(vocab)


def tokens(r):
    return [
        vocab[("c", r["color1"])],
        vocab[("c", r["color2"])],
        vocab[("s", r["shape"])],
        vocab[("p", r["pattern"])],
        vocab[("sc", r["scene"])],
        vocab[("a", r["action"])],
    ]


tok = torch.tensor([tokens(r) for r in rows])
x = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)  # N 3 T H W
D = 128


class Cond(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(len(vocab) + 1, D)
        self.pos = torch.nn.Parameter(torch.randn(6, D) * 0.02)

    def forward(self, t):
        return self.emb(t) + self.pos


cond = Cond()


class Canvas(torch.nn.Module):
    def __init__(self, queries=8, hidden=1024):
        super().__init__()
        self.q = torch.nn.Parameter(torch.randn(queries, D) * 0.02)
        self.attn = torch.nn.MultiheadAttention(D, 4, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.LayerNorm(queries * D),
            torch.nn.Linear(queries * D, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, 3 * T * S * S),
        )

    def forward(self, ctx):
        pooled = self.attn(self.q.expand(ctx.shape[0], -1, -1), ctx, ctx, need_weights=False)[0]
        return self.mlp(pooled.flatten(1)).reshape(-1, 3, T, S, S)


canvas_net = Canvas() if canvas else None
if canvas:
    extra += 3 * T
if arch == "stack":
    unet = UNet2DConditionModel(
        sample_size=S,
        in_channels=3 * T + extra,
        out_channels=3 * T,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=D,
        attention_head_dim=4,
        norm_num_groups=8,
    )
else:
    width = (32, 64, 64) if arch == "frames_small" else (64, 128, 128)
    unet = UNet2DConditionModel(
        sample_size=S,
        in_channels=3 + extra + (3 * T if whole else 0),
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=width,
        layers_per_block=1,
        cross_attention_dim=D,
        attention_head_dim=4,
        norm_num_groups=8,
        num_class_embeds=T,
    )
if res:
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
print(arch, sum(p.numel() for p in unet.parameters()) / 1e6, "M", flush=True)


coords = torch.stack(torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij"))


def predict(xt, t, ctx, guess=None):
    b = xt.shape[0]
    if arch == "stack":
        inp = xt.reshape(b, 3 * T, S, S)
        if canvas:
            guess = canvas_net(ctx) if guess is None else guess
            inp = torch.cat([inp, guess.reshape(b, 3 * T, S, S)], 1)
        if xy:
            inp = torch.cat([inp, coords.expand(b, -1, -1, -1)], 1)
        out = unet(inp, t, ctx).sample.reshape(b, 3, T, S, S)
        return out + guess if res else out
    flat = xt.permute(0, 2, 1, 3, 4).reshape(b * T, 3, S, S)
    if xy:
        flat = torch.cat([flat, coords.expand(b * T, -1, -1, -1)], 1)
    if whole:
        clip = xt.reshape(b, 1, 3 * T, S, S).expand(b, T, -1, -1, -1).reshape(b * T, 3 * T, S, S)
        flat = torch.cat([flat, clip], 1)
    frame = torch.arange(T).repeat(b)
    out = unet(flat, t.repeat_interleave(T), ctx.repeat_interleave(T, 0), class_labels=frame).sample
    return out.reshape(b, T, 3, S, S).permute(0, 2, 1, 3, 4)


sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample")
extra_params = list(canvas_net.parameters()) if canvas else []
opt = torch.optim.AdamW([*unet.parameters(), *cond.parameters(), *extra_params], lr=lr, weight_decay=0.01)
warm = 50
lr_at = lambda s: lr * min(1, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1, s / steps)))  # noqa: E731
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr_at(step)
    idx = torch.from_numpy(rng.integers(len(x), size=batch))
    x0, tk = x[idx], tok[idx].clone()
    drop = torch.rand(batch) < 0.1
    tk[drop] = len(vocab)
    noise = torch.randn_like(x0)
    t = torch.full((batch,), 999) if regress else torch.randint(0, 1000, (batch,))
    xt = sched.add_noise(x0, noise, t)
    ctx = cond(tk)
    guess = canvas_net(ctx) if canvas else None
    loss = torch.nn.functional.mse_loss(predict(xt, t, ctx, guess), x0)
    if aux:
        loss = loss + torch.nn.functional.mse_loss(guess, x0)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*unet.parameters(), *cond.parameters(), *extra_params], 1.0)
    opt.step()
    if step % 50 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
train_s = time.time() - t0

# Sample 48 training prompts, 25 DDIM steps, guidance 3.
unet.eval()
ddim = DDIMScheduler(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="sample",
    timestep_spacing="trailing",
    clip_sample=True,
)
ddim.set_timesteps(1 if regress else 25)
pick = np.random.default_rng(1).choice(len(rows), 48, replace=False)
targets = [rows[i] for i in pick]
scenes = [r["scene"] for r in targets]


def to_uint8(z):
    return ((z.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()


result = {}
with torch.no_grad():
    ctx = cond(tok[pick])
    null = cond(torch.full_like(tok[pick], len(vocab)))
    if canvas:  # the guess alone, as a regression
        guessed = summarize(
            score(measure_clips(to_uint8(canvas_net(ctx)), scenes, sprite_scale=cfg.sprite_scale), targets)
        )
        result["canvas_subject_there"] = guessed["subject_there_rate"]
        result["canvas_identity"] = guessed["identity_accuracy"]
    for guidance in (3.0, 1.0):
        g = torch.Generator().manual_seed(0)
        z = torch.randn((48, 3, T, S, S), generator=g)
        for t in ddim.timesteps:
            tt = torch.full((48,), int(t))
            c = predict(z, tt, ctx)
            if guidance != 1.0:
                u = predict(z, tt, null)
                c = u + guidance * (c - u)
            pred = c
            z = ddim.step(pred, t, z).prev_sample
        measured = summarize(score(measure_clips(to_uint8(z), scenes, sprite_scale=cfg.sprite_scale), targets))
        if guidance == 3.0:
            samples = to_uint8(z)
            result.update(measured)
        else:
            result["g1_subject_there"] = measured["subject_there_rate"]
            result["g1_color_pair"] = measured["color_pair_accuracy"]
            result["g1_identity"] = measured["identity_accuracy"]
result.update(
    arch=arch
    + ("+canvas" if canvas else "")
    + ("+aux" if aux else "")
    + ("+res" if res else "")
    + ("+clip" if whole else "")
    + ("+xy" if xy else "")
    + (" regress" if regress else ""),
    steps=steps,
    batch=batch,
    lr=lr,
    train_s=round(train_s),
    final_loss=round(loss.item(), 4),
)
print(json.dumps(result), flush=True)
tag = f"{arch}{'_canvas' if canvas else ''}{'_aux' if aux else ''}{'_res' if res else ''}{'_clip' if whole else ''}{'_xy' if xy else ''}{'_regress' if regress else ''}_{steps}_{batch}"
np.save(f"/tmp/probe_{tag}.npy", samples)
grid = np.concatenate([np.concatenate(list(samples[i]), axis=1) for i in range(8)], axis=0)
real = np.concatenate([np.concatenate(list(clips[i]), axis=1) for i in pick[:8]], axis=0)
Image.fromarray(np.concatenate([real, grid], axis=1)).resize((T * S * 2 * 4, 8 * S * 4), Image.NEAREST).save(
    f"/tmp/probe_{tag}.png"
)
