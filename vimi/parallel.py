"""Ordered, bounded parallel map over threads or processes."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T, R = TypeVar("T"), TypeVar("R")


def resolve_workers(workers: int) -> int:
    """0 means one per core."""
    return max(1, workers if workers > 0 else (os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, processes: bool = False) -> Iterator[R]:
    """Like Executor.map, in input order, but with at most 2×workers items in flight (Executor.map
    reads its whole input first). With one worker it runs inline. Processes are spawned, not
    forked: the parent may hold Lance's and torch's threads."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool: Executor = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        if processes
        else ThreadPoolExecutor(workers)
    )
    with pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
