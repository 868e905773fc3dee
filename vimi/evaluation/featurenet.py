"""The SpriteWorld feature network: a small video classifier trained on SpriteWorld's training
clips, with one head per ground-truth label (the action, and the subject's shape, colours and
pattern, and the scene). It is the evaluation's eye where I3D (Kinetics) sees nothing meaningful:
its penultimate features give FVD_syn, its action probabilities IS_syn and motion accuracy, its
attribute heads identity accuracy (a generated subject is recognised when all four attributes match
the prompted subject's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from vimi.config import dataset_location
from vimi.errors import VimiError
from vimi.io import lance_io

HEADS = ("action", "shape", "color1", "color2", "pattern", "scene")
IDENTITY_HEADS = ("shape", "color1", "color2", "pattern")


class FeatureNetwork(ModelMixin, ConfigMixin):
    """3-D CNN (conv–norm–SiLU blocks, pooled to a vector) → features → one linear head per label."""

    @register_to_config
    def __init__(
        self,
        labels: dict[str, list[str]] | None = None,
        channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 256,
        num_frames: int = 8,
        frame_size: int = 32,
    ):
        super().__init__()
        labels = labels or {}
        layers: list[torch.nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers += [
                torch.nn.Conv3d(c_in, c, 3, padding=1),
                torch.nn.GroupNorm(8, c),
                torch.nn.SiLU(),
                torch.nn.MaxPool3d((2, 2, 2) if i == len(channels) - 1 else (1, 2, 2), ceil_mode=True),
            ]
            c_in = c
        self.backbone = torch.nn.Sequential(*layers)
        t, h = num_frames, frame_size
        for i in range(len(channels)):
            h = -(-h // 2)
            t = t if i < len(channels) - 1 else -(-t // 2)
        self.project = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(c_in * t * h * h, feature_dim), torch.nn.SiLU()
        )
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(feature_dim, len(values)) for name, values in labels.items()}
        )

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """B×3×T×H×W in [-1, 1] → B×feature_dim."""
        return self.project(self.backbone(clips))

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(clips)
        return {name: head(features) for name, head in self.heads.items()}


def label_values(videos_uri: Path, memory_uri: Path | None = None) -> dict[str, list[str]]:
    """Each head's classes: the values its column takes in the training clips and the memory (sorted)."""
    tables = [lance_io.open_dataset(videos_uri, "video corpus").to_table(columns=list(HEADS))]
    if memory_uri is not None:
        tables.append(lance_io.open_dataset(memory_uri, "memory").to_table(columns=list(HEADS[1:])))
    labels = {}
    for name in HEADS:
        values = sorted(
            {v for t in tables if name in t.column_names for v in t.column(name).to_pylist() if v is not None}
        )
        if values:
            labels[name] = values
    if "action" not in labels:
        raise VimiError(
            f"The clips at {videos_uri} carry no ground truth (action, attributes): the feature "
            "network is SpriteWorld's; real data is evaluated with I3D (vimi evaluate --benchmark ucf101)."
        )
    return labels


@dataclass
class LabelledBatch:
    frames: np.ndarray  # B×T×H×W×3 uint8
    labels: dict[str, torch.Tensor]  # head → B class indices (-1: value unknown to the head)

    def __len__(self) -> int:
        return len(self.frames)


class LabelledClips:
    """Map-style dataset of clips with their class indices (batched reads, like the training loaders)."""

    def __init__(self, videos_uri: Path, labels: dict[str, list[str]], num_frames: int, frame_size: int):
        ds = lance_io.open_dataset(videos_uri, "video corpus")
        self.uri, self.version, self.ds = dataset_location(videos_uri), ds.version, ds
        table = ds.to_table(columns=["id", *labels, "subject_split"])
        self.ids = table.column("id").to_pylist()
        self.subject_split = table.column("subject_split").to_pylist()
        index = {name: {v: i for i, v in enumerate(values)} for name, values in labels.items()}
        self.targets = {
            name: np.array([index[name].get(v, -1) for v in table.column(name).to_pylist()]) for name in labels
        }
        self.num_frames, self.frame_size = int(num_frames), int(frame_size)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices: list[int]) -> LabelledBatch:
        from vimi.data.clips import VIDEO_COLUMNS, decode_clip

        rows = self.ds.take([int(i) for i in indices], columns=VIDEO_COLUMNS).to_pylist()
        frames = np.stack([decode_clip(r, self.num_frames, self.frame_size, r["id"]) for r in rows])
        return LabelledBatch(frames, {k: torch.as_tensor(v[indices]) for k, v in self.targets.items()})


class LabelledStills:
    """Memory images of sprites (subjects and anonymous looks) as still clips, labelled with their
    attributes and scene (no action): they teach the attribute heads every look of the world, so
    identity generalises to subjects that never appear in a training clip."""

    def __init__(self, memory_uri: Path, labels: dict[str, list[str]], num_frames: int, frame_size: int):
        ds = lance_io.open_dataset(memory_uri, "memory")
        self.uri, self.version, self.ds = dataset_location(memory_uri), ds.version, ds
        table = ds.to_table(columns=["doc_type", *[h for h in labels if h != "action"]])
        kinds = table.column("doc_type").to_pylist()
        self.rows = np.array([i for i, k in enumerate(kinds) if k in ("subject", "anonymous")], dtype=np.int64)
        index = {name: {v: i for i, v in enumerate(values)} for name, values in labels.items()}
        self.targets = {
            name: (
                np.full(len(self.rows), -1)
                if name == "action"
                else np.array(
                    [index[name].get(v, -1) for v in np.array(table.column(name).to_pylist(), dtype=object)[self.rows]]
                )
            )
            for name in labels
        }
        self.num_frames, self.frame_size = int(num_frames), int(frame_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> LabelledBatch:
        from vimi.data.clips import decode_image

        images = self.ds.take(self.rows[indices].tolist(), columns=["image"]).column("image").to_pylist()
        frames = np.stack([np.repeat(decode_image(b, self.frame_size)[None], self.num_frames, axis=0) for b in images])
        return LabelledBatch(frames, {k: torch.as_tensor(v[indices]) for k, v in self.targets.items()})


class Concatenated:
    """Two labelled datasets as one (a batch may draw from both)."""

    def __init__(self, *parts):
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, indices: list[int]) -> LabelledBatch:
        indices = np.asarray(indices)
        batches, order = [], []
        for k, part in enumerate(self.parts):
            mine = np.flatnonzero((indices >= self.offsets[k]) & (indices < self.offsets[k + 1]))
            if len(mine):
                batches.append(part.__getitems__((indices[mine] - self.offsets[k]).tolist()))
                order.extend(mine.tolist())
        back = np.argsort(order)  # the batch in the order asked for
        frames = np.concatenate([b.frames for b in batches])[back]
        labels = {k: torch.cat([b.labels[k] for b in batches])[torch.as_tensor(back)] for k in batches[0].labels}
        return LabelledBatch(frames, labels)


def classify(
    model: FeatureNetwork, frames: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features and per-head class probabilities of B×T×H×W×3 uint8 clips (fitted to the network's size)."""
    from vimi.data.clips import fit_clip
    from vimi.models.pipeline import to_model_frames

    device = next(model.parameters()).device
    feats, probs = [], {name: [] for name in model.heads}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            chunk = np.stack(
                [
                    fit_clip(f, model.config.num_frames, model.config.frame_size)
                    for f in frames[start : start + batch_size]
                ]
            )
            x = to_model_frames(chunk).to(device)
            f = model.features(x)
            feats.append(f.cpu().numpy().astype(np.float64))
            for name, head in model.heads.items():
                probs[name].append(torch.softmax(head(f), dim=-1).cpu().numpy().astype(np.float64))
    return np.concatenate(feats), {k: np.concatenate(v) for k, v in probs.items()}


class FeatureNetTask:
    """The feature network as a Task of the one training loop (checkpoints, resume, MLflow)."""

    name = "featurenet"

    def __init__(
        self,
        videos_uri: Path,
        num_frames: int,
        frame_size: int,
        params: dict[str, Any],
        seed: int,
        memory_uri: Path | None = None,
    ):
        labels = label_values(videos_uri, memory_uri)
        torch.manual_seed(int(seed))
        self.model = FeatureNetwork(
            labels=labels,
            channels=tuple(params.get("channels", (32, 64, 128))),
            feature_dim=int(params.get("feature_dim", 256)),
            num_frames=num_frames,
            frame_size=frame_size,
        )
        self.clips = LabelledClips(videos_uri, labels, num_frames, frame_size)
        self.stills = LabelledStills(memory_uri, labels, num_frames, frame_size) if memory_uri else None
        self.dataset = Concatenated(self.clips, self.stills) if self.stills else self.clips
        self._params = params

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": [
                str(self.clips.uri),
                self.clips.version,
                *([str(self.stills.uri), self.stills.version] if self.stills else []),
            ],
            "model": dict(self.model.config),
            "params": {k: v for k, v in self._params.items() if k in ("channels", "feature_dim")},
        }

    def loss(self, model, batch: LabelledBatch, generators: Sequence[torch.Generator]) -> torch.Tensor:
        from vimi.models.pipeline import to_model_frames

        device = next(model.parameters()).device
        frames = to_model_frames(batch.frames)
        logits = model(frames.to(device))
        # A head with no labelled sample in the batch (e.g. action in a batch of stills) adds nothing:
        # cross-entropy over zero targets is 0/0.
        losses = [
            torch.nn.functional.cross_entropy(logits[k], t.to(device), ignore_index=-1)
            for k, t in batch.labels.items()
            if bool((t >= 0).any())
        ]
        return torch.stack(losses).sum()

    def samples(self, model) -> None:
        return None

    def save(self, model, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir))


def load_feature_network(path: Path) -> FeatureNetwork:
    if not (Path(path) / "config.json").is_file():
        raise VimiError(f"No feature network at {path}. Train it first: vimi train featurenet.")
    return FeatureNetwork.from_pretrained(str(path))


def accuracy(model: FeatureNetwork, clips: LabelledClips, batch_size: int = 64) -> dict[str, Any]:
    """Per-head accuracy on a labelled split, and identity accuracy (all four attributes right),
    for all clips and by subject split (seen / unseen)."""
    frames = np.concatenate(
        [
            clips.__getitems__(list(range(s, min(s + batch_size, len(clips))))).frames
            for s in range(0, len(clips), batch_size)
        ]
    )
    _, probs = classify(model, frames, batch_size)
    right = {k: probs[k].argmax(1) == clips.targets[k] for k in probs}
    identity = np.all([right[k] for k in IDENTITY_HEADS if k in right], axis=0)
    split = np.array([s or "" for s in clips.subject_split])
    out: dict[str, Any] = {f"{k}_accuracy": float(v.mean()) for k, v in right.items()}
    out["identity_accuracy"] = float(identity.mean())
    for name in ("seen", "unseen"):
        if (split == name).any():
            out[f"identity_accuracy_{name}"] = float(identity[split == name].mean())
            out[f"action_accuracy_{name}"] = float(right["action"][split == name].mean())
    out["clips"] = len(clips)
    return out
