"""Torch datasets over Lance: training clips with their retrieved memory documents.

Batches are fetched whole (`__getitems__`: one Lance `take` for the clips, one for the documents),
so the loader reads in batches, not row by row (NOTES: 3.9k rows/s one at a time, 57k/s in 256s).
The memory is read at the version the augmented dataset was retrieved against, so a memory
rebuilt since cannot silently shift `memory_rows`.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import numpy as np

from vimi import lance_io
from vimi.data.video_io import VideoDecodeError, decode_video
from vimi.errors import VimiError

VIDEO_COLUMNS = ["id", "video", "video_format", "num_frames", "height", "width"]


def fit_clip(frames: np.ndarray, num_frames: int, size: int) -> np.ndarray:
    """A decoded clip (T×H×W×3) as num_frames×size×size×3: frames sampled evenly over the clip
    (the last one repeated when it is too short), centre square crop, bicubic resize."""
    t, h, w = frames.shape[:3]
    if t >= num_frames:
        frames = frames[np.linspace(0, t - 1, num_frames).round().astype(int)]
    else:
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - t, axis=0)])
    if (h, w) == (size, size):
        return np.ascontiguousarray(frames)
    from vimi.models.encoder import to_image_array

    return np.stack([to_image_array(frame, size) for frame in frames])


def decode_image(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    from vimi.models.encoder import to_image_array

    with Image.open(io.BytesIO(data)) as img:
        return to_image_array(img.convert("RGB"), size)


@dataclass
class ClipBatch:
    clip_ids: list[str]
    frames: np.ndarray                       # B×T×H×W×3 uint8
    captions: list[str]
    doc_images: list[list[np.ndarray]] = field(default_factory=list)   # per clip, best first
    doc_captions: list[list[str]] = field(default_factory=list)
    doc_ids: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clip_ids)


class AugmentedClips:
    """Map-style dataset (torch DataLoader compatible) of the retrieval-augmented training set."""

    def __init__(self, augmented_uri: Path, videos_uri: Path, num_frames: int, frame_size: int, image_size: int,
                 max_docs: int | None = None, with_docs: bool = True, image_cache: int = 50_000):
        aug = lance_io.open_dataset(augmented_uri, "augmented video dataset", "Run `vimi augment` first.")
        table = aug.to_table(columns=["clip_id", "caption", "memory_ids", "memory_rows", "memory_path",
                                      "memory_version", "videos_version"])
        if table.num_rows == 0:
            raise VimiError(f"The augmented video dataset at {augmented_uri} has no rows.")
        self.clip_ids = table.column("clip_id").to_pylist()
        self.captions = table.column("caption").to_pylist()
        self.memory_ids = table.column("memory_ids").to_pylist()
        self.memory_rows = table.column("memory_rows").to_pylist()
        self.num_frames, self.frame_size, self.image_size = int(num_frames), int(frame_size), int(image_size)
        self.max_docs, self.with_docs = max_docs, with_docs
        self.augmented_version = aug.version
        self.memory_path, self.memory_version = table.column("memory_path")[0].as_py(), table.column("memory_version")[0].as_py()
        self.videos_version = table.column("videos_version")[0].as_py()
        self.videos_uri = Path(videos_uri)
        self.videos = self._open_version(self.videos_uri, self.videos_version, "video corpus")
        self.memory = self._open_version(Path(self.memory_path), self.memory_version, "memory") if with_docs else None
        video_ids = self.videos.to_table(columns=["id"]).column("id").to_pylist()
        position = {cid: i for i, cid in enumerate(video_ids)}
        missing = [c for c in self.clip_ids if c not in position]
        if missing:
            raise VimiError(f"{len(missing)} clip(s) of the augmented dataset are not in the video corpus "
                            f"version {self.videos_version}, e.g. {missing[0]!r}. Rerun `vimi augment`.")
        self.video_rows = [position[c] for c in self.clip_ids]
        self._images: OrderedDict[int, tuple[str, np.ndarray, str]] = OrderedDict()
        self._image_cache = int(image_cache)

    @staticmethod
    def _open_version(uri: Path, version: int, what: str) -> lance.LanceDataset:
        ds = lance_io.open_dataset(uri, what)
        try:
            return ds.checkout_version(int(version)) if ds.version != int(version) else ds
        except Exception as exc:  # lance raises ValueError/OSError for a cleaned-up version
            raise VimiError(f"The augmented dataset was retrieved against {what} version {version} at {uri}, "
                            f"which is gone ({exc}). Rerun `vimi index build` and `vimi augment`.") from None

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, index: int) -> ClipBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> ClipBatch:
        indices = [int(i) for i in indices]
        rows = self.videos.take([self.video_rows[i] for i in indices], columns=VIDEO_COLUMNS).to_pylist()
        frames = []
        for i, row in zip(indices, rows):
            try:
                raw = decode_video(row["video"], row["video_format"], row["num_frames"], row["height"], row["width"])
            except VideoDecodeError as exc:
                raise VimiError(f"Clip {self.clip_ids[i]!r} cannot be decoded: {exc}") from None
            frames.append(fit_clip(raw, self.num_frames, self.frame_size))
        batch = ClipBatch([self.clip_ids[i] for i in indices], np.stack(frames), [self.captions[i] for i in indices])
        if self.with_docs:
            self._add_documents(batch, indices)
        return batch

    def _add_documents(self, batch: ClipBatch, indices: list[int]) -> None:
        wanted = [(p, i, r, d) for p, i in enumerate(indices)
                  for r, d in list(zip(self.memory_rows[i], self.memory_ids[i]))[: self.max_docs]]
        need = sorted({r for _, _, r, _ in wanted if r not in self._images})
        if need:
            n = self.memory.count_rows()
            beyond = [r for r in need if r >= n]
            if beyond:
                _, i, r, d = next(w for w in wanted if w[2] == beyond[0])
                raise VimiError(f"Clip {self.clip_ids[i]!r} retrieved memory document {d!r} (row {r}), which is "
                                f"missing from the memory ({self.memory_path} version {self.memory_version} has "
                                f"{n} rows). Rerun `vimi augment`.")
            table = self.memory.take(need, columns=["id", "image", "caption"])
            for r, doc_id, image, caption in zip(need, table.column("id").to_pylist(),
                                                 table.column("image").to_pylist(),
                                                 table.column("caption").to_pylist()):
                self._images[r] = (doc_id, decode_image(image, self.image_size), caption)
                if len(self._images) > self._image_cache:
                    self._images.popitem(last=False)
        per_clip: list[list[tuple[str, np.ndarray, str]]] = [[] for _ in indices]
        for p, i, r, expected in wanted:
            doc_id, image, caption = self._images[r]
            if doc_id != expected:
                raise VimiError(f"Clip {self.clip_ids[i]!r} retrieved memory document {expected!r} (row {r}), "
                                f"which is missing from the memory ({self.memory_path} version "
                                f"{self.memory_version} holds {doc_id!r} at that row). Rerun `vimi augment`.")
            per_clip[p].append((doc_id, image, caption))
        for docs in per_clip:
            batch.doc_ids.append([d[0] for d in docs])
            batch.doc_images.append([d[1] for d in docs])
            batch.doc_captions.append([d[2] for d in docs])


def collate_batch(batch: Any) -> Any:
    """DataLoader collate for datasets with __getitems__: the batch is already whole."""
    return batch
