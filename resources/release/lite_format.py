"""The Unsplash Lite release format as published: its documents, each release's columns, their types.

Everything here comes from the public ``unsplash/datasets`` repository across its history
(``create_tables.sql``, the loaders, CHANGELOG.md, DOCS.md), nothing from the data itself;
docs/ingestion.md lists what each release added and how the files are read.
"""

from __future__ import annotations

import pyarrow as pa

DOCUMENTS = ("photos", "keywords", "collections", "conversions", "colors")
#: Release versions whose column sets this project knows, oldest first (CHANGELOG.md).
RELEASES = ("1.0.0", "1.0.1", "1.1.0", "1.2.0", "1.2.1", "1.2.2", "1.3.0", "1.4.0", "1.4.1")
LATEST_RELEASE = RELEASES[-1]

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_TEXT, _BOOL, _INT, _FLOAT = pa.string(), pa.bool_(), pa.int64(), pa.float64()

#: Every column of each document in the latest release, in file order, with its type as in
#: create_tables.sql: varchar and text stay strings (so ``exif_aperture_value``,
#: ``exif_focal_length`` and ``ai_primary_landmark_confidence`` too), integer and bigint
#: become int64, float float64, boolean bool, timestamp a UTC timestamp.
COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "photos": {
        "photo_id": _TEXT,
        "photo_url": _TEXT,
        "photo_image_url": _TEXT,
        "photo_submitted_at": _TIMESTAMP,
        "photo_featured": _BOOL,
        "photo_width": _INT,
        "photo_height": _INT,
        "photo_aspect_ratio": _FLOAT,
        "photo_description": _TEXT,
        "photographer_username": _TEXT,
        "photographer_first_name": _TEXT,
        "photographer_last_name": _TEXT,
        "exif_camera_make": _TEXT,
        "exif_camera_model": _TEXT,
        "exif_iso": _INT,
        "exif_aperture_value": _TEXT,
        "exif_focal_length": _TEXT,
        "exif_exposure_time": _TEXT,
        "photo_location_name": _TEXT,
        "photo_location_latitude": _FLOAT,
        "photo_location_longitude": _FLOAT,
        "photo_location_country": _TEXT,
        "photo_location_city": _TEXT,
        "stats_views": _INT,
        "stats_downloads": _INT,
        "ai_description": _TEXT,
        "ai_primary_landmark_name": _TEXT,
        "ai_primary_landmark_latitude": _FLOAT,
        "ai_primary_landmark_longitude": _FLOAT,
        "ai_primary_landmark_confidence": _TEXT,
        "blur_hash": _TEXT,
    },
    "keywords": {
        "photo_id": _TEXT,
        "keyword": _TEXT,
        "ai_service_1_confidence": _FLOAT,
        "ai_service_2_confidence": _FLOAT,
        "suggested_by_user": _BOOL,
        "user_suggestion_source": _TEXT,
        "suggested_by_ai_service_3": _BOOL,
        "confirmed_by_ai_service_3": _BOOL,
    },
    "collections": {
        "photo_id": _TEXT,
        "collection_id": _TEXT,
        "collection_title": _TEXT,
        "photo_collected_at": _TIMESTAMP,
        "collection_type": _TEXT,
    },
    "conversions": {
        "converted_at": _TIMESTAMP,
        "conversion_type": _TEXT,
        "keyword": _TEXT,
        "photo_id": _TEXT,
        "anonymous_user_id": _TEXT,
        "conversion_country": _TEXT,
        "device_type": _TEXT,
        "search_orientation_filter": _TEXT,
        "search_ordering": _TEXT,
    },
    "colors": {
        "photo_id": _TEXT,
        "hex": _TEXT,
        "red": _INT,
        "green": _INT,
        "blue": _INT,
        "keyword": _TEXT,
        "ai_coverage": _FLOAT,
        "ai_score": _FLOAT,
    },
}
#: The release that added a column or document; everything else is in 1.0.0.
ADDED_IN: dict[str, str] = {
    "photo_width": "1.1.0",
    "photo_height": "1.1.0",
    "photo_aspect_ratio": "1.1.0",
    "photo_description": "1.1.0",
    "colors": "1.1.0",
    "blur_hash": "1.2.0",
    "user_suggestion_source": "1.3.0",
    "collection_type": "1.3.0",
    "suggested_by_ai_service_3": "1.4.0",
    "confirmed_by_ai_service_3": "1.4.0",
    "device_type": "1.4.0",
    "search_orientation_filter": "1.4.0",
    "search_ordering": "1.4.0",
}
#: Header names read under another name: DOCS.md's names for the colour columns.
ALIASES = {"colors": {"coverage": "ai_coverage", "score": "ai_score"}}
#: Columns without which the catalog cannot be built; a file missing one fails its document.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "photos": ("photo_id", "photo_url", "photo_image_url", "photographer_username"),
    "keywords": ("photo_id", "keyword", "suggested_by_user"),
    "collections": ("photo_id",),
    "conversions": ("photo_id",),
    "colors": ("photo_id", "keyword", "ai_coverage"),
}


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def columns_of(version: str) -> dict[str, list[str]]:
    """The documents of release ``version`` and their columns in file order (no colors before 1.1.0)."""
    if version not in RELEASES:
        raise ValueError(f"unknown Unsplash Lite release {version!r}; known: {', '.join(RELEASES)}")

    def has(name: str) -> bool:
        return _key(ADDED_IN.get(name, "1.0.0")) <= _key(version)

    return {doc: [c for c in columns if has(c)] for doc, columns in COLUMNS.items() if has(doc)}


def canonical_header(document: str, header: list[str]) -> list[str]:
    """``header`` with the column names this project stores them under (DOCS.md's colour names renamed)."""
    aliases = ALIASES.get(document, {})
    return [aliases.get(name, name) for name in header]


def release_of(headers: dict[str, list[str]]) -> str | None:
    """The column set the headers show, as ``"1.2.x"``: the newest release whose columns are all there.

    ``headers`` maps a document to its (canonical) header; absent documents are left out,
    so a release missing a file is still recognised by the others (and then fails on the
    missing one). None when not even 1.0.0's columns are there.
    """
    for version in reversed(RELEASES):
        expected = columns_of(version)
        if all(set(expected[doc]) <= set(header) for doc, header in headers.items() if doc in expected):
            return version.rsplit(".", 1)[0] + ".x"
    return None


def has_document(release: str | None, document: str) -> bool:
    """Whether releases of the column set ``release`` (``"1.0.x"``) publish ``document``; unknown: yes."""
    if release is None:
        return True
    return _key(ADDED_IN.get(document, "1.0.0"))[:2] <= _key(release.removesuffix(".x"))
