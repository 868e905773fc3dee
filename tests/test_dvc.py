"""DVC parity: `dvc repro` in a temporary copy of the repo runs the same steps from params.yaml;
a second repro does nothing; push/pull through the configured local remote; `dvc exp run -S`."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pytest

from orchestration.dvc_record import lock_entries
from tests.conftest import REPO, write_params
from vimi.bench.lance_dvc import dvc_binary
from vimi.io import lance_io
from vimi.steps import STEP

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_copy(tmp_path) -> tuple[Path, dict]:
    """The repo's versioned files (what a clone has), micro params, committed in a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    root = tmp_path / "repo"
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    write_params(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIMI_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root, env


def dvc(root: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([dvc_binary(), *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_repro_twice_push_pull_and_experiment(repo_copy):
    root, env = repo_copy
    first = dvc(root, env, "repro")
    for stage in (
        "spriteworld",
        "image_text_memory",
        "video_corpus",
        "eval_video_corpus",
        "bm25_index",
        "augmented_video_dataset",
        "image_encoder",
        "stage1_model",
        "instruction_dataset",
        "stage2_model",
        "feature_network",
        "spriteworld_metrics",
        "ucf101_metrics",
        "champion_model",
        "report",
    ):
        assert f"Running stage '{stage}'" in first.stdout
    for suite in ("memory", "videos", "eval_videos", "retrieval", "instructions"):  # each stage ran its suite
        assert json.loads((root / "reports" / "validation" / f"{suite}.json").read_text())["success"] is True
    assert json.loads((root / "reports" / "ucf101.json").read_text())["ucf101"]["configured"] is False
    stage1 = json.loads((root / "reports" / "stage1.json").read_text())
    assert stage1["steps"] == 6 and stage1["final_loss"] > 0
    assert (root / "models" / "stage1" / "model_index.json").is_file()
    stage2 = json.loads((root / "reports" / "stage2.json").read_text())
    assert stage2["steps"] == 4 and stage2["registered_version"] == "1" and stage2["checks"] == "passed"
    assert json.loads((root / "reports" / "metrics.json").read_text())["spriteworld"]["videos"] == 9
    promotion = json.loads((root / "reports" / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["champion"] == "1"
    metrics = json.loads((root / "reports" / "retrieval.json").read_text())
    assert metrics["success"] is True and metrics["coverage"] == 1.0
    shown = dvc(root, env, "metrics", "show", "--json")
    assert "recall_at_k" in shown.stdout and "fvd_syn" in shown.stdout
    plots = json.loads(dvc(root, env, "plots", "show", "--json").stdout)
    assert not plots.get("errors"), plots["errors"]
    values = plots["data"]["loss"][0]["content"]["data"]["values"]
    assert {v["filename"] for v in values} == {
        "encoder/loss.csv",
        "stage1/loss.csv",
        "stage2/loss.csv",
        "featurenet/loss.csv",
    }
    assert [int(v["step"]) for v in values if v["filename"] == "stage1/loss.csv"] == [2, 4, 6]
    assert (root / "reports" / "index.html").stat().st_size > 10_000
    memory = root / "data" / "memory.lance"
    assert lance.dataset(str(memory)).count_rows() == 240
    assert (root / "reports" / "validation" / "memory.json").is_file()
    fingerprint = lance_io.fingerprint(memory)

    start = time.perf_counter()
    second = dvc(root, env, "repro")
    assert time.perf_counter() - start <= 10
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    # The configured local remote: push, lose the data and the cache, pull it back.
    dvc(root, env, "push")
    assert any((root / ".dvc-storage").rglob("*"))
    shutil.rmtree(memory)
    shutil.rmtree(root / ".dvc" / "cache")
    dvc(root, env, "pull")
    assert lance_io.fingerprint(memory) == fingerprint
    assert "up to date" in dvc(root, env, "status").stdout

    # `dvc exp run -S` (what antlr 4.13 breaks) with a changed parameter re-runs the world.
    exp = dvc(root, env, "exp", "run", "-S", "seed=1")
    assert "Running stage 'image_text_memory'" in exp.stdout and "Running stage 'augmented_video_dataset'" in exp.stdout
    # a retrieval parameter re-runs retrieval only
    exp = dvc(root, env, "exp", "run", "-S", "retrieval.k=3")
    assert (
        "Running stage 'augmented_video_dataset'" in exp.stdout
        and "Running stage 'image_text_memory'" not in exp.stdout
    )
    assert "Running stage 'stage1_model'" in exp.stdout and "Running stage 'image_encoder'" not in exp.stdout
    # a training parameter re-runs that training and what follows it, not the data
    exp = dvc(root, env, "exp", "run", "-S", "stage1.lr=0.002")
    assert "Running stage 'stage1_model'" in exp.stdout and "Running stage 'stage2_model'" in exp.stdout
    assert "Running stage 'augmented_video_dataset'" not in exp.stdout
    assert "Running stage 'feature_network'" not in exp.stdout
    assert lance_io.fingerprint(memory) != fingerprint
    shown = dvc(root, env, "exp", "show", "--csv", "--no-pager").stdout.splitlines()
    header = shown[0].split(",")
    seeds = [row.split(",")[header.index("seed")] for row in shown[1:]]
    assert seeds == ["1", "0", "1", "1", "1"]  # the workspace, the baseline commit, the three experiments


def _interrupt_repro(root: Path, env: dict, stage: str, sig: signal.Signals, timeout: float = 600) -> None:
    """`dvc repro`, stopped by SIG the moment it starts STAGE (its outputs already removed by DVC)."""
    proc = subprocess.Popen(
        [dvc_binary(), "repro"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A test run started in the background by a shell inherits SIGINT ignored, and so would DVC (Python
        # then installs no KeyboardInterrupt handler): give it Ctrl-C as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    fd, seen, deadline = proc.stdout.fileno(), b"", time.time() + timeout
    try:
        while f"Running stage '{stage}'".encode() not in seen:
            chunk = os.read(fd, 4096)
            assert chunk, f"dvc repro ended before {stage}:\n{seen.decode()[-2000:]}"
            seen += chunk
            assert time.time() < deadline, f"no stage {stage} in {timeout} s"
        time.sleep(2)  # mid-stage: the command is running
        os.killpg(proc.pid, sig)
        signalled = time.time()
        while True:  # drain what it still says (a full pipe would hold it up) until it ends
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                seen += chunk
            elif b"ERROR" not in seen and time.time() - signalled > 3:
                # A SIGINT that lands between a fork and its exec can be consumed by a handler the exec then
                # discards; the step runs on as if none came. A person presses Ctrl-C again.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                signalled = time.time()
            assert time.time() < deadline + 120, "dvc repro did not stop"
        assert proc.wait(timeout=120) != 0, seen.decode()[-2000:]
    finally:
        proc.stdout.close()


def test_interrupted_repro_leaves_data_the_next_run_repairs(repo_copy, monkeypatch):
    """`dvc repro` stopped mid-stage by SIGINT (while it writes the video corpus) and by SIGKILL (while stage 1
    trains, its model directory removed): the next `make run` (every asset, Dagster) succeeds, and DVC still
    works on the repository afterwards."""
    import dagster as dg

    from orchestration import assets, checks
    from orchestration.resources import VimiSettings

    root, env = repo_copy
    _interrupt_repro(root, env, "video_corpus", signal.SIGINT)
    _interrupt_repro(root, env, "stage1_model", signal.SIGKILL)
    assert not (root / "models" / "stage1" / "model_index.json").exists()
    for key in ("VIMI_PARAMS", "VIMI_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    result = dg.materialize(
        [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])],
        resources={"vimi": VimiSettings(params_path=str(root / "params.yaml"), data_dir=str(root / "data"))},
        raise_on_error=False,
    )
    assert result.success
    assert (root / "models" / "stage1" / "model_index.json").is_file()
    assert lance.dataset(str(root / "data" / "videos.lance")).count_rows() == 24
    assert (root / "reports" / "index.html").is_file()
    # DVC answers (no lock is left behind by the killed run) and holds what the Dagster run made.
    assert "Data and pipelines are up to date." in dvc(root, env, "status").stdout


def _record(root: Path, env: dict, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "orchestration.dvc_record", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def _dagster_not_fresh(root: Path, env: dict) -> set[str]:
    """What the Dagster UI of ROOT shows as stale or missing, read in a fresh process (the definitions as
    params.yaml makes them now)."""
    status = json.loads(_record(root, env, "stale", "--json").splitlines()[-1])
    assert set(status) == set(STEP)
    return {name for name, value in status.items() if value != "FRESH"}


def test_dagster_and_dvc_keep_one_record(repo_copy):
    """`make run`'s `dagster asset materialize --select '*'` (the command that antlr 4.9 breaks) leaves DVC
    nothing to do; after `make repro` Dagster shows nothing stale; a changed parameter is stale to both, in
    the same stages."""
    root, env = repo_copy
    env = dict(env, DAGSTER_HOME=str(root / ".dagster"), DAGSTER_DISABLE_TELEMETRY="1")
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    run = subprocess.run(
        [dagster, "asset", "materialize", "-m", "orchestration.definitions", "--select", "*"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0 and "RUN_SUCCESS" in run.stderr, run.stderr[-3000:]
    for check in ("memory_suite", "videos_suite", "eval_videos_suite", "retrieval_quality", "instructions_suite"):
        assert f"Asset check '{check}'" in run.stderr and "passed" in run.stderr
    # Every output each DVC stage declares is there, where the stage writes it.
    for step in STEP.values():
        for out in step.all_outs:
            assert (root / out.path).exists(), f"{step.name}: no {out.path}"
    stage2 = json.loads((root / "reports" / "stage2.json").read_text())
    assert stage2["registered_version"] == "1" and stage2["checks"] == "passed"
    assert json.loads((root / "reports" / "validation" / "retrieval.json").read_text())["success"] is True
    assert json.loads((root / "reports" / "promotion.json").read_text())["champion"] == "1"
    assert set(lock_entries(root)) == set(STEP)

    assert "Data and pipelines are up to date." in dvc(root, env, "status").stdout
    repro = dvc(root, env, "repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    assert _dagster_not_fresh(root, env) == set()
    assert _record(root, env, "sync") == "Nothing to record."

    # One changed parameter: DVC finds the stage that reads it changed, Dagster that asset and everything
    # below it stale, and `dvc repro` runs exactly those.
    write_params(root, stage1={"lr": 0.002})
    assert set(json.loads(dvc(root, env, "status", "--json").stdout)) == {"stage1_model"}
    stale = _dagster_not_fresh(root, env)
    assert stale == {
        "stage1_model",
        "stage2_model",
        "spriteworld_metrics",
        "ucf101_metrics",
        "champion_model",
        "report",
    }
    repro = dvc(root, env, "repro")
    ran = [name for name in STEP if f"Running stage '{name}'" in repro.stdout]
    assert set(ran) == stale, repro.stdout
    # `make repro` records in Dagster what DVC made; then nothing is stale to either.
    assert _record(root, env, "sync") == f"Recorded in Dagster what dvc repro made: {', '.join(ran)}."
    assert _dagster_not_fresh(root, env) == set()
    assert "Data and pipelines are up to date." in dvc(root, env, "status").stdout
    assert _record(root, env, "sync") == "Nothing to record."

    # A retrieval parameter: the augmentation and everything below it, in both.
    write_params(root, stage1={"lr": 0.002}, retrieval={"k": 3})
    assert set(json.loads(dvc(root, env, "status", "--json").stdout)) == {"augmented_video_dataset"}
    assert _dagster_not_fresh(root, env) == {
        "augmented_video_dataset",
        "stage1_model",
        "instruction_dataset",
        "stage2_model",
        "spriteworld_metrics",
        "ucf101_metrics",
        "champion_model",
        "report",
    }
