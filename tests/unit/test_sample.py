"""The synthetic release generator: the Unsplash Lite format as published and its options (its CLI: test_sample_cli).

The files are read back with Python's ``csv`` module (tab delimiter, default quoting), as
the official pandas loader reads them, so these tests check the format independently of
the project's own reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_search.sample import PLANTED_DUPLICATES, write_release
from image_search.sample_values import PALETTE, TRICKY_KEYWORDS, TRICKY_TEXTS
from resources.errors import ImageSearchError
from resources.release.lite_format import DOCUMENTS, RELEASES, columns_of
from tests.pipeline import release_rows

BASE83 = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~")


def _records(release: Path, info: dict, document: str) -> list[dict[str, str]]:
    """Every record of ``document`` over its parts, as dicts; each part's header is checked."""
    records = []
    for name in info["files"][document]:
        header, *rows = release_rows(release / name)
        assert header == columns_of(info["release_version"])[document], name
        records += [dict(zip(header, row, strict=True)) for row in rows]
    return records


def test_every_document_has_its_columns_and_rows(sample_release: Path, sample_release_info: dict):
    for doc in DOCUMENTS:
        assert len(_records(sample_release, sample_release_info, doc)) == sample_release_info[doc], doc
    assert sample_release_info["files"]["photos"] == ["photos.tsv000"]
    assert (sample_release / "DOCS.md").is_file()


def test_values_follow_the_real_domains(sample_release: Path, sample_release_info: dict):
    photos = _records(sample_release, sample_release_info, "photos")
    ids = [r["photo_id"] for r in photos]
    assert len(set(ids)) == len(ids) and all(len(i) == 11 for i in ids)
    for r in photos:
        assert r["photo_featured"] in ("t", "f")
        assert int(r["photo_width"]) > 1000 and int(r["photo_height"]) > 1000
        assert abs(float(r["photo_aspect_ratio"]) - int(r["photo_width"]) / int(r["photo_height"])) < 0.01
        assert r["photo_submitted_at"][:2] == "20" and len(r["photo_submitted_at"]) == 26
        assert r["photo_image_url"].startswith("file://")
        assert len(r["blur_hash"]) == 28 and r["blur_hash"][0] == "L" and set(r["blur_hash"]) <= BASE83
    assert any(r["photo_location_country"] == "" for r in photos), "some photos have no location"
    assert any(
        set(r["blur_hash"]) - set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") for r in photos
    )

    keywords = _records(sample_release, sample_release_info, "keywords")
    assert {r["suggested_by_user"] for r in keywords} == {"t", "f"}
    assert {r["user_suggestion_source"] for r in keywords if r["suggested_by_user"] == "t"} <= {
        "photographer",
        "admin",
        "unknown",
    }
    assert {r["user_suggestion_source"] for r in keywords if r["suggested_by_user"] == "f"} == {""}
    assert all(40 <= float(r["ai_service_1_confidence"]) <= 100 for r in keywords if r["ai_service_1_confidence"])
    assert any(r["keyword"] != r["keyword"].strip() for r in keywords), "a few keywords carry stray spaces"
    pairs = [(r["photo_id"], r["keyword"].strip()) for r in keywords]
    assert len(set(pairs)) == len(pairs), "(photo_id, keyword) is unique, as in create_tables.sql's primary key"

    collections = _records(sample_release, sample_release_info, "collections")
    assert {r["collection_type"] for r in collections} == {"collection", "topic"}
    conversions = _records(sample_release, sample_release_info, "conversions")
    assert {r["conversion_type"] for r in conversions} == {"download"}
    assert {r["search_ordering"] for r in conversions} <= {"popular", "recent"}
    assert {r["search_orientation_filter"] for r in conversions} <= {"all", "landscape", "portrait"}
    colors = _records(sample_release, sample_release_info, "colors")
    assert all(re.fullmatch(r"[0-9A-F]{6}", r["hex"]) for r in colors), "hex without '#', varchar(6)"
    assert all(0 < float(r["ai_coverage"]) <= 100 and 0 <= float(r["ai_score"]) <= 1 for r in colors)


def test_free_text_needs_the_csv_rules(sample_release: Path, sample_release_info: dict):
    """Quoted values with quotes, tabs, LF and CR LF, CJK and emoji, and a user keyword with a line break."""
    photos = {r["photo_id"]: r for r in _records(sample_release, sample_release_info, "photos")}
    ids = sample_release_info["photo_ids"]
    for i, text in enumerate(TRICKY_TEXTS):
        assert photos[ids[i]]["photo_description"] == text and photos[ids[i]]["photo_location_name"] == text
    keywords = _records(sample_release, sample_release_info, "keywords")
    user_keywords = {(r["photo_id"], r["keyword"].strip()) for r in keywords if r["suggested_by_user"] == "t"}
    assert {(ids[i], kw) for i, kw in enumerate(TRICKY_KEYWORDS)} <= user_keywords
    assert "night\nsky" in TRICKY_KEYWORDS
    raw = (sample_release / "photos.tsv000").read_bytes()
    assert b'"Old harbour at dusk\r\nwritten on Windows"' in raw and b'"My ""favourite"" corner of the city"' in raw
    assert raw.count(b"\n") > len(photos) + 1, "records span several lines"
    titles = {r["collection_title"] for r in _records(sample_release, sample_release_info, "collections")}
    searches = {r["keyword"] for r in _records(sample_release, sample_release_info, "conversions")}
    for values in (titles, searches):
        assert any("\t" in v for v in values) and any("\n" in v for v in values) and any('"' in v for v in values)
        assert any(re.search("[\u3040-\u9fff]", v) for v in values) and any(
            re.search("[\U0001f300-\U0001faff]", v) for v in values
        )


@pytest.mark.parametrize("version", RELEASES)
def test_each_release_version_has_its_documents_columns_and_names(tmp_path: Path, version: str):
    info = write_release(tmp_path, photos=12, images=False, seed=4, release_version=version, parts=3)
    expected = columns_of(version)
    assert set(info["files"]) == set(expected)
    assert ("colors" in expected) == (version >= "1.1.0")
    for doc, names in info["files"].items():
        assert len(names) == 3 and all((tmp_path / n).is_file() for n in names)
        assert names[0].endswith(
            "csv000" if version.startswith("1.3") or (version == "1.4.0" and doc == "photos") else "tsv000"
        )
        assert len(_records(tmp_path, info, doc)) == info[doc]
    assert not list(tmp_path.glob("colors.*")) or version >= "1.1.0"
    assert "blur_hash" in expected["photos"] if version >= "1.2.0" else "blur_hash" not in expected["photos"]


def test_parts_split_rows_evenly_and_each_has_a_header(tmp_path: Path):
    info = write_release(tmp_path, photos=10, keywords=100, images=False, seed=5, parts=4)
    sizes = [len(release_rows(tmp_path / name)) - 1 for name in info["files"]["keywords"]]
    assert sizes == [25, 25, 25, 25]
    assert [name for name in info["files"]["keywords"]] == [f"keywords.tsv00{k}" for k in range(4)]


def test_images_match_designs_and_keywords(sample_release: Path, sample_release_info: dict):
    designs = sample_release_info["designs"]
    user_keywords: dict[str, set[str]] = {}
    for r in _records(sample_release, sample_release_info, "keywords"):
        if r["suggested_by_user"] == "t":
            user_keywords.setdefault(r["photo_id"], set()).add(r["keyword"].strip())
    for pid in sample_release_info["photo_ids"]:
        background, shape, _ = designs[pid]
        assert {background, shape} <= user_keywords[pid]
        with Image.open(sample_release / "images" / f"{pid}.jpg") as image:
            assert image.format == "JPEG" and max(image.size) == 96
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        near_background = (np.abs(pixels - np.array(PALETTE[background])).sum(axis=2) < 90).mean()
        assert near_background > 0.4, (pid, background, near_background)


def test_planted_duplicates_are_near_copies(sample_release: Path, sample_release_info: dict):
    pairs = release_rows(sample_release / PLANTED_DUPLICATES)[1:]
    assert len(pairs) == 3 and [tuple(p) for p in pairs] == [tuple(p) for p in sample_release_info["duplicates"]]

    def pixels(pid):
        with Image.open(sample_release / "images" / f"{pid}.jpg") as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32)

    ids = sample_release_info["photo_ids"]
    for original, copy in pairs:
        near = np.abs(pixels(original) - pixels(copy)).mean()
        others = [
            np.abs(pixels(original) - pixels(o)).mean()
            for o in ids
            if o not in (original, copy) and pixels(o).shape == pixels(original).shape
        ]
        assert near < min(others), (original, copy, near, min(others))
        assert near > 0, "a near-copy is altered, not identical"


def test_image_base_url_and_no_images(tmp_path: Path):
    info = write_release(tmp_path, photos=5, image_base_url="http://127.0.0.1:9/imgs/", images=False, seed=1)
    urls = [r["photo_image_url"] for r in _records(tmp_path, info, "photos")]
    assert urls == [f"http://127.0.0.1:9/imgs/{pid}.jpg" for pid in info["photo_ids"]]
    assert not (tmp_path / "images").exists()


def test_same_seed_same_release(tmp_path: Path):
    a = write_release(tmp_path / "a", photos=20, images=False, seed=3, image_base_url="http://x", parts=2)
    write_release(tmp_path / "b", photos=20, images=False, seed=3, image_base_url="http://x", parts=2)
    for names in a["files"].values():
        for name in names:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_impossible_counts_are_refused(tmp_path: Path):
    with pytest.raises(ImageSearchError, match="--duplicates"):
        write_release(tmp_path, photos=3, duplicates=3)
    with pytest.raises(ImageSearchError, match="cannot be spread"):
        write_release(tmp_path, photos=1, colors=50, images=False)
    with pytest.raises(ImageSearchError, match="--release-version 2.0.0"):
        write_release(tmp_path, photos=1, images=False, release_version="2.0.0")
    with pytest.raises(ImageSearchError, match="--parts 0"):
        write_release(tmp_path, photos=1, images=False, parts=0)


def test_models_flag_writes_both_tiny_models(tmp_path: Path):
    """Loading them through SentenceTransformer is tests/integration/test_tiny_models.py's job; here: the flag wires them in."""
    info = write_release(tmp_path, photos=2, images=False, models=True, seed=2)
    models = Path(info["models_dir"])
    assert models == tmp_path / "models"
    assert (models / "clip" / "modules.json").is_file() and (models / "text" / "modules.json").is_file()
