"""The project's one Dagster ``Definitions``: every asset, check, job, schedule, sensor and resource."""

from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

import assets
from resources.dagster_resources import SettingsResource

defs = Definitions(
    assets=load_assets_from_package_module(assets),
    asset_checks=load_asset_checks_from_package_module(assets),
    resources={"settings": SettingsResource()},
)
