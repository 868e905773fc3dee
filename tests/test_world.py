"""SpriteWorld: counts of the tiny profile, determinism by seed, and ground truth that matches pixels."""

from __future__ import annotations

import io
import json

import lance
import numpy as np
import pytest
from PIL import Image

from tests.conftest import MICRO_WORLD, REPO
from vimi.config import Settings, deep_merge, load_params
from vimi.io import lance_io
from vimi.io.video import decode_video
from vimi.pipeline import generate_world
from vimi.world.catalog import ACTIONS, COLORS, SCENES, Subject
from vimi.world.generate import WorldConfig, clip_rows, memory_rows, plan_clips
from vimi.world.motion import trajectory
from vimi.world.render import BASE_RADIUS, draw_sprite, render_scene


def micro_cfg(**override) -> WorldConfig:
    params = deep_merge(load_params(REPO / "params.yaml"), {"world": MICRO_WORLD | override})
    return WorldConfig.from_params(params)


def test_tiny_profile_is_at_least_what_the_issue_asks():
    cfg = WorldConfig.from_params(load_params(REPO / "params.yaml", "tiny"))
    catalog = cfg.catalog()
    assert len(catalog.subjects) == 64
    assert len(catalog.unseen) == 16 and len(catalog.seen) == 48
    assert len(catalog.actions) == 12 and len(catalog.scenes) == 6
    assert (cfg.memory_docs, cfg.train_clips, cfg.num_frames, cfg.frame_size) == (5000, 2000, 8, 16)
    assert (cfg.sprite_scale, cfg.pose_jitter, cfg.scene_variants) == (2.0, 0.0, 1)
    names = [s.name for s in catalog.subjects]
    assert len(set(names)) == 64
    looks = {(s.shape, s.color1, s.color2, s.pattern) for s in catalog.subjects}
    assert len(looks) == 64
    assert all(s.color1 != s.color2 for s in catalog.subjects)


def test_profiles_scale_the_world():
    small = WorldConfig.from_params(load_params(REPO / "params.yaml", "small"))
    paper = WorldConfig.from_params(load_params(REPO / "params.yaml", "paper"))
    assert small.subjects > 64 and small.train_clips > 2000
    assert paper.subjects > small.subjects and paper.train_clips > small.train_clips


def test_same_seed_same_rows_other_seed_other_rows(tmp_path, settings):
    first = generate_world(settings, tmp_path / "a")
    parallel = Settings(
        params=deep_merge(settings.params, {"world": {"workers": 2}}), root=settings.root, data_dir=settings.data_dir
    )
    second = generate_world(parallel, tmp_path / "b")  # two worker processes: same rows
    for name in ("memory", "videos", "eval_videos"):
        assert first[name]["fingerprint"] == second[name]["fingerprint"], name
        a = lance.dataset(first[name]["path"]).to_table()
        b = lance.dataset(second[name]["path"]).to_table()
        assert a.equals(b)
    assert (tmp_path / "a/world/catalog.json").read_bytes() == (tmp_path / "b/world/catalog.json").read_bytes()

    other = Settings(
        params=deep_merge(settings.params, {"seed": settings.seed + 1}), root=settings.root, data_dir=settings.data_dir
    )
    third = generate_world(other, tmp_path / "c", parts=("memory", "videos"))
    assert third["memory"]["fingerprint"] != first["memory"]["fingerprint"]
    assert third["videos"]["fingerprint"] != first["videos"]["fingerprint"]


def test_rows_are_independent_of_batching():
    cfg = micro_cfg()
    catalog = cfg.catalog()
    whole = list(memory_rows(cfg, catalog))
    pieces = list(memory_rows(cfg, catalog, 0, 25)) + list(memory_rows(cfg, catalog, 25))
    assert [r["image"] for r in whole] == [r["image"] for r in pieces]


def test_unseen_subjects_only_in_memory_and_eval(tmp_path, settings):
    results = generate_world(settings, tmp_path)
    catalog = json.loads((tmp_path / "world/catalog.json").read_text())
    unseen = {s["id"] for s in catalog["subjects"] if s["split"] == "unseen"}
    assert len(unseen) == 2
    train = lance.dataset(results["videos"]["path"]).to_table().to_pylist()
    assert train and not {r["subject_id"] for r in train} & unseen
    assert {r["subject_split"] for r in train} == {"seen"}
    memory = lance.dataset(results["memory"]["path"]).to_table().to_pylist()
    assert unseen <= {r["subject_id"] for r in memory}
    evaluation = lance.dataset(results["eval_videos"]["path"]).to_table().to_pylist()
    assert sum(r["subject_split"] == "unseen" for r in evaluation) == 4  # half of 8
    train_combos = {(r["subject_id"], r["action"], r["scene"]) for r in train}
    seen_eval = [r for r in evaluation if r["subject_split"] == "seen"]
    assert not {(r["subject_id"], r["action"], r["scene"]) for r in seen_eval} & train_combos


def test_memory_rows_carry_their_ground_truth(tmp_path, settings):
    results = generate_world(settings, tmp_path, parts=("catalog", "memory"))
    catalog = {s["id"]: s for s in json.loads((tmp_path / "world/catalog.json").read_text())["subjects"]}
    rows = lance.dataset(results["memory"]["path"]).to_table().to_pylist()
    assert len(rows) == 240 and len({r["id"] for r in rows}) == 240
    kinds = [r["doc_type"] for r in rows]
    assert kinds.count("subject") == 192 and kinds.count("anonymous") + kinds.count("scene") == 48
    names = {s["name"] for s in catalog.values()}
    for row in rows:
        assert row["scene"] in SCENES
        image = Image.open(io.BytesIO(row["image"]))
        assert image.format == "PNG" and image.size == (32, 32) == (row["width"], row["height"])
        if row["doc_type"] == "subject":
            subject = catalog[row["subject_id"]]
            assert row["caption"].startswith(subject["name"]) or f" {subject['name']}" in row["caption"]
            assert (row["shape"], row["color1"], row["color2"], row["pattern"]) == (
                subject["shape"],
                subject["color1"],
                subject["color2"],
                subject["pattern"],
            )
            assert len(row["pose"]) == 4
        else:  # distractors name no subject
            assert row["subject_id"] is None
            assert not any(n in row["caption"].split() for n in names)


def _sprite_pixels(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.abs(frame.astype(int) - background.astype(int)).sum(axis=2) > 0


@pytest.mark.parametrize("action", list(ACTIONS))
def test_clip_pixels_follow_the_trajectory(action):
    """The rendered sprite sits where the ground-truth trajectory says, in every frame."""
    cfg = micro_cfg(frame_size=64, supersample=4)
    catalog = cfg.catalog()
    subject = Subject("t", "testy", "square", "red", "blue", "solid", "seen")
    rng = np.random.default_rng(7)
    poses = trajectory(action, 8, rng)
    background = render_scene("snow", 64)
    for pose in poses:
        frame = draw_sprite(background, subject, pose, supersample=4)
        mask = _sprite_pixels(frame, background)
        ys, xs = np.nonzero(mask)
        cx, cy = (xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64
        assert abs(cx - pose[0]) < 1.5 / 64 and abs(cy - pose[1]) < 1.5 / 64, (action, pose, cx, cy)
        # size: a solid square of half-side 0.75 r covers (1.5 r)^2 of the frame
        radius = BASE_RADIUS * pose[2] * 64
        assert abs(mask.sum() - (1.5 * radius) ** 2) < 0.2 * (1.5 * radius) ** 2 + 8
        # both named colours are there, exactly
        colours = {tuple(c) for c in frame[mask].reshape(-1, 3)}
        assert COLORS["red"] in colours and COLORS["blue"] in colours
    assert catalog  # the world builds with the overrides


def test_actions_mean_what_they_say():
    rng = np.random.default_rng(0)
    t = {a: trajectory(a, 8, rng) for a in ACTIONS}
    assert np.all(np.diff(t["move_left"][:, 0]) < 0) and np.all(np.diff(t["move_right"][:, 0]) > 0)
    assert np.all(np.diff(t["rise"][:, 1]) < 0) and np.all(np.diff(t["fall"][:, 1]) > 0)
    assert np.all(np.diff(t["grow"][:, 2]) > 0) and np.all(np.diff(t["shrink"][:, 2]) < 0)
    turned = ((np.diff(t["spin"][:, 3]) + 180) % 360 - 180).sum()
    assert abs(abs(turned) - 180) < 1e-3 and np.all(np.ptp(t["spin"][:, :2], axis=0) == 0)
    assert np.all(np.sign(np.diff(t["shake"][:, 0]))[1:] == -np.sign(np.diff(t["shake"][:, 0]))[:-1])
    for name, poses in t.items():
        radius = BASE_RADIUS * poses[:, 2]
        assert np.all(poses[:, 0] - radius > -0.02) and np.all(poses[:, 0] + radius < 1.02), name
        assert np.all(poses[:, 1] - radius > -0.02) and np.all(poses[:, 1] + radius < 1.02), name


def test_pose_jitter_scales_the_random_part_of_a_trajectory():
    for action in ACTIONS:
        full = trajectory(action, 8, np.random.default_rng(7))
        assert np.array_equal(trajectory(action, 8, np.random.default_rng(7), jitter=1.0), full)  # the default
        fixed = [trajectory(action, 8, np.random.default_rng(seed), jitter=0.0) for seed in range(5)]
        assert all(np.array_equal(f, fixed[0]) for f in fixed), action  # the action alone fixes the clip
        half = trajectory(action, 8, np.random.default_rng(7), jitter=0.5)
        # Half the jitter: every continuous pose value halfway between the fixed clip and the full one
        # (turn directions stay random above zero jitter; angles of spin/default are scaled too).
        if action not in ("circle", "spin", "zigzag", "shake"):
            assert np.allclose(half[:, :3], (full[:, :3] + fixed[0][:, :3]) / 2, atol=1e-5), action
    with pytest.raises(ValueError, match="jitter must be in"):
        trajectory("rise", 8, np.random.default_rng(0), jitter=1.5)


def test_fixed_poses_one_background_and_a_larger_sprite():
    """pose_jitter 0 and scene_variants 1: a clip is a function of subject, action and scene;
    sprite_scale multiplies the sprite's size in the clip and in its ground truth."""
    cfg = micro_cfg(pose_jitter=0.0, scene_variants=1, sprite_scale=1.0, train_clips=400)
    plans = plan_clips(cfg, cfg.catalog(), "train")
    rows = {p.index: r for p, r in zip(plans, clip_rows(cfg, plans, "train"))}
    groups: dict[tuple, list[int]] = {}
    for p in plans:
        groups.setdefault((p.subject.id, p.action, p.scene), []).append(p.index)
    twins = [g for g in groups.values() if len(g) > 1]
    assert twins  # 400 clips over a few hundred combinations repeat some
    for group in twins:
        first = rows[group[0]]
        for other in group[1:]:
            assert rows[other]["video"] == first["video"] and rows[other]["trajectory"] == first["trajectory"]
    big = micro_cfg(pose_jitter=0.0, scene_variants=1, sprite_scale=1.5, train_clips=400)
    big_rows = list(clip_rows(big, plans[:4], "train"))
    for row, small_row in zip(big_rows, [rows[p.index] for p in plans[:4]]):
        assert np.allclose(np.array(row["trajectory"])[:, 2], 1.5 * np.array(small_row["trajectory"])[:, 2])


def test_video_rows_decode_to_their_trajectory():
    cfg = micro_cfg()
    catalog = cfg.catalog()
    plans = plan_clips(cfg, catalog, "train")
    rows = list(clip_rows(cfg, plans[:6], "train"))
    for row, plan in zip(rows, plans):
        frames = decode_video(row["video"], row["video_format"], row["num_frames"], row["height"], row["width"])
        assert frames.shape == (8, 16, 16, 3)
        assert row["action"] == plan.action and row["subject_name"] == plan.subject.name
        assert plan.subject.name in row["caption"] and ACTIONS[plan.action] in row["caption"]
        assert SCENES[plan.scene].lower() in row["caption"].lower()
        assert len(row["trajectory"]) == 8


def test_appearance_rarely_in_video_captions():
    cfg = micro_cfg(train_clips=400, appearance_in_video_caption=0.1)
    plans = plan_clips(cfg, cfg.catalog(), "train")
    share = sum(p.with_appearance for p in plans) / len(plans)
    assert 0.05 < share < 0.15


def test_bad_world_params_are_named():
    from vimi.errors import VimiError

    with pytest.raises(VimiError, match="actions must be between 1 and 12"):
        micro_cfg(actions=13).catalog()
    with pytest.raises(VimiError, match="frame_size must be >= 8"):
        micro_cfg(frame_size=4)
    with pytest.raises(VimiError, match="pose_jitter must be in"):
        micro_cfg(pose_jitter=-0.1)
    with pytest.raises(VimiError, match="scene_variants must be in 1..16"):
        micro_cfg(scene_variants=0)
    with pytest.raises(VimiError, match="sprite_scale must be in"):
        micro_cfg(sprite_scale=3)


@pytest.mark.slow
def test_tiny_world_end_to_end(tmp_path, monkeypatch):
    """The real tiny profile: counts, validation passes, same fingerprint from a second process."""
    monkeypatch.setenv("VIMI_PARAMS", str(REPO / "params.yaml"))
    settings = Settings.load(profile="tiny", data_dir=tmp_path)
    results = generate_world(settings, tmp_path)
    assert results["memory"]["rows"] == 5000
    assert results["videos"]["rows"] == 2000
    assert results["eval_videos"]["rows"] == 256
    videos = lance.dataset(str(tmp_path / "videos.lance"))
    row = videos.take([0]).to_pylist()[0]
    assert (row["num_frames"], row["height"], row["width"]) == (8, 16, 16)
    from vimi.pipeline import validate_dataset

    for which in ("memory", "videos", "eval_videos"):
        report = validate_dataset(settings, which)
        assert report.success, report.to_text()
    assert lance_io.fingerprint(tmp_path / "memory.lance") == results["memory"]["fingerprint"]


def test_fingerprint_ignores_the_order_of_schema_metadata(tmp_path):
    """Lance hands schema metadata back with its keys in no fixed order; the fingerprint is of rows."""
    import pyarrow as pa

    from vimi.io import lance_io

    table = pa.table({"x": list(range(10))}).replace_schema_metadata({f"key{i}": str(i) for i in range(8)})
    lance.write_dataset(table, str(tmp_path / "meta.lance"))
    prints = {lance_io.fingerprint(tmp_path / "meta.lance") for _ in range(6)}
    assert len(prints) == 1
    lance.write_dataset(table.replace_schema_metadata(None), str(tmp_path / "plain.lance"))
    assert prints == {lance_io.fingerprint(tmp_path / "plain.lance")}


def test_memory_rotation_zero_draws_the_memory_s_subjects_upright():
    """memory_rotation scales the angle only: at 0 every pictured sprite stands at 0°, its place,
    size, scene and caption the same as at 1 (one draw either way, so the rows stay aligned)."""
    from vimi.errors import VimiError

    turned, upright = micro_cfg(memory_rotation=1.0), micro_cfg(memory_rotation=0.0)
    a = list(memory_rows(turned, turned.catalog(), 0, 40))
    b = list(memory_rows(upright, upright.catalog(), 0, 40))
    posed = [(x, y) for x, y in zip(a, b) if x["pose"] is not None]
    assert posed and all(y["pose"][3] == 0.0 for _, y in posed)
    assert any(x["pose"][3] > 1.0 for x, _ in posed)
    assert all(x["pose"][:3] == y["pose"][:3] and x["caption"] == y["caption"] for x, y in zip(a, b))
    with pytest.raises(VimiError, match="memory_rotation must be in"):
        micro_cfg(memory_rotation=1.5)
