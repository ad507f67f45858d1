"""The one HTTP client: urllib3 pools that verify TLS, one retry policy, one meaning of "changed".

urllib3 rather than httpx: when photos are fetched many at a time the client's own CPU time
is the limit, and urllib3 spends less of it per request (measured: docs/results/download.md). Retries are
tenacity's, for what can heal only. A remote file has changed when its :class:`Validators`
differ: the release sensor and the release download both ask :meth:`Validators.changed_from`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.util.retry import Retry

USER_AGENT = "image-search/0.1 (+https://github.com/; photo catalog indexer)"
MAX_REDIRECTS = 5
#: Statuses another attempt may cure: a timeout, "too early", rate limits, a server or gateway down.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 8.0
#: The longest ``Retry-After`` honoured, so one server cannot park a worker for an hour.
RETRY_AFTER_CAP_S = 30.0


class Transient(Exception):
    """A failure another attempt may cure; ``retry_after`` is the server's ``Retry-After`` in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A request got no usable answer: no connection, a timeout, or ``status`` (set when the server answered)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def pool(
    *, timeout: float, maxsize: int = 1, accept: str = "*/*", max_redirects: int = MAX_REDIRECTS
) -> urllib3.PoolManager:
    """A keep-alive pool for ``maxsize`` threads: TLS verified, redirects followed, no retries of its own.

    Retries are :func:`retrying`'s alone, so each attempt is one request that a caller can
    count. Credentials are dropped on a redirect to another host (urllib3's default).
    """
    return urllib3.PoolManager(
        maxsize=maxsize,
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=Retry(total=None, connect=0, read=0, status=0, other=0, redirect=max_redirects),
        headers={"User-Agent": USER_AGENT, "Accept": accept},
        cert_reqs="CERT_REQUIRED",
    )


def retrying(
    attempts: int,
    *,
    initial_s: float = BACKOFF_INITIAL_S,
    max_s: float = BACKOFF_MAX_S,
    retry_after_cap_s: float = RETRY_AFTER_CAP_S,
    before_sleep=None,
) -> Retrying:
    """The project's retry policy: up to ``attempts`` tries of a call that raises :class:`Transient`.

    The waits grow exponentially with jitter from ``initial_s`` to ``max_s``, or follow the
    server's ``Retry-After`` up to ``retry_after_cap_s``. Any other exception ends at once;
    after the last attempt the last :class:`Transient` is raised.
    """
    backoff = wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)

    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(exc.retry_after, retry_after_cap_s)
        return backoff(state)

    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception_type(Transient),
        reraise=True,
        before_sleep=before_sleep,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def cause(exc: BaseException) -> BaseException:
    """The error behind a urllib3 ``MaxRetryError`` (which names the URL, query included), else ``exc``."""
    return exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc


def final_url(url: str, response: urllib3.BaseHTTPResponse) -> str:
    """The absolute address that answered ``url``, after the redirects urllib3 followed."""
    for step in response.retries.history if response.retries else ():
        if step.redirect_location:
            url = urljoin(step.url, step.redirect_location)
    return url


@dataclass(frozen=True)
class Validators:
    """What a server says about a remote file without sending it: where it is, its ETag, date and length.

    ``url`` is the final address without its query (a signed redirect changes its query on
    every request), ``length`` the whole file's (a partial answer's ``Content-Range`` total).
    """

    url: str
    etag: str = ""
    last_modified: str = ""
    length: str = ""

    @classmethod
    def of(cls, url: str, response: urllib3.BaseHTTPResponse) -> "Validators":
        """The validators of ``response`` to a request for ``url``."""
        parts = urlsplit(final_url(url, response))
        headers = response.headers
        length = headers.get("Content-Length", "")
        if response.status == 206:
            length = headers.get("Content-Range", "").rpartition("/")[2].strip()
            length = "" if length == "*" else length
        return cls(
            f"{parts.scheme}://{parts.hostname}{unquote(parts.path)}",
            headers.get("ETag", ""),
            headers.get("Last-Modified", ""),
            length,
        )

    @classmethod
    def from_dict(cls, data: dict | None) -> "Validators | None":
        """Validators saved with :meth:`as_dict`, or None for ``None`` or another shape."""
        try:
            return cls(**data) if data else None
        except TypeError:
            return None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def known(self) -> bool:
        """Whether the server sent anything that tells one version from another."""
        return bool(self.etag or self.last_modified or self.length)

    @property
    def if_range(self) -> str:
        """The validator for an ``If-Range`` header: a strong ETag, else the date (RFC 9110 13.1.5), else nothing."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def changed_from(self, previous: "Validators | None") -> bool:
        """Whether the file may differ from the one ``previous`` described: any validator differs, or none is known."""
        return not self.known or self != previous

    def fingerprint(self) -> str:
        """A short digest of the validators (the release sensor's cursor)."""
        parts = [self.url, self.etag, self.last_modified, self.length]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:16]


def head(url: str, *, timeout: float, client: urllib3.PoolManager | None = None) -> Validators:
    """The :class:`Validators` of ``url`` from a ``HEAD`` request; :class:`RequestFailed` if none came."""
    manager = client or pool(timeout=timeout)
    try:
        response = manager.request("HEAD", url)
    except (HTTPError, ValueError) as exc:
        raise RequestFailed(type(cause(exc)).__name__) from None
    finally:
        if client is None:
            manager.clear()
    if response.status >= 400:
        raise RequestFailed(f"HTTP {response.status}", response.status)
    return Validators.of(url, response)
