"""Fetch photos into the image store: concurrent, retried, validated, normalised, atomic.

Plain Python (no Dagster), so the ``images`` asset, the benchmark and the tests share it.
Each (photo_id, url) pair ends as exactly one :class:`FetchResult`: a stored RGB JPEG or a
failure with a ``reason`` for the ledger; a bad photo never stops the others. Why each step
(retries, caps, normalisation, broken hosts against outages): docs/images-and-embeddings.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit
from urllib.request import url2pathname

from PIL import Image
from publicsuffixlist import PublicSuffixList
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    LocationValueError,
    NameResolutionError,
    ReadTimeoutError,
    ResponseError,
)

from resources import http_client
from resources.config import Settings
from resources.errors import ImageSearchError, TooLargeError, UnsupportedTypeError
from resources.images.image_store import ImageStore
from resources.images.pictures import MAX_PIXELS, is_upright, open_image, upright_rgb
from resources.storage.files import write_bytes

IMGIX_HOST = "images.unsplash.com"
MAX_BYTES = 50 * 1024 * 1024
MAX_ATTEMPTS = 4
JPEG_QUALITY = 90

#: Content types accepted before decoding; anything else (text/html, application/json) is
#: refused. Octet-stream is allowed because some object stores serve every file as it.
_ACCEPTED_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
_CHUNK_BYTES = 256 * 1024


#: Ledger reasons that a later run could cure (a server back up, a file put in place, DNS
#: working again); every other reason is permanent for the same URL and is not retried by a re-run.
TRANSIENT_REASONS = frozenset({"timeout", "connection_error", "dns_unavailable", "missing_file", "unreadable_file"})
#: Top-level names that exist only on private networks, where a host may well resolve:
#: RFC 6761's localhost, test and example, RFC 6762's local and the names its appendix G
#: lists as used on internal networks.
_PRIVATE_TLDS = frozenset(
    {"localhost", "test", "example", "local", "intranet", "internal", "private", "corp", "home", "lan"}
)
#: getaddrinfo's answers for a name that does not exist (as opposed to a resolver that failed).
_NO_SUCH_NAME = frozenset(code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None)


def is_transient(reason: str) -> bool:
    """Whether a photo that failed for ``reason`` is worth fetching again on the next run."""
    if reason in TRANSIENT_REASONS:
        return True
    if reason.startswith("http_") and reason[5:].isdigit():
        return int(reason[5:]) in http_client.RETRY_STATUSES
    return False


@functools.lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    """The ICANN part of the Public Suffix List as the publicsuffixlist package ships it (no network)."""
    return PublicSuffixList(only_icann=True)


@functools.lru_cache(maxsize=4096)
def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be a web host, or None; decided from the name alone, so no outage can cause it.

    A name of several labels whose last label is not a top-level domain of the Public
    Suffix List (``images.unsplash.com.jpg``) can never resolve on the internet. IP
    addresses, single-label names (``minio``, a container's name) and names under the
    private-network top-level names of :data:`_PRIVATE_TLDS` (``svc.cluster.local``) are left
    to name resolution: they may well exist where the pipeline runs.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip(".").lower().split(".")
    if len(labels) < 2 or labels[-1] in _PRIVATE_TLDS:
        return None
    if _public_suffixes().publicsuffix(host.rstrip(".").lower(), accept_unknown=False) is None:
        return f"{labels[-1]!r} is not a top-level domain, so {host} cannot be a web host"
    return None


def _is_public_host(host: str) -> bool:
    """Whether ``host`` is an internet name (under a public suffix): one that resolves only if DNS works."""
    return _public_suffixes().publicsuffix(host.rstrip(".").lower(), accept_unknown=False) is not None


class FetchFailure(Exception):
    """One photo could not be stored; ``reason`` is the ledger's short code."""

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class _Transient(FetchFailure, http_client.Transient):
    """A failure worth another attempt (5xx, 429, a dropped connection, a timeout)."""


@dataclass(frozen=True)
class FetchResult:
    """The outcome for one photo: stored (``reason is None``) or failed with a reason."""

    photo_id: str
    url: str
    reason: str | None = None
    detail: str = ""
    attempts: int = 0
    bytes: int = 0
    sha256: str = ""
    width: int = 0
    height: int = 0
    kept_original: bool = False
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """Whether the image is now in the store."""
        return self.reason is None


@dataclass(frozen=True)
class Progress:
    """How far a :meth:`Downloader.fetch_all` call is; passed to the progress callback."""

    done: int
    total: int | None
    failed: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Photos finished per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def describe(self) -> str:
        """One log line: count, share, rate, ETA and failures."""
        eta = self.eta_s
        share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        total = f"/{self.total}" if self.total is not None else ""
        eta_text = f", ETA {_duration(eta)}" if eta is not None else ""
        return f"{self.done}{total}{share} photos, {self.rate:.1f}/s{eta_text}, {self.failed} failed"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@functools.lru_cache(maxsize=16384)
def with_imgix_params(url: str, params: str) -> str:
    """``url`` with ``params`` merged into its query when it is an Unsplash imgix URL.

    imgix serves any size on request: asking for ``w=640&fm=jpg`` fetches a ~100 KB JPEG
    instead of a multi-megabyte original, and CLIP sees 224 x 224 anyway. The configured
    parameters win over ones already in the URL. Cached, since every search result
    rewrites the URL of a photo that is often shown again.
    """
    parts = urlsplit(url)
    if not params or parts.hostname != IMGIX_HOST:
        return url
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(parse_qsl(params, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def normalise_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[bytes, int, int, bool]:
    """Validate ``data`` as an image and return (RGB JPEG bytes, width, height, kept original).

    Raises :class:`FetchFailure` with reason ``empty_body``, ``too_many_pixels``,
    ``unsupported_format`` (an image, but not JPEG, PNG or WebP) or ``undecodable``. The image is opened by :func:`resources.images.pictures.open_image`: JPEG, PNG
    or WebP only, the pixel cap checked on the header, before any pixel is decoded.
    """
    if not data:
        raise FetchFailure("empty_body", "the response had no bytes")
    try:
        image = open_image(data, max_pixels=max_pixels)
    except TooLargeError as exc:
        raise FetchFailure("too_many_pixels", str(exc)) from None
    except UnsupportedTypeError as exc:
        raise FetchFailure("unsupported_format", str(exc)) from None
    except ImageSearchError as exc:
        raise FetchFailure("undecodable", str(exc)) from None
    width, height = image.size
    try:
        if _is_plain_jpeg(image):
            image.draft("RGB", (max(width // 8, 1), max(height // 8, 1)))
            image.load()
            return data, width, height, True
        image.seek(0)
        rgb = upright_rgb(image)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue(), rgb.width, rgb.height, False
    except Image.DecompressionBombError as exc:
        raise FetchFailure("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise FetchFailure("undecodable", f"{image.format or 'image'} failed to decode: {exc}") from None


def _is_plain_jpeg(image: Image.Image) -> bool:
    """A baseline RGB JPEG with no rotation to apply: safe to keep byte for byte."""
    return image.format == "JPEG" and image.mode == "RGB" and not image.info.get("progressive") and is_upright(image)


class Downloader:
    """Fetches (photo_id, url) pairs into an :class:`ImageStore`, many at a time.

    One instance owns one pool of ``resources/http_client.py`` (keep-alive connections
    shared by the worker threads); use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        store: ImageStore,
        *,
        concurrency: int = 32,
        timeout: float = 20.0,
        imgix_params: str = "",
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
        max_attempts: int = MAX_ATTEMPTS,
        max_redirects: int = http_client.MAX_REDIRECTS,
        backoff_initial_s: float = http_client.BACKOFF_INITIAL_S,
        backoff_max_s: float = http_client.BACKOFF_MAX_S,
        retry_after_cap_s: float = http_client.RETRY_AFTER_CAP_S,
    ):
        self.store = store
        self.concurrency = concurrency
        self.timeout = timeout
        self.imgix_params = imgix_params
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_attempts = max_attempts
        self._retry = {"initial_s": backoff_initial_s, "max_s": backoff_max_s, "retry_after_cap_s": retry_after_cap_s}
        self._pool = http_client.pool(
            timeout=timeout, maxsize=concurrency, accept="image/jpeg,image/*;q=0.9", max_redirects=max_redirects
        )
        # Set once an internet host answered: from then on, a name that does not resolve is broken.
        self._public_dns_works = threading.Event()
        self._nonexistent_hosts: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> "Downloader":
        """A downloader into ``settings.images_dir`` with the configured concurrency and timeout."""
        options = {
            "concurrency": settings.download_concurrency,
            "timeout": settings.download_timeout,
            "imgix_params": settings.imgix_params,
        }
        options.update(overrides)
        return cls(ImageStore(settings.images_dir), **options)

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.clear()

    def fetch_all(
        self,
        items: Iterable[tuple[str, str]],
        *,
        total: int | None = None,
        progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 5.0,
    ) -> Iterator[FetchResult]:
        """Fetch every (photo_id, url) pair, yielding results as they finish.

        At most ``2 x concurrency`` fetches are in flight or queued, so ``items`` can be a
        lazy iterator over millions of rows. ``progress`` is called every
        ``progress_every_s`` seconds and once at the end.

        A host the resolver says does not exist is a permanent ``unresolvable_host`` only if
        some internet host answered in the same run; otherwise it is ``dns_unavailable``,
        transient, since a machine without DNS says the same of every name. Such results are
        held back to the end, so the verdict does not depend on which photo came first.
        """
        started = time.monotonic()
        done = failed = reported = 0
        last_report = started
        pending: set[Future[FetchResult]] = set()
        held: list[FetchResult] = []
        iterator = iter(items)
        exhausted = False
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="fetch") as pool:
            while True:
                while not exhausted and len(pending) < 2 * self.concurrency:
                    try:
                        photo_id, url = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(pool.submit(self.fetch_one, photo_id, url))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    done += 1
                    failed += not result.ok
                    if result.reason == "dns_unavailable":
                        held.append(result)
                    else:
                        yield result
                now = time.monotonic()
                if progress is not None and now - last_report >= progress_every_s:
                    last_report, reported = now, done
                    progress(Progress(done, total, failed, now - started))
        for result in held:
            yield self._unresolved(result)
        if progress is not None and (done != reported or done == 0):
            progress(Progress(done, total, failed, time.monotonic() - started))

    def _unresolved(self, result: FetchResult) -> FetchResult:
        """``result`` (``dns_unavailable``) made permanent if its host does not exist while others resolve."""
        host = urlsplit(result.url).hostname or ""
        if self._public_dns_works.is_set() and host in self._nonexistent_hosts:
            return dataclasses.replace(
                result, reason="unresolvable_host", detail=f"{host} does not resolve, while other hosts did"
            )
        return result

    def fetch_one(self, photo_id: str, url: str) -> FetchResult:
        """Fetch, validate, normalise and store one photo; never raises for a bad photo."""
        attempts = 0

        def attempt() -> bytes:
            nonlocal attempts
            attempts += 1
            return self._read(url)

        try:
            data = http_client.retrying(self.max_attempts, **self._retry)(attempt)
            jpeg, width, height, kept = normalise_image(data, max_pixels=self.max_pixels)
            write_bytes(self.store.path_for(photo_id), jpeg)
        except FetchFailure as exc:
            return FetchResult(
                photo_id, url, exc.reason, exc.detail[:300], attempts, finished_at=datetime.now(timezone.utc)
            )
        return FetchResult(
            photo_id,
            url,
            attempts=attempts,
            bytes=len(jpeg),
            sha256=hashlib.sha256(jpeg).hexdigest(),
            width=width,
            height=height,
            kept_original=kept,
            finished_at=datetime.now(timezone.utc),
        )

    def _read(self, url: str) -> bytes:
        """The raw bytes behind ``url`` (http, https, file:// or a local path), capped in size."""
        if not url:
            raise FetchFailure("no_url", "the catalog has no image URL for this photo")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            problem = host_problem(parts.hostname) if parts.hostname else None
            if problem:
                raise FetchFailure("bad_host", problem)
            return self._read_http(with_imgix_params(url, self.imgix_params))
        if scheme == "file":
            return self._read_file(Path(url2pathname(unquote(parts.path))))
        if scheme == "":
            return self._read_file(Path(url))
        raise FetchFailure("bad_url", f"unsupported URL scheme {scheme!r}")

    def _read_file(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise FetchFailure("too_large", f"{size} bytes exceeds the cap of {self.max_bytes}")
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchFailure("missing_file", f"no file at {path}") from None
        except IsADirectoryError:
            raise FetchFailure("bad_url", f"{path} is a folder, not an image") from None
        except PermissionError:
            raise FetchFailure("unreadable_file", f"no permission to read {path}") from None

    def _read_http(self, url: str) -> bytes:
        # The read timeout bounds each socket read, not the whole body: a server dripping a
        # byte a second would never time out, so the body also gets an overall deadline.
        deadline = time.monotonic() + 3 * self.timeout
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except (HTTPError, ValueError) as exc:
            reason = http_client.cause(exc)
            if isinstance(reason, NameResolutionError):
                raise self._resolution_failure(urlsplit(url).hostname or "", reason) from None
            raise _transport_failure(reason) from None
        if _is_public_host(urlsplit(url).hostname or ""):
            self._public_dns_works.set()
        try:
            status = response.status
            if status in http_client.RETRY_STATUSES:
                retry_after = http_client.parse_retry_after(response.headers.get("Retry-After"))
                raise _Transient(f"http_{status}", response.reason or "", retry_after=retry_after)
            if status >= 400:
                raise FetchFailure(f"http_{status}", response.reason or "")
            if status != 200:
                raise FetchFailure(f"http_{status}", "unexpected status for an image")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type and not content_type.startswith(_ACCEPTED_TYPES):
                raise FetchFailure("not_an_image", f"content type {content_type!r}")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise FetchFailure("too_large", f"{length} bytes exceeds the cap of {self.max_bytes}")
            chunks, size = [], 0
            for chunk in response.stream(_CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchFailure("too_large", f"more than {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Transient("timeout", f"body not received within {3 * self.timeout:g}s")
                chunks.append(chunk)
        except (HTTPError, OSError) as exc:
            response.close()
            raise _transport_failure(exc) from None
        except FetchFailure:
            # The body was not read to its end: this connection cannot carry another request.
            response.close()
            raise
        finally:
            response.release_conn()
        return b"".join(chunks)

    def _resolution_failure(self, host: str, exc: NameResolutionError) -> FetchFailure:
        """``unresolvable_host`` (permanent) if the name does not exist and DNS works, else ``dns_unavailable``."""
        if isinstance(exc.__cause__, socket.gaierror) and exc.__cause__.errno in _NO_SUCH_NAME:
            if self._public_dns_works.is_set():
                return FetchFailure("unresolvable_host", f"{host} does not resolve, while other hosts did")
            self._nonexistent_hosts.add(host)
        return _Transient(
            "dns_unavailable", f"{host} did not resolve and no internet host has answered yet in this run"
        )


def _transport_failure(exc: BaseException | None) -> FetchFailure:
    """The ledger reason for a urllib3 error: timeouts and dropped connections are worth a retry."""
    if isinstance(exc, ResponseError):
        return FetchFailure("too_many_redirects", "redirect loop or chain too long")
    if isinstance(exc, (TimeoutError, ConnectTimeoutError, ReadTimeoutError)):
        return _Transient("timeout", f"no answer in time ({exc.__class__.__name__})")
    if isinstance(exc, (LocationParseError, LocationValueError, ValueError)):
        return FetchFailure("bad_url", str(exc)[:200])
    return _Transient("connection_error", f"{exc.__class__.__name__}: {exc}"[:200])
