"""The engines the fake answers as: versions, plugins, faults and score formulas, each with its source."""

from __future__ import annotations

import datetime as dt
import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: ``org.opensearch.Version.MASK``: OpenSearch flips this bit in its version ids, so an index
#: created by OpenSearch 2.11.1 has ``index.version.created`` 2110199 ^ MASK.
OPENSEARCH_VERSION_MASK = 0x08000000


@dataclass(frozen=True)
class Faults:
    """Failures a real cluster answers with, each in that engine's own shape.

    - ``item_rejections``: every n-th document of a bulk request is refused once with an
      item-level 429 ``es_rejected_execution_exception`` (a full write thread-pool queue; Elasticsearch
      docs, "Rejected requests"; named by ``ServerProfile.rejected_execution``); accepted when sent again.
    - ``bulk_rejections``: the first n bulk requests are refused as a whole with 429
      ``es_rejected_execution_exception`` "rejected execution of coordinating operation" (named likewise;
      Elasticsearch 7.9+ indexing pressure; OpenSearch shard indexing pressure).
    - ``max_content_length``: a request body above this many bytes gets 413 with an empty
      body and a closed connection (Netty's ``HttpObjectAggregator`` behind
      ``http.max_content_length``, and proxies in front of managed clusters).
    - ``bulk_breaker``: every bulk request trips the parent circuit breaker: 429
      ``circuit_breaking_exception`` "[parent] Data too large, data for [<http_request>]",
      durability PERMANENT (Elasticsearch docs, "Circuit breaker errors").
    - ``failed_shards``: searches and counts lose the last n shards of each index, answered
      HTTP 200 with ``_shards.failed`` and ``_shards.failures`` (Elasticsearch docs, "Shard
      failures": search returns partial results).
    - ``monitor_forbidden``: the credentials lack the cluster ``monitor`` privileges, so
      ``GET /`` (``cluster:monitor/main``), ``GET /_nodes`` and ``GET /_cat/plugins`` answer
      403 ``security_exception``, while index reads and writes work.
    - ``rejection_rounds``: how many times in a row ``item_rejections`` refuses the same
      document (a write queue that stays full for a while under sustained load).
    - ``aliases_lost_answers``: the first n ``POST _aliases`` requests are applied, then
      answered 504 as a proxy whose upstream timed out; ``elasticsearch7``'s transport resends
      on 502/503/504 (``Transport.retry_on_status``), so the resend meets the swap already made.
    - ``settings_forbidden``: a role granted ``read`` and ``indices:admin/mappings/get`` but not
      ``indices:monitor/settings/get`` (OpenSearch security roles may list single actions; in
      Elasticsearch both sit in ``view_index_metadata``): ``GET <index>/_settings`` and
      ``GET <index>`` answer 403 while searches, ``_doc`` reads and mappings work.
    - ``flood_stage``: the load fills a node's disk past the flood-stage watermark, so every bulk
      item answers 429 ``cluster_block_exception`` "[TOO_MANY_REQUESTS/12/disk usage exceeded
      flood-stage watermark, index has read-only-allow-delete block]" (``IndexMetadata.
      INDEX_READ_ONLY_ALLOW_DELETE_BLOCK``, ``RestStatus.TOO_MANY_REQUESTS`` in Elasticsearch 7.x and
      OpenSearch; Elasticsearch 6.x answered 403). Only bulk items here: the lock document is written first.
    - ``search_rejections``: the first n searches (each ``_msearch`` item counts) are refused on every
      shard, answered 429 ``search_phase_execution_exception`` "all shards failed" whose root cause is
      the shard's refusal (``SearchPhaseExecutionException.status()``: with no shard answering, the
      status of the shard failures' cause; ``MultiSearchResponse.Item`` writes it with its ``status``).
      The cause is ``search_breaker``'s: ``None``, a full search thread-pool queue
      (``EsRejectedExecutionException``, 429, named by ``ServerProfile.rejected_execution``);
      ``"TRANSIENT"`` or ``"PERMANENT"``, the parent circuit breaker with that durability
      (``CircuitBreakingException.metadataToXContent``; ``HierarchyCircuitBreakerService.checkParentLimit``
      says PERMANENT when most of the memory is held by permanent breakers such as fielddata).
    """

    item_rejections: int = 0
    bulk_rejections: int = 0
    max_content_length: int | None = None
    bulk_breaker: bool = False
    failed_shards: int = 0
    monitor_forbidden: bool = False
    rejection_rounds: int = 1
    aliases_lost_answers: int = 0
    settings_forbidden: bool = False
    flood_stage: bool = False
    search_rejections: int = 0
    search_breaker: str | None = None


@dataclass(frozen=True)
class ServerProfile:
    """How one engine answers: its ``GET /``, what its mapping and scoring accept, its faults."""

    name: str
    number: str
    distribution: str | None
    build_flavor: str | None
    tagline: str
    plugins: tuple[str, ...] = ()
    compatibility_mode: bool = False
    default_shards: int = 1
    faults: Faults = Faults()
    #: During a rolling upgrade, the version the elected cluster manager still runs (``None``: the same as
    #: ``number``). It validates a new index's settings (``MetadataCreateIndexService.validateIndexSettings``
    #: -> ``IndexScopedSettings.validate`` against the settings its own plugins register) and stamps
    #: ``index.version.created`` as the oldest node's version (``Version.min(Version.CURRENT,
    #: nodes.getSmallestNonClientNodeVersion())``), while ``GET /`` and searches answer from the node asked.
    manager_number: str | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.number.split("."))

    @property
    def opensearch(self) -> bool:
        return self.distribution == "opensearch"

    @property
    def knn_plugin(self) -> bool:
        return any("knn" in p for p in self.plugins)

    @property
    def dense_vector(self) -> bool:
        return not self.opensearch and self.build_flavor == "default"

    @property
    def rejected_execution(self) -> str:
        """The wire name of a refusal for a full queue or indexing pressure.

        Elasticsearch: ``EsRejectedExecutionException`` -> ``es_rejected_execution_exception``.
        OpenSearch renamed it ``OpenSearchRejectedExecutionException`` and ``OpenSearchException.getExceptionName``
        drops the ``OpenSearch`` prefix: ``rejected_execution_exception`` (as OpenSearch users quote it for
        "rejected execution of coordinating operation").
        """
        return "rejected_execution_exception" if self.opensearch else "es_rejected_execution_exception"

    @property
    def manager(self) -> "ServerProfile":
        """The profile of the elected cluster manager (itself unless a rolling upgrade is under way)."""
        return self if self.manager_number is None else replace(self, number=self.manager_number, manager_number=None)

    @property
    def approximate_threshold(self) -> int | None:
        """Default ``index.knn.advanced.approximate_threshold``; ``None`` where the setting does not exist.

        k-NN 2.18.0.0 ``KNNSettings.java``: ``INDEX_KNN_ADVANCED_APPROXIMATE_THRESHOLD_DEFAULT_VALUE = 15_000``;
        2.19.0.0 and 3.x: 0. Before 2.18 there is no such setting and every segment gets its graph.
        """
        if not self.opensearch or self.version < (2, 18):
            return None
        return 15_000 if self.version < (2, 19) else 0

    @property
    def product_header(self) -> bool:
        return not self.opensearch and self.version >= (7, 14)

    def plugin_version(self, plugin: str) -> str:
        """Open Distro 1.13 plugins ship with Elasticsearch 7.10.2; OpenSearch's carry its version."""
        return (
            f"{self.number}.0" if self.opensearch else ("1.13.0.0" if plugin.startswith("opendistro") else self.number)
        )

    def version_id(self) -> str:
        """``index.version.created`` of an index this server creates (``Version.computeID``)."""
        major, minor, patch = (self.version + (0, 0))[:3]
        legacy = major * 1_000_000 + minor * 10_000 + patch * 100 + 99
        return str(legacy ^ OPENSEARCH_VERSION_MASK if self.opensearch else legacy)

    def root(self) -> dict[str, Any]:
        """The ``GET /`` body."""
        version: dict[str, Any] = {"number": "7.10.2" if self.compatibility_mode else self.number}
        if self.distribution and not self.compatibility_mode:
            version["distribution"] = self.distribution
        if self.build_flavor:
            version["build_flavor"] = self.build_flavor
        version.update(
            build_type="tar",
            build_hash="0" * 40,
            build_date="2024-01-01T00:00:00.000000Z",
            build_snapshot=False,
            lucene_version="9.7.0" if self.opensearch else "8.11.1",
            minimum_wire_compatibility_version="7.10.0" if self.opensearch else "6.8.0",
            minimum_index_compatibility_version="7.0.0" if self.opensearch else "6.0.0-beta1",
        )
        return {
            "name": "fake-node",
            "cluster_name": "fake-cluster",
            "cluster_uuid": "fAkEcLuStErUuId0000000",
            "version": version,
            "tagline": self.tagline,
        }

    def score(self, path: str, cos: float, created: tuple[int, ...]) -> float:
        """The engine's ``_score`` for a cosine similarity on a k-NN ``path``, for an index ``created`` by that version.

        ``ann`` (an nmslib or faiss graph with space type cosinesimil), ``exact`` (a segment of a
        native-engine field whose graph was skipped, see :attr:`approximate_threshold`), ``lucene`` (a per-field
        Lucene HNSW), ``knn_score`` (the k-NN plugin's exact script) or ``painless`` (the
        Elasticsearch expression ``cosineSimilarity(...) + 1.0``). k-NN 2.19.0 (#2357, #2375)
        moved ``SpaceType.COSINESIMIL.scoreTranslation`` to (1 + cos) / 2 for every index, but
        the ``knn_score`` script only on indices created by 2.19 or later.
        """
        if path == "painless":
            value = 1.0 + cos
        elif path in ("lucene", "exact"):
            # exact: a native-engine segment without a graph, scored by k-NN 2.18+ ``ExactSearcher`` through
            # ``VectorIdsKNNIterator.score`` -> ``KNNVectorSimilarityFunction.COSINE``, Lucene's (1 + cos) / 2.
            value = (1.0 + cos) / 2.0
        elif path == "ann":
            value = (1.0 + cos) / 2.0 if self.opensearch and self.version >= (2, 19) else 1.0 / (2.0 - cos)
        else:
            value = (1.0 + cos) / 2.0 if self.opensearch and created >= (2, 19) else 1.0 + cos
        return float(np.float32(value))


_ES_TAGLINE = "You Know, for Search"
_OS_TAGLINE = "The OpenSearch Project: https://opensearch.org/"
_OS_KNN = ("opensearch-knn",)
_ODFE = ("opendistro-knn", "opendistro-sql")


def _opensearch(name: str, number: str, **changes: Any) -> ServerProfile:
    return ServerProfile(name, number, "opensearch", None, _OS_TAGLINE, _OS_KNN, **changes)


PROFILES = {
    p.name: p
    for p in (
        # ESCloud 7.10 reports itself as Elasticsearch 7.10.2 (OSS) with the Open Distro 1.13 k-NN plugin.
        ServerProfile("escloud-7.10", "7.10.2", None, "oss", _ES_TAGLINE, _ODFE),
        _opensearch("opensearch-2.11", "2.11.1"),
        _opensearch("opensearch-2.17", "2.17.1"),
        _opensearch("opensearch-2.18", "2.18.0"),
        _opensearch("opensearch-2.19", "2.19.1"),
        _opensearch("opensearch-3.1", "3.1.0"),
        ServerProfile("elasticsearch-7.17", "7.17.25", None, "default", _ES_TAGLINE),
        ServerProfile("elasticsearch-oss-7.10", "7.10.2", None, "oss", _ES_TAGLINE),
        # compatibility.override_main_response_version on (AWS domains offer it as a checkbox).
        _opensearch("opensearch-2.11-compatibility", "2.11.1", compatibility_mode=True),
        _opensearch("opensearch-2.11-no-monitor", "2.11.1", faults=Faults(monitor_forbidden=True)),
        ServerProfile(
            "escloud-7.10-no-monitor", "7.10.2", None, "oss", _ES_TAGLINE, _ODFE, faults=Faults(monitor_forbidden=True)
        ),
        _opensearch("opensearch-2.11-3-shards", "2.11.1", default_shards=3),
        _opensearch("opensearch-2.11-item-429", "2.11.1", faults=Faults(item_rejections=7)),
        _opensearch("opensearch-2.11-bulk-429", "2.11.1", faults=Faults(bulk_rejections=2)),
        _opensearch("opensearch-2.11-bulk-413", "2.11.1", faults=Faults(max_content_length=64 * 1024)),
        _opensearch("opensearch-2.11-circuit-breaker", "2.11.1", faults=Faults(bulk_breaker=True)),
        _opensearch("opensearch-2.11-partial-shards", "2.11.1", default_shards=3, faults=Faults(failed_shards=1)),
        # A write queue full for minutes: every 7th document refused 6 times running, whole requests 8 times.
        _opensearch(
            "opensearch-2.11-sustained-429",
            "2.11.1",
            faults=Faults(item_rejections=7, rejection_rounds=6, bulk_rejections=8),
        ),
        _opensearch("opensearch-2.11-alias-504", "2.11.1", faults=Faults(aliases_lost_answers=1)),
        _opensearch("opensearch-2.19-no-settings", "2.19.1", faults=Faults(settings_forbidden=True)),
        # A rolling upgrade to 2.18 with the cluster manager upgraded last (OpenSearch docs, "Rolling upgrade").
        _opensearch("opensearch-2.18-manager-2.17", "2.18.0", manager_number="2.17.1"),
    )
}


class ApiError(Exception):
    """An error the fake answers with, in the engines' JSON error shape."""

    def __init__(self, status: int, kind: str, reason: str, answer: dict[str, Any] | None = None, **extra: Any):
        super().__init__(reason)
        self.status, self.kind, self.reason, self.answer, self.extra = status, kind, reason, answer, extra

    def body(self) -> dict[str, Any]:
        if self.answer is not None:
            return self.answer
        cause = {"type": self.kind, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def _not_found(name: str) -> ApiError:
    return ApiError(404, "index_not_found_exception", f"no such index [{name}]", index=name)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = value
    return out


def _parse_date(value: Any) -> dt.datetime:
    text = str(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T00:00:00"
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _tokens(text: Any) -> list[str]:
    return re.findall(r"\w+", str(text or "").lower())


def _version_from_id(raw: str) -> tuple[int, int, int]:
    """The inverse of :meth:`ServerProfile.version_id`."""
    number = int(raw)
    if number & OPENSEARCH_VERSION_MASK:
        number ^= OPENSEARCH_VERSION_MASK
    return (number // 1_000_000 % 100, number // 10_000 % 100, number // 100 % 100)


@dataclass
class FakeIndex:
    """One concrete index: settings, mapping, stored documents and the refreshed view searches read."""

    name: str
    settings: dict[str, str]
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The refresh that made each visible document searchable: with its shard, the Lucene segment it is in.
    segment_of: dict[str, int] = field(default_factory=dict)
    refreshes: int = 0
    #: Each document's ``_seq_no`` (per index here; per shard on a real cluster), for optimistic concurrency.
    seq_no: dict[str, int] = field(default_factory=dict)
    next_seq_no: int = 0

    @property
    def properties(self) -> dict[str, Any]:
        return self.mappings.get("properties", {})

    @property
    def created(self) -> tuple[int, int, int]:
        return _version_from_id(self.settings["version.created"])

    @property
    def shards(self) -> int:
        return int(self.settings["number_of_shards"])

    def shard_of(self, doc_id: str) -> int:
        return zlib.crc32(doc_id.encode()) % self.shards

    def refresh(self) -> None:
        """Make written documents searchable; those new or changed since the last refresh form new segments.

        A refresh flushes the indexing buffer into one new segment per shard (Lucene
        ``IndexWriter`` via ``InternalEngine.refresh``); merges are not modelled.
        """
        self.refreshes += 1
        for doc_id, source in self.docs.items():
            if self.visible.get(doc_id) is not source:
                self.segment_of[doc_id] = self.refreshes
        self.visible = dict(self.docs)

    def write(self, doc_id: str, source: dict[str, Any]) -> int:
        """Store a document and return its new ``_seq_no``."""
        self.docs[doc_id] = source
        self.seq_no[doc_id] = self.next_seq_no
        self.next_seq_no += 1
        return self.seq_no[doc_id]
