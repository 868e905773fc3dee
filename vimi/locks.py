"""One run of a step at a time on the same outputs: a second one refuses with a clear message.

An advisory `flock` on `<data dir>/.locks/<step>.lock`, taken without waiting. The kernel drops it
when the holder exits, however it exits (kill -9 included), so a crash never leaves a stale lock;
the holder's pid and start time are written in the file for the message.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from vimi.errors import VimiError


@contextmanager
def step_lock(folder: Path, step: str) -> Iterator[Path | None]:
    if int(os.environ.get("RANK", "0") or 0) > 0:  # `accelerate launch`: the main process holds it for all
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{step}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(Path(path).read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
            raise VimiError(
                f"Another run of the {step} step is in progress on these outputs (pid "
                f"{holder.get('pid', '?')}, since {since}; lock {path}). Wait for it to finish, or stop "
                "it and run again: a stopped step leaves the previous outputs intact."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time(), "step": step}).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def locked(step: str | Callable[..., str]) -> Callable:
    """Decorate a pipeline step `f(settings, ...)`: it runs under the step's lock in settings' data directory.
    `step` is the lock's name, or a function of the step's arguments giving it."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(settings, *args, **kwargs):
            name = step(settings, *args, **kwargs) if callable(step) else step
            with step_lock(settings.data_dir / ".locks", name):
                return fn(settings, *args, **kwargs)

        return run

    return wrap
