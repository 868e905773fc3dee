"""What every Great Expectations suite shares: the report, running a suite on a batch, the schema check,
and the table + media batches of a dataset.

Two batches per dataset: a *table* batch of every row's scalar columns (schema, unique ids,
non-empty captions, sizes and frame counts in range) and a *media* batch of decoded rows
(every row, or ``validate.decode_sample`` of them at scale) with derived columns saying whether
the bytes decode and agree with the declared size and frame count. GE cannot open images or
videos; we decode, GE judges.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from vimi.io import lance_io

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from validation


@dataclass
class CheckResult:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None
    batch: str = "table"
    setting: str | None = None  # the params.yaml key(s) that set this expectation's bounds
    bounds: list[Any] | None = None  # [min, max] it was held to

    def needs(self) -> str:
        """What a failed check needed and which params.yaml key says so ("" for fixed expectations)."""
        if not self.setting:
            return ""
        lo, hi = self.bounds or (None, None)
        need = " and ".join(
            part for part in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if part
        )
        return f"needs {need} (params.yaml {self.setting})" if need else f"(params.yaml {self.setting})"


@dataclass
class ValidationReport:
    suite: str
    dataset: str
    version: int
    rows: int
    decoded_rows: int
    success: bool
    checks: list[CheckResult]
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)  # headline numbers (recall@k, coverage, ...)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = len(self.failed)
        return data

    def headline(self) -> str:
        """One line: the outcome, and for each failed threshold the figure, the bound and its params.yaml key."""
        status = "PASSED" if self.success else "FAILED"
        line = (
            f"{self.suite} suite {status}: {self.dataset} (version {self.version}, {self.rows} rows, "
            f"{self.decoded_rows} decoded), {len(self.checks) - len(self.failed)}/{len(self.checks)} "
            f"expectations met in {self.seconds:.1f} s"
        )
        for check in self.failed:
            if check.setting:
                if check.observed is not None:
                    seen = f" observed {_fmt(check.observed)}"
                else:
                    seen = f" {check.unexpected_count} rows outside" if check.unexpected_count else ""
                line += f"; {check.column or check.expectation}{seen}, {check.needs()}"
        return line

    def to_text(self) -> str:
        lines = [self.headline()]
        for check in self.checks:
            mark = "ok  " if check.success else "FAIL"
            target = f" [{check.column}]" if check.column else ""
            extra = ""
            if not check.success:
                if check.unexpected_count is not None:
                    extra = f": {check.unexpected_count} unexpected, e.g. {check.examples[:5]}"
                elif check.observed is not None:
                    extra = f": observed {_fmt(check.observed)}"
                if check.setting:
                    extra += f", {check.needs()}"
            lines.append(f"  {mark} {check.expectation}{target}{extra}")
        if self.figures:
            lines.append("  figures: " + ", ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items()))
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run_suite(name: str, frame: pd.DataFrame, expectations: list, batch: str) -> list[CheckResult]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    definition = ctx.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    checks = []
    for r in result.results:
        kwargs = r.expectation_config.kwargs
        column = kwargs.get("column") or (
            f"{kwargs['column_A']}={kwargs['column_B']}" if "column_A" in kwargs else None
        )
        details = r.result or {}
        checks.append(
            CheckResult(
                expectation=r.expectation_config.type,
                column=column,
                success=bool(r.success),
                unexpected_count=details.get("unexpected_count"),
                examples=[_plain(v) for v in (details.get("partial_unexpected_list") or [])[:10]],
                observed=_plain(details.get("observed_value")),
                batch=batch,
                setting=(r.expectation_config.meta or {}).get("setting"),
                bounds=[_plain(kwargs.get("min_value")), _plain(kwargs.get("max_value"))],
            )
        )
    return checks


def _plain(value: Any) -> Any:
    """JSON-friendly copies of what GE reports (numpy scalars, tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _schema_check(actual: pa.Schema, expected: pa.Schema) -> CheckResult:
    problems = []
    for f in expected:
        if f.name not in actual.names:
            problems.append(f"missing column {f.name}")
        elif not actual.field(f.name).type.equals(f.type):
            problems.append(f"{f.name} is {actual.field(f.name).type}, expected {f.type}")
    extra = [n for n in actual.names if n not in expected.names]
    problems += [f"unexpected column {n}" for n in extra]
    return CheckResult("schema_matches_vimi", None, not problems, len(problems) if problems else 0, problems)


def _sample_indices(n: int, sample: int, seed: int) -> list[int]:
    if sample <= 0 or sample >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=sample, replace=False).tolist())


def _validate(
    suite: str,
    uri: Path,
    expected: pa.Schema,
    table_columns: list[str],
    table_expectations: Callable[[], list],
    media_columns: list[str],
    decode: Callable[[dict], dict],
    media_expectations: Callable[[], list],
    params: dict[str, Any],
) -> ValidationReport:
    start = time.perf_counter()
    ds = lance_io.open_dataset(uri, f"{suite} dataset", "Build it first (vimi world generate, or an ingest).")
    schema_check = _schema_check(ds.schema, expected)
    present = [c for c in table_columns if c in ds.schema.names]
    frame = ds.to_table(columns=present).to_pandas()
    checks = [schema_check] + _run_suite(f"{suite}_table", frame, table_expectations(), "table")
    validate = params["validate"]
    n = ds.count_rows()
    indices = _sample_indices(n, validate["decode_sample"], params["seed"])
    decoded = 0
    if indices and schema_check.success:
        records = []
        for start_at in range(0, len(indices), 256):
            chunk = ds.take(indices[start_at : start_at + 256], columns=media_columns).to_pylist()
            records += [decode(r) for r in chunk]
        decoded = len(records)
        checks += _run_suite(f"{suite}_media", pd.DataFrame.from_records(records), media_expectations(), "media")
    return ValidationReport(
        suite=suite,
        dataset=str(uri),
        version=ds.version,
        rows=n,
        decoded_rows=decoded,
        success=all(c.success for c in checks),
        checks=checks,
        seconds=time.perf_counter() - start,
    )


IMAGE_SIZE = ("ingest.min_image_size", "ingest.max_image_size")


def _setting(*keys: str) -> dict[str, str]:
    """An expectation's meta naming the params.yaml key(s) its bounds come from: a failure names them."""
    return {"setting": " / ".join(keys)}


def _common_table_expectations(params: dict[str, Any]) -> list:
    """Every dataset of captioned media: rows, unique ids, non-empty captions, sizes in range."""
    import great_expectations.expectations as gxe

    lo, hi = params["ingest"]["min_image_size"], params["ingest"]["max_image_size"]
    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=params["validate"]["min_rows"], meta=_setting("validate.min_rows")
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="caption", regex=r"^\s*$"),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=lo, max_value=hi, meta=_setting(*IMAGE_SIZE)),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=lo, max_value=hi, meta=_setting(*IMAGE_SIZE)),
    ]
