"""Faults: kill -9 during augmentation and evaluation, then run again (training's kill-and-resume is in
test_train.py); two runs of the same step at once (the second refuses, naming the first); a crashed
holder leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.conftest import micro_project, train_micro_pipeline
from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io import lance_io
from vimi.locks import step_lock

VIMI = [sys.executable, "-m", "vimi"]


def _env(project) -> dict:
    return {**os.environ, "VIMI_PROGRESS": "0"}


def _kill_at(args: list[str], env: dict, cwd, marker: str, timeout: float = 300) -> bool:
    """Start a vimi command and SIGKILL it (and its children) the moment its progress output shows `marker`
    (a step's progress bar appearing); False if it ended before that."""
    proc = subprocess.Popen(
        [*VIMI, *args],
        env={**env, "VIMI_PROGRESS": "1"},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    seen, deadline = b"", time.time() + timeout
    try:
        while marker.encode() not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:  # it ended
                proc.wait()
                return False
            seen = (seen + chunk)[-4096:]
            assert time.time() < deadline, f"no {marker!r} in {timeout} s"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    finally:
        proc.stderr.close()


def _augmented_is_whole(settings: Settings, clips: int) -> int | None:
    """The augmented dataset is absent or whole (every clip once); its version."""
    uri = settings.path("augmented")
    if not lance_io.exists(uri):
        return None
    ds = lance_io.open_dataset(uri)
    ids = ds.to_table(columns=["clip_id"]).column(0).to_pylist()
    assert len(ids) == clips and len(set(ids)) == clips, (len(ids), len(set(ids)))
    return ds.version


@pytest.mark.slow
def test_kill_during_augmentation_then_rerun(project):
    from vimi.pipeline import build_bm25_index, generate_world

    settings = Settings.load()
    generate_world(settings)
    build_bm25_index(settings)
    env = _env(project)
    versions = []
    # Killed once the JVM is up and retrieval has begun, before and after a first complete run: never a
    # half-written dataset, the previous version (or none) stays.
    for _ in range(2):
        assert _kill_at(["augment"], env, project, "retrieving"), "augmentation ended before it could be killed"
        versions.append(_augmented_is_whole(settings, 24))
    assert versions == [None, None]
    assert subprocess.run([*VIMI, "augment"], env=env, cwd=project, capture_output=True).returncode == 0
    # params.yaml now splits the clips in three partitions: a rebuild writes every row again; killed,
    # version 1 stays
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrieval"]["augment_partitions"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert _kill_at(["augment"], env, project, "retrieving")
    versions.append(_augmented_is_whole(settings, 24))
    assert versions[-1] == 1
    out = subprocess.run([*VIMI, "augment", "--json"], env=env, cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    final = _augmented_is_whole(settings, 24)
    assert final == 2
    assert json.loads(out.stdout)["rows"] == 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from vimi.pipeline import train_feature_network

    root = tmp_path_factory.mktemp("faults")
    env = micro_project(root, VIMI_PROGRESS="0")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings.load()
        train_micro_pipeline(settings, register=False)
        train_feature_network(settings)
        yield {"root": root, "env": {**os.environ, **env}, "settings": settings}


@pytest.mark.slow
def test_kill_during_evaluation_then_rerun(trained):
    from mlflow.tracking import MlflowClient

    root, env = trained["root"], trained["env"]
    metrics = root / "reports" / "metrics.json"
    metrics.parent.mkdir(exist_ok=True)
    metrics.write_text(json.dumps({"ucf101": {"fvd_ucf101": 1.0}}) + "\n")
    args = [
        "evaluate",
        "--benchmark",
        "spriteworld",
        "--model",
        str(root / "models" / "stage2"),
        "--videos-per-task",
        "8",
        "--steps",
        "20",
        "--metrics",
        str(metrics),
        "--json",
    ]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    def spriteworld_runs():
        exp = client.get_experiment_by_name("vimi-eval")
        return client.search_runs([exp.experiment_id], "tags.`vimi.benchmark` = 'spriteworld'") if exp else []

    first = subprocess.run([*VIMI, *args], env=env, cwd=root, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    after_first = metrics.read_text()
    assert json.loads(after_first)["ucf101"] == {"fvd_ucf101": 1.0}  # the other section kept
    # Killed while it generates: the first task's clips, then the last task's.
    for marker in ("generating prediction", "generating text_to_video"):
        assert _kill_at(args, env, root, marker), "the evaluation ended before it could be killed"
        assert metrics.read_text() == after_first  # nothing half-written
        assert [r.info.status for r in spriteworld_runs()] == ["FINISHED"]  # no run left behind
    again = subprocess.run([*VIMI, *args], env=env, cwd=root, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    # Seeded: the rerun's figures are the first run's; one more finished run, nothing else.
    assert json.loads(again.stdout)["fvd_syn"] == pytest.approx(json.loads(first.stdout)["fvd_syn"], rel=1e-6)
    assert json.loads(metrics.read_text())["spriteworld"] == json.loads(after_first)["spriteworld"]
    assert [r.info.status for r in spriteworld_runs()] == ["FINISHED", "FINISHED"]


def test_a_second_run_of_a_step_refuses_while_the_first_holds_it(project):
    from vimi.pipeline import augment_videos, build_bm25_index, generate_world

    settings = Settings.load()
    generate_world(settings)
    build_bm25_index(settings)
    with step_lock(settings.data_dir / ".locks", "augment"):
        with pytest.raises(VimiError, match=rf"Another run of the augment step is in progress .*pid {os.getpid()}"):
            augment_videos(settings)
        # From another process: the CLI says so in one sentence, exit code 2, nothing written.
        out = subprocess.run([*VIMI, "augment"], env=_env(project), cwd=project, capture_output=True, text=True)
        assert out.returncode == 2 and "Another run of the augment step" in out.stderr
        assert "Traceback" not in out.stderr
        assert not lance_io.exists(settings.path("augmented"))
        # Other steps are not held up by it.
        build_bm25_index(settings)
    assert augment_videos(settings)["rows"] == 24


def test_two_concurrent_runs_end_consistent(project):
    """Started together: one does the work, the other refuses; the dataset is whole."""
    from vimi.pipeline import build_bm25_index, generate_world

    settings = Settings.load()
    generate_world(settings)
    build_bm25_index(settings)
    env = _env(project)
    procs = [
        subprocess.Popen(
            [*VIMI, "augment"], env=env, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the second either refused or came after
    if codes == [0, 2]:
        assert any("Another run of the augment step" in err for code, err in results if code == 2)
    assert _augmented_is_whole(settings, 24) in (1, 2)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import os, signal; from pathlib import Path; from vimi.locks import step_lock\n"
        f"with step_lock(Path({str(tmp_path)!r}), 'stage1'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "stage1.lock").read_text())["step"] == "stage1"  # the file stays, the lock not
    with step_lock(tmp_path, "stage1") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_runs_whose_process_died_are_closed_and_live_ones_left_alone(project):
    import mlflow
    from vimi.config import Settings
    from vimi.tracking import close_orphan_runs, experiment_id, process_tags

    exp = experiment_id(Settings.load(), "vimi-stage1")
    client = mlflow.tracking.MlflowClient()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = client.create_run(exp, tags=process_tags()).info.run_id  # this test's own process
    orphan = client.create_run(exp, tags={**process_tags(), "vimi.pid": str(dead.pid)}).info.run_id
    # the pid alive again but another process (pid reuse): its start time differs
    reused = client.create_run(exp, tags={**process_tags(), "vimi.pid_started": "1.000"}).info.run_id
    elsewhere = client.create_run(
        exp, tags={**process_tags(), "vimi.host": "another-host", "vimi.pid": str(dead.pid)}
    ).info.run_id
    untagged = client.create_run(exp).info.run_id
    finished = client.create_run(exp, tags={**process_tags(), "vimi.pid": str(dead.pid)}).info.run_id
    client.set_terminated(finished, "FINISHED")

    assert sorted(close_orphan_runs(exp)) == sorted([orphan, reused])
    status = {run: client.get_run(run).info.status for run in (live, orphan, reused, elsewhere, untagged, finished)}
    assert status == {
        live: "RUNNING",
        orphan: "KILLED",
        reused: "KILLED",
        elsewhere: "RUNNING",
        untagged: "RUNNING",
        finished: "FINISHED",
    }
    assert f"process {dead.pid} on " in client.get_run(orphan).data.tags["vimi.orphaned"]
    assert close_orphan_runs(exp) == []


_SWAP_CHILD = """
import os, pathlib, shutil, signal, sys
from vimi.io.files import replace_dir
root, kill_at = pathlib.Path(sys.argv[1]), int(sys.argv[2])
calls = []
def dying(real):
    def call(*args, **kwargs):
        calls.append(real.__name__)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
pathlib.Path.rename = dying(pathlib.Path.rename)
shutil.rmtree = dying(shutil.rmtree)
new = root / ".new"
new.mkdir()
for i in range(50):
    (new / f"part-{i}").write_text("new")
replace_dir(new, root / "model")
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_a_directory_swap_killed_at_any_point_leaves_a_whole_directory(tmp_path, kill_at):
    """replace_dir (the final pipeline, checkpoints, the BM25 index) killed before each rename and each
    delete it makes: afterwards the directory is the old one or the new one, whole, never missing."""
    from vimi.io.files import recover_dir
    from vimi.models.pipeline import load_pipeline

    model = tmp_path / "model"
    model.mkdir()
    for i in range(50):
        (model / f"part-{i}").write_text("old")
    proc = subprocess.run([sys.executable, "-c", _SWAP_CHILD, str(tmp_path), str(kill_at)])
    assert proc.returncode in (0, -signal.SIGKILL)
    if not model.exists():  # killed between the renames: the reader's recovery puts the old one back
        with pytest.raises(VimiError, match="is not a ViMi pipeline directory"):
            load_pipeline(model)  # recovers first, then finds parts, not a pipeline
    recover_dir(model)
    contents = {p.read_text() for p in model.iterdir()}
    assert len(list(model.iterdir())) == 50 and contents in ({"old"}, {"new"})


def test_json_written_by_a_killed_process_is_whole(tmp_path):
    """write_json (run.json, reports, bench results) killed at random points: the file always parses."""
    code = (
        "import sys; from pathlib import Path; from vimi.io.files import write_json\n"
        "for i in range(10**9): write_json(Path(sys.argv[1]), {'i': i, 'pad': 'x' * 200000})\n"
    )
    target = tmp_path / "run.json"
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
        while not target.exists():
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.05, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(json.loads(target.read_text())["pad"]) == 200000
