"""The Elasticsearch, OpenSearch and ESCloud search backend, through ``elasticsearch7``.

One backend class talks to the server; one small engine class per server family holds what
differs (the vector mapping, the filtered kNN query, how ``_score`` maps back to cosine).
The backend identifies the server itself, since ``elasticsearch7`` 7.14+ refuses any but
Elastic's own; builds are published by an atomic alias swap. Details: docs/backends.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator

import numpy as np
import pandas as pd
from elasticsearch7 import Elasticsearch, Transport, helpers
from elasticsearch7.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError as EsConnectionError,
    ConnectionTimeout,
    NotFoundError,
    SSLError,
    TransportError,
)

from resources.backends.base import (
    ORIENTATIONS,
    STORED_FIELDS,
    BuildInfo,
    BuildProgress,
    BuildReport,
    Filters,
    Hit,
    SearchBackend,
    check_k,
)
from resources.config import Settings, mask_url
from resources.errors import ImageSearchError, UnavailableError

logger = logging.getLogger(__name__)

VECTOR_FIELD = "photo_embedding"
TEXT_FIELDS = ("describe", "photo_description", "ai_description")
#: The largest ``k``: both ``index.max_result_window`` and the k-NN plugins' ``k`` stop at 10,000.
MAX_RESULT_WINDOW = 10_000
META_KEY = "image_search"
ENGINE_NAMES = ("auto", "escloud", "opensearch", "elasticsearch")
COSINE = "cosinesimil"
_CHUNK_SIZE = 500
_BULK_TIMEOUT_S = 120
_BULK_RETRIES = 3
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_OPENSEARCH_TAGLINE = "The OpenSearch Project: https://opensearch.org/"
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


@dataclass(frozen=True)
class ScoreFormula:
    """How an engine's ``_score`` relates to cosine similarity, and the way back."""

    score: str
    to_cosine: Callable[[float], float]


HALF = ScoreFormula("(1 + cos) / 2", lambda score: 2.0 * score - 1.0)
ONE_PLUS = ScoreFormula("1 + cos", lambda score: score - 1.0)
RECIPROCAL = ScoreFormula("1 / (2 - cos)", lambda score: 2.0 - 1.0 / score)


def _filter_properties() -> dict[str, Any]:
    """Mapped fields besides the vector: what keyword search and the filters read."""
    return {
        "photo_id": {"type": "keyword"},
        "photo_url": {"type": "keyword"},
        "describe": {"type": "text"},
        "photo_description": {"type": "text"},
        "ai_description": {"type": "text"},
        "orientation": {"type": "keyword"},
        "colors": {"type": "keyword", "normalizer": "lowercase"},
        "photo_location_country": {"type": "keyword", "normalizer": "lowercase"},
        "photo_submitted_at": {"type": "date"},
    }


_ANALYSIS = {"normalizer": {"lowercase": {"type": "custom", "filter": ["lowercase"]}}}


def _hnsw(dim: int, engine: str) -> dict[str, Any]:
    return {"type": "knn_vector", "dimension": dim, "method": {"name": "hnsw", "space_type": COSINE, "engine": engine}}


class Engine(ABC):
    """What differs between server families: mapping, kNN query, score conversion."""

    name: ClassVar[str]
    #: Index settings a published build keeps; loads run with refresh off and no replicas.
    serving_settings: ClassVar[dict[str, str]] = {"refresh_interval": "1s", "auto_expand_replicas": "0-1"}
    loading_settings: ClassVar[dict[str, str]] = {
        "refresh_interval": "-1",
        "auto_expand_replicas": "false",
        "number_of_replicas": "0",
    }
    #: Whether :meth:`formula` needs the version that created the index (read once per index).
    reads_created_version: ClassVar[bool] = False

    def __init__(self, server: ServerInfo):
        self.server = server

    @abstractmethod
    def supports(self, server: ServerInfo) -> bool:
        """Whether ``server`` (whose version is known) can run this engine's mapping and queries."""

    @property
    def max_dim(self) -> int:
        """The most dimensions the vector field takes."""
        return 16_000

    @abstractmethod
    def mappings(self, dim: int) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """Extra index settings and the vector field's mapping, in the order to try them.

        One pair when the server is known; a server that hides its version gets the
        alternatives, and the first one it accepts (and resolves to cosine) is kept.
        """

    def index_settings(self) -> dict[str, Any]:
        """Settings every index is created with (the loading ones included)."""
        return {**self.loading_settings, "analysis": _ANALYSIS}

    def create_bodies(self, dim: int, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """The ``PUT <index>`` bodies to try, in order."""
        bodies = []
        for settings, vector in self.mappings(dim):
            properties = _filter_properties()
            properties[VECTOR_FIELD] = vector
            bodies.append(
                {
                    "settings": {"index": {**self.index_settings(), **settings}},
                    "mappings": {"dynamic": "false", "_meta": {META_KEY: meta}, "properties": properties},
                }
            )
        return bodies

    @abstractmethod
    def knn_query(self, vector: list[float], k: int, filters: list[dict]) -> tuple[dict[str, Any], str]:
        """The ``_search`` body for the ``k`` nearest documents passing ``filters``, and its k-NN path for :meth:`formula`."""

    @abstractmethod
    def formula(self, path: str, created: Release | None) -> ScoreFormula:
        """The score formula of ``path`` on an index ``created`` by that release (``None``: unknown)."""


class EsCloudEngine(Engine):
    """The original design: ESCloud 7.10, Open Distro 7.10, OpenSearch 1.x-3.x (nmslib or faiss graphs)."""

    name = "escloud"
    #: The design's own values; the load relaxes refresh and replicas, then restores these.
    serving_settings = {"refresh_interval": "60s", "number_of_replicas": "1"}
    loading_settings = {"refresh_interval": "-1", "number_of_replicas": "0"}
    reads_created_version = True

    def supports(self, server: ServerInfo) -> bool:
        return bool(server.knn_plugin)

    @property
    def max_dim(self) -> int:
        # Open Distro 1.13 and OpenSearch 1.x: KNNVectorFieldMapper.MAX_DIMENSION = 10000; OpenSearch 2.x: 16,000.
        release = self.server.release
        return 16_000 if release is not None and release.opensearch_from(2) else 10_000

    def index_settings(self) -> dict[str, Any]:
        return {"number_of_shards": "3", "knn": "true", **self.loading_settings, "analysis": _ANALYSIS}

    def mappings(self, dim):
        design = ({"knn.space_type": COSINE}, {"type": "knn_vector", "dimension": dim})
        if self.server.distribution == "elasticsearch":
            return [design]
        if self.server.version is not None:
            # nmslib is deprecated from 2.19 and refused for new indices from 3.0; faiss scores cosinesimil from 2.19.
            return [({}, _hnsw(dim, "faiss" if self.server.version >= (2, 19, 0) else "nmslib"))]
        candidates = [({}, _hnsw(dim, "nmslib")), ({}, _hnsw(dim, "faiss"))]
        return candidates if self.server.distribution == "opensearch" else candidates + [design]

    def knn_query(self, vector, k, filters):
        if not filters:
            return {"size": k, "query": {"knn": {VECTOR_FIELD: {"vector": vector, "k": k}}}}, "ann"
        script = {
            "source": "knn_score",
            "lang": "knn",
            "params": {"field": VECTOR_FIELD, "query_value": vector, "space_type": COSINE},
        }
        body = {"size": k, "query": {"script_score": {"query": {"bool": {"filter": filters}}, "script": script}}}
        return body, "script"

    def formula(self, path, created):
        if path == "script":
            # k-NN 2.19 (#2357, #2375): (1 + cos) / 2 only on indices created by 2.19 or later.
            return HALF if created is not None and created.opensearch_from(2, 19) else ONE_PLUS
        # The graphs' score translation changed in 2.19 for every index: what counts is the
        # version running, at least the one that created the index.
        running = [r for r in (self.server.release, created) if r is not None]
        return HALF if any(r.opensearch_from(2, 19) for r in running) else RECIPROCAL


class OpenSearchEngine(Engine):
    """OpenSearch 2.4+ and 3.x: per-field HNSW on the Lucene engine, filters inside the kNN search."""

    name = "opensearch"

    def supports(self, server: ServerInfo) -> bool:
        return (
            server.distribution == "opensearch"
            and bool(server.knn_plugin)
            and server.version is not None
            and server.version >= (2, 4, 0)
        )

    def index_settings(self) -> dict[str, Any]:
        return {"knn": "true", **super().index_settings()}

    def mappings(self, dim):
        return [({}, _hnsw(dim, "lucene"))]

    def knn_query(self, vector, k, filters):
        clause: dict[str, Any] = {"vector": vector, "k": k}
        if filters:
            clause["filter"] = {"bool": {"filter": filters}}
        return {"size": k, "query": {"knn": {VECTOR_FIELD: clause}}}, "lucene"

    def formula(self, path, created):
        return HALF


class Elasticsearch7Engine(Engine):
    """Stock Elasticsearch 7.x (default distribution): ``dense_vector`` and an exact ``script_score`` cosine."""

    name = "elasticsearch"

    @property
    def max_dim(self) -> int:
        return 2048

    def supports(self, server: ServerInfo) -> bool:
        return (
            server.distribution == "elasticsearch"
            and server.build_flavor == "default"
            and server.version is not None
            and server.version >= (7, 6, 0)
        )

    def mappings(self, dim):
        return [({}, {"type": "dense_vector", "dims": dim})]

    def knn_query(self, vector, k, filters):
        inner = {"bool": {"filter": filters}} if filters else {"match_all": {}}
        script = {
            "source": f"cosineSimilarity(params.query_vector, '{VECTOR_FIELD}') + 1.0",
            "params": {"query_vector": vector},
        }
        return {"size": k, "query": {"script_score": {"query": inner, "script": script}}}, "painless"

    def formula(self, path, created):
        return ONE_PLUS


ENGINES: dict[str, type[Engine]] = {cls.name: cls for cls in (EsCloudEngine, OpenSearchEngine, Elasticsearch7Engine)}


class _CheckedTransport(Transport):
    """``elasticsearch7``'s transport, told that the product check is already done.

    :class:`ElasticsearchBackend` reads ``GET /`` itself before any other request and
    refuses servers it does not support (:func:`read_server`), so the client's own check,
    which refuses OpenSearch, is replaced rather than skipped.
    """

    def _do_verify_elasticsearch(self, headers, timeout):
        self._verified_elasticsearch = True


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
    compatibility = "distribution" not in version and root.get("tagline") == _OPENSEARCH_TAGLINE
    found = tuple(plugins) if plugins is not None else None
    if version.get("distribution") == "opensearch" or compatibility:
        unknown = None
        if compatibility:
            known = [v for v in map(_version, node_versions or []) if v is not None]
            number = min(known) if known else None
            if number is None:
                unknown = "GET / answers 7.10.2 (compatibility mode) and GET /_nodes was refused"
        if number is not None and number[0] not in (1, 2, 3):
            raise ImageSearchError(f"OpenSearch {'.'.join(map(str, number))} is not supported: use OpenSearch 1.x to 3.x")
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


def choose_engine(requested: str, server: ServerInfo) -> Engine:
    """The engine ``IMAGE_SEARCH_ES_ENGINE`` names, or for ``auto`` the best one ``server`` runs."""
    _check_engine_name(requested)
    if requested == "auto":
        if server.version is None:
            raise ImageSearchError(
                f"{server.label} does not tell its version ({server.unknown}), so no engine can be chosen for it:"
                " set IMAGE_SEARCH_ES_ENGINE to escloud, opensearch or elasticsearch"
            )
        for name in ("opensearch", "escloud", "elasticsearch"):
            engine = ENGINES[name](server)
            if engine.supports(server):
                return engine
        raise ImageSearchError(
            f"{server.label} has neither a k-NN plugin nor dense_vector support: install the k-NN plugin"
            " or use Elasticsearch's default distribution"
        )
    engine = ENGINES[requested](server)
    if server.version is not None and not engine.supports(server):
        raise ImageSearchError(
            f"IMAGE_SEARCH_ES_ENGINE={requested} does not run on {server.label}: set it to auto"
        )
    return engine


def _check_engine_name(requested: str) -> None:
    if requested not in ENGINE_NAMES:
        raise ImageSearchError(
            f"IMAGE_SEARCH_ES_ENGINE={requested!r} is not supported: use one of {', '.join(ENGINE_NAMES)}"
        )


def vector_space(field: dict[str, Any], settings: dict[str, str], created: Release | None) -> str:
    """The similarity the engine scores ``field`` by, resolved as the k-NN plugin does.

    The field's ``method`` first, then its top-level ``space_type`` (2.17+), then the
    index-level ``index.knn.space_type`` (flat ``settings``), which indices created by
    OpenSearch 2.17 and 2.18 ignored (k-NN #2296, fixed in 2.19.0 by #2374), else l2.
    A ``dense_vector`` has no similarity of its own: the query's script computes cosine.
    """
    if field.get("type") == "dense_vector":
        return COSINE
    method = field.get("method") or {}
    if method.get("space_type"):
        return method["space_type"]
    if field.get("space_type"):
        return field["space_type"]
    if created is not None and created.opensearch_from(2, 17) and not created.opensearch_from(2, 19):
        return "l2"
    return settings.get("index.knn.space_type", "l2")


def filter_clauses(filters: Filters | None) -> list[dict[str, Any]]:
    """The bool ``filter`` clauses for ``filters`` (empty when nothing is restricted)."""
    if filters is None or filters.is_empty():
        return []
    clauses: list[dict[str, Any]] = []
    if filters.orientation is not None:
        orientation = filters.orientation.strip().lower()
        if orientation not in ORIENTATIONS:
            raise ImageSearchError(
                f"orientation {filters.orientation!r} is not known: use one of {', '.join(ORIENTATIONS)}"
            )
        clauses.append({"term": {"orientation": orientation}})
    if filters.color is not None:
        clauses.append({"term": {"colors": filters.color.strip().lower()}})
    if filters.country is not None:
        clauses.append({"term": {"photo_location_country": filters.country.strip().lower()}})
    if filters.since is not None or filters.until is not None:
        bounds: dict[str, str] = {"format": "strict_date_optional_time"}
        if filters.since is not None:
            bounds["gte"] = filters.since.isoformat()
        if filters.until is not None:
            bounds["lt"] = (filters.until + dt.timedelta(days=1)).isoformat()
        clauses.append({"range": {"photo_submitted_at": bounds}})
    return clauses


def _json_value(value: Any) -> Any:
    """A catalog cell as JSON: missing values become null, timestamps ISO 8601 in UTC."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp.isoformat().replace("+00:00", "Z")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class ElasticsearchBackend(SearchBackend):
    """A search index on an Elasticsearch, OpenSearch or ESCloud cluster, published under an alias.

    Construction identifies the server once (``GET /`` and the plugin list) and picks the
    engine; an unreachable or unsupported server raises :class:`ImageSearchError` naming the
    masked URL.
    """

    #: Seconds before the first retry of documents or requests refused with HTTP 429 (doubling each time).
    bulk_backoff_s: float = 1.0

    def __init__(self, settings: Settings):
        if not settings.es_url:
            raise ImageSearchError("IMAGE_SEARCH_ES_URL is not set: point it at the cluster, e.g. https://localhost:9200")
        if not _INDEX_NAME.match(settings.index_name):
            raise ImageSearchError(
                f"IMAGE_SEARCH_INDEX={settings.index_name!r} is not a valid index name: use lowercase letters,"
                " digits, '_', '-' or '.'"
            )
        _check_engine_name(settings.es_engine)
        self.settings = settings
        self.alias = settings.index_name
        self.url = mask_url(settings.es_url)
        self._batch_size = _CHUNK_SIZE
        self._created_by: dict[str, Release | None] = {}
        if not settings.es_verify_certs and settings.es_url.startswith("https"):
            logger.warning("TLS certificate verification is off for %s (IMAGE_SEARCH_ES_VERIFY_CERTS=false)", self.url)
        auth = (settings.es_username, settings.es_password or "") if settings.es_username else None
        self.client = Elasticsearch(
            settings.es_url,
            http_auth=auth,
            api_key=settings.es_api_key,
            verify_certs=settings.es_verify_certs,
            ca_certs=settings.es_ca_certs,
            transport_class=_CheckedTransport,
            timeout=30,
            max_retries=2,
            retry_on_timeout=True,
        )
        with self._errors("reading the server's version (GET /)"):
            self.server = self._identify()
        self.impl = choose_engine(settings.es_engine, self.server)
        self.engine = self.impl.name
        if self.server.unknown:
            logger.warning(
                "%s: %s: using IMAGE_SEARCH_ES_ENGINE=%s without checking that the server runs it; run"
                " `image-search cluster check` to test the cluster",
                self.url, self.server.unknown, self.engine,
            )
        logger.info("search index: %s at %s, engine %s, alias %s", self.server.label, self.url, self.engine, self.alias)

    def _identify(self) -> ServerInfo:
        """Read ``GET /``, the plugin list and, in OpenSearch's compatibility mode, ``GET /_nodes``.

        ``GET /`` needs the ``cluster:monitor/main`` privilege; without it the server stays
        unidentified and only an explicit ``IMAGE_SEARCH_ES_ENGINE`` lets the backend go on.
        """
        try:
            root = self.client.info()
        except AuthorizationException:
            why = "GET / answered HTTP 403 (the credentials lack the cluster:monitor/main privilege)"
            if self.settings.es_engine == "auto":
                raise ImageSearchError(
                    f"{self.url}: {why}, so the engine cannot be detected: set IMAGE_SEARCH_ES_ENGINE to escloud,"
                    " opensearch or elasticsearch, or grant the privilege"
                ) from None
            return ServerInfo(None, None, None, None, unknown=why)
        plugins = self._readable(
            lambda: sorted({f"{row.get('component')} {row.get('version')}" for row in self.client.cat.plugins(format="json")})
        )
        nodes = None
        if "distribution" not in (root.get("version") or {}) and root.get("tagline") == _OPENSEARCH_TAGLINE:
            nodes = self._readable(
                lambda: [
                    str(node.get("version"))
                    for node in self.client.nodes.info(filter_path="nodes.*.version").get("nodes", {}).values()
                ]
            )
        return read_server(root, plugins, nodes)

    @staticmethod
    def _readable(read: Callable[[], list[str]]) -> list[str] | None:
        """What ``read`` returns, or ``None`` when the server refuses it (a missing privilege, an unknown API)."""
        try:
            return read()
        except EsConnectionError:
            raise
        except TransportError:
            return None

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn client errors into one-line :class:`ImageSearchError`\\ s naming the masked URL."""
        try:
            yield
        except ImageSearchError:
            raise
        except SSLError:
            raise ImageSearchError(
                f"TLS certificate verification failed for {self.url} while {doing}: set IMAGE_SEARCH_ES_CA_CERTS"
                " to the cluster's CA bundle (or IMAGE_SEARCH_ES_VERIFY_CERTS=false to opt out)"
            ) from None
        except ConnectionTimeout:
            raise UnavailableError(f"{self.url} timed out while {doing}: check the cluster's health") from None
        except EsConnectionError:
            raise UnavailableError(
                f"cannot reach {self.url} while {doing}: check IMAGE_SEARCH_ES_URL and that the cluster is up"
            ) from None
        except AuthenticationException:
            raise ImageSearchError(
                f"{self.url} refused the credentials (HTTP 401) while {doing}: check"
                " IMAGE_SEARCH_ES_USERNAME/PASSWORD or IMAGE_SEARCH_ES_API_KEY"
            ) from None
        except AuthorizationException as exc:
            raise ImageSearchError(
                f"{self.url} denied {doing} (HTTP 403, {_reason(exc)}): grant the user that privilege"
            ) from None
        except TransportError as exc:
            advice = ""
            if exc.status_code == 429:
                advice = " (the cluster is overloaded or short of heap: retry later, or give it more memory)"
            # 429 and 5xx say the cluster cannot answer now, not that the request is wrong.
            busy = isinstance(exc.status_code, int) and (exc.status_code == 429 or exc.status_code >= 500)
            kind = UnavailableError if busy else ImageSearchError
            raise kind(
                f"{self.url} answered HTTP {exc.status_code} while {doing}: {_reason(exc)}{advice}"
            ) from None

    # -- building ---------------------------------------------------------------------

    def build(self, documents, vectors, info, progress=None) -> BuildReport:
        started = time.perf_counter()
        vectors = np.asarray(vectors, dtype=np.float32)
        missing = [c for c in STORED_FIELDS if c not in documents.columns]
        if missing:
            raise ImageSearchError(f"the documents to index lack the columns {', '.join(missing)}: rebuild the catalog")
        if vectors.ndim != 2 or len(vectors) != len(documents):
            raise ImageSearchError(
                f"{len(documents)} documents but vectors of shape {vectors.shape}: rebuild the embeddings"
            )
        if len(documents) == 0:
            raise ImageSearchError("there are no documents to index: materialize the catalog and the embeddings first")
        dim = int(vectors.shape[1])
        if dim > self.impl.max_dim:
            raise ImageSearchError(
                f"{dim}-dimensional vectors exceed the {self.engine} engine's {self.impl.max_dim} on {self.server.label}:"
                f" use an image model of at most {self.impl.max_dim} dimensions"
            )
        index = f"{self.alias}_v{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S%f}"
        meta = {**dataclasses.asdict(dataclasses.replace(info, dim=dim, count=0, name=index)), "alias": self.alias}
        try:
            with self._errors(f"creating index {index}"):
                self._create(index, dim, meta)
            indexed, errors = self._load(index, documents, vectors, progress)
            failed = sum(errors.values())
            allowed = self.settings.es_max_error_share * len(documents)
            if failed > allowed:
                summary = ", ".join(f"{n} {kind}" for kind, n in errors.most_common())
                raise ImageSearchError(
                    f"{failed} of {len(documents)} documents could not be indexed on {self.url} ({summary}), more than"
                    f" IMAGE_SEARCH_ES_MAX_ERROR_SHARE={self.settings.es_max_error_share}"
                )
            with self._errors(f"finishing index {index}"):
                self.client.indices.put_settings(index=index, body={"index": self.impl.serving_settings})
                self.client.indices.refresh(index=index)
                count = self._count(index)
                if count != indexed:
                    raise ImageSearchError(
                        f"index {index} holds {count} documents but {indexed} were written: re-run the build"
                    )
                final = {**dataclasses.asdict(dataclasses.replace(info, dim=dim, count=count, name=index)), "alias": self.alias}
                self.client.indices.put_mapping(index=index, body={"_meta": {META_KEY: final}})
                previous = self._publish(index)
        except ImageSearchError as exc:
            self._drop(index)
            raise ImageSearchError(f"{exc}; the published index is unchanged") from None
        except BaseException:
            self._drop(index)
            raise
        removed = self._clean_up(keep={index, *previous})
        seconds = time.perf_counter() - started
        logger.info("published %s (%d documents) as %s in %.1f s", index, count, self.alias, seconds)
        return BuildReport(
            name=index,
            count=count,
            seconds=seconds,
            errors=dict(errors),
            details={
                "engine": self.engine,
                "server": self.server.label,
                "url": self.url,
                "alias": self.alias,
                "previous": sorted(previous),
                "removed": removed,
            },
        )

    def adopt(self, source: SearchBackend) -> BuildInfo:
        """Point this alias at the concrete index ``source``'s alias points to, in one atomic request (issue #27)."""
        if not isinstance(source, ElasticsearchBackend) or source.url != self.url:
            raise ImageSearchError(f"cannot publish a build of {getattr(source, 'name', source.engine)} under {self.alias} on {self.url}")
        with self._errors(f"reading the build behind {source.alias}"):
            behind = sorted(source._aliased())
        if len(behind) != 1 or source.info() is None:
            raise ImageSearchError(f"{source.alias} on {self.url} publishes no build: build it before publishing it")
        with self._errors(f"publishing {behind[0]} as {self.alias}"):
            previous = self._publish(behind[0])
        self._clean_up(keep={behind[0], *previous})
        return self.info()

    def drop_all(self) -> list[str]:
        """Delete this alias's builds that carry no other alias (issue #27: a removed model's shadow index)."""
        if "-model-" not in self.alias:
            raise ImageSearchError(f"refusing to drop the search index {self.alias} on {self.url}")
        build_name = re.compile(rf"{re.escape(self.alias)}_v\d{{20}}")
        with self._errors(f"removing the builds of {self.alias}"):
            found = self.client.indices.get(index=f"{self.alias}_v*")
            mine = sorted(
                name
                for name, body in found.items()
                if build_name.fullmatch(name) and self._built_here(name, body) and set(body.get("aliases") or {}) <= {self.alias}
            )
            if mine:
                self.client.indices.delete(index=",".join(mine))
        return mine

    def _create(self, index: str, dim: int, meta: dict[str, Any]) -> None:
        """Create ``index`` with the first mapping the server accepts, then read it back: its vector field must score by cosine."""
        bodies = self.impl.create_bodies(dim, meta)
        for attempt, body in enumerate(bodies, start=1):
            try:
                self.client.indices.create(index=index, **body)
            except TransportError as exc:
                if attempt == len(bodies) or exc.status_code != 400:
                    raise
                logger.info("%s refused one form of the vector mapping (%s): trying the next", self.url, _reason(exc))
                continue
            ((created, space),) = self.describe(index).values()
            if space == COSINE:
                return
            self.client.indices.delete(index=index)
            if attempt == len(bodies):
                known = " (k-NN issue #2296: 2.17 and 2.18 ignore index.knn.space_type)" if space == "l2" else ""
                raise ImageSearchError(
                    f"index {index} on {self.url} would score vectors by {space}, not {COSINE}, as {created} resolves"
                    f" its mapping{known}: set IMAGE_SEARCH_ES_ENGINE=opensearch or upgrade the cluster"
                )

    def describe(self, expression: str) -> dict[str, tuple[Release | None, str]]:
        """For each index ``expression`` names: the release that created it and the similarity its vector field resolves to."""
        described = {}
        for name, body in self.client.indices.get(index=expression, flat_settings=True).items():
            settings = body.get("settings") or {}
            raw = settings.get("index.version.created")
            created = release_from_id(raw) if raw else None
            self._created_by[name] = created
            field = ((body.get("mappings") or {}).get("properties") or {}).get(VECTOR_FIELD, {})
            described[name] = (created, vector_space(field, settings, created))
        return described

    def _actions(self, index: str, documents: pd.DataFrame, vectors: np.ndarray, skipped: Counter) -> Iterator[dict]:
        rounded = np.round(vectors.astype(np.float64), 6)
        finite = np.isfinite(rounded).all(axis=1)
        for i, row in enumerate(documents[list(STORED_FIELDS)].itertuples(index=False, name=None)):
            if not finite[i]:
                skipped["non_finite_vector"] += 1
                continue
            source = {name: _json_value(value) for name, value in zip(STORED_FIELDS, row)}
            source[VECTOR_FIELD] = rounded[i].tolist()
            yield {"_op_type": "index", "_index": index, "_id": str(source["photo_id"]), "_source": source}

    def _batches(self, actions: Iterable[dict]) -> Iterator[list[dict]]:
        """Actions in batches of the current bulk size (smaller once the server refused a request as too large)."""
        batch: list[dict] = []
        for action in actions:
            batch.append(action)
            if len(batch) >= self._batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _load(self, index, documents, vectors, progress: BuildProgress | None) -> tuple[int, Counter]:
        """Bulk-load every document; returns how many distinct ids were indexed and the errors by type."""
        total = len(documents)
        errors: Counter = Counter()
        indexed: set[str] = set()
        done = 0
        with self._errors(f"loading index {index}"):
            for batch in self._batches(self._actions(index, documents, vectors, errors)):
                for ok, item in self._send(batch):
                    result = item.get("index", {})
                    if ok:
                        indexed.add(str(result.get("_id")))
                    else:
                        errors[(result.get("error") or {}).get("type", f"http_{result.get('status')}")] += 1
                    done += 1
                    if done % _CHUNK_SIZE == 0:
                        logger.info("indexed %d of %d documents into %s", done, total, index)
                        if progress is not None:
                            progress(done, total)
        if progress is not None:
            progress(total, total)
        return len(indexed), errors

    def _send(self, batch: list[dict]) -> list[tuple[bool, dict]]:
        """Bulk-write ``batch`` in one request and return each document's outcome.

        Documents or whole requests refused with 429 are retried with backoff by the helper.
        A request refused as too large (413: ``http.max_content_length`` or a proxy's limit)
        is split in halves, and later batches go at the size that got through; a single
        document still too large counts as an error of type ``request_entity_too_large``.
        """
        try:
            return list(
                helpers.streaming_bulk(
                    self.client,
                    batch,
                    chunk_size=len(batch),
                    raise_on_error=False,
                    max_retries=_BULK_RETRIES,
                    initial_backoff=self.bulk_backoff_s,
                    request_timeout=_BULK_TIMEOUT_S,
                )
            )
        except TransportError as exc:
            if exc.status_code != 413:
                raise
        if len(batch) == 1:
            return [(False, {"index": {"_id": batch[0]["_id"], "status": 413, "error": {"type": "request_entity_too_large"}}})]
        half = len(batch) // 2
        if half < self._batch_size:
            logger.warning(
                "%s refused a bulk request of %d documents as too large (HTTP 413): sending %d per request",
                self.url, len(batch), half,
            )
            self._batch_size = half
        return self._send(batch[:half]) + self._send(batch[half:])

    def _count(self, index: str) -> int:
        counted = self.client.count(index=index)
        self._check_shards(counted, f"counting the documents of {index}")
        return int(counted["count"])

    def _check_shards(self, response: dict[str, Any], doing: str) -> None:
        """Refuse an answer some shards did not contribute to (HTTP 200 with failed or missing shards)."""
        shards = response.get("_shards") or {}
        total = int(shards.get("total", 0))
        answered = int(shards.get("successful", total))
        if not shards.get("failed") and answered >= total:
            return
        failures = shards.get("failures") or [{}]
        cause = failures[0].get("reason") or {}
        where = f"shard {failures[0].get('shard')} of {failures[0].get('index')}" if failures[0] else "no shard named"
        raise ImageSearchError(
            f"only {answered} of {total} shards answered while {doing} on {self.url} ({where}:"
            f" {cause.get('type')}: {cause.get('reason')}): the answer would be incomplete; check the cluster's health"
            " (GET _cluster/health) and retry"
        )

    def _aliased(self) -> set[str]:
        """The concrete indices the alias points to now (empty when it does not exist)."""
        found = self.client.indices.get_alias(name=self.alias, ignore=404)
        return set() if _absent(found) else set(found)

    def _publish(self, index: str) -> set[str]:
        """Point the alias at ``index`` in one atomic request; returns the indices it pointed to."""
        previous = self._aliased()
        actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": self.alias}} for name in sorted(previous)]
        if not previous and self.client.indices.exists(index=self.alias):
            logger.warning("replacing the concrete index %s by an alias of the same name", self.alias)
            actions.append({"remove_index": {"index": self.alias}})
        actions.append({"add": {"index": index, "alias": self.alias}})
        self.client.indices.update_aliases(body={"actions": actions})
        return previous

    def _clean_up(self, keep: set[str]) -> list[str]:
        """Delete this alias's stale builds; a failure here is logged, never raised.

        Only an index named exactly ``<alias>_v<20 digits>`` whose ``_meta`` says this project
        built it for this alias (builds made before the alias was recorded carry their own
        name only) and that carries no alias of its own: a shared cluster's other indices,
        however they are named, are never touched.
        """
        build_name = re.compile(rf"{re.escape(self.alias)}_v\d{{20}}")
        try:
            found = self.client.indices.get(index=f"{self.alias}_v*")
            stale = sorted(
                name
                for name, body in found.items()
                if name not in keep and build_name.fullmatch(name) and not body.get("aliases") and self._built_here(name, body)
            )
            if stale:
                self.client.indices.delete(index=",".join(stale))
            return stale
        except TransportError as exc:
            logger.warning("could not remove old builds of %s: %s", self.alias, _reason(exc))
            return []

    def _built_here(self, name: str, body: dict[str, Any]) -> bool:
        meta = ((body.get("mappings") or {}).get("_meta") or {}).get(META_KEY)
        return isinstance(meta, dict) and meta.get("name") == name and meta.get("alias", self.alias) == self.alias

    def _drop(self, index: str) -> None:
        try:
            self.client.indices.delete(index=index, ignore_unavailable=True)
        except TransportError as exc:
            logger.warning("could not delete the unfinished build %s: %s", index, _reason(exc))

    # -- querying ---------------------------------------------------------------------

    def _search(self, body: dict[str, Any], doing: str) -> list[dict[str, Any]]:
        with self._errors(doing):
            try:
                response = self.client.search(index=self.alias, **body)
            except NotFoundError:
                raise ImageSearchError(
                    f"no search index {self.alias!r} on {self.url}: materialize the search_index asset first"
                ) from None
        self._check_shards(response, doing)
        return response["hits"]["hits"]

    def _created(self, index: str) -> Release | None:
        """The release that created ``index``, read once per index (the alias moves from build to build)."""
        if index not in self._created_by:
            with self._errors(f"reading the settings of {index}"):
                try:
                    found = self.client.indices.get_settings(index=index, name="index.version.created", flat_settings=True)
                    raw = found[index]["settings"].get("index.version.created")
                    self._created_by[index] = release_from_id(raw) if raw else None
                except AuthorizationException as exc:
                    logger.warning(
                        "%s denied reading index.version.created of %s (%s): converting its scores as %s would",
                        self.url, index, _reason(exc), self.server.label,
                    )
                    self._created_by[index] = None
        return self._created_by[index]

    def knn(self, vector, k, filters=None) -> list[Hit]:
        check_k(k, MAX_RESULT_WINDOW)
        query = np.asarray(vector, dtype=np.float64).ravel()
        body, path = self.impl.knn_query(np.round(query, 6).tolist(), k, filter_clauses(filters))
        body["_source"] = list(STORED_FIELDS)
        hits = self._search(body, "searching by vector")
        return [_hit(h, self._cosine(path, h)) for h in hits]

    def _cosine(self, path: str, hit: dict[str, Any]) -> float:
        created = self._created(hit["_index"]) if self.impl.reads_created_version else None
        cosine = self.impl.formula(path, created).to_cosine(float(hit["_score"]))
        return max(-1.0, min(1.0, cosine))

    def keyword(self, text, k, filters=None, exclude=None) -> list[Hit]:
        check_k(k, MAX_RESULT_WINDOW)
        if not text or not text.strip():
            raise ImageSearchError("the keyword query is empty: give some words to search for")
        query: dict[str, Any] = {
            "must": [{"multi_match": {"query": text, "fields": list(TEXT_FIELDS)}}],
            "filter": filter_clauses(filters),
        }
        if exclude and exclude.strip():
            query["must_not"] = [{"multi_match": {"query": exclude, "fields": list(TEXT_FIELDS)}}]
        body = {
            "size": k,
            "query": {"bool": query},
            "_source": list(STORED_FIELDS),
        }
        return [_hit(h, float(h["_score"])) for h in self._search(body, "searching by keywords")]

    def get(self, photo_id):
        with self._errors(f"reading photo {photo_id}"):
            doc = self.client.get(index=self.alias, id=photo_id, ignore=404)
        if _absent(doc):
            return None
        source = doc.get("_source") or {}
        vector = np.asarray(source.pop(VECTOR_FIELD), dtype=np.float32)
        return {name: source.get(name) for name in STORED_FIELDS}, vector

    def info(self) -> BuildInfo | None:
        with self._errors("reading the build info"):
            mappings = self.client.indices.get_mapping(index=self.alias, ignore=404)
        if _absent(mappings):
            return None
        for body in mappings.values():
            meta = (body.get("mappings") or {}).get("_meta", {}).get(META_KEY)
            if meta:
                return BuildInfo(**{f.name: meta[f.name] for f in dataclasses.fields(BuildInfo)})
        return None

    def count(self) -> int:
        with self._errors("counting documents"):
            counted = self.client.count(index=self.alias, ignore=404)
        if _absent(counted):
            return 0
        self._check_shards(counted, "counting documents")
        return int(counted["count"])


def _absent(response: dict[str, Any]) -> bool:
    """Whether a response asked with ``ignore=404`` says the index, alias or document does not exist."""
    return response.get("status") == 404 or response.get("found") is False


def _hit(raw: dict[str, Any], score: float) -> Hit:
    source = raw.get("_source") or {}
    return Hit(
        photo_id=str(source.get("photo_id") or raw["_id"]),
        score=score,
        fields={name: source.get(name) for name in STORED_FIELDS},
    )


def _reason(exc: TransportError) -> str:
    """The server's error type and reason, on one line."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict):
        cause = (error.get("root_cause") or [error])[0]
        return f"{cause.get('type', error.get('type'))}: {cause.get('reason', error.get('reason'))}"
    return str(error or exc.error)
