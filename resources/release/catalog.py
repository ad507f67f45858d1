"""The photo catalog: built from the release's typed tables, and read back by every later stage.

One row per photo with what search, attribution and filters need (columns in
docs/architecture.md, rules in docs/ingestion.md). Rows that cannot belong are skipped and
counted, never silently dropped. The ``photo_catalog`` asset writes what :func:`build_catalog`
makes; :func:`read_catalog` is the one reader, with one message when it is missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.image_store import BUCKET_COUNT, bucket_of
from resources.index.base import STORED_FIELDS
from resources.vectors.vector_store import VectorStore

#: Relative distance from 1 within which an aspect ratio counts as square.
SQUARE_TOLERANCE = 0.02
#: Catalog columns copied from the photos table as they are (null where the release lacks them).
_COPIED = (
    "photo_url",
    "photo_image_url",
    "photo_description",
    "ai_description",
    "photographer_username",
    "photo_width",
    "photo_height",
    "photo_location_name",
    "photo_location_country",
    "photo_location_city",
    "photo_submitted_at",
)
CATALOG_SCHEMA = pa.schema(
    [
        ("photo_id", pa.string()),
        ("photo_url", pa.string()),
        ("photo_image_url", pa.string()),
        ("describe", pa.string()),
        ("photo_description", pa.string()),
        ("ai_description", pa.string()),
        ("photographer_username", pa.string()),
        ("photographer_name", pa.string()),
        ("photo_width", pa.int64()),
        ("photo_height", pa.int64()),
        ("photo_aspect_ratio", pa.float64()),
        ("orientation", pa.string()),
        ("photo_location_name", pa.string()),
        ("photo_location_country", pa.string()),
        ("photo_location_city", pa.string()),
        ("photo_submitted_at", pa.timestamp("us", tz="UTC")),
        ("colors", pa.list_(pa.string())),
        ("dominant_color", pa.string()),
        ("bucket", pa.string()),
    ]
)


def _table(settings: Settings, name: str, columns: list[str] | None = None, filters=None) -> pa.Table:
    path = settings.tables_dir / f"{name}.parquet"
    if not path.is_file():
        raise ImageSearchError(f"no {name} table at {path}: materialize {name} first")
    return pq.read_table(path, columns=columns, filters=filters)


def _unique_photos(table: pa.Table) -> tuple[pa.Table, int, int]:
    """``table`` with empty ids dropped and only each photo_id's first row; (table, empty ids, repeats)."""
    ids = pc.utf8_trim_whitespace(table["photo_id"])
    table = table.set_column(table.schema.get_field_index("photo_id"), "photo_id", ids)
    non_empty = pc.fill_null(pc.not_equal(ids, ""), False)
    empty = table.num_rows - pc.sum(non_empty).as_py()
    table = table.filter(non_empty)
    table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = table.group_by("photo_id", use_threads=False).aggregate([("_row", "min")])["_row_min"]
    repeats = table.num_rows - len(first)
    return table.take(first.take(pc.sort_indices(first))).drop_columns("_row"), empty, repeats


def _per_photo_lists(pairs: pa.Table, value: str, order: list[tuple[str, str]]) -> pa.Table:
    """One row per photo_id with the list of its distinct ``value``s in ``order`` (a sort over both)."""
    distinct = pairs.group_by(["photo_id", value], use_threads=False).aggregate(
        [(c, "max") for c, _ in order if c not in ("photo_id", value)]
    )
    renamed = {f"{c}_max": c for c, _ in order}
    distinct = distinct.rename_columns([renamed.get(c, c) for c in distinct.column_names])
    distinct = distinct.sort_by(order)
    return distinct.group_by("photo_id", use_threads=False).aggregate([(value, "list")])


def _lookup(photo_ids: pa.Array, grouped: pa.Table, column: str) -> pa.Array:
    """``grouped[column]`` aligned to ``photo_ids`` (null where a photo has no row)."""
    index = pc.index_in(photo_ids, value_set=grouped["photo_id"])
    return grouped[column].take(index)


def _first_or_null(lists: pa.Array) -> pa.Array:
    """The first element of each list, null for an empty one."""
    heads = pc.list_slice(lists, 0, 1)
    padded = pc.if_else(pc.equal(pc.list_value_length(heads), 0), pa.scalar([None], lists.type), heads)
    return pc.list_flatten(padded)


def build_catalog(settings: Settings) -> tuple[pa.Table, dict]:
    """The catalog table and the counts the metadata reports (skips, columns without values)."""
    photo_table, empty_ids, repeats = _unique_photos(_table(settings, "photos"))
    ids = photo_table["photo_id"].combine_chunks()

    def column(name: str) -> pa.Array:
        return photo_table[name].combine_chunks()

    known = pa.array(ids)
    user_keywords = _table(settings, "keywords", ["photo_id", "keyword"], filters=[("suggested_by_user", "=", True)])
    kw_unknown = pc.sum(pc.invert(pc.is_in(user_keywords["photo_id"], value_set=known))).as_py() or 0
    words = pc.utf8_trim_whitespace(user_keywords["keyword"])
    pairs = pa.table({"photo_id": user_keywords["photo_id"], "keyword": words})
    pairs = pairs.filter(
        pc.and_(pc.is_in(pairs["photo_id"], value_set=known), pc.fill_null(pc.not_equal(pairs["keyword"], ""), False))
    )
    described = _per_photo_lists(pairs, "keyword", [("photo_id", "ascending"), ("keyword", "ascending")])
    describe = pc.fill_null(pc.binary_join(_lookup(ids, described, "keyword_list"), " "), "")

    color_rows = _table(settings, "colors", ["photo_id", "keyword", "ai_coverage"])
    colors_unknown = pc.sum(pc.invert(pc.is_in(color_rows["photo_id"], value_set=known))).as_py() or 0
    color_pairs = pa.table(
        {
            "photo_id": color_rows["photo_id"],
            "keyword": pc.utf8_trim_whitespace(color_rows["keyword"]),
            "coverage": pc.fill_null(color_rows["ai_coverage"], 0.0),
        }
    )
    color_pairs = color_pairs.filter(
        pc.and_(
            pc.is_in(color_pairs["photo_id"], value_set=known),
            pc.fill_null(pc.not_equal(color_pairs["keyword"], ""), False),
        )
    )
    by_coverage = _per_photo_lists(
        color_pairs, "keyword", [("photo_id", "ascending"), ("coverage", "descending"), ("keyword", "ascending")]
    )
    color_lists = _lookup(ids, by_coverage, "keyword_list")
    color_lists = pc.if_else(pc.is_null(color_lists), pa.scalar([], pa.list_(pa.string())), color_lists)

    # Releases before 1.1.0 have no width, height or aspect ratio: both stay null there.
    width, height = column("photo_width"), column("photo_height")
    measured = pc.divide(
        pc.cast(width, pa.float64()), pc.if_else(pc.greater(height, 0), pc.cast(height, pa.float64()), None)
    )
    aspect = pc.coalesce(column("photo_aspect_ratio"), pc.round(measured, 2))
    orientation = pc.if_else(
        pc.less_equal(pc.abs(pc.subtract(aspect, 1.0)), SQUARE_TOLERANCE),
        "square",
        pc.if_else(pc.greater(aspect, 1.0), "landscape", "portrait"),
    )
    first_name = pc.utf8_trim_whitespace(pc.fill_null(column("photographer_first_name"), ""))
    last_name = pc.utf8_trim_whitespace(pc.fill_null(column("photographer_last_name"), ""))
    name = pc.utf8_trim_whitespace(pc.binary_join_element_wise(first_name, last_name, " "))

    arrays = {
        "photo_id": ids,
        "describe": describe,
        "photographer_name": pc.if_else(pc.equal(name, ""), None, name),
        "photo_aspect_ratio": aspect,
        "orientation": orientation,
        "colors": color_lists,
        "dominant_color": _first_or_null(color_lists),
        "bucket": pa.array([bucket_of(pid, BUCKET_COUNT) for pid in ids.to_pylist()], pa.string()),
    }
    for name_ in _COPIED:
        arrays[name_] = column(name_)
    table = pa.table({f.name: arrays[f.name] for f in CATALOG_SCHEMA}, schema=CATALOG_SCHEMA)
    table = table.sort_by("photo_id")
    stats = {
        "skipped_empty_photo_ids": empty_ids,
        "skipped_repeated_photo_ids": repeats,
        "skipped_keywords_unknown_photo": kw_unknown,
        "skipped_colors_unknown_photo": colors_unknown,
        "empty_columns": [c for c in CATALOG_SCHEMA.names if table.num_rows and table[c].null_count == table.num_rows],
        "photos_without_describe": pc.sum(pc.equal(describe, "")).as_py() or 0,
        "photos_without_colors": pc.sum(pc.equal(pc.list_value_length(color_lists), 0)).as_py() or 0,
    }
    return table, stats


def compare_catalogs(previous: pa.Table, current: pa.Table) -> dict[str, int]:
    """How many photos ``current`` adds, updates (any column differs) and removes against ``previous``."""
    old_ids = set(previous["photo_id"].to_pylist())
    new_ids = set(current["photo_id"].to_pylist())
    shared = [c for c in current.column_names if c in previous.column_names]

    def rows(table: pa.Table, ids: set[str]) -> dict[str, tuple]:
        kept = table.filter(pc.is_in(table["photo_id"], value_set=pa.array(sorted(ids), pa.string()))).select(shared)
        return {row["photo_id"]: tuple(repr(row[c]) for c in shared) for row in kept.to_pylist()}

    common = old_ids & new_ids
    before, after = rows(previous, common), rows(current, common)
    return {
        "added": len(new_ids - old_ids),
        "updated": sum(1 for pid in common if before[pid] != after[pid]),
        "removed": len(old_ids - new_ids),
    }


def read_catalog(
    settings: Settings, columns: list[str] | None = None, buckets: list[str] | None = None
) -> pd.DataFrame:
    """The catalog's ``columns`` (all by default), of the rows in ``buckets`` if given, one row per photo_id."""
    path = settings.catalog_path
    if not path.is_file():
        raise ImageSearchError(f"no photo catalog at {path}: materialize photo_catalog first")
    filters = [("bucket", "in", list(buckets))] if buckets is not None else None
    try:
        catalog = pd.read_parquet(path, columns=columns, filters=filters)
    except (OSError, KeyError, ValueError) as exc:
        wanted = ", ".join(columns or ["its columns"])
        raise ImageSearchError(
            f"cannot read {wanted} from the photo catalog at {path} ({type(exc).__name__}): re-materialize photo_catalog"
        ) from None
    return catalog.drop_duplicates("photo_id", keep="last").reset_index(drop=True)


def index_inputs(settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """What the search index holds: the STORED_FIELDS of each catalog photo with a vector, and those vectors row for row."""
    return VectorStore.for_settings(settings).join(read_catalog(settings, list(STORED_FIELDS)))
