"""Saved searches through the HTTP API (the FastAPI app in-process) and the saved-search sensor (evaluated
in-process), over a home whose index lacks the saved words' best photos. The whole story across the page, the CLI
as a child process and a real Dagster run: test_saved_searches."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetMaterialization, DagsterInstance, DeleteDynamicPartitionsRequest, build_sensor_context
from fastapi.testclient import TestClient

from assets.saved_searches import saved_searches_partitions
from resources.saved.store import SavedSearch, SavedStore
from search_app.api import create_app
from search_app.service import SearchService
from sensors import saved_searches_sensor
from tests.pipeline import indexed_but_entering, saved_world, settings_resource

KEY = "k" * 8 + "-test-key-0123456789"


@pytest.fixture(scope="module")
def world(search_home: Path, tmp_path_factory) -> dict:
    """A home whose published index lacks the saved words' best photos (``entering``), which the release holds."""
    return saved_world(search_home, tmp_path_factory)


@pytest.fixture(scope="module")
def catalog_ids(world) -> list[str]:
    """The indexed photos but the entering ones."""
    return indexed_but_entering(world)


def test_the_sensor_adds_and_removes_partitions_and_refreshes_after_each_index(world):
    settings = world["settings"]
    store = SavedStore(settings.home)
    store.add(SavedSearch(name="sensor watch", query={"text": "blue"}))
    instance = DagsterInstance.ephemeral()
    context = build_sensor_context(instance=instance, resources={"settings": settings_resource(settings)})
    tick = saved_searches_sensor(context)
    assert not tick.run_requests, "no index materialized in this instance yet: nothing to run"
    assert set(tick.dynamic_partitions_requests[0].partition_keys) >= {"sensor watch"}
    instance.add_dynamic_partitions(saved_searches_partitions.name, store.names())
    # A new index (recorded here without a build: the sensor only reads the event) refreshes every search, once.
    instance.report_runless_asset_event(AssetMaterialization("search_index"))
    tick = saved_searches_sensor(
        build_sensor_context(instance=instance, resources={"settings": settings_resource(settings)})
    )
    assert {r.partition_key for r in tick.run_requests} == set(store.names()) and tick.cursor
    again = saved_searches_sensor(
        build_sensor_context(instance=instance, cursor=tick.cursor, resources={"settings": settings_resource(settings)})
    )
    assert not getattr(again, "run_requests", None)
    instance.add_dynamic_partitions(saved_searches_partitions.name, ["gone"])
    store.remove("sensor watch")
    tick = saved_searches_sensor(
        build_sensor_context(instance=instance, cursor=tick.cursor, resources={"settings": settings_resource(settings)})
    )
    (removal,) = tick.dynamic_partitions_requests
    assert isinstance(removal, DeleteDynamicPartitionsRequest) and set(removal.partition_keys) == {
        "gone",
        "sensor watch",
    }
    assert not tick.run_requests


def test_the_api_creates_lists_reads_marks_and_deletes_under_the_key(world, catalog_ids):
    settings = world["settings"].replace(api_key=KEY)
    app = create_app(SearchService.from_settings(settings), settings, warm_up=False)
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": KEY}) as client:
        assert client.get("/saved", headers={"X-API-Key": "wrong"}).status_code == 401
        created = client.post(
            "/saved",
            json={
                "name": "api blue",
                "text": "a blue square",
                "k": 3,
                "mode": "hybrid",
                "filters": {"orientation": "landscape"},
            },
        )
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
