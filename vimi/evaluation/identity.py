"""Who is in a SpriteWorld clip, measured from its pixels with what SpriteWorld knows (numpy/scipy only).

The feature network's identity heads reach ~0.25 on real clips; this measure inverts the rasterizer
(`vimi.world.render`) instead, and on real clips it is right nearly always:

1. **Background.** The clip's scene is known (the prompt's target scene). All `SCENE_VARIANTS`
   backgrounds of that scene are rendered at the clip's size (cached); the one closest to the clip's
   temporal median is its background. (The median alone is no background: a sprite that stays in
   place — spin, grow, pulse, shrink — is part of it.) Foreground: pixels farther than `FG_THRESHOLD`
   (RGB distance) from it, and farther than that less `EDGE_SLACK` from every blend of neighbouring
   background colours (a scene edge half a pixel off or blurred is no sprite). Noise raises the
   thresholds: `NOISE_FACTOR` × the median pixel's distance, and the palette tolerance likewise.
2. **Objects.** Foreground components per frame (`scipy.ndimage.label`, 8-connected, after a 3×3
   closing so that a sprite part-hidden by a colour like the background stays one piece). A
   component is an object when its area is plausible for sprite scales in `SCALE_RANGE`, it is
   compact, some of its pixels are palette colours (within `PURE_FACTOR` × the tolerance), one pair
   of palette colours explains at least `MIN_EXPLAINED` of its pixels as blends with the background,
   and a shape mask fits its silhouette with IoU >= `MIN_SHAPE_IOU`. A clip has a subject when most
   of its frames hold exactly one object and a rendering explains it (error <= `MAX_FIT_ERROR`);
   only then does it get colours, a shape and a pattern. Uniform noise, the scene's pixels shuffled,
   the scene under Gaussian noise and the empty scene have none; two sprites are not "exactly one".
3. **Shape.** An object's silhouette is the pixels a sprite covers at least half (coverage from the
   two palette colours that explain each edge pixel as a blend with the background; no holes). For
   each shape, angle (over the shape's own symmetry, `ANGLE_STEP`) and radius (from the area, times
   `RADIUS_FACTORS`) the rasterizer's `shape_mask` (tabulated once) at the pixel centres is scored by
   IoU; IoUs are summed over frames (a soft vote), the best `SHAPE_CANDIDATES` refined.
4. **Colours and pattern.** For the candidate shapes within `SHAPE_MARGIN` of the best vote, with each
   object's pose and every symmetric equivalent of its angle, every pattern is rendered as the
   rasterizer draws it (`shape_mask` for outline and body, `pattern_second_colour`; tabulated once,
   sampled 2×2 per pixel): background blended with the two colours by their coverage. All 132
   ordered palette pairs are scored at once (the squared error expands into a few matrix products);
   the best (shape, pattern, colour1, colour2) over `PATTERN_FRAMES` frames wins. This fit, not a
   colour histogram, names the colours: anti-aliased mixtures (red and yellow edges look orange) are
   explained as blends, and the order (body colour first) comes with the pattern.

What the world itself leaves open (no measure can do better):

* a solid square is, pixel for pixel, a solid diamond 6 % larger turned by 45° (patterned ones are
  not: stripes, checks, dots and the split line turn with the sprite) — most shape misses are these;
  at 32×32 a hexagon of radius ~5 px is also hard to tell from a circle;
* colour *order*: a split or striped sprite with colours (a, b) turned by 180° is the picture of (b, a),
  so on shapes with 180° symmetry (circle, square, diamond, hexagon, cross) color1/color2 are a coin
  toss there (color1 ≈ 0.89). The unordered `color_pair` is what the identity tuple holds.

Measured on the world generator's 256 evaluation clips (`ceiling`; docs/evaluation.md "The identity measure"):

    frame  subject  colour pair  shape  pattern  identity  color1   seconds (256 clips, 1 core)
    32×32   1.00       0.996     0.977   1.00     0.973     0.89       ~3
    64×64   1.00       1.00      0.996   1.00     0.996     0.89       ~7
    16×16   0.86       0.80      0.67    0.82     0.64      0.72       ~2   (sprite_scale 1, supersample 2)
    16×16   0.98       0.953     0.930   0.961    0.914     0.88       ~3   (sprite_scale 2: the tiny world)

(the tiny world, per split: colour pair seen 0.922 / unseen 0.984, identity 0.875 / 0.953; its misses
are spin and shrink, whose largest sprites touch the 16-pixel frame's edges).

(per split at 32×32: colour pair seen 0.992 / unseen 1.00, identity 0.969 / 0.977). Degraded copies
of the 32×32 clips (what a generator might produce) keep most of it: Gaussian noise σ=8 → identity 0.94,
σ=16 → 0.84; blur σ=0.5 px → 0.84; a colour cast of σ=10 → 0.93. Not caught: blocky patches of the
scene's own colours that pass for palette colours (snow for white, leaves for green) read as a sprite
in ~2 of 1,000 such made-up clips.

Pattern decision: the pattern is recovered on all real clips whose sprites have the radius of 32×32
frames at scale 1 (~5 px) or more: 32×32 and 64×64, and 16×16 at sprite_scale 2 (at 16×16 and scale 1,
stripes and checks ~1 px and dots under a pixel, on 0.82). So the identity tuple is colour pair + shape
+ pattern from frame side × sprite scale `PATTERN_MIN_FRAME_SIZE` (32) up and colour pair + shape below
(`identity_attributes(frame_size, sprite_scale)`; `IDENTITY_INCLUDES_PATTERN`: in the tiny world). The
pattern is scored at every size.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from vimi.errors import VimiError
from vimi.world.catalog import COLORS, PATTERNS, SCENES, SHAPES
from vimi.world.render import _BORDER, BASE_RADIUS, pattern_second_colour, render_scene, shape_mask

SCENE_VARIANTS = 16  # = vimi.world.generate.SCENE_VARIANTS (not imported: that module pulls in Lance)

FG_THRESHOLD = 30.0  # RGB distance from the background above which a pixel is foreground
EDGE_SLACK = 15.0  # ... and from a blend of neighbouring background colours, less this
NOISE_FACTOR = 3.0  # with noise: foreground beyond this many times the median pixel's distance
PALETTE_THRESHOLD = 20.0  # RGB distance within which a pixel is explained by palette colours
PALETTE_NOISE_FACTOR = 2.0  # with noise: this many times the median distance (up to twice the above)
PURE_FACTOR = 1.5  # a "pure" palette pixel: within this many times that tolerance
MIN_PALETTE_PIXELS = 1  # pure palette pixels an object needs ...
MIN_PALETTE_FRACTION = 0.05  # ... and this share of its pixels (small patterned sprites are mostly edges)
COLOUR_SAMPLE = 48  # inner pixels of an object read by the colour check (its edge: all)
MIN_EXPLAINED = 0.6  # share of an object's pixels one palette pair explains (blends with the background)
MIN_SHAPE_IOU = 0.5  # of the best shape mask (detection sweep) with an object's silhouette
MAX_FIT_ERROR = 0.6  # of the best rendering: squared error / the change, less noise (real clips: <= 0.37)
SCALE_RANGE = (0.5, 2.0)  # sprite scales an object may have (clips: 0.54-1.8)
ANGLE_STEP = 7.5  # degrees, the shape sweep
DETECT_STRIDE = 2  # detection uses every second angle of it
REFINE_STEPS = 1  # refinement: sweep angles either side of the best one, at every radius
RADIUS_FACTORS = (0.92, 1.0, 1.08)  # the radius from the area, times these
SHAPE_CANDIDATES = 3  # shapes refined on the pattern frames
SHAPE_MARGIN = 0.03  # IoU per frame: candidates this close to the best vote get a pattern fit
PATTERN_FRAMES = 4  # frames (best shape fit first) of the refinement and the pattern fit
PATTERN_SUPERSAMPLE = 2  # samples per pixel side when rendering patterns
PATTERN_ANGLE_OFFSETS = (0.0,)  # degrees around the shape fit's angle (finer: no better, measured)
PATTERN_MIN_FRAME_SIZE = 32  # the pattern joins the identity tuple from this frame side × sprite scale up

IDENTITY_ATTRIBUTES = ("color_pair", "shape", "pattern")  # from PATTERN_MIN_FRAME_SIZE up
IDENTITY_ATTRIBUTES_SMALL = ("color_pair", "shape")  # below it
IDENTITY_INCLUDES_PATTERN = True  # in the tiny world (16×16 at sprite_scale 2) and larger
SCORED_ATTRIBUTES = ("color_pair", "color1", "color2", "shape", "pattern", "identity")
TRUTH_KEYS = ("scene", "shape", "color1", "color2", "pattern")

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], np.float32)  # C×3
_PALETTE_NORM = (_PALETTE * _PALETTE).sum(1)
_GRAM = _PALETTE @ _PALETTE.T
_PAIRS = np.array([(a, b) for a in range(len(_PALETTE)) for b in range(len(_PALETTE)) if a != b])
_PAIRS_UNORDERED = _PAIRS[_PAIRS[:, 0] < _PAIRS[:, 1]]
_PATTERN_NAMES = tuple(PATTERNS)
_FRAME_CONNECTIVITY = np.stack([np.zeros((3, 3), bool), np.ones((3, 3), bool), np.zeros((3, 3), bool)])


def identity_attributes(frame_size: int, sprite_scale: float = 1.0) -> tuple[str, ...]:
    """The attributes that make up a clip's identity at this frame side and the world's sprite scale
    (`world.sprite_scale`): the pattern from sprites of PATTERN_MIN_FRAME_SIZE's radius up."""
    large = frame_size * sprite_scale >= PATTERN_MIN_FRAME_SIZE
    return IDENTITY_ATTRIBUTES if large else IDENTITY_ATTRIBUTES_SMALL


@dataclass
class ClipIdentity:
    subject_found: bool
    objects_per_frame: list[int]
    color1: str | None = None
    color2: str | None = None
    shape: str | None = None
    pattern: str | None = None
    shape_iou: float = 0.0  # mean IoU of the shape's mask with the silhouette, on the fitted frames
    positions: list[tuple[float, float] | None] = field(default_factory=list)  # sprite centre in [0, 1]
    fit_error: float = float("nan")  # squared error of the best rendering / the sprite's squared change
    frame_size: int = 0
    background_variant: int = -1
    sprite_scale: float = 1.0  # the world's (world.sprite_scale): sprites' size, times the base radius

    @property
    def color_pair(self) -> frozenset[str] | None:
        return frozenset((self.color1, self.color2)) if self.color1 and self.color2 else None

    @property
    def mean_objects(self) -> float:
        return float(np.mean(self.objects_per_frame)) if self.objects_per_frame else 0.0


# ---------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Shape:
    name: str
    area: float  # in sprite radius² units
    centroid: tuple[float, float]  # (u, v) of the silhouette's centroid, local coordinates
    symmetry: int  # n: turning by 360/n about the centroid maps it onto itself; 0: any turn
    n_angles: int  # angles of _SWEEP that cover one period of the symmetry


_SWEEP = np.arange(0.0, 360.0, ANGLE_STEP, dtype=np.float32)
_TEMPLATE_SIZE = 192  # shape templates: pixels per side
_TEMPLATE_REACH = 1.3  # ... covering ±this, in units of sqrt(area) around the centroid
_MAP_SIZE = 320  # pattern maps: pixels per side
_MAP_REACH = 1.15  # ... covering ±this sprite radii around the sprite's centre


def _turn(u, v, degrees):
    t = np.deg2rad(degrees)
    return np.cos(t) * u + np.sin(t) * v, -np.sin(t) * u + np.cos(t) * v


@lru_cache(maxsize=None)
def _shapes() -> tuple[_Shape, ...]:
    """Area, centroid and rotational symmetry of each shape, measured on the rasterizer's own masks."""
    n = 256
    g = ((np.arange(n) + 0.5) / n * 2.4 - 1.2).astype(np.float32)
    u, v = np.meshgrid(g, -g)
    out = []
    for name in SHAPES:
        m = shape_mask(name, u, v)
        area = float(m.sum() * (2.4 / n) ** 2)
        u0, v0 = float(u[m].mean()), float(v[m].mean())

        def iou_turned(deg: float) -> float:
            ru, rv = _turn(u - u0, v - v0, deg)
            r = shape_mask(name, (ru + u0).astype(np.float32), (rv + v0).astype(np.float32))
            return float((m & r).sum() / max((m | r).sum(), 1))

        if iou_turned(17.0) > 0.98 and iou_turned(41.0) > 0.98:
            symmetry, n_angles = 0, 1
        else:
            symmetry = max(k for k in range(1, 9) if iou_turned(360.0 / k) > 0.98)
            n_angles = int(math.ceil(360.0 / symmetry / ANGLE_STEP))
        out.append(_Shape(name, area, (u0, v0), symmetry, n_angles))
    return tuple(out)


def _grid(size: int, reach: float) -> tuple[np.ndarray, np.ndarray]:
    g = (((np.arange(size) + 0.5) / size * 2 - 1) * reach).astype(np.float32)
    return np.meshgrid(g, g)  # (columns: u, rows: v), v up


@lru_cache(maxsize=None)
def _templates() -> np.ndarray:
    """S×(G+2)²: each shape's `shape_mask` at angle 0 on area-normalised coordinates (offset from the
    centroid / sqrt(area)), with a False border (what lies beyond the grid)."""
    a, b = _grid(_TEMPLATE_SIZE, _TEMPLATE_REACH)
    out = np.zeros((len(SHAPES), _TEMPLATE_SIZE + 2, _TEMPLATE_SIZE + 2), bool)
    for k, s in enumerate(_shapes()):
        scale = np.float32(math.sqrt(s.area))
        out[k, 1:-1, 1:-1] = shape_mask(
            s.name, a * scale + np.float32(s.centroid[0]), b * scale + np.float32(s.centroid[1])
        )
    return out.reshape(len(SHAPES), -1)


@lru_cache(maxsize=None)
def _pattern_maps() -> np.ndarray:
    """S×N×(G+2)² uint8 in local sprite coordinates: 0 outside the sprite, 1 its first colour, 2 its
    second — exactly what `draw_sprite` paints (`shape_mask`, the body, `pattern_second_colour`)."""
    u, v = _grid(_MAP_SIZE, _MAP_REACH)
    out = np.zeros((len(SHAPES), len(_PATTERN_NAMES), _MAP_SIZE + 2, _MAP_SIZE + 2), np.uint8)
    for k, name in enumerate(SHAPES):
        inside = shape_mask(name, u, v)
        body = shape_mask(name, u / np.float32(_BORDER), v / np.float32(_BORDER))
        for i, pattern in enumerate(_PATTERN_NAMES):
            second = pattern_second_colour(pattern, u, v, body)
            out[k, i, 1:-1, 1:-1] = np.where(inside, np.where(second, 2, 1), 0)
    return out.reshape(len(SHAPES), len(_PATTERN_NAMES), -1)


def _lookup(u: np.ndarray, v: np.ndarray, size: int, reach: float) -> np.ndarray:
    """Flat indices into a (size+2)² table of coordinates (u, v); the border beyond the grid."""
    scale = np.float32(size / (2 * reach))
    ix = np.clip((u + np.float32(reach)) * scale, -1, size).astype(np.int32) + 1
    iy = np.clip((v + np.float32(reach)) * scale, -1, size).astype(np.int32) + 1
    return iy * (size + 2) + ix


def _crop(cx: float, cy: float, half: float, side: int):
    x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)), side)
    y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)), side)
    return y0, y1, x0, x1


@dataclass
class _Object:
    frame: int
    mask: np.ndarray  # side×side bool: its silhouette
    cx: float  # the silhouette's centroid, px (pixel centres at i + 0.5)
    cy: float
    area: int  # silhouette pixels
    ious: np.ndarray  # per shape: the best IoU found
    poses: list  # per shape: (radius px, angle) of that fit


def _new_object(frame: int, mask: np.ndarray) -> _Object:
    ys, xs = np.nonzero(mask)
    return _Object(
        frame,
        mask,
        float(xs.mean()) + 0.5,
        float(ys.mean()) + 0.5,
        len(xs),
        np.zeros(len(SHAPES)),
        [None] * len(SHAPES),
    )


def _fit_shapes(o: _Object, which: Sequence[int], factors: Sequence[float], refine: bool) -> None:
    """Best IoU of each shape in `which` with the object's silhouette, over radii (the area's times
    `factors`) and angles, into o.ious / o.poses.

    Detection (`refine=False`): every DETECT_STRIDE-th angle of the sweep; only the silhouette's pixels
    are looked up, and the mask's own pixel count is taken to be its area, f²·area (the templates have
    unit area) — right up to how its edge falls on the pixel grid. Refinement: the mask's pixels
    counted exactly in a crop around it; every angle of the shape's period at the area's radius, then
    the radii about the best angle."""
    norm = math.sqrt(o.area)
    if refine:
        half = _TEMPLATE_REACH * norm * max(factors) * 0.8 + 1.0
        y0, y1, x0, x1 = _crop(o.cx, o.cy, half, o.mask.shape[0])
        gy, gx = np.mgrid[y0:y1, x0:x1]
        ys, xs = gy.ravel(), gx.ravel()
        seen = o.mask[y0:y1, x0:x1].ravel()
        outside = o.area - int(seen.sum())  # silhouette beyond the crop: counts as missed
    else:
        ys, xs = np.nonzero(o.mask)
    dx = ((xs + 0.5 - o.cx) / norm).astype(np.float32)
    dy = (-(ys + 0.5 - o.cy) / norm).astype(np.float32)

    def lookup(angles: np.ndarray, scales: Sequence[float]) -> np.ndarray:  # F×A×P
        t = np.deg2rad(angles)[:, None]
        c, s = np.cos(t).astype(np.float32), np.sin(t).astype(np.float32)
        f = np.array(scales, np.float32)[:, None, None]
        return _lookup((c * dx + s * dy)[None] / f, (-s * dx + c * dy)[None] / f, _TEMPLATE_SIZE, _TEMPLATE_REACH)

    def exact_iou(pred: np.ndarray) -> np.ndarray:
        inter = pred[..., seen].sum(-1)
        return inter / (pred.sum(-1) + o.area - inter + outside)

    shared = None if refine else lookup(_SWEEP[::DETECT_STRIDE], factors)
    templates = _templates()
    for k in which:
        shape = _shapes()[k]
        if refine:  # every angle of the period at the area's radius, then radii about the best one
            iou = exact_iou(templates[k][lookup(_SWEEP[: shape.n_angles], (1.0,))])
            a0 = int(np.argmax(iou[0]))
            index = np.unique((a0 + np.arange(-REFINE_STEPS, REFINE_STEPS + 1)) % len(_SWEEP))
            iou = exact_iou(templates[k][lookup(_SWEEP[index], factors)])
        else:
            index = np.arange(0, shape.n_angles, DETECT_STRIDE)
            inter = templates[k][shared[:, : len(index)]].sum(-1)
            iou = inter / ((np.array(factors) ** 2 * o.area)[:, None] + o.area - inter)
        j, a = np.unravel_index(int(np.argmax(iou)), iou.shape)
        o.ious[k] = iou[j, a]
        o.poses[k] = (norm / math.sqrt(shape.area) * factors[j], float(_SWEEP[index[a]]))


# ------------------------------------------------------------------------------ backgrounds


@lru_cache(maxsize=64)
def _backgrounds(scene: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All variants of a scene at this size (V×size×size×3 float32), and per variant and pixel the
    colour steps towards its 4 neighbours (V×4×size×size×3) with their squared lengths."""
    bgs = np.stack([render_scene(scene, size, v) for v in range(SCENE_VARIANTS)]).astype(np.float32)
    pad = np.pad(bgs, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    toward = np.stack(
        [pad[:, 1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size] - bgs for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))],
        axis=1,
    )
    return bgs, toward, (toward * toward).sum(-1)


def _check_scene(scene: Any) -> str:
    if not isinstance(scene, str) or scene not in SCENES:
        raise VimiError(f"Unknown SpriteWorld scene {scene!r}; the scenes are {', '.join(SCENES)}.")
    return scene


def _check_clip(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        what = (
            f"{frames.dtype} array of shape {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        )
        raise VimiError(f"A clip to measure must be a T×H×W×3 uint8 array, got a {what}.")
    t, h, w, _ = frames.shape
    if t < 1 or h != w or h < 8:
        raise VimiError(
            f"A clip to measure needs square frames of at least 8×8 (the size SpriteWorld's scenes "
            f"render at), got {t} frame(s) of {h}×{w}."
        )
    return frames


# ---------------------------------------------------------------------------------- measuring


def _plausible_area(side: int, sprite_scale: float = 1.0) -> tuple[float, float]:
    areas = [s.area for s in _shapes()]
    lo = min(areas) * (BASE_RADIUS * SCALE_RANGE[0] * sprite_scale * side) ** 2 * 0.5
    hi = max(areas) * (BASE_RADIUS * SCALE_RANGE[1] * sprite_scale * side) ** 2 * 1.3 + 4
    return max(lo, 3.0), hi


def _near_palette(pixels: np.ndarray, tolerance: float) -> np.ndarray:
    """Per pixel (N×3 float), whether a palette colour is within `tolerance`."""
    d = ((pixels[:, None, :] - _PALETTE[None]) ** 2).sum(-1).min(1)
    return d < tolerance**2


def _coverage(pixels: np.ndarray, background: np.ndarray, tolerance: float) -> tuple[np.ndarray, float]:
    """Per pixel (N×3), how much of it a sprite covers: pixel = background + a·(colour_a - background)
    + b·(colour_b - background) for the two palette colours that explain it best, coverage a + b; and
    the largest share of the pixels that one pair of colours explains (within `tolerance`)."""
    e = pixels - background  # N×3
    bc = background @ _PALETTE.T  # N×C
    bb = (background * background).sum(1)[:, None]
    ec = e @ _PALETTE.T - (e * background).sum(1)[:, None]  # e·(colour - bg)
    cc = _PALETTE_NORM[None] - 2 * bc + bb  # |colour - bg|²
    ee = (e * e).sum(1)[:, None]
    i, j = _PAIRS_UNORDERED[:, 0], _PAIRS_UNORDERED[:, 1]
    aa, bq, ea, eb = cc[:, i], cc[:, j], ec[:, i], ec[:, j]  # N×Q
    ab = _GRAM[i, j][None] - bc[:, i] - bc[:, j] + bb  # (a - bg)·(b - bg)
    # least squares for the two shares per pair (2×2 normal equations) ...
    det = aa * bq - ab * ab
    ok = det > 1e-3 * aa * bq + 1e-6
    safe = np.where(ok, det, 1.0)
    a = np.where(ok, (ea * bq - eb * ab) / safe, -1.0)
    b = np.where(ok, (eb * aa - ea * ab) / safe, -1.0)
    # ... or one colour alone where that leaves the triangle (shares >= 0, summing to <= 1)
    outside = (a < 0) | (b < 0) | (a + b > 1)
    sa = np.clip(ea / np.maximum(aa, 1.0), 0.0, 1.0)
    sb = np.clip(eb / np.maximum(bq, 1.0), 0.0, 1.0)
    ra, rb = ee - 2 * sa * ea + sa * sa * aa, ee - 2 * sb * eb + sb * sb * bq
    use_a = outside & (ra <= rb)
    use_b = outside & ~use_a
    a = np.where(use_a, sa, np.where(use_b, 0.0, a))
    b = np.where(use_b, sb, np.where(use_a, 0.0, b))
    residual = ee - 2 * a * ea - 2 * b * eb + a * a * aa + b * b * bq + 2 * a * b * ab
    best = residual.argmin(1)
    explained = float((residual <= tolerance**2).mean(0).max())
    return (a + b)[np.arange(len(e)), best], explained


def _objects(
    clip: np.ndarray, bg: np.ndarray, fg: np.ndarray, tolerance: float, sprite_scale: float = 1.0
) -> list[list[_Object]]:
    """Per frame, its sprite-like foreground components (coarsely fitted to every shape)."""
    t, side = fg.shape[:2]
    closed = fg | ndimage.binary_closing(fg, structure=np.ones((1, 3, 3), bool))
    labels, _ = ndimage.label(closed, structure=_FRAME_CONNECTIVITY)
    lo, hi = _plausible_area(side, sprite_scale)
    everything = range(len(SHAPES))
    found: list[list[_Object]] = [[] for _ in range(t)]
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        f = sl[0].start
        hgt, wid = sl[1].stop - sl[1].start, sl[2].stop - sl[2].start
        if hgt * wid < lo or max(hgt, wid) > 3.5 * min(hgt, wid):
            continue
        window = (f, sl[1], sl[2])
        part = (labels[window] == label) & fg[window]
        n = int(part.sum())
        if not lo <= n <= hi or n < 0.25 * hgt * wid:
            continue  # implausible size, not compact
        pixels = clip[window][part]
        if _near_palette(pixels, tolerance * PURE_FACTOR).sum() < max(MIN_PALETTE_PIXELS, MIN_PALETTE_FRACTION * n):
            continue  # no palette colour in it
        # The silhouette: pixels the sprite covers at least half (as shape masks at pixel centres
        # are), not all it changed by more than FG_THRESHOLD (about half a pixel wider all round).
        # Coverage matters on the edge only; the colour check reads the edge and some of the inside.
        interior = ndimage.binary_erosion(part, border_value=0)
        edge = part & ~interior
        inner = np.flatnonzero(interior)
        sample = np.zeros(hgt * wid, bool)
        sample[edge.ravel()] = True
        sample[inner[:: max(1, len(inner) // COLOUR_SAMPLE)]] = True
        sample = sample.reshape(hgt, wid)
        alpha = np.ones((hgt, wid), np.float32)
        alpha[sample], explained = _coverage(clip[window][sample], bg[sl[1], sl[2]][sample], tolerance)
        if explained < MIN_EXPLAINED:
            continue  # not one sprite's two colours
        # (No shape has a hole: one in the silhouette is a sprite colour too close to the background.)
        silhouette = ndimage.binary_fill_holes(part & ((alpha >= 0.5) | interior))
        if silhouette.sum() < lo:
            continue
        mask = np.zeros((side, side), bool)
        mask[sl[1], sl[2]] = silhouette
        o = _new_object(f, mask)
        _fit_shapes(o, everything, (1.0,), refine=False)
        if o.ious.max() >= MIN_SHAPE_IOU:
            found[f].append(o)
    return found


def measure_clip(frames: np.ndarray, scene: str, sprite_scale: float = 1.0) -> ClipIdentity:
    """The subject of one clip (T×H×W×3 uint8) filmed in `scene`, as SpriteWorld's rasterizer would
    draw it in a world of `sprite_scale` (`world.sprite_scale`)."""
    frames = _check_clip(frames)
    scene = _check_scene(scene)
    with _one_blas_thread():
        return _measure(frames, scene, _check_scale(sprite_scale))


def _check_scale(sprite_scale: Any) -> float:
    if (
        isinstance(sprite_scale, bool)
        or not isinstance(sprite_scale, (int, float))
        or not 0.25 <= float(sprite_scale) <= 4
    ):
        raise VimiError(f"The sprite scale to measure at must be a number in [0.25, 4], got {sprite_scale!r}.")
    return float(sprite_scale)


def measure_clips(
    clips: np.ndarray | Sequence[np.ndarray], scenes: Sequence[str], workers: int = 1, sprite_scale: float = 1.0
) -> list[ClipIdentity]:
    """`measure_clip` for each clip and its scene (~12 ms a clip of 8×32×32, ~30 ms at 64×64, on one
    core; `workers` > 1 spreads chunks of clips over that many processes, which pays only on idle
    cores and from a few thousand clips)."""
    if len(clips) != len(scenes):
        raise VimiError(f"{len(clips)} clip(s) but {len(scenes)} scene(s) to measure them in.")
    scale = _check_scale(sprite_scale)
    checked = [(_check_clip(c), _check_scene(s), scale) for c, s in zip(clips, scenes)]
    if workers > 1 and len(checked) > _CHUNK:
        from vimi.parallel import ordered_map

        chunks = [checked[i : i + _CHUNK] for i in range(0, len(checked), _CHUNK)]
        return [m for part in ordered_map(_measure_chunk, chunks, workers, processes=True) for m in part]
    return _measure_chunk(checked)


_CHUNK = 256


def _measure_chunk(checked: list[tuple[np.ndarray, str, float]]) -> list[ClipIdentity]:
    with _one_blas_thread():
        return [_measure(c, s, k) for c, s, k in checked]


def _foreground(
    frames: np.ndarray, scene: str, side: int, variant: int, threshold: float, plain: np.ndarray | None = None
) -> np.ndarray:
    """Which pixels of frames (…×H×W×3) are farther than `threshold` from the background variant —
    from its colour there and, by more than EDGE_SLACK, from every blend of that and a 4-neighbour's
    colour: a scene edge half a pixel off, or blurred (a generated clip), is no foreground, and a
    sprite's pixel beside a scene edge stays foreground unless it is nearly that blend. `plain`: the
    distances from the background's colour, when known."""
    bgs, toward, norm2 = _backgrounds(scene, side)
    e = frames - bgs[variant]
    if plain is None:
        plain = np.sqrt((e * e).sum(-1))
    fg = plain > threshold
    where = np.nonzero(fg)
    if not len(where[0]):
        return fg
    pixel = where[-2:]  # (rows, columns)
    ex = e[where]  # N×3
    d = toward[variant][(slice(None), *pixel)]  # 4×N×3
    share = np.clip((d * ex).sum(-1) / np.maximum(norm2[variant][(slice(None), *pixel)], 1e-6), 0.0, 1.0)
    r = ex[None] - share[..., None] * d
    edge = np.sqrt((r * r).sum(-1).min(0))
    fg[where] = edge + EDGE_SLACK > threshold
    return fg


def _measure(frames: np.ndarray, scene: str, sprite_scale: float = 1.0) -> ClipIdentity:
    t, side = frames.shape[0], frames.shape[1]
    clip = frames.astype(np.float32)
    bgs = _backgrounds(scene, side)[0]
    median = np.median(clip, axis=0)
    plain = np.sqrt(((bgs - median[None]) ** 2).sum(-1))  # V×H×W
    likely = np.argsort((plain > FG_THRESHOLD).sum((1, 2)))[:3]
    far = [_foreground(median, scene, side, int(v), FG_THRESHOLD, plain[v]).sum() for v in likely]
    variant = int(likely[int(np.argmin(far))])
    bg = bgs[variant]
    distance = np.sqrt(((clip - bg[None]) ** 2).sum(-1))  # T×H×W
    # Noise (a generated clip's) raises the thresholds: the typical distance of a background pixel.
    noise = float(np.median(distance))
    fg = _foreground(clip, scene, side, variant, max(FG_THRESHOLD, NOISE_FACTOR * noise), distance)
    found = _objects(
        clip, bg, fg, min(max(PALETTE_THRESHOLD, PALETTE_NOISE_FACTOR * noise), 2 * PALETTE_THRESHOLD), sprite_scale
    )
    single = [objs[0] for objs in found if len(objs) == 1]
    result = ClipIdentity(
        subject_found=len(single) * 2 > t,
        objects_per_frame=[len(o) for o in found],
        frame_size=side,
        background_variant=variant,
        positions=[None] * t,
        sprite_scale=sprite_scale,
    )
    if not result.subject_found:
        return result

    shapes = _shapes()
    coarse = np.sum([o.ious for o in single], axis=0)
    candidates = [int(k) for k in np.argsort(-coarse)[:SHAPE_CANDIDATES]]
    used = sorted(single, key=lambda o: -o.ious.max())[:PATTERN_FRAMES]
    for o in used:
        _fit_shapes(o, candidates, RADIUS_FACTORS, refine=True)
    fine = {k: sum(o.ious[k] for o in used) for k in candidates}
    top = max(fine.values())
    best = None
    for k in candidates:
        if fine[k] < top - SHAPE_MARGIN * len(used):
            continue
        error, pattern, c1, c2 = _fit_pattern(clip, bg, k, used, noise)
        if best is None or error < best[0]:
            best = (error, k, pattern, c1, c2)
    error, k, pattern, c1, c2 = best
    if error > MAX_FIT_ERROR:  # no sprite the rasterizer could draw looks like this
        result.subject_found, result.fit_error = False, error
        return result
    result.pattern, result.color1, result.color2, result.fit_error = pattern, c1, c2, error
    result.shape = shapes[k].name
    result.shape_iou = float(fine[k] / len(used))
    for o in single:
        result.positions[o.frame] = _sprite_centre(shapes[k], o, k, side)
    return result


def _sprite_centre(shape: _Shape, o: _Object, k: int, side: int) -> tuple[float, float]:
    r, angle = o.poses[k]
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    u0, v0 = shape.centroid
    return ((o.cx - r * (c * u0 - s * v0)) / side, (o.cy + r * (s * u0 + c * v0)) / side)


def _fit_pattern(
    clip: np.ndarray, bg: np.ndarray, k: int, objects: list[_Object], noise: float = 0.0
) -> tuple[float, str, str, str]:
    """The (pattern, colour1, colour2) whose rendering best explains the objects' frames given shape k
    and each object's pose, with its error: the squared error summed over the frames (on the same
    pixels for every shape), as a share of the squared change from the background, less noise."""
    shape = _shapes()[k]
    maps = _pattern_maps()[k]  # N×(G+2)²
    ss = PATTERN_SUPERSAMPLE
    side = clip.shape[1]
    reach = 1.1 / math.sqrt(min(s.area for s in _shapes()))  # the widest shape, around its centroid
    total = np.zeros((len(_PATTERN_NAMES), len(_PAIRS)))
    changed, pixels = 0.0, 0
    pa, pb = _PAIRS[:, 0], _PAIRS[:, 1]
    for o in objects:
        r, angle = o.poses[k]
        if shape.symmetry == 0:
            angles = np.arange(0.0, 360.0, 10.0)
        else:
            angles = angle + np.arange(shape.symmetry) * 360.0 / shape.symmetry
            angles = (angles[:, None] + np.array(PATTERN_ANGLE_OFFSETS)[None]).ravel()
        y0, y1, x0, x1 = _crop(o.cx, o.cy, reach * math.sqrt(o.area) + 1.0, side)
        h, w = y1 - y0, x1 - x0
        sub = (np.arange(ss) + 0.5) / ss
        py = (np.arange(y0, y1)[:, None] + sub[None]).ravel()
        px = (np.arange(x0, x1)[:, None] + sub[None]).ravel()
        gy, gx = np.meshgrid(py, px, indexing="ij")
        dx = ((gx.ravel() - o.cx) / r).astype(np.float32)[None]
        dy = (-(gy.ravel() - o.cy) / r).astype(np.float32)[None]
        t = np.deg2rad(angles)[:, None]
        c, s = np.cos(t).astype(np.float32), np.sin(t).astype(np.float32)
        u = c * dx + s * dy + np.float32(shape.centroid[0])
        v = -s * dx + c * dy + np.float32(shape.centroid[1])
        painted = maps[:, _lookup(u, v, _MAP_SIZE, _MAP_REACH)]  # N×A×(h·ss)(w·ss): 0, 1, 2

        def cover(m):  # N×A×(h·ss)(w·ss) bool -> N×A×(h·w): the share of each pixel
            m = m.reshape(*m.shape[:2], h, ss, w, ss).view(np.uint8)
            n = sum(m[:, :, :, i, :, j] for i in range(ss) for j in range(ss))
            return n.reshape(*m.shape[:2], h * w).astype(np.float32) * np.float32(1 / ss**2)

        first, second = cover(painted == 1), cover(painted == 2)  # N×A×P
        # err(a, b) = sum over pixels of |e - c1·(colour_a - bg) - c2·(colour_b - bg)|², expanded so that
        # every term is a coverage times a per-pixel table over the 12 colours.
        b = bg[y0:y1, x0:x1].reshape(-1, 3)
        e = clip[o.frame, y0:y1, x0:x1].reshape(-1, 3) - b  # P×3: what the sprite changed
        bc = b @ _PALETTE.T  # P×C
        bb = (b * b).sum(1)
        ed = e @ _PALETTE.T - (e * b).sum(1)[:, None]  # e·(colour - bg)
        dd = _PALETTE_NORM[None] - 2 * bc + bb[:, None]  # |colour - bg|²
        both = first * second
        wbc = both @ bc
        cross = (
            _GRAM[pa, pb] * both.sum(-1)[..., None] - wbc[..., pa] - wbc[..., pb] + (both @ bb)[..., None]
        )  # sum c1·c2·(a - bg)·(b - bg)
        ced1, ced2 = first @ ed, second @ ed
        cdd1, cdd2 = (first * first) @ dd, (second * second) @ dd
        changed += float((e * e).sum())
        pixels += len(e)
        err = (
            float((e * e).sum()) - 2 * ced1[..., pa] - 2 * ced2[..., pb] + cdd1[..., pa] + cdd2[..., pb] + 2 * cross
        )  # N×A×Q
        total += err.min(1)  # the best angle, per pattern and pair
    i, q = np.unravel_index(int(np.argmin(total)), total.shape)
    # The share of the change the rendering leaves unexplained, less what noise alone leaves: per pixel
    # 3σ², σ from the median background distance (that of a 3-D Gaussian is 1.54σ).
    floor = pixels * 3 * (noise / 1.54) ** 2
    error = max(float(total[i, q]) - floor, 0.0) / max(changed - floor, 1.0)
    return error, _PATTERN_NAMES[i], _COLOR_NAMES[pa[q]], _COLOR_NAMES[pb[q]]


@contextmanager
def _one_blas_thread():
    """The fits' matrix products are tiny: BLAS threads would only wait for each other (10-100× slower
    on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ------------------------------------------------------------------------------------ scoring


def missing_truth(target: dict) -> list[str]:
    """The ground-truth keys a clip's row lacks (none: a SpriteWorld clip the measure can score)."""
    return [k for k in TRUTH_KEYS if not target.get(k)]


def metric_name(key: str) -> str:
    """A scored key's metric: subject_there → subject_there_rate, an attribute → `<attribute>_accuracy`."""
    return "subject_there_rate" if key == "subject_there" else f"{key}_accuracy"


def _check_target(i: int, target: Any) -> dict:
    if not isinstance(target, dict):
        raise VimiError(f"Target {i} is a {type(target).__name__}, not a dict of SpriteWorld ground truth.")
    missing = missing_truth(target)
    if missing:
        raise VimiError(
            f"Target {i} has no SpriteWorld ground truth for {', '.join(missing)} (identity is measured "
            "on SpriteWorld clips only)."
        )
    _check_scene(target["scene"])
    return target


def score(measured: Sequence[ClipIdentity], targets: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per clip booleans: subject_there, color1, color2, color_pair, shape, pattern, identity."""
    if len(measured) != len(targets):
        raise VimiError(f"{len(measured)} measured clip(s) but {len(targets)} target(s).")
    targets = [_check_target(i, t) for i, t in enumerate(targets)]
    out: dict[str, list[bool]] = {k: [] for k in ("subject_there", *SCORED_ATTRIBUTES)}
    for m, t in zip(measured, targets):
        right = {
            "subject_there": bool(m.subject_found),
            "color1": m.color1 == t["color1"],
            "color2": m.color2 == t["color2"],
            "color_pair": m.color_pair == frozenset((t["color1"], t["color2"])),
            "shape": m.shape == t["shape"],
            "pattern": m.pattern == t["pattern"],
        }
        right["identity"] = all(right[a] for a in identity_attributes(m.frame_size, m.sprite_scale))
        for k, v in right.items():
            out[k].append(bool(v) and bool(m.subject_found))
    return {k: np.array(v, dtype=bool) for k, v in out.items()}


def summarize(right: dict[str, np.ndarray], splits: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Shares of clips right per attribute, overall and per subject split (seen / unseen)."""
    n = len(right["subject_there"])
    out: dict[str, Any] = {"clips": n}
    split = np.array([s or "" for s in splits]) if splits is not None else None
    for key, values in right.items():
        name = metric_name(key)
        out[name] = float(values.mean()) if n else float("nan")
        if split is not None:
            for s in ("seen", "unseen"):
                if (split == s).any():
                    out[f"{name}_{s}"] = float(values[split == s].mean())
    return out


def evaluation_metrics(
    right: dict[str, np.ndarray], tasks: Sequence[str], splits: Sequence[str | None], suffix: str = ""
) -> dict[str, float]:
    """The evaluation's keys (`suffix` "_real" for the real clips' ceiling): subject_there_rate overall
    and per task (`subject_there_rate_prediction`); per attribute and subject split,
    `{attribute}_accuracy_{split}` on the subject-driven task (`identity_accuracy_unseen`, as before)
    and `{attribute}_accuracy_{task}_{split}` on the others."""
    tasks = np.array(tasks)
    split = np.array([s or "" for s in splits])
    out: dict[str, float] = {}
    there = right["subject_there"]
    if len(there):
        out[f"subject_there_rate{suffix}"] = float(there.mean())
    for task in sorted(set(tasks.tolist())):
        in_task = tasks == task
        out[f"subject_there_rate_{task}{suffix}"] = float(there[in_task].mean())
        for s in ("seen", "unseen"):
            mask = in_task & (split == s)
            if not mask.any():
                continue
            for attribute in SCORED_ATTRIBUTES:
                infix = "" if task == "subject" else f"_{task}"
                out[f"{attribute}_accuracy{infix}_{s}{suffix}"] = float(right[attribute][mask].mean())
    return out


def ceiling(
    eval_videos_uri: str | Path, limit: int | None = None, workers: int = 1, sprite_scale: float = 1.0
) -> dict[str, Any]:
    """The measure on every real clip of a SpriteWorld video dataset (Lance; `limit`: the first clips
    only; `sprite_scale`: the world's) — per-attribute accuracies overall and per subject split, the
    ceiling that generated clips are read against (docs/evaluation.md)."""
    from vimi.io import lance_io
    from vimi.io.video import VideoDecodeError, decode_video

    start = time.perf_counter()
    dataset = lance_io.open_dataset(eval_videos_uri, "evaluation clips")
    names = set(dataset.schema.names)
    need = {"id", "video", "video_format", "num_frames", "height", "width", *TRUTH_KEYS, "subject_split"}
    if not need <= names:
        raise VimiError(
            f"{eval_videos_uri} is not a SpriteWorld video dataset: it has no {', '.join(sorted(need - names))} column."
        )
    rows = dataset.to_table(columns=sorted(need), limit=limit).to_pylist()
    if not rows:
        raise VimiError(f"{eval_videos_uri} holds no clips to measure.")
    clips, targets = [], []
    for row in rows:
        missing = missing_truth(row)
        if missing:
            raise VimiError(
                f"Clip {row['id']} of {eval_videos_uri} has no SpriteWorld ground truth "
                f"({', '.join(missing)} missing): identity is measured on SpriteWorld clips only."
            )
        try:
            frames = decode_video(row["video"], row["video_format"], row["num_frames"], row["height"], row["width"])
        except VideoDecodeError as exc:
            raise VimiError(f"Clip {row['id']} of {eval_videos_uri} does not decode ({exc}).") from None
        clips.append(np.ascontiguousarray(frames))
        targets.append(row)
    measured = measure_clips(clips, [t["scene"] for t in targets], workers=workers, sprite_scale=sprite_scale)
    result = summarize(score(measured, targets), [t["subject_split"] for t in targets])
    sizes = sorted({m.frame_size for m in measured})
    result.update(
        frame_sizes=sizes,
        sprite_scale=sprite_scale,
        identity_attributes={s: list(identity_attributes(s, sprite_scale)) for s in sizes},
        mean_shape_iou=float(np.mean([m.shape_iou for m in measured if m.subject_found] or [0.0])),
        seconds=round(time.perf_counter() - start, 2),
    )
    return result


if __name__ == "__main__":  # python -m vimi.evaluation.identity data/eval_videos.lance [SPRITE_SCALE]
    import json
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m vimi.evaluation.identity EVAL_VIDEOS_URI [SPRITE_SCALE]")
    try:
        scale = float(sys.argv[2]) if len(sys.argv) == 3 else 1.0
    except ValueError:
        sys.exit(f"error: the sprite scale must be a number, got {sys.argv[2]!r}")
    try:
        print(json.dumps(ceiling(sys.argv[1], sprite_scale=scale), indent=1))
    except VimiError as exc:
        sys.exit(f"error: {exc}")
