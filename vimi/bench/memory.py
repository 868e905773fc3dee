"""`vimi bench memory`: SpriteWorld generation, Lance writes and random reads, and webdataset ingest against reading the shards plainly."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import lance
import numpy as np

from vimi.bench.common import machine, timed
from vimi.config import Settings, deep_merge


def _write_shards(uri: Path, folder: Path, per_shard: int) -> list[Path]:
    """img2dataset-style tar shards (KEY.png + KEY.txt + KEY.json) from a memory dataset."""
    table = lance.dataset(str(uri)).to_table(columns=["id", "image", "caption"])
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    for start in range(0, table.num_rows, per_shard):
        path = folder / f"{len(shards):05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in table.slice(start, per_shard).to_pylist():
                key = row["id"].replace("mem-", "")
                for ext, data in (
                    ("png", row["image"]),
                    ("txt", row["caption"].encode()),
                    ("json", b'{"bench": true}'),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


def _read_shards_baseline(shards: list[Path]) -> int:
    """Baseline: what any reader must do — walk the tars and decode every image — without checks or Lance."""
    from PIL import Image

    n = 0
    for shard in shards:
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if member.name.endswith(".png"):
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        img.load()
                    n += 1
    return n


def _random_take(uri: Path, batch: int, rows: int, total: int, seed: int = 0) -> float:
    ds = lance.dataset(str(uri))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, total, size=rows)
    start = time.perf_counter()
    for i in range(0, rows, batch):
        ds.take(indices[i : i + batch].tolist())
    return rows / (time.perf_counter() - start)


def bench_memory(settings: Settings, rows: int | None = None, clips: int | None = None) -> dict[str, Any]:
    from vimi.memory.img2dataset import ingest_memory
    from vimi.parallel import resolve_workers
    from vimi.world.generate import WorldConfig, generate_memory, generate_videos, memory_rows

    rows = rows or int(settings.section("world")["memory_docs"])
    clips = clips or int(settings.section("world")["train_clips"])
    params = deep_merge(settings.params, {"world": {"memory_docs": rows, "train_clips": clips}})
    cfg = WorldConfig.from_params(params)
    catalog = cfg.catalog()
    with tempfile.TemporaryDirectory(prefix="vimi-bench-") as tmp:
        tmp_path = Path(tmp)
        # Generation: render + PNG + one Lance commit; baseline: rendering + PNG alone.
        _, render_s = timed(lambda: sum(1 for _ in memory_rows(cfg, catalog, 0, min(rows, 500))))
        mem_result, mem_s = timed(lambda: generate_memory(cfg, catalog, tmp_path / "memory.lance"))
        vid_result, vid_s = timed(lambda: generate_videos(cfg, catalog, tmp_path / "videos.lance", "train"))
        # Ingest: webdataset shards of the generated memory back into a new memory.
        shards = _write_shards(tmp_path / "memory.lance", tmp_path / "shards", per_shard=500)
        _, baseline_s = timed(lambda: _read_shards_baseline(shards))
        report, ingest_s = timed(
            lambda: ingest_memory(
                [str(tmp_path / "shards")],
                "webdataset",
                tmp_path / "ingested.lance",
                tmp_path / "q.lance",
                settings.section("ingest"),
            )
        )
        # Random access in training-sized batches against one row at a time.
        reads = {
            f"batch_{b}_rows_per_s": _random_take(tmp_path / "videos.lance", b, 2048 if b > 1 else 512, vid_result.rows)
            for b in (1, 32, 256)
        }
        mem_reads = {
            f"batch_{b}_rows_per_s": _random_take(tmp_path / "memory.lance", b, 2048 if b > 1 else 512, mem_result.rows)
            for b in (1, 32, 256)
        }

    render_rate = min(rows, 500) / render_s
    baseline_rate = report.ingested / baseline_s
    return {
        "benchmark": "memory",
        "profile": settings.profile,
        "machine": machine(),
        "generation": {
            "memory_docs": rows,
            "memory_rows_per_s": mem_result.rows / mem_s,
            "single_process_render_only_rows_per_s": render_rate,
            "ratio_vs_single_process_render_only": (mem_result.rows / mem_s) / render_rate,
            "workers": resolve_workers(cfg.workers),
            "image_size": cfg.image_size,
            "train_clips": clips,
            "clips_per_s": vid_result.rows / vid_s,
            "frames_per_s": vid_result.rows * cfg.num_frames / vid_s,
            "clip_shape": [cfg.num_frames, cfg.frame_size, cfg.frame_size, 3],
        },
        "ingest_webdataset": {
            "rows": report.ingested,
            "shards": len(shards),
            "rows_per_s": report.ingested / ingest_s,
            "baseline_tar_read_and_decode_rows_per_s": baseline_rate,
            "ratio_vs_baseline": (report.ingested / ingest_s) / baseline_rate,
            "quarantined": sum(report.quarantined.values()),
        },
        "random_access_videos": reads
        | {
            "ratio_batch_32_vs_1": reads["batch_32_rows_per_s"] / reads["batch_1_rows_per_s"],
            "ratio_batch_256_vs_1": reads["batch_256_rows_per_s"] / reads["batch_1_rows_per_s"],
            "row_bytes": cfg.num_frames * cfg.frame_size * cfg.frame_size * 3,
        },
        "random_access_memory": mem_reads
        | {
            "ratio_batch_32_vs_1": mem_reads["batch_32_rows_per_s"] / mem_reads["batch_1_rows_per_s"],
            "ratio_batch_256_vs_1": mem_reads["batch_256_rows_per_s"] / mem_reads["batch_1_rows_per_s"],
        },
    }
