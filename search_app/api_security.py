"""Who the HTTP API answers, decided from a request's headers before its body is read.

:class:`Guard` is plain ASGI middleware in front of every route. It gives each request an
id, then, from the headers alone:

- with ``IMAGE_SEARCH_API_KEY`` set, refuses (401) a request whose ``X-API-Key`` is missing
  or wrong, before a byte of its body is read, so an unauthenticated upload costs nothing;
- without a key, answers only what a local program sends: a ``Host`` of this machine
  (127.0.0.1, localhost, [::1], or ``IMAGE_SEARCH_API_HOSTS``), no cross-site browser
  request (``Origin``, ``Sec-Fetch-Site``), and nothing relayed by a proxy (``Forwarded``,
  ``X-Forwarded-*``), which would make every caller look local (403 each). Loopback is not
  authentication: a web page can make a browser send requests to 127.0.0.1;
- refuses (400) a request framed by both Content-Length and Transfer-Encoding (RFC 9112
  §6.1, request smuggling) and closes its connection;
- bounds the body (413 over the cap) and how long it may pause while sending it (408);
- turns any unexpected exception into a problem+json 500 naming the request id, which the
  server's log names too.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
import uuid
from typing import Any

import anyio
from starlette.exceptions import HTTPException

from resources.config import Settings, env_variable
from resources.errors import ImageSearchError
from search_app.api_connections import MAX_HEADER_BYTES
from search_app.api_models import API_KEY_HEADER, problem

#: The slowest average a request body may come at once the pause limit has passed (bytes per second).
MIN_BODY_RATE = 16 * 1024

log = logging.getLogger(__name__)

MIN_API_KEY_CHARS = 16
#: Pages anyone may read, with or without a key (the service's state says only up or down).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
REQUEST_ID_HEADER = "X-Request-ID"
_PROXY_HEADERS = (b"forwarded", b"x-real-ip")
#: A ``Host`` value: a bracketed IPv6 address or a name without colons, then an optional port of digits.
_HOST_AND_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse, in one line, to listen beyond loopback without an API key, or with a short one."""
    variable = env_variable("api_key")
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not is_loopback(host) and not key:
        raise ImageSearchError(
            f"refusing to serve the API on {host} without a key: set {variable} (callers send it as "
            f"{API_KEY_HEADER}), or listen on 127.0.0.1"
        )
    if key and len(key) < MIN_API_KEY_CHARS:
        raise ImageSearchError(
            f"{variable} is shorter than {MIN_API_KEY_CHARS} characters: use a long random one, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8502`` is ``[::1]``, ``Localhost:80`` ``localhost``.

    Only digits may follow the name (RFC 9110 §7.2, ``uri-host [ ":" port ]``): anything else,
    ``[::1]evil`` or ``127.0.0.1:80@evil``, is kept whole, so it names no loopback address.
    """
    host = host.strip().lower()
    match = _HOST_AND_PORT.fullmatch(host)
    return match.group(1) if match else host


def listed(value: str | None) -> list[str]:
    """The items of a comma-separated setting, trimmed, blanks dropped."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class Guard:
    """The checks every request passes on its headers alone (see the module docstring)."""

    def __init__(self, app: Any, settings: Settings, *, max_body: int):
        self.app = app
        self.key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.hosts = frozenset(h.lower() for h in listed(settings.api_hosts))
        self.origins = frozenset(listed(settings.api_cors_origins))
        self.max_body = max_body
        self.pause_s = settings.api_header_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and self.refusal(scope) is not None:
            await send({"type": "websocket.close", "code": 1008})  # RFC 6455 §7.4.1: policy violation
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def tagged(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            refusal.headers["Connection"] = "close"  # the body, if any, is never read
            await refusal(scope, receive, tagged)
            return
        try:
            await self.app(scope, self._bounded(receive), tagged)
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if not started:
                detail = f"an unexpected error on the server; its log names this request {request_id}"
                await problem(500, detail)(scope, receive, tagged)

    def refusal(self, scope: dict) -> Any:
        """The problem response that refuses the request from its headers, or ``None`` to let it in."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        if sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            return problem(431, f"the request's headers are larger than {MAX_HEADER_BYTES // 1024} KB: send fewer")
        if b"transfer-encoding" in headers and b"content-length" in headers:  # RFC 9112 §6.1: a smuggling shape
            return problem(400, "the request has both Content-Length and Transfer-Encoding: send only one")
        if self.key is not None:
            if scope["path"] in PUBLIC_PATHS:
                return self._too_large(headers)
            given = headers.get(API_KEY_HEADER.lower().encode())
            if given is None or not hmac.compare_digest(given, self.key):
                return problem(
                    401,
                    f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                    {"WWW-Authenticate": "ApiKey"},
                )
            return self._too_large(headers)
        return self._not_local(headers) or self._too_large(headers)

    def _not_local(self, headers: dict[bytes, bytes]) -> Any:
        """Without a key: refuse what a local program would not send (a proxy's, a browser's cross-site request)."""
        variable = env_variable("api_key")
        if any(name in _PROXY_HEADERS or name.startswith(b"x-forwarded-") for name in headers):
            return problem(
                403,
                f"this request came through a proxy and the API has no key: set {variable} on the server "
                f"and send it as {API_KEY_HEADER}",
            )
        authority = headers.get(b"host", b"").decode("latin-1").strip().lower()
        host = host_name(authority)
        if not (is_loopback(host) or host in self.hosts):
            return problem(
                403,
                f"host {host or '(none)'!r} is not answered without a key: call 127.0.0.1 or localhost, list "
                f"the name in {env_variable('api_hosts')}, or set {variable}",
            )
        origin = headers.get(b"origin", b"").decode("latin-1")
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if origin in self.origins:
            return None
        if site in ("cross-site", "same-site") or (origin and origin.split("://", 1)[-1].lower() != authority):
            return problem(
                403,
                f"cross-site browser requests are refused: list the page's origin in "
                f"{env_variable('api_cors_origins')}, or set {variable}",
            )
        return None

    def _too_large(self, headers: dict[bytes, bytes]) -> Any:
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return problem(413, self._too_large_detail())
        return None

    def _too_large_detail(self) -> str:
        return f"the request body is larger than {self.max_body // (1024 * 1024)} MB: send a smaller image"

    def _bounded(self, receive: Any) -> Any:
        """``receive`` that refuses a body over the cap (413), one that pauses too long, and one that trickles (408).

        Past a grace of the pause limit, the body must keep coming at :data:`MIN_BODY_RATE` on
        average, as Kestrel's ``MinRequestBodyDataRate`` does, so a client sending a byte now
        and then cannot hold a connection for as long as the size cap allows (slowloris).
        """
        received, complete, started = 0, False, time.monotonic()

        async def bounded() -> dict:
            nonlocal received, complete
            if complete:
                return await receive()
            with anyio.move_on_after(self.pause_s) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise HTTPException(
                    408,
                    f"the request body paused for more than {self.pause_s:g} s: send it without stopping",
                    headers={"Connection": "close"},
                )
            if message["type"] == "http.request":
                complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, self._too_large_detail(), headers={"Connection": "close"})
                elapsed = time.monotonic() - started
                if not complete and elapsed > self.pause_s and received < MIN_BODY_RATE * elapsed:
                    raise HTTPException(
                        408,
                        f"the request body came slower than {MIN_BODY_RATE // 1024} KB/s: send it at full speed",
                        headers={"Connection": "close"},
                    )
            return message

        return bounded
