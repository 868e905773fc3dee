"""Every suite by name: the memory, the video corpus (training and evaluation), retrieval quality and the
instruction dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vimi.errors import VimiError
from vimi.validation.common import ValidationReport
from vimi.validation.instructions import validate_instructions
from vimi.validation.memory import validate_memory
from vimi.validation.retrieval import validate_retrieval
from vimi.validation.videos import validate_videos

__all__ = [
    "ValidationReport",
    "validate",
    "validate_instructions",
    "validate_memory",
    "validate_retrieval",
    "validate_videos",
]


def validate(which: str, uri: Path, params: dict[str, Any]) -> ValidationReport:
    if which == "memory":
        return validate_memory(uri, params)
    if which in ("videos", "eval_videos"):
        return validate_videos(uri, params, suite=which)
    raise VimiError(f"Unknown suite {which!r}; use memory, videos or eval_videos.")
