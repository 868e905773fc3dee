"""Progress bars for long steps (tqdm: readable in a terminal, quiet in logs unless asked)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar on stderr. Shown on a terminal; VIMI_PROGRESS=1 forces it
    on (e.g. in Dagster's captured logs), VIMI_PROGRESS=0 off."""
    flag = os.environ.get("VIMI_PROGRESS")
    disable = (flag == "0") if flag in ("0", "1") else not sys.stderr.isatty()
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, mininterval=0.5,
                    dynamic_ncols=True, file=sys.stderr)
