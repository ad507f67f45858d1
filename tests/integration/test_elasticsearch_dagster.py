"""The search_index asset materialized for real into the wire-level fake of each engine family.

Dagster runs in process against ``tests/es_fake/`` (a real HTTP server on 127.0.0.1, since
no search server can be installed here); the query service then finds a photo by its image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from resources.config import Settings
from resources.index import open_backend
from resources.index.base import BuildInfo
from resources.index.elasticsearch import ElasticsearchBackend
from tests.es_fake import FakeSearchServer


@pytest.fixture(scope="module")
def embedded_home(search_home, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildInfo]:
    """A copy of the shared search home with ``image_embeddings`` materialized, and its models."""
    from dagster import DagsterInstance, materialize

    from assets.embeddings import image_embeddings
    from resources.dagster_resources import ClipResource, SettingsResource

    home = tmp_path_factory.mktemp("es_home") / "home"
    shutil.copytree(search_home, home)
    models = open_backend(Settings(home=home)).info()
    resource = SettingsResource(home=str(home), image_model=models.image_model, text_model=models.text_model)
    tags = {"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"}
    resources = {"settings": resource, "clip": ClipResource(settings=resource)}
    assert materialize([image_embeddings], resources=resources, instance=DagsterInstance.ephemeral(), tags=tags).success
    return home, models


@pytest.mark.parametrize("profile", ["escloud-7.10", "opensearch-3.1", "elasticsearch-7.17"])
def test_dagster_materializes_search_index_into_the_cluster_and_the_service_finds_photos(
    profile: str, embedded_home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """search_index and its blocking checks materialized for real into the fake; a photo's own image finds it first."""
    from dagster import DagsterInstance, materialize

    from assets.checks import index_matches_catalog, index_self_retrieval
    from assets.search_index import search_index
    from resources.dagster_resources import ClipResource, SettingsResource
    from resources.images.image_store import ImageStore
    from search_app.service import SearchService

    home, models = embedded_home
    with FakeSearchServer(profile) as fake:
        monkeypatch.setenv("IMAGE_SEARCH_ES_URL", fake.url)
        monkeypatch.setenv("IMAGE_SEARCH_INDEX", "photos")
        resource = SettingsResource(
            home=str(home), image_model=models.image_model, text_model=models.text_model, backend="elasticsearch"
        )
        resources = {"settings": resource, "clip": ClipResource(settings=resource)}
        result = materialize(
            [search_index, index_matches_catalog, index_self_retrieval],
            resources=resources,
            instance=DagsterInstance.ephemeral(),
        )
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 2 and all(e.passed for e in checks)
        metadata = result.asset_materializations_for_node("search_index")[0].metadata
        assert metadata["backend"].value == "elasticsearch"
        assert metadata["engine"].value == ElasticsearchBackend(resource.get()).engine
        assert metadata["dagster/row_count"].value == models.count == metadata["published_count"].value
        assert set(fake.aliases) == {"photos"}

        settings = resource.get()
        (live,) = fake.aliases["photos"]
        photo_id = sorted(fake.indices[live].visible)[0]
        found = SearchService.from_settings(settings).search_image(
            ImageStore(settings.images_dir).path_for(photo_id), k=3
        )
        assert found[0].photo_id == photo_id and found[0].cosine == pytest.approx(1.0, abs=1e-3)
