"""The query side of the Elasticsearch backend: kNN with true cosines, keywords, one photo, build info.

:class:`EsQueries` is the half of ``ElasticsearchBackend`` (``elasticsearch.py``) that reads
a published build: it turns each engine's scores into cosines, telling the score formula
from a stored vector when the index's settings cannot be read. It relies on the attributes
the backend's constructor sets (client, url, alias, reading, impl and the per-index caches).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import numpy as np
from elasticsearch7.exceptions import AuthorizationException, NotFoundError

from resources.errors import ClusterError, ImageSearchError
from resources.index.base import STORED_FIELDS, BuildInfo, Hit, check_k
from resources.index.es_engines import META_KEY, TEXT_FIELDS, VECTOR_FIELD, ScoreFormula, filter_clauses
from resources.index.es_publish import aliased
from resources.index.es_transport import Release, absent, check_shards, reason, release_from_id
from resources.index.es_verify import TOLERANCE

logger = logging.getLogger("resources.index.elasticsearch")

#: The largest ``k``: both ``index.max_result_window`` and the k-NN plugins' ``k`` stop at 10,000.
MAX_RESULT_WINDOW = 10_000


class EsQueries:
    """Reading a published build (mixed into ``ElasticsearchBackend``; see the module docstring)."""

    def pinned(self):
        """This index held at the concrete build the alias names now, so one request reads one build.

        One ``GET _alias`` per request. Credentials that may not read aliases
        (``view_index_metadata``) read through the alias instead, as before, and are asked once.
        """
        view = copy.copy(self)
        if self._alias_unreadable:
            return view
        with self._errors(f"reading where {self.alias} points"):
            try:
                indices = aliased(self.client, self.alias)
            except AuthorizationException:
                self._alias_unreadable = True
                return view
        if len(indices) == 1:
            view.reading = indices.pop()
        return view

    def _search(self, body: dict[str, Any], doing: str, index: str | None = None) -> list[dict[str, Any]]:
        with self._errors(doing):
            try:
                response = self.client.search(index=index or self.reading, **body)
            except NotFoundError:
                raise ImageSearchError(
                    f"no search index {self.alias!r} on {self.url}: materialize the search_index asset first"
                ) from None
        check_shards(response, self.url, doing)
        return response["hits"]["hits"]

    def _created(self, index: str) -> Release | None:
        """The release that created ``index``, read once per index (the alias moves from build to build)."""
        if index not in self._created_by:
            with self._errors(f"reading the settings of {index}"):
                try:
                    found = self.client.indices.get_settings(
                        index=index, name="index.version.created", flat_settings=True
                    )
                    raw = found[index]["settings"].get("index.version.created")
                    self._created_by[index] = release_from_id(raw) if raw else None
                except AuthorizationException as exc:
                    logger.warning(
                        "%s denied reading index.version.created of %s (%s): telling its score formula from a stored vector",
                        self.url,
                        index,
                        reason(exc),
                    )
                    self._unreadable.add(index)
                    self._created_by[index] = None
        return self._created_by[index]

    def knn(self, vector, k, filters=None) -> list[Hit]:
        check_k(k, MAX_RESULT_WINDOW)
        query = np.round(np.asarray(vector, dtype=np.float64).ravel(), 6)
        body, path = self.impl.knn_query(query.tolist(), k, filter_clauses(filters))
        body["_source"] = list(STORED_FIELDS)
        hits = self._search(body, "searching by vector")
        formulas = {name: self._formula(name, path, hits, query) for name in {h["_index"] for h in hits}}
        return [_hit(h, max(-1.0, min(1.0, formulas[h["_index"]].to_cosine(float(h["_score"]))))) for h in hits]

    def _formula(self, index: str, path: str, hits: list[dict[str, Any]], query: np.ndarray) -> ScoreFormula:
        """The formula ``index``'s ``path`` scores by; told from a stored vector when its settings cannot be read."""
        if not self.impl.reads_created_version:
            return self.impl.formula(path, None)
        created = self._created(index)
        if index not in self._unreadable:
            return self.impl.formula(path, created)
        if (index, path) not in self._calibrated:
            candidates = self.impl.possible_formulas(path)
            ours = [h for h in hits if h["_index"] == index]
            spread = [
                max(f.to_cosine(float(h["_score"])) for f in candidates)
                - min(f.to_cosine(float(h["_score"])) for f in candidates)
                for h in ours
            ]
            if len(candidates) == 1 or max(spread, default=0.0) <= TOLERANCE / 2:
                return candidates[0]  # every candidate gives these hits the same cosine
            self._calibrated[(index, path)] = self._calibrate(index, candidates, ours[int(np.argmax(spread))], query)
        return self._calibrated[(index, path)]

    def _calibrate(self, index: str, candidates, hit: dict[str, Any], query: np.ndarray) -> ScoreFormula:
        """The candidate formula that turns ``hit``'s score into its true cosine, read from its stored vector."""
        with self._errors(f"reading the vector of {hit['_id']} in {index}"):
            doc = self.client.get(index=index, id=hit["_id"], _source_includes=VECTOR_FIELD)
        stored = np.asarray((doc.get("_source") or {}).get(VECTOR_FIELD) or [], dtype=np.float64)
        if stored.shape == query.shape:
            truth = float(stored @ query / max(np.linalg.norm(stored) * np.linalg.norm(query), 1e-12))
            for formula in candidates:
                if abs(formula.to_cosine(float(hit["_score"])) - truth) <= TOLERANCE:
                    logger.info(
                        "scores of %s read as %s (told from the stored vector of %s)", index, formula.score, hit["_id"]
                    )
                    return formula
        raise ClusterError(
            f"{self.url} denied reading index.version.created of {index}, and its scores match none of the formulas"
            f" {', '.join(f.score for f in candidates)}: grant the user view_index_metadata on {self.alias} so that"
            " scores can be turned into true cosines"
        )

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
            doc = self.client.get(index=self.reading, id=photo_id, ignore=404)
        if absent(doc):
            return None
        source = doc.get("_source") or {}
        vector = np.asarray(source.pop(VECTOR_FIELD), dtype=np.float32)
        return {name: source.get(name) for name in STORED_FIELDS}, vector

    def info(self) -> BuildInfo | None:
        with self._errors("reading the build info"):
            mappings = self.client.indices.get_mapping(index=self.reading, ignore=404)
        if absent(mappings):
            return None
        for body in mappings.values():
            meta = (body.get("mappings") or {}).get("_meta", {}).get(META_KEY)
            if meta:
                return BuildInfo(**{f.name: meta[f.name] for f in dataclasses.fields(BuildInfo)})
        return None

    def count(self) -> int:
        with self._errors("counting documents"):
            counted = self.client.count(index=self.reading, ignore=404)
        if absent(counted):
            return 0
        check_shards(counted, self.url, "counting documents")
        return int(counted["count"])


def _hit(raw: dict[str, Any], score: float) -> Hit:
    source = raw.get("_source") or {}
    return Hit(
        photo_id=str(source.get("photo_id") or raw["_id"]),
        score=score,
        fields={name: source.get(name) for name in STORED_FIELDS},
    )
