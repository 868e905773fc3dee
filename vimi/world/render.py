"""A small, deterministic rasterizer: scene backgrounds and patterned sprites in numpy.

Sprites are drawn with supersampling (anti-aliased edges) inside their bounding box only,
so frames of any size render fast on a CPU. Poses are (x, y, scale, angle): centre in
[0, 1] image coordinates (y grows downwards), scale relative to ``BASE_RADIUS`` of the
frame, angle in degrees counter-clockwise.
"""

from __future__ import annotations

import numpy as np

from vimi.world.catalog import COLORS, Subject

BASE_RADIUS = 0.16  # sprite radius at scale 1, as a fraction of the frame side
_BORDER = 0.72  # the inner body of a "solid" sprite; the rest is the outline colour


def _regular_polygon(u, v, sides: int, rotation: float, apothem: float):
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        theta = rotation + 2 * np.pi * k / sides
        inside &= (u * np.cos(theta) + v * np.sin(theta)) <= apothem
    return inside


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which local coordinates (sprite radius = 1, v pointing up) lie inside the shape."""
    if shape == "circle":
        return u * u + v * v <= np.float32(0.9)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # points up; edge normals at -90°, 30°, 150°
        return _regular_polygon(u, v + 0.15, 3, -np.pi / 2, 0.5)
    if shape == "hexagon":
        return _regular_polygon(u, v, 6, 0.0, 0.85)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "star":  # five points; radius alternates between outer and inner along the angle
        r = np.sqrt(u * u + v * v)
        phi = np.arctan2(u, v)  # 0 at the top point
        frac = np.abs(((phi * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        return r <= 0.42 + 0.58 * frac**1.5
    if shape == "heart":
        x, y = u * 1.15, v * 1.15 + 0.1
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def pattern_second_colour(pattern: str, u: np.ndarray, v: np.ndarray, inside_body) -> np.ndarray:
    """Where the second colour shows, in local coordinates (so patterns turn with the sprite)."""
    if pattern == "solid":
        return ~inside_body
    if pattern == "stripes":
        return (np.floor((u + 2.0) * 2.5).astype(int) % 2) == 1
    if pattern == "dots":
        fu, fv = (u * 2.2) % 1.0 - 0.5, (v * 2.2) % 1.0 - 0.5
        return fu * fu + fv * fv < 0.09
    if pattern == "checker":
        return ((np.floor((u + 2.0) * 2.2) + np.floor((v + 2.0) * 2.2)).astype(int) % 2) == 1
    if pattern == "split":
        return u > 0
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_sprite(image: np.ndarray, subject: Subject, pose, supersample: int = 4) -> np.ndarray:
    """Draw ``subject`` onto ``image`` (H×W×3 uint8, modified copy returned) at ``pose``."""
    height, width = image.shape[:2]
    side = min(height, width)
    x, y, scale, angle = (float(p) for p in pose)
    radius = BASE_RADIUS * scale * side  # in pixels
    reach = radius * 1.05 + 1
    x0, x1 = max(int(np.floor(x * width - reach)), 0), min(int(np.ceil(x * width + reach)), width)
    y0, y1 = max(int(np.floor(y * height - reach)), 0), min(int(np.ceil(y * height + reach)), height)
    out = image.copy()
    if x0 >= x1 or y0 >= y1:
        return out
    ss = supersample
    # float32 throughout: this is the hot loop of world generation.
    xs = ((np.arange(x0 * ss, x1 * ss, dtype=np.float32) + 0.5) / ss - x * width) / radius
    ys = -((np.arange(y0 * ss, y1 * ss, dtype=np.float32) + 0.5) / ss - y * height) / radius  # v points up
    theta = np.deg2rad(angle)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = c * xs[None, :] + s * ys[:, None]
    v = -s * xs[None, :] + c * ys[:, None]
    inside = shape_mask(subject.shape, u, v)
    body = shape_mask(subject.shape, u / _BORDER, v / _BORDER)
    second = pattern_second_colour(subject.pattern, u, v, body)
    colour = np.where(
        second[..., None], np.array(COLORS[subject.color2], np.float32), np.array(COLORS[subject.color1], np.float32)
    )
    crop = out[y0:y1, x0:x1].astype(np.float32)
    up = np.repeat(np.repeat(crop, ss, axis=0), ss, axis=1)
    up = np.where(inside[..., None], colour, up)
    down = up.reshape(y1 - y0, ss, x1 - x0, ss, 3).sum(axis=(1, 3)) / (ss * ss)
    out[y0:y1, x0:x1] = np.clip(np.rint(down), 0, 255).astype(np.uint8)
    return out


def _vertical_gradient(size: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    col = np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t
    return np.broadcast_to(col, (size, size, 3)).copy()


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour) -> None:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    img[(xx - cx * size) ** 2 + (yy - cy * size) ** 2 <= (r * size) ** 2] = colour


def render_scene(scene: str, size: int, variant: int = 0) -> np.ndarray:
    """A size×size RGB background of the named scene; ``variant`` moves its details."""
    rng = np.random.default_rng([hash_scene(scene), variant])
    yy = (np.mgrid[0:size, 0:size][0] + 0.5) / size
    xx = (np.mgrid[0:size, 0:size][1] + 0.5) / size
    if scene == "beach":
        img = _vertical_gradient(size, (120, 190, 245), (190, 225, 250))
        horizon = 0.45 + 0.05 * rng.random()
        img[yy > horizon] = (40, 110, 200)
        img[yy > horizon + 0.13 + 0.03 * np.sin(xx * 9 + rng.random() * 6)] = (236, 214, 160)
    elif scene == "forest":
        img = _vertical_gradient(size, (40, 90, 50), (25, 60, 30))
        for _ in range(5):
            cx = rng.random()
            img[(np.abs(xx - cx) < 0.035)] = (90, 60, 30)
            _disc(img, cx, 0.2 + 0.15 * rng.random(), 0.12, (50, 120, 45))
        img[yy > 0.85] = (60, 45, 25)
    elif scene == "night":
        img = _vertical_gradient(size, (8, 10, 40), (20, 25, 70))
        for _ in range(max(6, size // 4)):
            cx, cy = rng.random(), rng.random() * 0.7
            img[min(int(cy * size), size - 1), min(int(cx * size), size - 1)] = (230, 230, 200)
        _disc(img, 0.15 + 0.7 * rng.random(), 0.15, 0.07, (240, 235, 190))
    elif scene == "snow":
        img = _vertical_gradient(size, (190, 210, 235), (225, 235, 248))
        hill = 0.6 + 0.08 * np.sin(xx * 5 + rng.random() * 6)
        img[yy > hill] = (244, 246, 250)
        img[(yy > hill) & (yy < hill + 0.02)] = (200, 205, 215)
    elif scene == "city":
        img = _vertical_gradient(size, (160, 165, 175), (200, 200, 205))
        left = 0.0
        while left < 1.0:
            w, top = 0.12 + 0.12 * rng.random(), 0.25 + 0.45 * rng.random()
            block = (xx >= left) & (xx < left + w) & (yy > top)
            img[block] = (70 + 30 * rng.random(),) * 3
            windows = block & ((np.floor(xx * size / 3) % 2) == 0) & ((np.floor(yy * size / 3) % 3) == 0)
            img[windows] = (240, 210, 90)
            left += w
    elif scene == "desert":
        img = _vertical_gradient(size, (250, 170, 120), (250, 210, 160))
        dune = 0.55 + 0.07 * np.sin(xx * 7 + rng.random() * 6)
        img[yy > dune] = (214, 160, 90)
        img[yy > dune + 0.18 + 0.04 * np.sin(xx * 11 + rng.random() * 6)] = (190, 135, 70)
    elif scene == "meadow":
        img = _vertical_gradient(size, (130, 200, 250), (170, 220, 250))
        img[yy > 0.5] = (90, 170, 70)
        for _ in range(max(4, size // 6)):
            cx, cy = rng.random(), 0.55 + 0.45 * rng.random()
            img[min(int(cy * size), size - 1), min(int(cx * size), size - 1)] = (250, 250, 120)
    elif scene == "underwater":
        img = _vertical_gradient(size, (30, 140, 180), (10, 50, 100))
        for _ in range(5):
            _disc(img, rng.random(), rng.random(), 0.025, (150, 210, 235))
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def hash_scene(scene: str) -> int:
    # Stable across processes (Python's hash() is salted per process).
    return int.from_bytes(scene.encode()[:8].ljust(8, b"\0"), "little")
