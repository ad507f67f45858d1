"""An outsider's attacks on the request line, headers and framing of a real uvicorn server on 127.0.0.1.

Each test is kept as a regression test of the answer that held, and names the source its
attack comes from: RFC 9110/9112 (Host, framing, smuggling), the Fetch Metadata and CORS
specs (browser requests), DNS-rebinding write-ups (a name that resolves to 127.0.0.1 sends
its own ``Host``), OWASP API Security Top 10 2023 (API2 broken authentication, API4
unrestricted resource consumption). The attacks carried in bodies (images, ids, error
bodies) are in test_api_attacks_bodies.py; both attack the server of tests/api_server.py's
:func:`attacked_settings`, the configuration of tests/integration/test_api_hostile.py.
"""

from __future__ import annotations

import re
import socket
from typing import Iterator

import httpx
import pytest

from resources.config import Settings
from search_app.service import MAX_QUERY_IMAGE_BYTES, SearchService
from tests.api_server import (
    ANSWER_S,
    APP_ORIGIN,
    HEADER_TIMEOUT_S,
    KEY,
    assert_normal_client_served,
    attacked_settings,
    exchange,
    read_answer,
    request,
    serving,
)


@pytest.fixture(scope="module")
def service(settings: Settings, one_torch_thread) -> SearchService:
    return SearchService.from_settings(settings)


@pytest.fixture(scope="module")
def port(service: SearchService, settings: Settings) -> Iterator[int]:
    """Keyless, loopback only, also answering ``search.lan`` and CORS for :data:`APP_ORIGIN`."""
    with serving(service, attacked_settings(settings)) as port:
        yield port


@pytest.fixture(scope="module")
def keyed_port(service: SearchService, settings: Settings) -> Iterator[int]:
    with serving(service, settings.replace(api_header_timeout=HEADER_TIMEOUT_S, api_key=KEY)) as port:
        yield port


# --- Host and Origin (DNS rebinding, RFC 9110 §7.2, Fetch Metadata) -------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:1", 200),  # the port is not the guard's business: loopback is loopback
        ("LOCALHOST", 200),  # RFC 9110 §4.2.3: the host is case-insensitive
        ("[::1]:8502", 200),
        ("SEARCH.LAN:8502", 200),
        ("localhost.", 403),  # a trailing dot is another name to the guard: refused, never widened
        ("127.0.0.1.", 403),
        ("search.lan.", 403),
        ("0.0.0.0", 403),  # browsers route 0.0.0.0 to this machine ("0.0.0.0 day"): not a local program's Host
        ("127.1", 403),  # inet_aton's short form: not an address ipaddress accepts, so refused
        ("2130706433", 403),  # 127.0.0.1 as one decimal number
        ("evil.example:127.0.0.1", 403),
        ("[::1]evil.example", 403),  # RFC 9110 §7.2: only a port may follow the name
        ("127.0.0.1:80@evil.example", 403),
        ("localhost:evil.example", 403),
        ("127.0.0.1.nip.io", 403),  # a public name that resolves to 127.0.0.1
        ("evil.example, 127.0.0.1", 403),
        ("", 403),
    ],
)
def test_host_forms_a_rebinding_page_could_send(port: int, host: str, status: int):
    answer_status, answer = exchange(port, request("GET", "/health", f"Host: {host}"))
    assert answer_status == status, answer
    if status == 403:
        assert b"is not answered without a key" in answer and b"x-request-id" in answer.lower()


def test_duplicate_missing_and_absolute_form_hosts(port: int):
    """RFC 9112 §3.2: two Host headers, or none in HTTP/1.1, are a 400 (h11); §3.2.2 absolute-form is no bypass."""
    status, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n")
    assert status == 400
    status, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 400
    status, _ = exchange(port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 400
    status, answer = exchange(port, b"GET /health HTTP/1.0\r\n\r\n")  # HTTP/1.0 may omit Host: nothing to trust
    assert status == 403 and b"(none)" in answer
    status, _ = exchange(port, request("GET", "http://127.0.0.1/health", "Host: evil.example"))
    assert status == 403  # the Host header is judged; the target's authority never widens it
    status, _ = exchange(port, request("GET", "http://evil.example/health", "Host: 127.0.0.1"))
    assert status == 404  # no route matches an absolute-form target: nothing is fetched from it


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (["Sec-Fetch-Site: same-site"], 403),  # another port or subdomain of the same site
        (["Sec-Fetch-Site: CROSS-SITE"], 403),
        (["Sec-Fetch-Site: same-origin"], 200),
        (["Sec-Fetch-Site: none"], 200),  # typed into the address bar
        (["Origin: http://127.0.0.1:1"], 403),  # another local web app on another port
        (["Origin: http://localhost"], 403),
        (["Origin: null", "Sec-Fetch-Site: same-origin"], 403),  # a sandboxed frame or a file: page
        ([f"Origin: {APP_ORIGIN}"], 200),  # listed in IMAGE_SEARCH_API_CORS_ORIGINS
        ([f"Origin: {APP_ORIGIN}/"], 403),  # an origin never has a path: not the listed one
        (["Origin: http://app.example.evil.example"], 403),
    ],
)
def test_browser_requests_by_fetch_metadata_and_origin(port: int, headers: list[str], status: int):
    answer_status, answer = exchange(port, request("GET", "/health", "Host: 127.0.0.1", *headers))
    assert answer_status == status, answer


def test_a_listed_origin_does_not_widen_the_host_check(port: int):
    """A rebinding page can claim nothing: its Origin is its own name, but even a listed one keeps the Host check."""
    status, _ = exchange(port, request("GET", "/health", "Host: rebound.example", f"Origin: {APP_ORIGIN}"))
    assert status == 403


def test_blind_form_posts_a_page_can_send(port: int):
    """HTML forms send text/plain, urlencoded or multipart without a preflight, always with an Origin (Fetch spec)."""
    for content_type, body in (
        ("text/plain", b'{"name": "x", "text": "beach"}'),
        ("application/x-www-form-urlencoded", b"expr=beach"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n',
        ),
    ):
        for path in ("/search/composed", "/saved", "/saved/x/marks/abc"):
            headers = ("Host: 127.0.0.1", "Origin: https://evil.example", f"Content-Type: {content_type}")
            status, answer = exchange(port, request("POST", path, *headers, body=body))
            assert status == 403 and b"cross-site" in answer, (content_type, path)


@pytest.mark.parametrize(
    "header",
    ["X-Real-IP: 203.0.113.9", "X-Forwarded-Host: evil.example", "X-Forwarded-Proto: https", "FORWARDED: for=1.2.3.4"],
)
def test_proxy_headers_are_refused_without_a_key_and_allowed_with_one(port: int, keyed_port: int, header: str):
    status, answer = exchange(port, request("GET", "/health", "Host: 127.0.0.1", header))
    assert status == 403 and b"came through a proxy" in answer
    keyed = request("GET", "/search?q=dog&k=1", "Host: api.example", header, f"X-API-Key: {KEY}")
    assert exchange(keyed_port, keyed)[0] == 200


def test_cors_preflight_answers_only_listed_origins(port: int):
    """Starlette's CORSMiddleware (docs: "CORSMiddleware"): a preflight from another origin gets no allow header."""
    preflight = ("Access-Control-Request-Method: POST", "Access-Control-Request-Headers: x-api-key")
    status, answer = exchange(
        port, request("OPTIONS", "/search/image", "Host: 127.0.0.1", f"Origin: {APP_ORIGIN}", *preflight)
    )
    assert status == 200 and f"access-control-allow-origin: {APP_ORIGIN}".encode() in answer.lower()
    status, answer = exchange(
        port, request("OPTIONS", "/search/image", "Host: 127.0.0.1", "Origin: https://evil.example", *preflight)
    )
    assert status == 400 and b"access-control-allow-origin" not in answer.lower()


# --- The key (OWASP API2:2023 broken authentication) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/search?q=dog&k=1", ["X-API-Key:"], 401),  # empty
        (f"/search?q=dog&k=1&api_key={KEY}&X-API-Key={KEY}", [], 401),  # in the query string: never read there
        ("/search?q=dog&k=1", [f"Authorization: Bearer {KEY}"], 401),
        ("/search?q=dog&k=1", [f"X-API-Key: {KEY[:-1]}"], 401),  # a prefix
        ("/search?q=dog&k=1", [f"X-API-Key: {KEY}x"], 401),
        ("/search?q=dog&k=1", [f"X-API-Key: {KEY.upper()}"], 401),
        ("/search?q=dog&k=1", ["X-API-Key: wrong", f"X-API-Key: {KEY}"], 401),  # the first one counts
        ("/search?q=dog&k=1", [f"x-api-KEY: {KEY}"], 200),  # RFC 9110 §5.1: field names are case-insensitive
        ("/search?q=dog&k=1", [f"X-API-Key:   {KEY}  "], 200),  # RFC 9112 §5.1: surrounding whitespace is no part of it
        ("/HEALTH", [], 401),  # public paths match exactly
        ("/health/", [], 401),
        ("/health/../search?q=dog", [], 401),  # Starlette does not normalise dot segments: no public-path bypass
        ("//health", [], 401),
        ("/health;x", [], 401),
        ("/saved", [], 401),
        ("/saved/x", [], 401),
        ("/info", [], 401),
    ],
)
def test_key_variants(keyed_port: int, path: str, headers: list[str], status: int):
    answer_status, answer = exchange(keyed_port, request("GET", path, "Host: 127.0.0.1", *headers))
    assert answer_status == status, answer
    assert KEY.encode() not in answer  # the key is never echoed


def test_saved_search_writes_need_the_key(keyed_port: int):
    for method, path in (
        ("POST", "/saved"),
        ("DELETE", "/saved/x"),
        ("PUT", "/saved/x/marks/abc"),
        ("DELETE", "/saved/x/marks/abc"),
    ):
        status, _ = exchange(
            keyed_port, request(method, path, "Host: 127.0.0.1", "Content-Type: application/json", body=b"{}")
        )
        assert status == 401, (method, path)


def test_many_wrong_keys_then_the_right_one(keyed_port: int):
    """No lockout (docs: no rate limits): 200 wrong keys on one keep-alive connection, each a 401, and it is closed each time."""
    with httpx.Client(base_url=f"http://127.0.0.1:{keyed_port}", timeout=ANSWER_S) as client:
        for n in range(200):
            answer = client.get("/search", params={"q": "dog"}, headers={"X-API-Key": f"guess-{n:020d}"})
            assert answer.status_code == 401 and answer.headers["connection"] == "close"
    assert_normal_client_served(keyed_port, {"X-API-Key": KEY})


def test_expect_100_continue_gets_no_continue_without_the_key(keyed_port: int):
    """RFC 9110 §10.1.1: a server may answer the final status instead of 100; the body is never asked for."""
    head = "\r\n".join(
        [
            "POST /search/image HTTP/1.1",
            "Host: 127.0.0.1",
            "Expect: 100-continue",
            "Content-Length: 40000000",
            "Content-Type: multipart/form-data; boundary=b",
            "",
            "",
        ]
    ).encode()
    with socket.create_connection(("127.0.0.1", keyed_port), timeout=ANSWER_S) as sock:
        sock.sendall(head)
        status, answer = read_answer(sock)
    assert status == 401 and b"100 Continue" not in answer


# --- Framing and connections (RFC 9112 §6, §7.1, §9.3; OWASP API4:2023) ------------------------------------------


def test_content_length_and_transfer_encoding_together_are_refused_and_the_connection_closed(port: int):
    """RFC 9112 §6.1: such a request is a smuggling shape; the server MUST close the connection after answering.

    h11 alone lets Transfer-Encoding win and keeps the connection open, so a front proxy that
    framed by Content-Length would see the rest as another request (CL.TE smuggling).
    """
    smuggled = request("GET", "/health", "Host: 127.0.0.1").replace(b"Connection: close\r\n", b"")
    body = b"0\r\n\r\n" + smuggled
    first = "\r\n".join(
        [
            "POST /search/composed HTTP/1.1",
            "Host: 127.0.0.1",
            f"Content-Length: {len(body)}",
            "Transfer-Encoding: chunked",
            "Content-Type: application/x-www-form-urlencoded",
            "",
            "",
        ]
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(first + body)
        status, answer = read_answer(sock)  # returns only once the server has closed the connection
    assert status == 400 and answer.count(b"HTTP/1.1 ") == 1 and b"Transfer-Encoding" in answer
    assert_normal_client_served(port)


@pytest.mark.parametrize(
    "coding", ["gzip, chunked", "chunked, chunked", "xchunked", "chunked\r\nTransfer-Encoding: chunked"]
)
def test_transfer_codings_h11_does_not_speak_are_refused(port: int, coding: str):
    head = f"POST /search/composed HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n"
    status, _ = exchange(port, head.encode())
    assert status in (400, 501)


def test_a_chunked_body_declaring_huge_chunks_is_cut_at_the_cap(port: int):
    """A chunk size of 4 GiB (and one past 64 bits) must neither be trusted nor buffered past the upload cap."""
    status, _ = exchange(
        port,
        b"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1"
        + b"0" * 40
        + b"\r\nabc",
    )
    assert status == 400
    head = b"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += b"Content-Type: multipart/form-data; boundary=b\r\n\r\nffffffff\r\n"
    head += b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    piece = b"x" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(head)
        try:
            for _ in range(MAX_QUERY_IMAGE_BYTES // len(piece) + 2):  # bounded: past the cap by two pieces
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        try:
            status, answer = read_answer(sock)
        except ConnectionResetError:
            status, answer = 413, b"(reset after the answer)"
    assert status == 413, answer[:300]
    assert_normal_client_served(port)


def test_a_short_content_length_turns_the_rest_into_a_request_the_guard_judges(port: int):
    """Pipelining (RFC 9112 §9.3.2): whatever follows a body is a request of its own, with its own Host check."""
    hidden = b"GET /search?q=dog HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    first = b"POST /search/composed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
    first += b"Content-Type: application/x-www-form-urlencoded\r\n\r\nk=1"
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(first + hidden)
        _, answer = read_answer(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)  # a JSON body ends with no newline before the next answer
    assert statuses == [b"400", b"403"], answer  # nothing to search for, then the hidden request's Host refused


def test_a_hundred_pipelined_requests_are_answered_in_order(port: int):
    requests = b"".join(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" for _ in range(99))
    requests += b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(requests)
        _, answer = read_answer(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 100


# --- Upgrades (cross-site WebSocket hijacking) ----------------------------------------------------------------


def test_a_cross_site_websocket_upgrade_is_not_switched(port: int):
    """Cross-site WebSocket hijacking: browsers send no preflight for an upgrade. The API has no WebSocket route."""
    upgrade = request(
        "GET",
        "/search?q=dog",
        "Host: 127.0.0.1",
        "Origin: https://evil.example",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ).replace(b"Connection: close", b"Connection: Upgrade")
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(upgrade)
        answer = sock.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 101") and answer.split(b" ")[1] in (b"403", b"404"), answer
