"""Talking to an Elasticsearch, OpenSearch or ESCloud server: the client, who the server is, its errors.

``elasticsearch7`` 7.14+ refuses any server but Elastic's own, so the server is identified
here from ``GET /`` (and ``_cat/plugins``, and ``GET /_nodes`` in OpenSearch's
compatibility mode) and the client is told its product check is done. Client errors become
one-line :class:`ImageSearchError`\\ s naming the masked URL. Details: docs/backends.md.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from elasticsearch7 import Elasticsearch, Transport
from elasticsearch7.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionTimeout,
    SSLError,
    TransportError,
)
from elasticsearch7.exceptions import (
    ConnectionError as EsConnectionError,
)

from resources.config import Settings
from resources.errors import ClusterError, ImageSearchError, UnavailableError

logger = logging.getLogger("resources.index.elasticsearch")

OPENSEARCH_TAGLINE = "The OpenSearch Project: https://opensearch.org/"
#: ``org.opensearch.Version.MASK``: OpenSearch flips this bit in its version ids, legacy Elasticsearch ids lack it.
_OPENSEARCH_VERSION_MASK = 0x08000000

Version = tuple[int, int, int]


@dataclass(frozen=True)
class Release:
    """A product and its version: what a server runs, or what created an index."""

    distribution: str
    version: Version

    def opensearch_from(self, *version: int) -> bool:
        """Whether this is OpenSearch ``version`` or later."""
        return self.distribution == "opensearch" and self.version >= version

    def __str__(self) -> str:
        name = "OpenSearch" if self.distribution == "opensearch" else "Elasticsearch"
        return f"{name} {'.'.join(map(str, self.version))}"


def release_from_id(raw: str | int) -> Release:
    """Decode ``index.version.created`` (``org.opensearch.Version``: ``major*1000000 + minor*10000 + revision*100 + 99``)."""
    number = int(raw)
    distribution = "opensearch" if number & _OPENSEARCH_VERSION_MASK else "elasticsearch"
    number &= ~_OPENSEARCH_VERSION_MASK
    return Release(distribution, (number // 1_000_000 % 100, number // 10_000 % 100, number // 100 % 100))


@dataclass(frozen=True)
class ServerInfo:
    """What the server says about itself.

    ``version`` is ``None`` when it would not say: ``GET /`` refused (then ``distribution`` is
    ``None`` too), or OpenSearch in compatibility mode with ``GET /_nodes`` refused;
    ``unknown`` then says why. ``plugins`` ("component version", once per plugin) is ``None``
    when ``_cat/plugins`` could not be read.
    """

    distribution: str | None
    version: Version | None
    build_flavor: str | None
    knn_plugin: bool | None
    plugins: tuple[str, ...] | None = None
    compatibility_mode: bool = False
    unknown: str | None = None

    @property
    def release(self) -> Release | None:
        """The server's product and version, when both are known."""
        if self.distribution is None or self.version is None:
            return None
        return Release(self.distribution, self.version)

    @property
    def label(self) -> str:
        """E.g. ``OpenSearch 2.11.0``, ``Elasticsearch 7.17.25 (oss)``, ``OpenSearch 2.11.1 (compatibility mode)``."""
        if self.distribution is None:
            return "an unidentified server"
        name = "OpenSearch" if self.distribution == "opensearch" else "Elasticsearch"
        version = "" if self.version is None else " " + ".".join(map(str, self.version))
        flavor = f" ({self.build_flavor})" if self.build_flavor and self.build_flavor != "default" else ""
        mode = " (compatibility mode)" if self.compatibility_mode else ""
        return f"{name}{version}{flavor}{mode}"


class CheckedTransport(Transport):
    """``elasticsearch7``'s transport, told that the product check is already done.

    :class:`ElasticsearchBackend` reads ``GET /`` itself before any other request and
    refuses servers it does not support (:func:`read_server`), so the client's own check,
    which refuses OpenSearch, is replaced rather than skipped.
    """

    def _do_verify_elasticsearch(self, headers, timeout):
        self._verified_elasticsearch = True

    def perform_request(self, method, url, headers=None, params=None, body=None):
        """Send plain JSON media types even when ``ELASTIC_CLIENT_APIVERSIONING`` is set in the environment.

        That variable (meant for Elasticsearch 8 servers, ``elasticsearch7/client/utils.py``) makes
        the client send ``application/vnd.elasticsearch+json;compatible-with=7``, which OpenSearch
        and Elasticsearch 7.10 refuse with 406 "Content-Type header [...] is not supported"; no
        server this project supports needs it.
        """
        if headers:
            headers = {k: _plain(v) if k.lower() in ("accept", "content-type") else v for k, v in headers.items()}
        return super().perform_request(method, url, headers=headers, params=params, body=body)


def _plain(media_type: str) -> str:
    """``application/vnd.elasticsearch+x-ndjson;compatible-with=7`` as ``application/x-ndjson``; others unchanged."""
    return re.sub(r"application/vnd\.elasticsearch\+([\w-]+)\s*;\s*compatible-with=\d+", r"application/\1", media_type)


def _version(number: str) -> Version | None:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", number or "")
    if not match:
        return None
    major, minor, patch = match.groups()
    return (int(major), int(minor), int(patch or 0))


def read_server(root: dict[str, Any], plugins: list[str] | None, node_versions: list[str] | None = None) -> ServerInfo:
    """Identify the server from its ``GET /`` answer; raise for anything the project does not support.

    ``plugins`` lists the server's plugins as "component version" (``None`` when unreadable);
    it tells an Elasticsearch with the k-NN plugin (ESCloud) from a stock one. OpenSearch in
    compatibility mode (``compatibility.override_main_response_version``) answers ``GET /``
    with version 7.10.2, no ``distribution`` and its own tagline; ``node_versions`` are then
    the versions ``GET /_nodes`` reports (``None`` when refused), the lowest one counting.
    """
    version = root.get("version") or {}
    number = _version(str(version.get("number", "")))
    compatibility = "distribution" not in version and root.get("tagline") == OPENSEARCH_TAGLINE
    found = tuple(plugins) if plugins is not None else None
    if version.get("distribution") == "opensearch" or compatibility:
        unknown = None
        if compatibility:
            known = [v for v in map(_version, node_versions or []) if v is not None]
            number = min(known) if known else None
            if number is None:
                unknown = "GET / answers 7.10.2 (compatibility mode) and GET /_nodes was refused"
        if number is not None and number[0] not in (1, 2, 3):
            raise ImageSearchError(
                f"OpenSearch {'.'.join(map(str, number))} is not supported: use OpenSearch 1.x to 3.x"
            )
        knn = found is None or any("knn" in p for p in found)
        return ServerInfo("opensearch", number, None, knn, found, compatibility, unknown)
    if root.get("tagline") != "You Know, for Search" or number is None:
        raise ImageSearchError(
            "the server is neither Elasticsearch nor OpenSearch (its GET / answer has no known version"
            " or tagline): check IMAGE_SEARCH_ES_URL"
        )
    if number[0] != 7:
        raise ImageSearchError(
            f"Elasticsearch {version.get('number')} is not supported: use Elasticsearch 7.x, ESCloud 7.10,"
            " Open Distro 7.10 or OpenSearch 1.x-3.x"
        )
    flavor = version.get("build_flavor")
    knn = any("knn" in p for p in found) if found is not None else flavor == "oss"
    return ServerInfo("elasticsearch", number, flavor, knn, found)


def connect(settings: Settings) -> Elasticsearch:
    """A client for ``settings.es_url`` with the configured credentials and TLS checks.

    The client resends a request after a timeout or a 502/503/504 (``retry_on_timeout``):
    whoever sends a non-idempotent request (``_aliases``) must settle an ambiguous answer
    by reading the state back.
    """
    auth = (settings.es_username, settings.es_password or "") if settings.es_username else None
    return Elasticsearch(
        settings.es_url,
        http_auth=auth,
        api_key=settings.es_api_key,
        verify_certs=settings.es_verify_certs,
        ca_certs=settings.es_ca_certs,
        transport_class=CheckedTransport,
        timeout=30,
        max_retries=2,
        retry_on_timeout=True,
    )


def identify(client: Elasticsearch, url: str, engine_setting: str) -> ServerInfo:
    """Read ``GET /``, the plugin list and, in OpenSearch's compatibility mode, ``GET /_nodes``.

    ``GET /`` needs the ``cluster:monitor/main`` privilege; without it the server stays
    unidentified and only an explicit ``IMAGE_SEARCH_ES_ENGINE`` lets the backend go on.
    """
    try:
        root = client.info()
    except AuthorizationException:
        why = "GET / answered HTTP 403 (the credentials lack the cluster:monitor/main privilege)"
        if engine_setting == "auto":
            raise ImageSearchError(
                f"{url}: {why}, so the engine cannot be detected: set IMAGE_SEARCH_ES_ENGINE to escloud,"
                " opensearch or elasticsearch, or grant the privilege"
            ) from None
        return ServerInfo(None, None, None, None, unknown=why)
    plugins = _readable(
        lambda: sorted({f"{row.get('component')} {row.get('version')}" for row in client.cat.plugins(format="json")})
    )
    nodes = None
    if "distribution" not in (root.get("version") or {}) and root.get("tagline") == OPENSEARCH_TAGLINE:
        nodes = _readable(
            lambda: [
                str(node.get("version"))
                for node in client.nodes.info(filter_path="nodes.*.version").get("nodes", {}).values()
            ]
        )
    return read_server(root, plugins, nodes)


def _readable(read: Callable[[], list[str]]) -> list[str] | None:
    """What ``read`` returns, or ``None`` when the server refuses it (a missing privilege, an unknown API)."""
    try:
        return read()
    except EsConnectionError:
        raise
    except TransportError:
        return None


@contextmanager
def one_line_errors(url: str, doing: str) -> Iterator[None]:
    """Turn client errors into one-line :class:`ImageSearchError`\\ s naming the masked ``url``.

    Whatever the cluster's side of the failure (unreachable, overloaded, TLS, credentials,
    5xx) is an :class:`UnavailableError` or :class:`ClusterError`, which the HTTP API
    answers with a 5xx; a 4xx the request itself caused stays a plain :class:`ImageSearchError`.
    """
    try:
        yield
    except ImageSearchError:
        raise
    except SSLError:
        raise ClusterError(
            f"TLS certificate verification failed for {url} while {doing}: set IMAGE_SEARCH_ES_CA_CERTS"
            " to the cluster's CA bundle (or IMAGE_SEARCH_ES_VERIFY_CERTS=false to opt out)"
        ) from None
    except ConnectionTimeout:
        raise UnavailableError(f"{url} timed out while {doing}: check the cluster's health") from None
    except EsConnectionError:
        raise UnavailableError(
            f"cannot reach {url} while {doing}: check IMAGE_SEARCH_ES_URL and that the cluster is up"
        ) from None
    except AuthenticationException:
        raise ClusterError(
            f"{url} refused the credentials (HTTP 401) while {doing}: check"
            " IMAGE_SEARCH_ES_USERNAME/PASSWORD or IMAGE_SEARCH_ES_API_KEY"
        ) from None
    except AuthorizationException as exc:
        raise ClusterError(f"{url} denied {doing} (HTTP 403, {reason(exc)}): grant the user that privilege") from None
    except TransportError as exc:
        advice = ""
        if exc.status_code == 429:
            advice = " (the cluster is overloaded or short of heap: retry later, or give it more memory)"
        # 429 and 5xx say the cluster cannot answer now, not that the request is wrong.
        busy = isinstance(exc.status_code, int) and (exc.status_code == 429 or exc.status_code >= 500)
        kind = UnavailableError if busy else ImageSearchError
        raise kind(f"{url} answered HTTP {exc.status_code} while {doing}: {reason(exc)}{advice}") from None


def absent(response: dict[str, Any]) -> bool:
    """Whether a response asked with ``ignore=404`` says the index, alias or document does not exist."""
    return response.get("status") == 404 or response.get("found") is False


def reason(exc: TransportError) -> str:
    """The server's error type and reason, on one line."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict):
        cause = (error.get("root_cause") or [error])[0]
        return f"{cause.get('type', error.get('type'))}: {cause.get('reason', error.get('reason'))}"
    return str(error or exc.error)


def check_shards(response: dict[str, Any], url: str, doing: str) -> None:
    """Refuse an answer some shards did not contribute to (HTTP 200 with failed or missing shards)."""
    shards = response.get("_shards") or {}
    total = int(shards.get("total", 0))
    answered = int(shards.get("successful", total))
    if not shards.get("failed") and answered >= total:
        return
    failures = shards.get("failures") or [{}]
    cause = failures[0].get("reason") or {}
    where = f"shard {failures[0].get('shard')} of {failures[0].get('index')}" if failures[0] else "no shard named"
    raise ClusterError(
        f"only {answered} of {total} shards answered while {doing} on {url} ({where}:"
        f" {cause.get('type')}: {cause.get('reason')}): the answer would be incomplete; check the cluster's health"
        " (GET _cluster/health) and retry"
    )
