"""Connections the HTTP API's server keeps: bounded in header size and in how long a request may take to arrive.

uvicorn closes an idle keep-alive connection, but it has no deadline for a request's
headers: a socket that connects and sends nothing, or one byte a second, is kept for ever,
and hundreds of them would hold the server. :class:`BoundedH11Protocol` gives every
connection ``header_timeout`` seconds from its start, or from its last response, to
deliver a complete request line and headers; h11's own limit bounds what it buffers meanwhile. The
connection count itself is left unlimited (uvicorn's ``limit_concurrency`` counts idle
connections too, so it would turn normal clients away with 503 while sockets idle);
searches are bounded by the app instead (``IMAGE_SEARCH_API_MAX_SEARCHES``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

#: The largest request headers accepted, in bytes: h11 answers 400 to a request still incomplete past
#: it (so no more is ever buffered), and the API's guard 431 to a complete one that is larger.
MAX_HEADER_BYTES = 16 * 1024


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive in time."""

    #: Set by :func:`bounded_protocol`, the seconds a connection has to send its request headers.
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        """Close the connection unless a request's headers have arrived (it is then being answered)."""
        self._header_deadline = None
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.logger.debug("closing a connection that sent no complete request in %g s", self.header_timeout)
            self.transport.close()


def bounded_protocol(header_timeout: float) -> type[BoundedH11Protocol]:
    """:class:`BoundedH11Protocol` with ``header_timeout``, as uvicorn's ``http`` option takes a class."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"header_timeout": header_timeout})


def server_options(header_timeout: float) -> dict[str, Any]:
    """uvicorn's options for the API's connections (see the module docstring)."""
    return {
        "http": bounded_protocol(header_timeout),
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": 5,
        "limit_concurrency": None,
        "server_header": False,
        "proxy_headers": False,
    }
