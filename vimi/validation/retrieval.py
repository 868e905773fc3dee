"""The retrieval-quality gate over the augmented dataset (data/augmented.lance), on the figures of
`vimi.retrieval.quality`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vimi.io import lance_io
from vimi.retrieval.quality import retrieval_frame
from vimi.validation.common import (
    ValidationReport,
    _run_suite,
    _schema_check,
    _setting,
)


def validate_retrieval(
    augmented_uri: Path, videos_uri: Path, memory_uri: Path, params: dict[str, Any]
) -> ValidationReport:
    """The retrieval-quality gate over the augmented dataset (docs/retrieval.md)."""
    import great_expectations.expectations as gxe

    from vimi.retrieval.augment import AUGMENTED_SCHEMA, FLAGS

    start = time.perf_counter()
    retrieval = params["retrieval"]
    ds = lance_io.open_dataset(augmented_uri, "augmented dataset", "Build it with `vimi augment`.")
    schema_check = _schema_check(ds.schema, AUGMENTED_SCHEMA)
    checks = [schema_check]
    figures: dict[str, Any] = {}
    if schema_check.success:
        frame, n_clips, figures = retrieval_frame(augmented_uri, videos_uri, memory_uri)
        expectations = [
            gxe.ExpectTableRowCountToEqual(value=n_clips),
            gxe.ExpectColumnValuesToNotBeNull(column="clip_id"),
            gxe.ExpectColumnValuesToBeUnique(column="clip_id"),
            gxe.ExpectColumnValuesToBeInSet(column="clip_known", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="flag", value_set=list(FLAGS)),
            gxe.ExpectColumnValuesToBeInSet(column="hits_consistent", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="scores_sorted", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="dangling_ids", min_value=0, max_value=0),
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="memory_version", min_value=1, max_value=1),
            gxe.ExpectColumnMeanToBeBetween(
                column="has_hit", min_value=retrieval["min_coverage"], meta=_setting("retrieval.min_coverage")
            ),
        ]
        if "recall_at_k" in figures:
            expectations.append(
                gxe.ExpectColumnMeanToBeBetween(
                    column="own_recall",
                    min_value=retrieval["min_recall_at_k"],
                    meta=_setting("retrieval.min_recall_at_k"),
                )
            )
        checks += _run_suite("retrieval_table", frame, expectations, "table")
    return ValidationReport(
        suite="retrieval",
        dataset=str(augmented_uri),
        version=ds.version,
        rows=ds.count_rows(),
        decoded_rows=0,
        success=all(c.success for c in checks),
        checks=checks,
        seconds=time.perf_counter() - start,
        figures=figures,
    )
