"""Settings (params.yaml, profiles, data location) and the command line's behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_params
from vimi.config import Settings, deep_merge, find_params_file, load_params
from vimi.errors import VimiError


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "vimi", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_profiles_override_the_base():
    tiny = load_params(REPO / "params.yaml")
    small = load_params(REPO / "params.yaml", "small")
    assert tiny["profile"] == "tiny" and small["profile"] == "small"
    assert small["world"]["subjects"] == 256 and small["world"]["fps"] == tiny["world"]["fps"]
    assert "profiles" not in small
    with pytest.raises(VimiError, match="Unknown profile 'huge'.*paper, small, tiny"):
        load_params(REPO / "params.yaml", "huge")


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "e": 6}) == {
        "a": {"b": 5, "c": 2},
        "d": 3,
        "e": 6,
    }


def test_params_found_upwards_and_data_dir(tmp_path, monkeypatch):
    write_params(tmp_path)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.delenv("VIMI_PARAMS", raising=False)
    monkeypatch.delenv("VIMI_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert find_params_file() == tmp_path / "params.yaml"
    assert Settings.load().data_dir == tmp_path / "data"
    monkeypatch.setenv("VIMI_DATA_DIR", "elsewhere")
    assert Settings.load().data_dir == tmp_path / "sub" / "deeper" / "elsewhere"
    assert Settings.load().path("memory") == tmp_path / "sub" / "deeper" / "elsewhere" / "memory.lance"


def test_no_params_file_is_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = run("memory", "build", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "No params.yaml found" in out.stderr and "Traceback" not in out.stderr


def test_params_sections_are_typed(project):
    """Every key of the repo's params.yaml is known in every profile; a misspelt key, in the chosen profile or
    another, is an error naming it and the keys its section knows; a value out of range or of the wrong type
    names the key; what loads is complete, defaults included."""
    for profile in ("tiny", "small", "paper"):
        assert load_params(REPO / "params.yaml", profile)["stage1"]["steps"] >= 1
    tiny = load_params(REPO / "params.yaml")
    assert tiny["align"]["grad_accum"] == 1 and tiny["evaluate"]["ucf101"]["steps"] is None  # defaults filled in
    import yaml

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["stage1"]["stpes"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    out = run("status")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "stage1.stpes: unknown key; known: steps, batch_size, grad_accum, lr" in " ".join(out.stderr.split())
    del raw["stage1"]["stpes"]
    raw["profiles"]["paper"]["retrieval"] = {"kk": 2}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(VimiError, match=r"\(profile paper\): retrieval.kk: unknown key; known: k, k1, b"):
        load_params(project / "params.yaml")
    del raw["profiles"]["paper"]["retrieval"]
    raw["retrieval"]["k"], raw["evaluate"]["ucf101"]["fold"], raw["ingest"]["batch_rows"] = 0, 4, "many"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(VimiError) as bad:
        load_params(project / "params.yaml")
    assert "retrieval.k: input should be greater than or equal to 1, got 0" in str(bad.value)
    assert "evaluate.ucf101.fold: input should be less than or equal to 3, got 4" in str(bad.value)
    assert "ingest.batch_rows: input should be a valid integer" in str(bad.value) and "'many'" in str(bad.value)


def test_a_step_sees_only_the_params_it_declares(project):
    import copy

    from vimi.steps import STEP

    full = Settings.load()
    step = STEP["augmented_video_dataset"]  # declares retrieval.k, .search_threads, .augment_partitions and the gate's
    scoped = step.scope(full)
    retrieval = scoped.section("retrieval")
    assert retrieval["k"] == full.params["retrieval"]["k"] == 4
    assert retrieval.get("min_coverage") == 0.99 and dict(retrieval).keys() == {
        "k",
        "search_threads",
        "augment_partitions",
        "min_coverage",
        "min_recall_at_k",
    }
    with pytest.raises(VimiError) as undeclared:
        retrieval.get("k1", 0.9)  # a default does not hide an undeclared read
    assert str(undeclared.value) == (
        "Step augmented_video_dataset read params key retrieval.k1, which the step map (vimi/steps.py) does not "
        "declare for it; it declares: retrieval.k, retrieval.search_threads, retrieval.augment_partitions, "
        "retrieval.min_coverage, "
        "retrieval.min_recall_at_k."
    )
    with pytest.raises(VimiError, match="read params key stage1, "):
        scoped.params.get("stage1", {})
    with pytest.raises(VimiError, match="read params key seed, "):
        scoped.seed
    # a whole section reads as the plain section; the run's record keeps everything
    stage1 = STEP["stage1_model"].scope(full)
    assert stage1.section("stage1") == full.params["stage1"] and stage1.seed == full.seed
    assert stage1.recorded_params == full.params and stage1.profile == "tiny"
    assert copy.deepcopy(scoped).section("retrieval") == dict(retrieval)
    # every step's declarations name keys params.yaml has (a misspelt declaration would read as absent)
    for each in STEP.values():
        for key in each.all_params:
            node = full.params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (each.name, key)
                node = node[part]


def test_bad_params_value_is_named(project):
    write_params(project, world={"frame_size": 2})
    out = run("world", "generate", "--part", "catalog", "--part", "videos")
    assert out.returncode == 2 and "frame_size must be >= 8, got 2" in out.stderr
    out = run("world", "generate", "--part", "everything")
    assert out.returncode == 2 and "Unknown part(s) everything" in out.stderr


def test_world_generate_json_and_out(project, tmp_path):
    out = run("world", "generate", "--out", str(tmp_path / "elsewhere"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["catalog"]["subjects"] == 8
    assert result["memory"]["rows"] == 240 and result["memory"]["version"] == 1
    assert result["videos"]["rows"] == 24 and result["eval_videos"]["rows"] == 8
    assert Path(result["memory"]["path"]) == tmp_path / "elsewhere" / "memory.lance"
    assert not (project / "data" / "memory.lance").exists()
    again = json.loads(
        run("world", "generate", "--part", "memory", "--out", str(tmp_path / "elsewhere"), "--json").stdout
    )
    assert again["memory"]["version"] == 2 and again["memory"]["fingerprint"] == result["memory"]["fingerprint"]


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["world", "generate"],
        ["memory", "ingest"],
        ["memory", "build"],
        ["videos", "ingest"],
        ["videos", "build"],
        ["validate"],
        ["bench", "memory"],
        ["instructions", "build"],
        ["train", "stage2"],
        ["promote"],
        ["generate"],
        ["train", "featurenet"],
        ["evaluate"],
        ["fvd"],
        ["bench", "eval"],
        ["ablation"],
        ["bench", "pipeline"],
        ["report"],
    ],
)
def test_every_command_has_help(command):
    out = run(*command, "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


def test_usage_errors_are_not_tracebacks(project):
    out = run("memory", "ingest", "x.tar")
    assert out.returncode == 2 and "--format" in out.stderr and "Traceback" not in out.stderr
    out = run("validate", "everything")
    assert out.returncode == 2 and "Traceback" not in out.stderr
