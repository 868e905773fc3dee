"""Small files written whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """TEXT at PATH: written to a temporary file beside it, then moved into place, so a reader (or a
    kill) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """VALUE as JSON at PATH, whole or not at all (`write_text`)."""
    write_text(path, json.dumps(value, indent=1, default=str) + "\n")


def _aside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def recover_dir(dest: Path) -> None:
    """A swap killed between its two renames leaves the previous DEST aside: put it back."""
    dest, old = Path(dest), _aside(Path(dest))
    if not dest.exists() and old.is_dir():
        old.rename(dest)


def replace_dir(new: Path, dest: Path) -> None:
    """Directory NEW becomes DEST: the old DEST is renamed aside first and deleted last, so a kill at any
    point leaves either the old or the new directory in place (`recover_dir` restores the old one)."""
    dest, old = Path(dest), _aside(Path(dest))
    recover_dir(dest)
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    Path(new).rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON at PATH, or DEFAULT when it is missing or unreadable (a file cut short by a kill)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
