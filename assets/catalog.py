"""``photo_catalog``: one row per photo with what search, attribution and filters need.

Built by :func:`resources.release.catalog.build_catalog` from the photos, keywords and colors tables.
The metadata counts the rows it skipped and what changed against the previous catalog; the
blocking check ``photo_ids_unique`` stops the per-photo stages on an empty or repeated photo_id.
"""

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    asset_check,
)

from assets.metadata import column_schema, preview
from assets.raw import colors, keywords, photos
from resources.config import Settings
from resources.release.catalog import build_catalog, compare_catalogs
from resources.storage.files import sweep, write_parquet

PHOTO_IDS_UNIQUE_CHECK = "photo_ids_unique"
PREVIEW_COLUMNS = ["photo_id", "describe", "orientation", "dominant_color", "photographer_name", "bucket"]


@asset(
    group_name="ingestion",
    kinds={"parquet"},
    code_version="2",
    deps=[photos, keywords, colors],
    description="One row per photo: image URL, describe (user-suggested keywords), descriptions, attribution, size, place, colours, bucket.",
)
def photo_catalog(context: AssetExecutionContext, settings: ResourceParam[Settings]) -> MaterializeResult:
    """Build the catalog, report its skips and what changed since the last one, and replace it atomically."""
    table, stats = build_catalog(settings)
    path = settings.catalog_path
    changes = None
    if path.is_file():
        try:
            changes = compare_catalogs(pq.read_table(path), table)
        except (pa.ArrowInvalid, OSError) as exc:
            context.log.warning(f"the previous catalog at {path} could not be read ({exc}); not comparing")
    sweep(path.parent)
    write_parquet(path, table, compression="zstd")
    skips = {k: v for k, v in stats.items() if k.startswith("skipped_") and v}
    if skips:
        context.log.warning(f"photo_catalog skipped rows: {skips}")
    if stats["empty_columns"]:
        context.log.warning(
            f"no photo has a value for {', '.join(stats['empty_columns'])} (the release lacks them or left them empty)"
        )
    metadata = {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": column_schema(table.schema),
        "path": MetadataValue.path(str(path)),
        **{k: v for k, v in stats.items() if k != "empty_columns"},
        "empty_columns": MetadataValue.json(stats["empty_columns"]),
        "preview": preview(table, PREVIEW_COLUMNS),
    }
    if changes is not None:
        metadata.update({f"photos_{k}": v for k, v in changes.items()})
        context.log.info(f"photo_catalog against the previous one: {changes}")
    return MaterializeResult(metadata=metadata)


@asset_check(
    asset=photo_catalog,
    name=PHOTO_IDS_UNIQUE_CHECK,
    blocking=True,
    description="Every photo_id in the written catalog is non-empty and unique.",
)
def photo_ids_unique(settings: ResourceParam[Settings]) -> AssetCheckResult:
    """Read the catalog back and fail on an empty or repeated photo_id: every later stage keys on it."""
    ids = pq.read_table(settings.catalog_path, columns=["photo_id"])["photo_id"]
    empty = pc.sum(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)).as_py() or 0
    repeated = len(ids) - pc.count_distinct(ids).as_py()
    return AssetCheckResult(
        passed=empty == 0 and repeated == 0,
        metadata={"rows": len(ids), "empty_photo_ids": empty, "repeated_photo_ids": repeated},
    )
