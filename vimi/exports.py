"""Lazy re-exports: a package names its public API in one table, and a name's module is imported when
the name is first used. `from vimi.models import ViMiPipeline` costs torch and diffusers (seconds);
`import vimi.world` must not, and a package's submodules must not import each other through it."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(
    package: str, table: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for PACKAGE, whose TABLE maps each name to its module."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__, sorted(table)
