"""Can a canvas carry an unseen subject's look from a reference image's pixels? Caption context
(frozen MiniLM) + the reference image's pixels as tokens (2x2 patches + position), read by learned
queries, decoded by an MLP into the clip; trained by MSE on training clips (reference = the top
retrieved document's image), the subject's name replaced by "the subject" with probability MASK.
Evaluated on the evaluation split's subject instructions, with the reference and with none.
REF=slots adds a copy path: SLOTS learned queries attend over the reference's pixels (keys from a small
CNN) and take their RGB as it is; the MLP then draws every clip pixel as a mix of those colours and its
own guess, so a colour never seen in training can reach the clip unchanged. REF=copy lets every clip
pixel copy: the MLP gives each pixel a DQ-dimensional query and a gate, the pixel attends over the
reference's pixels (keys from a dilated CNN; FG=1 adds each pixel's distance from the border's median
colour as a cue) and mixes the colour it finds with its own guess. HARD=1 takes the single most
attended pixel (gradient through the soft weights).
Writes /tmp/ref_canvas_<REF>_<MASK>_<SLOTS>[h][f].png (reference | real | with reference | caption alone, unseen subjects).
    REF=pixels|slots|copy|none MASK=0.5 SLOTS=2 HARD=0|1 DQ=16 FG=0|1 THREADS=2 python ref_canvas.py STEPS BATCH"""

import json
import os
import re
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

REF = os.environ.get("REF", "pixels")
MASK = float(os.environ.get("MASK", 0.5))
P = int(os.environ.get("PATCH", 2))
K = int(os.environ.get("SLOTS", 2))
HARD = os.environ.get("HARD", "0") == "1"
DQ = int(os.environ.get("DQ", 16))
FG = os.environ.get("FG", "0") == "1"
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("THREADS", 2)))
steps, batch_size = int(sys.argv[1]), int(sys.argv[2])
settings = Settings.load()
task = Stage1Task(settings.params, settings.path("augmented"), settings.path("videos"), settings.model_path("encoder"))
T, S = task.num_frames, task.frame_size
vid = lance_io.open_dataset(settings.path("videos")).to_table(columns=["id", "subject_name"]).to_pylist()
name_of = {r["id"]: r["subject_name"] for r in vid}
n = len(task.dataset)


def encode(texts):
    with torch.no_grad():
        return task.encoder([[t] if t else [] for t in texts]).hidden_states


def ref_pixels(images):
    return (
        torch.from_numpy(np.stack([np.asarray(Image.fromarray(im).resize((S, S), Image.BILINEAR)) for im in images]))
        .float()
        .div(127.5)
        .sub(1)
    )


def pad(c, L):
    return torch.nn.functional.pad(c, (0, 0, 0, L - c.shape[1]))


t0 = time.time()
C, M, X, R = [], [], [], []
for first in range(0, n, 64):
    b = task.dataset.__getitems__(list(range(first, min(n, first + 64))))
    caps = b.captions
    masked = [
        re.sub(re.escape(name_of[c]), "the subject", cap) if name_of.get(c) else cap for c, cap in zip(b.clip_ids, caps)
    ]
    C.append(encode(caps))
    M.append(encode(masked))
    X.append(b.frames)
    R.append(ref_pixels([d[0] for d in b.doc_images]))
L = 48
ctx = torch.cat([pad(c, L) for c in C])
mctx = torch.cat([pad(c, L) for c in M])
ref = torch.cat(R)
x = torch.from_numpy(np.concatenate(X)).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
print(
    f"{n} encoded in {time.time() - t0:.0f}s; masked differ: {(ctx != mctx).any(-1).any(-1).float().mean():.2f}",
    flush=True,
)
D = ctx.shape[-1]


def foreground(img):
    """How far each pixel's colour is from the median of the image's border ring: a subject photographed
    on a plain ground stands out; B×1×H×W."""
    ring = torch.cat([img[..., 0, :], img[..., -1, :], img[..., 1:-1, 0], img[..., 1:-1, -1]], -1)
    return (img - ring.median(-1).values[..., None, None]).abs().sum(1, keepdim=True)


class Canvas(torch.nn.Module):
    def __init__(self, queries=8, width=128, hidden=1024):
        super().__init__()
        self.norm = torch.nn.LayerNorm(D)
        self.inp = torch.nn.Linear(D, width)
        self.pix = torch.nn.Linear(3 * P * P, width)
        self.pos = torch.nn.Parameter(torch.randn((S // P) ** 2, width) * 0.02)
        self.noref = torch.nn.Parameter(torch.zeros(1, width))
        self.q = torch.nn.Parameter(torch.randn(queries, width) * 0.02)
        self.attn = torch.nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.LayerNorm(queries * width),
            torch.nn.Linear(queries * width, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, (3 + {"slots": K + 1, "copy": 1 + DQ}.get(REF, 0)) * T * S * S),
        )
        if REF == "copy":
            self.keys = torch.nn.Sequential(
                torch.nn.Conv2d(6 if FG else 5, 32, 3, padding=1),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, 32, 3, padding=4, dilation=4),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, DQ, 1),
            )
            self.scale = torch.nn.Parameter(torch.tensor(1.0))
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
            self.register_buffer("xy", torch.stack([xx, yy])[None])
        if REF == "slots":
            self.keys = torch.nn.Sequential(
                torch.nn.Conv2d(5, 32, 3, padding=1),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, 32, 3, padding=1),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, width, 1),
            )
            self.slot_q = torch.nn.Parameter(torch.randn(K, width) * 0.02)
            self.slot_in = torch.nn.Linear(3, width)
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
            self.register_buffer("xy", torch.stack([xx, yy])[None])

    def forward(self, c, r, has_ref):
        pad_mask = c.abs().sum(-1) == 0
        kv = self.inp(self.norm(c))
        B = c.shape[0]
        if REF == "slots":
            img = r.permute(0, 3, 1, 2)
            keys = self.keys(torch.cat([img, self.xy.expand(B, -1, -1, -1)], 1)).flatten(2).transpose(1, 2)
            weights = torch.softmax(self.slot_q @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5, -1)  # B×K×HW
            if HARD:  # the one pixel each slot attends to most, its gradient through the soft weights
                hard = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
                weights = hard + weights - weights.detach()
            slots = weights @ img.flatten(2).transpose(1, 2)  # B×K×3: colours taken as they are
            slots = torch.where(has_ref[:, None, None], slots, torch.zeros_like(slots))
            st = self.slot_in(slots)
            st = torch.where(has_ref[:, None, None], st, self.noref.expand_as(st))
            kv = torch.cat([kv, st], 1)
            pad_mask = torch.cat([pad_mask, torch.zeros(B, K, dtype=torch.bool)], 1)
        if REF in ("pixels", "slots", "copy"):
            patches = r.reshape(B, S // P, P, S // P, P, 3).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, 3 * P * P)
            rt = self.pix(patches) + self.pos
            rt = torch.where(has_ref[:, None, None], rt, self.noref.expand_as(rt))
            kv = torch.cat([kv, rt], 1)
            pad_mask = torch.cat([pad_mask, torch.zeros(B, rt.shape[1], dtype=torch.bool)], 1)
        pooled = self.attn(self.q.expand(c.shape[0], -1, -1), kv, kv, key_padding_mask=pad_mask, need_weights=False)[0]
        out = self.mlp(pooled.flatten(1))
        if REF == "copy":  # every clip pixel asks which reference pixel it is and may take its colour
            out = out.reshape(B, 4 + DQ, T * S * S)
            img = r.permute(0, 3, 1, 2)
            cues = [img, self.xy.expand(B, -1, -1, -1)] + ([foreground(img)] if FG else [])
            keys = self.keys(torch.cat(cues, 1)).flatten(2)  # B×DQ×HW
            logits = out[:, 4:].transpose(1, 2) @ keys * (self.scale / DQ**0.5)  # B×TSS×HW
            weights = torch.softmax(logits, -1)
            if HARD:
                hard = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
                weights = hard + weights - weights.detach()
            copied = (weights @ img.flatten(2).transpose(1, 2)).transpose(1, 2)  # B×3×TSS
            gate = torch.sigmoid(out[:, 3:4]) * has_ref[:, None, None]
            return (gate * copied + (1 - gate) * out[:, :3]).reshape(B, 3, T, S, S)
        if REF != "slots":
            return out.reshape(-1, 3, T, S, S)
        out = out.reshape(B, 3 + K + 1, T, S, S)
        mix = torch.softmax(out[:, 3:], 1)  # per pixel: the K reference colours and the MLP's own
        return mix[:, K : K + 1] * out[:, :3] + torch.einsum("bktyx,bkc->bctyx", mix[:, :K], slots)


net = Canvas()
lr = 1e-3
opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr * min(1, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / steps))
    idx = torch.from_numpy(rng.integers(n, size=batch_size))
    use_m = torch.rand(batch_size) < MASK
    c = torch.where(use_m[:, None, None], mctx[idx], ctx[idx])
    has_ref = torch.rand(batch_size) >= 0.2
    loss = torch.nn.functional.mse_loss(net(c, ref[idx], has_ref), x[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 250 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
train_s = time.time() - t0
clips = InstructionClips(settings.path("instructions"), "eval", T, S, task.vision.config.image_size)
rows = [i for i, r in enumerate(clips.rows) if r["task"] == "subject"]
truth = {
    r["id"]: r
    for r in lance_io.open_dataset(settings.path("eval_videos"))
    .to_table(columns=["id", "scene", "color1", "color2", "shape", "pattern", "action", "subject_split"])
    .to_pylist()
}
batch = clips.__getitems__(rows)
targets = [truth[clips.rows[i]["clip_id"]] for i in rows]
scenes = [t["scene"] for t in targets]
split = [t["subject_split"] for t in targets]
refs = ref_pixels([next(it for it in p if not isinstance(it, str)) for p in batch.prompts])
ec = pad(encode(batch.captions), L)
result = {
    "ref": REF,
    "mask": MASK,
    "hard": HARD,
    "slots": K,
    "foreground": FG,
    "steps": steps,
    "batch": batch_size,
    "train_s": round(train_s),
    "loss": round(loss.item(), 4),
}
shown = {}
for name, has in (("reference", True), ("caption", False)):
    with torch.no_grad():
        z = net(ec, refs, torch.full((len(rows),), has))
    out = ((z.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
    shown[name] = out
    part = summarize(
        score(measure_clips(out, scenes, sprite_scale=float(settings.params["world"]["sprite_scale"])), targets), split
    )
    for s in ("seen", "unseen"):
        result[f"{name}_{s}"] = {
            k: round(part[f"{k}_{s}"], 3)
            for k in ("subject_there_rate", "color_pair_accuracy", "shape_accuracy", "identity_accuracy")
        }
print(json.dumps(result), flush=True)
unseen = [i for i, v in enumerate(split) if v == "unseen"][:8]
refimg = ((refs + 1) * 127.5).byte().numpy()
img = np.concatenate(
    [
        np.concatenate(
            [refimg[i]]
            + [np.concatenate(list(a[i]), axis=1) for a in (batch.frames, shown["reference"], shown["caption"])],
            axis=1,
        )
        for i in unseen
    ]
)
Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(
    f"/tmp/ref_canvas_{REF}_{MASK}_{K}{'h' if HARD else ''}{'f' if FG else ''}.png"
)
