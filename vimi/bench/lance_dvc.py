"""`vimi bench lance-dvc`: DVC tracking a Lance dataset as appends multiply its fragments, with
vimi's fragment merging (lance_io.MAX_FRAGMENTS) against plain Lance appends (the baseline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import lance
import pyarrow as pa

from vimi.errors import VimiError
from vimi.io import lance_io

# Caption-sized rows, like an ingest of a few hundred image-text pairs without the pixels.
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("caption", pa.string())])


def dvc_binary() -> str:
    """DVC lives in its own environment (docs/operations.md "Two environments"); .venv/bin/dvc links to it."""
    for candidate in (
        shutil.which("dvc"),
        str(Path(sys.executable).parent / "dvc"),
        str(Path(__file__).resolve().parents[1] / ".venv-dvc" / "bin" / "dvc"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise VimiError("dvc not found: run `make setup` (it builds .venv-dvc and links .venv/bin/dvc).")


def _dvc(root: Path, *args: str) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        [dvc_binary(), *args], cwd=root, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
    )
    if out.returncode:
        raise VimiError(f"dvc {' '.join(args)} failed in the benchmark:\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def _tree(uri: Path) -> tuple[int, int, int]:
    sizes = lance_io.file_sizes(uri)
    manifests = sum(p.stat().st_size for p in (uri / "_versions").glob("*.manifest"))
    return len(sizes), sum(sizes), manifests


def _append(uri: Path, start: int, rows: int, max_fragments: int | None) -> None:
    batch = pa.RecordBatch.from_pylist(
        [{"id": f"doc-{i:09d}", "caption": f"a red fox jumps over scene {i % 97}"} for i in range(start, start + rows)],
        schema=SCHEMA,
    )
    lance_io.write_batches(uri, [batch], SCHEMA, "append", max_fragments=max_fragments)


def _arm(
    root: Path, appends: int, rows: int, max_fragments: int | None, prune: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """`appends` one-commit appends (then `prune`: old versions deleted, as `vimi compact --prune`),
    then what DVC costs: the first `dvc add`, a `dvc status` with nothing changed, and a `dvc add`
    after one more append (and prune) — the day-to-day case."""
    root.mkdir(parents=True)
    _dvc(root, "init", "--no-scm", "-q")
    uri = root / "memory.lance"
    start = time.perf_counter()
    last = start
    for i in range(appends):
        if i == appends - 100:
            last = time.perf_counter()
        _append(uri, i * rows, rows, max_fragments)
    end = time.perf_counter()
    if prune:
        lance_io.prune(uri)
    files, size, manifests = _tree(uri)
    ds = lance.dataset(str(uri))
    result = {
        "appends_s": end - start,
        "ms_per_append_last_100": (end - last) / min(100, appends) * 1000,
        "fragments": len(ds.get_fragments()),
        "versions": ds.version,
        "files": files,
        "bytes": size,
        "manifest_bytes": manifests,
        "dvc_add_s": _dvc(root, "add", "-q", "memory.lance"),
        "dvc_status_unchanged_s": _dvc(root, "status", "-q"),
    }
    _append(uri, appends * rows, rows, max_fragments)
    if prune:
        lance_io.prune(uri)
    result["dvc_add_after_one_append_s"] = _dvc(root, "add", "-q", "memory.lance")
    if lance.dataset(str(uri)).count_rows() != (appends + 1) * rows:
        raise VimiError(f"the benchmark lost rows in {uri}")
    log(
        f"bench lance-dvc: {appends} appends, merge {'off' if max_fragments is None else max_fragments}"
        f"{', pruned' if prune else ''}: "
        f"{result['fragments']} fragments, {files} files, {manifests / 1e6:.1f} MB manifests, "
        f"dvc add {result['dvc_add_s']:.1f} s, status {result['dvc_status_unchanged_s']:.1f} s"
    )
    return result


def bench_lance_dvc(
    appends: list[int], rows: int = 100, workdir: Path | None = None, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    if not appends or min(appends) < 1 or rows < 1:
        raise VimiError("--appends and --rows must be positive.")
    scratch = Path(tempfile.mkdtemp(prefix="vimi-bench-lance-dvc-", dir=workdir))
    sizes: dict[str, Any] = {}
    try:
        for n in appends:
            merged = _arm(scratch / f"merged-{n}", n, rows, lance_io.MAX_FRAGMENTS, False, log)
            pruned = _arm(scratch / f"pruned-{n}", n, rows, lance_io.MAX_FRAGMENTS, True, log)
            plain = _arm(scratch / f"plain-{n}", n, rows, None, False, log)
            sizes[str(n)] = {
                "appends": n,
                "merged": merged,
                "merged_and_pruned": pruned,
                "plain_lance_baseline": plain,
                "ratio_files_plain_vs_pruned": plain["files"] / pruned["files"],
                "ratio_dvc_add_plain_vs_pruned": plain["dvc_add_s"] / pruned["dvc_add_s"],
                "ratio_dvc_add_after_one_append_plain_vs_pruned": plain["dvc_add_after_one_append_s"]
                / pruned["dvc_add_after_one_append_s"],
                "ratio_manifest_bytes_plain_vs_merged": plain["manifest_bytes"] / merged["manifest_bytes"],
                "ratio_dvc_add_plain_vs_merged": plain["dvc_add_s"] / merged["dvc_add_s"],
                "ratio_dvc_add_after_one_append_plain_vs_merged": plain["dvc_add_after_one_append_s"]
                / merged["dvc_add_after_one_append_s"],
                "ratio_append_ms_plain_vs_merged": plain["ms_per_append_last_100"] / merged["ms_per_append_last_100"],
            }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    from vimi.bench.common import machine

    return {
        "benchmark": "lance-dvc",
        "rows_per_append": rows,
        "max_fragments": lance_io.MAX_FRAGMENTS,
        "dvc": subprocess.run([dvc_binary(), "--version"], capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "sizes": sizes,
    }
