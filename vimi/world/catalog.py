"""SpriteWorld's vocabulary: shapes, colours, patterns, scenes, actions, and the subject catalog.

Subjects are drawn deterministically from a seed. Each has a unique made-up name (so a caption
that names it is a precise retrieval key), a shape, two named colours and a pattern.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vimi.io.files import write_text

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (249, 132, 22),
    "yellow": (246, 218, 36),
    "lime": (150, 226, 52),
    "green": (22, 140, 60),
    "teal": (20, 150, 140),
    "cyan": (70, 220, 240),
    "blue": (36, 70, 220),
    "purple": (128, 52, 200),
    "pink": (246, 120, 196),
    "white": (248, 248, 248),
    "black": (22, 22, 22),
}

# pattern -> (adjective, how the second colour is described)
PATTERNS: dict[str, tuple[str, str]] = {
    "solid": ("solid", "a {c2} outline"),
    "stripes": ("striped", "{c2} stripes"),
    "dots": ("dotted", "{c2} dots"),
    "checker": ("checkered", "{c2} checks"),
    "split": ("two-tone", "a {c2} half"),
}

# scene -> where-phrase used in captions; order matters: a profile with n scenes uses the first n.
SCENES: dict[str, str] = {
    "beach": "on the beach",
    "forest": "in the forest",
    "night": "at night",
    "snow": "in the snow",
    "city": "in the city",
    "desert": "in the desert",
    "meadow": "in a meadow",
    "underwater": "under water",
}

# action -> caption verb phrase (UCF-like motion classes); a profile with n actions uses the first n.
ACTIONS: dict[str, str] = {
    "move_left": "moves left",
    "move_right": "moves right",
    "rise": "rises",
    "fall": "falls",
    "bounce": "bounces",
    "circle": "circles around",
    "spin": "spins",
    "grow": "grows",
    "shrink": "shrinks",
    "zigzag": "zigzags",
    "shake": "shakes",
    "pulse": "pulses",
}

_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "qu",
    "r",
    "s",
    "sk",
    "t",
    "tr",
    "v",
    "vr",
    "z",
    "zh",
    "th",
    "x",
)
_VOWELS = ("a", "e", "i", "o", "u", "y", "ae", "ou")
_CODAS = ("", "k", "x", "n", "r", "l", "th", "v", "z", "sh", "m", "q")

# Catalog streams: every random draw of the world is keyed by (seed, stream, index).
STREAM_CATALOG, STREAM_MEMORY, STREAM_TRAIN, STREAM_EVAL = 1, 2, 3, 4


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    shape: str
    color1: str
    color2: str
    pattern: str
    split: str  # "seen" (in training videos) or "unseen" (memory only)

    def description(self) -> str:
        """'a teal and orange striped star'"""
        adjective = PATTERNS[self.pattern][0]
        return f"a {self.color1} and {self.color2} {adjective} {self.shape}"


@dataclass(frozen=True)
class Catalog:
    seed: int
    subjects: tuple[Subject, ...]
    scenes: tuple[str, ...]
    actions: tuple[str, ...]

    @property
    def seen(self) -> tuple[Subject, ...]:
        return tuple(s for s in self.subjects if s.split == "seen")

    @property
    def unseen(self) -> tuple[Subject, ...]:
        return tuple(s for s in self.subjects if s.split == "unseen")

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "scenes": list(self.scenes),
                "actions": list(self.actions),
                "subjects": [asdict(s) for s in self.subjects],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> "Catalog":
        raw = json.loads(text)
        return cls(
            seed=raw["seed"],
            subjects=tuple(Subject(**s) for s in raw["subjects"]),
            scenes=tuple(raw["scenes"]),
            actions=tuple(raw["actions"]),
        )

    def save(self, folder: Path) -> Path:
        path = folder / "catalog.json"
        write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, folder: Path) -> "Catalog":
        return cls.from_json((folder / "catalog.json").read_text())


def _caption_words() -> set[str]:
    """Every word SpriteWorld captions use, so no subject name collides with one."""
    words: set[str] = set()
    for text in (
        *SHAPES,
        *COLORS,
        *SCENES.values(),
        *ACTIONS.values(),
        *(a for a, _ in PATTERNS.values()),
        *(d for _, d in PATTERNS.values()),
    ):
        words.update(text.replace("{c2}", "").split())
    return words


def make_name(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(2, 4))
    parts = []
    for _ in range(syllables):
        parts.append(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))])
    return "".join(parts) + _CODAS[rng.integers(len(_CODAS))]


def build_catalog(seed: int, n_subjects: int, n_scenes: int, n_actions: int, unseen_fraction: float) -> Catalog:
    if not 1 <= n_scenes <= len(SCENES):
        raise ValueError(f"world.scenes must be between 1 and {len(SCENES)}, got {n_scenes}")
    if not 1 <= n_actions <= len(ACTIONS):
        raise ValueError(f"world.actions must be between 1 and {len(ACTIONS)}, got {n_actions}")
    n_combos = len(SHAPES) * len(COLORS) * (len(COLORS) - 1) * len(PATTERNS)
    if not 1 <= n_subjects <= n_combos:
        raise ValueError(f"world.subjects must be between 1 and {n_combos}, got {n_subjects}")
    if not 0.0 <= unseen_fraction < 1.0:
        raise ValueError(f"world.unseen_fraction must be in [0, 1), got {unseen_fraction}")

    rng = np.random.default_rng([seed, STREAM_CATALOG])
    colors = list(COLORS)
    banned = _caption_words()
    names: set[str] = set()
    looks: set[tuple[str, str, str, str]] = set()
    subjects = []
    while len(subjects) < n_subjects:
        name = make_name(rng)
        shape = SHAPES[rng.integers(len(SHAPES))]
        c1, c2 = (colors[i] for i in rng.choice(len(colors), size=2, replace=False))
        pattern = list(PATTERNS)[rng.integers(len(PATTERNS))]
        look = (shape, c1, c2, pattern)
        if name in names or name in banned or look in looks:
            continue
        names.add(name)
        looks.add(look)
        subjects.append((name, shape, c1, c2, pattern))

    n_unseen = int(round(n_subjects * unseen_fraction))
    unseen = set(rng.choice(n_subjects, size=n_unseen, replace=False).tolist()) if n_unseen else set()
    return Catalog(
        seed=seed,
        subjects=tuple(
            Subject(
                id=f"s{i:04d}",
                name=n,
                shape=sh,
                color1=a,
                color2=b,
                pattern=p,
                split="unseen" if i in unseen else "seen",
            )
            for i, (n, sh, a, b, p) in enumerate(subjects)
        ),
        scenes=tuple(list(SCENES)[:n_scenes]),
        actions=tuple(list(ACTIONS)[:n_actions]),
    )
