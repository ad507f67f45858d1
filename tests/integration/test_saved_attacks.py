"""Saved searches attacked from outside: the HTTP routes, the store's folder, the notifier, the sensor.

Each test names the source of its attack. The API runs in-process over the conftest index
(tiny models) with its saved searches in a fresh home; every server is real, on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import AddDynamicPartitionsRequest, DagsterInstance, build_sensor_context
from fastapi.testclient import TestClient

from assets.saved_searches import saved_searches_partitions
from resources.config import Settings
from resources.errors import ImageSearchError
from resources.saved import notify
from resources.saved.store import SavedSearch, SavedStore
from search_app.api import create_app
from sensors import saved_searches_sensor

KEY = "attack-" + "k" * 32
HEADERS = {"X-API-Key": KEY}
NEW = [{"photo_id": "p1", "score": 0.9, "photo_url": "https://unsplash.com/photos/p1", "image_url": "https://i/p1.jpg"}]


@pytest.fixture()
def api(service, tmp_path: Path) -> tuple[TestClient, Path]:
    """The API over the conftest index, its saved searches under ``tmp_path``, guarded by a key."""
    settings = Settings(home=tmp_path, api_key=KEY)
    return TestClient(create_app(service, settings, warm_up=False), raise_server_exceptions=False), tmp_path


def one_line_problem(response, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


# -- the HTTP routes (OWASP API Security Top 10 2023) ---------------------------------------------


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/saved", None),
        ("POST", "/saved", {"name": "x", "text": "red"}),
        ("GET", "/saved/kept", None),
        ("DELETE", "/saved/kept", None),
        ("PUT", "/saved/kept/marks/p1", {"mark": "good"}),
        ("DELETE", "/saved/kept/marks/p1", None),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-" + "k" * 32, KEY + " ", ""])
def test_every_saved_route_refuses_a_missing_or_wrong_key(api, method, path, body, key):
    """API2:2023 Broken Authentication and API5:2023 Broken Function Level Authorization: DELETE and marks too."""
    client, home = api
    SavedStore(home).add(SavedSearch(name="kept", query={"text": "red"}))
    headers = {} if key is None else {"X-API-Key": key}
    response = client.request(method, path, json=body, headers=headers)
    one_line_problem(response, 401)
    assert SavedStore(home).names() == ["kept"] and SavedStore(home).marks("kept") == {}


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "../escape",
        "a/b",
        "a\\b",
        "a\x00b",
        " lead",
        "trail ",
        "x" * 65,
        "",
        "a\nb",
        "a.json",
        "\u202eevil",
    ],
)
def test_a_hostile_name_is_refused_in_one_line_and_nothing_is_written(api, name):
    """CWE-22 path traversal, CWE-158 NUL, CWE-117 newline, Trojan Source (CVE-2021-42574) bidi override."""
    client, home = api
    response = client.post("/saved", json={"name": name, "text": "red"}, headers=HEADERS)
    one_line_problem(response, 400, 422)
    assert not (home / "saved").exists() or SavedStore(home).names() == []
    assert not (home.parent / "escape").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/saved/..",
        "/saved/%2e%2e",
        "/saved/..%2f..%2fetc",
        "/saved/a%00b",
        "/saved/a%5cb",
        "/saved/" + "x" * 5000,
        "/saved/%2e%2e/marks/p1",
    ],
)
def test_a_hostile_name_in_the_path_is_a_problem_not_a_crash(api, path):
    """CWE-22 through percent-encoding (RFC 3986 section 2.1): Starlette decodes the path before routing."""
    client, _ = api
    for method in ("GET", "DELETE", "PUT"):
        response = client.request(method, path, headers=HEADERS, json={"mark": "good"} if method == "PUT" else None)
        assert response.status_code in (400, 404, 405, 422), (method, path, response.status_code)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "big", "text": "red", "k": 10**12},
        {"name": "big", "text": "red", "k": -1},
        {"name": "big", "text": "red", "k": 1.5},
        {"name": 12, "text": "red"},
        {"name": ["a"], "text": "red"},
        {"name": "big", "parts": "red"},
        {"name": "big"},
        {"name": "big", "text": "red", "like": "p1"},
        {"name": "big", "text": "red", "admin": True},
        {"name": "big", "image": 0, "images": ["not base64!"]},
        {"name": "big", "image": 0, "images": ["aGVsbG8="]},
        {"name": "big", "image": 3, "images": []},
        {"name": "big", "text": "r" * 1001},
        [1, 2],
        "text",
        None,
    ],
)
def test_a_hostile_body_is_refused_in_one_line(api, body):
    """API4:2023 Unrestricted Resource Consumption (huge k) and API3:2023 mass assignment (extra fields), wrong types."""
    client, home = api
    one_line_problem(client.post("/saved", json=body, headers=HEADERS), 400, 422)
    assert SavedStore(home).names() == []


def test_huge_and_deeply_nested_json_are_refused_and_the_server_goes_on(api):
    """API4:2023: a body over the API's limit is 413; JSON nested past Python's recursion limit is a problem, not a 500."""
    client, _ = api
    huge = b'{"name": "big", "text": "' + b"r" * (64 << 20) + b'"}'
    one_line_problem(client.post("/saved", content=huge, headers={**HEADERS, "Content-Type": "application/json"}), 413)
    deep = '{"name": "deep", "parts": ' + "[" * 100_000 + "]" * 100_000 + "}"
    one_line_problem(
        client.post("/saved", content=deep, headers={**HEADERS, "Content-Type": "application/json"}), 400, 422
    )
    assert client.get("/saved", headers=HEADERS).status_code == 200


@pytest.mark.parametrize(
    "photo_id", ["no-such-photo", "*", "' OR '1'='1", '{"match_all": {}}', "../search.json", "p%00", "p%2F..%2F.."]
)
def test_a_mark_on_a_photo_not_indexed_is_404_and_writes_nothing(api, photo_id):
    """API1:2023 object-level checks and CWE-943 query injection: an id is looked up as a value, never as syntax."""
    client, home = api
    SavedStore(home).add(SavedSearch(name="kept", query={"text": "red"}))
    response = client.put(f"/saved/kept/marks/{photo_id}", json={"mark": "good"}, headers=HEADERS)
    one_line_problem(response, 404, 400, 422)
    assert SavedStore(home).marks("kept") == {}


def test_unknown_searches_are_404_on_every_route(api):
    client, _ = api
    for method, path in (("GET", "/saved/ghost"), ("DELETE", "/saved/ghost"), ("DELETE", "/saved/ghost/marks/p1")):
        assert "ghost" in one_line_problem(client.request(method, path, headers=HEADERS), 404)
    one_line_problem(client.put("/saved/ghost/marks/p1", json={"mark": "good"}, headers=HEADERS), 404)
    one_line_problem(client.put("/saved/ghost/marks/p1", json={"mark": "great"}, headers=HEADERS), 422)


def test_a_corrupt_file_answer_names_no_absolute_path(api):
    """API8:2023 Security Misconfiguration and CWE-209: an error message must not show the server's folders."""
    client, home = api
    store = SavedStore(home)
    store.add(SavedSearch(name="kept", query={"text": "red"}))
    store.add(SavedSearch(name="broken", query={"text": "blue"}))
    (home / "saved" / "broken" / "search.json").write_text('{"name": "bro')
    detail = one_line_problem(client.get("/saved/broken", headers=HEADERS), 400)
    assert "kept aside" in detail and str(home) not in detail
    assert client.get("/saved/kept", headers=HEADERS).json()["name"] == "kept"


# -- the store's folder --------------------------------------------------------------------------------


def test_two_threads_saving_one_name_at_once_leave_exactly_one(tmp_path: Path):
    """CWE-367 TOCTOU: the name is checked again under the search's lock, so one save wins and one is refused."""
    store, go = SavedStore(tmp_path), threading.Barrier(8)
    outcomes: list[str] = []

    def save(n: int) -> None:
        go.wait()
        try:
            store.add(SavedSearch(name="same", query={"text": f"words {n}"}))
            outcomes.append("saved")
        except ImageSearchError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("saved") == 1 and all("exists already" in o for o in outcomes if o != "saved")
    assert store.names() == ["same"] and not [p for p in (tmp_path / "saved").iterdir() if p.name != "same"]


def test_what_a_killed_writer_left_is_no_search_and_hides_none(tmp_path: Path):
    """A crash between write and rename (Python os.replace: atomic on POSIX) leaves only temporaries."""
    store = SavedStore(tmp_path)
    store.add(SavedSearch(name="kept", query={"text": "red"}))
    store.mark("kept", "p1", "good")
    (tmp_path / "saved" / ".other.0123456789ab.tmp").mkdir()
    (tmp_path / "saved" / ".other.0123456789ab.tmp" / "search.json").write_text(
        '{"name": "other", "query": {"text": "x"}}'
    )
    (tmp_path / "saved" / "kept" / ".marks.json.0123456789ab.tmp").write_text('{"p2": {"mark": "go')
    assert store.names() == ["kept"] and store.marks("kept") == {"p1": "good"}
    store.add(SavedSearch(name="other", query={"text": "y"}))
    assert store.get("other").query == {"text": "y"}


def test_each_corruption_is_kept_aside_and_never_overwritten(tmp_path: Path):
    """The issue's rule: a corrupt file is kept aside, never overwritten; two corruptions keep two copies."""
    store = SavedStore(tmp_path)
    store.add(SavedSearch(name="kept", query={"text": "red"}))
    folder = tmp_path / "saved" / "kept"
    for damaged in ('{"p1": {"mark"', "\x00\x00\x00"):
        (folder / "marks.json").write_text(damaged)
        with pytest.raises(ImageSearchError, match="kept aside"):
            store.mark("kept", "p1", "good")
    asides = sorted(p.read_text() for p in folder.glob("marks.json.corrupt-*"))
    assert asides == sorted(['{"p1": {"mark"', "\x00\x00\x00"])
    assert store.mark("kept", "p1", "good") == {"p1": "good"} and store.get("kept").name == "kept"


def test_symlinks_planted_in_the_saved_folder_never_change_their_targets(tmp_path: Path):
    """CWE-59 link following: a replaced file replaces the link (rename(2)), a removal never follows a link."""
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    (outside / "search.json").write_text(json.dumps({"name": "planted", "query": {"text": "x"}}))
    (outside / "precious.txt").write_text("keep me")
    store = SavedStore(home)
    store.add(SavedSearch(name="kept", query={"text": "red"}))
    os.symlink(outside / "precious.txt", home / "saved" / "kept" / "marks.json")
    with pytest.raises(ImageSearchError):
        store.mark("kept", "p1", "good")
    os.symlink(outside, home / "saved" / "planted")
    store.remove("planted")
    assert (outside / "precious.txt").read_text() == "keep me" and (outside / "search.json").is_file()
    assert store.names() == ["kept"]


# -- notifications ---------------------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 whose ``answer(handler)`` answers every POST; it records each request."""

    def __init__(self, answer):
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - the base class's signature
                pass

            def do_POST(self):  # noqa: N802 - the base class's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_port}{path}"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(status: int, headers: dict | None = None, body: bytes = b"{}"):
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def test_a_receiver_that_never_answers_costs_one_warning(caplog):
    """CWE-400: a hung receiver is given up after the timeout; the refresh goes on."""
    released = threading.Event()
    with Receiver(lambda handler: released.wait(60)) as hung:
        with caplog.at_level(logging.WARNING):
            assert (
                notify.post(hung.url("/hook"), notify.payload("s", "b", NEW), attempts=2, timeout=0.3, initial_s=0.01)
                is False
            )
        released.set()
    assert len(hung.requests) == 2 and "not delivered" in caplog.text


def test_a_redirect_is_not_followed_to_another_host(caplog):
    """OWASP API7:2023 SSRF: "disable HTTP redirections"; a 307 keeps the POST body (RFC 9110 15.4.8)."""
    with Receiver(answer(200)) as elsewhere:
        moved = answer(307, {"Location": elsewhere.url("/stolen", host="localhost")}, b"")
        with Receiver(moved) as redirecting, caplog.at_level(logging.WARNING):
            assert notify.post(redirecting.url("/hook"), notify.payload("s", "b", NEW), initial_s=0.01) is False
    assert elsewhere.requests == [] and "307" in caplog.text


def test_a_huge_answer_is_not_read(caplog):
    """API4:2023 / CWE-400: the receiver's body is never needed, so a 1 GB answer that never comes costs nothing."""
    released = threading.Event()

    def huge(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 30))
        handler.end_headers()
        handler.wfile.write(b"x" * 1024)
        handler.wfile.flush()
        released.wait(60)

    with Receiver(huge) as receiver:
        assert notify.post(receiver.url("/hook"), notify.payload("s", "b", NEW), attempts=1, timeout=2.0) is True
        released.set()


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:s3cr3t-pw@127.0.0.1:{port}/hook?token=s3cr3t-tok",
        "http://127.0.0.1:{port}/services/T000/B000/s3cr3t-path",
        "http://alice:s3cr3t-pw@127.0.0.1:notaport/hook",
    ],
)
def test_credentials_in_the_notify_url_are_never_logged(caplog, url):
    """CWE-532 secrets in logs: user info, secret query values and a webhook's secret path (Slack-style) stay out."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with caplog.at_level(logging.DEBUG):
        assert notify.post(url.format(port=port), notify.payload("s", "b", NEW), attempts=2, initial_s=0.01) is False
    assert "s3cr3t" not in caplog.text and "127.0.0.1" in caplog.text


def test_credentials_in_the_notify_url_are_sent_as_basic_auth():
    """RFC 3986 3.2.1 user info; RFC 7617 Basic: an operator's user:password in the URL must reach the receiver."""
    with Receiver(answer(200)) as receiver:
        url = receiver.url("/hook").replace("http://", "http://alice:pw@")
        assert notify.post(url, notify.payload("s", "b", NEW), attempts=1) is True
    assert receiver.requests[0]["auth"] == "Basic YWxpY2U6cHc="


# -- the Dagster side ---------------------------------------------------------------------------------


def test_the_sensor_keeps_one_partition_per_name_however_written(tmp_path: Path):
    """Dagster dynamic partitions: keys are exact strings; unicode and spaced names round-trip, removals go."""
    store, instance = SavedStore(tmp_path), DagsterInstance.ephemeral()
    names = ["猫 cats", "red_circles-2", "Ünïcödé", "x" * 64]
    for name in names:
        store.add(SavedSearch(name=name, query={"text": "red"}))

    def tick() -> None:
        context = build_sensor_context(instance=instance, resources={"settings": Settings(home=tmp_path)})
        result = saved_searches_sensor(context)
        for request in result.dynamic_partitions_requests:  # as the daemon applies them
            if isinstance(request, AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)

    tick()
    assert sorted(instance.get_dynamic_partitions(saved_searches_partitions.name)) == sorted(names)
    store.remove("猫 cats")
    store.add(SavedSearch(name="new one", query={"text": "blue"}))
    tick()
    assert sorted(instance.get_dynamic_partitions(saved_searches_partitions.name)) == sorted([*names[1:], "new one"])


@pytest.mark.parametrize("first, second", [("cats", "Cats"), ("cats", "ｃａｔｓ"), ("Straße", "STRASSE")])
def test_a_name_that_differs_only_in_case_or_width_is_refused(tmp_path: Path, first, second):
    """CWE-178 case sensitivity and Unicode UTS #39 look-alikes: on a case-insensitive share (SMB, macOS) the two
    names are one folder; everywhere a user cannot tell them apart in a list. NFKC and case folding compare them."""
    store = SavedStore(tmp_path)
    store.add(SavedSearch(name=first, query={"text": "red"}))
    with pytest.raises(ImageSearchError, match="too like"):
        store.add(SavedSearch(name=second, query={"text": "blue"}))
    assert store.names() == [first] and store.get(first).query == {"text": "red"}


class Replacing:
    """The real service, except that its first word search removes the saved search and saves another under its name."""

    def __init__(self, service, store: SavedStore, name: str):
        self.service, self.store, self.name, self.done = service, store, name, False

    def __getattr__(self, attribute):
        return getattr(self.service, attribute)

    def search_text(self, *args, **kwargs):
        results = self.service.search_text(*args, **kwargs)
        if not self.done:
            self.done = True
            self.store.remove(self.name)
            self.store.add(
                SavedSearch(name=self.name, query={"text": "something else"}),
                results={"build": "b", "top": [], "previous": None, "refreshed_at": ""},
            )
        return results


def test_a_search_replaced_while_it_is_refreshed_keeps_its_own_results(service, tmp_path: Path):
    """CWE-367 TOCTOU across the Dagster run: the old query's results must not land on the new search of that name."""
    from search_app import saved

    store = SavedStore(tmp_path)
    store.add(SavedSearch(name="watch", query={"text": "a red circle"}))
    with pytest.raises(ImageSearchError, match="saved again"):
        saved.refresh(Replacing(service, store, "watch"), store, "watch")
    assert store.get("watch").query == {"text": "something else"} and store.results("watch")["top"] == []


def test_a_search_removed_before_its_queued_refresh_fails_that_run_in_one_line(tmp_path: Path):
    """Dagster dynamic partitions: a run queued for a partition whose search is gone says so and writes nothing."""
    from dagster import materialize

    from assets.saved_searches import saved_search_results
    from resources.dagster_resources import SettingsResource

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(saved_searches_partitions.name, ["gone"])
    result = materialize(
        [saved_search_results],
        partition_key="gone",
        instance=instance,
        raise_on_error=False,
        resources={"settings": SettingsResource(home=str(tmp_path))},
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "no saved search named 'gone'" in failure.step_failure_data.error.cause.message
    assert not (tmp_path / "saved" / "gone").exists()
