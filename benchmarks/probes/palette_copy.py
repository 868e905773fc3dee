"""Probe (imported for its effect): the canvas copies from the reference's palette (k-means colours of the 64×64 reference; each
colour's key = the mean key of its pixels) instead of from any one of its 16×16 pixels. Monkeypatches
ContextCanvas and the reference's size; no new weights. Train with
`python -c "import palette_copy; from vimi.pipeline import train_stage1; from vimi.config import Settings; train_stage1(Settings.load())"`
from this folder (VIMI_PARAMS as for any stage 1)."""

import torch

from vimi.models import denoiser as D
from vimi.models import pipeline as P
from vimi.train import stage1 as S1

K, HI = 8, 32
_orig_rp = P.reference_pixels


def reference_pixels(prompts, size):
    return _orig_rp(prompts, HI)


P.reference_pixels = reference_pixels
S1.reference_pixels = reference_pixels


def palette(image: torch.Tensor, k: int = K):
    """B×3×H×W → assignment B×HW (k-means on RGB, farthest-point start from the border colour)."""
    b = image.shape[0]
    x = image.flatten(2).transpose(1, 2).float()
    ring = torch.cat([image[..., 0, :], image[..., -1, :], image[..., 1:-1, 0], image[..., 1:-1, -1]], -1)
    centers = [ring.float().median(-1).values]
    for _ in range(k - 1):
        dist = torch.stack([((x - c[:, None]) ** 2).sum(-1) for c in centers], -1).amin(-1)
        centers.append(x[torch.arange(b), dist.argmax(1)])
    c = torch.stack(centers, 1)
    for _ in range(6):
        onehot = torch.nn.functional.one_hot(torch.cdist(x, c).argmin(-1), k).float()
        count = onehot.sum(1)[..., None]
        c = torch.where(count > 0, onehot.transpose(1, 2) @ x / count.clamp(min=1), c)
    return torch.cdist(x, c).argmin(-1)


_orig_reference = D.ContextCanvas._reference


def _reference(self, reference, b, like):
    self._hires = None if reference is None else reference[:, :3].to(like.dtype)
    return _orig_reference(self, reference, b, like)


def _copy(self, out, image, present):
    b, pixels = out.shape[0], self.num_frames * self.size * self.size
    out = out.reshape(b, 4 + self.reference_dim, pixels)
    hi = self._hires if self._hires is not None else image
    coords = torch.nn.functional.interpolate(self.coords.to(hi.dtype), size=hi.shape[-2:], mode="bilinear")
    cues = torch.cat([hi, coords.expand(b, -1, -1, -1), D.foreground(hi)], 1)
    keys = self.keys(cues).flatten(2)  # B×D×N
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(palette(hi), K).to(keys.dtype)  # B×N×k
    share = onehot.sum(1, keepdim=True).clamp(min=1)
    entry_keys = keys @ onehot / share  # B×D×k
    entry_colour = hi.flatten(2) @ onehot / share  # B×3×k
    weights = torch.softmax(out[:, 4:].transpose(1, 2) @ entry_keys * (self.key_scale / self.reference_dim**0.5), -1)
    hard = torch.nn.functional.one_hot(weights.argmax(-1), K).to(weights.dtype)
    weights = hard + weights - weights.detach()
    copied = (weights @ entry_colour.transpose(1, 2)).transpose(1, 2)
    gate = torch.sigmoid(out[:, 3:4]) * present[:, None, None].to(out.dtype)
    return gate * copied + (1 - gate) * out[:, :3]


D.ContextCanvas._reference = _reference
D.ContextCanvas._copy = _copy
