"""`vimi bench pipeline`: the whole lineage graph, step by step, timed against `make run`'s budget.

The steps are the functions the Dagster assets and DVC stages call, in the graph's order, with the
suites the blocking checks run, in a scratch project (data, models and an MLflow store of its own),
so the figures are the pipeline's own and the repository's data is untouched. The baseline in the
same run is the fixed cost every step pays before doing work: a fresh `vimi --help` process (Python
and the library's imports), measured here, so a step's time reads against it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from vimi.config import Settings
from vimi.errors import VimiError

BUDGET_S = 15 * 60  # the budget of `make run` on the tiny profile, 2 cores, after set-up


def _steps(s: Settings) -> list[tuple[str, str, Callable[[], Any]]]:
    from vimi import pipeline

    def check(which: str) -> Callable[[], Any]:
        def run() -> Any:
            report = pipeline.validate_dataset(s, which)
            if not report.success:
                raise VimiError(f"the {which} suite failed in the benchmark:\n{report.to_text()}")
            return report

        return run

    return [
        ("spriteworld", "data", lambda: pipeline.world_catalog(s)),
        ("image_text_memory", "data", lambda: pipeline.build_memory(s)),
        ("memory_suite", "checks", check("memory")),
        ("video_corpus", "data", lambda: pipeline.build_videos(s, "train")),
        ("videos_suite", "checks", check("videos")),
        ("eval_video_corpus", "data", lambda: pipeline.build_videos(s, "eval")),
        ("eval_videos_suite", "checks", check("eval_videos")),
        ("bm25_index", "retrieval", lambda: pipeline.build_bm25_index(s)),
        ("augmented_video_dataset", "retrieval", lambda: pipeline.augment_videos(s)),
        ("retrieval_quality", "checks", check("retrieval")),
        ("image_encoder", "models", lambda: pipeline.align_image_encoder(s)),
        ("stage1_model", "models", lambda: pipeline.train_stage1(s)),
        ("instruction_dataset", "instructions", lambda: pipeline.build_instruction_dataset(s)),
        ("instructions_suite", "checks", check("instructions")),
        ("stage2_model", "models", lambda: pipeline.train_stage2(s)),
        ("feature_network", "evaluation", lambda: pipeline.train_feature_network(s)),
        ("spriteworld_metrics", "evaluation", lambda: pipeline.evaluate_model(s, "spriteworld")),
        ("ucf101_metrics", "evaluation", lambda: pipeline.evaluate_model(s, "ucf101")),
        ("champion_model", "models", lambda: pipeline.promote_model(s)),
        ("report", "evaluation", lambda: pipeline.build_run_report(s)),
    ]


def _process_start_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vimi", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def bench_pipeline(
    settings: Settings, workdir: Path | None = None, log: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    from vimi.bench.common import machine

    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="vimi-bench-pipeline-"))
    s = Settings(
        params=settings.params,
        root=scratch,
        data_dir=scratch / "data",
        params_path=settings.params_path,
        models_dir=scratch / "models",
        tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
    )
    stages: list[dict[str, Any]] = []
    baseline = _process_start_s()
    total_start = time.perf_counter()
    for name, group, run in _steps(s):
        log(f"bench pipeline: {name} …")
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        stages.append({"asset": name, "group": group, "seconds": round(seconds, 2)})
        log(f"bench pipeline: {name}: {seconds:.1f} s")
    total = time.perf_counter() - total_start
    for stage in stages:
        stage["share"] = round(stage["seconds"] / total, 3)
    by_group: dict[str, float] = {}
    for stage in stages:
        by_group[stage["group"]] = round(by_group.get(stage["group"], 0.0) + stage["seconds"], 2)
    # `make run` pays a process start per asset (Dagster's multiprocess executor), which the in-process
    # steps above do not: added from the baseline measured here.
    projected = total + baseline * sum(1 for st in stages if st["group"] != "checks")
    return {
        "benchmark": "pipeline",
        "profile": settings.profile,
        "machine": machine(),
        "stages": stages,
        "seconds_by_group": by_group,
        "total_s": round(total, 1),
        "baseline_process_start_s": round(baseline, 2),
        "make_run_projected_s": round(projected, 1),
        "budget_s": BUDGET_S,
        "budget_share": round(projected / BUDGET_S, 3),
        "within_budget": projected <= BUDGET_S,
        "slowest": sorted(stages, key=lambda st: -st["seconds"])[:3],
        "workdir": str(scratch),
    }
