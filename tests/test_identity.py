"""Identity measured against the rasterizer (vimi.evaluation.identity): sprites drawn by `draw_sprite`
on every scene, the tiny world's 256 evaluation clips (the ceiling), noise and empty scenes, two
sprites, bad input. The thresholds leave margin below what was measured (in the comments)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conftest import REPO
from vimi.config import deep_merge, load_params
from vimi.data.schema import VIDEO_SCHEMA
from vimi.errors import VimiError
from vimi.evaluation import identity as I
from vimi.io import lance_io
from vimi.world.catalog import COLORS, PATTERNS, SCENES, SHAPES, Subject
from vimi.world.generate import WorldConfig, clip_rows, generate_videos, plan_clips
from vimi.world.render import draw_sprite, render_scene


def sprite_clips(size: int, frames: int, seed: int, scenes=tuple(SCENES)):
    """Every shape × pattern on every scene, random colour pairs, a random pose and scale per frame."""
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    clips, targets = [], []
    for scene in scenes:
        for shape in SHAPES:
            for pattern in PATTERNS:
                a, b = rng.choice(len(colors), size=2, replace=False)
                subject = Subject("s", "s", shape, colors[a], colors[b], pattern, "seen")
                background = render_scene(scene, size, int(rng.integers(16)))
                poses = [
                    (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.8, 1.5), rng.uniform(0, 360))
                    for _ in range(frames)
                ]
                clips.append(np.stack([draw_sprite(background, subject, p, 4) for p in poses]))
                targets.append(
                    {
                        "scene": scene,
                        "shape": shape,
                        "color1": colors[a],
                        "color2": colors[b],
                        "pattern": pattern,
                        "poses": poses,
                    }
                )
    return clips, targets


def rates(right: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in right.items()}


def test_sprites_of_every_shape_pattern_and_scene_at_32():
    clips, targets = sprite_clips(32, frames=4, seed=0)  # 320 clips
    measured = I.measure_clips(clips, [t["scene"] for t in targets])
    r = rates(I.score(measured, targets))
    # measured (seeds 0-5): subject >= 0.994, colour pair >= 0.991, shape >= 0.959 (most misses: a solid
    # square is a solid diamond turned 45°), pattern >= 0.994, identity >= 0.959; colour order 0.85-0.89
    # (a split or striped sprite turned 180° swaps its colours)
    assert r["subject_there"] >= 0.97 and r["color_pair"] >= 0.95, r
    assert r["shape"] >= 0.90 and r["pattern"] >= 0.95 and r["identity"] >= 0.88, r
    assert r["color1"] >= 0.75 and r["color2"] >= 0.75, r
    # positions: the sprite's centre, within a pixel nearly always (measured median 0.1 px)
    errors = [
        np.hypot(p[0] - pose[0], p[1] - pose[1]) * 32
        for m, t in zip(measured, targets)
        for p, pose in zip(m.positions, t["poses"])
        if p is not None
    ]
    assert np.median(errors) < 0.4 and np.percentile(errors, 90) < 1.2
    # every scene on its own
    right = I.score(measured, targets)
    for scene in SCENES:
        mask = np.array([t["scene"] == scene for t in targets])
        assert right["color_pair"][mask].mean() >= 0.9, scene


def test_sprites_at_64():
    clips, targets = sprite_clips(64, frames=3, seed=1, scenes=("beach", "night", "snow"))  # 120 clips
    r = rates(I.score(I.measure_clips(clips, [t["scene"] for t in targets]), targets))
    # measured (seeds 0-5): subject >= 0.992, colour pair >= 0.992, shape >= 0.958, pattern >= 0.992
    assert r["subject_there"] >= 0.97 and r["color_pair"] >= 0.95 and r["shape"] >= 0.90 and r["pattern"] >= 0.95, r


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """The tiny profile's 256 evaluation clips (8×16×16, sprites at twice the base size) as the pipeline
    writes them."""
    params = deep_merge(load_params(REPO / "params.yaml", "tiny"), {"world": {"workers": 1}})
    cfg = WorldConfig.from_params(params)
    uri = tmp_path_factory.mktemp("identity") / "eval_videos.lance"
    generate_videos(cfg, cfg.catalog(), uri, "eval")
    return cfg, uri


def test_ceiling_on_the_tiny_worlds_evaluation_clips(tiny_eval):
    start = time.perf_counter()
    cfg, uri = tiny_eval
    c = I.ceiling(uri, sprite_scale=cfg.sprite_scale)
    seconds = time.perf_counter() - start
    # measured: subject 0.977; colour pair 0.953 (seen 0.922, unseen 0.984); shape 0.930; pattern 0.961;
    # identity (colour pair + shape + pattern) 0.914 (seen 0.875, unseen 0.953); ~3 s. Misses: spin and
    # shrink, whose largest sprites touch the frame's edges.
    assert c["clips"] == 256 and c["frame_sizes"] == [16] and cfg.sprite_scale == 2.0
    assert c["identity_attributes"] == {16: ["color_pair", "shape", "pattern"]} and I.IDENTITY_INCLUDES_PATTERN
    assert c["color_pair_accuracy"] >= 0.94 and c["identity_accuracy"] >= 0.90, c
    for split in ("", "_seen", "_unseen"):
        assert c[f"subject_there_rate{split}"] >= 0.95, c
        assert c[f"color_pair_accuracy{split}"] >= 0.90, c
        assert c[f"identity_accuracy{split}"] >= 0.85, c
        assert c[f"pattern_accuracy{split}"] >= 0.90, c
    assert c["shape_accuracy"] >= 0.90 and c["mean_shape_iou"] > 0.8, c
    assert seconds < 30, seconds  # thousands of clips in well under a minute


def test_sprites_that_stay_in_place_are_found():
    """Spin, grow, shrink and pulse keep the sprite in place: the temporal median holds it, the known
    background does not (32×32 clips of the full pose and background range)."""
    world = {"frame_size": 32, "sprite_scale": 1.0, "pose_jitter": 1.0, "scene_variants": 16, "workers": 1}
    cfg = WorldConfig.from_params(deep_merge(load_params(REPO / "params.yaml", "tiny"), {"world": world}))
    plans = [p for p in plan_clips(cfg, cfg.catalog(), "eval") if p.action in ("spin", "grow", "shrink", "pulse")]
    rows = list(clip_rows(cfg, plans[:24], "eval"))
    clips = [np.frombuffer(r["video"], np.uint8).reshape(r["num_frames"], r["height"], r["width"], 3) for r in rows]
    measured = I.measure_clips(clips, [r["scene"] for r in rows])
    assert all(m.subject_found for m in measured)
    assert np.mean(I.score(measured, rows)["color_pair"]) >= 0.95


def noise_clips(scene: str, size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = 8
    background = render_scene(scene, size, int(rng.integers(16))).astype(np.float32)
    flat = background.reshape(-1, 3)
    clips = {
        "uniform noise": rng.integers(0, 256, (t, size, size, 3)),
        "empty scene": np.broadcast_to(background, (t, size, size, 3)),
        "scene pixels shuffled": flat[rng.integers(0, len(flat), (t, size * size))].reshape(t, size, size, 3),
    }
    for sigma in (15, 40, 90):
        clips[f"scene + noise σ={sigma}"] = background[None] + rng.normal(0, sigma, (t, size, size, 3))
    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in clips.items()}


@pytest.mark.parametrize("size", [32, 64])
def test_noise_and_empty_scenes_have_no_subject(size):
    for scene in SCENES:
        for seed in range(2):
            for name, clip in noise_clips(scene, size, seed).items():
                m = I.measure_clip(clip, scene)
                assert not m.subject_found, (scene, seed, name, m)
                assert (m.color1, m.color2, m.shape, m.pattern) == (None, None, None, None), (scene, name)
                assert m.color_pair is None
                if name == "empty scene":
                    assert m.objects_per_frame == [0] * 8
    target = {"scene": "beach", "shape": "star", "color1": "red", "color2": "blue", "pattern": "dots"}
    right = I.score([I.measure_clip(noise_clips("beach", 32, 0)["uniform noise"], "beach")], [target])
    assert not any(v[0] for v in right.values())


def test_two_sprites_are_not_exactly_one():
    a = Subject("a", "a", "star", "red", "yellow", "solid", "seen")
    b = Subject("b", "b", "square", "blue", "white", "stripes", "seen")
    background = render_scene("meadow", 32, 3)
    one = np.stack([draw_sprite(background, a, (0.3, 0.3 + 0.05 * i, 1.0, 20 * i)) for i in range(8)])
    two = np.stack([draw_sprite(f, b, (0.72, 0.7, 1.0, 10 * i)) for i, f in enumerate(one)])
    single = I.measure_clip(one, "meadow")
    assert single.subject_found and single.objects_per_frame == [1] * 8
    assert (single.shape, single.color_pair, single.pattern) == ("star", {"red", "yellow"}, "solid")
    pair = I.measure_clip(two, "meadow")
    assert pair.objects_per_frame == [2] * 8
    assert not pair.subject_found and pair.color1 is None and pair.shape is None


def test_score_reads_the_colour_pair_unordered_and_the_pattern_by_size():
    truth = {"scene": "city", "shape": "heart", "color1": "pink", "color2": "black", "pattern": "dots"}
    swapped = I.ClipIdentity(True, [1] * 8, "black", "pink", "heart", "split", 0.9, frame_size=32)
    small = I.ClipIdentity(True, [1] * 8, "black", "pink", "heart", "split", 0.9, frame_size=16)
    right = I.score([swapped, small], [truth, truth])
    assert right["color_pair"].tolist() == [True, True] and right["shape"].tolist() == [True, True]
    assert right["color1"].tolist() == [False, False] and right["pattern"].tolist() == [False, False]
    assert right["identity"].tolist() == [False, True]  # the pattern counts from 32×32 up, not at 16×16
    assert I.identity_attributes(32) == ("color_pair", "shape", "pattern")
    assert I.identity_attributes(16) == ("color_pair", "shape")
    assert I.identity_attributes(16, sprite_scale=2.0) == ("color_pair", "shape", "pattern")


def test_evaluation_keys_keep_their_names():
    right = {k: np.array([True, False, True, True]) for k in ("subject_there", *I.SCORED_ATTRIBUTES)}
    tasks, splits = ["subject", "subject", "prediction", "text_to_video"], ["seen", "unseen", "unseen", "seen"]
    real = I.evaluation_metrics(right, tasks, splits, "_real")
    generated = I.evaluation_metrics(right, tasks, splits)
    for key in (
        "identity_accuracy_seen",
        "identity_accuracy_unseen",
        "color_pair_accuracy_unseen",
        "shape_accuracy_prediction_unseen",
        "identity_accuracy_text_to_video_seen",
        "subject_there_rate",
        "subject_there_rate_subject",
        "subject_there_rate_prediction",
    ):
        assert key in generated and f"{key}_real" in real, key
    assert generated["identity_accuracy_seen"] == 1.0 and generated["identity_accuracy_unseen"] == 0.0
    assert generated["subject_there_rate"] == 0.75


def test_bad_input_is_one_clear_error(tiny_eval, tmp_path):
    clip = np.zeros((8, 32, 32, 3), np.uint8)
    with pytest.raises(VimiError, match=r"T×H×W×3 uint8 array, got a float32 array of shape \(8, 32, 32, 3\)"):
        I.measure_clip(clip.astype(np.float32), "beach")
    with pytest.raises(VimiError, match="T×H×W×3 uint8 array, got a uint8 array of shape \\(32, 32, 3\\)"):
        I.measure_clip(clip[0], "beach")
    with pytest.raises(VimiError, match="got a list"):
        I.measure_clip([[0]], "beach")
    with pytest.raises(VimiError, match="square frames of at least 8×8.*8 frame\\(s\\) of 32×48"):
        I.measure_clip(np.zeros((8, 32, 48, 3), np.uint8), "beach")
    with pytest.raises(VimiError, match="Unknown SpriteWorld scene 'mars'; the scenes are beach, forest"):
        I.measure_clip(clip, "mars")
    with pytest.raises(VimiError, match="Unknown SpriteWorld scene None"):
        I.measure_clips([clip], [None])
    with pytest.raises(VimiError, match="2 clip\\(s\\) but 1 scene"):
        I.measure_clips([clip, clip], ["beach"])
    with pytest.raises(VimiError, match="sprite scale to measure at must be a number in \\[0.25, 4\\], got 0"):
        I.measure_clips([clip], ["beach"], sprite_scale=0)
    measured = I.measure_clips([clip], ["beach"])
    real_data = {"scene": None, "shape": None, "color1": None, "color2": None, "pattern": None}
    with pytest.raises(VimiError, match="Target 0 has no SpriteWorld ground truth for scene, shape, color1"):
        I.score(measured, [real_data])
    with pytest.raises(VimiError, match="Target 0 has no SpriteWorld ground truth for pattern"):
        I.score(measured, [{"scene": "beach", "shape": "star", "color1": "red", "color2": "blue"}])
    with pytest.raises(VimiError, match="1 measured clip\\(s\\) but 2 target"):
        I.score(measured, [real_data, real_data])
    with pytest.raises(VimiError, match="No evaluation clips at"):
        I.ceiling(tmp_path / "missing.lance")
    # real (non-SpriteWorld) videos: no ground truth
    cfg, _ = tiny_eval
    row = next(clip_rows(cfg, plan_clips(cfg, cfg.catalog(), "eval")[:1], "eval"))
    row.update(
        {
            k: None
            for k in (
                "subject_id",
                "subject_name",
                "shape",
                "color1",
                "color2",
                "pattern",
                "scene",
                "subject_split",
                "action",
                "trajectory",
                "split",
            )
        }
    )
    uri = tmp_path / "real.lance"
    lance_io.write_batches(uri, lance_io.batches_of([row], VIDEO_SCHEMA, 8), VIDEO_SCHEMA, mode="overwrite")
    with pytest.raises(VimiError, match="Clip eval-0000000 of .* has no SpriteWorld ground truth"):
        I.ceiling(uri)
