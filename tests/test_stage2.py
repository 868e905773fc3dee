"""Stage 2 on micro SpriteWorld: instruction tuning from a stage-1 pipeline, the MLflow registry
(register → alias → promote), `vimi generate` from `models:/...@champion`, the pyfunc in process and
served, and every bad input the generation command must answer clearly. Real MiniLM, real Lance,
real sqlite MLflow store and registry throughout; one pipeline is trained for the whole module."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import micro_project, real_clip_frames, real_image_files, train_micro_pipeline
from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io.video import decode_container, write_video

VIMI = [sys.executable, "-m", "vimi"]
NAME = "vimi-video-generator"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Data, image encoder, stage 1 (6 steps), stage 2 (4 steps, registered) and its promotion, once."""
    from vimi.pipeline import promote_model, train_feature_network

    root = tmp_path_factory.mktemp("stage2")
    env = micro_project(root, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings.load()
        stage1, meta = train_micro_pipeline(settings)
        promotion = promote_model(settings)
        train_feature_network(settings)
        yield {"settings": settings, "stage2": meta, "stage1": stage1, "promotion": promotion, "root": root, "env": env}


@pytest.fixture
def env(trained, monkeypatch):
    for key, value in trained["env"].items():
        monkeypatch.setenv(key, value)
    return trained


def _run(args, env, **kw):
    return subprocess.run(
        [*VIMI, *args],
        env={**os.environ, **env["env"]},
        capture_output=True,
        text=True,
        cwd=env["root"],
        timeout=300,
        **kw,
    )


def _png(path: Path, name: str = "astronaut") -> Path:
    with Image.open(real_image_files()[name]) as img:
        img.convert("RGB").resize((48, 48)).save(path)
    return path


# ---- training and registration ------------------------------------------------------------------


def test_stage2_starts_from_stage1_and_learns_frame_conditioning(env):
    from mlflow import MlflowClient

    meta, settings = env["stage2"], env["settings"]
    assert meta["steps"] == 4 and np.isfinite(meta["final_loss"])
    assert meta["init_model"] == "models/stage1"
    config = json.loads((settings.model_path("stage2") / "transformer" / "config.json").read_text())
    assert config["in_channels"] == 3 + 4 and config["out_channels"] == 3  # given frames + mask
    run = MlflowClient().get_run(meta["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["vimi.stage1_run_id"] == env["stage1"]["run_id"]
    inputs = {d.dataset.name.split("@")[0] for d in run.inputs.dataset_inputs}
    assert inputs == {"instructions", "videos", "memory"}
    # The in-training sample shows one clip per task side by side: 3 × 16 pixels wide, real over generated.
    frames, _ = decode_container(settings.model_path("stage2") / "samples" / "final.mp4")
    assert frames.shape == (8, 32, 48, 3)


def test_name_dropout_masks_the_subject_only_where_images_show_it(env):
    """stage2.name_dropout: an instruction holding images names its subject "the subject" in about that
    share of rows (its images kept); a text-to-video instruction keeps the name, having nothing else."""
    import torch

    from vimi.train.stage2 import Stage2Task

    settings = env["settings"]
    params = {**settings.params, "stage2": {**settings.params["stage2"], "cfg_dropout": 0.0, "name_dropout": 0.5}}
    task = Stage2Task(params, settings.path("instructions"), settings.model_path("stage1"))
    batch = task.dataset.__getitems__(list(range(len(task.dataset))))
    assert all(batch.subject_names) and len(batch.subject_names) == len(batch)
    prompts = task.prompts(batch, [torch.Generator().manual_seed(i) for i in range(len(batch))])
    masked = named = 0
    for prompt, original, name in zip(prompts, batch.prompts, batch.subject_names):
        assert [x for x in prompt if not isinstance(x, str)] == [x for x in original if not isinstance(x, str)]
        texts = " ".join(x for x in prompt if isinstance(x, str)).lower()
        if not any(not isinstance(x, str) for x in original):
            assert prompt == original
        elif name.lower() in texts:
            named += 1
        else:
            masked += 1
            assert (
                "the subject" in texts and name.lower() in " ".join(x for x in original if isinstance(x, str)).lower()
            )
    assert masked >= 4 and named >= 4
    bad = {**settings.params, "stage2": {**settings.params["stage2"], "name_dropout": 1.0}}
    with pytest.raises(VimiError, match=r"stage2\.name_dropout must be in \[0, 1\)"):
        Stage2Task(bad, settings.path("instructions"), settings.model_path("stage1"))


def test_registered_version_carries_lineage_metrics_checks_and_signature(env):
    from mlflow.models import Model

    from mlflow import MlflowClient

    registered = env["stage2"]["registered"]
    assert registered["version"] == "1" and registered["checks"] == "passed"
    client = MlflowClient()
    mv = client.get_model_version_by_alias(NAME, "candidate")
    assert str(mv.version) == "1" and mv.run_id == env["stage2"]["run_id"]
    settings = env["settings"]
    import lance

    tags = mv.tags
    assert (
        tags["vimi.instructions"]
        == f"{settings.path('instructions')}@v{lance.dataset(str(settings.path('instructions'))).version}"
    )
    assert tags["vimi.memory"] == f"{settings.path('memory')}@v{lance.dataset(str(settings.path('memory'))).version}"
    assert tags["vimi.videos"].startswith(str(settings.path("videos")) + "@v")
    augmented = lance.dataset(str(settings.path("augmented")))
    assert tags["vimi.augmented"] == f"{settings.path('augmented').resolve()}@v{augmented.version}"
    assert tags["vimi.index_id"] == augmented.to_table(columns=["index_id"]).column("index_id")[0].as_py()
    assert tags["vimi.git_commit"]
    assert float(tags["vimi.metric.final_loss"]) == pytest.approx(env["stage2"]["final_loss"], rel=1e-4)
    assert tags["vimi.checks"] == "passed" and "video prediction keeps the given frames" in tags["vimi.checks.detail"]
    model = Model.load(f"models:/{NAME}/1")
    assert [c["name"] for c in model.signature.inputs.to_dict()] == ["prompt", "images", "context_frames"]
    assert {p.name for p in model.signature.params} >= {"seed", "num_frames", "num_inference_steps", "format"}
    assert model.saved_input_example_info is not None


def test_promotion_policy_and_aliases(env, tmp_path):
    from mlflow import MlflowClient
    from vimi.registry import decide, promote, register_pipeline

    settings = env["settings"]
    first = env["promotion"]  # the fixture promoted version 1 into an empty registry
    assert first["promoted"] and first["champion"] == "1" and "no champion yet" in first["reason"]
    assert promote(settings)["reason"] == "version 1 is already the champion"
    # A second version whose own check fails (its pipeline directory does not load) stays candidate.
    broken = tmp_path / "broken"
    broken.mkdir()
    second = register_pipeline(settings, env["stage2"]["model_uri"], broken, {}, {"final_loss": 1.0})
    assert second["version"] == "2" and second["checks"] == "failed"
    decision = promote(settings)
    assert not decision["promoted"] and decision["champion"] == "1" and "checks did not pass" in decision["reason"]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "2"
    assert client.get_model_version(NAME, "2").tags["vimi.promotion"].startswith("kept as candidate: ")
    assert decide({"vimi.checks": "passed"}, {"vimi.checks": "passed"})[0]
    assert not decide({}, None)[0]
    # With metrics: FVD lower is better, accuracies higher; a margin is relative; an unevaluated candidate loses.
    ok = {"vimi.checks": "passed"}
    fvd = {"metric": "fvd_ucf101"}
    assert decide(ok | {"vimi.metric.fvd_ucf101": "90"}, ok | {"vimi.metric.fvd_ucf101": "100"}, **fvd) == (
        True,
        "its checks passed and its fvd_ucf101 90 beats the champion's 100",
    )
    assert not decide(ok | {"vimi.metric.fvd_ucf101": "95"}, ok | {"vimi.metric.fvd_ucf101": "100"}, margin=0.1, **fvd)[
        0
    ]
    assert decide(ok | {"vimi.metric.fvd_ucf101": "89"}, ok | {"vimi.metric.fvd_ucf101": "100"}, margin=0.1, **fvd)[0]
    assert decide(ok | {"vimi.metric.acc": "0.6"}, ok | {"vimi.metric.acc": "0.5"}, metric="acc")[0]
    assert decide(ok, ok | {"vimi.metric.fvd_ucf101": "100"}, **fvd) == (
        False,
        "the champion has fvd_ucf101 100 and the candidate was not evaluated on it",
    )
    client.set_registered_model_alias(NAME, "candidate", "1")  # leave the registry as the other tests expect


# ---- generation -----------------------------------------------------------------------------------


def test_generate_from_the_champion_writes_the_video_and_its_provenance(env, tmp_path):
    image = _png(tmp_path / "ref.png")
    out = tmp_path / "out" / "clip.mp4"
    result = _run(
        [
            "generate",
            "--model",
            f"models:/{NAME}@champion",
            "--prompt",
            "<image> a star bounces on the beach",
            "--image",
            str(image),
            "--frames",
            "6",
            "--seed",
            "3",
            "--guidance",
            "2.0",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    frames, _ = decode_container(out)
    assert frames.shape == (6, 16, 16, 3)
    sidecar = json.loads((tmp_path / "out" / "clip.mp4.json").read_text())
    assert sidecar["model"]["name"] == NAME and sidecar["model"]["version"] == "1"
    assert sidecar["model"]["alias"] == "champion" and sidecar["model"]["run_id"] == env["stage2"]["run_id"]
    assert sidecar["prompt"] == "<image> a star bounces on the beach"
    import hashlib

    assert sidecar["images"] == [
        {
            "placeholder": 0,
            "path": str(image.resolve()),
            "width": 48,
            "height": 48,
            "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
        }
    ]
    assert (sidecar["seed"], sidecar["guidance_scale"], sidecar["num_inference_steps"]) == (3, 2.0, 2)
    assert sidecar["num_frames"] == 6 and sidecar["context"] is None


def test_video_prediction_starts_with_the_given_frames(env, tmp_path):
    from vimi.generate import generate_video, sidecar_path

    clip = real_clip_frames("carphone", frames=5, max_side=40)
    video = write_video(clip, tmp_path / "given.mp4")
    given, _ = decode_container(video, max_frames=2)
    out = tmp_path / "pred.gif"
    meta = generate_video(
        env["settings"], f"models:/{NAME}/1", "a star bounces on the beach", out, video=video, context_frames=2, steps=2
    )
    assert meta["prompt_used"] == "<image><image> a star bounces on the beach"  # frames put in front
    assert meta["context"]["frames_given"] == 2 and meta["num_frames"] == 8
    assert sidecar_path(out).is_file()
    # In process, exactly: the clip starts with the given frames, fitted to the model's 16×16.
    from vimi.models.encoder import to_image_array
    from vimi.models.pipeline import load_pipeline
    from vimi.registry import resolve_model

    pipe = load_pipeline(resolve_model(env["settings"], f"models:/{NAME}/1").path)
    frames = pipe("<image><image> a star", images=list(given), context_frames=given, num_inference_steps=2).frames
    assert np.array_equal(frames[0, :2], np.stack([to_image_array(f, 16) for f in given]))


def test_pyfunc_predicts_in_process_with_images_and_context_frames(env):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    png = io.BytesIO()
    Image.fromarray(real_clip_frames("bikes", frames=1, max_side=32)[0]).save(png, format="PNG")
    b64 = base64.b64encode(png.getvalue()).decode()
    request = pd.DataFrame(
        {
            "prompt": ["<image> a star spins in the city", "a star moves left"],
            "images": [[b64], []],
            "context_frames": [[], [b64]],
        }
    )
    out = model.predict(request, params={"num_inference_steps": 2, "num_frames": 4, "format": "gif", "seed": 5})
    assert list(out["format"]) == ["gif", "gif"] and list(out["seed"]) == [5, 6]
    for video in out["video"]:
        frames, _ = decode_container(base64.b64decode(video))
        assert frames.shape == (4, 16, 16, 3)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"1 <image> placeholder\(s\) but 0 image\(s\)"):
        model.predict(pd.DataFrame({"prompt": ["<image> a star"]}), params={"num_inference_steps": 1})
    # every bound is checked before work starts, each answered with its own sentence (served: 400)
    one = pd.DataFrame({"prompt": ["a star"]})
    for params, pattern in BAD_PARAMS:
        with pytest.raises(MlflowException, match=pattern) as err:
            model.predict(one, params={"num_inference_steps": 1, **params})
        assert err.value.get_http_status_code() == 400
    for request, pattern in bad_rows(b64):
        with pytest.raises(MlflowException, match=pattern) as err:
            model.predict(request, params={"num_inference_steps": 1})
        assert err.value.get_http_status_code() == 400


BAD_PARAMS = [
    ({"num_frames": 10**6}, r"num_frames must be 1\.\.8 \(this model's clip length\), got 1000000"),
    ({"num_frames": -3}, r"num_frames must be 1\.\.8 .*got -3"),
    ({"num_inference_steps": 10**7}, r"num_inference_steps must be 1\.\.1000, got 10000000"),
    ({"num_inference_steps": -1}, r"num_inference_steps must be 1\.\.1000, got -1"),
    ({"guidance_scale": float("nan")}, r"guidance_scale must be a number in 0\.\.100, got nan"),
    ({"guidance_scale": 1e9}, r"guidance_scale must be a number in 0\.\.100"),
    ({"format": "avi"}, r"format must be mp4 or gif"),
]


def bad_rows(b64: str) -> list:
    bomb = io.BytesIO()
    Image.new("RGB", (5000, 5000)).save(bomb, format="PNG")  # ~75 MB decoded from a file of ~70 KB
    return [
        (pd.DataFrame({"prompt": ["a star"] * 17}), r"A request holds 1 to 16 rows, got 17"),
        (pd.DataFrame({"prompt": ["<image> a"], "images": [["not base64!"]]}), r"Row 0: images\[0\] is not base64\."),
        (
            pd.DataFrame({"prompt": ["<image> a"], "images": [[base64.b64encode(bomb.getvalue()).decode()]]}),
            r"images\[0\] is 5000×5000 pixels; at most 16,777,216 are read",
        ),
        (pd.DataFrame({"prompt": ["<image>" * 100], "images": [[b64] * 100]}), r"100 images; .* at most \d+ images"),
        (pd.DataFrame({"prompt": ["x" * 20000]}), r"20000 characters; at most 10000 are read"),
    ]


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_generation_input_gets_a_clear_error_and_leaves_nothing(env, tmp_path):
    from vimi.generate import generate_video

    settings = env["settings"]
    out = tmp_path / "never.mp4"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    short = write_video(real_clip_frames("carphone", frames=3, max_side=32), tmp_path / "short.mp4")
    image = _png(tmp_path / "ok.png")
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (5000, 5000)).save(bomb)
    cases = [
        (dict(prompt="<image> x", images=[tmp_path / "missing.png"]), r"Cannot read image .*missing\.png"),
        (dict(prompt="<image> x", images=[text]), r"Image .*notes\.png is not a readable image"),
        (
            dict(prompt="<image><image> x", images=[image]),
            r"has 2 <image> placeholder\(s\) but 1 image\(s\) were given",
        ),
        (dict(prompt="x", images=[image, image]), r"has 0 <image> placeholder\(s\) but 2 image\(s\)"),
        (dict(prompt="x", video=short, context_frames=4), r"short\.mp4 has 3 frame\(s\), fewer than the 4 context"),
        (dict(prompt="x", video=text, context_frames=1), r"notes\.png cannot be decoded"),
        (
            dict(prompt="x", model=f"models:/{NAME}@nope"),
            r"has no alias @nope\. Aliases: @candidate \(version \d\), @champion \(version 1\); versions: 1",
        ),
        (dict(prompt="x", model=f"models:/{NAME}/9"), r"has no version 9\. Versions: 1"),
        (dict(prompt="x", model="models:/no-such-model@champion"), rf"No registered model 'no-such-model'.*{NAME}"),
        (dict(prompt="x", video=short, context_frames=2, num_frames=2), r"2 context frames leave nothing to predict"),
        (
            dict(prompt="x", model=str(env["settings"].model_path("stage1")), video=short, context_frames=1),
            r"not trained for video prediction",
        ),
        (dict(prompt="x", num_frames=0), r"--frames must be >= 1, got 0 \(leave it out for the model's length\)"),
        (dict(prompt="x", num_frames=-2), r"--frames must be >= 1, got -2"),
        (dict(prompt="x", num_frames=10**6), r"num_frames must be 1\.\.8 \(this model's clip length\)"),
        (dict(prompt="x", steps=10**6), r"num_inference_steps must be 1\.\.1000, got 1000000"),
        (dict(prompt="x", guidance_scale=float("nan")), r"--guidance must be a finite number, got nan"),
        (dict(prompt="<image> x", images=[bomb]), r"bomb\.png is 5000×5000 pixels; at most 16,777,216 are read"),
    ]
    for kwargs, pattern in cases:
        args = {"model": f"models:/{NAME}/1", **kwargs}
        with pytest.raises(VimiError, match=pattern):
            generate_video(settings, args.pop("model"), args.pop("prompt"), out, **args)
        assert not out.exists() and not list(tmp_path.glob(".never*")), kwargs
    with pytest.raises(VimiError, match=r"--out must end in \.mp4 or \.gif, got 'never\.avi'"):
        generate_video(settings, f"models:/{NAME}/1", "x", tmp_path / "never.avi")
    with pytest.raises(VimiError, match=r"neither an existing pipeline directory"):
        generate_video(settings, str(tmp_path / "no-model"), "x", out)
    # The command line prints the error in one line (no traceback) and exits 2.
    result = _run(["generate", "--model", f"models:/{NAME}@nope", "--prompt", "x", "--out", str(out)], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no alias @nope" in result.stderr and not out.exists()


def test_stage2_starts_from_a_run_uri(env):
    from vimi.registry import resolve_model

    resolved = resolve_model(env["settings"], f"runs:/{env['stage1']['run_id']}/pipeline")
    assert (resolved.path / "model_index.json").is_file() and resolved.run_id == env["stage1"]["run_id"]
    with pytest.raises(VimiError, match="No MLflow run 'nope'"):
        resolve_model(env["settings"], "runs:/nope/pipeline")


# ---- serving --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_serves_the_champion_on_loopback(env):
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**os.environ, **env["env"], "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(
                        f"mlflow models serve did not come up: {server.stderr.read()[-2000:]}"
                    ) from None
                time.sleep(1)
        png = io.BytesIO()
        Image.open(real_image_files()["coffee"]).convert("RGB").resize((32, 32)).save(png, format="PNG")
        body = {
            "dataframe_records": [
                {"prompt": "<image> a star bounces on the beach", "images": [base64.b64encode(png.getvalue()).decode()]}
            ],
            "params": {"num_inference_steps": 2, "format": "mp4", "seed": 1},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        video = answer["predictions"][0]
        frames, _ = decode_container(base64.b64decode(video["video"]))
        assert frames.shape == (8, 16, 16, 3) and video["num_frames"] == 8
        _load_test(port, server.pid, base64.b64encode(png.getvalue()).decode())
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _load_test(port: int, server_pid: int, b64: str) -> None:
    """8 concurrent clients on loopback, 3 requests each, good and bad mixed: every bad one answers
    400 with one line naming the field, every good one a correct clip, none 500; the server's memory
    stays under 3 GiB throughout."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    good = {
        "dataframe_records": [{"prompt": "a star moves left"}],
        "params": {"num_inference_steps": 2, "format": "gif"},
    }
    bad = [
        ({"dataframe_records": [{"prompt": "x"}], "params": {"num_frames": 10**6}}, "num_frames must be 1..8"),
        ({"dataframe_records": [{"prompt": "x"}], "params": {"num_inference_steps": -5}}, "num_inference_steps"),
        ({"dataframe_records": [{"prompt": "x"}], "params": {"guidance_scale": 1e12}}, "guidance_scale"),
        ({"dataframe_records": [{"prompt": "x"}] * 40}, "A request holds 1 to 16 rows"),
        ({"dataframe_records": [{"prompt": "<image> x", "images": ["@@@"]}]}, "is not base64"),
    ]
    peak, done = [0], threading.Event()

    def watch() -> None:
        tree = psutil.Process(server_pid)
        while not done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
            except psutil.Error:
                rss = 0
            peak[0] = max(peak[0], rss)
            time.sleep(0.2)

    def client(c: int) -> list[tuple[str, int, dict]]:
        out = []
        for r in range(3):
            if (c + r) % 2 == 0:
                out.append(("good", *_post(port, good)))
            else:
                body, expect = bad[(c + r) % len(bad)]
                out.append((expect, *_post(port, body)))
        return out

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(client, range(8)) for r in part]
    done.set()
    assert time.time() - start < 240
    goods = [answer for kind, code, answer in results if kind == "good" and code == 200]
    assert len(goods) == sum(kind == "good" for kind, _, _ in results) == 12
    for answer in goods:
        frames, _ = decode_container(base64.b64decode(answer["predictions"][0]["video"]))
        assert frames.shape == (8, 16, 16, 3)
    for kind, code, answer in results:
        if kind != "good":
            assert code == 400, (kind, code, answer)
            # MLflow's scoring server puts the request's data in front ("Failed to predict data ... Error: ")
            ours = answer["message"].rsplit("\nError: ", 1)[-1]
            assert kind in ours and "\n" not in ours.strip(), answer
    assert 0 < peak[0] < 3 * 2**30, f"server peak RSS {peak[0] / 2**30:.2f} GiB"


# ---- evaluation on UCF101 (the official layout, real clips) --------------------------------------


def _ucf101_layout(root: Path) -> Path:
    """ROOT/UCF-101/<Class>/v_*.avi + ROOT/ucfTrainTestlist/ with 2 classes × 2 real test clips of 20 frames."""
    splits = root / "ucfTrainTestlist"
    splits.mkdir(parents=True)
    lines = []
    for cls, source in (("Biking", "bikes"), ("Typing", "carphone")):
        frames = real_clip_frames(source, frames=40, max_side=64)
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        for g in (1, 2):
            rel = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
            write_video(frames[(g - 1) * 20 : g * 20], root / "UCF-101" / rel)
            lines.append(rel)
    (splits / "classInd.txt").write_text("1 Biking\n2 Typing\n")
    (splits / "testlist01.txt").write_text("".join(f"{rel}\n" for rel in lines))
    return root


def test_evaluate_ucf101_logs_fvd_everywhere(env, tmp_path):
    from mlflow import MlflowClient
    from vimi.evaluation.evaluate import evaluate_ucf101

    root = _ucf101_layout(tmp_path / "ucf")
    metrics_file = tmp_path / "reports" / "metrics.json"
    metrics_file.parent.mkdir()
    metrics_file.write_text(json.dumps({"spriteworld": {"kept": 1}}))
    result = evaluate_ucf101(
        env["settings"], f"models:/{NAME}/1", root, num_videos=4, steps=2, batch_size=4, metrics_file=metrics_file
    )
    assert result["videos"] == 4 and result["skipped"] == {} and np.isfinite(result["fvd_ucf101"])
    assert result["fvd_ucf101"] > 0 and result["frames_generated"] == 8
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.metrics["fvd_ucf101"] == pytest.approx(result["fvd_ucf101"])
    assert run.data.params["eval.num_videos"] == "4" and run.data.tags["vimi.model_version"] == "1"
    assert [f.path for f in client.list_artifacts(result["run_id"], "samples")] == ["samples/generated.gif"]
    tag = client.get_model_version(NAME, "1").tags["vimi.metric.fvd_ucf101"]
    assert float(tag) == pytest.approx(result["fvd_ucf101"], rel=1e-5)
    written = json.loads(metrics_file.read_text())
    assert written["spriteworld"] == {"kept": 1}  # other benchmarks' sections stay
    assert written["ucf101"]["fvd_ucf101"] == pytest.approx(result["fvd_ucf101"], abs=1e-4)
    assert written["ucf101"]["videos"] == 4 and written["ucf101"]["version"] == "1"
    with pytest.raises(VimiError, match=r"lists 4 video\(s\), fewer than the 6 asked for"):
        evaluate_ucf101(env["settings"], f"models:/{NAME}/1", root, num_videos=6)


def test_ucf101_step_reads_params(env, tmp_path):
    """The pipeline's UCF101 step (asset ucf101_metrics): off without evaluate.ucf101.root, else the protocol
    as params.yaml sets it, into the metrics file."""
    import copy

    from vimi.pipeline import evaluate_ucf101_configured

    settings = env["settings"]
    off = evaluate_ucf101_configured(settings, f"models:/{NAME}/1", None)
    assert off["configured"] is False and "evaluate.ucf101.root" in off["reason"]
    root = _ucf101_layout(tmp_path / "ucf")
    params = copy.deepcopy(settings.params)
    params["evaluate"]["ucf101"] = {"root": str(root), "num_videos": 3, "steps": 2}
    configured = Settings(
        params=params, root=settings.root, data_dir=settings.data_dir, params_path=settings.params_path
    )
    metrics_file = tmp_path / "metrics.json"
    result = evaluate_ucf101_configured(configured, f"models:/{NAME}/1", metrics_file)
    assert result["configured"] and result["videos"] == 3 and result["steps"] == 2 and result["split"] == "test"
    assert json.loads(metrics_file.read_text())["ucf101"]["fvd_ucf101"] == pytest.approx(result["fvd_ucf101"], abs=1e-4)
    params["evaluate"]["ucf101"]["num_videos"] = 5
    with pytest.raises(VimiError, match=r"lists 4 video\(s\), fewer than the 5 asked for"):
        evaluate_ucf101_configured(configured, f"models:/{NAME}/1", None)


# ---- evaluation on SpriteWorld (feature network, grounding metrics) -----------------------------


def test_psnr_by_hand():
    from vimi.evaluation.evaluate import _psnr

    a, b = np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 10, np.uint8)
    assert _psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 100))  # MSE 100: 28.13 dB
    assert _psnr(a, a) == float("inf")


def test_evaluate_spriteworld_metrics_reach_mlflow_the_file_and_the_version(env, tmp_path):
    from mlflow import MlflowClient
    from vimi.evaluation.evaluate import evaluate_spriteworld

    metrics_file = tmp_path / "metrics.json"
    # All 8 evaluation clips per task: 4 of them of unseen subjects.
    result = evaluate_spriteworld(env["settings"], f"models:/{NAME}/1", metrics_file=metrics_file, videos_per_task=8)
    assert result["videos"] == {"prediction": 8, "subject": 8, "text_to_video": 8}
    # Accuracies are shares of the clips they count: of 8 per task, of 24 in all.
    for key, n in (
        ("motion_accuracy", 24),
        ("motion_accuracy_real", 24),
        ("motion_accuracy_subject", 8),
        ("motion_accuracy_prediction", 8),
        ("motion_accuracy_text_to_video", 8),
    ):
        assert 0 <= result[key] <= 1 and result[key] * n == pytest.approx(round(result[key] * n)), key
    assert result["motion_accuracy"] == pytest.approx(
        np.mean([result[f"motion_accuracy_{t}"] for t in ("subject", "prediction", "text_to_video")])
    )
    assert result["fvd_syn"] >= 0 and 1 <= result["is_syn"] <= 12
    assert np.isfinite(result["prediction_psnr"]) and -1 <= result["prediction_ssim"] <= 1
    assert any(k.startswith("identity_accuracy_") for k in result)
    # Unseen subjects are generated with their reference image and, from the same noise, without it.
    for arm in ("with_reference", "without_reference"):
        assert 0 <= result[f"color_pair_accuracy_unseen_{arm}"] <= 1
    assert result["identity_clips_without_truth"] == 0
    gif = Path(result["grounding_gif"])
    assert gif.parent == tmp_path and gif.stat().st_size > 0
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.metrics["fvd_syn"] == pytest.approx(result["fvd_syn"])
    assert run.data.tags["vimi.benchmark"] == "spriteworld"
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert float(tags["vimi.metric.motion_accuracy"]) == pytest.approx(result["motion_accuracy"], abs=1e-6)
    assert json.loads(metrics_file.read_text())["spriteworld"]["videos"] == 24
