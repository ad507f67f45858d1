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
