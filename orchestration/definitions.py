"""The one Definitions of vimi: `dagster dev -m orchestration.definitions`."""

import dagster as dg

from orchestration import assets, checks
from orchestration.executors import configured_executor
from orchestration.resources import VimiSettings
from orchestration.schedules import retraining_schedule
from orchestration.sensors import new_memory_version

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    schedules=[retraining_schedule],
    sensors=[new_memory_version],
    resources={"vimi": VimiSettings()},
    # By default one step at a time: each training step already uses every core (torch threads), and two
    # side by side on 2 cores ran 7× slower (the image encoder took 7 min beside the feature network).
    # VIMI_DAGSTER_EXECUTOR / VIMI_DAGSTER_MAX_CONCURRENT choose otherwise (docs/scaling.md).
    executor=configured_executor(),
)
