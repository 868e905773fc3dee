"""Generate SpriteWorld: the subject catalog, the image-text memory, training and evaluation clips.

Every row draws from its own random stream keyed by (seed, stream, row index), so the same
seed gives the same rows whatever the batch size or worker count.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from vimi.data.schema import RAW_FORMAT, VIDEO_SCHEMA
from vimi.io import lance_io
from vimi.io.video import encode_raw
from vimi.memory.schema import MEMORY_SCHEMA
from vimi.parallel import ordered_map, resolve_workers
from vimi.progress import progress
from vimi.world.catalog import (
    ACTIONS,
    COLORS,
    PATTERNS,
    SCENES,
    SHAPES,
    STREAM_EVAL,
    STREAM_MEMORY,
    STREAM_TRAIN,
    Catalog,
    Subject,
    build_catalog,
)
from vimi.world.motion import trajectory
from vimi.world.render import draw_sprite, render_scene

SOURCE = "spriteworld"
SCENE_VARIANTS = 16  # backgrounds of one scene differ in details (tree, star, building positions)

MEMORY_TEMPLATES = (
    "{name}, {description}, {where}",
    "a photo of {name} the {adjective} {shape} {where}",
    "{name} is a {c1} {shape} with {second}, seen {where}",
    "close-up of {name}, the {c1} and {c2} {shape}",
    "{name} {where}",
)
ANONYMOUS_TEMPLATES = (
    "{description} {where}",
    "a photo of a {adjective} {shape} {where}",
)
SCENE_TEMPLATES = ("an empty scene {where}", "nothing but the background {where}", "a view {where}")
VIDEO_TEMPLATES = (
    "{name} {verb} {where}",
    "{Where}, {name} {verb}",
    "a video of {name} as it {verb} {where}",
)
VIDEO_APPEARANCE_TEMPLATES = (
    "{name}, {description}, {verb} {where}",
    "{name} the {adjective} {shape} {verb} {where}",
)


@dataclass
class WorldConfig:
    seed: int
    subjects: int
    unseen_fraction: float
    actions: int
    scenes: int
    memory_docs: int
    distractor_fraction: float
    image_size: int
    train_clips: int
    eval_clips: int
    num_frames: int
    frame_size: int
    fps: int
    supersample: int
    appearance_in_video_caption: float
    pose_jitter: float = 1.0  # share of the trajectories' random range the clips use (vimi.world.motion)
    memory_rotation: float = 1.0  # share of a full turn the memory's subjects are drawn at (0: upright)
    scene_variants: int = SCENE_VARIANTS  # backgrounds a clip's scene is drawn from
    # Clip sprites' size, times the rasterizer's base radius (memory images keep theirs); above 1 the
    # largest sprites of spin, grow and shrink reach the frame's edges.
    sprite_scale: float = 1.0
    workers: int = 0  # generation processes; 0 = one per core (rows do not depend on it)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "WorldConfig":
        world = dict(params["world"])
        cfg = cls(seed=int(params.get("seed", 0)), **world)
        cfg.check()
        return cfg

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                from vimi.errors import VimiError

                raise VimiError(f"params.yaml world: {message}")

        need(self.memory_docs >= 1, f"memory_docs must be >= 1, got {self.memory_docs}")
        need(
            0 <= self.distractor_fraction < 1, f"distractor_fraction must be in [0, 1), got {self.distractor_fraction}"
        )
        need(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        need(self.frame_size >= 8, f"frame_size must be >= 8, got {self.frame_size}")
        need(self.num_frames >= 2, f"num_frames must be >= 2, got {self.num_frames}")
        need(self.train_clips >= 0 and self.eval_clips >= 0, "train_clips and eval_clips must be >= 0")
        need(1 <= self.supersample <= 8, f"supersample must be in 1..8, got {self.supersample}")
        need(0 <= self.appearance_in_video_caption <= 1, "appearance_in_video_caption must be in [0, 1]")
        need(self.fps > 0, f"fps must be > 0, got {self.fps}")
        need(0 <= self.pose_jitter <= 1, f"pose_jitter must be in [0, 1], got {self.pose_jitter}")
        need(0 <= self.memory_rotation <= 1, f"memory_rotation must be in [0, 1], got {self.memory_rotation}")
        need(0.5 <= self.sprite_scale <= 2, f"sprite_scale must be in [0.5, 2], got {self.sprite_scale}")
        need(
            1 <= self.scene_variants <= SCENE_VARIANTS,
            f"scene_variants must be in 1..{SCENE_VARIANTS}, got {self.scene_variants}",
        )
        n_seen = self.subjects - int(round(self.subjects * self.unseen_fraction))
        need(n_seen >= 1 or self.train_clips == 0, "at least one seen subject is needed for training clips")

    def catalog(self) -> Catalog:
        try:
            return build_catalog(self.seed, self.subjects, self.scenes, self.actions, self.unseen_fraction)
        except ValueError as exc:
            from vimi.errors import VimiError

            raise VimiError(f"params.yaml {exc}") from None


def _words(subject: Subject, scene: str) -> dict[str, str]:
    adjective, second = PATTERNS[subject.pattern]
    where = SCENES[scene]
    return {
        "name": subject.name,
        "shape": subject.shape,
        "c1": subject.color1,
        "c2": subject.color2,
        "adjective": adjective,
        "second": second.format(c2=subject.color2),
        "description": subject.description(),
        "where": where,
        "Where": where[0].upper() + where[1:],
    }


def _articles(caption: str) -> str:
    """'a orange star' -> 'an orange star' (templates put 'a' before colour words)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", caption)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Fixed settings so the bytes are reproducible.
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _truth(subject: Subject | None, scene: str | None) -> dict[str, Any]:
    if subject is None:
        return {
            "subject_id": None,
            "subject_name": None,
            "shape": None,
            "color1": None,
            "color2": None,
            "pattern": None,
            "subject_split": None,
            "scene": scene,
        }
    return {
        "subject_id": subject.id,
        "subject_name": subject.name,
        "shape": subject.shape,
        "color1": subject.color1,
        "color2": subject.color2,
        "pattern": subject.pattern,
        "subject_split": subject.split,
        "scene": scene,
    }


def _random_look(rng: np.random.Generator, index: int) -> Subject:
    """An anonymous sprite for distractor documents: same vocabulary, no name."""
    colors = list(COLORS)
    c1, c2 = (colors[i] for i in rng.choice(len(colors), size=2, replace=False))
    return Subject(
        id=f"anon{index}",
        name="",
        shape=SHAPES[rng.integers(len(SHAPES))],
        color1=c1,
        color2=c2,
        pattern=list(PATTERNS)[rng.integers(len(PATTERNS))],
        split="",
    )


def memory_rows(cfg: WorldConfig, catalog: Catalog, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Memory documents: subject documents round-robin over subjects, then distractors."""
    n_distractors = int(round(cfg.memory_docs * cfg.distractor_fraction))
    n_subject_docs = cfg.memory_docs - n_distractors
    stop = cfg.memory_docs if stop is None else stop
    for i in range(start, stop):
        rng = np.random.default_rng([cfg.seed, STREAM_MEMORY, i])
        scene = catalog.scenes[rng.integers(len(catalog.scenes))]
        background = render_scene(scene, cfg.image_size, int(rng.integers(SCENE_VARIANTS)))
        pose = np.array(
            [
                rng.uniform(0.3, 0.7),
                rng.uniform(0.3, 0.7),
                rng.uniform(1.2, 2.0),
                cfg.memory_rotation * rng.uniform(0.0, 360.0),
            ],
            dtype=np.float32,
        )
        if i < n_subject_docs:
            subject = catalog.subjects[i % len(catalog.subjects)]
            doc_type = "subject"
            template = MEMORY_TEMPLATES[rng.integers(len(MEMORY_TEMPLATES))]
            caption = _articles(template.format(**_words(subject, scene)))
            image = draw_sprite(background, subject, pose, cfg.supersample)
            truth = _truth(subject, scene)
        elif (i - n_subject_docs) % 2 == 0:
            look = _random_look(rng, i)
            doc_type = "anonymous"
            template = ANONYMOUS_TEMPLATES[rng.integers(len(ANONYMOUS_TEMPLATES))]
            caption = _articles(template.format(**_words(look, scene)))
            image = draw_sprite(background, look, pose, cfg.supersample)
            truth = _truth(None, scene) | {
                "shape": look.shape,
                "color1": look.color1,
                "color2": look.color2,
                "pattern": look.pattern,
            }
        else:
            doc_type = "scene"
            caption = SCENE_TEMPLATES[rng.integers(len(SCENE_TEMPLATES))].format(where=SCENES[scene])
            image, pose = background, None
            truth = _truth(None, scene)
        yield {
            "id": f"mem-{i:07d}",
            "image": _png(image),
            "caption": caption,
            "source": SOURCE,
            "width": cfg.image_size,
            "height": cfg.image_size,
            "meta": json.dumps({"seed": cfg.seed, "index": i}),
            "doc_type": doc_type,
            "pose": None if pose is None else pose.tolist(),
            **truth,
        }


@dataclass(frozen=True)
class ClipPlan:
    index: int
    subject: Subject
    action: str
    scene: str
    with_appearance: bool


def plan_clips(cfg: WorldConfig, catalog: Catalog, split: str) -> list[ClipPlan]:
    """Who does what where, per clip. Evaluation clips of seen subjects avoid every
    (subject, action, scene) combination of the training clips; the rest are unseen subjects."""
    seen, unseen = catalog.seen, catalog.unseen

    def draw(stream: int, i: int, pool: tuple[Subject, ...]) -> ClipPlan:
        rng = np.random.default_rng([cfg.seed, stream, i, 0])
        return ClipPlan(
            index=i,
            subject=pool[rng.integers(len(pool))],
            action=catalog.actions[rng.integers(len(catalog.actions))],
            scene=catalog.scenes[rng.integers(len(catalog.scenes))],
            with_appearance=bool(rng.random() < cfg.appearance_in_video_caption),
        )

    train = [draw(STREAM_TRAIN, i, seen) for i in range(cfg.train_clips)] if seen else []
    if split == "train":
        return train
    if split != "eval":
        raise ValueError(f"split must be train or eval, not {split!r}")
    used = {(p.subject.id, p.action, p.scene) for p in train}
    n_unseen = cfg.eval_clips // 2 if unseen else 0
    plans: list[ClipPlan] = []
    attempt = 0
    for i in range(cfg.eval_clips):
        pool = unseen if i < n_unseen else seen
        while True:  # redraw (new attempt number) until the combination is new
            plan = draw(STREAM_EVAL, attempt, pool)
            attempt += 1
            if (
                pool is unseen
                or (plan.subject.id, plan.action, plan.scene) not in used
                or attempt > 100 * cfg.eval_clips
            ):
                break
        plans.append(ClipPlan(i, plan.subject, plan.action, plan.scene, plan.with_appearance))
    return plans


def clip_rows(cfg: WorldConfig, plans: list[ClipPlan], split: str) -> Iterator[dict]:
    stream = STREAM_TRAIN if split == "train" else STREAM_EVAL
    prefix = "vid" if split == "train" else "eval"
    for plan in plans:
        rng = np.random.default_rng([cfg.seed, stream, plan.index, 1])
        background = render_scene(plan.scene, cfg.frame_size, int(rng.integers(SCENE_VARIANTS)) % cfg.scene_variants)
        poses = trajectory(plan.action, cfg.num_frames, rng, cfg.pose_jitter)
        poses[:, 2] *= cfg.sprite_scale
        frames = np.stack([draw_sprite(background, plan.subject, p, cfg.supersample) for p in poses])
        words = _words(plan.subject, plan.scene) | {"verb": ACTIONS[plan.action]}
        templates = VIDEO_APPEARANCE_TEMPLATES if plan.with_appearance else VIDEO_TEMPLATES
        caption = _articles(templates[rng.integers(len(templates))].format(**words))
        yield {
            "id": f"{prefix}-{plan.index:07d}",
            "video": encode_raw(frames),
            "video_format": RAW_FORMAT,
            "caption": caption,
            "num_frames": cfg.num_frames,
            "fps": float(cfg.fps),
            "height": cfg.frame_size,
            "width": cfg.frame_size,
            "source": SOURCE,
            "meta": json.dumps({"seed": cfg.seed, "index": plan.index, "caption_has_appearance": plan.with_appearance}),
            "split": split,
            "action": plan.action,
            "trajectory": poses.tolist(),
            **_truth(plan.subject, plan.scene),
        }


@dataclass
class GenerateResult:
    name: str
    path: str
    rows: int
    version: int | None
    seconds: float


def write_catalog(cfg: WorldConfig, folder: Path) -> Catalog:
    catalog = cfg.catalog()
    catalog.save(folder)
    return catalog


def load_or_build_catalog(cfg: WorldConfig, folder: Path | None) -> Catalog:
    """The saved catalog when it matches the configuration, else a fresh one (same seed → same)."""
    catalog = cfg.catalog()
    if folder is not None and (folder / "catalog.json").is_file():
        saved = Catalog.load(folder)
        if saved != catalog:
            from vimi.errors import VimiError

            raise VimiError(
                f"{folder / 'catalog.json'} does not match params.yaml world settings; "
                "regenerate it with `vimi world generate --part catalog`."
            )
    return catalog


CHUNK_ROWS = 64  # rows rendered per task when generating in parallel


def _memory_chunk(cfg: WorldConfig, catalog: Catalog, bounds: tuple[int, int]) -> list[dict]:
    return list(memory_rows(cfg, catalog, *bounds))


def _clip_chunk(cfg: WorldConfig, split: str, plans: list[ClipPlan]) -> list[dict]:
    return list(clip_rows(cfg, plans, split))


def _flatten(chunks: Iterator[list[dict]]) -> Iterator[dict]:
    for chunk in chunks:
        yield from chunk


def generate_memory(cfg: WorldConfig, catalog: Catalog, uri: Path, batch_rows: int = 256) -> GenerateResult:
    start = time.perf_counter()
    bounds = [(i, min(i + CHUNK_ROWS, cfg.memory_docs)) for i in range(0, cfg.memory_docs, CHUNK_ROWS)]
    chunks = ordered_map(partial(_memory_chunk, cfg, catalog), bounds, resolve_workers(cfg.workers), processes=True)
    rows = progress(_flatten(chunks), total=cfg.memory_docs, desc="memory documents")
    result = lance_io.write_batches(
        uri,
        lance_io.batches_of(rows, MEMORY_SCHEMA, batch_rows),
        MEMORY_SCHEMA,
        mode="overwrite",
        commit_message=f"spriteworld memory seed={cfg.seed}",
    )
    return GenerateResult("memory", str(uri), result.total_rows, result.version, time.perf_counter() - start)


def generate_videos(cfg: WorldConfig, catalog: Catalog, uri: Path, split: str, batch_rows: int = 256) -> GenerateResult:
    start = time.perf_counter()
    plans = plan_clips(cfg, catalog, split)
    pieces = [plans[i : i + CHUNK_ROWS] for i in range(0, len(plans), CHUNK_ROWS)]
    chunks = ordered_map(partial(_clip_chunk, cfg, split), pieces, resolve_workers(cfg.workers), processes=True)
    rows = progress(_flatten(chunks), total=len(plans), desc=f"{split} clips")
    result = lance_io.write_batches(
        uri,
        lance_io.batches_of(rows, VIDEO_SCHEMA, batch_rows),
        VIDEO_SCHEMA,
        mode="overwrite",
        commit_message=f"spriteworld {split} clips seed={cfg.seed}",
    )
    return GenerateResult(f"{split}_videos", str(uri), result.total_rows, result.version, time.perf_counter() - start)
