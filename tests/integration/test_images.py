"""The ``images`` asset, materialized for real against tests/http_fixtures.py's server."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from dagster import DagsterInstance
from PIL import Image

from assets.images import FAILURE_SHARE_CHECK
from assets.partitions import photo_bucket
from resources.images.image_store import ImageStore
from tests.http_fixtures import FaultServer, standard_faults
from tests.images import jpeg_bytes
from tests.pipeline import run_images, write_catalog

TIMEOUT_S = 0.5


@pytest.fixture
def fast_downloads(monkeypatch):
    monkeypatch.setenv("IMAGE_SEARCH_DOWNLOAD_TIMEOUT", str(TIMEOUT_S))
    monkeypatch.setenv("IMAGE_SEARCH_DOWNLOAD_CONCURRENCY", "16")


@pytest.fixture
def server():
    with FaultServer() as running:
        yield running


def test_every_bad_input_is_stored_or_in_the_ledger_and_reruns_fetch_nothing(
    tmp_path, server, fast_downloads, monkeypatch
):
    cases = standard_faults(server, TIMEOUT_S)
    good = [(f"good{i}", server.add(f"/good/{i}.jpg", jpeg_bytes(80, 60, seed=i))) for i in range(40)]
    rows = [(case.name, server.url(case.path)) for case in cases] + good
    rows.append(("../../escape", server.add("/escape.jpg", jpeg_bytes(32, 32))))
    write_catalog(tmp_path, rows)
    failing = sum(case.reason is not None for case in cases)
    # A sixth of the photos fail by design: allow that share so the check passes here.
    monkeypatch.setenv("IMAGE_SEARCH_MAX_DOWNLOAD_FAILURE_SHARE", "0.25")

    instance = DagsterInstance.ephemeral()
    result = run_images(tmp_path, instance=instance)

    store = ImageStore(tmp_path / "images")
    ledger = pd.concat([store.read_ledger(b) for b in {photo_bucket(p) for p, _ in rows}], ignore_index=True)
    reasons = dict(zip(ledger["photo_id"], ledger["reason"]))
    for case in cases:
        if case.reason is None:
            with Image.open(store.path_for(case.name)) as stored:
                assert (stored.format, stored.mode) == ("JPEG", "RGB"), case.name
            assert case.name not in reasons
        else:
            assert reasons.get(case.name) == case.reason, case.name
            assert not store.has(case.name)
    assert set(ledger.columns) >= {"photo_id", "url", "reason", "attempts", "failed_at"}
    assert ledger.set_index("photo_id").loc["always_500", "attempts"] == 4
    with Image.open(store.path_for("exif_rotated")) as rotated:
        assert rotated.size == (20, 60)
    escaped = store.path_for("../../escape")
    assert escaped.is_file() and store.root.resolve() in escaped.resolve().parents
    assert not list(tmp_path.parent.glob("escape*"))

    metadata = result.asset_materializations_for_node("images")[0].metadata
    assert metadata["stored"].value == len(rows) - failing
    assert metadata["failed"].value == failing
    assert metadata["failed_by_reason"].value["undecodable"] == 2
    assert metadata["failed_by_reason"].value["unsupported_format"] == 1
    assert metadata["dagster/row_count"].value == len(rows) - failing
    sheet = metadata["contact_sheet"].value
    assert sheet.startswith("![") and "data:image/jpeg;base64," in sheet and len(sheet) < 8000
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == FAILURE_SHARE_CHECK and check.passed
    progress = re.compile(rf"images: {len(rows)}/{len(rows)} \(100\.0%\) photos, [\d.]+/s, ETA 0s, {failing} failed")
    assert any(progress.search(entry.user_message) for entry in instance.all_logs(result.run_id))

    hits_before = dict(server.hits)
    again = run_images(tmp_path)
    new_hits = {path: n - hits_before.get(path, 0) for path, n in server.hits.items() if n != hits_before.get(path, 0)}
    transient = {f"/faults/{name}.jpg" for name in ("always_500", "slower_than_timeout", "cut_short")}
    assert set(new_hits) == transient, "only transient failures are tried again"
    rerun = again.asset_materializations_for_node("images")[0].metadata
    counts = (rerun["fetched"].value, rerun["skipped_already_stored"].value, rerun["failed"].value)
    assert counts == (0, len(rows) - failing, failing)


def test_gone_photos_and_broken_hosts_are_recorded_once_and_not_fetched_again(
    tmp_path, server, fast_downloads, monkeypatch
):
    """Unsplash Lite's own failures: premium photos answer 404 (unsplash/datasets issue 61), a
    host with a file name glued on (issue 46); 410 Gone is as final."""
    rows = [
        ("premium", server.add("/premium.jpg", b"", status=404, content_type="text/plain")),
        ("removed", server.add("/removed.jpg", b"", status=410, content_type="text/plain")),
        ("glued", "https://images.unsplash.com.jpg/"),
    ]
    rows += [(f"ok{i}", server.add(f"/ok/{i}.jpg", jpeg_bytes(seed=i))) for i in range(17)]
    write_catalog(tmp_path, rows)
    monkeypatch.setenv("IMAGE_SEARCH_MAX_DOWNLOAD_FAILURE_SHARE", "0.2")
    store = ImageStore(tmp_path / "images")

    def ledger() -> dict[str, str]:
        frames = [store.read_ledger(bucket) for bucket in {photo_bucket(p) for p, _ in rows}]
        table = pd.concat(frames, ignore_index=True)
        assert table["photo_id"].is_unique
        return dict(zip(table["photo_id"], table["reason"]))

    run_images(tmp_path)
    expected = {"premium": "http_404", "removed": "http_410", "glued": "bad_host"}
    assert ledger() == expected
    hits = dict(server.hits)
    again = run_images(tmp_path).asset_materializations_for_node("images")[0].metadata
    assert dict(server.hits) == hits, "no request for a photo known to be gone"
    assert ledger() == expected
    assert (again["fetched"].value, again["failed"].value) == (0, 3)


def test_failure_share_check_fails_above_the_threshold(tmp_path, server, fast_downloads):
    rows = [(f"p{i}", server.url(f"/missing/{i}.jpg")) for i in range(3)]
    rows += [(f"ok{i}", server.add(f"/ok/{i}.jpg", jpeg_bytes(seed=i))) for i in range(7)]
    write_catalog(tmp_path, rows)

    result = run_images(tmp_path, raise_on_error=False)

    check = result.get_asset_check_evaluations()[0]
    assert not check.passed
    assert check.metadata["failure_share"].value == pytest.approx(0.3)
    assert result.asset_materializations_for_node("images")[0].metadata["stored"].value == 7


def test_one_partition_touches_only_its_bucket_and_follows_catalog_changes(tmp_path, server, fast_downloads):
    bucket = photo_bucket("p0")
    same = [i for i in range(3000) if photo_bucket(f"p{i}") == bucket][:5]
    others = [i for i in range(3000) if photo_bucket(f"p{i}") != bucket][:20]
    rows = [(f"p{i}", server.add(f"/a/{i}.jpg", jpeg_bytes(seed=i))) for i in same + others]
    write_catalog(tmp_path, rows)
    in_bucket = [f"p{i}" for i in same]

    run_images(tmp_path, partition_key=bucket)

    store = ImageStore(tmp_path / "images")
    assert sorted(path.stem for path in store.bucket_dir(bucket).glob("*.jpg")) == sorted(in_bucket)
    assert [path.name for path in store.root.iterdir() if path.name.startswith("b")] == [bucket]

    rows[0] = ("p0", server.add("/b/0.jpg", jpeg_bytes(seed=99)))
    write_catalog(tmp_path, rows)
    result = run_images(tmp_path, partition_key=bucket)

    assert server.hits["/b/0.jpg"] == 1
    assert result.asset_materializations_for_node("images")[0].metadata["fetched"].value == 1
    manifest = store.read_manifest(bucket).set_index("photo_id")
    assert manifest.loc["p0", "url"] == server.url("/b/0.jpg")
    assert manifest.loc["p0", "sha256"] and manifest.loc["p0", "bytes"] == store.path_for("p0").stat().st_size

    moved = in_bucket[1]
    rows = [(p, server.url("/gone.jpg") if p == moved else url) for p, url in rows if p != in_bucket[2]]
    write_catalog(tmp_path, rows)
    result = run_images(tmp_path, partition_key=bucket, raise_on_error=False)

    assert not result.get_asset_check_evaluations()[0].passed, "one failure in four photos"
    assert not store.has(moved), "the old image of a photo whose new URL fails is not kept"
    assert not store.has(in_bucket[2]), "a photo that left the catalog is deleted"
    assert store.read_ledger(bucket).set_index("photo_id").loc[moved, "reason"] == "http_404"
    metadata = result.asset_materializations_for_node("images")[0].metadata
    assert (metadata["removed_from_catalog"].value, metadata["failed"].value) == (1, 1)


def test_missing_catalog_is_one_clear_error(tmp_path):
    result = run_images(tmp_path, partition_key="b00", raise_on_error=False)
    assert not result.success
    assert "materialize photo_catalog first" in str(result.all_events)
