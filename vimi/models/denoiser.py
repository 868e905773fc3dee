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
    "layers": 6, "heads": 4, "head_dim": 32, "ffn_dim": 512, "patch_size": [2, 4, 4], "freq_dim": 64,
}


def denoiser_config(params: dict[str, Any], num_frames: int, frame_size: int, context_dim: int) -> dict[str, Any]:
    cfg = {**DENOISER_DEFAULTS, **(params or {})}
    pt, ph, pw = (int(v) for v in cfg["patch_size"])
    if num_frames % pt or frame_size % ph or frame_size % pw:
        raise VimiError(f"params.yaml model.denoiser.patch_size {cfg['patch_size']} must divide the clip "
                        f"({num_frames} frames × {frame_size}×{frame_size}).")
    if int(cfg["layers"]) < 1 or int(cfg["heads"]) < 1 or int(cfg["head_dim"]) % 2:
        raise VimiError(f"params.yaml model.denoiser needs layers >= 1, heads >= 1 and an even head_dim, got {cfg}.")
    return dict(patch_size=(pt, ph, pw), num_attention_heads=int(cfg["heads"]),
                attention_head_dim=int(cfg["head_dim"]), in_channels=3, out_channels=3, text_dim=int(context_dim),
                freq_dim=int(cfg["freq_dim"]), ffn_dim=int(cfg["ffn_dim"]), num_layers=int(cfg["layers"]),
                rope_max_seq_len=max(64, num_frames, frame_size))


class FrameStackUNet(ModelMixin, ConfigMixin):
    """A 2-D conditional UNet that sees a whole clip at once, its frames stacked along the channels
    (as MCVD does for short clips): B×C×T×H×W in, the same shape out. Convolutions reproduce a sprite's
    edges and colours pixel for pixel where a transformer over 4×4 patches learned only blurred blocks;
    cross-attention to the prompt sits at the lower resolutions."""

    @register_to_config
    def __init__(self, num_frames: int = 8, frame_size: int = 32, in_channels: int = 3, out_channels: int = 3,
                 context_dim: int = 384, block_out_channels: tuple[int, ...] = (64, 128, 128),
                 cross_attention: tuple[bool, ...] = (False, True, True), layers_per_block: int = 1,
                 attention_heads: int = 4, norm_groups: int = 8):
        super().__init__()
        from diffusers import UNet2DConditionModel

        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
        self.unet = UNet2DConditionModel(
            sample_size=frame_size, in_channels=in_channels * num_frames, out_channels=out_channels * num_frames,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            cross_attention_dim=context_dim, attention_head_dim=attention_heads, norm_num_groups=norm_groups)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, return_dict: bool = False):
        b, c, t, h, w = sample.shape
        if t != self.config.num_frames:
            raise VimiError(f"This denoiser generates clips of {self.config.num_frames} frames, not {t}.")
        out = self.unet(sample.reshape(b, c * t, h, w), timestep, encoder_hidden_states, return_dict=False)[0]
        return (out.reshape(b, -1, t, h, w),)

    def widen_input(self, extra: int) -> None:
        """Add `extra` zero-initialised input channels per frame (the model computes what it did before)."""
        t = self.config.num_frames
        old = self.unet.conv_in
        c_old = old.in_channels // t
        new = torch.nn.Conv2d((c_old + extra) * t, old.out_channels, old.kernel_size, old.stride, old.padding,
                              dtype=old.weight.dtype, device=old.weight.device)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight   # channel index = c * T + t: old channels come first
            new.bias.copy_(old.bias)
        self.unet.conv_in = new
        self.unet.register_to_config(in_channels=new.in_channels)
        self.register_to_config(in_channels=c_old + extra)


FRAME_STACK_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [64, 128, 128], "cross_attention": [False, True, True], "layers_per_block": 1,
    "attention_heads": 4, "norm_groups": 8,
}


def build_denoiser(params: dict[str, Any], num_frames: int, frame_size: int, context_dim: int):
    params = dict(params or {})
    kind = params.pop("type", "wan")
    if kind == "frame_stack_unet":
        cfg = {**FRAME_STACK_DEFAULTS, **params}
        levels = len(cfg["block_out_channels"])
        if len(cfg["cross_attention"]) != levels or frame_size % 2 ** (levels - 1):
            raise VimiError(f"params.yaml model.denoiser: cross_attention needs one entry per block_out_channels "
                            f"entry, and the frame size ({frame_size}) must be divisible by {2 ** (levels - 1)} "
                            f"({levels} blocks); got {cfg}.")
        return FrameStackUNet(num_frames=num_frames, frame_size=frame_size, context_dim=context_dim,
                              block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
                              cross_attention=tuple(bool(a) for a in cfg["cross_attention"]),
                              layers_per_block=int(cfg["layers_per_block"]),
                              attention_heads=int(cfg["attention_heads"]), norm_groups=int(cfg["norm_groups"]))
    if kind != "wan":
        raise VimiError(f"params.yaml model.denoiser.type must be wan or frame_stack_unet, got {kind!r}.")
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**denoiser_config(params, num_frames, frame_size, context_dim))


def build_stock_unet3d(frame_size: int, context_dim: int):
    """The baseline of `vimi bench train`: diffusers' UNet3DConditionModel at a similar size (2.85M),
    stock blocks (temporal attention at full resolution, as diffusers ships it)."""
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(
        sample_size=frame_size, in_channels=3, out_channels=3,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=context_dim,
        attention_head_dim=8, norm_num_groups=8)


# Video prediction conditions the denoiser on given frames by channel concatenation (as Wan's and
# SVD's image-to-video models do): the given frames (zero elsewhere) and a mask of which frames are given.
FRAME_CONDITION_CHANNELS = 4


def condition_channels(model) -> int:
    """Extra input channels of a denoiser that reads given frames (0 for a stage-1 denoiser)."""
    return int(model.config.in_channels) - int(model.config.out_channels)


def add_frame_conditioning(model) -> bool:
    """Widen the denoiser's patch embedding for frame conditioning, the new input channels
    zero-initialised so the model computes exactly what it did before. False if already there."""
    if condition_channels(model) == FRAME_CONDITION_CHANNELS:
        return False
    if condition_channels(model) != 0:
        raise VimiError(f"The denoiser has {model.config.in_channels} input channels; expected "
                        f"{model.config.out_channels} or {model.config.out_channels + FRAME_CONDITION_CHANNELS}.")
    if isinstance(model, FrameStackUNet):
        model.widen_input(FRAME_CONDITION_CHANNELS)
        return True
    old = model.patch_embedding
    new = torch.nn.Conv3d(old.in_channels + FRAME_CONDITION_CHANNELS, old.out_channels, old.kernel_size,
                          old.stride, dtype=old.weight.dtype, device=old.weight.device)
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


def denoise(model, sample, timesteps, context, condition=None):
    """One call convention for both backbones: predicted noise (or v) for B×3×F×H×W samples.
    A frame-conditioned denoiser gets `condition` (frame_conditioning; none given = zeros)."""
    extra = condition_channels(model)
    if extra:
        if condition is None:
            condition = sample.new_zeros(sample.shape[0], extra, *sample.shape[2:])
        sample = torch.cat([sample, condition.to(sample.dtype)], dim=1)
    elif condition is not None:
        raise VimiError("This denoiser takes no given frames (a stage-1 model): video prediction needs a "
                        "stage-2 model.")
    return model(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]
