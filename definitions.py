"""The project's one Dagster ``Definitions``: every asset, check, job, schedule, sensor and resource."""

from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

import assets
from assets.models import model_registry_sensor, model_release, model_shadow_job
from jobs import ingest_job, refresh_schedule, saved_searches_job, search_job, vectors_job
from resources.dagster_resources import ClipResource, SettingsResource
from sensors import automation_sensor, catalog_change_sensor, release_sensor, saved_searches_sensor

#: Every setting from the run's environment; credentials as EnvVar, so validating needs none.
SETTINGS = SettingsResource.with_credentials_from_env()

defs = Definitions(
    assets=[*load_assets_from_package_module(assets), model_release],
    asset_checks=load_asset_checks_from_package_module(assets),
    jobs=[ingest_job, vectors_job, search_job, saved_searches_job, model_shadow_job],
    schedules=[refresh_schedule],
    sensors=[release_sensor, catalog_change_sensor, automation_sensor, saved_searches_sensor, model_registry_sensor],
    resources={"settings": SETTINGS, "clip": ClipResource(settings=SETTINGS)},
)
