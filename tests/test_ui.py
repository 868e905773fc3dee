"""The UIs people look at, checked in a real headless Chromium (Debian's `chromium`, which `make test`
installs): the Dagster UI lists every asset of the graph and draws each group's lineage; the MLflow UI
lists the runs and the registered model. Both servers run on free loopback ports; screenshots are
saved (into $VIMI_SCREENSHOTS when set, to keep them)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import micro_project, train_micro_pipeline
from tests.test_orchestration import ASSETS
from vimi.config import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1000",
]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def server(args: list[str], env: dict, url: str, log: Path) -> subprocess.Popen:
    """A server in its own process group (so it and its children stop together)."""
    proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(url, proc)
    except BaseException:
        stop(proc)
        raise AssertionError(f"{' '.join(args[:3])} did not start:\n{log.read_text()[-3000:]}") from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def browse(
    url: str,
    screenshot: Path | None = None,
    expect: tuple[str, ...] = (),
    budgets_ms: tuple[int, ...] = (20000, 45000, 90000),
) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it). Pages that fetch their data load
    slower on a busy machine: the page is read again with more (virtual) time until `expect` is in it."""
    import tempfile

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make test` installs Debian's chromium package"
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))  # a new profile: no state from another page
    for budget in budgets_ms:
        common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-2000:]
        if all(e in dom.stdout for e in expect):
            break
    if screenshot is not None:
        shot = subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
        with Image.open(screenshot) as img:
            assert img.size == (1600, 1000)
            colours = img.convert("RGB").resize((64, 40)).getcolors(64 * 40)
            assert colours is None or len(colours) > 8  # a drawn page, not a blank one
        keep = os.environ.get("VIMI_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy2(screenshot, Path(keep) / screenshot.name)
    shutil.rmtree(profile, ignore_errors=True)
    return dom.stdout


@pytest.fixture(scope="module")
def pipeline_project(tmp_path_factory):
    """A micro pipeline run: data, retrieval, stage 1 and stage 2 registered and promoted."""
    from vimi.pipeline import promote_model

    root = tmp_path_factory.mktemp("ui")
    env = micro_project(
        root, DAGSTER_HOME=str(root / "dagster"), DAGSTER_DISABLE_TELEMETRY="1", MLFLOW_DISABLE_TELEMETRY="true"
    )
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings.load()
        train_micro_pipeline(settings)
        promote_model(settings)
    yield {"root": root, "env": {**os.environ, **env}}


def test_dagster_ui_lists_every_asset_and_draws_the_graph(pipeline_project, tmp_path):
    from orchestration.definitions import defs

    port = free_port()
    env = pipeline_project["env"]
    proc = server(
        [str(BIN / "dagster"), "dev", "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env,
        f"http://127.0.0.1:{port}/server_info",
        tmp_path / "dagster.log",
    )
    try:
        # Bound to loopback only: the port answers on 127.0.0.1 and nothing listens on the other addresses.
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all(
            line.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))
            for line in listening.splitlines()
            if line.strip()
        ), listening
        base = f"http://127.0.0.1:{port}"
        catalog = browse(f"{base}/assets", tmp_path / "dagster-catalog.png", tuple(f">{a}<" for a in ASSETS))
        missing = sorted(a for a in ASSETS if f">{a}<" not in catalog)
        assert not missing, f"the asset catalog does not list {missing}"
        graph = defs.resolve_asset_graph()
        groups: dict[str, set[str]] = {}
        for key in graph.get_all_asset_keys():
            groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
        assert set(groups) == {"data", "retrieval", "instructions", "models", "evaluation"}
        for group, members in sorted(groups.items()):
            dom = browse(
                f"{base}/locations/orchestration.definitions/asset-groups/{group}",
                tmp_path / f"dagster-graph-{group}.png",
                tuple(members),
            )
            drawn = {a for a in members if a in dom}
            assert drawn == members, f"group {group}: the lineage graph does not draw {members - drawn}"
    finally:
        stop(proc)


def test_mlflow_ui_lists_the_runs_and_the_registered_model(pipeline_project, tmp_path):
    from mlflow.tracking import MlflowClient

    env = pipeline_project["env"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    stage2 = client.get_experiment_by_name("vimi-stage2")
    runs = client.search_runs([stage2.experiment_id])
    assert len(runs) == 1
    port = free_port()
    proc = server(
        [
            str(BIN / "mlflow"),
            "ui",
            "--backend-store-uri",
            env["MLFLOW_TRACKING_URI"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env,
        f"http://127.0.0.1:{port}/health",
        tmp_path / "mlflow.log",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        experiments = browse(
            f"{base}/#/experiments", tmp_path / "mlflow-experiments.png", ("vimi-align", "vimi-stage1", "vimi-stage2")
        )
        for name in ("vimi-align", "vimi-stage1", "vimi-stage2"):
            assert name in experiments, f"the MLflow UI does not list experiment {name}"
        run_list = browse(
            f"{base}/#/experiments/{stage2.experiment_id}/runs",
            tmp_path / "mlflow-runs.png",
            (runs[0].info.run_id, "<strong>1</strong> matching run"),
        )
        assert runs[0].info.run_id in run_list and "<strong>1</strong> matching run" in run_list
        models = browse(f"{base}/#/models", tmp_path / "mlflow-models.png", ("vimi-video-generator",))
        assert "vimi-video-generator" in models
        version = browse(
            f"{base}/#/models/vimi-video-generator", tmp_path / "mlflow-model-versions.png", ("champion", "Version 1")
        )
        assert "champion" in version and "Version 1" in version
    finally:
        stop(proc)
