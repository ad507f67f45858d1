"""Hostile requests against a real uvicorn server on 127.0.0.1, with the connection settings ``image-search api`` uses.

Each test sends what an attacker would, over real sockets (a rebinding Host, a cross-site
browser POST, a proxy's headers, an unauthenticated 50 MB upload that never sends its body,
oversized headers, hundreds of idle and trickling connections, formats and ids that must
not be decoded or looked up), checks the documented answer, and then that a normal client
is still served. One server without a key and one with a key serve the whole module, on
the module's real query service over the sample index.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Iterator

import httpx
import pytest
from PIL import Image

from resources.config import Settings
from search_app.service import SearchService
from tests.api_server import (
    ANSWER_S,
    HEADER_TIMEOUT_S,
    KEY,
    assert_normal_client_served,
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
    """The keyless server (loopback only), which also answers the configured host ``search.lan``."""
    with serving(service, settings.replace(api_header_timeout=HEADER_TIMEOUT_S, api_hosts="search.lan")) as port:
        yield port


@pytest.fixture(scope="module")
def keyed_port(service: SearchService, settings: Settings) -> Iterator[int]:
    with serving(service, settings.replace(api_header_timeout=HEADER_TIMEOUT_S, api_key=KEY)) as port:
        yield port


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (["Host: attacker.example"], b"host 'attacker.example' is not answered without a key"),
        (["Host: rebound.attacker.example:8502"], b"IMAGE_SEARCH_API_HOSTS"),
        (["Host: 127.0.0.1", "Origin: https://evil.example"], b"cross-site browser requests are refused"),
        (["Host: 127.0.0.1", "Origin: null"], b"cross-site browser requests are refused"),
        (["Host: 127.0.0.1", "Sec-Fetch-Site: cross-site"], b"cross-site browser requests are refused"),
        (
            ["Host: 127.0.0.1", "X-Forwarded-For: 203.0.113.9"],
            b"came through a proxy and the API has no key: set IMAGE_SEARCH_API_KEY",
        ),
        (["Host: 127.0.0.1", "Forwarded: for=203.0.113.9"], b"set IMAGE_SEARCH_API_KEY"),
    ],
)
def test_without_a_key_only_local_programs_are_answered(port: int, headers: list[str], detail: bytes):
    for method, path in (("GET", "/search?q=dog"), ("GET", "/health")):
        status, answer = exchange(port, request(method, path, *headers))
        assert status == 403 and detail in answer and b"application/problem+json" in answer
    assert_normal_client_served(port)


def test_a_blind_cross_site_multipart_post_is_refused_before_its_body(port: int):
    form = b'--b\r\nContent-Disposition: form-data; name="expr"\r\n\r\nbeach\r\n--b--\r\n'
    status, answer = exchange(
        port,
        request(
            "POST",
            "/search/composed",
            "Host: 127.0.0.1",
            "Origin: https://evil.example",
            "Sec-Fetch-Site: cross-site",
            "Content-Type: multipart/form-data; boundary=b",
            body=form,
        ),
    )
    assert status == 403 and b"cross-site" in answer
    configured = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": "search.lan"}, timeout=ANSWER_S)
    assert configured.status_code == 200 and configured.json() == {"status": "ok"}


def test_an_unauthenticated_50_mb_upload_is_answered_401_from_its_headers(keyed_port: int):
    """The headers announce 50 MB and the body never comes: the 401 must arrive without it."""
    for key in ([], ["X-API-Key: " + "wrong" * 8]):
        head = "\r\n".join(
            [
                "POST /search/image HTTP/1.1",
                "Host: api.example",
                *key,
                f"Content-Length: {50 * 1024 * 1024}",
                "Content-Type: multipart/form-data; boundary=b",
                "",
                "",
            ]
        ).encode()
        with socket.create_connection(("127.0.0.1", keyed_port), timeout=ANSWER_S) as sock:
            sock.sendall(head)
            status, answer = read_answer(sock)
        assert status == 401 and b"missing or wrong API key" in answer
    assert_normal_client_served(keyed_port, {"X-API-Key": KEY})
    assert httpx.get(f"http://127.0.0.1:{keyed_port}/health", timeout=ANSWER_S).json() == {"status": "ok"}


def test_oversized_headers_and_a_stalled_body_are_refused(port: int):
    status, answer = exchange(port, request("GET", "/health", "Host: 127.0.0.1", "X-Padding: " + "a" * 20_000))
    assert status == 431 and b"larger than 16 KB" in answer
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:  # headers that never end
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Padding: " + b"a" * 20_000)
        try:  # a 400, unless the close with the rest unread reaches the client first as a reset
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    stalled = request("POST", "/search/image", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=b")
    stalled = stalled.replace(b"Content-Length: 0", b"Content-Length: 1000") + b"--b\r\n"
    status, answer = exchange(port, stalled)
    assert status == 408 and b"paused for more than 1 s" in answer
    assert_normal_client_served(port)


def test_a_body_that_trickles_in_is_refused_once_the_grace_has_passed(port: int):
    head = request("POST", "/search/image", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=b")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 100000")
    # A valid part's head, then its data a byte at a time: the multipart parser has nothing to
    # refuse (a stray byte before the boundary would be its 400, racing the rate check), so
    # the guard's 408 is the only answer, however loaded the machine.
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(head + part)
        sock.setblocking(False)
        answer = b""
        for _ in range(40):  # a byte every half second: never a pause of 1 s, far below 16 KB/s
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(HEADER_TIMEOUT_S / 2)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                continue
            break
    assert answer.startswith(b"HTTP/1.1 408 ") and b"slower than 16 KB/s" in answer
    assert_normal_client_served(port)


def test_hundreds_of_idle_and_trickling_sockets_leave_a_normal_client_served_and_are_closed(port: int):
    idle = [socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) for _ in range(200)]
    trickling = [socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) for _ in range(50)]
    try:
        for sock in trickling:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for sock in trickling:
            sock.sendall(b"a")
        assert_normal_client_served(port)
        for sock in idle + trickling:  # each is closed by the server once its header deadline passes
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in idle + trickling:
            sock.close()
    assert_normal_client_served(port)


def test_images_and_ids_that_must_not_be_decoded_or_looked_up(port: int):
    from tests.images import bomb_png

    eps = io.BytesIO()
    Image.new("RGB", (16, 16)).save(eps, format="EPS")
    for data, status, detail in ((eps.getvalue(), 415, "EPS image"), (bomb_png(6400, 6400), 413, "declares 6400x6400")):
        answer = httpx.post(f"http://127.0.0.1:{port}/search/image", files={"image": ("a.jpg", data)}, timeout=ANSWER_S)
        assert answer.status_code == status and detail in answer.json()["detail"]
    for path, expected in (
        ("/photos/../../etc/passwd", 404),
        ("/photos/..", 422),
        ("/photos/%2e%2e", 422),
        ("/photos/a%01b/similar", 422),
        ("/photos/a%2Fb", 404),
    ):
        status, _ = exchange(port, request("GET", path, "Host: 127.0.0.1"))
        assert status == expected, path
    assert_normal_client_served(port)
