"""Actions as trajectories: per frame (x, y, scale, angle) — the ground truth of every clip.

x, y are the sprite centre in [0, 1] (y downwards), scale multiplies the base sprite radius,
angle is in degrees. Every action keeps the sprite inside the frame.

``jitter`` scales every random part of a trajectory (start, size, angle, travel) around the middle of
its range: 1 is the full range, 0 makes the clip a function of the action alone (circle, spin, zigzag
and shake then always turn the same way). A small world learns faster when the caption and the
subject fix the clip: the mean of the clips a caption allows is then the clip itself, not a blur.
"""

from __future__ import annotations

import numpy as np

from vimi.world.catalog import ACTIONS


def trajectory(action: str, num_frames: int, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
    """A (num_frames, 4) float32 array of poses performing ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")

    def uniform(low: float, high: float) -> float:
        # Always one draw, so a row's later draws do not depend on the jitter.
        value, middle = rng.uniform(low, high), (low + high) / 2
        return value if jitter == 1.0 else middle + jitter * (value - middle)

    def turn() -> float:
        direction = float(rng.choice([-1.0, 1.0]))
        return direction if jitter > 0 else 1.0

    t = np.linspace(0.0, 1.0, num_frames)
    x0, y0 = uniform(0.35, 0.65), uniform(0.35, 0.65)
    scale0 = uniform(0.9, 1.2)
    angle0 = jitter * rng.uniform(0.0, 360.0)
    x = np.full_like(t, x0)
    y = np.full_like(t, y0)
    scale = np.full_like(t, scale0)
    angle = np.full_like(t, angle0)
    travel = uniform(0.35, 0.5)
    if action == "move_left":
        x = 0.5 + travel / 2 - travel * t
    elif action == "move_right":
        x = 0.5 - travel / 2 + travel * t
    elif action == "rise":
        y = 0.5 + travel / 2 - travel * t
    elif action == "fall":
        y = 0.5 - travel / 2 + travel * t
    elif action == "bounce":
        height = uniform(0.3, 0.4)
        y = 0.72 - height * np.abs(np.sin(2 * np.pi * t))  # two bounces
    elif action == "circle":
        r = uniform(0.16, 0.22)
        direction = turn()
        phase = jitter * rng.uniform(0, 2 * np.pi)
        x = 0.5 + r * np.cos(phase + direction * 2 * np.pi * t)
        y = 0.5 + r * np.sin(phase + direction * 2 * np.pi * t)
    elif action == "spin":
        direction = turn()
        angle = angle0 + direction * 180.0 * t
        scale = np.full_like(t, uniform(1.2, 1.5))
    elif action == "grow":
        scale = 0.7 + 1.1 * t
        x, y = np.full_like(t, 0.5), np.full_like(t, 0.5)
    elif action == "shrink":
        scale = 1.8 - 1.1 * t
        x, y = np.full_like(t, 0.5), np.full_like(t, 0.5)
    elif action == "zigzag":
        direction = turn()
        x = 0.5 + direction * (travel * t - travel / 2)
        y = 0.5 + 0.14 * (2 * np.abs(((2 * t) % 1.0) - 0.5) * 2 - 1)  # triangle wave, 2 periods
    elif action == "shake":
        # Back and forth every frame: unmistakable at any clip length.
        x = x0 + turn() * 0.07 * (-1.0) ** np.arange(num_frames)
    elif action == "pulse":
        scale = scale0 * (1 + 0.4 * np.sin(2 * np.pi * 2 * t))
    return np.stack([x, y, scale, angle % 360.0], axis=1).astype(np.float32)
