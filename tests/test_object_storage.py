"""Object storage, as docs/scaling.md configures it, against a real S3 API (moto's server on loopback):
the pipeline with its Lance datasets on S3 (VIMI_LANCE_URI), and the DVC remote on S3 (`dvc push` of
a Lance dataset, `dvc pull` of it into an empty checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import lance

from tests.conftest import train_micro_pipeline, write_params
from tests.test_ingest_memory import EXPECTED, photos, shards  # noqa: F401 (fixtures)
from vimi.bench.lance_dvc import dvc_binary
from vimi.config import Settings
from vimi.io import lance_io

LANCE_DATASETS = ("memory", "videos", "eval_videos", "augmented", "instructions")


def test_the_pipeline_with_its_lance_datasets_on_s3(project, s3, monkeypatch):
    import mlflow
    from vimi.pipeline import compact_datasets, evaluate_model, train_feature_network, validate_dataset
    from vimi.status import data_status

    _, client = s3
    monkeypatch.setenv("VIMI_LANCE_URI", "s3://vimi-data/pipeline")
    settings = Settings.load()
    assert str(settings.path("memory")) == "s3://vimi-data/pipeline/memory.lance"
    assert settings.path("bm25") == project / "data" / "bm25"  # Lucene needs a file system
    stage1, stage2 = train_micro_pipeline(settings)
    for suite in ("memory", "videos", "eval_videos", "retrieval", "instructions"):
        assert validate_dataset(settings, suite).success, suite
    train_feature_network(settings)
    metrics = evaluate_model(settings, model=stage2["path"])
    assert 0 <= metrics["motion_accuracy"] <= 1 and metrics["videos"]

    # every dataset is in the bucket, none on local disk; the index and catalog are local
    stored = {
        o["Key"].split("/")[1] for o in client.list_objects_v2(Bucket="vimi-data", Prefix="pipeline/")["Contents"]
    }
    assert {f"{name}.lance" for name in LANCE_DATASETS} <= stored
    assert not list((project / "data").glob("*.lance"))
    assert (project / "data" / "bm25" / "vimi_index.json").is_file()
    status = data_status(settings)["datasets"]
    assert status["memory"]["rows"] == settings.params["world"]["memory_docs"]
    assert status["augmented"]["path"] == "s3://vimi-data/pipeline/augmented.lance"
    # provenance names the bucket: the augmented rows, the instructions, the training run's inputs
    aug = lance.dataset("s3://vimi-data/pipeline/augmented.lance").to_table(columns=["memory_path"])
    assert set(aug.column("memory_path").to_pylist()) == {"s3://vimi-data/pipeline/memory.lance"}
    run = mlflow.tracking.MlflowClient().get_run(stage1["run_id"])
    sources = {d.dataset.name.split("@")[0]: d.dataset.source for d in run.inputs.dataset_inputs}
    assert "s3://vimi-data/pipeline/augmented.lance" in sources["augmented"]
    # a rebuild (in one partition: its rows are written again, one fragment that --prune does not
    # compact), then --prune on the bucket: the version the instructions read stays readable
    from vimi.pipeline import augment_videos

    settings.params["retrieval"]["augment_partitions"] = 1
    assert augment_videos(settings)["version"] == 2
    pruned = compact_datasets(settings, ["augmented"], prune=True)["augmented"]
    assert pruned["versions_kept"] == [1, 2] and pruned["files"] <= pruned["files_before"]
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "status"], capture_output=True, text=True, env=dict(os.environ), cwd=project
    )
    assert out.returncode == 0 and "augmented: 24 rows, version 2" in out.stdout, out.stderr[-2000:]


def test_ingest_into_a_memory_on_s3_counts_and_quarantines_there(project, s3, shards, monkeypatch):  # noqa: F811
    monkeypatch.setenv("VIMI_LANCE_URI", "s3://vimi-data/ingest")

    def ingest(*sources: str, prefix: str = "") -> dict:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "vimi",
                "memory",
                "ingest",
                "--format",
                "webdataset",
                *sources,
                "--id-prefix",
                prefix,
                "--json",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            cwd=project,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    first = ingest(str(shards / "{00000..00001}.tar"))
    Settings.load()  # this process reads the bucket below: the same endpoint set-up as vimi's
    assert first["ingested"] == 5 and first["quarantined"] == EXPECTED and first["version"] == 1
    memory = lance.dataset("s3://vimi-data/ingest/memory.lance")
    assert sorted(memory.to_table(columns=["id"]).column("id").to_pylist()) == [
        "000000",
        "000001",
        "000002",
        "000007",
        "000009",
    ]
    quarantine = lance.dataset("s3://vimi-data/ingest/quarantine.lance").to_table().to_pylist()
    assert len(quarantine) == sum(EXPECTED.values())
    assert {q["dataset"] for q in quarantine} == {"s3://vimi-data/ingest/memory.lance"}
    again = ingest(str(shards / "00001.tar"), prefix="b/")  # an append: one more version on S3
    assert again["ingested"] == 3 and again["version"] == 2
    assert lance.dataset("s3://vimi-data/ingest/memory.lance", version=1).count_rows() == 5
    assert not list((project / "data").glob("*.lance"))


def test_dvc_push_and_pull_of_a_lance_dataset_through_s3(tmp_path, s3):
    endpoint, client = s3
    root = tmp_path / "project"
    root.mkdir()
    write_params(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIMI_")} | {"DVC_NO_ANALYTICS": "1"}

    def run(*args: str) -> str:
        out = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return out.stdout

    run(sys.executable, "-m", "vimi", "world", "generate", "--part", "catalog", "--part", "memory")
    memory = root / "data" / "memory.lance"
    rows, fingerprint = lance.dataset(str(memory)).count_rows(), lance_io.fingerprint(memory)
    # the configuration of docs/scaling.md ("DVC remote on object storage"), endpoint for S3-compatible stores
    run("git", "init", "-q")
    run(dvc_binary(), "init", "-q")
    run(dvc_binary(), "remote", "add", "-d", "s3", "s3://vimi-data/dvc")
    run(dvc_binary(), "remote", "modify", "s3", "endpointurl", endpoint)
    run(dvc_binary(), "add", "-q", "data/memory.lance")
    run(dvc_binary(), "push", "-q")
    stored = [o["Key"] for o in client.list_objects_v2(Bucket="vimi-data", Prefix="dvc/").get("Contents", [])]
    files = [p for p in memory.rglob("*") if p.is_file()]
    assert len(stored) == len(files) + 1  # every file of the dataset, and the .dir listing

    shutil.rmtree(memory)
    shutil.rmtree(root / ".dvc" / "cache")
    run(dvc_binary(), "pull", "-q")
    assert lance.dataset(str(memory)).count_rows() == rows and lance_io.fingerprint(memory) == fingerprint
    assert "in sync" in run(dvc_binary(), "status", "-c")


def test_dagster_materializes_the_data_assets_into_s3(project, s3):
    import dagster as dg

    from orchestration import assets, checks
    from orchestration.resources import VimiSettings

    resource = VimiSettings(
        params_path=str(project / "params.yaml"), data_dir=str(project / "data"), lance_uri="s3://vimi-data/dagster"
    )
    result = dg.materialize(
        [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])],
        resources={"vimi": resource},
        selection="*instruction_dataset",
        raise_on_error=False,
    )
    assert result.success
    mats = {
        e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert mats["image_text_memory"]["path"].value == "s3://vimi-data/dagster/memory.lance"
    assert mats["image_text_memory"]["dagster/row_count"].value == 240
    assert mats["augmented_video_dataset"]["dagster/row_count"].value == 24
    assert mats["instruction_dataset"]["path"].value == "s3://vimi-data/dagster/instructions.lance"
    checks_run = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks_run and all(checks_run.values())
    assert not list((project / "data").glob("*.lance"))


def test_an_unreachable_object_store_is_one_clear_line(project, s3, monkeypatch):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket closes
    env = dict(os.environ) | {
        "VIMI_LANCE_URI": "s3://vimi-data/x",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "train", "align"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=300,
    )
    assert out.returncode != 0
    assert (
        out.stderr.startswith("error: cannot reach s3://vimi-data/x/memory.lance: ") and "Traceback" not in out.stderr
    )
    # a bucket that is there but holds no memory yet: the usual hint
    env["AWS_ENDPOINT_URL"] = s3[0]
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "train", "align"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=300,
    )
    assert out.returncode != 0 and "No image-text memory at s3://vimi-data/x/memory.lance" in out.stderr
