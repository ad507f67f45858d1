"""The synthetic release generator: the Unsplash Lite format, its options and its CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from PIL import Image

from image_search.sample import COLUMNS, DOCUMENTS, PALETTE, PLANTED_DUPLICATES, write_release
from resources.errors import ImageSearchError


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_every_document_has_its_columns_and_rows(sample_release: Path, sample_release_info: dict):
    for doc in DOCUMENTS:
        rows = _rows(sample_release / f"{doc}.tsv000")
        assert rows[0] == COLUMNS[doc]
        assert len(rows) - 1 == sample_release_info[doc]
        assert all(len(row) == len(COLUMNS[doc]) for row in rows), doc
    assert (sample_release / "DOCS.md").is_file()


def test_values_look_like_the_real_dump(sample_release: Path):
    photos = _rows(sample_release / "photos.tsv000")
    header, body = photos[0], photos[1:]
    col = {name: i for i, name in enumerate(header)}
    ids = [r[col["photo_id"]] for r in body]
    assert len(set(ids)) == len(ids) and all(len(i) == 11 for i in ids)
    for r in body:
        assert r[col["photo_featured"]] in ("t", "f")
        assert int(r[col["photo_width"]]) > 1000 and int(r[col["photo_height"]]) > 1000
        assert abs(float(r[col["photo_aspect_ratio"]]) - int(r[col["photo_width"]]) / int(r[col["photo_height"]])) < 0.01
        assert r[col["photo_submitted_at"]][:2] == "20" and len(r[col["photo_submitted_at"]]) == 26
        assert r[col["photo_image_url"]].startswith("file://")
    assert any(r[col["photo_location_country"]] == "" for r in body), "some photos have no location"
    keywords = _rows(sample_release / "keywords.tsv000")
    flags = {r[4] for r in keywords[1:]}
    assert flags == {"t", "f"}
    assert any(r[1] != r[1].strip() for r in keywords[1:]), "a few keywords carry stray spaces"
    pairs = [(r[0], r[1].strip()) for r in keywords[1:]]
    assert len(set(pairs)) == len(pairs), "(photo_id, keyword) is unique, as in the dump"


def test_images_match_designs_and_keywords(sample_release: Path, sample_release_info: dict):
    designs = sample_release_info["designs"]
    user_keywords: dict[str, set[str]] = {}
    for r in _rows(sample_release / "keywords.tsv000")[1:]:
        if r[4] == "t":
            user_keywords.setdefault(r[0], set()).add(r[1].strip())
    for pid in sample_release_info["photo_ids"]:
        background, shape, _ = designs[pid]
        assert {background, shape} <= user_keywords[pid]
        with Image.open(sample_release / "images" / f"{pid}.jpg") as image:
            assert image.format == "JPEG" and max(image.size) == 96
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        near_background = (np.abs(pixels - np.array(PALETTE[background])).sum(axis=2) < 90).mean()
        assert near_background > 0.4, (pid, background, near_background)


def test_planted_duplicates_are_near_copies(sample_release: Path, sample_release_info: dict):
    pairs = _rows(sample_release / PLANTED_DUPLICATES)[1:]
    assert len(pairs) == 3 and [tuple(p) for p in pairs] == [tuple(p) for p in sample_release_info["duplicates"]]

    def pixels(pid):
        with Image.open(sample_release / "images" / f"{pid}.jpg") as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32)

    ids = sample_release_info["photo_ids"]
    for original, copy in pairs:
        near = np.abs(pixels(original) - pixels(copy)).mean()
        others = [np.abs(pixels(original) - pixels(o)).mean() for o in ids if o not in (original, copy) and pixels(o).shape == pixels(original).shape]
        assert near < min(others), (original, copy, near, min(others))
        assert near > 0, "a near-copy is altered, not identical"


def test_image_base_url_and_no_images(tmp_path: Path):
    info = write_release(tmp_path, photos=5, image_base_url="http://127.0.0.1:9/imgs/", images=False, seed=1)
    table = pacsv.read_csv(tmp_path / "photos.tsv000", parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
    assert table["photo_image_url"].to_pylist() == [f"http://127.0.0.1:9/imgs/{pid}.jpg" for pid in info["photo_ids"]]
    assert not (tmp_path / "images").exists()


def test_same_seed_same_release(tmp_path: Path):
    write_release(tmp_path / "a", photos=20, images=False, seed=3, image_base_url="http://x")
    write_release(tmp_path / "b", photos=20, images=False, seed=3, image_base_url="http://x")
    for doc in DOCUMENTS:
        assert (tmp_path / "a" / f"{doc}.tsv000").read_bytes() == (tmp_path / "b" / f"{doc}.tsv000").read_bytes()


def test_impossible_counts_are_refused(tmp_path: Path):
    with pytest.raises(ImageSearchError, match="--duplicates"):
        write_release(tmp_path, photos=3, duplicates=3)
    with pytest.raises(ImageSearchError, match="cannot be spread"):
        write_release(tmp_path, photos=1, colors=50, images=False)


def test_cli_writes_a_release(tmp_path: Path):
    out = tmp_path / "rel"
    done = subprocess.run(
        [sys.executable, "-m", "image_search.cli", "sample", str(out), "--photos", "12", "--keywords", "100",
         "--conversions", "30", "--collections", "7", "--colors", "20", "--duplicates", "2", "--seed", "5"],
        capture_output=True, text=True, check=True,
    )
    assert '"photos": 12' in done.stdout
    assert len(_rows(out / "keywords.tsv000")) == 101
    assert len(_rows(out / "collections.tsv000")) == 8
    assert len(list((out / "images").glob("*.jpg"))) == 12
    bad = subprocess.run([sys.executable, "-m", "image_search.cli", "sample", str(out), "--photos", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--photos" in bad.stderr


def test_models_flag_writes_both_tiny_models(tmp_path: Path):
    """Loading them through SentenceTransformer is tests/test_tiny_models.py's job; here: the flag wires them in."""
    info = write_release(tmp_path, photos=2, images=False, models=True, seed=2)
    models = Path(info["models_dir"])
    assert models == tmp_path / "models"
    assert (models / "clip" / "modules.json").is_file() and (models / "text" / "modules.json").is_file()
