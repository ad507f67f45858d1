"""Composed queries in the service: on the generated index, and on hand-made vectors where the geometry is known."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.query import synthetic_documents
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.images.image_store import ImageStore
from resources.index import open_backend
from resources.index.base import BuildInfo, Filters
from search_app.service import MAX_K, MAX_PARTS, QueryPart, SearchService
from tests.es_fake import FakeSearchServer

MODES = ["vector", "keyword", "hybrid"]


def _ids(results) -> list[str]:
    return [r.photo_id for r in results]


def _rank(results, photo_id: str) -> int:
    return _ids(results).index(photo_id)


# -- the generated index: real tiny models, real materializations ------------------------


@pytest.mark.parametrize("mode", MODES)
def test_one_text_part_is_exactly_search_text(service: SearchService, catalog: pd.DataFrame, mode: str):
    word = catalog["describe"].dropna().iloc[3].split()[0]
    filters = Filters(orientation=catalog["orientation"].iloc[3])
    assert service.search_text(word, k=12, mode=mode)
    for query, kwargs in [
        (word, {}),
        ("una montaña con nieve", {"filters": filters}),
        (word, {"collapse_duplicates": True}),
    ]:
        plain = service.search_text(query, k=12, mode=mode, **kwargs)
        assert service.search_composed([QueryPart(text=query)], k=12, mode=mode, **kwargs) == plain


def test_one_image_part_is_exactly_search_image_and_finds_itself(service: SearchService, catalog, settings):
    store = ImageStore(settings.images_dir)
    for photo_id in catalog["photo_id"][:3]:
        for image in (store.path_for(photo_id).read_bytes(), Image.open(store.path_for(photo_id))):
            composed = service.search_composed([QueryPart(image=image)], k=5)
            assert composed == service.search_image(image, k=5)
            assert composed[0].photo_id == photo_id


def test_one_photo_part_is_exactly_more_like_this(service: SearchService, catalog: pd.DataFrame):
    for photo_id in catalog["photo_id"][[0, 9, 30]]:
        composed = service.search_composed([QueryPart(photo_id=photo_id, weight=2.5)], k=MAX_K)
        assert composed == service.more_like_this(photo_id, k=MAX_K)
        assert composed[0].photo_id == photo_id and composed[0].score == pytest.approx(1.0, abs=1e-5)


def test_the_query_vector_is_the_normalised_weighted_sum(service: SearchService, catalog: pd.DataFrame):
    photo_id = catalog["photo_id"][4]
    parts = [
        QueryPart(text="beach", weight=1.0),
        QueryPart(text="people", weight=-0.7),
        QueryPart(photo_id=photo_id, weight=0.5),
    ]
    texts = service.encoder().encode_texts(["beach", "people"]).astype(np.float64)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)  # the encoder's rows are unit to within bf16 rounding
    photo = service.backend.get(photo_id)[1].astype(np.float64)
    photo /= np.linalg.norm(photo)
    expected = texts[0] - 0.7 * texts[1] + 0.5 * photo
    expected /= np.linalg.norm(expected)
    vector = service.composed_vector(parts)
    assert vector.dtype == np.float32 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    results = service.search_composed(parts, k=10)
    for r in results:
        assert r.score == r.cosine == pytest.approx(float(service.backend.get(r.photo_id)[1] @ expected), abs=1e-4)


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_scaling_every_weight_leaves_the_ranking_unchanged(service: SearchService, catalog: pd.DataFrame, mode):
    photo_id = catalog["photo_id"][7]

    def parts(scale: float) -> list[QueryPart]:
        return [
            QueryPart(text="mountain", weight=scale),
            QueryPart(photo_id=photo_id, weight=0.5 * scale),
            QueryPart(text="night", weight=-0.3 * scale),
        ]

    base = service.search_composed(parts(1.0), k=20, mode=mode)
    for scale in (0.01, 3.0, 250.0):
        np.testing.assert_allclose(
            service.composed_vector(parts(scale)), service.composed_vector(parts(1.0)), atol=1e-6
        )
        assert _ids(service.search_composed(parts(scale), k=20, mode=mode)) == _ids(base)


def test_a_positive_photo_part_never_lowers_its_photo_and_a_negative_one_never_raises_it(service, catalog):
    """Adding w*p to the query raises p's score by w and any other photo's by w*cos(p, x) <= w."""
    base = service.search_composed([QueryPart(text="a red flower")], k=MAX_K)
    for photo_id in catalog["photo_id"][::6]:
        up = service.search_composed(
            [QueryPart(text="a red flower"), QueryPart(photo_id=photo_id, weight=0.4)], k=MAX_K
        )
        down = service.search_composed(
            [QueryPart(text="a red flower"), QueryPart(photo_id=photo_id, weight=-0.4)], k=MAX_K
        )
        assert _rank(up, photo_id) <= _rank(base, photo_id) <= _rank(down, photo_id)


def test_filters_and_min_score_apply_to_compositions(service: SearchService, catalog: pd.DataFrame):
    orientation = catalog["orientation"].value_counts().index[-1]
    passing = set(catalog.loc[catalog["orientation"] == orientation, "photo_id"])
    parts = [QueryPart(text="snow"), QueryPart(photo_id=catalog["photo_id"][2], weight=0.5)]
    for mode in ("vector", "hybrid"):
        results = service.search_composed(parts, k=MAX_K, mode=mode, filters=Filters(orientation=orientation))
        assert results and set(_ids(results)) <= passing
    everything = service.search_composed(parts, k=MAX_K)
    cut = everything[len(everything) // 2].score
    kept = service.search_composed(parts, k=MAX_K, min_score=cut)
    assert _ids(kept) == [r.photo_id for r in everything if r.score >= cut]


@pytest.mark.parametrize(
    "parts, kwargs, message",
    [
        ([], {}, "has no parts"),
        ([QueryPart(text="cat")] * (MAX_PARTS + 1), {}, f"at most {MAX_PARTS}"),
        ([QueryPart()], {}, "part 1 gives 0 of words, image and photo id"),
        ([QueryPart(text="cat"), QueryPart(text="dog", photo_id="x")], {}, "part 2 gives 2 of"),
        ([QueryPart(text="   ")], {}, "part 1 has empty words"),
        ([QueryPart(photo_id="")], {}, "part 1 has an empty photo id"),
        ([QueryPart(text=3)], {}, "part 1 gives its words as int: give a string"),
        (
            [QueryPart(image="/etc/passwd")],
            {},
            "part 1 has an image of type str: give a PIL image or the image's bytes",
        ),
        (
            [QueryPart(text="cat", weight=0)],
            {},
            r"part 1 \(words 'cat'\) has weight 0: give a finite number other than 0",
        ),
        ([QueryPart(text="cat", weight=float("nan"))], {}, "has weight nan"),
        (
            [QueryPart(text="cat"), QueryPart(text="dog", weight=float("-inf"))],
            {},
            r"part 2 \(words 'dog'\) has weight -inf",
        ),
        ([QueryPart(text="cat", weight="2")], {}, "weight '2': give a number"),
        ([QueryPart(text="cat", weight=-1)], {}, "only negative parts"),
        ([QueryPart(text="cat", weight=1), QueryPart(text="cat", weight=-1)], {}, "cancel each other out"),
        (
            [QueryPart(text="cat"), QueryPart(photo_id="no-such-photo")],
            {},
            "part 2: photo id 'no-such-photo' is not in the index",
        ),
        ([QueryPart(image=b"not an image")], {}, "cannot use the uploaded image"),
        ([QueryPart(text="cat")], {"mode": "fuzzy"}, "mode 'fuzzy' is not one of"),
        ([QueryPart(text="cat")], {"k": 0}, "out of range"),
        (
            [QueryPart(text="cat"), QueryPart(photo_id="x")],
            {"mode": "keyword"},
            "keyword mode matches words only and cannot use photo 'x'",
        ),
    ],
)
def test_bad_compositions_are_one_line_errors(service: SearchService, parts, kwargs, message: str):
    with pytest.raises(ImageSearchError, match=message) as failure:
        service.search_composed(parts, **kwargs)
    assert "\n" not in str(failure.value)


# -- hand-made vectors: the geometry is chosen, so the expected order is known ------------

DIM = 8
BEACH, PEOPLE, CITY, NIGHT, SUNSET = (np.eye(DIM, dtype=np.float32)[i] for i in range(5))


def _unit(*terms: np.ndarray) -> np.ndarray:
    v = np.sum(terms, axis=0).astype(np.float32)
    return v / np.linalg.norm(v)


#: photo_id -> (its words, its vector)
PHOTOS = {
    "crowded-beach": ("beach people crowd", _unit(BEACH, 0.5 * PEOPLE)),
    "empty-beach": ("beach sand", _unit(BEACH, 0.6 * SUNSET)),
    "night-city": ("city night lights", _unit(CITY, NIGHT)),
    "day-city": ("city street", _unit(CITY, 0.3 * PEOPLE)),
    "portrait": ("people portrait", _unit(PEOPLE, 0.2 * CITY)),
}


class HandMadeEncoder:
    """Stands in for the CLIP encoder (no model could give chosen vectors): words and image colours map to known vectors."""

    image_model_id = "hand-made-image"
    text_model_id = "hand-made-text"
    dim = DIM
    WORDS = {"beach": BEACH, "people": PEOPLE, "city": CITY, "night": NIGHT, "sunset": SUNSET}

    def __init__(self):
        self.text_calls: list[list[str]] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.text_calls.append(list(texts))
        return np.stack([_unit(*(self.WORDS[w] for w in t.split())) for t in texts])

    def encode_image(self, image: Image.Image) -> np.ndarray:
        red, green, blue = (float(c) for c in np.asarray(image, dtype=np.float32).mean(axis=(0, 1)))
        return _unit(red * NIGHT, green * SUNSET, blue * CITY)


@pytest.fixture(params=["local", "escloud-7.10", "elasticsearch-7.17"])
def hand_made(request, tmp_path: Path) -> Iterator[SearchService]:
    """The hand-made index on the embedded backend, then on the wire-level fake of each engine family.

    The fake (tests/es_fake.py) stands in for a cluster, since none can be installed here.
    """
    docs = synthetic_documents(len(PHOTOS))
    docs["photo_id"] = list(PHOTOS)
    docs["describe"] = [words for words, _ in PHOTOS.values()]
    docs["ai_description"] = None
    vectors = np.stack([v for _, v in PHOTOS.values()])
    info = BuildInfo("hand-made-image", "hand-made-text", DIM, len(PHOTOS), "2026-12-01T00:00:00Z", "")
    with contextlib.ExitStack() as stack:
        settings = Settings(home=tmp_path)
        if request.param != "local":
            fake = stack.enter_context(FakeSearchServer(request.param))
            settings = settings.replace(backend="elasticsearch", es_url=fake.url, index_name="hand_made")
        open_backend(settings).build(docs, vectors, info)
        yield SearchService(open_backend(settings), settings, encoder=HandMadeEncoder())


def test_minus_words_push_their_photo_down(hand_made: SearchService):
    assert _ids(hand_made.search_composed([QueryPart(text="beach")], k=2)) == ["crowded-beach", "empty-beach"]
    without = hand_made.search_composed([QueryPart(text="beach"), QueryPart(text="people", weight=-1)], k=5)
    assert _ids(without)[0] == "empty-beach" and _rank(without, "crowded-beach") == 1
    assert _ids(without)[-1] == "portrait"


def test_plus_words_pull_their_photo_up(hand_made: SearchService):
    assert _ids(hand_made.search_composed([QueryPart(photo_id="day-city")], k=2)) == ["day-city", "night-city"]
    at_night = hand_made.search_composed([QueryPart(photo_id="day-city"), QueryPart(text="night", weight=1.0)], k=5)
    assert _ids(at_night)[0] == "night-city"
    expected = _unit(PHOTOS["day-city"][1], NIGHT)
    assert [r.score for r in at_night] == pytest.approx(
        [float(PHOTOS[p][1] @ expected) for p in _ids(at_night)], abs=1e-5
    )


def test_text_parts_are_encoded_in_one_call(hand_made: SearchService):
    encoder = hand_made.encoder()
    encoder.text_calls.clear()
    hand_made.search_composed(
        [QueryPart(text="beach"), QueryPart(photo_id="portrait"), QueryPart(text="people", weight=-2)]
    )
    assert encoder.text_calls == [["beach", "people"]]


def test_an_image_part_adds_its_vector(hand_made: SearchService):
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    assert _ids(hand_made.search_composed([QueryPart(image=blue)], k=1)) == ["day-city"]
    both = hand_made.search_composed([QueryPart(image=blue), QueryPart(text="people", weight=-1.0)], k=5)
    assert _ids(both)[0] == "night-city" and _ids(both)[-1] == "portrait"


def test_weights_are_linear(hand_made: SearchService):
    """``w*a + v*b`` normalised: the weights' ratio alone decides the query, and it moves the ranking smoothly."""

    def top(ratio: float) -> str:
        parts = [QueryPart(text="beach", weight=1.0), QueryPart(text="city", weight=ratio)]
        np.testing.assert_allclose(hand_made.composed_vector(parts), _unit(BEACH, ratio * CITY), atol=1e-6)
        return hand_made.search_composed(parts, k=1)[0].photo_id

    assert top(0.2) in ("crowded-beach", "empty-beach") and top(5.0) in ("night-city", "day-city")


def test_keyword_mode_excludes_minus_words(hand_made: SearchService):
    plus = hand_made.search_composed([QueryPart(text="beach")], k=5, mode="keyword")
    assert set(_ids(plus)) == {"crowded-beach", "empty-beach"}
    minus = hand_made.search_composed(
        [QueryPart(text="beach"), QueryPart(text="people", weight=-1)], k=5, mode="keyword"
    )
    assert _ids(minus) == ["empty-beach"]


def test_hybrid_mode_fuses_the_composed_vector_with_the_plus_words(hand_made: SearchService):
    parts = [QueryPart(text="beach"), QueryPart(text="people", weight=-1)]
    results = hand_made.search_composed(parts, k=5, mode="hybrid")
    assert _ids(results)[0] == "empty-beach"
    vector_only = [QueryPart(photo_id="night-city"), QueryPart(text="people", weight=-0.5)]
    fused = hand_made.search_composed(vector_only, k=5, mode="hybrid")
    plain = hand_made.search_composed(vector_only, k=5)
    assert _ids(fused) == _ids(plain) and [r.cosine for r in fused] == [r.cosine for r in plain]
