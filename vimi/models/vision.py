"""The image tokenizer of the multimodal encoder: a small CNN and a projector into the language
model's embedding space. No pretrained image encoder can be downloaded here, so this one is
trained on the memory (vimi.train.align) before stage 1 reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vimi.errors import VimiError


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.SiLU(),
    )


class ImageTokenizer(ModelMixin, ConfigMixin):
    """uint8 images (N×H×W×3, H = W = image_size) → N × tokens_per_image × embed_dim tokens."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self, image_size: int = 32, channels: tuple[int, ...] = (32, 64, 128), grid: int = 2, embed_dim: int = 384
    ):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers.append(_block(c_in, c))
            c_in = c
        self.backbone = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.position = nn.Parameter(torch.zeros(grid * grid, c_in))
        # LLaVA-1.5's projector: two linear layers with a GELU, into the LM's embedding space.
        self.projector = nn.Sequential(nn.Linear(c_in, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))

    @property
    def tokens_per_image(self) -> int:
        return self.config.grid * self.config.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: N×3×H×W floats in [-1, 1]."""
        features = self.pool(self.backbone(images))  # N×C×g×g
        tokens = features.flatten(2).transpose(1, 2) + self.position
        return self.projector(tokens)


def to_model_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def load_vision(encoder_dir: str | Path) -> ImageTokenizer:
    """The aligned image encoder that `vimi train align` saved under ENCODER_DIR/vision."""
    path = Path(encoder_dir) / "vision"
    if not (path / "config.json").is_file():
        raise VimiError(f"No aligned image encoder at {path}. Train it first: vimi train align.")
    return ImageTokenizer.from_pretrained(str(path))
