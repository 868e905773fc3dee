"""Which Dagster executor runs the steps: chosen by configuration, not code (docs/scaling.md).

VIMI_DAGSTER_EXECUTOR = multiprocess (default; VIMI_DAGSTER_MAX_CONCURRENT steps at once, 1 by default:
each training step already uses every core) | in_process | celery (dagster-celery) | k8s (dagster-k8s,
one pod per step).
"""

from __future__ import annotations

import os

import dagster as dg

from vimi.errors import VimiError

EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")
# The integration releases that go with dagster 1.13.28 (what requirements/project-lock.txt pins).
INTEGRATIONS = {
    "celery": ("dagster_celery", "celery_executor", "dagster-celery==0.29.28"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "dagster-k8s==0.29.28"),
}


def configured_executor() -> dg.ExecutorDefinition:
    kind = os.environ.get("VIMI_DAGSTER_EXECUTOR", "multiprocess").strip() or "multiprocess"
    if kind == "multiprocess":
        raw = os.environ.get("VIMI_DAGSTER_MAX_CONCURRENT", "1")
        try:
            concurrent = int(raw)
        except ValueError:
            concurrent = 0
        if concurrent < 1:
            raise VimiError(f"VIMI_DAGSTER_MAX_CONCURRENT must be a positive integer, got {raw!r}.")
        return dg.multiprocess_executor.configured({"max_concurrent": concurrent})
    if kind == "in_process":
        return dg.in_process_executor
    if kind in INTEGRATIONS:
        module, name, requirement = INTEGRATIONS[kind]
        try:
            return getattr(__import__(module), name)
        except ImportError:
            raise VimiError(
                f"VIMI_DAGSTER_EXECUTOR={kind} needs {requirement}: `pip install {requirement}` (see docs/scaling.md)."
            ) from None
    raise VimiError(f"VIMI_DAGSTER_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {kind!r}.")
