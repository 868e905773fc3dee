"""Dagster: the definitions load, assets materialize in process with metadata, GE checks run."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from orchestration import assets, checks
from orchestration.definitions import defs
from orchestration.resources import VimiSettings
from tests.conftest import REPO, write_params
from vimi.config import Settings

ASSETS = {
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
}
CHECKS = {"memory_suite", "videos_suite", "eval_videos_suite", "retrieval_quality", "instructions_suite"}


def test_definitions_hold_the_graph():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == ASSETS
    assert {k.name for k in graph.asset_check_keys} == CHECKS
    memory = graph.get(dg.AssetKey("image_text_memory"))
    assert {p.to_user_string() for p in memory.parent_keys} == {"spriteworld"}
    augmented = graph.get(dg.AssetKey("augmented_video_dataset"))
    assert {p.to_user_string() for p in augmented.parent_keys} == {"bm25_index", "video_corpus"}
    assert graph.get(dg.AssetKey("bm25_index")).parent_keys == {dg.AssetKey("image_text_memory")}
    stage1 = graph.get(dg.AssetKey("stage1_model"))
    assert {p.to_user_string() for p in stage1.parent_keys} == {"augmented_video_dataset", "image_encoder"}
    stage2 = graph.get(dg.AssetKey("stage2_model"))
    assert {p.to_user_string() for p in stage2.parent_keys} == {"stage1_model", "instruction_dataset"}
    instructions = graph.get(dg.AssetKey("instruction_dataset"))
    assert {p.to_user_string() for p in instructions.parent_keys} == {
        "augmented_video_dataset",
        "eval_video_corpus",
        "image_text_memory",
    }
    assert {p.to_user_string() for p in graph.get(dg.AssetKey("champion_model")).parent_keys} == {
        "spriteworld_metrics",
        "ucf101_metrics",
    }
    assert graph.get(dg.AssetKey("ucf101_metrics")).parent_keys == {dg.AssetKey("stage2_model")}
    metrics = graph.get(dg.AssetKey("spriteworld_metrics"))
    assert {p.to_user_string() for p in metrics.parent_keys} == {
        "stage2_model",
        "feature_network",
        "instruction_dataset",
    }


def materialize(project, extra=(), **resource):
    return dg.materialize(
        [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks]), *extra],
        resources={
            "vimi": VimiSettings(params_path=str(project / "params.yaml"), data_dir=str(project / "data"), **resource)
        },
        raise_on_error=False,
    )


def test_materialize_in_process(project):
    result = materialize(project)
    assert result.success
    events = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    mats = {m.asset_key.to_user_string(): m.metadata for m in events}
    assert set(mats) == ASSETS
    memory = mats["image_text_memory"]
    assert memory["dagster/row_count"].value == 240
    assert memory["lance_version"].value == 1
    assert memory["quarantined_total"].value == 0
    assert memory["sample_captions"].value.startswith("- ")
    assert mats["video_corpus"]["dagster/row_count"].value == 24
    assert mats["eval_video_corpus"]["dagster/row_count"].value == 8
    assert mats["spriteworld"]["subjects"].value == 8
    augmented = mats["augmented_video_dataset"]
    assert augmented["dagster/row_count"].value == 24 and augmented["coverage"].value == 1.0
    assert augmented["recall_at_k"].value >= 0.9 and "←" not in augmented["examples"].value
    assert augmented["examples"].value.startswith("**")
    index = mats["bm25_index"]
    assert index["docs"].value == 240 and index["partitions"].value == 4
    assert index["shards"].value == 1 and index["merged"].value is True  # merged at the commit
    stage1 = mats["stage1_model"]
    assert stage1["steps"].value == 6 and stage1["final_loss"].value > 0 and stage1["clips_per_s"].value > 0
    assert len(stage1["mlflow_run_id"].value) == 32 and stage1["mlflow_run"].url.endswith(stage1["mlflow_run_id"].value)
    assert os.path.getsize(stage1["sample_gif"].path) > 0
    assert (project / "models" / "stage1" / "model_index.json").is_file()
    assert 0 <= mats["image_encoder"]["caption_top1"].value <= 1
    instructions = mats["instruction_dataset"]
    assert instructions["dagster/row_count"].value == 24 * 2 + 8 * 3  # train: 2 per clip; eval: all 3 tasks
    assert sum(instructions["tasks"].value["train"].values()) == 48
    assert "<image>" in instructions["examples"].value
    stage2 = mats["stage2_model"]
    assert stage2["steps"].value == 4 and stage2["registered_version"].value == 1
    assert stage2["registered_model"].value == "models:/vimi-video-generator/1"
    assert stage2["checks"].value.startswith("passed")
    champion = mats["champion_model"]
    assert champion["promoted"].value and champion["champion_version"].value == "1"
    metrics = mats["spriteworld_metrics"]
    assert metrics["fvd_syn"].value >= 0 and 0 <= metrics["motion_accuracy"].value <= 1
    assert metrics["model_version"].value == "1" and metrics["videos"].value == {
        "prediction": 3,
        "subject": 3,
        "text_to_video": 3,
    }
    assert 0 <= mats["feature_network"]["eval_action_accuracy"].value <= 1
    # UCF101 is not shipped: unconfigured, the asset says what to set and evaluates nothing.
    assert mats["ucf101_metrics"]["configured"].value is False
    assert "evaluate.ucf101.root" in mats["ucf101_metrics"]["reason"].value
    # The run report: one self-contained page with what a person looks at after a run.
    page = (project / "reports" / "index.html").read_text()
    assert mats["report"]["path"].path == str(project / "reports" / "index.html")
    # stage 2's and stage 1's samples, and unseen subjects with and without their reference image
    assert mats["report"]["sample_videos"].value == 3 and mats["report"]["mlflow_run"].url
    assert "the clip generated with it" in page
    for section in (
        "Datasets",
        "Retrieved examples",
        "Sample videos",
        "Loss curves",
        "Metrics",
        "Registry",
        "Ablation",
    ):
        assert f"<h2>{section}</h2>" in page
    assert page.count('src="data:image/gif;base64,') == 3 and 'src="data:image/png;base64,' in page
    assert "fvd_syn" in page and "http" not in page.replace("http://127.0.0.1", "") and "<script" not in page
    caption = augmented["examples"].value.split("**")[1]  # a clip's caption with its retrieved images
    assert caption in page
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == CHECKS
    assert all(e.passed for e in evaluations)
    assert (project / "data" / "memory.lance").is_dir()


def test_failing_check_is_reported(project, tmp_path):
    # A validation threshold the data cannot meet: the blocking check fails, with its figures.
    write_params(project, validate={"min_rows": 10_000})
    result = materialize(project)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["memory_suite"].passed
    assert evaluations["memory_suite"].metadata["failed_expectations"].value == 1
    assert "needs >= 10000 (params.yaml validate.min_rows)" in evaluations["memory_suite"].description
    assert not result.success


def test_memory_from_configured_sources(project, tmp_path):
    """With data.memory_sources set, the memory asset ingests them instead of SpriteWorld."""
    import io
    import tarfile

    from tests.conftest import encode_image, real_image_files

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (name, path) in enumerate(real_image_files().items()):
            for ext, data in (("jpg", encode_image(path, "JPEG")[0]), ("txt", f"a photo: {name}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    write_params(
        project, data={"memory_sources": [{"format": "webdataset", "source": str(shard)}], "video_sources": []}
    )
    result = dg.materialize(
        [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])],
        resources={"vimi": VimiSettings(params_path=str(project / "params.yaml"), data_dir=str(project / "data"))},
        selection=["spriteworld", "image_text_memory"],
    )
    memory = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("image_text_memory")
    ][0]
    assert memory.metadata["dagster/row_count"].value == 7
    assert memory.metadata["source"].value == "ingest"


def test_failing_retrieval_gate_blocks_stage1(project):
    write_params(project, retrieval={"min_recall_at_k": 1.01})
    result = materialize(project)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["retrieval_quality"].passed
    assert evaluations["retrieval_quality"].metadata["recall_at_k"].value < 1.01
    assert "needs >= 1.01 (params.yaml retrieval.min_recall_at_k)" in evaluations["retrieval_quality"].description
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"augmented_video_dataset", "image_encoder"} <= done and "stage1_model" not in done
    assert not (project / "models" / "stage1").exists()


def test_code_versions_follow_the_params_dvc_stages_read():
    """Every asset's code version digests the params its DVC stage lists, and the edges it digests are the graph's;
    the DVC stages are the assets, by the same names."""
    import yaml

    from orchestration.versions import ASSET_PARAMS, UPSTREAM

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(ASSET_PARAMS) == ASSETS == set(UPSTREAM) == set(stages)
    for asset in ASSETS:
        # A stage also lists the profile and the profiles: the values it reads are merged from them, which
        # the code version sees as the resolved values.
        listed = stages[asset].get("params", [])
        assert not listed or {"profile", "profiles"} <= set(listed), asset
        drop = {"profiles"} | ({"profile"} - set(ASSET_PARAMS[asset]))
        assert sorted(ASSET_PARAMS[asset]) == sorted(p for p in listed if p not in drop), asset
    graph = defs.resolve_asset_graph()
    for asset in ASSETS:
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(asset)).parent_keys} == set(UPSTREAM[asset]), asset


def test_one_step_map_drives_both_drivers():
    """dvc.yaml and docs/lineage.svg are what the step map gives; each stage depends on its upstream steps' outputs;
    each suite is a blocking check on its step's asset; each step's command exists and runs its pipeline function."""
    import ast
    import inspect

    import yaml
    from typer.main import get_command
    from typer.testing import CliRunner

    from vimi import cli, pipeline
    from vimi.steps import STEP, STEPS, dvc_yaml, lineage_svg

    assert (REPO / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: run `make dvc.yaml`"
    assert (REPO / "docs" / "lineage.svg").read_text() == lineage_svg(), "run `vimi lineage-svg`"
    readme = (REPO / "README.md").read_text()
    for step in STEPS:  # the README's table of steps is the map's
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{step.name}` |")), "")
        assert f"| `{step.plain_command}`" in row and all(f"`{path}`" in row for path in step.data_outs), step.name
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [step.name for step in STEPS]
    names = {step.name for step in STEPS}
    for i, step in enumerate(STEPS):
        assert set(step.upstream) <= {s.name for s in STEPS[:i]}, step.name  # listed after what it needs
        deps = set(stages[step.name].get("deps", []))
        for parent in step.upstream:
            assert {o.path for o in STEP[parent].all_outs} <= deps, (step.name, parent)
        outs = {
            next(iter(o)) if isinstance(o, dict) else o
            for o in stages[step.name].get("outs", []) + stages[step.name].get("metrics", [])
        }
        assert outs == {o.path for o in step.all_outs}, step.name
        assert getattr(pipeline, step.function.__name__) is step.function, step.name
    assert names == ASSETS
    graph = defs.resolve_asset_graph()
    assert {key.name: key.asset_key.to_user_string() for key in graph.asset_check_keys} == {
        step.suite.check: step.name for step in STEPS if step.suite
    }
    from orchestration.checks import SUITE_CHECKS

    assert all(spec.blocking for check in SUITE_CHECKS for spec in check.check_specs)

    group = get_command(cli.app)
    runner = CliRunner()
    for step in STEPS:
        words = step.command.split()
        command = group
        while words and not words[0].startswith("-") and hasattr(command, "commands"):
            command = command.commands[words.pop(0)]
        out = runner.invoke(cli.app, step.command.split() + ["--help"])
        assert out.exit_code == 0, (step.command, out.output)
        source = ast.parse(inspect.getsource(command.callback).lstrip())
        imported = {
            alias.name
            for node in ast.walk(source)
            if isinstance(node, ast.ImportFrom) and node.module == "vimi.pipeline"
            for alias in node.names
        }
        if step.partitions:  # the command runs the step map's partitions and commit (vimi.cli.data._partitioned)
            assert "_partitioned" in {
                n.func.id for n in ast.walk(source) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }, step.command
            continue
        assert step.function.__name__ in imported, (step.command, imported)


def test_retraining_schedule_and_jobs():
    from orchestration.schedules import operations
    from vimi.config import load_params

    ops = load_params(REPO / "params.yaml")["operations"]
    schedule = defs.get_schedule_def("weekly_retraining")
    assert schedule.cron_schedule == ops["retrain_cron"] == operations()["retrain_cron"]
    assert schedule.execution_timezone == ops["timezone"] and schedule.job_name == "retraining"
    retraining = defs.resolve_job_def("retraining")
    assert {k.to_user_string() for k in retraining.asset_layer.executable_asset_keys} == {
        "stage1_model",
        "stage2_model",
        "spriteworld_metrics",
        "ucf101_metrics",
        "champion_model",
        "report",
    }
    retrieval = defs.resolve_job_def("retrieval")
    assert {k.to_user_string() for k in retrieval.asset_layer.executable_asset_keys} == {
        "bm25_index",
        "augmented_video_dataset",
    }
    sensor = defs.get_sensor_def("new_memory_version")
    assert sensor.job_name == "retrieval" and sensor.minimum_interval_seconds == ops["memory_sensor_interval_s"]


def test_memory_sensor_requests_retrieval_once_per_new_version(project):
    """No index yet → a run; the retrieval job rebuilds index and augmentation → skip; a new memory version
    (an ingest) → one run keyed by that version."""
    from orchestration.sensors import new_memory_version
    from vimi.pipeline import generate_world

    settings = Settings.load()
    generate_world(settings)
    resource = VimiSettings(params_path=str(project / "params.yaml"), data_dir=str(project / "data"))

    def tick():
        return new_memory_version(dg.build_sensor_context(resources={"vimi": resource}))

    first = tick()
    assert isinstance(first, dg.RunRequest) and first.run_key == "memory-v1"
    assert first.tags["vimi/index_memory_version"] == "None"
    job = dg.materialize(
        [*dg.load_assets_from_modules([assets])],
        resources={"vimi": resource},
        selection=["bm25_index", "augmented_video_dataset"],
    )
    assert job.success
    assert isinstance(tick(), dg.SkipReason)
    generate_world(settings, parts=("memory",))  # a new memory version: 2
    second = tick()
    assert isinstance(second, dg.RunRequest) and second.run_key == "memory-v2"
    assert second.tags == {"vimi/memory_version": "2", "vimi/index_memory_version": "1"}


def test_executor_is_chosen_by_configuration(monkeypatch):
    from orchestration.executors import configured_executor
    from vimi.errors import VimiError

    monkeypatch.delenv("VIMI_DAGSTER_EXECUTOR", raising=False)
    monkeypatch.delenv("VIMI_DAGSTER_MAX_CONCURRENT", raising=False)
    default = configured_executor()

    def concurrent(executor) -> int:
        return executor.config_schema.resolve_config({}).value["config"]["max_concurrent"]

    assert default.name == "multiprocess" and concurrent(default) == 1
    monkeypatch.setenv("VIMI_DAGSTER_MAX_CONCURRENT", "4")
    assert concurrent(configured_executor()) == 4
    monkeypatch.setenv("VIMI_DAGSTER_EXECUTOR", "in_process")
    assert configured_executor().name == "in_process"
    for kind, requirement in (("celery", "dagster-celery==0.29.28"), ("k8s", "dagster-k8s==0.29.28")):
        monkeypatch.setenv("VIMI_DAGSTER_EXECUTOR", kind)
        try:
            assert configured_executor().name in ("celery", "k8s")  # where the integration is installed
        except VimiError as exc:
            assert requirement in str(exc) and "docs/scaling.md" in str(exc)
    monkeypatch.setenv("VIMI_DAGSTER_EXECUTOR", "threads")
    with pytest.raises(VimiError, match="must be one of multiprocess, in_process, celery, k8s"):
        configured_executor()
    monkeypatch.setenv("VIMI_DAGSTER_EXECUTOR", "multiprocess")
    monkeypatch.setenv("VIMI_DAGSTER_MAX_CONCURRENT", "0")
    with pytest.raises(VimiError, match="positive integer"):
        configured_executor()


def test_resource_configures_paths_and_tracking_per_environment(project, tmp_path, monkeypatch):
    from vimi.tracking import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    resource = VimiSettings(
        params_path=str(project / "params.yaml"),
        data_dir=str(tmp_path / "prod-data"),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'prod.db'}",
    )
    settings = resource.load()
    assert (
        settings.data_dir == tmp_path / "prod-data"
        and settings.path("memory") == tmp_path / "prod-data" / "memory.lance"
    )
    assert tracking_uri(settings) == f"sqlite:///{tmp_path / 'prod.db'}"
    assert tracking_uri(VimiSettings(params_path=str(project / "params.yaml")).load()) == "sqlite:///elsewhere.db"
