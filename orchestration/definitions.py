"""The one Definitions of vimi: `dagster dev -m orchestration.definitions`."""

import dagster as dg

from orchestration import assets, checks
from orchestration.resources import VimiSettings

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    resources={"vimi": VimiSettings()},
)
