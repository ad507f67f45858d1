"""Asset jobs and the refresh schedule.

A refresh is three jobs, so each part runs, fails and re-runs on its own:

* ``ingest_release`` (group ``ingestion``): the release, its tables and the catalog. The
  schedule below and the new-release sensor (``sensors.py``) launch it.
* ``update_vectors`` (group ``vectors``, partitioned by photo bucket): images and vectors
  of the buckets whose catalog rows changed; the catalog sensor launches one run per
  contiguous range of changed buckets (a single-run backfill each).
* ``publish_index`` (group ``search``): rebuilds and republishes the index; it follows the
  vectors by declarative automation, and can be launched by hand.
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
