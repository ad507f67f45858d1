"""Ingestion: the release, the five typed tables and the photo catalog, materialized for real.

Every test writes a synthetic release with ``image_search.sample`` (quoted values with line
breaks, tabs, quotes, CJK and emoji, as the real files hold), materializes the assets
in-process with Dagster and reads back what they wrote; expected values come from Python's
``csv`` module reading the same files. Downloads go to a real HTTP server on 127.0.0.1 that
can cut a connection mid-way and honours ``Range`` requests.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import sensors
from assets.catalog import PHOTO_IDS_UNIQUE_CHECK
from assets.partitions import photo_bucket
from assets.raw import colors, keywords, photos, unsplash_release
from image_search.sample import write_release
from image_search.sample_values import TRICKY_TEXTS
from resources.errors import ImageSearchError
from resources.release.lite_format import COLUMNS, DOCUMENTS, RELEASES, columns_of
from resources.release.source import download
from tests.http_fixtures import CollectingLog, ZipServer
from tests.pipeline import ingested_metadata, ingestion_error, materialize_ingestion, release_rows, zip_release


def _write_rows(path: Path, rows: list[list[str]], *, line_end: str = "\n", prefix: bytes = b"") -> None:
    """Write records with CSV quoting where a value needs it; ``\\udcXX`` in a value becomes the raw byte XX."""
    out = io.StringIO()
    csv.writer(out, delimiter="\t", lineterminator=line_end).writerows(rows)
    path.write_bytes(prefix + out.getvalue().encode("utf-8", errors="surrogateescape"))


def _table(home: Path, name: str) -> list[dict]:
    return pq.read_table(home / "tables" / f"{name}.parquet").to_pylist()


def _catalog(home: Path) -> dict[str, dict]:
    return {r["photo_id"]: r for r in pq.read_table(home / "catalog" / "catalog.parquet").to_pylist()}


def test_sample_release_ingests_completely(sample_release: Path, sample_release_info: dict, tmp_path: Path):
    result = materialize_ingestion(tmp_path / "home", sample_release)
    assert result.success
    for doc in DOCUMENTS:
        meta = ingested_metadata(result, doc)
        assert meta["dagster/row_count"] == sample_release_info[doc]
        assert meta["skipped_rows"] == 0 and meta["non_utf8_values"] == 0 and meta["unparsed_values"] == {}
        assert meta["absent_columns"] == {}
        assert pq.read_metadata(tmp_path / "home" / "tables" / f"{doc}.parquet").num_rows == sample_release_info[doc]
    assert ingested_metadata(result, "unsplash_release")["release"] == "1.4.x"
    assert ingested_metadata(result, "photos")["multiline_records"] >= 3, "three of the tricky texts hold line breaks"
    preview = ingested_metadata(result, "photos")["preview"]
    assert [c.name for c in preview.schema.columns][:2] == ["photo_id", "photo_url"] and len(preview.records) == 5
    assert all(len(v) <= 40 for r in preview.records for v in r.data.values() if isinstance(v, str)), "long values cut"
    schema = pq.read_schema(tmp_path / "home" / "tables" / "photos.parquet")
    assert str(schema.field("photo_width").type) == "int64"
    assert str(schema.field("photo_submitted_at").type) == "timestamp[us, tz=UTC]"
    for text_column in ("exif_aperture_value", "exif_focal_length", "ai_primary_landmark_confidence", "blur_hash"):
        assert str(schema.field(text_column).type) == "string", "text in create_tables.sql stays text"
    assert (
        str(pq.read_schema(tmp_path / "home" / "tables" / "keywords.parquet").field("suggested_by_user").type) == "bool"
    )
    assert (
        str(pq.read_schema(tmp_path / "home" / "tables" / "collections.parquet").field("collection_id").type)
        == "string"
    )

    expected_describe: dict[str, set[str]] = {}
    for row in release_rows(sample_release / "keywords.tsv000")[1:]:
        if row[4] == "t":
            expected_describe.setdefault(row[0], set()).add(row[1].strip())
    catalog = pq.read_table(tmp_path / "home" / "catalog" / "catalog.parquet").to_pylist()
    assert [r["photo_id"] for r in catalog] == sorted(sample_release_info["photo_ids"])
    for row in catalog:
        background, shape, _ = sample_release_info["designs"][row["photo_id"]]
        assert row["describe"] == " ".join(sorted(expected_describe[row["photo_id"]]))
        assert {background, shape} <= set(row["describe"].split(" "))
        assert row["dominant_color"] == background == row["colors"][0]
        assert row["bucket"] == photo_bucket(row["photo_id"])
        aspect = row["photo_width"] / row["photo_height"]
        assert row["orientation"] == (
            "square" if abs(aspect - 1) <= 0.02 else "landscape" if aspect > 1 else "portrait"
        )
        assert row["photo_image_url"].startswith("file://") and row["photographer_name"]
    meta = ingested_metadata(result, "photo_catalog")
    assert meta["dagster/row_count"] == len(catalog)
    assert meta["skipped_repeated_photo_ids"] == 0 and meta["skipped_keywords_unknown_photo"] == 0
    assert "photos_added" not in meta, "no previous catalog to compare with"
    assert [e.passed for e in result.get_asset_check_evaluations() if e.check_name == PHOTO_IDS_UNIQUE_CHECK] == [True]


#: Catalog columns copied from the photos document as they are.
TEXT_COLUMNS = (
    "photo_url",
    "photo_image_url",
    "photo_description",
    "ai_description",
    "photographer_username",
    "photo_location_name",
    "photo_location_country",
    "photo_location_city",
)


@pytest.mark.parametrize("version", RELEASES)
def test_every_release_version_ingests_with_its_text_as_written(tmp_path: Path, version: str):
    """Each release's documents, columns and file names, split in parts, with every kind of quoted value.

    The expected values come from Python's csv module reading the same files.
    """
    release = tmp_path / "release"
    info = write_release(release, photos=24, images=False, seed=13, release_version=version, parts=2)
    home = tmp_path / "home"
    result = materialize_ingestion(home, release)
    assert ingested_metadata(result, "unsplash_release")["release"] == version.rsplit(".", 1)[0] + ".x"

    photos = [
        dict(zip(rows[0], row))
        for name in info["files"]["photos"]
        for rows in [release_rows(release / name)]
        for row in rows[1:]
    ]
    catalog = _catalog(home)
    assert sorted(catalog) == sorted(r["photo_id"] for r in photos) == sorted(info["photo_ids"])
    for row in photos:
        for column in TEXT_COLUMNS:
            assert catalog[row["photo_id"]][column] == (row.get(column) or None), (column, row.get(column))
    assert {TRICKY_TEXTS[i] for i in range(len(TRICKY_TEXTS))} <= {r["photo_location_name"] for r in catalog.values()}

    user_keywords: dict[str, set[str]] = {}
    for name in info["files"]["keywords"]:
        for row in release_rows(release / name)[1:]:
            if row[4] == "t":
                user_keywords.setdefault(row[0], set()).add(row[1].strip())
    for photo_id, words in user_keywords.items():
        assert catalog[photo_id]["describe"] == " ".join(sorted(words))
    assert "night\nsky" in catalog[info["photo_ids"][0]]["describe"], "a keyword with a line break reaches describe"

    for doc in DOCUMENTS:
        meta = ingested_metadata(result, doc)
        assert meta["skipped_rows"] == 0 and meta["unparsed_values"] == {}, doc
        assert meta["dagster/row_count"] == info[doc]
        assert set(meta["absent_columns"]) == set(COLUMNS.get(doc, {})) - set(
            columns_of(version).get(doc, COLUMNS[doc])
        ), doc
    if version < "1.1.0":
        assert ingested_metadata(result, "colors")["absent_document"].startswith(
            "Unsplash Lite 1.0.x has no colors document"
        )
        assert _table(home, "colors") == []
        assert all(
            r["orientation"] is None and r["photo_width"] is None and r["colors"] == [] for r in catalog.values()
        )
        assert {"photo_width", "orientation", "dominant_color"} <= set(
            ingested_metadata(result, "photo_catalog")["empty_columns"]
        )
    else:
        assert all(
            r["orientation"] in ("landscape", "portrait", "square") and r["dominant_color"] for r in catalog.values()
        )


def test_skipped_records_report_the_line_they_start_on(release: Path, tmp_path: Path):
    """Bad records after others that span several lines: the lines are the file's, not record numbers."""
    path = release / "keywords.tsv000"
    text = path.read_text(encoding="utf-8")
    first_bad = text.count("\n") + 1
    assert first_bad > len(release_rows(path)), "quoted line breaks before the bad records"
    photo_id = release_rows(path)[1][0]
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(f"{photo_id}\tonly two fields\n")
        f.write(f'{photo_id}\t"a bad record\r\nover two lines"\n')
        f.write(f"{photo_id}\tfine\t\t\tt\tphotographer\tf\tf\n")
        f.write(f"{photo_id}\ta\tb\tc\td\te\tf\tg\th\ti\n")
        f.write(f"{photo_id}\tfour\tfields\tonly\n")
    result = materialize_ingestion(tmp_path / "home", release, [unsplash_release, keywords])
    meta = ingested_metadata(result, "keywords")
    assert meta["skipped_rows"] == 4
    assert meta["skipped_examples"] == [
        f"keywords.tsv000 line {first_bad}: 2 fields, expected 8",
        f"keywords.tsv000 line {first_bad + 1}: 2 fields, expected 8",
        f"keywords.tsv000 line {first_bad + 4}: 10 fields, expected 8",
    ]
    assert meta["dagster/row_count"] == 30 * 20 + 1


def test_a_quote_left_open_fails_naming_the_file_and_line(release: Path, tmp_path: Path):
    home = tmp_path / "home"
    path = release / "photos.tsv000"
    start = path.read_text(encoding="utf-8").count("\n") + 1
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write('NEWPHOTO123\thttps://unsplash.com/photos/NEWPHOTO123\t"a value cut short\nand never closed\n')
    error = ingestion_error(home, release, [unsplash_release, photos])
    assert str(path) in error and f"line {start}" in error and "quoted value" in error
    assert not (home / "tables" / "photos.parquet").exists() and not list((home / "tables").glob("*.tmp"))


def test_byte_order_mark_and_crlf_line_ends(release: Path, tmp_path: Path):
    """A file written on Windows: a BOM before the header and CR LF after every record."""
    for doc in ("photos", "keywords"):
        _write_rows(
            release / f"{doc}.tsv000", release_rows(release / f"{doc}.tsv000"), line_end="\r\n", prefix=codecs.BOM_UTF8
        )
    home = tmp_path / "home"
    result = materialize_ingestion(home, release)
    photos_rows = release_rows(release / "photos.tsv000")
    header = [photos_rows[0][0].removeprefix("\ufeff"), *photos_rows[0][1:]]
    catalog = _catalog(home)
    assert len(catalog) == 30 and ingested_metadata(result, "keywords")["skipped_rows"] == 0
    for row in photos_rows[1:]:
        record = dict(zip(header, row))
        assert catalog[record["photo_id"]]["photo_description"] == (record["photo_description"] or None)
    assert catalog[photos_rows[1][0]]["photo_description"] == TRICKY_TEXTS[0]


def test_second_catalog_reports_what_changed(release: Path, tmp_path: Path):
    home = tmp_path / "home"
    materialize_ingestion(home, release)
    rows = release_rows(release / "photos.tsv000")
    header, body = rows[0], rows[1:]
    removed, changed = body[0][0], body[1][0]
    body[1][header.index("photo_description")] = "a new description"
    added = list(body[2])
    added[0] = "NEWPHOTO123"
    _write_rows(release / "photos.tsv000", [header, *body[1:], added])
    result = materialize_ingestion(home, release)
    meta = ingested_metadata(result, "photo_catalog")
    assert (meta["photos_added"], meta["photos_updated"], meta["photos_removed"]) == (1, 1, 1)
    ids = set(pq.read_table(home / "catalog" / "catalog.parquet", columns=["photo_id"])["photo_id"].to_pylist())
    assert removed not in ids and {changed, "NEWPHOTO123"} <= ids


def test_bad_rows_are_counted_and_skipped(release: Path, tmp_path: Path):
    photo_rows = release_rows(release / "photos.tsv000")
    header = photo_rows[0]
    first_id = photo_rows[1][0]
    repeat = list(photo_rows[1])
    repeat[header.index("photo_description")] = "the repeated row loses"
    photo_rows[2][header.index("photo_width")] = "wide"
    photo_rows[3][header.index("exif_aperture_value")] = "f/2.8"
    blank = list(photo_rows[3])
    blank[0] = " "
    non_utf8 = list(photo_rows[4])
    non_utf8[0] = "NONUTF8xxxx"
    non_utf8[header.index("photo_description")] = "caf\udce9 au lait"
    _write_rows(release / "photos.tsv000", [*photo_rows, repeat, blank, non_utf8])
    with open(release / "keywords.tsv000", "a", encoding="utf-8") as f:
        f.write(f"{first_id}\ttoo few fields\n")
        f.write(f"{first_id}\ta\tb\tc\td\te\tf\tg\th\ti\n")
        f.write("UNKNOWNPHOT\tghost\t\t\tt\tphotographer\tf\tf\n")
    with open(release / "colors.tsv000", "a", encoding="utf-8") as f:
        f.write("UNKNOWNPHOT\t000000\t0\t0\t0\tblack\t90\t0.5\n")

    result = materialize_ingestion(tmp_path / "home", release)
    photo_meta = ingested_metadata(result, "photos")
    assert photo_meta["dagster/row_count"] == 33
    assert photo_meta["non_utf8_values"] == 1
    assert photo_meta["unparsed_values"] == {"photo_width": 1}
    keyword_meta = ingested_metadata(result, "keywords")
    assert keyword_meta["skipped_rows"] == 2 and len(keyword_meta["skipped_examples"]) == 2
    assert keyword_meta["dagster/row_count"] == 30 * 20 + 1
    meta = ingested_metadata(result, "photo_catalog")
    assert meta["skipped_repeated_photo_ids"] == 1
    assert meta["skipped_empty_photo_ids"] == 1
    assert meta["skipped_keywords_unknown_photo"] == 1
    assert meta["skipped_colors_unknown_photo"] == 1
    assert meta["dagster/row_count"] == 31
    catalog = _catalog(tmp_path / "home")
    assert catalog[first_id]["photo_description"] != "the repeated row loses"
    assert catalog["NONUTF8xxxx"]["photo_description"] == "caf\ufffd au lait"
    assert catalog[photo_rows[2][0]]["photo_width"] is None
    assert "UNKNOWNPHOT" not in catalog
    apertures = {r["photo_id"]: r["exif_aperture_value"] for r in _table(tmp_path / "home", "photos")}
    assert apertures[photo_rows[3][0]] == "f/2.8", "a text column keeps any text"


def test_csv_names_and_coverage_header(release: Path, tmp_path: Path):
    """1.3.0 named the files *.csv000; DOCS.md calls the colour columns coverage and score."""
    for doc in DOCUMENTS:
        (release / f"{doc}.tsv000").rename(release / f"{doc}.csv000")
    rows = release_rows(release / "colors.csv000")
    rows[0] = [{"ai_coverage": "coverage", "ai_score": "score"}.get(c, c) for c in rows[0]]
    _write_rows(release / "colors.csv000", rows)
    result = materialize_ingestion(tmp_path / "home", release)
    assert ingested_metadata(result, "colors")["dagster/row_count"] == 90
    assert pq.read_schema(tmp_path / "home" / "tables" / "colors.parquet").names[-2:] == ["ai_coverage", "ai_score"]
    assert all(
        r["dominant_color"] for r in pq.read_table(tmp_path / "home" / "catalog" / "catalog.parquet").to_pylist()[:5]
    )


@pytest.mark.parametrize(
    "damage, asset_key, message",
    [
        (lambda d: (d / "colors.tsv000").unlink(), "colors", "has no colors document"),
        (lambda d: (d / "keywords.tsv000").write_bytes(b""), "keywords", "is empty"),
        (
            lambda d: _write_rows(d / "keywords.tsv000", release_rows(d / "keywords.tsv000")[:1]),
            "keywords",
            "header but no rows",
        ),
        (
            lambda d: _write_rows(d / "photos.tsv000", [r[:2] + r[3:] for r in release_rows(d / "photos.tsv000")]),
            "photos",
            "no column photo_image_url",
        ),
        (
            lambda d: _write_rows(d / "colors.tsv000", [r[:6] for r in release_rows(d / "colors.tsv000")]),
            "colors",
            "no column ai_coverage",
        ),
    ],
    ids=["missing", "empty", "header-only", "missing-column", "no-coverage"],
)
def test_unusable_documents_fail_with_one_line(release: Path, tmp_path: Path, damage, asset_key, message):
    damage(release)
    selection = [unsplash_release, {"photos": photos, "keywords": keywords, "colors": colors}[asset_key]]
    error = ingestion_error(tmp_path / "home", release, selection)
    assert message in error and asset_key in error


def test_failed_ingestion_keeps_the_previous_table(release: Path, tmp_path: Path):
    home = tmp_path / "home"
    materialize_ingestion(home, release, [unsplash_release, photos])
    table = home / "tables" / "photos.parquet"
    before = table.read_bytes()
    rows = release_rows(release / "photos.tsv000")
    _write_rows(release / "photos.tsv001", [rows[0][:-1], *[r[:-1] for r in rows[1:]]])
    error = ingestion_error(home, release, [unsplash_release, photos])
    assert f"{release / 'photos.tsv001'} has columns" in error and f"unlike {release / 'photos.tsv000'}" in error
    assert table.read_bytes() == before
    assert not list((home / "tables").glob("*.tmp"))


def test_missing_dataset_path(tmp_path: Path):
    error = ingestion_error(tmp_path / "home", tmp_path / "nowhere", [unsplash_release])
    assert "IMAGE_SEARCH_DATASET" in error and "nowhere" in error


# --------------------------------------------------------------------------- zips and downloads


def test_download_resumes_after_a_cut_connection(release: Path, tmp_path: Path):
    body = zip_release(release, tmp_path / "release.zip")
    with ZipServer(body, cut_at=len(body) // 2) as server:
        result = materialize_ingestion(tmp_path / "home", server.url)
    assert server.requests == [None, f"bytes={len(body) // 2}-"], "the second request resumes where the cut happened"
    meta = ingested_metadata(result, "unsplash_release")
    assert meta["size_bytes"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["kind"] == "download"
    assert ingested_metadata(result, "photos")["dagster/row_count"] == 30


def test_download_resumes_in_the_next_run(release: Path, tmp_path: Path):
    body = zip_release(release, tmp_path / "release.zip")
    dest = tmp_path / "downloads"
    logs = CollectingLog()
    with ZipServer(body, cut_at=1000) as server:
        with pytest.raises(ImageSearchError, match="materialize again to resume"):
            download(server.url, dest, timeout=5, log=logs, attempts=1)
        assert [p.stat().st_size for p in dest.glob("*.part")] == [1000]
        done = download(server.url, dest, timeout=5, log=logs, attempts=1)
        assert done.read_bytes() == body
        assert server.requests == [None, "bytes=1000-"]
        again = download(server.url, dest, timeout=5, log=logs, attempts=1)
        assert again == done and len(server.requests) == 2, "an unchanged release is not downloaded again"
    assert any("100%" in line for line in logs.lines), logs.lines


def test_download_http_error_is_one_line(tmp_path: Path):
    with ZipServer(b"", status=404) as server:
        error = ingestion_error(tmp_path / "home", server.url, [unsplash_release])
    assert "HTTP 404" in error and "127.0.0.1" in error


def test_corrupt_zip(release: Path, tmp_path: Path):
    body = bytearray(zip_release(release, tmp_path / "release.zip"))
    middle = len(body) // 3
    body[middle : middle + 200] = bytes(200)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(body))
    assert "is corrupt" in ingestion_error(tmp_path / "home", bad, [unsplash_release])
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bytes(body[:100]))
    assert "is corrupt" in ingestion_error(tmp_path / "home", truncated, [unsplash_release])
    assert not (tmp_path / "home" / "release" / "extracted").exists()

    with ZipServer(bytes(body)) as server:
        error = ingestion_error(tmp_path / "home2", server.url, [unsplash_release])
    assert "is corrupt" in error and "download it afresh" in error
    assert not list((tmp_path / "home2" / "release" / "downloads").glob("*.zip"))


def test_local_zip_is_extracted_once(release: Path, tmp_path: Path):
    zip_path = tmp_path / "release.zip"
    zip_release(release, zip_path)
    home = tmp_path / "home"
    result = materialize_ingestion(home, zip_path)
    assert ingested_metadata(result, "unsplash_release")["kind"] == "zip"
    marker = home / "release" / "extracted" / ".source.json"
    stamp = marker.stat().st_mtime_ns
    shutil.copy(zip_path, tmp_path / "same.zip")
    materialize_ingestion(home, tmp_path / "same.zip", [unsplash_release])
    assert marker.stat().st_mtime_ns == stamp


def test_a_server_without_etag_a_new_release_is_noticed_and_downloaded(release: Path, tmp_path: Path):
    """The sensor and the download share one meaning of "changed": here the date alone tells the versions apart."""
    first, second = zip_release(release, tmp_path / "v1.zip"), None
    (release / "photos.tsv000").write_bytes((release / "photos.tsv000").read_bytes().rsplit(b"\n", 2)[0] + b"\n")
    second = zip_release(release, tmp_path / "v2.zip")
    home = tmp_path / "home"
    with ZipServer(first, etag=None, last_modified="Tue, 01 Sep 2026 00:00:00 GMT", head_length=False) as server:
        assert (
            ingested_metadata(materialize_ingestion(home, server.url, [unsplash_release]), "unsplash_release")["sha256"]
            == hashlib.sha256(first).hexdigest()
        )
        seen = sensors.release_fingerprint(server.url, timeout=5)
        materialize_ingestion(home, server.url, [unsplash_release])
        assert len(server.requests) == 1 and sensors.release_fingerprint(server.url, timeout=5) == seen, (
            "unchanged: kept"
        )
        server.body, server.last_modified = second, "Thu, 01 Oct 2026 00:00:00 GMT"
        assert sensors.release_fingerprint(server.url, timeout=5) != seen
        result = materialize_ingestion(home, server.url, [unsplash_release])
    assert len(server.requests) == 2, "the new release is downloaded, not the old zip reused"
    assert ingested_metadata(result, "unsplash_release")["sha256"] == hashlib.sha256(second).hexdigest()


def test_a_release_replaced_between_a_cut_and_the_resume_is_downloaded_afresh(release: Path, tmp_path: Path):
    first = zip_release(release, tmp_path / "v1.zip")
    (release / "photos.tsv000").write_bytes((release / "photos.tsv000").read_bytes().rsplit(b"\n", 2)[0] + b"\n")
    second = zip_release(release, tmp_path / "v2.zip")
    dest = tmp_path / "downloads"
    with ZipServer(first, cut_at=1000) as server:
        with pytest.raises(ImageSearchError, match="materialize again to resume"):
            download(server.url, dest, timeout=5, log=CollectingLog(), attempts=1)
        server.body, server.etag = second, '"v2"'
        done = download(server.url, dest, timeout=5, log=CollectingLog(), attempts=1)
    assert server.requests == [None, "bytes=1000-"], "it asked to resume, If-Range made the server send it all"
    assert done.read_bytes() == second
