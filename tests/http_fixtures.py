"""A real HTTP server on 127.0.0.1 that serves generated images and injects failures.

Used by the download tests, the download benchmark and the fault tests of other stages:

    with FaultServer(latency_ms=50) as server:
        server.add("/a.jpg", jpeg_bytes(640, 427))
        server.add("/flaky.jpg", jpeg_bytes(64, 64), fail_first=[(500, {})])
        url = server.url("/a.jpg")

:func:`standard_faults` registers one route per bad input the pipeline must survive and
returns what each should end as (stored, or the ledger reason).

Everything is generated here; nothing comes from the Unsplash data set.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.images import (
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    exif_rotated_jpeg,
    greyscale_jpeg,
    jpeg_bytes,
    palette_png_transparent,
    photo_jpeg,
    png16,
    progressive_jpeg,
    rgba_png,
    webp_bytes,
)


@dataclass
class Route:
    """What the server answers on one path."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    #: (status, headers) answered to the first requests, one per request, before the normal answer.
    fail_first: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    redirect_to: str | None = None
    #: Send a Content-Length larger than the body, then close: a connection cut mid-transfer.
    cut_short: bool = False


class _QuietServer(ThreadingHTTPServer):
    """Clients that give up (timeouts, redirect loops) drop connections: not worth a traceback."""

    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) with registered routes.

    ``latency_ms`` is added before every answer (the benchmark's simulated network).
    ``hits`` counts requests per path, so tests can assert a re-run fetched nothing.
    :meth:`hold` keeps requests in flight until the test lets them go, so a test can see
    how many are in flight at once, or kill a client while it waits, without racing it.
    """

    def __init__(self, latency_ms: float = 0.0):
        self.latency_s = latency_ms / 1000.0
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._served: Counter[str] = Counter()
        self._gate = threading.Condition()
        self._admit_before_hold: int | None = None
        self._held = 0
        self._round = 0
        self._dropping = False
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **options) -> str:
        """Register ``path`` (see :class:`Route` for the options) and return its URL."""
        self.routes[path] = Route(body=body, **options)
        return self.url(path)

    def start(self) -> "FaultServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def hold(self, after: int = 0) -> None:
        """Answer the next ``after`` requests, then hold each later one, uncounted, until :meth:`release`."""
        with self._gate:
            self._admit_before_hold = after

    def wait_held(self, count: int, give_up_s: float = 120.0) -> None:
        """Block until ``count`` requests are held at once; ``give_up_s`` only guards against a hung test."""
        with self._gate:
            if not self._gate.wait_for(lambda: self._held >= count, timeout=give_up_s):
                raise AssertionError(f"{self._held} requests held at once after {give_up_s:g} s, expected {count}")

    def release(self, drop: bool = False) -> None:
        """Stop holding: the held requests are answered, or with ``drop`` closed unanswered and never counted."""
        with self._gate:
            self._admit_before_hold = None
            self._dropping = drop
            self._round += 1
            self._gate.notify_all()

    def _admit(self) -> bool:
        """Whether to answer a request now; a held one waits here for :meth:`release`."""
        with self._gate:
            if self._admit_before_hold is None:
                return True
            if self._admit_before_hold > 0:
                self._admit_before_hold -= 1
                return True
            self._held += 1
            self._gate.notify_all()
            round_ = self._round
            self._gate.wait_for(lambda: self._round != round_)
            self._held -= 1
            return not self._dropping

    def _next_failure(self, path: str, route: Route) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            self.hits[path] += 1
            index = self._served[path]
            self._served[path] += 1
        return route.fail_first[index] if index < len(route.fail_first) else None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - the base class's signature
                pass

            def do_GET(self):  # noqa: N802 - the base class's naming
                if not server._admit():
                    self.close_connection = True
                    return None
                path = self.path.split("?", 1)[0]
                route = server.routes.get(path)
                if server.latency_s:
                    time.sleep(server.latency_s)
                if route is None:
                    server.hits[path] += 1
                    return self._answer(404, b"not found", "text/plain")
                failure = server._next_failure(path, route)
                if route.delay_s:
                    time.sleep(route.delay_s)
                if failure is not None:
                    status, headers = failure
                    return self._answer(status, b"try again", "text/plain", headers)
                if route.redirect_to is not None:
                    return self._answer(302, b"", "text/plain", {"Location": route.redirect_to})
                if route.cut_short:
                    self.send_response(200)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body) * 2 + 10))
                    self.end_headers()
                    self.wfile.write(route.body)
                    self.close_connection = True
                    return None
                return self._answer(route.status, route.body, route.content_type, route.headers)

            def _answer(self, status, body, content_type, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler


class CollectingLog:
    """Collects the lines a download logs (it takes any object with ``info`` and ``warning``)."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)

    warning = info


def serve_photos(server: FaultServer, count: int, distinct: int = 16) -> list[tuple[str, str]]:
    """Register ``count`` photos at ``/photos/<i>.jpg`` (``distinct`` different bodies); returns (id, url)."""
    bodies = [photo_jpeg(seed=seed) for seed in range(min(distinct, count))]
    return [(f"photo{i:06d}", server.add(f"/photos/{i}.jpg", bodies[i % len(bodies)])) for i in range(count)]


@dataclass(frozen=True)
class FaultCase:
    """One registered bad (or awkward) input and what it must end as."""

    name: str
    path: str
    #: ``None`` when the image must be stored; else the ledger reason.
    reason: str | None


def standard_faults(server: FaultServer, timeout_s: float) -> list[FaultCase]:
    """Register every input from issue 3's "Bad input" list on ``server``.

    ``timeout_s`` is the client's per-request timeout: the slow route answers after twice
    that. Returns one :class:`FaultCase` per route.
    """
    good = jpeg_bytes(64, 48, seed=1)
    cases = [
        ("plain_jpeg", dict(body=good), None),
        ("truncated_jpeg", dict(body=jpeg_bytes(64, 48, seed=2)[:300]), "undecodable"),
        ("html_as_image", dict(body=b"<html><body>Not here</body></html>", content_type="image/jpeg"), "undecodable"),
        ("html_content_type", dict(body=b"<html></html>", content_type="text/html; charset=utf-8"), "not_an_image"),
        ("empty_body", dict(body=b""), "empty_body"),
        ("not_found", dict(status=404, body=b"gone", content_type="text/plain"), "http_404"),
        ("forbidden", dict(status=403, body=b"no", content_type="text/plain"), "http_403"),
        ("error_then_ok", dict(body=jpeg_bytes(64, 48, seed=3), fail_first=[(500, {}), (503, {})]), None),
        ("rate_limited_then_ok", dict(body=jpeg_bytes(64, 48, seed=4), fail_first=[(429, {"Retry-After": "1"})]), None),
        ("always_500", dict(body=good, fail_first=[(500, {})] * 20), "http_500"),
        ("slower_than_timeout", dict(body=good, delay_s=2 * timeout_s), "timeout"),
        ("redirect_loop", dict(redirect_to="/faults/redirect_loop.jpg"), "too_many_redirects"),
        ("cut_short", dict(body=good[: len(good) // 2], cut_short=True), "connection_error"),
        ("cmyk", dict(body=cmyk_jpeg()), None),
        ("greyscale", dict(body=greyscale_jpeg()), None),
        ("png16", dict(body=png16(), content_type="image/png"), None),
        ("palette_transparent", dict(body=palette_png_transparent(), content_type="image/png"), None),
        ("rgba", dict(body=rgba_png(), content_type="image/png"), None),
        ("exif_rotated", dict(body=exif_rotated_jpeg()), None),
        ("animated_gif", dict(body=animated_gif(), content_type="image/gif"), "unsupported_format"),
        ("webp", dict(body=webp_bytes(), content_type="image/webp"), None),
        ("progressive", dict(body=progressive_jpeg()), None),
        ("bomb_20000x20000", dict(body=bomb_png(), content_type="image/png"), "too_many_pixels"),
    ]
    result = []
    for name, options, reason in cases:
        path = f"/faults/{name}.jpg"
        server.add(path, **options)
        result.append(FaultCase(name, path, reason))
    return result


def main(argv: list[str] | None = None) -> None:
    """Serve ``--images`` photos in this process until killed; print the base URL first.

    The download benchmark runs it as a separate process, so the server's CPU time is not
    counted against the client it measures.
    """
    import argparse

    parser = argparse.ArgumentParser(description="serve generated photos on 127.0.0.1")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = FaultServer(latency_ms=args.latency_ms)
    serve_photos(server, args.images)
    print(server.url(""), flush=True)
    server._httpd.serve_forever()


if __name__ == "__main__":
    main()


class ZipServer:
    """Serves one body at /release.zip with Range and If-Range (RFC 9110 13.1.5); can cut the first N responses short.

    ``etag`` and ``last_modified`` are the validators it sends (None: that header is left
    out); ``head_length=False`` leaves Content-Length out of HEAD answers, as a server that
    streams its files does.
    """

    def __init__(
        self,
        body: bytes,
        cut_at: int | None = None,
        cuts: int = 1,
        status: int = 200,
        etag: str | None = '"v1"',
        last_modified: str | None = None,
        head_length: bool = True,
    ):
        self.body, self.cut_at, self.cuts, self.status = body, cut_at, cuts, status
        self.etag, self.last_modified, self.head_length = etag, last_modified, head_length
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def validators(self):
                if server.etag is not None:
                    self.send_header("ETag", server.etag)
                if server.last_modified is not None:
                    self.send_header("Last-Modified", server.last_modified)

            def do_HEAD(self):
                self.send_response(server.status)
                if server.head_length:
                    self.send_header("Content-Length", str(len(server.body)))
                self.validators()
                self.end_headers()

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if server.status != 200:
                    self.send_response(server.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = (
                    int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
                )
                if self.headers.get("If-Range") not in (None, server.etag, server.last_modified):
                    start = 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                self.send_header("Content-Length", str(len(server.body) - start))
                self.validators()
                self.end_headers()
                end = len(server.body)
                if server.cut_at is not None and server.cuts > 0:
                    server.cuts -= 1
                    end = server.cut_at
                self.wfile.write(server.body[start:end])
                self.wfile.flush()
                if end < len(server.body):
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release.zip"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


#: Without a key the API answers only a Host of this machine (TestClient's default is "testserver").
#: The base URL the API tests' TestClient talks to (the port the service listens on by default).
LOCAL = "http://127.0.0.1:8502"


def assert_problem(response, status: int, detail_part: str) -> None:
    """The API answered ``status`` as an RFC 9457 problem whose one-line detail holds ``detail_part``."""
    from search_app.api import PROBLEM

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and detail_part in body["detail"], body
    assert "\n" not in body["detail"]


class PostServer(FaultServer):
    """:class:`FaultServer` that also takes POSTs: each route's failures first, then 200; bodies kept in ``posted``."""

    def __init__(self):
        super().__init__()
        self.posted: list[dict] = []

    def _handler_class(self):
        server, base = self, super()._handler_class()

        class Handler(base):
            def do_POST(self):  # noqa: N802 - the base class's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?", 1)[0]
                route = server.routes.get(path)
                if route is None:
                    return self._answer(404, b"not found", "text/plain")
                failure = server._next_failure(path, route)
                if failure is not None:
                    return self._answer(failure[0], b"try again", "text/plain", failure[1])
                server.posted.append({"type": self.headers["Content-Type"], **json.loads(body)})
                return self._answer(route.status, b"{}", "application/json")

        return Handler
