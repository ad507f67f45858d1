"""The catalog build (resources/release/catalog.py) on small typed tables written here: joins, order, skips, changes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.release.catalog import build_catalog, compare_catalogs

_PHOTO_COLUMNS = (
    "photo_url",
    "photo_image_url",
    "photo_description",
    "ai_description",
    "photographer_username",
    "photo_location_name",
    "photo_location_country",
    "photo_location_city",
)


def _photos(rows: list[dict]) -> pa.Table:
    columns = {"photo_id": [r["photo_id"] for r in rows]}
    for name in _PHOTO_COLUMNS:
        columns[name] = pa.array([r.get(name) for r in rows], pa.string())
    columns["photographer_first_name"] = pa.array([r.get("first") for r in rows], pa.string())
    columns["photographer_last_name"] = pa.array([r.get("last") for r in rows], pa.string())
    columns["photo_width"] = pa.array([r.get("width") for r in rows], pa.int64())
    columns["photo_height"] = pa.array([r.get("height") for r in rows], pa.int64())
    columns["photo_aspect_ratio"] = pa.array([r.get("aspect") for r in rows], pa.float64())
    columns["photo_submitted_at"] = pa.array([None] * len(rows), pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def _write(settings: Settings, photos: list[dict], keywords: list[tuple], colors: list[tuple]) -> None:
    settings.tables_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(_photos(photos), settings.tables_dir / "photos.parquet")
    pq.write_table(
        pa.table(
            {
                "photo_id": pa.array([k[0] for k in keywords], pa.string()),
                "keyword": pa.array([k[1] for k in keywords], pa.string()),
                "suggested_by_user": pa.array([k[2] for k in keywords], pa.bool_()),
            }
        ),
        settings.tables_dir / "keywords.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "photo_id": pa.array([c[0] for c in colors], pa.string()),
                "keyword": pa.array([c[1] for c in colors], pa.string()),
                "ai_coverage": pa.array([c[2] for c in colors], pa.float64()),
            }
        ),
        settings.tables_dir / "colors.parquet",
    )


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


def test_catalog_joins_user_keywords_colours_and_attribution(settings):
    _write(
        settings,
        photos=[
            {"photo_id": " b ", "width": 400, "height": 600, "first": " Ada ", "last": "Lovelace"},
            {"photo_id": "a", "width": 1000, "height": 500, "aspect": 2.0},
            {"photo_id": "c", "width": 500, "height": 505},
        ],
        keywords=[
            ("a", " sea ", True),
            ("a", "beach", True),
            ("a", "beach", True),
            ("a", "ai-only", False),
            ("b", "", True),
            ("ghost", "x", True),
        ],
        colors=[("a", "blue", 0.2), ("a", "white", 0.7), ("ghost", "red", 1.0), ("c", "green", None)],
    )
    table, stats = build_catalog(settings)
    rows = {r["photo_id"]: r for r in table.to_pylist()}
    assert list(rows) == ["a", "b", "c"]
    assert rows["a"]["describe"] == "beach sea"
    assert rows["a"]["colors"] == ["white", "blue"] and rows["a"]["dominant_color"] == "white"
    assert rows["a"]["orientation"] == "landscape"
    assert rows["b"]["describe"] == "" and rows["b"]["colors"] == [] and rows["b"]["dominant_color"] is None
    assert rows["b"]["orientation"] == "portrait" and rows["b"]["photo_aspect_ratio"] == pytest.approx(0.67)
    assert rows["b"]["photographer_name"] == "Ada Lovelace" and rows["a"]["photographer_name"] is None
    assert rows["c"]["orientation"] == "square"
    assert stats["skipped_keywords_unknown_photo"] == 1 and stats["skipped_colors_unknown_photo"] == 1
    assert stats["photos_without_describe"] == 2 and stats["photos_without_colors"] == 1
    assert "photo_location_name" in stats["empty_columns"]


def test_empty_and_repeated_ids_are_skipped_and_counted(settings):
    _write(
        settings,
        photos=[{"photo_id": "a", "photo_url": "first"}, {"photo_id": "a", "photo_url": "second"}, {"photo_id": "  "}],
        keywords=[],
        colors=[],
    )
    table, stats = build_catalog(settings)
    assert table["photo_id"].to_pylist() == ["a"] and table["photo_url"].to_pylist() == ["first"]
    assert stats["skipped_empty_photo_ids"] == 1 and stats["skipped_repeated_photo_ids"] == 1


def test_a_missing_table_says_what_to_materialize(settings):
    with pytest.raises(ImageSearchError, match="no photos table at .*: materialize photos first"):
        build_catalog(settings)


def test_compare_counts_added_updated_and_removed():
    before = pa.table({"photo_id": ["a", "b", "c"], "describe": ["x", "y", "z"]})
    after = pa.table({"photo_id": ["b", "c", "d"], "describe": ["y", "changed", "w"]})
    assert compare_catalogs(before, after) == {"added": 1, "updated": 1, "removed": 1}
