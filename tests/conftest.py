"""Shared pytest fixtures: data and models built locally, since nothing can be downloaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from image_search.tiny_models import write_tiny_models
from resources.config import Settings
from search_app.service import SearchService

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

LAYERS = ("unit", "integration", "e2e")
TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the layer its folder names (tests/<layer>/), and refuse one outside a layer folder."""
    wrong = []
    for item in items:
        layer = item.path.parent.name
        if layer in LAYERS and item.path.parent.parent == TESTS:
            item.add_marker(getattr(pytest.mark, layer))
        else:
            wrong.append(item.nodeid)
    if wrong:
        raise pytest.UsageError(
            f"every test lives in one layer folder ({', '.join(f'tests/{layer}/' for layer in LAYERS)}; "
            f"docs/testing.md). Not so: {'; '.join(wrong[:5])}"
            + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        )


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """XDG_CACHE_HOME in a temporary folder, so no test writes ONNX exports into the user's ~/.cache.

    Also IMAGE_SEARCH_RUNTIME=torch unless the run sets it: building and gating the int8
    image runtime takes about 20 s per data folder, so only the tests about it (which
    name the runtime themselves) pay for it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("IMAGE_SEARCH_RUNTIME", os.environ.get("IMAGE_SEARCH_RUNTIME") or "torch")
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Paths of a tiny random CLIP model and a tiny multilingual text model (both 512-d), built once per session."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


SAMPLE_PHOTOS = 48
SAMPLE_DUPLICATES = 3


@pytest.fixture(scope="session")
def sample_release_info(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What :func:`image_search.sample.write_release` returned for the session's sample release."""
    from image_search.sample import write_release

    out = tmp_path_factory.mktemp("release")
    info = write_release(out, photos=SAMPLE_PHOTOS, duplicates=SAMPLE_DUPLICATES, seed=7)
    info["dir"] = out
    return info


@pytest.fixture(scope="session")
def sample_release(sample_release_info: dict) -> Path:
    """A small synthetic release (48 photos with JPEGs, 3 planted near-duplicates), built once per session; treat it as read-only."""
    return sample_release_info["dir"]


@pytest.fixture(scope="session")
def search_home(tmp_path_factory: pytest.TempPathFactory, sample_release: Path, tiny_models: tuple[Path, Path]) -> Path:
    """An ``IMAGE_SEARCH_HOME`` where the whole pipeline ran on the sample release with the tiny models.

    Real materializations: ingestion, images, image_embeddings (every bucket in one run) and
    search_index on the local backend, with their asset checks. Treat it as read-only.
    """
    from dagster import DagsterInstance, materialize

    from assets.catalog import photo_catalog
    from assets.checks import index_matches_catalog, index_self_retrieval
    from assets.embeddings import image_embeddings
    from assets.images import images
    from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release
    from assets.search_index import search_index
    from resources.dagster_resources import ClipResource, SettingsResource

    home = tmp_path_factory.mktemp("search_home")
    clip, text = (str(p) for p in tiny_models)
    settings = SettingsResource(home=str(home), dataset=str(sample_release), image_model=clip, text_model=text)
    resources = {"settings": settings, "clip": ClipResource(settings=settings)}
    instance = DagsterInstance.ephemeral()
    ingest = [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog]
    materialize(ingest, resources=resources, instance=instance)
    materialize(
        [images, image_embeddings],
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
    )
    materialize([search_index, index_matches_catalog, index_self_retrieval], resources=resources, instance=instance)
    return home


@pytest.fixture(scope="module")
def settings(search_home: Path) -> Settings:
    """:func:`search_home`'s settings, default models on purpose: the service must take the models from the build.

    With ``service`` and ``catalog``, what the tests over the generated index share; a module
    that needs other settings or another service defines its own fixture of the same name.
    """
    return Settings(home=search_home)


@pytest.fixture(scope="module")
def service(settings: Settings) -> SearchService:
    return SearchService.from_settings(settings)


@pytest.fixture(scope="module")
def client(service: SearchService, settings: Settings, one_torch_thread) -> Iterator[TestClient]:
    """The keyless HTTP API over the module's ``service``, called as a local program calls it (Host 127.0.0.1)."""
    from fastapi.testclient import TestClient

    from search_app.api import create_app
    from tests.http_fixtures import LOCAL

    with TestClient(create_app(service, settings), base_url=LOCAL, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> pd.DataFrame:
    return pd.read_parquet(settings.catalog_path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module: on a 2-core machine shared by many suites, it avoids spin-waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pipeline_env(tmp_path, tiny_models, monkeypatch):
    """The environment a user would set: a fresh IMAGE_SEARCH_HOME and the tiny models."""
    image_model, text_model = tiny_models
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGE_SEARCH_HOME", str(home))
    monkeypatch.setenv("IMAGE_SEARCH_IMAGE_MODEL", str(image_model))
    monkeypatch.setenv("IMAGE_SEARCH_TEXT_MODEL", str(text_model))
    monkeypatch.setenv("IMAGE_SEARCH_DOWNLOAD_TIMEOUT", "2")
    return home


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A small fresh release this test may change (no images: ingestion never opens them)."""
    from image_search.sample import write_release

    out = tmp_path / "release"
    write_release(out, photos=30, images=False, seed=11)
    return out
