"""The HTTP API's refusals and failures through the real app in-process: formats, ids, 5xx and bounded work.

Over the same published sample index and service as tests/integration/test_api.py (its fixtures), each
case checks the documented status and one-line problem, and the server's log where the
caller is given only a request id. The same refusals on a real server: tests/integration/test_api_hostile.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from resources.config import Settings
from search_app.api import create_app
from search_app.service import SearchService
from tests.api_server import held_service
from tests.http_fixtures import LOCAL, assert_problem


@pytest.mark.parametrize("fmt", ["EPS", "TIFF", "ICO"])
def test_images_other_than_jpeg_png_webp_are_415_naming_the_accepted_types(client, fmt):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, format=fmt)
    response = client.post("/search/image", files={"image": ("a.jpg", out.getvalue(), "image/jpeg")})
    assert_problem(response, 415, f"is a {fmt} image: only JPEG, PNG or WebP images are accepted")
    composed = client.post("/search/composed", data={"expr": "image:0"}, files=[("images", ("a", out.getvalue()))])
    assert_problem(composed, 415, "only JPEG, PNG or WebP")


def test_results_leave_out_the_servers_file_paths(client, catalog):
    photo_id = catalog["photo_id"].iloc[0]
    for answer in (
        client.get("/search", params={"q": "dog"}).json()["results"][0],
        client.get(f"/photos/{photo_id}").json(),
    ):
        assert "local_path" not in answer and answer["photo_id"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/photos/..%2F..%2Fetc%2Fpasswd", 404),
        ("/photos/a%00b", 422),
        ("/photos/a..b", 422),
        ("/photos/a%20b/similar", 422),
    ],
)
def test_photo_ids_of_another_shape_are_refused(client, path, status):
    assert_problem(client.get(path), status, "")
    bad_part = client.post("/search/composed", data={"parts": '[{"photo_id": "../x"}]'})
    assert_problem(bad_part, 400, "parts[0.photo_id]: String should match pattern")


def test_an_unexpected_exception_is_a_500_problem_with_a_request_id_in_the_log(service, settings, caplog):
    class Broken(SearchService):
        def search_text(self, *args, **kwargs):
            raise RuntimeError("a bug")

    broken = Broken(service.backend, settings, encoder=service.encoder())
    with TestClient(
        create_app(broken, settings, warm_up=False), base_url=LOCAL, raise_server_exceptions=False
    ) as client:
        response = client.get("/search", params={"q": "dog"})
    request_id = response.headers["x-request-id"]
    assert_problem(response, 500, f"its log names this request {request_id}")
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_timed_out_search_holds_its_slot_until_its_work_stops_and_overload_is_a_503_to_retry(service, settings):
    """One slot; a search held at a gate the test opens times out, and its slot stays taken until the gate opens."""
    import threading

    from tests.pause import wait_until

    gate = threading.Event()

    held = held_service(service, settings, gate)
    one_slot = settings.replace(api_request_timeout=0.5, api_max_searches=1)
    with TestClient(create_app(held, one_slot, warm_up=False), base_url=LOCAL) as client:
        assert_problem(client.get("/search", params={"q": "dog"}), 503, "took longer than 0.5 s")
        busy = client.get("/photos/x")
        assert_problem(busy, 503, "busy with other searches")
        assert busy.headers["retry-after"] == "1"
        gate.set()
        wait_until(lambda: client.get("/photos/x").status_code == 404, "the slot given back")


def test_server_side_failures_are_5xx_that_name_no_address(
    search_home: Path, tmp_path: Path, service, settings, caplog
):
    import shutil

    from resources.errors import UnavailableError

    shutil.copytree(search_home / "index", tmp_path / "index")
    (tmp_path / "index" / "CURRENT").write_text("a-build-that-is-gone")
    damaged = Settings(home=tmp_path)
    with TestClient(create_app(SearchService.from_settings(damaged), damaged, warm_up=False), base_url=LOCAL) as client:
        failed = client.get("/search", params={"q": "dog"})
    assert_problem(failed, 502, f"its log names this request {failed.headers['x-request-id']}")
    assert str(tmp_path) not in failed.text and any("which is missing" in r.getMessage() for r in caplog.records)

    class Unreachable(SearchService):
        def search_text(self, *args, **kwargs):
            raise UnavailableError("cannot reach https://***:***@10.1.2.3:9200 while searching: check the cluster")

    with TestClient(
        create_app(Unreachable(service.backend, settings), settings, warm_up=False), base_url=LOCAL
    ) as client:
        down = client.get("/search", params={"q": "dog"})
    assert_problem(down, 503, "cannot reach the search backend while searching")
    assert "10.1.2.3" not in down.text and down.headers["retry-after"] == "1"
