"""The query service on a real published index of the sample release, encoded with the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resources.config import Settings
from resources.encoder.clip import ClipEncoder
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.index.base import Filters
from resources.index.local import LocalBackend
from search_app.results import rrf_fuse
from search_app.service import MAX_K, ModelMismatchError, SearchService


def _a_word(catalog: pd.DataFrame) -> tuple[str, set[str]]:
    """A keyword some but not all photos carry, and the photos that carry it in describe."""
    words = catalog["describe"].fillna("").str.split().explode().dropna()
    counts = words.value_counts()
    word = counts[(counts > 1) & (counts < len(catalog) // 2)].index[0]
    return word, set(catalog.loc[catalog["describe"].fillna("").str.split().map(lambda w: word in w), "photo_id"])


def test_models_come_from_the_published_build(service: SearchService, settings: Settings):
    info = service.build_info()
    assert settings.image_model != info.image_model
    encoder = service.encoder()
    assert encoder.image_model_id == info.image_model and encoder.text_model_id == info.text_model


def test_vector_search_scores_are_cosines_best_first(service: SearchService):
    results = service.search_text("una montaña con nieve", k=10)
    assert len(results) == 10
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    q = service.encode_text("una montaña con nieve")
    for r in results:
        _, vector = service.backend.get(r.photo_id)
        assert r.cosine == r.score == pytest.approx(float(vector @ q), abs=1e-4)
        assert -1.0 <= r.score <= 1.0


def test_results_carry_attribution_links_and_local_path(service: SearchService, catalog: pd.DataFrame, settings):
    result = service.search_text("cat", k=1)[0]
    row = catalog.set_index("photo_id").loc[result.photo_id]
    assert result.describe == row["describe"] and result.photo_url == row["photo_url"]
    assert result.photographer_name == row["photographer_name"]
    assert result.photographer_url == f"https://unsplash.com/@{row['photographer_username']}"
    assert result.local_path == ImageStore(settings.images_dir).path_for(result.photo_id)
    assert result.local_path.is_file()
    assert json.loads(json.dumps(result.to_dict()))["photo_id"] == result.photo_id


def test_keyword_mode_finds_photos_by_their_keywords(service: SearchService, catalog: pd.DataFrame):
    word, carriers = _a_word(catalog)
    results = service.search_text(word, k=MAX_K, mode="keyword")
    found = {r.photo_id for r in results}
    assert carriers <= found
    assert all(r.cosine is None and r.score > 0 for r in results)
    assert service.search_text("zzzqqq", k=5, mode="keyword") == []


def test_hybrid_mode_is_reciprocal_rank_fusion(service: SearchService, catalog: pd.DataFrame):
    word, _ = _a_word(catalog)
    k = 5
    results = service.search_text(word, k=k, mode="hybrid")
    q = service.encode_text(word)
    depth = max(2 * k, 100)
    knn = [h.photo_id for h in service.backend.knn(q, depth)]
    keyword = [h.photo_id for h in service.backend.keyword(word, depth)]
    fused = rrf_fuse(knn, keyword)
    assert len(results) == k
    for r in results:
        assert r.score == pytest.approx(fused[r.photo_id])
        _, vector = service.backend.get(r.photo_id)
        assert r.cosine == pytest.approx(float(vector @ q), abs=1e-4)
    assert [r.score for r in results] == sorted(fused.values(), reverse=True)[:k]
    both = set(knn) & set(keyword)
    assert both and results[0].photo_id in both


def test_rrf_fuse_sums_reciprocal_ranks():
    fused = rrf_fuse(["a", "b"], ["b", "c"])
    assert fused == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62})


def test_image_search_returns_the_photo_itself_first(service: SearchService, catalog: pd.DataFrame, settings):
    store = ImageStore(settings.images_dir)
    for photo_id in catalog["photo_id"][:3]:
        path = store.path_for(photo_id)
        for image in (path, str(path), path.read_bytes(), Image.open(path)):
            top = service.search_image(image, k=3)[0]
            assert top.photo_id == photo_id and top.score == pytest.approx(1.0, abs=2e-3)


def test_more_like_this_keeps_the_photo_first_with_cosine_one(service: SearchService, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][5]
    results = service.more_like_this(photo_id, k=8)
    assert results[0].photo_id == photo_id and results[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(results) == 8


def test_min_score_cuts_on_cosine(service: SearchService, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][5]
    everything = service.more_like_this(photo_id, k=MAX_K)
    cut = everything[len(everything) // 2].score
    kept = service.more_like_this(photo_id, k=MAX_K, min_score=cut)
    assert kept and all(r.score >= cut for r in kept)
    assert len(kept) == sum(r.score >= cut for r in everything)
    assert service.search_text("mountain", k=10, min_score=1.01) == []


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_filters_apply_in_every_mode(service: SearchService, catalog: pd.DataFrame, mode: str):
    orientation = catalog["orientation"].value_counts().index[-1]
    passing = set(catalog.loc[catalog["orientation"] == orientation, "photo_id"])
    word = catalog.loc[catalog["orientation"] == orientation, "describe"].dropna().iloc[0].split()[0]
    results = service.search_text(word, k=MAX_K, mode=mode, filters=Filters(orientation=orientation))
    assert results and {r.photo_id for r in results} <= passing
    if mode == "vector":
        assert len(results) == len(passing)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.search_text("cat", k=0), "out of range"),
        (lambda s: s.search_text("cat", k=MAX_K + 1), "out of range"),
        (lambda s: s.search_text("   "), "empty"),
        (lambda s: s.search_text("cat", mode="fuzzy"), "mode"),
        (lambda s: s.more_like_this("no-such-photo"), "not in the index"),
        (lambda s: s.search_image("/no/such/file.jpg"), "not found"),
        (lambda s: s.search_image(b"this is not an image"), "cannot use"),
    ],
)
def test_bad_input_is_a_one_line_error(service: SearchService, call, message: str):
    with pytest.raises(ImageSearchError, match=message) as failure:
        call(service)
    assert "\n" not in str(failure.value)


def test_no_index_yet_says_how_to_build_it(tmp_path: Path):
    service = SearchService.from_settings(Settings(home=tmp_path))
    with pytest.raises(ImageSearchError, match="make demo"):
        service.search_text("cat")


def test_a_different_image_model_is_refused(settings: Settings, tiny_models):
    backend = LocalBackend(settings)
    other = ClipEncoder(str(tiny_models[0]) + "-other", str(tiny_models[1]))
    service = SearchService(backend, settings, encoder=other)
    with pytest.raises(ModelMismatchError, match="built with image model"):
        service.search_text("cat")
    with pytest.raises(ModelMismatchError):
        service.search_image(Image.new("RGB", (64, 48), "red"))


def test_a_newly_published_build_is_picked_up(search_home: Path, tmp_path: Path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(search_home / "index", home / "index")
    settings = Settings(home=home)
    service = SearchService.from_settings(settings)
    before = service.search_text("anything", k=MAX_K)
    build = service.backend._require()
    keep = len(build.documents) // 2
    LocalBackend(settings).build(build.documents.iloc[:keep], np.asarray(build.vectors[:keep]), build.info)
    after = service.search_text("anything", k=MAX_K)
    assert len(before) == len(build.documents) > keep and len(after) == keep
