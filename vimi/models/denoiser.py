"""The video denoiser: diffusers' WanTransformer3DModel, small, conditioned by cross-attention.

Chosen by measurement on 2 cores (README "Design notes"): 8 clips × 8 frames × 32×32, fp32, one
training step: stock UNet3DConditionModel (2.85M) 4.5 s, LatteTransformer3DModel (2.1M, patch 4)
1.04 s, WanTransformer3DModel (1.8M, patch 2×4×4) 0.42 s. Wan patches time as well as space and
attends over all of a clip's tokens at once, which at these sizes is fewer, larger matmuls.
"""

from __future__ import annotations

from typing import Any

import torch

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


def build_denoiser(params: dict[str, Any], num_frames: int, frame_size: int, context_dim: int):
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
