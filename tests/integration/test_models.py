"""A model change as a release, step by step, with two tiny models of different vector sizes (512 and 768).

Register the 768-d pair, build it in the shadow while searches still answer with the 512-d
one, compare, promote, see the API, the CLI and the service answer with it, roll back with
nothing encoded: on the local backend through the CLI as a user runs it, and on the
Elasticsearch/OpenSearch fake through the library. Real Dagster sensor ticks and
materializations; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from assets.models import (
    MODEL_RELEASE,
    model_index,
    model_partitions,
    model_registry_sensor,
    model_vectors,
    record_release,
)
from image_search.tiny_models import write_tiny_models
from resources.config import Settings
from resources.dagster_resources import SettingsResource
from resources.errors import ImageSearchError
from resources.index import model_backend, open_backend
from resources.models.compare import compare
from resources.models.promotion import promote, remove, rollback
from resources.models.registry import Registry
from resources.models.release import check_pair
from search_app.api import create_app
from search_app.service import SearchService
from tests.cli import image_search, tiny_env
from tests.es_fake import FakeSearchServer


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny CLIP and text model pair of 768-d vectors."""
    return write_tiny_models(tmp_path_factory.mktemp("models768"), dim=768)


@pytest.fixture
def home(tmp_path: Path, search_home: Path) -> Path:
    """A writable copy of the session's built home (48 photos, 512-d vectors and index)."""
    return Path(shutil.copytree(search_home, tmp_path / "home"))


def embeddings_files(home: Path) -> dict[str, int]:
    """Every vector chunk under ``home`` with its modification time: what encoding would change."""
    return {str(p.relative_to(home)): p.stat().st_mtime_ns for p in (home / "embeddings").rglob("*.parquet")}


def resource_for(settings: Settings) -> SettingsResource:
    """The Dagster resource of ``settings``' home, models and backend."""
    return SettingsResource(
        home=str(settings.home),
        image_model=settings.image_model,
        text_model=settings.text_model,
        backend=settings.backend,
        es_url=settings.es_url,
        index_name=settings.index_name,
    )


def shadow_build(settings: Settings, instance: DagsterInstance, name: str) -> None:
    """One sensor tick, its partition requests applied as the daemon applies them, then its run's materializations.

    The sensor is invoked directly: ``evaluate_tick`` checks run requests against partitions
    before the same tick's partition requests could add them, which the daemon does first.
    """
    resources = {"settings": resource_for(settings)}
    result = model_registry_sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in result.run_requests] == [name]
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert instance.get_dynamic_partitions(model_partitions.name) == [name]
    done = materialize([model_vectors, model_index], partition_key=name, instance=instance, resources=resources)
    assert done.success


def test_registration_refuses_models_that_cannot_serve(tmp_path: Path, tiny_models, big_models) -> None:
    settings = Settings(home=tmp_path)
    assert check_pair(settings, str(big_models[0]), str(big_models[1])) == 768
    with pytest.raises(ImageSearchError, match="gives 512-d vectors but the image model gives 768-d") as mismatch:
        check_pair(settings, str(big_models[0]), str(tiny_models[1]))
    with pytest.raises(ImageSearchError, match="cannot load --image-model") as missing:
        check_pair(settings, str(tmp_path / "nowhere"), str(tiny_models[1]))
    assert "\n" not in str(mismatch.value) + str(missing.value)


def test_release_on_the_local_backend(home: Path, tmp_path: Path, tiny_models, big_models) -> None:
    env = tiny_env(home, tiny_models, DAGSTER_HOME=tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    settings = Settings(home=home, image_model=str(tiny_models[0]), text_model=str(tiny_models[1]))
    service = SearchService.from_settings(settings)
    assert service.answered_by()["name"] == "default"

    # 1. register
    added = image_search(
        "models", "add", "big", "--image-model", str(big_models[0]), "--text-model", str(big_models[1]), env=env
    )
    assert added.returncode == 0, added.stderr
    refused = image_search(
        "models", "add", "odd", "--image-model", str(big_models[0]), "--text-model", str(tiny_models[1]), env=env
    )
    said = [line for line in refused.stderr.splitlines() if line.startswith("image-search:")]
    assert refused.returncode == 2 and len(said) == 1 and "768-d" in said[0]

    # 2. the shadow build, while searches answer with the serving model
    with DagsterInstance.ephemeral() as instance:
        shadow_build(settings, instance, "big")
        assert instance.get_latest_materialization_event(model_index.key) is not None
    assert service.search_text("red", k=3) and service.answered_by()["dim"] == 512
    assert model_backend(settings, "big").info().dim == 768
    before = embeddings_files(home)

    # 3. compare, recorded in Dagster
    compared = image_search("models", "compare", "--json", env=env)
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert set(result["models"]) == {"default", "big"} and result["serving"] == "default"
    assert {result["models"][n]["dim"] for n in result["models"]} == {512, 768}
    for figures in result["models"].values():
        assert figures["ndcg_at_10"]["low"] <= figures["ndcg_at_10"]["mean"] <= figures["ndcg_at_10"]["high"]
        assert figures["encode_images_per_s"] > 0 and figures["query_ms_p50"] > 0 and figures["index_bytes"] > 0
    assert result["models"]["big"]["verdict"]["ndcg_at_10"]["result"] in (
        "not separated",
        "too few judgements",
        "better",
        "worse",
    )

    # 4. promote; 5. the service, the API and the CLI answer with the 768-d model at once
    promoted = image_search("models", "promote", "big", "--force", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert service.answered_by() | {"build": None} == {
        "name": "big",
        "image_model": str(big_models[0]),
        "text_model": str(big_models[1]),
        "dim": 768,
        "build": None,
    }
    assert service.search_text("red", k=3)
    with TestClient(create_app(service, settings, warm_up=False), base_url="http://127.0.0.1") as client:
        answer = client.get("/search", params={"q": "red", "k": 3}).json()
    assert answer["model"]["name"] == "big" and answer["model"]["dim"] == 768 and answer["results"]
    queried = image_search("query", "red", "-k", "3", "--json", env=env)
    assert queried.returncode == 0, queried.stderr
    assert json.loads(queried.stdout)["model"]["name"] == "big"

    # 6. roll back: nothing encoded, the 512-d model answers again
    back = image_search("models", "rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert service.answered_by()["name"] == "default" and service.search_text("red", k=3)
    assert embeddings_files(home) == before

    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        actions = [e.asset_materialization.metadata["action"].value for e in _release_events(instance)]
    assert actions == ["compare", "promote", "rollback"]


def _release_events(instance: DagsterInstance) -> list:
    from dagster import AssetRecordsFilter

    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=MODEL_RELEASE), limit=10, ascending=True)
    return [r.event_log_entry for r in records.records]


def test_a_promotion_the_judgements_refuse(home: Path, tiny_models, big_models, monkeypatch) -> None:
    """Downloads that follow the serving model's answers: the candidate answers worse, so promotion is refused."""
    settings = Settings(home=home, image_model=str(tiny_models[0]), text_model=str(tiny_models[1]))
    Registry(settings).add("big", str(big_models[0]), str(big_models[1]), 768)
    with DagsterInstance.ephemeral() as instance:
        shadow_build(settings, instance, "big")
    service = SearchService.from_settings(settings)
    words = ["red", "blue", "green", "sky", "tree", "car", "dog", "night", "city", "water", "snow", "sun"]
    rows = [(w, hit.photo_id) for w in words for hit in service.search_text(w, k=3)]
    pd.DataFrame(rows, columns=["keyword", "photo_id"]).assign(conversion_type="download").to_parquet(
        settings.tables_dir / "conversions.parquet"
    )
    with pytest.raises(ImageSearchError, match="refused: on 12 judged queries it answers worse") as refused:
        promote(settings, "big")
    assert "--force" in str(refused.value) and service.answered_by()["name"] == "default"
    record = promote(settings, "big", force=True)
    assert record["forced"] and service.answered_by()["name"] == "big"
    # The next refresh builds the search index with the serving pair, not the configured one.
    from assets.search_index import search_index

    assert materialize([search_index], resources={"settings": resource_for(settings)}).success
    assert open_backend(settings).info().dim == 768 and service.answered_by()["name"] == "big"
    # The search page, as `streamlit run` would start it here, says which model answered.
    for name, value in (("HOME", home), ("IMAGE_MODEL", tiny_models[0]), ("TEXT_MODEL", tiny_models[1])):
        monkeypatch.setenv(f"IMAGE_SEARCH_{name}", str(value))
    page = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "search_app" / "app.py"), default_timeout=120)
    page.query_params["q"] = "red"
    page.run()
    assert not page.exception and not page.error
    assert any("Answered by model big" in caption.value and "768-d" in caption.value for caption in page.caption)


@pytest.mark.parametrize("profile", ["opensearch-2.11", "elasticsearch-7.17"])
def test_release_on_elasticsearch(home: Path, tiny_models, big_models, profile: str) -> None:
    with FakeSearchServer(profile) as fake:
        settings = Settings(
            home=home,
            image_model=str(tiny_models[0]),
            text_model=str(tiny_models[1]),
            backend="elasticsearch",
            es_url=fake.url,
            index_name="photos",
        )
        from assets.search_index import search_index  # the serving build, as the refresh makes it

        assert materialize([search_index], resources={"settings": resource_for(settings)}).success
        service = SearchService.from_settings(settings)
        Registry(settings).add("big", str(big_models[0]), str(big_models[1]), 768)
        with DagsterInstance.ephemeral() as instance:
            shadow_build(settings, instance, "big")
        assert service.answered_by()["dim"] == 512 and service.search_text("red", k=3)
        result = compare(settings)
        assert {m["dim"] for m in result["models"].values()} == {512, 768}
        before = embeddings_files(home)

        promote(settings, "big", force=True)
        assert service.answered_by()["name"] == "big" and len(service.search_text("red", k=3)) == 3
        assert open_backend(settings).info().dim == 768

        rollback(settings)
        assert service.answered_by()["name"] == "default" and len(service.search_text("red", k=3)) == 3
        assert embeddings_files(home) == before
        remove(settings, "big")
        assert model_backend(settings, "big").info() is None
        assert open_backend(settings).count() > 0


def test_release_history_reads_in_dagster() -> None:
    with DagsterInstance.ephemeral() as instance:
        record_release(instance, "compare", {"models": {"big": {"ndcg_at_10": {"mean": 0.5}}}}, "tester: pytest")
        event = instance.get_latest_materialization_event(AssetKey("model_release"))
    metadata = event.asset_materialization.metadata
    assert metadata["action"].value == "compare" and metadata["big/ndcg_at_10"].value == 0.5
    assert metadata["ran_by"].value == "tester: pytest"
