"""Great Expectations suites as blocking asset checks, one per step of the step map that names a suite:
bad data does not flow downstream."""

from __future__ import annotations

import dagster as dg

from orchestration import dvc_record
from orchestration.metadata import check_metadata
from orchestration.resources import VimiSettings
from vimi import pipeline
from vimi.steps import STEPS, Step


def suite_check(step: Step) -> dg.AssetChecksDefinition:
    suite = step.suite

    @dg.asset_check(asset=dg.AssetKey(step.name), name=suite.check, blocking=True, description=suite.description)
    def check(vimi: VimiSettings) -> dg.AssetCheckResult:
        settings = vimi.load()
        report = pipeline.validate_dataset(step.scope(settings), suite.name)
        suite.record(report, settings.root)  # the stage's report files, as `vimi validate` writes them
        metadata = check_metadata(report)
        if report.success:  # the step and its suite are one DVC stage: recorded once both are done
            metadata["dvc"] = dg.MetadataValue.text(dvc_record.commit(step, settings))
        return dg.AssetCheckResult(passed=report.success, metadata=metadata, description=report.headline())

    return check


SUITE_CHECKS = [suite_check(step) for step in STEPS if step.suite]
