"""What differs between search engine families: the vector mapping, the kNN query, the score formula.

One small class per family (``escloud``, ``opensearch``, ``elasticsearch``), chosen by
``IMAGE_SEARCH_ES_ENGINE`` or from the server's identity; each names the engine source its
choices follow. Details and the compatibility table: docs/backends.md.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from resources.errors import ImageSearchError
from resources.index.base import ORIENTATIONS, Filters
from resources.index.es_transport import Release, ServerInfo

VECTOR_FIELD = "photo_embedding"
TEXT_FIELDS = ("describe", "photo_description", "ai_description")
META_KEY = "image_search"
ENGINE_NAMES = ("auto", "escloud", "opensearch", "elasticsearch")
COSINE = "cosinesimil"


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


#: Build a graph for every segment, however small. k-NN 2.18.0.0 ``KNNSettings.java`` added
#: ``index.knn.advanced.approximate_threshold`` (default 15,000; 2.19.0.0 and 3.x default 0), and
#: ``NativeEngines990KnnVectorsWriter.shouldSkipBuildingVectorDataStructure`` skips the nmslib/faiss
#: graph of a segment with fewer live documents. Such segments are searched by ``ExactSearcher``,
#: which scores through Lucene's COSINE, (1 + cos) / 2, while 2.18's nmslib graphs score
#: ``SpaceType.COSINESIMIL.scoreTranslation`` 1 / (2 - cos) (k-NN #2229, #2319): one index would mix
#: both. OpenSearch before 2.18 knows no such setting and always builds graphs.
THRESHOLD = "knn.advanced.approximate_threshold"
ALWAYS_GRAPHS = {THRESHOLD: "0"}


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

    def possible_formulas(self, path: str) -> tuple[ScoreFormula, ...]:
        """Every formula ``path`` may score by when the index's created version cannot be read."""
        return (self.formula(path, None),)


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
            engine = "faiss" if self.server.version >= (2, 19, 0) else "nmslib"
            graphs = ALWAYS_GRAPHS if self.server.version >= (2, 18, 0) else {}
            return [(graphs, _hnsw(dim, engine))]
        candidates = [(graphs, _hnsw(dim, engine)) for engine in ("nmslib", "faiss") for graphs in (ALWAYS_GRAPHS, {})]
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

    def possible_formulas(self, path):
        """Without the created version a ``knn_score`` script may score either way; graphs too when the server hides its version."""
        if path == "script":
            return (ONE_PLUS, HALF)
        if self.server.release is None:
            return (RECIPROCAL, HALF)
        return (self.formula(path, None),)


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


def choose_engine(requested: str, server: ServerInfo) -> Engine:
    """The engine ``IMAGE_SEARCH_ES_ENGINE`` names, or for ``auto`` the best one ``server`` runs."""
    check_engine_name(requested)
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
        raise ImageSearchError(f"IMAGE_SEARCH_ES_ENGINE={requested} does not run on {server.label}: set it to auto")
    return engine


def check_engine_name(requested: str) -> None:
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
