"""Ingestion: the release, the five typed tables and the photo catalog, materialized for real.

Every test writes a synthetic release with ``image_search.sample``, materializes the assets
in-process with Dagster and reads back what they wrote. Downloads go to a real HTTP server
on 127.0.0.1 that can cut a connection mid-way and honours ``Range`` requests.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize

from assets.catalog import PHOTO_IDS_UNIQUE_CHECK, photo_catalog, photo_ids_unique
from assets.partitions import photo_bucket
from assets.raw import collections, colors, conversions, download, keywords, photos, unsplash_release
from image_search.sample import DOCUMENTS, write_release
from resources.dagster_resources import SettingsResource
from resources.errors import ImageSearchError

INGESTION = [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog, photo_ids_unique]


def _materialize(home: Path, dataset, selection=INGESTION):
    return materialize(
        selection,
        resources={"settings": SettingsResource(home=str(home), dataset=str(dataset))},
        instance=DagsterInstance.ephemeral(),
    )


def _metadata(result, key: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{key} was not materialized")


def _error(home: Path, dataset, selection=INGESTION) -> str:
    """The message of the ImageSearchError a materialization fails with."""
    with pytest.raises(Exception) as failure:
        _materialize(home, dataset, selection)
    error = getattr(failure.value, "user_exception", None) or failure.value
    assert isinstance(error, ImageSearchError), repr(failure.value)
    message = str(error)
    assert "\n" not in message
    return message


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A small fresh release this test may change (no images: ingestion never opens them)."""
    out = tmp_path / "release"
    write_release(out, photos=30, images=False, seed=11)
    return out


def test_sample_release_ingests_completely(sample_release: Path, sample_release_info: dict, tmp_path: Path):
    result = _materialize(tmp_path / "home", sample_release)
    assert result.success
    for doc in DOCUMENTS:
        meta = _metadata(result, doc)
        assert meta["dagster/row_count"] == sample_release_info[doc]
        assert meta["skipped_rows"] == 0 and meta["non_utf8_values"] == 0 and meta["unparsed_values"] == {}
        assert pq.read_metadata(tmp_path / "home" / "tables" / f"{doc}.parquet").num_rows == sample_release_info[doc]
    assert "| photo_id |" in _metadata(result, "photos")["preview"]
    schema = pq.read_schema(tmp_path / "home" / "tables" / "photos.parquet")
    assert str(schema.field("photo_width").type) == "int64"
    assert str(schema.field("photo_submitted_at").type) == "timestamp[us, tz=UTC]"
    assert str(pq.read_schema(tmp_path / "home" / "tables" / "keywords.parquet").field("suggested_by_user").type) == "bool"

    expected_describe: dict[str, set[str]] = {}
    for row in _rows(sample_release / "keywords.tsv000")[1:]:
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
        assert row["orientation"] == ("square" if abs(aspect - 1) <= 0.02 else "landscape" if aspect > 1 else "portrait")
        assert row["photo_image_url"].startswith("file://") and row["photographer_name"]
    meta = _metadata(result, "photo_catalog")
    assert meta["dagster/row_count"] == len(catalog)
    assert meta["skipped_repeated_photo_ids"] == 0 and meta["skipped_keywords_unknown_photo"] == 0
    assert "photos_added" not in meta, "no previous catalog to compare with"
    assert [e.passed for e in result.get_asset_check_evaluations() if e.check_name == PHOTO_IDS_UNIQUE_CHECK] == [True]


def test_second_catalog_reports_what_changed(release: Path, tmp_path: Path):
    home = tmp_path / "home"
    _materialize(home, release)
    rows = _rows(release / "photos.tsv000")
    header, body = rows[0], rows[1:]
    removed, changed = body[0][0], body[1][0]
    body[1][header.index("photo_description")] = "a new description"
    added = list(body[2])
    added[0] = "NEWPHOTO123"
    _write_rows(release / "photos.tsv000", [header, *body[1:], added])
    result = _materialize(home, release)
    meta = _metadata(result, "photo_catalog")
    assert (meta["photos_added"], meta["photos_updated"], meta["photos_removed"]) == (1, 1, 1)
    ids = set(pq.read_table(home / "catalog" / "catalog.parquet", columns=["photo_id"])["photo_id"].to_pylist())
    assert removed not in ids and {changed, "NEWPHOTO123"} <= ids


def test_bad_rows_are_counted_and_skipped(release: Path, tmp_path: Path):
    photo_rows = _rows(release / "photos.tsv000")
    header = photo_rows[0]
    first_id = photo_rows[1][0]
    repeat = list(photo_rows[1])
    repeat[header.index("photo_description")] = "the repeated row loses"
    photo_rows[2][header.index("photo_width")] = "wide"
    blank = list(photo_rows[3])
    blank[0] = " "
    _write_rows(release / "photos.tsv000", [*photo_rows, repeat, blank])
    with open(release / "photos.tsv000", "ab") as f:
        f.write(b"\t".join([b"NONUTF8xxxx", *[c.encode() for c in photo_rows[4][1:8]], b"caf\xe9 au lait", *[c.encode() for c in photo_rows[4][9:]]]) + b"\n")
    with open(release / "keywords.tsv000", "a", encoding="utf-8") as f:
        f.write(f"{first_id}\ttoo few fields\n")
        f.write(f"{first_id}\ta\tb\tc\td\te\tf\tg\th\ti\n")
        f.write("UNKNOWNPHOT\tghost\t\t\tt\tmanual\tf\tf\n")
    with open(release / "colors.tsv000", "a", encoding="utf-8") as f:
        f.write("UNKNOWNPHOT\t#000000\t0\t0\t0\tblack\t0.9\t0.5\n")

    result = _materialize(tmp_path / "home", release)
    photo_meta = _metadata(result, "photos")
    assert photo_meta["dagster/row_count"] == 33
    assert photo_meta["non_utf8_values"] == 1
    assert photo_meta["unparsed_values"] == {"photo_width": 1}
    keyword_meta = _metadata(result, "keywords")
    assert keyword_meta["skipped_rows"] == 2 and len(keyword_meta["skipped_examples"]) == 2
    assert keyword_meta["dagster/row_count"] == 30 * 20 + 1
    meta = _metadata(result, "photo_catalog")
    assert meta["skipped_repeated_photo_ids"] == 1
    assert meta["skipped_empty_photo_ids"] == 1
    assert meta["skipped_keywords_unknown_photo"] == 1
    assert meta["skipped_colors_unknown_photo"] == 1
    assert meta["dagster/row_count"] == 31
    catalog = {r["photo_id"]: r for r in pq.read_table(tmp_path / "home" / "catalog" / "catalog.parquet").to_pylist()}
    assert catalog[first_id]["photo_description"] != "the repeated row loses"
    assert catalog["NONUTF8xxxx"]["photo_description"] == "caf\ufffd au lait"
    assert catalog[photo_rows[2][0]]["photo_width"] is None
    assert "UNKNOWNPHOT" not in catalog


def test_csv_names_and_coverage_header(release: Path, tmp_path: Path):
    """The 2026 zips named the files *.csv000; DOCS.md calls the colour columns coverage and score."""
    for doc in DOCUMENTS:
        (release / f"{doc}.tsv000").rename(release / f"{doc}.csv000")
    rows = _rows(release / "colors.csv000")
    rows[0] = [{"ai_coverage": "coverage", "ai_score": "score"}.get(c, c) for c in rows[0]]
    _write_rows(release / "colors.csv000", rows)
    result = _materialize(tmp_path / "home", release)
    assert _metadata(result, "colors")["dagster/row_count"] == 90
    assert all(r["dominant_color"] for r in pq.read_table(tmp_path / "home" / "catalog" / "catalog.parquet").to_pylist()[:5])


@pytest.mark.parametrize(
    "damage, asset_key, message",
    [
        (lambda d: (d / "colors.tsv000").unlink(), "colors", "has no colors document"),
        (lambda d: (d / "keywords.tsv000").write_bytes(b""), "keywords", "is empty"),
        (lambda d: _write_rows(d / "keywords.tsv000", _rows(d / "keywords.tsv000")[:1]), "keywords", "header but no rows"),
        (lambda d: _write_rows(d / "photos.tsv000", [r[:2] + r[3:] for r in _rows(d / "photos.tsv000")]), "photos", "no column photo_image_url"),
        (lambda d: _write_rows(d / "colors.tsv000", [r[:6] for r in _rows(d / "colors.tsv000")]), "colors", "no column ai_coverage or coverage"),
    ],
    ids=["missing", "empty", "header-only", "missing-column", "no-coverage"],
)
def test_unusable_documents_fail_with_one_line(release: Path, tmp_path: Path, damage, asset_key, message):
    damage(release)
    selection = [unsplash_release, {"photos": photos, "keywords": keywords, "colors": colors}[asset_key]]
    error = _error(tmp_path / "home", release, selection)
    assert message in error and asset_key in error


def test_failed_ingestion_keeps_the_previous_table(release: Path, tmp_path: Path):
    home = tmp_path / "home"
    _materialize(home, release, [unsplash_release, photos])
    table = home / "tables" / "photos.parquet"
    before = table.read_bytes()
    rows = _rows(release / "photos.tsv000")
    _write_rows(release / "photos.tsv001", [rows[0][:-1], *[r[:-1] for r in rows[1:]]])
    error = _error(home, release, [unsplash_release, photos])
    assert "photos.tsv001 has columns" in error
    assert table.read_bytes() == before
    assert not list((home / "tables").glob("*.tmp"))


def test_missing_dataset_path(tmp_path: Path):
    error = _error(tmp_path / "home", tmp_path / "nowhere", [unsplash_release])
    assert "IMAGE_SEARCH_DATASET" in error and "nowhere" in error


# --------------------------------------------------------------------------- zips and downloads


def _zip(folder: Path, zip_path: Path) -> bytes:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path.read_bytes()


class ZipServer:
    """Serves one body at /release.zip with Range support; can cut the first N responses short."""

    def __init__(self, body: bytes, cut_at: int | None = None, cuts: int = 1, status: int = 200):
        self.body, self.cut_at, self.cuts, self.status = body, cut_at, cuts, status
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(server.body)))
                self.send_header("ETag", '"v1"')
                self.end_headers()

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if server.status != 200:
                    self.send_response(server.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                self.send_header("Content-Length", str(len(server.body) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                end = len(server.body)
                if server.cut_at is not None and server.cuts > 0:
                    server.cuts -= 1
                    end = server.cut_at
                self.wfile.write(server.body[start:end])
                self.wfile.flush()
                if end < len(server.body):
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release.zip"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_resumes_after_a_cut_connection(release: Path, tmp_path: Path):
    body = _zip(release, tmp_path / "release.zip")
    with ZipServer(body, cut_at=len(body) // 2) as server:
        result = _materialize(tmp_path / "home", server.url)
    assert server.requests == [None, f"bytes={len(body) // 2}-"], "the second request resumes where the cut happened"
    meta = _metadata(result, "unsplash_release")
    assert meta["size_bytes"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert meta["kind"] == "download"
    assert _metadata(result, "photos")["dagster/row_count"] == 30


def test_download_resumes_in_the_next_run(release: Path, tmp_path: Path):
    body = _zip(release, tmp_path / "release.zip")
    dest = tmp_path / "downloads"
    logs = _Log()
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
        error = _error(tmp_path / "home", server.url, [unsplash_release])
    assert "HTTP 404" in error and "127.0.0.1" in error


def test_corrupt_zip(release: Path, tmp_path: Path):
    body = bytearray(_zip(release, tmp_path / "release.zip"))
    middle = len(body) // 3
    body[middle:middle + 200] = bytes(200)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(body))
    assert "is corrupt" in _error(tmp_path / "home", bad, [unsplash_release])
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bytes(body[:100]))
    assert "is corrupt" in _error(tmp_path / "home", truncated, [unsplash_release])
    assert not (tmp_path / "home" / "release" / "extracted").exists()

    with ZipServer(bytes(body)) as server:
        error = _error(tmp_path / "home2", server.url, [unsplash_release])
    assert "is corrupt" in error and "download it afresh" in error
    assert not list((tmp_path / "home2" / "release" / "downloads").glob("*.zip"))


def test_local_zip_is_extracted_once(release: Path, tmp_path: Path):
    zip_path = tmp_path / "release.zip"
    _zip(release, zip_path)
    home = tmp_path / "home"
    result = _materialize(home, zip_path)
    assert _metadata(result, "unsplash_release")["kind"] == "zip"
    marker = home / "release" / "extracted" / ".source.json"
    stamp = marker.stat().st_mtime_ns
    shutil.copy(zip_path, tmp_path / "same.zip")
    _materialize(home, tmp_path / "same.zip", [unsplash_release])
    assert marker.stat().st_mtime_ns == stamp


class _Log:
    """Collects the lines download() logs (it takes any object with info and warning)."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)

    warning = info
