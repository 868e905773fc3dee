"""Turn what a vimi step returns into metadata a person reads in the Dagster UI."""

from __future__ import annotations

from typing import Any

import dagster as dg

from vimi.validation.common import ValidationReport


def dataset_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(int(meta["rows"])),
        "lance_version": dg.MetadataValue.int(int(meta["version"])),
        "path": dg.MetadataValue.path(meta["path"]),
        "size_mb": dg.MetadataValue.float(round(meta["bytes"] / 2**20, 2)),
        "seconds": dg.MetadataValue.float(float(meta["seconds"])),
        "fingerprint": dg.MetadataValue.text(meta["fingerprint"]),
        "source": dg.MetadataValue.text(str(meta.get("source", ""))),
        "quarantined": dg.MetadataValue.json(meta.get("quarantined") or {}),
        "quarantined_total": dg.MetadataValue.int(sum((meta.get("quarantined") or {}).values())),
    }
    if "applies" in meta:  # a SpriteWorld-only dataset beside the user's own data: empty, and why
        out["applies"] = dg.MetadataValue.bool(bool(meta["applies"]))
        out["reason"] = dg.MetadataValue.text(str(meta["reason"]))
    captions = meta.get("sample_captions") or []
    if captions:
        out["sample_captions"] = dg.MetadataValue.md("\n".join(f"- {c}" for c in captions))
    return out


def check_metadata(report: ValidationReport) -> dict[str, Any]:
    rows = ["| expectation | column | result | unexpected | examples |", "|---|---|---|---|---|"]
    for c in report.checks:
        examples = ", ".join(str(e) for e in c.examples[:3]).replace("|", "\\|")
        rows.append(
            f"| {c.expectation} | {c.column or ''} | {'ok' if c.success else '**FAILED**'} | "
            f"{'' if c.unexpected_count is None else c.unexpected_count} | {examples} |"
        )
    return {
        "rows": dg.MetadataValue.int(report.rows),
        "decoded_rows": dg.MetadataValue.int(report.decoded_rows),
        "lance_version": dg.MetadataValue.int(report.version),
        "failed_expectations": dg.MetadataValue.int(len(report.failed)),
        "expectations": dg.MetadataValue.md("\n".join(rows)),
        **{
            name: (
                dg.MetadataValue.float(v)
                if isinstance(v, float)
                else dg.MetadataValue.json(v)
                if isinstance(v, dict)
                else v
            )
            for name, v in report.figures.items()
        },
    }
