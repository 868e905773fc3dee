"""Great Expectations suites as blocking asset checks, one per step of the step map that names a suite:
bad data does not flow downstream."""

from __future__ import annotations

import dagster as dg

from orchestration.metadata import check_metadata
from orchestration.resources import VimiSettings
from vimi import pipeline
from vimi.steps import STEPS, Step


def suite_check(step: Step) -> dg.AssetChecksDefinition:
    suite = step.suite

    @dg.asset_check(asset=dg.AssetKey(step.name), name=suite.check, blocking=True, description=suite.description)
    def check(vimi: VimiSettings) -> dg.AssetCheckResult:
        report = pipeline.validate_dataset(step.scope(vimi.load()), suite.name)
        return dg.AssetCheckResult(
            passed=report.success, metadata=check_metadata(report), description=report.headline()
        )

    return check


SUITE_CHECKS = [suite_check(step) for step in STEPS if step.suite]
