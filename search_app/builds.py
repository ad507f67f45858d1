"""One request, one build: the backend as one query sees it, from its first read to its last.

A refresh may publish a new build while a query runs; a query that read the build info of
one build and the vectors of the next would mix two indexes. :func:`one_build` holds a
query to the build published when it began (:meth:`SearchBackend.pinned`).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable

from resources.errors import ImageSearchError, NotFoundError, ServerSideError, UnavailableError
from resources.index.base import SearchBackend


class OneBuild:
    """One request's view of the backend: held at the build published when it began (``pinned``).

    Every call answers from that build, so a search, its hybrid half and its duplicate
    collapsing never mix two builds. A failure the backend reports as a plain
    :class:`ImageSearchError` (a damaged build, a vector size the index does not hold, a
    cluster refusing the service's credentials) is the server's, never the caller's: it
    becomes a :class:`ServerSideError`.
    """

    def __init__(self, backend: SearchBackend):
        self.engine = backend.engine
        self._backend = _servers_own(backend.pinned)()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return _servers_own(getattr(self._backend, name))


def _servers_own(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, its plain :class:`ImageSearchError`\\ s turned into :class:`ServerSideError` (see :class:`OneBuild`)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (NotFoundError, UnavailableError, ServerSideError):
            raise
        except ImageSearchError as exc:
            raise ServerSideError(str(exc)) from exc

    return call


#: The service and its view of the backend for the request running in this context.
_REQUEST: contextvars.ContextVar[tuple[Any, OneBuild] | None] = contextvars.ContextVar(
    "image_search_request", default=None
)


def one_build(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` against one build from start to end; nested calls share the outer call's build."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if request_view(self) is not None:
            return method(self, *args, **kwargs)
        token = _REQUEST.set((self, OneBuild(self.backend)))
        try:
            return method(self, *args, **kwargs)
        finally:
            _REQUEST.reset(token)

    return run


def request_view(service: Any) -> OneBuild | None:
    """The view of the request ``service`` is running in this context, if any."""
    current = _REQUEST.get()
    return current[1] if current is not None and current[0] is service else None
