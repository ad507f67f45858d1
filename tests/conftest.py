"""Shared pytest fixtures: data and models built locally, since nothing can be downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_search.tiny_models import write_tiny_models


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
    """An ``IMAGE_SEARCH_HOME`` with the sample release ingested, its images stored, and a local index published.

    Catalog and images come from real materializations; the vectors are the tiny CLIP
    model's encodings of the stored images (``ClipEncoder.encode_image_files``), published
    with ``LocalBackend.build``. Treat it as read-only.
    """
    import numpy as np
    import pandas as pd
    from dagster import DagsterInstance, materialize

    from assets.catalog import photo_catalog
    from assets.images import images
    from assets.raw import collections, colors, conversions, keywords, photos, unsplash_release
    from resources.backends.base import STORED_FIELDS, BuildInfo
    from resources.backends.local import LocalBackend
    from resources.clip import ClipEncoder
    from resources.config import Settings
    from resources.dagster_resources import SettingsResource
    from resources.image_store import ImageStore

    home = tmp_path_factory.mktemp("search_home")
    clip, text = (str(p) for p in tiny_models)
    resource = SettingsResource(home=str(home), dataset=str(sample_release), image_model=clip, text_model=text)
    instance = DagsterInstance.ephemeral()
    ingest = [unsplash_release, photos, keywords, collections, conversions, colors, photo_catalog]
    materialize(ingest, resources={"settings": resource}, instance=instance)
    materialize(
        [images],
        resources={"settings": resource},
        instance=instance,
        tags={"dagster/asset_partition_range_start": "b00", "dagster/asset_partition_range_end": "b63"},
    )
    settings = Settings(home=home, image_model=clip, text_model=text)
    store = ImageStore(settings.images_dir)
    catalog = pd.read_parquet(settings.catalog_path)
    catalog = catalog[[store.has(p) for p in catalog["photo_id"]]].reset_index(drop=True)
    encoder = ClipEncoder.from_settings(settings)
    vectors = np.zeros((len(catalog), encoder.dim), dtype=np.float32)
    for batch in encoder.encode_image_files([store.path_for(p) for p in catalog["photo_id"]]):
        assert not batch.failures, batch.failures
        vectors[batch.indices] = batch.vectors
    info = BuildInfo(image_model=clip, text_model=text, dim=encoder.dim, count=0, built_at="", name="")
    LocalBackend(settings).build(catalog[list(STORED_FIELDS)], vectors, info)
    return home
