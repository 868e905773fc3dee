"""Progress bars for long steps (tqdm: readable in a terminal, quiet in logs unless asked)."""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """Shown on a terminal; VIMI_PROGRESS=1 forces bars on (e.g. in Dagster's captured logs), 0 off."""
    flag = os.environ.get("VIMI_PROGRESS")
    return flag == "1" if flag in ("0", "1") else sys.stderr.isatty()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar on stderr."""
    yield from tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled(),
        mininterval=0.5,
        dynamic_ncols=True,
        file=sys.stderr,
    )


@contextmanager
def counter(total: int, desc: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """A progress bar advanced by calls from any thread: ``with counter(n, "x") as tick: tick(5)``."""
    lock = threading.Lock()
    with tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled(), mininterval=0.5, dynamic_ncols=True, file=sys.stderr
    ) as bar:

        def tick(n: int) -> None:
            with lock:
                bar.update(n)

        yield tick
