"""The HTTP API through the real app in-process (httpx's ASGI transport via TestClient).

A real published index of the sample release (real Dagster materializations, tiny models),
the real query service and its encoder with query batching on: every endpoint, the
problem responses, the bounds, the API key, and schemathesis fuzzing the OpenAPI schema.
"""

from __future__ import annotations

import io
from pathlib import Path

import hypothesis
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from resources.config import Settings
from search_app.api import MAX_QUERY_CHARS, PROBLEM, check_exposure, create_app
from search_app.service import MAX_QUERY_IMAGE_BYTES, SearchService
from tests.api_server import held_service
from tests.http_fixtures import LOCAL, assert_problem

KEY = "k" * 8 + "-test-key-0123456789"


def api_json(result) -> dict:
    """A service result as the API shows it: every field but the server's file path."""
    return {k: v for k, v in result.to_dict().items() if k != "local_path"}


def jpeg_of(path: Path) -> bytes:
    return Path(path).read_bytes()


def test_text_search_gives_the_fields_and_shape_of_the_cli_json(client, service):
    response = client.get("/search", params={"q": "una montaña con nieve", "k": 5, "hide_duplicates": "false"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = [api_json(r) for r in service.search_text("una montaña con nieve", k=5)]
    assert body == {
        "query": {"text": "una montaña con nieve"},
        "mode": "vector",
        "filters": {},
        "results": expected,
        "model": service.answered_by(),
    }


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_every_mode_and_filter_of_the_cli(client, service, catalog, mode):
    from resources.index.base import Filters

    row = catalog.dropna(subset=["orientation"]).iloc[0]
    word = str(row["describe"]).split()[0]
    params = {
        "q": word,
        "mode": mode,
        "k": 20,
        "orientation": row["orientation"],
        "since": "2000-01-01",
        "until": "2100-12-31",
    }
    response = client.get("/search", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    filters = Filters(
        orientation=row["orientation"], since=pd.Timestamp("2000-01-01").date(), until=pd.Timestamp("2100-12-31").date()
    )
    expected = service.search_text(word, k=20, mode=mode, filters=filters, collapse_duplicates=True)
    assert [r["photo_id"] for r in body["results"]] == [r.photo_id for r in expected]
    assert body["filters"] == {"orientation": row["orientation"], "since": "2000-01-01", "until": "2100-12-31"}
    assert all(r["orientation"] == row["orientation"] for r in body["results"])


def test_image_upload_finds_the_photo_first(client, catalog, settings):
    from resources.images.image_store import ImageStore

    photo_id = catalog["photo_id"].iloc[3]
    data = jpeg_of(ImageStore(settings.images_dir).path_for(photo_id))
    response = client.post(
        "/search/image",
        files={"image": ("../../etc/passwd", data, "text/plain")},
        data={"k": "3", "hide_duplicates": "false"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "image" and body["query"] == {"image_bytes": len(data)}
    assert body["results"][0]["photo_id"] == photo_id
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_more_like_a_photo_and_its_record(client, catalog):
    photo_id = catalog["photo_id"].iloc[5]
    similar = client.get(f"/photos/{photo_id}/similar", params={"k": 4, "hide_duplicates": "false"})
    assert similar.status_code == 200, similar.text
    assert similar.json()["query"] == {"like": photo_id} and similar.json()["mode"] == "like"
    assert similar.json()["results"][0]["photo_id"] == photo_id
    record = client.get(f"/photos/{photo_id}")
    assert record.status_code == 200
    assert record.json()["photo_id"] == photo_id and record.json()["score"] == 1.0
    row = catalog.set_index("photo_id").loc[photo_id]
    assert record.json()["describe"] == row["describe"]


def test_a_composed_query_of_one_part_gives_what_the_plain_search_gives(client):
    words = client.post("/search/composed", data={"parts": '[{"text": "a red car"}]', "k": "5"})
    assert words.status_code == 200, words.text
    assert words.json()["query"] == {"parts": [{"text": "a red car", "weight": 1.0}]}
    assert words.json()["results"] == client.get("/search", params={"q": "a red car", "k": 5}).json()["results"]


def test_composed_parts_as_json_with_an_upload_and_a_photo(client, catalog, settings, service):
    from resources.images.image_store import ImageStore
    from search_app.service import QueryPart

    first, second = catalog["photo_id"].iloc[1], catalog["photo_id"].iloc[2]
    data = jpeg_of(ImageStore(settings.images_dir).path_for(first))
    parts = '[{"image": 0}, {"photo_id": "%s", "weight": 0.5}, {"text": "people", "weight": -0.25}]' % second
    response = client.post(
        "/search/composed",
        data={"parts": parts, "k": "10", "mode": "hybrid", "hide_duplicates": "false"},
        files=[("images", ("a.jpg", data, "image/jpeg"))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid"
    assert body["query"]["parts"] == [
        {"image": 0, "weight": 1.0},
        {"photo_id": second, "weight": 0.5},
        {"text": "people", "weight": -0.25},
    ]
    expected = service.search_composed(
        [QueryPart(image=data), QueryPart(photo_id=second, weight=0.5), QueryPart(text="people", weight=-0.25)],
        k=10,
        mode="hybrid",
    )
    assert [r["photo_id"] for r in body["results"]] == [r.photo_id for r in expected]


def test_composed_expression_in_the_cli_syntax(client, catalog):
    photo_id = catalog["photo_id"].iloc[4]
    response = client.post("/search/composed", data={"expr": f'photo:{photo_id} + "at night" - 0.5*people', "k": "3"})
    assert response.status_code == 200, response.text
    assert response.json()["query"]["parts"] == [
        {"photo_id": photo_id, "weight": 1.0},
        {"text": "at night", "weight": 1.0},
        {"text": "people", "weight": -0.5},
    ]


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        ({"expr": "beach + image:/etc/passwd"}, 400, "the API opens no files"),
        ({"expr": "beach + image:3"}, 400, "names image 3 but 0 images were uploaded"),
        ({"parts": '[{"text": "a", "image": 0}]'}, 400, "names image 0"),
        ({"parts": '[{"text": "a", "photo_id": "b"}]'}, 400, "give exactly one per part"),
        ({"parts": '[{"text": "beach", "weight": -1}]'}, 400, "only negative parts"),
        ({"parts": '[{"text": "beach", "url": "http://x"}]'}, 400, "parts[0.url]"),
        ({"expr": "beach + photo:" + "x" * 300}, 400, "expr[1.photo_id]: String should have at most 200"),
        ({"expr": "1e300*beach"}, 400, "expr[0.weight]"),
        ({"parts": "not json"}, 400, "parts: Invalid JSON"),
        ({"parts": "[]"}, 400, "has no parts"),
        ({"parts": "[" + ", ".join(['{"text": "a"}'] * 17) + "]"}, 400, "use at most 16"),
        ({}, 400, "one of the two"),
        ({"parts": '[{"text": "a"}]', "expr": "a"}, 400, "one of the two"),
        ({"parts": '[{"photo_id": "nope"}]'}, 404, "photo id 'nope' is not in the index"),
    ],
)
def test_bad_compositions_are_one_line_problems(client, data, status, detail):
    assert_problem(client.post("/search/composed", data=data), status, detail)


def test_health_and_info(client, service):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["backend"] == "local"
    assert info["build"]["count"] == service.build_info().count
    assert info["build"]["image_model"] == service.build_info().image_model
    assert info["limits"]["max_upload_bytes"] == MAX_QUERY_IMAGE_BYTES
    assert info["batching"]["enabled"] is True and info["batching"]["text"]["model_calls"] >= 1


def test_concurrent_text_searches_share_one_model_call(client, service):
    """Requests that arrive while the text model is busy are encoded together in its next call.

    The first request is held inside the model (a gate around the real encoder's call, which
    the test opens) until five more are queued behind it; then two model calls serve all six.
    """
    import threading

    from tests.pause import wait_until

    batcher = service.encoder().text_batcher
    real, gate = batcher._run, threading.Event()

    def held(items):
        gate.wait(60)
        return real(items)

    batcher._run = held
    try:
        before = batcher.stats()
        answers: dict[int, int] = {}

        def search(i: int) -> None:
            params = {"q": f"a dog number {i}", "k": 2, "hide_duplicates": "false"}
            answers[i] = client.get("/search", params=params).status_code

        first = threading.Thread(target=search, args=(0,))
        first.start()
        wait_until(lambda: batcher.stats()["model_calls"] == before["model_calls"] + 1, "the first search in the model")
        others = [threading.Thread(target=search, args=(i,)) for i in range(1, 6)]
        for thread in others:
            thread.start()
        wait_until(lambda: batcher.waiting == 5, "five searches queued")
        gate.set()
        for thread in [first, *others]:
            thread.join(60)
    finally:
        batcher._run = real
    assert answers == {i: 200 for i in range(6)}
    after = batcher.stats()
    assert (after["model_calls"] - before["model_calls"], after["items"] - before["items"]) == (2, 6)


def test_openapi_is_served(client):
    schema = client.get("/openapi.json").json()
    assert {
        "/search",
        "/search/image",
        "/search/composed",
        "/photos/{photo_id}/similar",
        "/photos/{photo_id}",
        "/health",
        "/info",
    } <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        ("/photos/no-such-photo/similar", {}, 404, "photo id 'no-such-photo' is not in the index"),
        ("/photos/no-such-photo", {}, 404, "is not in the index: use a photo_id from a search result"),
        ("/search", {"q": "   "}, 400, "the query text is empty"),
        ("/search", {"q": "dog", "since": "2020-01-02", "until": "2020-01-01"}, 400, "swap them"),
        ("/search", {"q": "dog", "k": 0}, 422, "k:"),
        ("/search", {"q": "dog", "k": 1001}, 422, "k:"),
        ("/search", {"q": "x" * (MAX_QUERY_CHARS + 1)}, 422, "q:"),
        ("/search", {"q": "dog", "color": "r" * 101}, 422, "color:"),
        ("/search", {"q": "dog", "mode": "magic"}, 422, "mode:"),
        ("/search", {"q": "dog", "min_score": "nan"}, 422, "min_score:"),
        ("/search", {}, 422, "q:"),
        ("/nothing-here", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_are_one_line_problems(client, path, params, status, detail):
    assert_problem(client.get(path, params=params), status, detail)


def test_no_published_index_is_a_503_naming_the_command(tmp_path: Path, tiny_models):
    empty = Settings(home=tmp_path, image_model=str(tiny_models[0]), text_model=str(tiny_models[1]))
    with TestClient(create_app(SearchService.from_settings(empty), empty), base_url=LOCAL) as client:
        assert_problem(client.get("/search", params={"q": "dog"}), 503, "no search index is published")
        down = client.get("/health")
        assert_problem(down, 503, "the search service is down")
        assert down.json()["detail"] == "the search service is down" and down.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ({"image": ("a.jpg", b"this is not an image", "image/jpeg")}, "cannot use the uploaded image as a query"),
        ({"image": ("a.jpg", b"", "image/jpeg")}, "cannot use the uploaded image"),
        ({"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")}, "cannot use the uploaded image"),
    ],
)
def test_malformed_and_non_image_uploads_are_400_problems_and_the_server_keeps_serving(client, files, detail):
    assert_problem(client.post("/search/image", files=files), 400, detail)
    assert client.get("/search", params={"q": "dog"}).status_code == 200


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(client):
    from resources.images.pictures import MAX_PIXELS

    side = int(MAX_PIXELS**0.5) + 100
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    assert len(out.getvalue()) < MAX_QUERY_IMAGE_BYTES
    assert_problem(
        client.post("/search/image", files={"image": ("big.png", out.getvalue(), "image/png")}), 413, "pixels"
    )


def test_an_upload_over_the_size_cap_is_413_by_length_or_while_streaming(client):
    too_big = b"\xff" * (MAX_QUERY_IMAGE_BYTES + 128 * 1024)
    assert_problem(client.post("/search/image", files={"image": ("a.jpg", too_big, "image/jpeg")}), 413, "larger than")

    def chunks():
        for start in range(0, len(too_big), 1 << 20):
            yield too_big[start : start + (1 << 20)]

    streamed = client.post(
        "/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_problem(streamed, 413, "larger than")
    assert client.get("/search", params={"q": "dog"}).status_code == 200


def test_a_missing_upload_or_a_broken_form_is_a_problem(client):
    assert_problem(client.post("/search/image", data={"k": "3"}), 422, "image")
    broken = client.post(
        "/search/image", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert broken.status_code in (400, 422) and broken.headers["content-type"] == PROBLEM


def test_the_api_key_is_required_when_set_and_compared_whole(service, settings):
    keyed = settings.replace(api_key=KEY)
    with TestClient(create_app(service, keyed, warm_up=False), base_url="http://api.example") as client:
        assert_problem(client.get("/search", params={"q": "dog"}), 401, "X-API-Key")
        assert_problem(client.get("/info", headers={"X-API-Key": KEY[:-1]}), 401, "missing or wrong API key")
        assert_problem(client.get("/photos/x", headers={"X-API-Key": KEY + "x"}), 401, "missing or wrong API key")
        assert client.get("/search", params={"q": "dog"}, headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/health").status_code == 200


def test_listening_beyond_loopback_needs_a_long_key(settings):
    from resources.errors import ImageSearchError

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(settings, host)
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(
            ImageSearchError, match=f"refusing to serve the API on {host} without a key: set IMAGE_SEARCH_API_KEY"
        ):
            check_exposure(settings, host)
        check_exposure(settings.replace(api_key=KEY), host)
    with pytest.raises(ImageSearchError, match="IMAGE_SEARCH_API_KEY is shorter than 16 characters"):
        check_exposure(settings.replace(api_key="short"), "0.0.0.0")
    assert KEY not in repr(settings.replace(api_key=KEY)) and "api_key" not in settings.replace(api_key=KEY).describe()


def test_cors_is_off_unless_configured(service, settings, client):
    preflight = {"Origin": "https://cms.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.options("/search", headers=preflight).headers
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://cms.example"}).headers
    allowed = settings.replace(api_cors_origins="https://cms.example, https://other.example")
    with TestClient(create_app(service, allowed, warm_up=False), base_url=LOCAL) as cors:
        answer = cors.options("/search", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://cms.example"
        evil = cors.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


def test_a_search_past_the_timeout_is_a_503_and_the_server_keeps_serving(service, settings):
    """A search held at a gate the test opens (the real service, its text search wrapped) runs past a 0.5 s limit."""
    import threading

    gate = threading.Event()

    held = held_service(service, settings, gate)
    with TestClient(
        create_app(held, settings.replace(api_request_timeout=0.5), warm_up=False), base_url=LOCAL
    ) as client:
        assert_problem(client.get("/search", params={"q": "dog"}), 503, "took longer than 0.5 s")
        gate.set()
        assert client.get("/search", params={"q": "dog"}).status_code == 200


def test_schemathesis_finds_no_server_error(service, settings, tmp_path):
    """Property-based fuzzing of every operation in the served schema, on a server with a key.

    Every default check: no input gives a 5xx, every answer matches the schema (status codes,
    content types, bodies), and a wrong or missing key is refused; all but "schema-valid data
    is accepted", since some inputs the schema allows are refused by the service with a
    documented 400 (since after until, a query of blanks). Driven through Hypothesis
    directly, since schemathesis's pytest plugin does not load under this pytest; examples
    are bounded and derandomized, so the run is repeatable and short.
    """
    # Saved searches go to tmp_path, so the shared index's home stays read-only.
    app = create_app(service, settings.replace(api_key=KEY, home=tmp_path), warm_up=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def fuzz(case):
            case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=[positive_data_acceptance])

        fuzz()
