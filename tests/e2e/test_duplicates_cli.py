"""``image-search query`` hides near-duplicates by default: the command run as a child, as a user runs it."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.cli import clean_env, image_search
from tests.pipeline import copy_home, write_groups


@pytest.fixture(scope="module")
def collapse_home(tmp_path_factory, search_home):
    """A copy of the session's published index (no duplicate groups yet); the test writes the groups."""
    return copy_home(tmp_path_factory, search_home, "collapse_home", ("catalog", "index"))


def test_cli_hides_duplicates_by_default_and_shows_them_on_request(collapse_home):
    import json

    seed = pd.read_parquet(collapse_home / "catalog" / "catalog.parquet")["photo_id"][0]
    env = clean_env(IMAGE_SEARCH_HOME=collapse_home)

    def query(*flags: str) -> list[str]:
        out = image_search("query", f"--like={seed}", "-k", "6", "--json", *flags, env=env)
        assert out.returncode == 0, out.stderr
        return [r["photo_id"] for r in json.loads(out.stdout)["results"]]

    shown = query("--show-duplicates")
    write_groups(collapse_home, [shown[0:3]])
    assert query() == query("--hide-duplicates") != shown
    assert query()[:4] == [shown[0], *shown[3:6]]
    assert query("--show-duplicates") == shown
