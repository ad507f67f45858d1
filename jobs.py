"""Asset jobs and the refresh schedule.

A refresh is three jobs, so each part runs, fails and re-runs on its own: ``ingest_release``
(release, tables, catalog), ``update_vectors`` (images and vectors of a range of photo
buckets) and ``publish_index`` (the search index, which follows the vectors by automation);
``refresh_saved_searches`` then re-runs each saved search on the new index (sensors.py).
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DagsterInvalidDefinitionError,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
)

from resources.config import ConfigError, Settings

TRIGGER_TAG = "image_search/trigger"

ingest_job = define_asset_job(
    "ingest_release",
    selection=AssetSelection.groups("ingestion"),
    description="Download or read the release and rebuild its tables and the photo catalog.",
)

vectors_job = define_asset_job(
    "update_vectors",
    selection=AssetSelection.groups("vectors"),
    description="Fetch the images and encode the vectors of a range of photo buckets.",
)

search_job = define_asset_job(
    "publish_index",
    selection=AssetSelection.groups("search"),
    description="Rebuild the search index from catalog and vectors and publish it atomically.",
)


saved_searches_job = define_asset_job(
    "refresh_saved_searches",
    selection=AssetSelection.assets("saved_search_results"),
    description="Re-run saved searches against the published index (one run per saved search, a partition each).",
)


def build_refresh_schedule(cron: str) -> ScheduleDefinition:
    """The refresh schedule on ``cron`` (UTC), running by default once the daemon runs."""
    try:
        return ScheduleDefinition(
            name="refresh_schedule",
            job=ingest_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            tags={TRIGGER_TAG: "schedule"},
            default_status=DefaultScheduleStatus.RUNNING,
            description=(
                "Re-ingest the configured release; the catalog sensor then updates only the "
                "buckets whose photos changed, and the index follows."
            ),
        )
    except DagsterInvalidDefinitionError:
        raise ConfigError(f"IMAGE_SEARCH_REFRESH_CRON={cron!r} is not a cron schedule: use e.g. '0 3 * * *'") from None


refresh_schedule = build_refresh_schedule(Settings.env_value("refresh_cron"))
