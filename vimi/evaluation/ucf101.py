"""The UCF101 benchmark in its official layout, decoded with PyAV, and its class-name prompts.

Layout (as the official archives unpack)::

    ROOT/UCF-101/<ClassName>/v_<ClassName>_gXX_cYY.avi
    ROOT/ucfTrainTestlist/classInd.txt      "1 ApplyEyeMakeup"                                (1-based)
    ROOT/ucfTrainTestlist/trainlist0N.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ROOT/ucfTrainTestlist/testlist0N.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"      (no label)

``UCF101(root)`` finds both folders under ``root`` (or take ``videos_dir=`` / ``splits_dir=``);
``.classes`` are the class names (0-based here, 1-based in ``classInd.txt``), ``.items`` the
(relative path, class index) pairs of one split and fold. The label of a line is the class of its
folder (``ApplyEyeMakeup/...``); a train line's explicit label must agree with it.

**Clips.** ``iter_clips`` decodes ``num_frames`` frames per video (``sample="first"``: the first
ones, what StyleGAN-V's ``fvd2048_16f`` does for generated clips; ``"random"``: a seeded random
window of consecutive frames, what it does for real clips; ``"uniform"``: frames spread evenly
over the whole video) and resizes them to ``size``×``size`` with the same operation as
``vimi.evaluation.fvd.fvd_clip`` (torch bilinear, antialiased), so a second resize there is a no-op.
**Videos with fewer than ``num_frames`` frames are skipped** and counted as ``too_short``: the
FVD protocol (StyleGAN-V ``discard_short_videos=True``) discards them rather than inventing frames.
``short="pad"`` repeats the last frame instead. Every official UCF101 video has at least 29 frames,
so with 16-frame clips this only matters for other data in the same layout. Videos that do not
exist are counted as ``missing`` and videos PyAV cannot decode as ``undecodable``; neither stops
the run. ``limit=N`` takes a seeded random subset (the same N for the same seed) and keeps drawing
from the same permutation when a video is skipped, so N clips come out whenever N are decodable.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vimi.errors import VimiError

VIDEOS_DIRNAME = "UCF-101"
SPLITS_DIRNAME = "ucfTrainTestlist"
SPLITS = ("train", "test")
FOLDS = (1, 2, 3)
SKIP_REASONS = ("missing", "undecodable", "too_short")
PROMPTS_FILE = Path(__file__).with_name("ucf101_classes.txt")
_EXAMPLES_PER_REASON = 5


@dataclass(frozen=True)
class Clip:
    """One decoded clip: T×H×W×3 uint8 frames, its class index, its path relative to the videos folder."""

    frames: np.ndarray
    label: int
    path: str
    class_name: str

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(clip)`` is its frames, so a stream of clips feeds code that takes frame arrays."""
        return self.frames if dtype is None else self.frames.astype(dtype)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines (the official files use CRLF)."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except UnicodeDecodeError as exc:
        raise VimiError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _find_dirs(root: Path | None, videos_dir: Path | None, splits_dir: Path | None) -> tuple[Path, Path]:
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise VimiError(f"UCF101 root {root} is not a folder.")
    if videos_dir is None:
        if root is None:
            raise VimiError("Give the UCF101 root folder, or both videos_dir and splits_dir.")
        if (root / VIDEOS_DIRNAME).is_dir():
            videos_dir = root / VIDEOS_DIRNAME
        elif root.name == VIDEOS_DIRNAME:
            videos_dir = root
        else:
            raise VimiError(
                f"No {VIDEOS_DIRNAME}/ folder in {root}: expected the official layout "
                f"{root}/{VIDEOS_DIRNAME}/<ClassName>/v_*.avi (or pass videos_dir)."
            )
    if splits_dir is None:
        candidates = (
            []
            if root is None
            else [root / SPLITS_DIRNAME, root / "UCF101TrainTestSplits-RecognitionTask" / SPLITS_DIRNAME]
        )
        candidates.append(Path(videos_dir).parent / SPLITS_DIRNAME)
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            raise VimiError(
                f"No {SPLITS_DIRNAME}/ folder (classInd.txt, trainlist0N.txt, testlist0N.txt) in "
                f"{root if root is not None else Path(videos_dir).parent} (or pass splits_dir)."
            )
        splits_dir = found
    videos_dir, splits_dir = Path(videos_dir), Path(splits_dir)
    if not videos_dir.is_dir():
        raise VimiError(f"UCF101 videos folder {videos_dir} does not exist.")
    if not splits_dir.is_dir():
        raise VimiError(f"UCF101 split-list folder {splits_dir} does not exist.")
    return videos_dir, splits_dir


def read_class_index(path: Path) -> list[str]:
    """Class names of ``classInd.txt`` in index order (line ``k Name`` → position k-1)."""
    path = Path(path)
    if not path.is_file():
        raise VimiError(f"UCF101 class index {path} does not exist.")
    by_index: dict[int, str] = {}
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise VimiError(f"{path} line {n}: expected '<index> <ClassName>', got {line!r}.")
        index, name = int(parts[0]), parts[1]
        if index in by_index:
            raise VimiError(f"{path} line {n}: class index {index} appears twice.")
        if name in by_index.values():
            raise VimiError(f"{path} line {n}: class {name!r} appears twice.")
        by_index[index] = name
    if not by_index:
        raise VimiError(f"UCF101 class index {path} lists no classes.")
    expected = list(range(1, len(by_index) + 1))
    if sorted(by_index) != expected:
        gaps = sorted(set(expected) - set(by_index))[:5]
        raise VimiError(f"{path}: class indices must run 1..{len(by_index)} without gaps (missing {gaps}).")
    return [by_index[i] for i in expected]


class ClipStream:
    """Iterator of ``Clip`` with what was skipped on the way: ``skipped`` (Counter of reason → count),
    ``examples`` (reason → a few relative paths with the detail), ``yielded`` (clips produced)."""

    def __init__(self, generator_factory, total: int):
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.yielded = 0
        self.total = total
        self._it = generator_factory(self)

    def __iter__(self) -> Iterator[Clip]:
        return self

    def __next__(self) -> Clip:
        return next(self._it)

    def _skip(self, reason: str, path: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(f"{path}: {detail}" if detail else path)

    def summary(self) -> str:
        """One line: how many clips came out and what was skipped, e.g. for a log or an error."""
        if not self.skipped:
            return f"{self.yielded} clip(s), none skipped"
        parts = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{self.yielded} clip(s), skipped {sum(self.skipped.values())} ({parts})"


def _resize(frames: np.ndarray, size: int, center_crop: bool) -> np.ndarray:
    """T×H×W×3 uint8 → T×size×size×3 uint8: torch bilinear with antialiasing (as fvd.fvd_clip)."""
    import torch

    if center_crop:
        h, w = frames.shape[1:3]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        frames = frames[:, top : top + side, left : left + side]
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class UCF101:
    """One split and fold of UCF101: ``classes``, ``items`` [(relative path, class index)], ``len()``."""

    def __init__(
        self,
        root: Path | str | None = None,
        split: str = "train",
        fold: int = 1,
        *,
        videos_dir: Path | str | None = None,
        splits_dir: Path | str | None = None,
    ):
        if split not in SPLITS:
            raise VimiError(f"UCF101 split must be one of {', '.join(SPLITS)}, got {split!r}.")
        if isinstance(fold, bool) or not isinstance(fold, int) or fold not in FOLDS:
            raise VimiError(f"UCF101 fold must be 1, 2 or 3 (the official splits), got {fold!r}.")
        self.split, self.fold = split, fold
        self.videos_dir, self.splits_dir = _find_dirs(
            None if root is None else Path(root),
            None if videos_dir is None else Path(videos_dir),
            None if splits_dir is None else Path(splits_dir),
        )
        self.classes: list[str] = read_class_index(self.splits_dir / "classInd.txt")
        self.class_to_index = {name: i for i, name in enumerate(self.classes)}
        self.list_file = self.splits_dir / f"{split}list0{fold}.txt"
        self.items: list[tuple[str, int]] = self._read_split(self.list_file)
        self._dir_listing: dict[str, dict[str, str]] = {}
        self.last_stream: ClipStream | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> Counter[str]:
        """What the latest ``iter_clips`` stream skipped so far, by reason."""
        return Counter() if self.last_stream is None else self.last_stream.skipped

    def __repr__(self) -> str:
        return f"UCF101({str(self.videos_dir.parent)!r}, split={self.split!r}, fold={self.fold}: {len(self)} videos)"

    def _read_split(self, path: Path) -> list[tuple[str, int]]:
        if not path.is_file():
            raise VimiError(
                f"UCF101 split list {path} does not exist (expected {self.split}list01..03.txt beside classInd.txt)."
            )
        items, seen = [], set()
        for n, line in _read_lines(path):
            parts = line.split()
            if len(parts) not in (1, 2) or (len(parts) == 2 and not parts[1].lstrip("-").isdigit()):
                raise VimiError(f"{path} line {n}: expected '<Class>/<video>.avi [label]', got {line!r}.")
            rel = parts[0].replace("\\", "/").lstrip("/")
            if "/" not in rel:
                raise VimiError(f"{path} line {n}: {rel!r} has no class folder (expected '<Class>/<video>.avi').")
            if any(part in ("", ".", "..") for part in rel.split("/")) or ":" in rel or "\0" in rel:
                # a list must name files inside the videos folder, never reach out of it
                raise VimiError(
                    f"{path} line {n}: {rel!r} is not a path inside the videos folder (expected '<Class>/<video>.avi')."
                )
            class_name = rel.split("/", 1)[0]
            if class_name not in self.class_to_index:
                raise VimiError(
                    f"{path} line {n}: class {class_name!r} is not in "
                    f"{self.splits_dir / 'classInd.txt'} ({len(self.classes)} classes)."
                )
            label = self.class_to_index[class_name]
            if len(parts) == 2 and int(parts[1]) != label + 1:
                raise VimiError(
                    f"{path} line {n}: label {parts[1]} disagrees with classInd.txt, where "
                    f"{class_name!r} is {label + 1}."
                )
            if rel in seen:
                raise VimiError(f"{path} line {n}: {rel!r} is listed twice.")
            seen.add(rel)
            items.append((rel, label))
        if not items:
            raise VimiError(f"UCF101 split list {path} lists no videos.")
        return items

    # ---- files --------------------------------------------------------------------------------------

    def resolve(self, rel: str) -> Path | None:
        """The file of a listed video, or None when it does not exist. Falls back to a case-insensitive
        match inside the class folder (copies of UCF101 differ in the case of some names)."""
        path = self.videos_dir / rel
        if path.is_file():
            return path
        folder, name = rel.rsplit("/", 1)
        listing = self._dir_listing.get(folder)
        if listing is None:
            directory = self.videos_dir / folder
            if not directory.is_dir():
                wanted = folder.lower()
                directory = next(
                    (d for d in self.videos_dir.iterdir() if d.is_dir() and d.name.lower() == wanted), None
                )
            listing = {} if directory is None else {p.name.lower(): str(p) for p in directory.iterdir() if p.is_file()}
            self._dir_listing[folder] = listing
        found = listing.get(name.lower())
        return Path(found) if found else None

    def missing(self) -> list[str]:
        """Listed videos whose file does not exist (no decoding)."""
        return [rel for rel, _ in self.items if self.resolve(rel) is None]

    def order(self, limit: int | None = None, seed: int = 0) -> list[int]:
        """Item indices in reading order: the list order, or (with ``limit``) a permutation seeded by
        ``seed`` whose first ``limit`` entries are the subset; the rest replace skipped videos."""
        if limit is None:
            return list(range(len(self.items)))
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise VimiError(f"limit must be a positive number of clips, got {limit!r}.")
        return np.random.default_rng(seed).permutation(len(self.items)).tolist()

    # ---- decoding -----------------------------------------------------------------------------------

    def iter_clips(
        self,
        num_frames: int = 16,
        size: int | None = 224,
        sample: str = "first",
        limit: int | None = None,
        seed: int = 0,
        short: str = "skip",
        center_crop: bool = False,
        progress_desc: str | None = None,
    ) -> ClipStream:
        """Decoded clips (``Clip``: T×H×W×3 uint8, label, path) of this split; see the module docstring
        for ``sample``, ``short`` and ``limit``. ``size=None`` keeps the native resolution;
        ``center_crop`` takes the central square before resizing (default: plain resize, aspect not kept,
        as the I3D input of the FVD reference code). The returned stream's ``skipped`` counts what was
        left out by reason (``missing``, ``undecodable``, ``too_short``)."""
        from vimi.io.video import VideoDecodeError, decode_container, probe
        from vimi.progress import counter

        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise VimiError(f"num_frames must be a positive integer, got {num_frames!r}.")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise VimiError(f"size must be a positive integer or None, got {size!r}.")
        if sample not in ("first", "random", "uniform"):
            raise VimiError(f"sample must be 'first', 'random' or 'uniform', got {sample!r}.")
        if short not in ("skip", "pad"):
            raise VimiError(
                f"short must be 'skip' (drop clips with too few frames) or 'pad' (repeat the last "
                f"frame), got {short!r}."
            )
        order = self.order(limit, seed)
        target = len(order) if limit is None else min(limit, len(order))

        def generate(stream: ClipStream) -> Iterator[Clip]:
            desc = progress_desc or f"UCF101 {self.split}{self.fold}"
            with counter(target, desc, unit="clip") as tick:
                for index in order:
                    if stream.yielded >= target:
                        return
                    rel, label = self.items[index]
                    path = self.resolve(rel)
                    if path is None:
                        stream._skip("missing", rel)
                        continue
                    try:
                        if sample == "first":
                            frames, _ = decode_container(path, max_frames=num_frames)
                        else:  # counted first, then only the frames sampled are decoded and held
                            total = probe(path).num_frames
                            rng = random.Random(f"{seed}:{rel}")
                            keep = None if total <= num_frames else _indices(total, num_frames, sample, rng)
                            frames, _ = decode_container(path, keep=keep)
                    except VideoDecodeError as exc:
                        stream._skip("undecodable", rel, str(exc))
                        continue
                    if len(frames) < num_frames:
                        if short == "skip":
                            stream._skip("too_short", rel, f"{len(frames)} < {num_frames} frames")
                            continue
                        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), 0)])
                    if size is not None:
                        frames = _resize(frames, size, center_crop)
                    stream.yielded += 1
                    tick(1)
                    yield Clip(frames=frames, label=label, path=rel, class_name=self.classes[label])

        stream = ClipStream(generate, target)
        self.last_stream = stream
        return stream


def _indices(total: int, num_frames: int, sample: str, rng: random.Random) -> list[int]:
    """The frames `random` or `uniform` sampling takes from a clip of `total` > num_frames frames."""
    from vimi.io.video import even_frames

    if sample == "random":
        start = rng.randint(0, total - num_frames)
        return list(range(start, start + num_frames))
    return even_frames(total, num_frames)


# ---- class-name prompts ---------------------------------------------------------------------------

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def split_camel_case(name: str) -> str:
    """'ApplyEyeMakeup' → 'apply eye makeup'; 'YoYo' → 'yo yo'; underscores and dashes split too."""
    words = _WORD.findall(name)
    return " ".join(w.lower() for w in words) if words else name.strip().lower()


def read_prompts(path: Path | str | None = None) -> dict[str, str]:
    """ClassName → prompt of a prompt list (``ClassName<TAB>prompt`` per line; blank lines and ``#``
    comments ignored); the shipped ``ucf101_classes.txt`` when ``path`` is None."""
    path = PROMPTS_FILE if path is None else Path(path)
    if not path.is_file():
        raise VimiError(f"Class-prompt file {path} does not exist.")
    prompts: dict[str, str] = {}
    for n, line in _read_lines(path):
        if line.startswith("#"):
            continue
        name, tab, prompt = line.partition("\t")
        name, prompt = name.strip(), " ".join(prompt.split())
        if not tab or not name or not prompt or " " in name:
            raise VimiError(f"{path} line {n}: expected 'ClassName<TAB>prompt text', got {line!r}.")
        if name in prompts:
            raise VimiError(f"{path} line {n}: class {name!r} has a prompt already.")
        prompts[name] = prompt
    return prompts


def class_prompts(classes: Sequence[str], path: Path | str | None = None) -> list[str]:
    """A text prompt per class name: from the prompt list (exact name, then case-insensitive), else the
    name split into lower-case words."""
    table = read_prompts(path)
    folded = {name.lower(): prompt for name, prompt in table.items()}
    return [table.get(name) or folded.get(name.lower()) or split_camel_case(name) for name in classes]


def official_classes() -> list[str]:
    """The 101 UCF101 class names in classInd.txt order, as the shipped prompt list holds them."""
    return list(read_prompts(PROMPTS_FILE))
