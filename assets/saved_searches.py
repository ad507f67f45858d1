"""The ``saved_search_results`` asset: each saved search re-run against the newly published index.

One dynamic partition per saved search (the ``saved_searches_sensor`` in sensors.py adds
and removes them as searches are saved and removed, and launches a run per search after
every build), so each search's history is its own in the Dagster UI. A run records the
top k and the photos new since the previous build as tables with thumbnails and links,
POSTs new matches to ``IMAGE_SEARCH_NOTIFY_URL`` when set, and warns (an asset check) when
a photo its user marked good has left the top k.
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
)

from assets.images import _contact_sheet
from assets.metadata import as_table
from resources.config import Settings
from resources.images.image_store import ImageStore
from resources.saved import notify
from resources.saved.refresh import dropped_good, new_matches
from resources.saved.store import SavedStore
from search_app import saved
from search_app.service import SearchService

saved_searches_partitions = DynamicPartitionsDefinition(name="saved_searches")
ASSET = "saved_search_results"
GOOD_MARKS_CHECK = "good_marks_in_top_k"


@asset(
    name=ASSET,
    group_name="saved",
    deps=["search_index"],
    partitions_def=saved_searches_partitions,
    kinds={"python"},
    code_version="1",
    description="Each saved search's top k on the published index, and the photos that entered it with the latest build.",
    check_specs=[
        AssetCheckSpec(
            GOOD_MARKS_CHECK,
            asset=ASSET,
            description="Every photo marked good for the saved search is still in its top k (warns, naming them).",
        )
    ],
)
def saved_search_results(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Re-run the partition's saved search, record what it finds and what is new, notify, check the good marks."""
    name = context.partition_key
    store = SavedStore(settings.home)
    results = saved.refresh(SearchService.from_settings(settings), store, name)
    new = new_matches(results)
    context.log.info(
        f"saved search {name!r}: {len(results['top'])} results on build {results['build']}, {len(new)} new"
    )
    notified = None
    if new and settings.notify_url:
        notified = notify.post(settings.notify_url, notify.payload(name, results["build"], new), logger=context.log)
    marks = store.marks(name)
    missing = dropped_good(results, marks)
    return MaterializeResult(
        metadata=_metadata(settings, results, new, marks, notified),
        check_results=[
            AssetCheckResult(
                check_name=GOOD_MARKS_CHECK,
                passed=not missing,
                severity=AssetCheckSeverity.WARN,
                description=(
                    f"saved search {name!r}: photo(s) marked good no longer in its top {len(results['top'])} after build "
                    f"{results['build']}: {', '.join(missing)}"
                    if missing
                    else f"saved search {name!r}: every good mark in the top k"
                ),
                metadata={
                    "search": name,
                    "missing_good": ", ".join(missing),
                    "good_marks": sum(m == "good" for m in marks.values()),
                },
            )
        ],
    )


def _metadata(settings: Settings, results: dict, new: list[dict], marks: dict[str, str], notified: bool | None) -> dict:
    fresh = {e["photo_id"] for e in new}
    rows = pd.DataFrame(
        [
            {
                "rank": rank,
                "photo_id": e["photo_id"],
                "score": e["score"],
                "new": e["photo_id"] in fresh,
                "mark": marks.get(e["photo_id"], ""),
                "link": e.get("photo_url") or "",
            }
            for rank, e in enumerate(results["top"], start=1)
        ],
        columns=["rank", "photo_id", "score", "new", "mark", "link"],
    )
    store = ImageStore(settings.images_dir)
    shown = [e["photo_id"] for e in (new or results["top"]) if store.has(e["photo_id"])]
    links = "\n".join(f"- [{e['photo_id']}]({e['photo_url']}) {e['score']:.4f}" for e in new if e.get("photo_url"))
    metadata = {
        "dagster/row_count": len(rows),
        "build": results["build"],
        "previous_build": (results.get("previous") or {}).get("build") or "",
        "new_count": len(new),
        "top": as_table(rows),
        "new": as_table(rows[rows["new"]]),
        ("new_photos" if new else "top_photos"): MetadataValue.md(_contact_sheet(store, shown) + "\n\n" + links),
    }
    if notified is not None:
        metadata["notified"] = notified
    return metadata
