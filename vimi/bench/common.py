"""What every benchmark shares: the machine it ran on and a timer."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# The CPU features that decide the speed of bf16 and of wide float kernels here.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict[str, Any]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux; elsewhere the platform's name only)."""
    name, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {"model": name, "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a benchmark ran on, in every result: cores, CPU, Python, platform, Lance (and EXTRA)."""
    import lance

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "lance": lance.__version__,
        **extra,
    }


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """FN's value and the seconds it took."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
