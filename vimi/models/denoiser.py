"""The video denoiser: diffusers' WanTransformer3DModel, small, conditioned by cross-attention.

Chosen by measurement on 2 cores (README "Design notes"): 8 clips × 8 frames × 32×32, fp32, one
training step: stock UNet3DConditionModel (2.85M) 4.5 s, LatteTransformer3DModel (2.1M, patch 4)
1.04 s, WanTransformer3DModel (1.8M, patch 2×4×4) 0.42 s. Wan patches time as well as space and
attends over all of a clip's tokens at once, which at these sizes is fewer, larger matmuls.
"""

from __future__ import annotations

from typing import Any

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


def denoise(model, sample, timesteps, context):
    """One call convention for both backbones: predicted noise (or v) for B×3×F×H×W samples."""
    return model(sample, timesteps, encoder_hidden_states=context, return_dict=False)[0]
