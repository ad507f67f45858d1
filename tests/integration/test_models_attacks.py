"""The model release (issue #27) attacked as a second writer, a forger and a shared cluster would.

Each test names the source of the behaviour it holds the code to. Real files under a
temporary ``IMAGE_SEARCH_HOME``; the local backend; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index import model_backend, open_backend
from resources.index.base import BuildInfo
from resources.models.promotion import remove, rollback
from resources.models.registry import Registry, check_name
from resources.models.release import build_shadow, switch
from resources.release.catalog import index_inputs
from resources.storage.locks import store_lock
from resources.vectors.vector_store import VectorStore
from search_app.api import create_app
from search_app.service import SearchService
from tests.es_fake import FakeSearchServer, Faults
from tests.es_fake.profiles import PROFILES


def forge(home: Path, state: object) -> Path:
    """Write ``state`` as the registry file, as a hand edit or another machine's copy would."""
    path = home / "models" / "registry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(state if isinstance(state, str) else json.dumps(state), encoding="utf-8")
    return path


def pair(name: str) -> dict[str, object]:
    return {"name": name, "image_model": "img", "text_model": "txt", "dim": 512, "added_at": ""}


@pytest.mark.parametrize(
    "name",
    ["..", "../x", "a/b", "A", "default\n", "ａ", "a\u200b", "é", "a_b", "x" * 41, "", "-a", "a\\b"],
)
def test_hostile_names_are_refused(name: str) -> None:
    """CWE-22 path traversal and CWE-1007 look-alikes: only ASCII [a-z0-9-] may name a folder and an index."""
    with pytest.raises(ImageSearchError, match="not usable"):
        check_name(name)


def test_default_cannot_be_registered(tmp_path: Path) -> None:
    with pytest.raises(ImageSearchError, match="configured"):
        Registry(Settings(home=tmp_path)).add("default", "img", "txt", 512)


def test_a_forged_name_never_reaches_the_disk(tmp_path: Path) -> None:
    """CWE-22: a registry edited by hand whose entry is named ``..`` must not make ``rm`` delete the search index."""
    settings = Settings(home=tmp_path)
    keep = settings.index_dir / "CURRENT"
    (settings.index_dir / "models").mkdir(parents=True)
    keep.write_text("v1")
    forge(tmp_path, {"models": {"x": pair("..")}, "serving": None, "previous": None})
    with pytest.raises(ImageSearchError, match="registry"):
        remove(settings, "x")
    assert keep.read_text() == "v1"


@pytest.mark.parametrize("backend", ["local", "elasticsearch"])
def test_a_shadow_index_is_named_only_by_a_usable_name(tmp_path: Path, backend: str) -> None:
    """CWE-22: whatever code passes a name on, the shadow index is only ever index/models/<name> or <index>-model-<name>."""
    settings = Settings(home=tmp_path, backend=backend, es_url="http://127.0.0.1:9")
    for name in ("..", "../../x", "a/b", "*", "a,b"):
        with pytest.raises(ImageSearchError, match="not usable"):
            model_backend(settings, name)


@pytest.mark.parametrize(
    "state",
    [
        '{"models": {"a": ',  # truncated by a crash mid-write of a non-atomic editor
        "[]",
        '{"models": []}',
        '{"models": {"a": {"name": "a"}}}',
        '{"models": {"a": {"name": "a", "image_model": "i", "text_model": "t", "evil": 1}}}',
        '{"models": {"a": ' + json.dumps(pair("b")) + "}}",
        '{"models": {}, "serving": 7}',
        "\x00\x01",
    ],
)
def test_a_damaged_registry_is_one_clear_line(tmp_path: Path, state: str) -> None:
    """OWASP input validation: a damaged registry names the file and what to do, never a traceback."""
    forge(tmp_path, state)
    with pytest.raises(ImageSearchError, match="registry"):
        Registry(Settings(home=tmp_path)).candidates()
        Registry(Settings(home=tmp_path)).serving()


def test_serving_an_unknown_model_is_one_line(tmp_path: Path) -> None:
    """A forged ``serving`` naming no registered pair."""
    forge(tmp_path, {"models": {}, "serving": "ghost", "previous": None})
    with pytest.raises(ImageSearchError, match="ghost"):
        Registry(Settings(home=tmp_path)).serving()


def test_the_serving_model_cannot_be_removed(tmp_path: Path) -> None:
    forge(tmp_path, {"models": {"a": pair("a")}, "serving": "a", "previous": None})
    with pytest.raises(ImageSearchError, match="answers searches now"):
        remove(Settings(home=tmp_path), "a")
    assert "a" in json.loads((tmp_path / "models" / "registry.json").read_text())["models"]


def test_rollback_with_no_previous_model(tmp_path: Path) -> None:
    with pytest.raises(ImageSearchError, match="no previous model"):
        rollback(Settings(home=tmp_path))


def test_two_writers_lose_nothing(tmp_path: Path) -> None:
    """POSIX rename(2) is atomic and the lock serialises read-change-write: interleaved adds keep every name."""
    first, second = Registry(Settings(home=tmp_path)), Registry(Settings(home=tmp_path))
    for i in range(10):
        (first if i % 2 else second).add(f"m{i}", "img", "txt", 512)
    assert [p.name for p in first.candidates()] == [f"m{i}" for i in range(10)]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name != "registry.json"]


def test_serving_is_never_set_to_a_model_removed_meanwhile(tmp_path: Path) -> None:
    """A second writer's ``rm`` between a promotion's checks and its record: the lock's read-change-write refuses."""
    here, there = Registry(Settings(home=tmp_path)), Registry(Settings(home=tmp_path))
    here.add("b", "img", "txt", 512)
    there.remove("b")
    with pytest.raises(ImageSearchError, match="removed meanwhile"):
        here.set_serving("b")
    assert here.serving().name == "default"


def test_a_switch_waits_for_the_refresh_publishing(tmp_path: Path) -> None:
    """flock(2): a promotion never runs while search_index (the refresh) holds its lock, so neither undoes the other."""
    settings = Settings(home=tmp_path, lock_timeout=0.2)
    registry = Registry(settings)
    registry.add("b", "img", "txt", 512)
    with store_lock(tmp_path / "locks" / "search_index.lock", "search_index", 1.0):
        with pytest.raises(ImageSearchError, match="search_index is being written"):
            switch(settings, registry.get("b"))
    assert registry.serving().name == "default"


def _http(url: str, method: str, body: object | None = None) -> int:
    """One request to the fake cluster, as another team's script would send it; the HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("profile", ["opensearch-2.11", "elasticsearch-7.17"])
def test_a_strangers_model_index_is_never_deleted_nor_published(tmp_path: Path, profile: str) -> None:
    """Shared cluster: indices named like ``<index>-model-<name>`` that our ``_meta`` does not mark are not ours.

    Elasticsearch alias API (docs: "Aliases", update_aliases) lets anyone point a name at their
    index; the same rule as the main build (es_publish.clean_up) must hold for rm and promote.
    """
    with FakeSearchServer(profile) as fake:
        settings = Settings(home=tmp_path, backend="elasticsearch", es_url=fake.url, index_name="photos")
        theirs = ["photos-model-b_v00000000000000000001", "theirs"]
        for name in theirs:
            assert _http(f"{fake.url}/{name}", "PUT", {}) == 200
        body = {"actions": [{"add": {"index": "theirs", "alias": "photos-model-b"}}]}
        assert _http(f"{fake.url}/_aliases", "POST", body) == 200
        registry = Registry(settings)
        registry.add("b", "img", "txt", 512)
        with pytest.raises(ImageSearchError):
            switch(settings, registry.get("b"))
        remove(settings, "b")
        for name in theirs:
            assert _http(f"{fake.url}/{name}", "HEAD") == 200
        assert registry.serving().name == "default"


def test_promoting_a_model_whose_build_was_deleted(tmp_path: Path) -> None:
    """The candidate's shadow build deleted by hand (CURRENT left pointing at it): refused, nothing switched."""
    settings = Settings(home=tmp_path)
    registry = Registry(settings)
    registry.add("b", "img", "txt", 512)
    shadow = settings.index_dir / "models" / "b"
    shadow.mkdir(parents=True)
    (shadow / "CURRENT").write_text("20260101T000000")
    with pytest.raises(ImageSearchError, match="missing|no shadow build"):
        switch(settings, registry.get("b"))
    assert registry.serving().name == "default" and not (settings.index_dir / "CURRENT").exists()


def test_searches_answer_with_a_damaged_registry(tmp_path: Path, search_home: Path) -> None:
    """The registry only names the model; a damaged one must not take every search down with it.

    The API maps an ImageSearchError to an error status: the JSON result set's ``model`` would
    make a truncated registry.json an outage of the search service.
    """
    home = Path(shutil.copytree(search_home, tmp_path / "home"))
    forge(home, '{"models": {"a": ')
    settings = Settings(home=home)
    with TestClient(
        create_app(SearchService.from_settings(settings), settings, warm_up=False), base_url="http://127.0.0.1"
    ) as client:
        answer = client.get("/search", params={"q": "red", "k": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["name"] is None and answer.json()["model"]["dim"] == 512


def es_twin(home: Path, url: str, tiny_models) -> tuple[Settings, str, str]:
    """The search index built on the cluster at ``url`` and a pair ``twin`` of the same models with its shadow
    build (same image model, so nothing is encoded): the settings, the serving build and the shadow build."""
    settings = Settings(
        home=home,
        image_model=str(tiny_models[0]),
        text_model=str(tiny_models[1]),
        backend="elasticsearch",
        es_url=url,
        index_name="photos",
    )
    documents, vectors = index_inputs(settings)
    info = BuildInfo.for_vectors(settings.image_model, settings.text_model, vectors)
    served = open_backend(settings).build(documents, vectors, info).name
    twin = Registry(settings).add("twin", settings.image_model, settings.text_model, 512)
    return settings, served, build_shadow(settings, twin).name


def test_a_promotion_and_rollback_whose_alias_answers_are_lost(tmp_path: Path, search_home: Path, tiny_models) -> None:
    """Each ``POST _aliases`` is applied but its answer lost (504), and ``elasticsearch7`` resends it
    (``Transport.retry_on_status`` 502/503/504, Faults.aliases_lost_answers): the switch reads the alias
    back (es_publish.publish), so it is published exactly once, the old build is kept, and rollback works.
    """
    home = Path(shutil.copytree(search_home, tmp_path / "home"))
    lossy = dataclasses.replace(PROFILES["opensearch-2.11-alias-504"], faults=Faults(aliases_lost_answers=4))
    with FakeSearchServer("opensearch-2.11") as fake:
        settings, served, shadow = es_twin(home, fake.url, tiny_models)
        registry = Registry(settings)
        fake.switch_to(lossy)
        switch(settings, registry.get("twin"))
        assert open_backend(settings).info().name == shadow and registry.serving().name == "twin"
        assert model_backend(settings, "default").info().name == served
        rollback(settings)
        assert open_backend(settings).info().name == served and registry.serving().name == "default"


def test_a_strangers_index_where_the_old_build_would_be_kept(tmp_path: Path, search_home: Path, tiny_models) -> None:
    """A stranger's concrete index named ``photos-model-default`` (where the serving build is kept for a rollback):
    the promotion is refused before anything is published, and the stranger's index is untouched (es_publish.stranger).
    """
    home = Path(shutil.copytree(search_home, tmp_path / "home"))
    with FakeSearchServer("elasticsearch-7.17") as fake:
        settings, served, _ = es_twin(home, fake.url, tiny_models)
        assert _http(f"{fake.url}/photos-model-default", "PUT", {}) == 200
        with pytest.raises(ImageSearchError, match="photos-model-default"):
            switch(settings, Registry(settings).get("twin"))
        assert open_backend(settings).info().name == served and Registry(settings).serving().name == "default"
        assert _http(f"{fake.url}/photos-model-default", "HEAD") == 200


def test_rm_through_a_planted_symlink_deletes_nothing_behind_it(tmp_path: Path) -> None:
    """CWE-59: a shadow folder replaced by a symlink to other data; rmtree(3) refuses symlinks, so rm removes none of it."""
    settings = Settings(home=tmp_path / "home")
    Registry(settings).add("b", "img", "txt", 512)
    precious = tmp_path / "precious"
    (precious / "builds").mkdir(parents=True)
    (precious / "data").write_text("keep")
    (settings.index_dir / "models").mkdir(parents=True)
    (settings.index_dir / "models" / "b").symlink_to(precious)
    remove(settings, "b")
    assert (precious / "data").read_text() == "keep" and (precious / "builds").is_dir()


@pytest.mark.parametrize("model_id", ["../../etc", "/abs/path", "https://host/../x", "a\x00b", "..\\..\\x"])
def test_a_forged_model_id_stays_in_the_embeddings_folder(tmp_path: Path, model_id: str) -> None:
    """CWE-22: a registry entry's image model (a path, a URL) keys its vector folder by a slug and hash."""
    root = VectorStore(tmp_path / "embeddings", model_id).root
    assert root.parent == tmp_path / "embeddings" and "/" not in root.name and ".." not in root.name


def test_an_index_name_that_could_be_another_deployments_model_shadow_is_refused(tmp_path):
    from resources.index import open_backend

    settings = Settings(
        home=tmp_path, backend="elasticsearch", es_url="http://127.0.0.1:9", index_name="photos-model-b"
    )
    with pytest.raises(ImageSearchError, match="holds '-model-'.*choose a name without it"):
        open_backend(settings)
