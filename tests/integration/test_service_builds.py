"""The query service holds one build per request, follows a refresh to other models, and checks photo ids first.

A copy of the sample index (real Dagster materializations, tiny models) that the tests
publish new builds into with the real local backend; the CLI and the page search through
this same service, so what is refused here is refused there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resources.config import Settings
from resources.encoder.clip import ClipEncoder
from resources.errors import NotFoundError, ServerSideError
from resources.index.local import LocalBackend
from search_app.service import MAX_K, ModelMismatchError, QueryPart, SearchService


@pytest.fixture
def home(search_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(search_home / "index", tmp_path / "index")
    return tmp_path


def _publish_half(settings: Settings, **info_changes) -> int:
    """Publish a build of the first half of the published documents; how many it holds."""
    import dataclasses

    build = LocalBackend(settings)._require()
    keep = len(build.documents) // 2
    info = dataclasses.replace(build.info, **info_changes)
    LocalBackend(settings).build(build.documents.iloc[:keep], np.asarray(build.vectors[:keep]), info)
    return keep


def test_a_build_published_during_a_search_is_not_mixed_into_it(home: Path, one_torch_thread):
    settings = Settings(home=home)
    service = SearchService.from_settings(settings)
    everything = len(service.search_text("anything", k=MAX_K, mode="hybrid"))
    encode = service.encode_text
    published: list[int] = []

    def encode_then_publish(query: str) -> np.ndarray:
        """The refresh lands between the search's first read of the index and its kNN and keyword reads."""
        vector = encode(query)
        if not published:
            published.append(_publish_half(settings))
        return vector

    service.encode_text = encode_then_publish
    during = service.search_text("anything", k=MAX_K, mode="hybrid")
    assert published and len(during) == everything
    assert len(service.search_text("anything", k=MAX_K, mode="hybrid")) == published[0]


def test_a_refresh_built_with_other_models_loads_them_instead_of_failing(home: Path, tiny_models, one_torch_thread):
    settings = Settings(home=home)
    service = SearchService.from_settings(settings)
    service.search_text("a dog")
    image_model = home / "other-image-model"
    shutil.copytree(tiny_models[0], image_model)
    _publish_half(settings, image_model=str(image_model))
    assert service.search_text("a dog")
    assert service.encoder().image_model_id == str(image_model)


def test_an_encoder_whose_text_model_differs_from_the_build_is_refused(settings: Settings, tiny_models):
    wrong_text = ClipEncoder(str(tiny_models[0]), str(tiny_models[1]) + "-other")
    service = SearchService(LocalBackend(settings), settings, encoder=wrong_text)
    with pytest.raises(ModelMismatchError, match="built with text model"):
        service.search_text("cat")


def test_a_damaged_index_is_the_servers_failure_not_the_callers(home: Path):
    (home / "index" / "CURRENT").write_text("no-such-build")
    with pytest.raises(ServerSideError, match="which is missing"):
        SearchService.from_settings(Settings(home=home)).search_text("cat")


@pytest.mark.parametrize("photo_id", ["../../etc/passwd", "a/b", "..", "a\x00b", "a\nb", "é", "a b", "x" * 201])
def test_photo_ids_of_another_shape_never_reach_the_index(settings: Settings, photo_id: str):
    class Watched(LocalBackend):
        asked: list[str] = []

        def get(self, photo_id):
            self.asked.append(photo_id)
            return super().get(photo_id)

    backend = Watched(settings)
    service = SearchService(backend, settings)
    for search in (service.photo, service.more_like_this):
        with pytest.raises(NotFoundError, match="is not in the index: ids are letters, digits, _ and - only"):
            search(photo_id)
    with pytest.raises(NotFoundError, match="part 2: photo id"):
        service.composed_vector([QueryPart(text="beach"), QueryPart(photo_id=photo_id)])
    assert backend.asked == []


def test_an_upload_is_decoded_once_however_often_duplicates_rerun_the_search(
    service: SearchService, catalog, settings: Settings, monkeypatch, one_torch_thread
):
    import search_app.parts as parts
    from resources.images.image_store import ImageStore

    decoded: list[int] = []
    real = parts.decoded_rgb
    monkeypatch.setattr(parts, "decoded_rgb", lambda *a, **k: decoded.append(1) or real(*a, **k))
    everyone_alike = {pid: 0 for pid in catalog["photo_id"]}
    monkeypatch.setattr(service, "duplicate_groups", lambda: everyone_alike)
    searched: list[int] = []
    knn = LocalBackend.knn
    monkeypatch.setattr(LocalBackend, "knn", lambda self, *a, **k: searched.append(1) or knn(self, *a, **k))
    data = ImageStore(settings.images_dir).path_for(catalog["photo_id"].iloc[0]).read_bytes()
    assert len(service.search_image(data, k=5, collapse_duplicates=True)) == 1
    assert len(searched) > 1 and len(decoded) == 1
    searched.clear()
    composed = [QueryPart(image=data), QueryPart(text="at night", weight=0.5)]
    assert len(service.search_composed(composed, k=5, mode="hybrid", collapse_duplicates=True)) == 1
    assert len(searched) > 1 and len(decoded) == 2
    assert Image.open(ImageStore(settings.images_dir).path_for(catalog["photo_id"].iloc[0])).format == "JPEG"
