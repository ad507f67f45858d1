"""A real uvicorn server over a query service on 127.0.0.1, and raw-socket helpers: the API boundary tests' support.

The server runs in a thread with the connection settings ``image-search api`` uses
(:func:`search_app.api_connections.server_options`), so each test sees what a client of
the real command would.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator

import httpx
import uvicorn

from resources.config import Settings
from search_app.api import create_app
from search_app.api_connections import server_options
from search_app.service import SearchService
from tests.pause import wait_until

KEY = "hostile-" + "0123456789abcdef" * 2


#: Seconds a connection has to send its headers, or may pause in its body: short, so closing is seen at once.
HEADER_TIMEOUT_S = 1.0


#: How long a test waits for an answer that must come; far above what it takes, so it never races.
ANSWER_S = 30

#: The one origin the attacked server allows by CORS (:func:`attacked_settings`).
APP_ORIGIN = "http://app.example"


def attacked_settings(settings: Settings) -> Settings:
    """The keyless server the attack tests share: loopback only, also answering ``search.lan`` and CORS for :data:`APP_ORIGIN`."""
    return settings.replace(api_header_timeout=HEADER_TIMEOUT_S, api_hosts="search.lan", api_cors_origins=APP_ORIGIN)


@contextmanager
def serving(service: SearchService, settings: Settings) -> Iterator[int]:
    """A real uvicorn server over ``service`` on a free port of 127.0.0.1, in a thread, until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(service, settings, warm_up=False), log_level="warning", **server_options(settings.api_header_timeout)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the server started")
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(ANSWER_S)
        sock.close()


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes the connection: the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S) as sock:
        sock.sendall(request)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *headers, "Connection: close", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def assert_normal_client_served(port: int, headers: dict[str, str] | None = None) -> None:
    answer = httpx.get(
        f"http://127.0.0.1:{port}/search", params={"q": "a red car", "k": 2}, headers=headers, timeout=ANSWER_S
    )
    assert answer.status_code == 200 and len(answer.json()["results"]) == 2


def held_service(service: SearchService, settings: Settings, gate) -> SearchService:
    """``service``'s index and encoder behind a text search that waits for ``gate`` (a ``threading.Event``) first.

    A search held there is work in flight at a known point: what a timeout or a full set
    of slots meets, without waiting on the clock for it.
    """

    class Held(SearchService):
        def search_text(self, *args, **kwargs):
            gate.wait(60)
            return super().search_text(*args, **kwargs)

    return Held(service.backend, settings, encoder=service.encoder())
