"""Saved searches end to end: saved and marked on the page, refreshed by a real Dagster run, seen everywhere.

A copy of conftest's ``search_home`` (the sample release through every real
materialization, tiny models) starts with an index that lacks the five photos that best
match the saved words, as if they were not in the release yet; a real ``search_index``
materialization then publishes them (photos added to the release), and the saved search's
partition is materialized for real. The page (Streamlit's AppTest), the CLI (a child
process), the HTTP API (the FastAPI app in-process) and the Dagster run's metadata, check
and notification (a real server on 127.0.0.1) must all show the same new photos. The API's and the sensor's
own cases, in-process: test_saved_searches_api.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    build_sensor_context,
    materialize,
)
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from assets.saved_searches import GOOD_MARKS_CHECK, saved_search_results, saved_searches_partitions
from assets.search_index import search_index
from resources.config import Settings
from resources.dagster_resources import ClipResource
from resources.saved.store import SavedStore
from search_app.api import create_app
from search_app.service import SearchService
from sensors import saved_searches_sensor
from tests.cli import image_search, tiny_env
from tests.http_fixtures import LOCAL, PostServer
from tests.pipeline import SAVED_K, SAVED_WORDS, indexed_but_entering, saved_world, settings_resource

APP = str(Path(__file__).resolve().parents[2] / "search_app" / "app.py")
NAME = "red circles"


@pytest.fixture(scope="module")
def world(search_home: Path, tmp_path_factory) -> dict:
    """A home whose published index lacks the saved words' best photos (``entering``), which the release holds."""
    return saved_world(search_home, tmp_path_factory)


def page(monkeypatch, settings: Settings, params: dict | None = None) -> AppTest:
    for name, value in (
        ("HOME", settings.home),
        ("IMAGE_MODEL", settings.image_model),
        ("TEXT_MODEL", settings.text_model),
    ):
        monkeypatch.setenv(f"IMAGE_SEARCH_{name}", str(value))
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in (params or {}).items():
        at.query_params[name] = value
    return at.run()


def clean(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def button(at: AppTest, key: str):
    (found,) = [b for b in at.button if b.key == key]
    return found


def test_a_search_saved_and_marked_on_the_page_shows_its_new_photos_after_a_refresh(world, monkeypatch, tiny_models):
    settings, entering = world["settings"], world["entering"]
    # 1. Save the search on the page and mark two good answers.
    at = clean(page(monkeypatch, settings, {"q": SAVED_WORDS, "k": str(SAVED_K)}))
    at.text_input(key="save_name").input(NAME)
    at = clean([b for b in at.button if b.label == "Save"][0].click().run())
    assert any(NAME in s.value for s in at.success)
    at.text_input(key="save_name").input(NAME)
    at = [b for b in at.button if b.label == "Save"][0].click().run()
    assert any("exists already" in e.value for e in at.error) and SavedStore(settings.home).names() == [NAME]
    at = clean(button(at, f"open-{NAME}").click().run())
    before = [b.key.removeprefix("good-") for b in at.button if b.key and b.key.startswith("good-")]
    assert len(before) == SAVED_K and not set(before) & set(entering)
    for photo_id in before[:2]:
        at = clean(button(at, f"good-{photo_id}").click().run())
    assert SavedStore(settings.home).marks(NAME) == {before[0]: "good", before[1]: "good"}

    # 2. The photos arrive: a real index build, then the sensor and the saved search's own run.
    instance = DagsterInstance.ephemeral()
    with PostServer() as receiver:
        hook = receiver.add("/hook")
        run_resources = {"settings": settings_resource(settings, notify_url=hook)}
        materialize(
            [search_index],
            resources={**run_resources, "clip": ClipResource(settings=run_resources["settings"])},
            instance=instance,
        )
        tick = saved_searches_sensor(build_sensor_context(instance=instance, resources=run_resources))
        assert [r.partition_key for r in tick.run_requests] == [NAME]
        assert tick.dynamic_partitions_requests[0].partition_keys == [NAME]
        instance.add_dynamic_partitions(saved_searches_partitions.name, [NAME])
        result = materialize([saved_search_results], partition_key=NAME, resources=run_resources, instance=instance)
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["new_count"] == SAVED_K and [r.data["photo_id"] for r in metadata["new"].records] == entering
    assert "data:image/jpeg;base64," in metadata["new_photos"]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == GOOD_MARKS_CHECK and not check.passed and check.severity == AssetCheckSeverity.WARN
    assert NAME in check.description and before[0] in check.description and before[1] in check.description
    (posted,) = receiver.posted
    assert posted["search"] == NAME and [n["photo_id"] for n in posted["new"]] == entering

    # 3. The new photos on the command line, in the API and on the page.
    shown = image_search("saved", "show", NAME, "--new", "--json", env=tiny_env(settings.home, tiny_models))
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["name"] == NAME and [n["photo_id"] for n in body["new"]] == entering
    assert all(isinstance(n["score"], float) for n in body["new"])
    with TestClient(
        create_app(SearchService.from_settings(settings), settings, warm_up=False), base_url=LOCAL
    ) as client:
        read = client.get(f"/saved/{NAME}").json()
        listed = {row["name"]: row for row in client.get("/saved").json()["searches"]}
    assert [n["photo_id"] for n in read["new"]] == entering and read["missing_good"] == sorted(before[:2])
    assert listed[NAME]["new"] == SAVED_K and listed[NAME]["unseen"] == SAVED_K
    at = clean(page(monkeypatch, settings))
    assert button(at, f"open-{NAME}").label == f"{NAME} ({SAVED_K} new)"
    at = clean(button(at, f"open-{NAME}").click().run())
    assert sum(m.value == ":green-badge[new]" for m in at.markdown) == SAVED_K
    assert sum(before[0] in w.value or before[1] in w.value for w in at.warning) == 2
    assert SavedStore(settings.home).looked(NAME) == set(entering)


@pytest.fixture(scope="module")
def catalog_ids(world) -> list[str]:
    """The indexed photos but the entering ones."""
    return indexed_but_entering(world)


def test_the_cli_adds_lists_marks_and_refuses_bad_input_in_one_line(world, tiny_models, catalog_ids, sample_release):
    env = tiny_env(world["home"], tiny_models)
    photo = sample_release / "images" / f"{catalog_ids[2]}.jpg"
    composed = image_search("saved", "add", "cli photo", "--image", str(photo), "--minus", "people", "-k", "3", env=env)
    assert composed.returncode == 0, composed.stderr
    shown = json.loads(image_search("saved", "show", "cli photo", "--json", env=env).stdout)
    assert shown["search"]["query"] == {"parts": [{"image": 0, "weight": 1.0}, {"text": "people", "weight": -1.0}]}
    assert (
        len(shown["top"]) == 3
        and shown["new"] == []
        and (world["home"] / "saved" / "cli photo" / "image-0.jpg").is_file()
    )
    added = image_search("saved", "add", "cli like", f"--like={catalog_ids[1]}", "-k", "4", env=env)
    assert added.returncode == 0 and "saved 'cli like'" in added.stdout, added.stderr
    for args, words in (
        (("saved", "add", "cli like", "other words"), "exists already"),
        (("saved", "add", "a/b", "words"), "not usable"),
        (("saved", "show", "nothing"), "no saved search named 'nothing'"),
        (("saved", "mark", "cli like", "no-such-photo", "good"), "not in the index"),
    ):
        refused = image_search(*args, env=env)
        assert refused.returncode == 2 and words in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    marked = image_search("saved", "mark", "cli like", "--", catalog_ids[1], "good", env=env)
    assert marked.returncode == 0, marked.stderr
    listed = image_search("saved", "list", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(listed.stdout)["searches"]}
    assert rows["cli like"]["k"] == 4 and rows["cli like"]["new"] == 0
    assert image_search("saved", "rm", "cli like", env=env).returncode == 0
    assert "cli like" not in SavedStore(world["home"]).names()
