"""``near_duplicates``: groups of photos whose image vectors are nearly the same picture.

The grouping itself is :mod:`resources.vectors.duplicates`; the asset reads the catalog and the
vectors, writes the groups, and records what it compared and found.
"""

import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableSchema,
    asset,
    asset_check,
)

from assets.automation import FOLLOW_PARENTS
from assets.metadata import as_table
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.release.catalog import read_catalog
from resources.storage.locks import holds_store_locks
from resources.vectors.duplicates import GROUP_COLUMNS, component_roots, group_table, select_vectors, write_groups
from resources.vectors.vector_store import load_embeddings

#: The check warns when one group holds more than this share of the photos: a sign the
#: threshold is too low for the model (or the model maps everything to one place).
MAX_GROUP_SHARE = 0.01


@asset(
    group_name="search",
    deps=["image_embeddings", "photo_catalog"],
    kinds={"numpy", "parquet"},
    code_version="1",
    automation_condition=FOLLOW_PARENTS,
)
@holds_store_locks("near_duplicates")
def near_duplicates(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Groups of photos whose image vectors have cosine >= the duplicate threshold, for "hide duplicates"."""
    catalog = read_catalog(settings, ["photo_id", "photo_width", "photo_height", "photo_submitted_at"])
    photo_ids, vectors = load_embeddings(settings, settings.image_model)
    if len(photo_ids) == 0:
        raise ImageSearchError(
            f"no image vectors for image model {settings.image_model}: materialize image_embeddings first"
        )
    used = select_vectors(photo_ids, vectors, catalog["photo_id"])
    if used.skipped_not_in_catalog or used.skipped_bad_vector:
        context.log.warning(
            f"near_duplicates: skipped {used.skipped_not_in_catalog} vectors of photos not in the catalog "
            f"and {used.skipped_bad_vector} broken (NaN or zero) vectors"
        )
    started = time.monotonic()
    roots = component_roots(used.vectors, settings.duplicate_threshold, log=context.log.info)
    table = group_table(used, roots, catalog)
    seconds = time.monotonic() - started
    write_groups(table, settings.duplicates_path, settings.duplicate_threshold, settings.image_model)

    groups = table.drop_duplicates("group_id")
    histogram = groups["group_size"].value_counts().sort_index()
    largest = groups.head(5)[["group_id", "group_size", "representative"]]
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": TableSchema(
                columns=[TableColumn(name, kind, description=text) for name, (kind, text) in GROUP_COLUMNS.items()]
            ),
            "path": MetadataValue.path(str(settings.duplicates_path)),
            "threshold": settings.duplicate_threshold,
            "image_model": settings.image_model,
            "photos_compared": len(used.photo_ids),
            "groups": len(groups),
            "photos_in_groups": len(table),
            "largest_group": int(groups["group_size"].max()) if len(groups) else 0,
            "skipped_not_in_catalog": used.skipped_not_in_catalog,
            "skipped_bad_vector": used.skipped_bad_vector,
            "seconds": round(seconds, 3),
            "group_sizes": as_table(pd.DataFrame({"size": histogram.index, "groups": histogram.to_numpy()})),
            "largest_groups": as_table(largest),
            "preview": as_table(table.head(8).round({"similarity": 4})),
        }
    )


@asset_check(asset=near_duplicates, description="No group swallows a large share of the photos.")
def near_duplicates_no_giant_group(settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Warn when one group holds more than 1% of the compared photos (at least 10 of them).

    Such a group means the threshold is too low for the model, and collapsing it would hide
    a real share of the results; it warns rather than blocks, since nothing in the pipeline
    reads the groups.
    """
    table = pd.read_parquet(settings.duplicates_path, columns=["group_size"])
    catalog_size = len(read_catalog(settings, ["photo_id"]))
    largest = int(table["group_size"].max()) if len(table) else 0
    limit = max(10, int(MAX_GROUP_SHARE * catalog_size))
    return AssetCheckResult(
        passed=largest <= limit,
        severity=AssetCheckSeverity.WARN,
        metadata={"largest_group": largest, "limit": limit},
        description=None
        if largest <= limit
        else f"largest group holds {largest} photos (limit {limit}): raise IMAGE_SEARCH_DUPLICATE_THRESHOLD",
    )
