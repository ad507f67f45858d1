"""The ``search_index`` asset, materialized for real on a copy of the pipeline's output for the sample release."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from assets.checks import index_matches_catalog, index_self_retrieval
from assets.search_index import search_index
from resources.config import Settings
from resources.dagster_resources import ClipResource, SettingsResource
from resources.index.local import LocalBackend
from resources.release.catalog import index_inputs


@pytest.fixture()
def home(search_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(search_home, copy)
    return copy


def _settings(home: Path, search_home: Path) -> Settings:
    info = LocalBackend(Settings(home=search_home)).info()
    return Settings(home=home, image_model=info.image_model, text_model=info.text_model)


def _run(settings: Settings, raise_on_error: bool = True):
    resource = SettingsResource(
        home=str(settings.home), image_model=settings.image_model, text_model=settings.text_model
    )
    return materialize(
        [search_index, index_matches_catalog, index_self_retrieval],
        resources={"settings": resource, "clip": ClipResource(settings=resource)},
        instance=DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def _metadata(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_index_holds_catalog_photos_with_vectors_row_for_row(search_home: Path):
    settings = _settings(search_home, search_home)
    documents, vectors = index_inputs(settings)
    catalog = pd.read_parquet(settings.catalog_path)
    assert 0 < len(documents) <= len(catalog) and len(vectors) == len(documents)
    backend = LocalBackend(settings)
    assert backend.count() == len(documents)
    for row in (0, len(documents) - 1):
        fields, stored = backend.get(documents["photo_id"][row])
        assert np.allclose(stored, vectors[row]) and fields["describe"] == documents["describe"][row]


def test_rematerializing_keeps_the_count_and_the_previous_build(home: Path, search_home: Path):
    settings = _settings(home, search_home)
    backend = LocalBackend(settings)
    before, first = backend.count(), backend.info().name
    result = _run(settings)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    meta = _metadata(result)
    assert meta["dagster/row_count"] == before == meta["published_count"] == backend.count()
    assert meta["backend"] == "local" and meta["engine"] == "local" and meta["index"] == str(settings.index_dir)
    assert meta["image_model"] == settings.image_model and meta["dim"] == 512
    assert meta["build_seconds"] > 0 and meta["build/previous"] == first
    assert backend.info().name == meta["build"] != first
    assert backend.builds() == sorted([first, meta["build"]])


def test_a_failed_build_leaves_the_previous_index_serving(home: Path, search_home: Path):
    settings = _settings(home, search_home)
    backend = LocalBackend(settings)
    before, name = backend.count(), backend.info().name
    probe = backend.get(backend.knn(np.eye(1, 512, 0, dtype=np.float32)[0], 1)[0].photo_id)
    shutil.rmtree(settings.embeddings_dir)
    result = _run(settings, raise_on_error=False)
    assert not result.success
    assert "materialize image_embeddings first" in str(result.all_events)
    assert backend.count() == before and backend.info().name == name
    assert backend.knn(probe[1], 1)[0].score == pytest.approx(1.0, abs=1e-5)
