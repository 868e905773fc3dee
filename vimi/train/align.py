"""Contrastive alignment of the image encoder to the language model, on the image-text memory.

No pretrained image encoder can be had here, so one is trained before stage 1, LLaVA-style: the
image tokens, read alone by the frozen all-MiniLM-L6-v2, must pool to the same sentence embedding
the language model gives the image's own caption (InfoNCE over the batch; captions that are equal
count as positives). Doing this first, as its own asset, keeps the language model out of stage 1's
backward pass (a frozen encoder runs once per batch under no_grad) and gives stage 1 image tokens
that already mean something in the LM's embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vimi.config import dataset_location
from vimi.data.clips import decode_image
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.models.encoder import MultimodalEncoder, load_language_model
from vimi.models.vision import ImageTokenizer


@dataclass
class MemoryBatch:
    images: list[np.ndarray]
    rows: list[int]


class MemoryImages:
    """Images and caption ids of (a deterministic sample of) the memory."""

    def __init__(self, memory_uri: Path, image_size: int, max_docs: int, seed: int):
        ds = lance_io.open_dataset(memory_uri, "image-text memory", "Build it first (vimi memory build).")
        n = ds.count_rows()
        if n < 2:
            raise VimiError(f"The memory at {memory_uri} has {n} document(s); alignment needs at least 2.")
        rows = (
            np.arange(n) if n <= max_docs else np.sort(np.random.default_rng(seed).choice(n, max_docs, replace=False))
        )
        self.dataset, self.rows, self.image_size = ds, rows.tolist(), image_size
        self.version = ds.version
        self.captions = ds.take(self.rows, columns=["caption"]).column("caption").to_pylist()
        unique = {c: i for i, c in enumerate(dict.fromkeys(self.captions))}
        self.caption_ids = torch.tensor([unique[c] for c in self.captions])
        self.unique_captions = list(unique)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> MemoryBatch:
        table = self.dataset.take([self.rows[i] for i in indices], columns=["image"])
        return MemoryBatch([decode_image(b, self.image_size) for b in table.column("image").to_pylist()], list(indices))


class AlignTask:
    name = "align"

    def __init__(self, memory_uri: Path, model_params: dict[str, Any], align: dict[str, Any], seed: int):
        self.temperature = float(align.get("temperature", 0.05))
        if not 0 < self.temperature <= 1:
            raise VimiError(f"params.yaml align.temperature must be in (0, 1], got {self.temperature}.")
        self.tokenizer, self.language_model = load_language_model()
        self.language_model.requires_grad_(False).eval()
        image_size = int(model_params.get("image_size", 32))
        torch.manual_seed(seed)  # initial weights follow the seed, whatever ran before
        self.model = ImageTokenizer(
            image_size=image_size,
            channels=tuple(model_params.get("image_channels", (32, 64, 128))),
            grid=int(model_params.get("image_grid", 2)),
            embed_dim=self.language_model.config.hidden_size,
        )
        self.encoder = MultimodalEncoder(self.tokenizer, self.language_model, self.model)
        self.dataset = MemoryImages(memory_uri, image_size, int(align.get("max_docs", 50_000)), seed)
        self.eval_docs = min(int(align.get("eval_docs", 256)), len(self.dataset))
        self.memory_uri = dataset_location(memory_uri)
        self.targets = self._caption_embeddings()

    @torch.no_grad()
    def _caption_embeddings(self, batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(self.dataset.unique_captions), batch):
            out.append(self.encoder.pooled([[c] for c in self.dataset.unique_captions[i : i + batch]]))
        return torch.cat(out)

    def to(self, device: torch.device) -> None:
        self.language_model.to(device)
        self.model.to(device)
        self.targets = self.targets.to(device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "memory": str(self.memory_uri),
            "memory_version": self.dataset.version,
            "model": dict(self.model.config),
            "temperature": self.temperature,
        }

    def _logits(self, model, images: list[np.ndarray]) -> torch.Tensor:
        self.encoder.vision = model
        image_emb = self.encoder.pooled([[im] for im in images], only_images=True)
        return image_emb @ self.targets.T / self.temperature

    def loss(self, model, batch: MemoryBatch, generators: Sequence[torch.Generator]) -> torch.Tensor:
        # Nothing random to draw. The in-batch contrastive loss compares a process' images with that
        # process' captions only, so it depends on the per-process batch: unlike stage 1 and 2, align
        # does not train the same weights on 2 processes × batch 4 as on 1 × batch 8.
        ids = self.dataset.caption_ids[batch.rows].to(self.targets.device)
        in_batch, column = torch.unique(ids, return_inverse=True)
        logits = self._logits(model, batch.images)[:, in_batch]  # against the batch's distinct captions
        image_to_text = torch.nn.functional.cross_entropy(logits.float(), column)
        same = (column[:, None] == column[None]).float()  # text → image: all images of a caption
        text_to_image = (
            -(torch.log_softmax(logits.float().T, dim=1)[column] * (same / same.sum(1, keepdim=True))).sum(1).mean()
        )
        return (image_to_text + text_to_image) / 2

    def samples(self, model) -> None:
        return None

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Caption retrieval from images over the first eval_docs documents: is the image's own
        caption (or an identical one) the nearest among all distinct captions of the sample?"""
        model.eval()
        rows = list(range(self.eval_docs))
        batch = self.dataset.__getitems__(rows)
        ids = self.dataset.caption_ids[rows].to(self.targets.device)
        candidates = torch.unique(ids)
        logits = self._logits(model, batch.images)[:, candidates]
        truth = torch.searchsorted(candidates, ids)
        top = logits.topk(min(5, len(candidates)), dim=1).indices
        return {
            "caption_top1": float((top[:, 0] == truth).float().mean()),
            "caption_top5": float((top == truth[:, None]).any(1).float().mean()),
            "chance_top1": 1.0 / len(candidates),
            "eval_docs": self.eval_docs,
        }

    def save(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir / "vision")
