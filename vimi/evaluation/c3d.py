"""C3D (Tran et al., ICCV 2015), the classifier behind the UCF101 video Inception Score.

The network: eight 3×3×3 convolutions (conv1, conv2, conv3a/b, conv4a/b, conv5a/b) with max pools
(pool1 1×2×2, the others 2×2×2), fc6 and fc7 of 4096 units and fc8 over the classes (101 for
UCF101), on B×3×16×112×112 inputs. Parameter names follow the common PyTorch C3D checkpoints
(``conv1.weight`` … ``fc8.bias``); chainer/Caffe names (``conv1a``, ``conv2a``, ``conv1a/W``) are
mapped onto them.

**Weights are not shipped; the user supplies them** (``vimi evaluate --benchmark ucf101 --c3d PATH``).
The UCF101 IS in TGAN, MoCoGAN, VideoGPT, DIGAN and StyleGAN-V uses a C3D pre-trained on Sports-1M
and fine-tuned on UCF101: TGAN's chainer conversion of the Caffe model
``c3d_ucf101_finetune_whole_iter_20000`` (``conv3d_deepnetA_ucf.npz``), or the PyTorch
fine-tuned checkpoints of the "pytorch-video-recognition" C3D (``C3D-ucf101_epoch-*.pth.tar``).
Accepted formats, nothing else is loaded:

- ``.safetensors`` (preferred; ``convert_c3d_to_safetensors`` writes one from the others);
- ``.pt``/``.pth``/``.pth.tar``/``.ckpt``/``.bin`` read only through ``torch.load(weights_only=True)``:
  a state dict, optionally nested under ``state_dict``/``model_state_dict``/``model``, with a
  ``module.`` prefix stripped; a file that pickles anything beyond tensors and plain containers
  is refused;
- ``.npz`` (chainer) read with ``allow_pickle=False``.

**pool5.** The PyTorch ports pad pool5 by one in height and width (7×7 → 4×4); Caffe and chainer
use ceil-mode pooling instead (7×7 → 4×4 over different windows). The variant comes from the file
(``.npz`` → ceil; a safetensors file written here records it) and defaults to the padded one.

**Preprocessing** (``c3d_inputs``), as the C3D checkpoints were trained: 16 frames with values in
0–255 (not [-1, 1]), each resized to 128×171 (bilinear, no antialiasing, as OpenCV's INTER_LINEAR
in those pipelines), channels in BGR order, the Sports-1M mean subtracted, and the central 112×112
crop (rows 8:120, columns 29:141). The mean is the per-channel Sports-1M mean (B, G, R) =
(90, 98, 102) that the PyTorch fine-tuning used; the full Sports-1M mean volume (3×16×128×171,
BGR, e.g. TGAN's ``mean2.npz``) can be passed instead and is subtracted before the crop, as Caffe does.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from vimi.errors import VimiError

C3D_FRAMES, C3D_CROP, C3D_RESIZE = 16, 112, (128, 171)
SPORTS1M_MEAN_BGR = (90.0, 98.0, 102.0)
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")
POOL5_MODES = ("pad", "ceil")
_CONVS = (
    ("conv1", 3, 64),
    ("conv2", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
)
_ALIASES = {"conv1a": "conv1", "conv2a": "conv2"}


class C3D(nn.Module):
    """C3D on B×3×16×112×112 (BGR, mean-subtracted, 0–255 scale); returns class logits."""

    def __init__(self, num_classes: int = 101, pool5: str = "pad"):
        super().__init__()
        if pool5 not in POOL5_MODES:
            raise VimiError(f"C3D pool5 must be 'pad' (PyTorch ports) or 'ceil' (Caffe/chainer), got {pool5!r}.")
        self.num_classes, self.pool5_mode = num_classes, pool5
        for name, cin, cout in _CONVS:
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool5 = (
            nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))
            if pool5 == "pad"
            else nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True)
        )
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(p=0.5)
        self.relu = nn.ReLU()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (B×4096)."""
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, C3D_FRAMES, C3D_CROP, C3D_CROP):
            raise VimiError(
                f"C3D takes B×3×{C3D_FRAMES}×{C3D_CROP}×{C3D_CROP} inputs (see c3d_inputs), got {tuple(x.shape)}."
            )
        r = self.relu
        x = self.pool1(r(self.conv1(x)))
        x = self.pool2(r(self.conv2(x)))
        x = self.pool3(r(self.conv3b(r(self.conv3a(x)))))
        x = self.pool4(r(self.conv4b(r(self.conv4a(x)))))
        x = self.pool5(r(self.conv5b(r(self.conv5a(x)))))
        x = self.dropout(r(self.fc6(x.flatten(1))))
        return self.dropout(r(self.fc7(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.features(x))


# ---- weights ---------------------------------------------------------------------------------------


def weights_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".safetensors", ".npz", *TORCH_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _canonical_name(key: str) -> str:
    """'module.conv1a.weight', 'conv1a/W', '/fc8/b' → 'conv1.weight', 'fc8.bias'."""
    key = key.strip("/")
    while key.startswith("module."):
        key = key[len("module.") :]
    if "/" in key:
        layer, _, param = key.rpartition("/")
        param = {"W": "weight", "b": "bias"}.get(param, param)
        key = layer.replace("/", ".") + "." + param
    layer, dot, rest = key.partition(".")
    return _ALIASES.get(layer, layer) + dot + rest


def _torch_state(path: Path) -> Mapping[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted unpickler is a refusal
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it pickles {found.group(1)})" if found else ""
        raise VimiError(
            f"Refused to load C3D weights from {path}: torch.load(weights_only=True) accepts only "
            f"tensors and plain containers{what}; save a plain state dict or a .safetensors file."
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    if not isinstance(obj, Mapping):
        raise VimiError(f"C3D weights in {path} are a {type(obj).__name__}, not a state dict of tensors.")
    return obj


def read_c3d_weights(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with canonical names, metadata) of a weights file, without building the network."""
    path = Path(path)
    if not path.is_file():
        raise VimiError(
            f"C3D weights {path} do not exist; pass the path of a UCF101-fine-tuned C3D "
            f"(.safetensors, .pt/.pth state dict, or chainer .npz)."
        )
    suffix, metadata = _suffix(path), {}
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                raw: Mapping[str, Any] = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad header
            raise VimiError(f"C3D weights {path} are not a readable safetensors file ({exc}).") from None
    elif suffix in TORCH_SUFFIXES:
        raw = _torch_state(path)
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except Exception as exc:  # noqa: BLE001
            raise VimiError(f"C3D weights {path} are not a readable .npz of arrays ({exc}).") from None
        metadata = {"c3d_pool5": "ceil"}
    else:
        raise VimiError(
            f"C3D weights {path} have an unknown format {suffix or '(no suffix)'}; use .safetensors, "
            f".pt/.pth (state dict) or .npz."
        )
    bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise VimiError(f"C3D weights in {path} hold non-tensor entries ({', '.join(bad[:4])}); expected a state dict.")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = _canonical_name(str(key))
        if name in state:
            raise VimiError(f"C3D weights in {path} hold two tensors for {name}.")
        state[name] = value
    return state, metadata


def _check_state(state: Mapping[str, torch.Tensor], model: C3D, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            problems.append(f"{label}: {', '.join(names[:4])}{more}")
    if problems:
        raise VimiError(f"C3D weights in {path} do not fit the C3D network ({'; '.join(problems)}).")


def load_c3d(
    path: Path | str, device: str | torch.device = "cpu", sha256: str | None = None, pool5: str | None = None
) -> C3D:
    """A C3D in eval mode with the weights of a user-supplied file (see the module docstring); the
    number of classes comes from fc8. ``sha256`` (optional) pins the file's checksum."""
    path = Path(path)
    if sha256 is not None and path.is_file():
        actual = weights_sha256(path)
        if actual.lower() != sha256.lower():
            raise VimiError(f"C3D weights {path} have sha256 {actual}, not the expected {sha256}; refusing them.")
    state, metadata = read_c3d_weights(path)
    fc8 = state.get("fc8.weight")
    num_classes = int(fc8.shape[0]) if fc8 is not None and fc8.ndim == 2 else 101
    model = C3D(num_classes=num_classes, pool5=pool5 or metadata.get("c3d_pool5", "pad"))
    _check_state(state, model, path)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.to(device).eval()


def convert_c3d_to_safetensors(src: Path | str, dst: Path | str, pool5: str | None = None) -> Path:
    """Check C3D weights (.pt/.pth/.npz/.safetensors) against the network and write them as
    float32 .safetensors with canonical names, recording the pool5 variant."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    model = load_c3d(src, pool5=pool5)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(tmp),
            metadata={
                "format": "pt",
                "model": "c3d",
                "c3d_pool5": model.pool5_mode,
                "num_classes": str(model.num_classes),
            },
        )
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# ---- preprocessing ---------------------------------------------------------------------------------


def load_c3d_mean(path: Path | str) -> np.ndarray:
    """A Sports-1M mean from an .npz (key ``mean``, e.g. TGAN's ``mean2.npz``), reshaped to 3×16×128×171."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            mean = np.asarray(npz["mean"] if "mean" in npz.files else npz[npz.files[0]], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise VimiError(f"C3D mean {path} is not a readable .npz of arrays ({exc}).") from None
    if mean.size != 3 * C3D_FRAMES * C3D_RESIZE[0] * C3D_RESIZE[1]:
        raise VimiError(f"C3D mean {path} has {mean.size} values, expected 3×16×128×171.")
    return mean.reshape(3, C3D_FRAMES, *C3D_RESIZE)


def c3d_inputs(clips, mean: np.ndarray | tuple[float, float, float] | None = None, bgr: bool = True) -> torch.Tensor:
    """Clips (N×16×H×W×3, RGB, uint8 or float 0–255; an array, tensor or list of T×H×W×3 arrays) →
    the C3D input N×3×16×112×112 float32: resize to 128×171, RGB→BGR, subtract the Sports-1M mean
    (per channel by default, or a 3×16×128×171 volume), central 112×112 crop."""
    if isinstance(clips, (list, tuple)):
        if not clips:
            raise VimiError("c3d_inputs got no clips.")
        clips = np.stack([np.asarray(c) for c in clips])
    x = clips if isinstance(clips, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(clips))
    if x.ndim != 5 or x.shape[-1] != 3 or x.shape[1] != C3D_FRAMES:
        raise VimiError(
            f"C3D needs clips of {C3D_FRAMES} RGB frames (N×{C3D_FRAMES}×H×W×3), got shape {tuple(x.shape)}."
        )
    n, t, h, w, _ = x.shape
    x = x.float().reshape(n * t, h, w, 3).permute(0, 3, 1, 2)
    if (h, w) != C3D_RESIZE:
        x = torch.nn.functional.interpolate(x, size=C3D_RESIZE, mode="bilinear", align_corners=False, antialias=False)
    if bgr:
        x = x.flip(1)
    x = x.reshape(n, t, 3, *C3D_RESIZE).permute(0, 2, 1, 3, 4)  # N×3×T×128×171
    mean = SPORTS1M_MEAN_BGR if mean is None else mean
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    if mean_t.shape == (3,):
        mean_t = mean_t.view(1, 3, 1, 1, 1)
    elif tuple(mean_t.shape) != (3, C3D_FRAMES, *C3D_RESIZE):
        raise VimiError(f"C3D mean must have 3 values or shape 3×16×128×171, got {tuple(mean_t.shape)}.")
    x = x - mean_t
    top, left = (C3D_RESIZE[0] - C3D_CROP) // 2, (C3D_RESIZE[1] - C3D_CROP) // 2
    return x[..., top : top + C3D_CROP, left : left + C3D_CROP].contiguous()
