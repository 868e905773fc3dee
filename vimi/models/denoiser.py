"""The video denoiser, conditioned on the prompt by cross-attention: `FrameStackUNet` (the default) or
diffusers' WanTransformer3DModel (`model.denoiser.type: wan`).

Chosen by measurement on 2 cores (docs/training.md "How the recipe was chosen"): first by step time (8 clips ×
8 frames × 32×32, fp32: stock UNet3DConditionModel 4.5–16.9 s, LatteTransformer3DModel 1.04 s, Wan
0.42 s), then by what learns per second: asked to memorise 8 clips, Wan over 2×4×4 patches drew
patch-grid blocks where the frame-stacked UNet (0.40 s a step in bf16) drew the sprites' outlines.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from vimi.errors import VimiError

DENOISER_DEFAULTS: dict[str, Any] = {
    "layers": 6,
    "heads": 4,
    "head_dim": 32,
    "ffn_dim": 512,
    "patch_size": [2, 4, 4],
    "freq_dim": 64,
}


def denoiser_config(params: dict[str, Any], num_frames: int, frame_size: int, context_dim: int) -> dict[str, Any]:
    cfg = {**DENOISER_DEFAULTS, **(params or {})}
    pt, ph, pw = (int(v) for v in cfg["patch_size"])
    if num_frames % pt or frame_size % ph or frame_size % pw:
        raise VimiError(
            f"params.yaml model.denoiser.patch_size {cfg['patch_size']} must divide the clip "
            f"({num_frames} frames × {frame_size}×{frame_size})."
        )
    if int(cfg["layers"]) < 1 or int(cfg["heads"]) < 1 or int(cfg["head_dim"]) % 2:
        raise VimiError(f"params.yaml model.denoiser needs layers >= 1, heads >= 1 and an even head_dim, got {cfg}.")
    return dict(
        patch_size=(pt, ph, pw),
        num_attention_heads=int(cfg["heads"]),
        attention_head_dim=int(cfg["head_dim"]),
        in_channels=3,
        out_channels=3,
        text_dim=int(context_dim),
        freq_dim=int(cfg["freq_dim"]),
        ffn_dim=int(cfg["ffn_dim"]),
        num_layers=int(cfg["layers"]),
        rope_max_seq_len=max(64, num_frames, frame_size),
    )


class ContextCanvas(torch.nn.Module):
    """The prompt read at once into a guess of the whole clip: learned queries attend to the context
    (its zero rows are padding), an MLP decodes what they read into RGB frames of `size`×`size`, scaled up
    to the clip. Cross-attention at a UNet's low resolutions learns slowly to turn a handful of prompt
    tokens into a sprite's exact shape; an MLP from the same tokens to the pixels learns it in a few
    hundred steps. With `reference`, a reference image's pixels are read too, and every pixel of the
    guess may copy one of them (`_copy`)."""

    def __init__(
        self,
        context_dim: int,
        num_frames: int,
        frame_size: int,
        queries: int = 8,
        width: int = 128,
        hidden: int = 1024,
        size: int = 16,
        heads: int = 4,
        reference: bool = False,
        reference_dim: int = 16,
        stamp: bool = False,
    ):
        super().__init__()
        self.num_frames, self.frame_size, self.size = int(num_frames), int(frame_size), int(size)
        self.stamp = bool(stamp and reference)
        # A stamp needs no per-pixel keys: one mask channel of the reference is all it reads.
        self.reference_dim = (1 if self.stamp else int(reference_dim)) if reference else 0
        self.norm = torch.nn.LayerNorm(context_dim)
        self.proj = torch.nn.Linear(context_dim, width)
        self.queries = torch.nn.Parameter(torch.randn(queries, width) * 0.02)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(
            torch.nn.LayerNorm(queries * width),
            torch.nn.Linear(queries * width, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, self._channels(reference) * num_frames * size * size),
        )
        if reference:
            # The reference image as 2×2-patch tokens beside the prompt's, and as keys a clip pixel copies by.
            self.patches = torch.nn.Linear(3 * 4, width)
            self.patch_position = torch.nn.Parameter(torch.randn((size // 2) ** 2, width) * 0.02)
            self.no_reference = torch.nn.Parameter(torch.zeros(1, width))
            self.keys = torch.nn.Sequential(  # dilations 1, 2, 4: each key sees its pixel's neighbourhood
                torch.nn.Conv2d(6, 32, 3, padding=1),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, 32, 3, padding=2, dilation=2),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, 32, 3, padding=4, dilation=4),
                torch.nn.GELU(),
                torch.nn.Conv2d(32, self.reference_dim, 1),
            )
            self.key_scale = torch.nn.Parameter(torch.tensor(1.0))
            self.register_buffer("coords", _grid(size)[None], persistent=False)

    def _channels(self, reference: bool) -> int:
        """Per guessed pixel: RGB, and with a reference a gate and the copy's query (a stamp has none)."""
        if not reference:
            return 3
        return 4 if self.stamp else 4 + self.reference_dim

    def forward(self, context: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """`reference` (a canvas with `reference`): B×4×H×W, a reference image's RGB in [-1, 1] and a
        channel of ones where the prompt has one (zeros where not); None = no prompt has one."""
        b = context.shape[0]
        padding = context.abs().sum(-1) == 0
        padding[:, 0] = False  # an all-padding row would attend to nothing (NaN)
        keys = self.proj(self.norm(context))
        image = present = full = None
        if self.reference_dim:
            image, present, full = self._reference(reference, b, keys)
            patches = image.reshape(b, 3, self.size // 2, 2, self.size // 2, 2).permute(0, 2, 4, 1, 3, 5)
            tokens = self.patches(patches.reshape(b, -1, 12)) + self.patch_position.to(keys.dtype)
            tokens = torch.where(present[:, None, None], tokens, self.no_reference.to(keys.dtype).expand_as(tokens))
            keys = torch.cat([keys, tokens], 1)
            padding = torch.cat([padding, padding.new_zeros(b, tokens.shape[1])], 1)
        read = self.attn(
            self.queries.to(keys.dtype).expand(b, -1, -1), keys, keys, key_padding_mask=padding, need_weights=False
        )[0]
        out = self.mlp(read.flatten(1))
        if self.stamp:
            guess = self._stamp(out, full, present)
        else:
            guess = self._copy(out, image, present) if self.reference_dim else out
        guess = guess.reshape(b, 3 * self.num_frames, self.size, self.size)
        if self.size != self.frame_size:
            guess = torch.nn.functional.interpolate(guess, size=(self.frame_size,) * 2, mode="bilinear")
        return guess.reshape(b, 3, self.num_frames, self.frame_size, self.frame_size)

    def _reference(self, reference: torch.Tensor | None, b: int, like: torch.Tensor):
        """The reference at the canvas's size, whether each prompt has one, and the reference as given
        (a stamp samples it at its own, finer, resolution)."""
        if reference is None:
            empty = like.new_zeros(b, 3, self.size, self.size)
            return empty, torch.zeros(b, dtype=torch.bool, device=like.device), empty
        if reference.ndim != 4 or reference.shape[:2] != (b, 4):
            raise VimiError(f"A canvas reference is B×4×H×W for {b} prompts, got {tuple(reference.shape)}.")
        full = reference.to(like.dtype)
        reference = full
        if reference.shape[-1] != self.size or reference.shape[-2] != self.size:
            reference = torch.nn.functional.interpolate(reference, size=(self.size,) * 2, mode="area")
        return reference[:, :3], reference[:, 3].flatten(1).amax(1) > 0.5, full[:, :3]

    def _copy(self, out: torch.Tensor, image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Each clip pixel's own colour, or the reference pixel its query finds most like it (the single
        best one, its gradient through the soft weights), mixed by a gate that is 0 without a
        reference: a colour never seen in a training clip reaches the clip unchanged."""
        b, pixels = out.shape[0], self.num_frames * self.size * self.size
        out = out.reshape(b, 4 + self.reference_dim, pixels)
        keys = self.keys(_cues(image, self.coords.to(image.dtype)[0])).flatten(2)  # B×D×HW
        weights = torch.softmax(out[:, 4:].transpose(1, 2) @ keys * (self.key_scale / self.reference_dim**0.5), -1)
        hard = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
        weights = hard + weights - weights.detach()
        copied = (weights @ image.flatten(2).transpose(1, 2)).transpose(1, 2)  # B×3×pixels
        gate = torch.sigmoid(out[:, 3:4]) * present[:, None, None].to(out.dtype)
        return gate * copied + (1 - gate) * out[:, :3]

    def _stamp(self, out: torch.Tensor, image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The reference's subject pasted whole into each frame: a mask of the subject in the reference
        (learned, from its colours, place and `foreground`), and the gate of each frame (where the
        guess says the subject is) each reduced to a centre and a spread; every gated clip pixel
        samples the reference at the same place relative to the subject's centre, scaled by the
        spreads. The shape and pattern come as the reference holds them, placed where the caption
        moves the subject. Without a reference the gate is 0, as in `_copy`."""
        b, t, s = out.shape[0], self.num_frames, self.size
        out = out.reshape(b, 4, t, s, s)
        gate = torch.sigmoid(out[:, 3])  # B×T×S×S
        coords_r = _grid(image.shape[-1], image.dtype, image.device)  # 2×R×R
        grid_r = coords_r.permute(1, 2, 0)  # R×R×2, (x, y) as grid_sample reads it
        mask = torch.sigmoid(self.keys(_cues(image, coords_r)))  # B×1×R×R
        # The moments weigh each pixel by its value to the fourth: a gate or mask left at 0.3 over the
        # background (where nothing is pasted, nothing holds it at 0) would drag the centre and
        # widen the spread; at 0.9 on the subject it counts 80 times as much.
        centre_ref, spread_ref = _moments(mask.flatten(1)[:, None] ** 4, grid_r.reshape(-1, 2))  # B×1×2, B×1
        grid_s = self.coords.to(image.dtype)[0].permute(1, 2, 0).reshape(-1, 2)  # S²×2
        centre, spread = _moments(gate.flatten(2) ** 4, grid_s)  # B×T×2, B×T
        where = (
            centre_ref[:, :, None] + (grid_s[None, None] - centre[:, :, None]) * (spread_ref / spread)[..., None, None]
        )
        sampled = torch.nn.functional.grid_sample(
            torch.cat([image, mask], 1), where.reshape(b, t * s, s, 2), align_corners=True, padding_mode="zeros"
        ).reshape(b, 4, t, s, s)
        alpha = (gate * sampled[:, 3] * present[:, None, None, None].to(out.dtype))[:, None]
        return (alpha * sampled[:, :3] + (1 - alpha) * out[:, :3]).flatten(2)


def _grid(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """2×n×n: each pixel's (x, y) in [-1, 1], as grid_sample reads them."""
    line = torch.linspace(-1, 1, n, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([xx, yy])


def _cues(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """What a reference pixel's key (or mask) is read from: its colour, its place (`coords`, 2×H×W)
    and how far it stands out from the image's border (`foreground`)."""
    return torch.cat([image, coords[None].expand(image.shape[0], -1, -1, -1), foreground(image)], 1)


def _moments(weights: torch.Tensor, points: torch.Tensor, eps: float = 1e-4):
    """B×N×P weights over P points (P×2) → each row's weighted centre (B×N×2) and root-mean-square
    distance from it (B×N)."""
    total = weights.sum(-1, keepdim=True) + eps
    centre = weights @ points / total
    spread = (weights * ((points[None, None] - centre[:, :, None]) ** 2).sum(-1)).sum(-1) / total[..., 0]
    return centre, (spread + eps).sqrt()


def foreground(image: torch.Tensor) -> torch.Tensor:
    """B×3×H×W → B×1×H×W: each pixel's colour distance from the median of the image's border ring; a
    subject pictured on a plain ground stands out."""
    ring = torch.cat([image[..., 0, :], image[..., -1, :], image[..., 1:-1, 0], image[..., 1:-1, -1]], -1)
    return (image - ring.median(-1).values[..., None, None]).abs().sum(1, keepdim=True)


class FrameStackUNet(ModelMixin, ConfigMixin):
    """A 2-D conditional UNet that sees a whole clip at once, its frames stacked along the channels
    (as MCVD does for short clips): B×C×T×H×W in, the same shape out. Convolutions reproduce a sprite's
    edges and colours pixel for pixel where a transformer over 4×4 patches learned only blurred blocks;
    cross-attention to the prompt sits at the lower resolutions.

    With `canvas` (for x0 prediction), a ContextCanvas guesses the clean clip from the prompt alone;
    the guess is an input of the UNet, and the UNet's output (zero at the start) is a correction added
    to it: the prompt's pixels come by the short path, the UNet sharpens them from the noisy clip."""

    @register_to_config
    def __init__(
        self,
        num_frames: int = 8,
        frame_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        context_dim: int = 384,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        cross_attention: tuple[bool, ...] = (False, True, True),
        layers_per_block: int = 1,
        attention_heads: int = 4,
        norm_groups: int = 8,
        canvas: bool = False,
        canvas_queries: int = 8,
        canvas_width: int = 128,
        canvas_hidden: int = 1024,
        canvas_size: int = 16,
        canvas_reference: bool = False,
        canvas_reference_dim: int = 16,
        canvas_stamp: bool = False,
    ):
        super().__init__()
        from diffusers import UNet2DConditionModel

        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
        guess_channels = out_channels if canvas else 0  # the canvas's guess, after the sample's channels
        self.unet = UNet2DConditionModel(
            sample_size=frame_size,
            in_channels=(in_channels + guess_channels) * num_frames,
            out_channels=out_channels * num_frames,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=context_dim,
            attention_head_dim=attention_heads,
            norm_num_groups=norm_groups,
        )
        self.context_canvas = None
        if canvas:
            self.context_canvas = ContextCanvas(
                context_dim,
                num_frames,
                frame_size,
                canvas_queries,
                canvas_width,
                canvas_hidden,
                min(int(canvas_size), int(frame_size)),
                reference=bool(canvas_reference),
                reference_dim=int(canvas_reference_dim),
                stamp=bool(canvas_stamp),
            )
            torch.nn.init.zeros_(self.unet.conv_out.weight)  # at the start the prediction is the guess
            torch.nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        reference: torch.Tensor | None = None,
        return_dict: bool = False,
    ):
        b, c, t, h, w = sample.shape
        if t != self.config.num_frames:
            raise VimiError(f"This denoiser generates clips of {self.config.num_frames} frames, not {t}.")
        x = sample.reshape(b, c * t, h, w)
        guess = None
        if self.context_canvas is not None:
            guess = self.context_canvas(encoder_hidden_states, reference).to(sample.dtype)
            x = torch.cat([x, guess.reshape(b, -1, h, w)], dim=1)
        # The cross-attention skips the context's padding (its zero rows), as the canvas does: a clip's
        # prediction does not depend on how long the other prompts of its batch are (so 2 processes ×
        # batch 4 train what 1 × batch 8 does), nor does a prompt's on the unconditional one beside it.
        tokens = encoder_hidden_states.abs().sum(-1) != 0
        tokens[:, 0] = True  # an all-padding row attends to its first position rather than to nothing
        out = self.unet(
            x, timestep, encoder_hidden_states, encoder_attention_mask=tokens.to(x.dtype), return_dict=False
        )[0].reshape(b, -1, t, h, w)
        # The guess comes second, for a loss of its own on the clip (`stage1.canvas_loss`).
        return (out,) if guess is None else (out + guess.to(out.dtype), guess)

    def widen_input(self, extra: int) -> None:
        """Add `extra` zero-initialised input channels per frame (the model computes what it did before)."""
        t = self.config.num_frames
        old = self.unet.conv_in
        c_old = int(self.config.in_channels)
        guess = old.in_channels - c_old * t  # the canvas's guess comes last
        new = torch.nn.Conv2d(
            (c_old + extra) * t + guess,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            dtype=old.weight.dtype,
            device=old.weight.device,
        )
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : c_old * t] = old.weight[:, : c_old * t]  # channel index = c * T + t
            if guess:
                new.weight[:, -guess:] = old.weight[:, -guess:]
            new.bias.copy_(old.bias)
        self.unet.conv_in = new
        self.unet.register_to_config(in_channels=new.in_channels)
        self.register_to_config(in_channels=c_old + extra)


FRAME_STACK_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [64, 128, 128],
    "cross_attention": [False, True, True],
    "layers_per_block": 1,
    "attention_heads": 4,
    "norm_groups": 8,
    "canvas": False,
    "canvas_queries": 8,
    "canvas_width": 128,
    "canvas_hidden": 1024,
    "canvas_size": 16,
    "canvas_reference": False,
    "canvas_reference_dim": 16,
    "canvas_stamp": False,
}


def build_denoiser(params: dict[str, Any], num_frames: int, frame_size: int, context_dim: int):
    params = dict(params or {})
    kind = params.pop("type", "wan")
    if kind == "frame_stack_unet":
        cfg = {**FRAME_STACK_DEFAULTS, **params}
        levels = len(cfg["block_out_channels"])
        if len(cfg["cross_attention"]) != levels or frame_size % 2 ** (levels - 1):
            raise VimiError(
                f"params.yaml model.denoiser: cross_attention needs one entry per block_out_channels "
                f"entry, and the frame size ({frame_size}) must be divisible by {2 ** (levels - 1)} "
                f"({levels} blocks); got {cfg}."
            )
        if cfg["canvas_reference"] and (not cfg["canvas"] or min(int(cfg["canvas_size"]), frame_size) % 2):
            raise VimiError(
                f"params.yaml model.denoiser.canvas_reference copies into the canvas: it needs canvas: true "
                f"and an even canvas size, got {cfg}."
            )
        if cfg["canvas_stamp"] and not cfg["canvas_reference"]:
            raise VimiError(
                "params.yaml model.denoiser.canvas_stamp pastes the reference's subject: it needs canvas_reference: true."
            )
        return FrameStackUNet(
            num_frames=num_frames,
            frame_size=frame_size,
            context_dim=context_dim,
            block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
            cross_attention=tuple(bool(a) for a in cfg["cross_attention"]),
            layers_per_block=int(cfg["layers_per_block"]),
            attention_heads=int(cfg["attention_heads"]),
            norm_groups=int(cfg["norm_groups"]),
            canvas=bool(cfg["canvas"]),
            canvas_queries=int(cfg["canvas_queries"]),
            canvas_width=int(cfg["canvas_width"]),
            canvas_hidden=int(cfg["canvas_hidden"]),
            canvas_size=int(cfg["canvas_size"]),
            canvas_reference=bool(cfg["canvas_reference"]),
            canvas_reference_dim=int(cfg["canvas_reference_dim"]),
            canvas_stamp=bool(cfg["canvas_stamp"]),
        )
    if kind != "wan":
        raise VimiError(f"params.yaml model.denoiser.type must be wan or frame_stack_unet, got {kind!r}.")
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**denoiser_config(params, num_frames, frame_size, context_dim))


def build_stock_unet3d(frame_size: int, context_dim: int):
    """The baseline of `vimi bench train`: diffusers' UNet3DConditionModel at a similar size (2.85M),
    stock blocks (temporal attention at full resolution, as diffusers ships it)."""
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(
        sample_size=frame_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=context_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


# Video prediction conditions the denoiser on given frames by channel concatenation (as Wan's and
# SVD's image-to-video models do): the given frames (zero elsewhere) and a mask of which frames are given.
FRAME_CONDITION_CHANNELS = 4


def condition_channels(model) -> int:
    """Extra input channels of a denoiser that reads given frames (0 for a stage-1 denoiser). A model
    wrapped for multi-process training (DistributedDataParallel) is read through its module."""
    config = getattr(model, "module", model).config
    return int(config.in_channels) - int(config.out_channels)


def add_frame_conditioning(model) -> bool:
    """Widen the denoiser's patch embedding for frame conditioning, the new input channels
    zero-initialised so the model computes exactly what it did before. False if already there."""
    if condition_channels(model) == FRAME_CONDITION_CHANNELS:
        return False
    if condition_channels(model) != 0:
        raise VimiError(
            f"The denoiser has {model.config.in_channels} input channels; expected "
            f"{model.config.out_channels} or {model.config.out_channels + FRAME_CONDITION_CHANNELS}."
        )
    if isinstance(model, FrameStackUNet):
        model.widen_input(FRAME_CONDITION_CHANNELS)
        return True
    old = model.patch_embedding
    new = torch.nn.Conv3d(
        old.in_channels + FRAME_CONDITION_CHANNELS,
        old.out_channels,
        old.kernel_size,
        old.stride,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    model.patch_embedding = new
    model.register_to_config(in_channels=new.in_channels)
    return True


def frame_conditioning(frames, given: list[int]):
    """B×3×T×H×W frames in [-1, 1] and the number of leading frames given per clip → the
    B×4×T×H×W conditioning: the given frames (zero elsewhere) and the mask."""
    mask = torch.zeros(frames.shape[0], 1, *frames.shape[2:], dtype=frames.dtype, device=frames.device)
    for b, m in enumerate(given):
        mask[b, :, : int(m)] = 1
    return torch.cat([frames * mask, mask], dim=1)


def reads_reference(model) -> bool:
    """Whether the denoiser's canvas copies from a reference image's pixels (`canvas_reference`)."""
    return bool(getattr(getattr(model, "module", model).config, "canvas_reference", False))


def reference_size(model, frame_size: int) -> int:
    """The side at which the denoiser's canvas wants the reference image (`reference_pixels`): a stamp
    samples the subject at twice the canvas's resolution, a per-pixel copy at the clip's."""
    config = getattr(model, "module", model).config
    if getattr(config, "canvas_stamp", False):
        return 2 * min(int(config.canvas_size), int(frame_size))
    return int(frame_size)


def denoise(model, sample, timesteps, context, condition=None, reference=None, with_guess=False):
    """One call convention for both backbones: predicted noise (or v) for B×3×F×H×W samples.
    A frame-conditioned denoiser gets `condition` (frame_conditioning; none given = zeros), one whose
    canvas reads a reference image `reference` (B×4×H×W, `reference_pixels`); other denoisers see the
    reference only through the prompt's context. `with_guess`: (prediction, the canvas's guess of the
    clean clip), the guess None for a denoiser without a canvas."""
    extra = condition_channels(model)
    if extra:
        if condition is None:
            condition = sample.new_zeros(sample.shape[0], extra, *sample.shape[2:])
        sample = torch.cat([sample, condition.to(sample.dtype)], dim=1)
    elif condition is not None:
        raise VimiError(
            "This denoiser takes no given frames (a stage-1 model): video prediction needs a stage-2 model."
        )
    extra = {"reference": reference} if reads_reference(model) else {}
    out = model(sample, timesteps, encoder_hidden_states=context, return_dict=False, **extra)
    return (out[0], out[1] if len(out) > 1 else None) if with_guess else out[0]
