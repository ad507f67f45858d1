"""``image-search query`` against a published index of the sample release, as a real subprocess (its bad-input
cases, in-process: test_query_cli_errors)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from resources.images.image_store import ImageStore
from tests.cli import clean_env, image_search


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return image_search("query", *args, env=clean_env(IMAGE_SEARCH_HOME=home))


def test_text_query_json_with_filters(search_home: Path, catalog: pd.DataFrame):
    out = _cli(search_home, "ein Hund am Strand", "-k", "5", "--orientation", "landscape", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["query"] == {"text": "ein Hund am Strand"} and body["mode"] == "vector"
    assert body["filters"] == {"orientation": "landscape"}
    results = body["results"]
    assert len(results) == min(5, int((catalog["orientation"] == "landscape").sum()))
    assert all(r["orientation"] == "landscape" for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for key in ("photo_id", "score", "cosine", "describe", "image_url", "local_path", "photographer_name", "photo_url"):
        assert key in results[0]


def test_image_query_returns_the_photo_first(search_home: Path, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][2]
    path = ImageStore(search_home / "images").path_for(photo_id)
    out = _cli(search_home, "--image", str(path), "-k", "3", "--json")
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)["results"][0]
    assert top["photo_id"] == photo_id and top["score"] == pytest.approx(1.0, abs=2e-3)


def test_like_returns_the_photo_first_with_cosine_one(search_home: Path, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][7]
    out = _cli(search_home, "--like", photo_id, "-k", "1000", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert results[0]["photo_id"] == photo_id and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(results) == len(catalog)


def test_keyword_mode_prints_a_table(search_home: Path, catalog: pd.DataFrame):
    word = catalog["describe"].dropna().iloc[0].split()[0]
    out = _cli(search_home, word, "--mode", "keyword", "-k", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["#", "bm25", "photo_id"]
    assert 1 <= len(lines) - 1 <= 3
    assert lines[1].split()[0] == "1" and float(lines[1].split()[1]) > 0


def test_no_index_yet_names_the_command_that_builds_it(tmp_path: Path):
    """Bad input through a real child process: its one line reaches stderr and its exit status is 2."""
    out = _cli(tmp_path, "--like", "anything")
    assert out.returncode == 2 and "make demo" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_query_path_imports_no_dagster(search_home: Path):
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from resources.config import Settings
        from search_app.service import SearchService
        service = SearchService.from_settings(Settings(home=Path({str(search_home)!r})))
        assert service.search_text("a red flower", k=3)
        assert service.search_text("a red flower", k=3, mode="hybrid")
        print("dagster" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_like_a_photo_plus_words_minus_words(search_home: Path, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][7]
    out = _cli(search_home, "--like", photo_id, "--plus", "at night", "--minus", "0.5*people", "-k", "5", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["query"] == {
        "parts": [
            {"photo_id": photo_id, "weight": 1.0},
            {"text": "at night", "weight": 1.0},
            {"text": "people", "weight": -0.5},
        ]
    }
    assert body["mode"] == "vector" and len(body["results"]) == 5
    assert set(body["results"][0]) == set(
        json.loads(_cli(search_home, "--like", photo_id, "-k", "1", "--json").stdout)["results"][0]
    )


def test_an_expression_of_one_photo_is_more_like_this(search_home: Path, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][3]
    composed = _cli(search_home, "--expr", f"2*photo:{photo_id}", "-k", "8", "--json", "--show-duplicates")
    plain = _cli(search_home, "--like", photo_id, "-k", "8", "--json", "--show-duplicates")
    assert composed.returncode == plain.returncode == 0, composed.stderr + plain.stderr
    assert json.loads(composed.stdout)["results"] == json.loads(plain.stdout)["results"]


def test_an_expression_with_an_image_file_in_hybrid_mode_prints_a_table(search_home: Path, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][2]
    path = ImageStore(search_home / "images").path_for(photo_id)
    word = catalog["describe"].dropna().iloc[0].split()[0]
    out = _cli(search_home, "--expr", f'image:"{path}" + {word} - "a crowd"', "--mode", "hybrid", "-k", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["#", "rrf", "cosine", "photo_id"] and len(lines) == 5
