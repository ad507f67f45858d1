"""The Elasticsearch, OpenSearch and ESCloud search backend, through ``elasticsearch7``.

One backend class talks to the server; one small engine class per server family holds
what differs between them: the vector mapping, the kNN query (with filters applied inside
the search), and how the engine's ``_score`` maps back to cosine similarity.

- :class:`EsCloudEngine` (``escloud``): the original design's exact index (index-level
  ``knn.space_type: cosinesimil``, a plain ``knn_vector`` field) and its ``knn`` query, for
  ESCloud 7.10, Open Distro 7.10 and OpenSearch 1.x-2.x. Its k-NN plugin cannot filter an
  approximate search, so a filtered search runs the plugin's exact ``knn_score`` script
  over the filtered documents instead.
- :class:`OpenSearchEngine` (``opensearch``): OpenSearch 2.4+ and 3.x, a per-field HNSW
  ``method`` on the Lucene engine, whose ``knn`` query takes a ``filter``.
- :class:`Elasticsearch7Engine` (``elasticsearch``): stock Elasticsearch 7.x, a
  ``dense_vector`` field scored exactly by a ``script_score`` cosine.

``elasticsearch7`` 7.14+ refuses every server that is not Elastic's own Elasticsearch
(OpenSearch answers as an unknown product). The backend therefore reads ``GET /`` itself,
accepts only the servers listed above, and tells the client its product check is done
(:class:`_CheckedTransport`).

Every build goes into a new concrete index ``<alias>_v<stamp>``; once its document count
is validated one atomic ``POST _aliases`` moves the alias. Clean-up deletes only indices
named exactly like this alias's builds whose ``_meta`` says this project made them for this
alias, keeps the previous build for rollback and any build someone gave an alias.
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
    BuildReport,
    Filters,
    Hit,
    Progress,
    SearchBackend,
)
from resources.config import Settings, mask_url
from resources.errors import ImageSearchError

logger = logging.getLogger(__name__)

VECTOR_FIELD = "photo_embedding"
TEXT_FIELDS = ("describe", "photo_description", "ai_description")
#: The largest ``k``: both ``index.max_result_window`` and the k-NN plugins' ``k`` stop at 10,000.
MAX_K = 10_000
META_KEY = "image_search"
ENGINE_NAMES = ("auto", "escloud", "opensearch", "elasticsearch")
_CHUNK_SIZE = 500
_BULK_TIMEOUT_S = 120
_BULK_RETRIES = 3
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /`` (and, for 7.x, the plugin list) says about the server."""

    distribution: str
    version: tuple[int, int, int]
    build_flavor: str | None
    knn_plugin: bool

    @property
    def label(self) -> str:
        """E.g. ``OpenSearch 2.11.0`` or ``Elasticsearch 7.17.25 (oss)``."""
        name = "OpenSearch" if self.distribution == "opensearch" else "Elasticsearch"
        flavor = f" ({self.build_flavor})" if self.build_flavor and self.build_flavor != "default" else ""
        return f"{name} {'.'.join(map(str, self.version))}{flavor}"

    @property
    def unified_cosine_scores(self) -> bool:
        """OpenSearch 2.19+ scores cosine as ``(1 + cos) / 2`` on every k-NN path (k-NN#2357, #2375)."""
        return self.distribution == "opensearch" and self.version >= (2, 19, 0)


ScoreToCosine = Callable[[float], float]


def _half_plus_half(score: float) -> float:
    return 2.0 * score - 1.0


def _one_plus(score: float) -> float:
    return score - 1.0


def _reciprocal(score: float) -> float:
    return 2.0 - 1.0 / score


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
    max_dim: ClassVar[int] = 16_000

    def __init__(self, server: ServerInfo):
        self.server = server

    @abstractmethod
    def supports(self, server: ServerInfo) -> bool:
        """Whether ``server`` can run this engine's mapping and queries."""

    @abstractmethod
    def vector_mapping(self, dim: int) -> dict[str, Any]:
        """The vector field's mapping."""

    def index_settings(self) -> dict[str, Any]:
        """Settings the index is created with (the loading ones included)."""
        return {**self.loading_settings, "analysis": _ANALYSIS}

    def create_body(self, dim: int, meta: dict[str, Any]) -> dict[str, Any]:
        """The ``PUT <index>`` body."""
        properties = _filter_properties()
        properties[VECTOR_FIELD] = self.vector_mapping(dim)
        return {
            "settings": {"index": self.index_settings()},
            "mappings": {"dynamic": "false", "_meta": {META_KEY: meta}, "properties": properties},
        }

    @abstractmethod
    def knn_query(self, vector: list[float], k: int, filters: list[dict]) -> tuple[dict[str, Any], ScoreToCosine]:
        """The ``_search`` body for the ``k`` nearest documents passing ``filters``, and its score conversion."""


class EsCloudEngine(Engine):
    """The original design: ESCloud 7.10, Open Distro 7.10, OpenSearch 1.x-2.x (nmslib)."""

    name = "escloud"
    #: The design's own values; the load relaxes refresh and replicas, then restores these.
    serving_settings = {"refresh_interval": "60s", "number_of_replicas": "1"}
    loading_settings = {"refresh_interval": "-1", "number_of_replicas": "0"}

    def supports(self, server: ServerInfo) -> bool:
        return server.knn_plugin and not (server.distribution == "opensearch" and server.version >= (3, 0, 0))

    def index_settings(self) -> dict[str, Any]:
        return {
            "number_of_shards": "3",
            "knn.space_type": "cosinesimil",
            "knn": "true",
            **self.loading_settings,
            "analysis": _ANALYSIS,
        }

    def vector_mapping(self, dim: int) -> dict[str, Any]:
        return {"type": "knn_vector", "dimension": dim}

    def knn_query(self, vector, k, filters):
        if not filters:
            body = {"size": k, "query": {"knn": {VECTOR_FIELD: {"vector": vector, "k": k}}}}
            return body, (_half_plus_half if self.server.unified_cosine_scores else _reciprocal)
        script = {
            "source": "knn_score",
            "lang": "knn",
            "params": {"field": VECTOR_FIELD, "query_value": vector, "space_type": "cosinesimil"},
        }
        body = {"size": k, "query": {"script_score": {"query": {"bool": {"filter": filters}}, "script": script}}}
        return body, (_half_plus_half if self.server.unified_cosine_scores else _one_plus)


class OpenSearchEngine(Engine):
    """OpenSearch 2.4+ and 3.x: per-field HNSW on the Lucene engine, filters inside the kNN search."""

    name = "opensearch"

    def supports(self, server: ServerInfo) -> bool:
        return server.distribution == "opensearch" and server.version >= (2, 4, 0)

    def index_settings(self) -> dict[str, Any]:
        return {"knn": "true", **super().index_settings()}

    def vector_mapping(self, dim: int) -> dict[str, Any]:
        return {
            "type": "knn_vector",
            "dimension": dim,
            "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene"},
        }

    def knn_query(self, vector, k, filters):
        clause: dict[str, Any] = {"vector": vector, "k": k}
        if filters:
            clause["filter"] = {"bool": {"filter": filters}}
        return {"size": k, "query": {"knn": {VECTOR_FIELD: clause}}}, _half_plus_half


class Elasticsearch7Engine(Engine):
    """Stock Elasticsearch 7.x (default distribution): ``dense_vector`` and an exact ``script_score`` cosine."""

    name = "elasticsearch"
    max_dim = 2048

    def supports(self, server: ServerInfo) -> bool:
        return server.distribution == "elasticsearch" and server.build_flavor == "default" and server.version >= (7, 6, 0)

    def vector_mapping(self, dim: int) -> dict[str, Any]:
        return {"type": "dense_vector", "dims": dim}

    def knn_query(self, vector, k, filters):
        inner = {"bool": {"filter": filters}} if filters else {"match_all": {}}
        script = {
            "source": f"cosineSimilarity(params.query_vector, '{VECTOR_FIELD}') + 1.0",
            "params": {"query_vector": vector},
        }
        return {"size": k, "query": {"script_score": {"query": inner, "script": script}}}, _one_plus


ENGINES: dict[str, type[Engine]] = {cls.name: cls for cls in (EsCloudEngine, OpenSearchEngine, Elasticsearch7Engine)}


class _CheckedTransport(Transport):
    """``elasticsearch7``'s transport, told that the product check is already done.

    :class:`ElasticsearchBackend` reads ``GET /`` itself before any other request and
    refuses servers it does not support (:func:`read_server`), so the client's own check,
    which refuses OpenSearch, is replaced rather than skipped.
    """

    def _do_verify_elasticsearch(self, headers, timeout):
        self._verified_elasticsearch = True


def _version(number: str) -> tuple[int, int, int]:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", number or "")
    if not match:
        return (0, 0, 0)
    major, minor, patch = match.groups()
    return (int(major), int(minor), int(patch or 0))


def read_server(root: dict[str, Any], plugins: list[str] | None) -> ServerInfo:
    """Identify the server from its ``GET /`` answer; raise for anything the project does not support.

    ``plugins`` lists the plugin components of a 7.x server (``None`` when they could not be
    read); it tells an Elasticsearch with the k-NN plugin (ESCloud) from a stock one.
    """
    version = root.get("version") or {}
    number = _version(str(version.get("number", "")))
    if version.get("distribution") == "opensearch":
        if number[0] not in (1, 2, 3):
            raise ImageSearchError(f"OpenSearch {version.get('number')} is not supported: use OpenSearch 1.x to 3.x")
        return ServerInfo("opensearch", number, None, True)
    if root.get("tagline") != "You Know, for Search" or number == (0, 0, 0):
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
    knn = any("knn" in p for p in plugins) if plugins is not None else flavor == "oss"
    return ServerInfo("elasticsearch", number, flavor, knn)


def choose_engine(requested: str, server: ServerInfo) -> Engine:
    """The engine ``IMAGE_SEARCH_ES_ENGINE`` names, or for ``auto`` the best one ``server`` runs."""
    if requested not in ENGINE_NAMES:
        raise ImageSearchError(
            f"IMAGE_SEARCH_ES_ENGINE={requested!r} is not supported: use one of {', '.join(ENGINE_NAMES)}"
        )
    if requested == "auto":
        for name in ("opensearch", "escloud", "elasticsearch"):
            engine = ENGINES[name](server)
            if engine.supports(server):
                return engine
        raise ImageSearchError(
            f"{server.label} has neither a k-NN plugin nor dense_vector support: install the k-NN plugin"
            " or use Elasticsearch's default distribution"
        )
    engine = ENGINES[requested](server)
    if not engine.supports(server):
        raise ImageSearchError(
            f"IMAGE_SEARCH_ES_ENGINE={requested} does not run on {server.label}: set it to auto"
        )
    return engine


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

    Construction reads ``GET /`` once to identify the server and pick the engine; an
    unreachable or unsupported server raises :class:`ImageSearchError` naming the masked URL.
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
        self.settings = settings
        self.alias = settings.index_name
        self.url = mask_url(settings.es_url)
        self._batch_size = _CHUNK_SIZE
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
            root = self.client.info()
            self.server = read_server(root, self._plugins(root))
        self.impl = choose_engine(settings.es_engine, self.server)
        self.engine = self.impl.name
        logger.info("search index: %s at %s, engine %s, alias %s", self.server.label, self.url, self.engine, self.alias)

    def _plugins(self, root: dict[str, Any]) -> list[str] | None:
        if (root.get("version") or {}).get("distribution") == "opensearch":
            return None
        try:
            rows = self.client.cat.plugins(format="json")
        except EsConnectionError:
            raise
        except TransportError:
            return None
        return [str(row.get("component", "")) for row in rows]

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
            raise ImageSearchError(f"{self.url} timed out while {doing}: check the cluster's health") from None
        except EsConnectionError:
            raise ImageSearchError(
                f"cannot reach {self.url} while {doing}: check IMAGE_SEARCH_ES_URL and that the cluster is up"
            ) from None
        except (AuthenticationException, AuthorizationException) as exc:
            raise ImageSearchError(
                f"{self.url} refused the credentials (HTTP {exc.status_code}) while {doing}: check"
                " IMAGE_SEARCH_ES_USERNAME/PASSWORD or IMAGE_SEARCH_ES_API_KEY"
            ) from None
        except TransportError as exc:
            advice = ""
            if exc.status_code == 429:
                advice = " (the cluster is overloaded or short of heap: retry later, or give it more memory)"
            raise ImageSearchError(
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
            raise ImageSearchError(f"{dim}-dimensional vectors exceed the {self.engine} engine's {self.impl.max_dim}")
        index = f"{self.alias}_v{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S%f}"
        meta = {**dataclasses.asdict(dataclasses.replace(info, dim=dim, count=0, name=index)), "alias": self.alias}
        with self._errors(f"creating index {index}"):
            self.client.indices.create(index=index, **self.impl.create_body(dim, meta))
        try:
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

    def _load(self, index, documents, vectors, progress: Progress | None) -> tuple[int, Counter]:
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

    def knn(self, vector, k, filters=None) -> list[Hit]:
        _check_k(k)
        query = np.asarray(vector, dtype=np.float64).ravel()
        body, to_cosine = self.impl.knn_query(np.round(query, 6).tolist(), k, filter_clauses(filters))
        body["_source"] = list(STORED_FIELDS)
        return [_hit(h, max(-1.0, min(1.0, to_cosine(h["_score"])))) for h in self._search(body, "searching by vector")]

    def keyword(self, text, k, filters=None) -> list[Hit]:
        _check_k(k)
        if not text or not text.strip():
            raise ImageSearchError("the keyword query is empty: give some words to search for")
        body = {
            "size": k,
            "query": {
                "bool": {
                    "must": [{"multi_match": {"query": text, "fields": list(TEXT_FIELDS)}}],
                    "filter": filter_clauses(filters),
                }
            },
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


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ImageSearchError(f"k={k} is out of range: ask for 1 to {MAX_K} results")


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
