"""Saved searches end to end: saved and marked on the page, refreshed by a real Dagster run, seen everywhere.

A copy of conftest's ``search_home`` (the sample release through every real
materialization, tiny models) starts with an index that lacks the five photos that best
match the saved words, as if they were not in the release yet; a real ``search_index``
materialization then publishes them (photos added to the release), and the saved search's
partition is materialized for real. The page (Streamlit's AppTest), the CLI (a child
process), the HTTP API (the FastAPI app in-process) and the Dagster run's metadata, check
and notification (a real server on 127.0.0.1) must all show the same new photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetMaterialization, DagsterInstance, DeleteDynamicPartitionsRequest, build_sensor_context, materialize
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from assets.saved_searches import GOOD_MARKS_CHECK, saved_search_results, saved_searches_partitions
from assets.search_index import search_index
from resources.backends.base import BuildInfo
from resources.backends.local import LocalBackend
from resources.catalog import index_inputs
from resources.config import Settings
from resources.dagster_resources import ClipResource, SettingsResource
from resources.saved.store import SavedSearch, SavedStore
from search_app.api import create_app
from search_app.service import SearchService
from sensors import saved_searches_sensor
from tests.cli import image_search, tiny_env
from tests.test_saved_notify import PostServer

pytestmark = pytest.mark.integration

APP = str(Path(__file__).resolve().parents[1] / "search_app" / "app.py")
WORDS, K, NAME = "a red circle", 5, "red circles"
KEY = "k" * 8 + "-test-key-0123456789"


@pytest.fixture(scope="module")
def world(search_home: Path, tmp_path_factory) -> dict:
    """A home whose published index lacks the words' five best photos (``entering``), which the release holds."""
    home = tmp_path_factory.mktemp("saved") / "home"
    shutil.copytree(search_home, home)
    info = LocalBackend(Settings(home=search_home)).info()
    settings = Settings(home=home, image_model=info.image_model, text_model=info.text_model)
    entering = [r.photo_id for r in SearchService.from_settings(settings).search_text(WORDS, k=K, collapse_duplicates=True)]
    documents, vectors = index_inputs(settings)
    keep = ~documents["photo_id"].isin(entering).to_numpy()
    kept = vectors[keep]
    LocalBackend(settings).build(documents[keep].reset_index(drop=True), kept, BuildInfo.for_vectors(info.image_model, info.text_model, kept))
    return {"home": home, "settings": settings, "entering": entering}


def resource(settings: Settings, **extra) -> SettingsResource:
    return SettingsResource(home=str(settings.home), image_model=settings.image_model, text_model=settings.text_model, **extra)


def page(monkeypatch, settings: Settings, params: dict | None = None) -> AppTest:
    for name, value in (("HOME", settings.home), ("IMAGE_MODEL", settings.image_model), ("TEXT_MODEL", settings.text_model)):
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
    at = clean(page(monkeypatch, settings, {"q": WORDS, "k": str(K)}))
    at.text_input(key="save_name").input(NAME)
    at = clean([b for b in at.button if b.label == "Save"][0].click().run())
    assert any(NAME in s.value for s in at.success)
    at.text_input(key="save_name").input(NAME)
    at = [b for b in at.button if b.label == "Save"][0].click().run()
    assert any("exists already" in e.value for e in at.error) and SavedStore(settings.home).names() == [NAME]
    at = clean(button(at, f"open-{NAME}").click().run())
    before = [b.key.removeprefix("good-") for b in at.button if b.key and b.key.startswith("good-")]
    assert len(before) == K and not set(before) & set(entering)
    for photo_id in before[:2]:
        at = clean(button(at, f"good-{photo_id}").click().run())
    assert SavedStore(settings.home).marks(NAME) == {before[0]: "good", before[1]: "good"}

    # 2. The photos arrive: a real index build, then the sensor and the saved search's own run.
    instance = DagsterInstance.ephemeral()
    with PostServer() as receiver:
        hook = receiver.add("/hook")
        run_resources = {"settings": resource(settings, notify_url=hook)}
        materialize([search_index], resources={**run_resources, "clip": ClipResource(settings=run_resources["settings"])},
                    instance=instance)
        tick = saved_searches_sensor(build_sensor_context(instance=instance, resources=run_resources))
        assert [r.partition_key for r in tick.run_requests] == [NAME]
        assert tick.dynamic_partitions_requests[0].partition_keys == [NAME]
        instance.add_dynamic_partitions(saved_searches_partitions.name, [NAME])
        result = materialize([saved_search_results], partition_key=NAME, resources=run_resources, instance=instance)
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["new_count"] == K and [r.data["photo_id"] for r in metadata["new"].records] == entering
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
    with TestClient(create_app(SearchService.from_settings(settings), settings, warm_up=False)) as client:
        read = client.get(f"/saved/{NAME}").json()
        listed = {row["name"]: row for row in client.get("/saved").json()["searches"]}
    assert [n["photo_id"] for n in read["new"]] == entering and read["missing_good"] == sorted(before[:2])
    assert listed[NAME]["new"] == K and listed[NAME]["unseen"] == K
    at = clean(page(monkeypatch, settings))
    assert button(at, f"open-{NAME}").label == f"{NAME} ({K} new)"
    at = clean(button(at, f"open-{NAME}").click().run())
    assert sum(m.value == ":green-badge[new]" for m in at.markdown) == K
    assert sum(before[0] in w.value or before[1] in w.value for w in at.warning) == 2
    assert SavedStore(settings.home).looked(NAME) == set(entering)


def test_the_sensor_adds_and_removes_partitions_and_refreshes_after_each_index(world):
    settings = world["settings"]
    store = SavedStore(settings.home)
    store.add(SavedSearch(name="sensor watch", query={"text": "blue"}))
    instance = DagsterInstance.ephemeral()
    context = build_sensor_context(instance=instance, resources={"settings": resource(settings)})
    tick = saved_searches_sensor(context)
    assert not tick.run_requests, "no index materialized in this instance yet: nothing to run"
    assert set(tick.dynamic_partitions_requests[0].partition_keys) >= {"sensor watch"}
    instance.add_dynamic_partitions(saved_searches_partitions.name, store.names())
    # A new index (recorded here without a build: the sensor only reads the event) refreshes every search, once.
    instance.report_runless_asset_event(AssetMaterialization("search_index"))
    tick = saved_searches_sensor(build_sensor_context(instance=instance, resources={"settings": resource(settings)}))
    assert {r.partition_key for r in tick.run_requests} == set(store.names()) and tick.cursor
    again = saved_searches_sensor(
        build_sensor_context(instance=instance, cursor=tick.cursor, resources={"settings": resource(settings)}))
    assert not getattr(again, "run_requests", None)
    instance.add_dynamic_partitions(saved_searches_partitions.name, ["gone"])
    store.remove("sensor watch")
    tick = saved_searches_sensor(
        build_sensor_context(instance=instance, cursor=tick.cursor, resources={"settings": resource(settings)}))
    (removal,) = tick.dynamic_partitions_requests
    assert isinstance(removal, DeleteDynamicPartitionsRequest) and set(removal.partition_keys) == {"gone", "sensor watch"}
    assert not tick.run_requests


def test_the_api_creates_lists_reads_marks_and_deletes_under_the_key(world, catalog_ids):
    settings = world["settings"].replace(api_key=KEY)
    app = create_app(SearchService.from_settings(settings), settings, warm_up=False)
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": KEY}) as client:
        assert client.get("/saved", headers={"X-API-Key": "wrong"}).status_code == 401
        created = client.post("/saved", json={"name": "api blue", "text": "a blue square", "k": 3, "mode": "hybrid",
                                              "filters": {"orientation": "landscape"}})
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "api blue" and created.json()["new"] == []
        for body, status, words in (
            ({"name": "api blue", "text": "x"}, 400, "exists already"),
            ({"name": "../up", "text": "x"}, 400, "not usable"),
            ({"name": "two", "text": "x", "like": "y"}, 400, "exactly one of"),
            ({"name": "like gone", "like": "no-such-photo"}, 404, "not in the index"),
        ):
            answer = client.post("/saved", json=body)
            assert answer.status_code == status and words in answer.json()["detail"], answer.text
        assert client.get("/saved/api blue").json()["search"]["filters"] == {"orientation": "landscape"}
        assert client.put("/saved/api blue/marks/no-such-photo", json={"mark": "good"}).status_code == 404
        photo = catalog_ids[0]
        assert client.put(f"/saved/api blue/marks/{photo}", json={"mark": "bad"}).json()["marks"] == {photo: "bad"}
        assert client.delete(f"/saved/api blue/marks/{photo}").json()["marks"] == {}
        assert client.get("/saved/nothing").status_code == 404
        assert client.delete("/saved/api blue").status_code == 204
        assert client.get("/saved/api blue").status_code == 404
    assert "like gone" not in SavedStore(settings.home).names()


@pytest.fixture(scope="module")
def catalog_ids(world) -> list[str]:
    documents, _ = index_inputs(world["settings"])
    return [pid for pid in documents["photo_id"] if pid not in world["entering"]]


def test_the_cli_adds_lists_marks_and_refuses_bad_input_in_one_line(world, tiny_models, catalog_ids, sample_release):
    env = tiny_env(world["home"], tiny_models)
    photo = sample_release / "images" / f"{catalog_ids[2]}.jpg"
    composed = image_search("saved", "add", "cli photo", "--image", str(photo), "--minus", "people", "-k", "3", env=env)
    assert composed.returncode == 0, composed.stderr
    shown = json.loads(image_search("saved", "show", "cli photo", "--json", env=env).stdout)
    assert shown["search"]["query"] == {"parts": [{"image": 0, "weight": 1.0}, {"text": "people", "weight": -1.0}]}
    assert len(shown["top"]) == 3 and shown["new"] == [] and (world["home"] / "saved" / "cli photo" / "image-0.jpg").is_file()
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
