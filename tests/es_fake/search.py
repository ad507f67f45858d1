"""The fake's searches: ``_count`` and ``_search`` with bool filters, BM25, kNN and script scores."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from tests.es_fake.profiles import ApiError, FakeIndex, _parse_date, _tokens


class SearchMixin:
    """Search requests of :class:`tests.es_fake.server.FakeSearchServer`."""

    def _shard_docs(
        self, names: list[str]
    ) -> tuple[list[tuple[FakeIndex, int, list[tuple[str, dict]]]], dict[str, Any]]:
        """The refreshed documents of each answering shard, and the ``_shards`` block of the response."""
        answering, failures, total = [], [], 0
        for name in names:
            index = self.indices[name]
            healthy = index.shards - min(self.profile.faults.failed_shards, index.shards)
            total += index.shards
            for shard in range(index.shards):
                if shard >= healthy:
                    reason = {
                        "type": "node_disconnected_exception",
                        "reason": f"[fake-node-{shard}][127.0.0.1:93{shard:02d}][indices:data/read/search[phase/query]]"
                        " disconnected",
                    }
                    failures.append({"shard": shard, "index": name, "node": f"fAkEnOdE{shard}", "reason": reason})
                    continue
                docs = [(d, src) for d, src in index.visible.items() if index.shard_of(d) == shard]
                answering.append((index, shard, docs))
        shards: dict[str, Any] = {
            "total": total,
            "successful": total - len(failures),
            "skipped": 0,
            "failed": len(failures),
        }
        if failures:
            shards["failures"] = failures
        return answering, shards

    def _msearch(self, default_index: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        """``_msearch``: header and body lines in pairs; each search answers alone, a failed one as its error
        with its status (``TransportMultiSearchAction``: one failure does not fail the others)."""
        responses = []
        for header, body in zip(lines[0::2], lines[1::2]):
            try:
                responses.append(
                    {**self._search(self._resolve(header.get("index", default_index)), body), "status": 200}
                )
            except ApiError as err:
                responses.append({**err.body(), "status": err.status})
        return {"took": 1, "responses": responses}

    def _search_faults(self, names: list[str]) -> None:
        """Refuse a search on every shard for overload (``Faults.search_rejections``, which names the sources)."""
        if self._search_rejections_left <= 0:
            return
        self._search_rejections_left -= 1
        durability = self.profile.faults.search_breaker
        if durability is None:
            pool = "OpenSearch" if self.profile.opensearch else "Es"
            cause: dict[str, Any] = {
                "type": self.profile.rejected_execution,
                "reason": f"rejected execution of TimedRunnable@5e1d2c3b on QueueResizing{pool}ThreadPoolExecutor"
                "[name = fake-node/search, queue capacity = 1000, min queue capacity = 1000, max queue capacity = 1000]",
            }
        else:
            cause = {
                "type": "circuit_breaking_exception",
                "reason": "[parent] Data too large, data for [<reused_arrays>] would be [1020054800/972.8mb], which is"
                " larger than the limit of [1020054732/972.7mb]",
                "bytes_wanted": 1_020_054_800,
                "bytes_limit": 1_020_054_732,
                "durability": durability,
            }
        failed = [{"shard": 0, "index": names[0] if names else None, "node": "fAkEnOdE", "reason": cause}]
        error = {
            "root_cause": [cause],
            "type": "search_phase_execution_exception",
            "reason": "all shards failed",
            "phase": "query",
            "grouped": True,
            "failed_shards": failed,
            "caused_by": cause,
        }
        answer = {"error": error, "status": 429}
        raise ApiError(429, "search_phase_execution_exception", "all shards failed", answer=answer)

    def _count(self, names: list[str]) -> dict[str, Any]:
        answering, shards = self._shard_docs(names)
        return {"count": sum(len(docs) for _, _, docs in answering), "_shards": shards}

    def _search(self, names: list[str], body: dict[str, Any]) -> dict[str, Any]:
        size = int(body.get("size", 10))
        if size + int(body.get("from", 0)) > 10_000:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Result window is too large, from + size must be less than or equal to: [10000] but was [{size}].",
            )
        self._search_faults(names)
        answering, shards = self._shard_docs(names)
        scored: list[tuple[float, str, int, int, str]] = []
        for index, shard, docs in answering:
            scores = self._query(index, docs, body.get("query", {"match_all": {}}))
            scored += [(s, index.name, shard, i, docs[i][0]) for i, s in scores.items()]
        scored.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
        wanted = body.get("_source", True)
        hits = []
        for score, name, _, _, doc_id in scored[:size]:
            source = self.indices[name].visible[doc_id]
            if isinstance(wanted, list):
                source = {k: v for k, v in source.items() if k in wanted}
            hit = {"_index": name, "_id": doc_id, "_score": score}
            if not self.profile.opensearch:
                hit["_type"] = "_doc"
            if wanted is not False:
                hit["_source"] = source
            hits.append(hit)
        return {
            "took": 1,
            "timed_out": False,
            "_shards": shards,
            "hits": {
                "total": {"value": len(scored), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }

    def _query(self, index: FakeIndex, docs: list[tuple[str, dict]], query: dict[str, Any]) -> dict[int, float]:
        """Matching document positions and their scores."""
        ((kind, spec),) = query.items()
        if kind == "match_all":
            return {i: 1.0 for i in range(len(docs))}
        if kind in ("term", "terms", "range"):
            ((field_name, condition),) = spec.items()
            return {i: 0.0 for i, (_, src) in enumerate(docs) if self._matches(index, kind, field_name, condition, src)}
        if kind == "bool":
            return self._bool(index, docs, spec)
        if kind == "multi_match":
            return self._bm25(index, docs, spec)
        if kind == "knn":
            return self._knn(index, docs, spec)
        if kind == "script_score":
            return self._script_score(index, docs, spec)
        raise ApiError(400, "parsing_exception", f"unknown query [{kind}]")

    def _bool(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        def clauses(key: str) -> list[dict]:
            value = spec.get(key, [])
            return value if isinstance(value, list) else [value]

        result = {i: 0.0 for i in range(len(docs))}
        for clause, scoring in [(c, True) for c in clauses("must")] + [(c, False) for c in clauses("filter")]:
            matched = self._query(index, docs, clause)
            result = {i: s + (matched[i] if scoring else 0.0) for i, s in result.items() if i in matched}
        for clause in clauses("must_not"):
            matched = self._query(index, docs, clause)
            result = {i: s for i, s in result.items() if i not in matched}
        shoulds = clauses("should")
        if shoulds:
            any_should: dict[int, float] = {}
            for clause in shoulds:
                for i, s in self._query(index, docs, clause).items():
                    any_should[i] = any_should.get(i, 0.0) + s
            required = not (clauses("must") or clauses("filter"))
            result = {i: s + any_should.get(i, 0.0) for i, s in result.items() if i in any_should or not required}
        return result

    @staticmethod
    def _values(index: FakeIndex, field_name: str, source: dict[str, Any]) -> list[Any]:
        value = source.get(field_name)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if index.properties.get(field_name, {}).get("normalizer"):
            values = [str(v).lower() for v in values]
        return values

    def _matches(self, index: FakeIndex, kind: str, field_name: str, condition: Any, source: dict[str, Any]) -> bool:
        if field_name not in index.properties:
            return False
        values = self._values(index, field_name, source)
        spec = index.properties[field_name]
        normalize = (lambda v: str(v).lower()) if spec.get("normalizer") else str
        if kind == "term":
            wanted = condition["value"] if isinstance(condition, dict) else condition
            return normalize(wanted) in [str(v) for v in values]
        if kind == "terms":
            return any(normalize(w) in [str(v) for v in values] for w in condition)
        if spec["type"] == "date":
            values = [_parse_date(v) for v in values]
            bound = _parse_date
        else:
            bound = float
            values = [float(v) for v in values]
        checks = {
            "gte": lambda v, b: v >= b,
            "gt": lambda v, b: v > b,
            "lte": lambda v, b: v <= b,
            "lt": lambda v, b: v < b,
        }
        return any(all(checks[op](v, bound(b)) for op, b in condition.items() if op in checks) for v in values)

    def _bm25(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        terms = set(_tokens(spec["query"]))
        per_doc: dict[int, dict[str, float]] = {}
        for field_name in spec.get("fields", []):
            if index.properties.get(field_name, {}).get("type") != "text":
                continue
            tokenized = {
                i: _tokens(src[field_name]) for i, (_, src) in enumerate(docs) if src.get(field_name) is not None
            }
            if not tokenized:
                continue
            avg = sum(map(len, tokenized.values())) / len(tokenized)
            for term in terms:
                df = sum(term in toks for toks in tokenized.values())
                if not df:
                    continue
                idf = math.log(1 + (len(tokenized) - df + 0.5) / (df + 0.5))
                for i, toks in tokenized.items():
                    tf = toks.count(term)
                    if tf:
                        part = idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(toks) / avg))
                        fields = per_doc.setdefault(i, {})
                        fields[field_name] = fields.get(field_name, 0.0) + part
        return {i: float(np.float32(max(fields.values()))) for i, fields in per_doc.items()}

    def _vector(self, index: FakeIndex, field_name: str, query: list[float]) -> tuple[dict[str, Any], np.ndarray]:
        spec = index.properties.get(field_name)
        if spec is None or spec["type"] not in ("knn_vector", "dense_vector"):
            raise ApiError(400, "query_shard_exception", f"Field '{field_name}' is not knn_vector type.")
        dim = int(spec.get("dimension", spec.get("dims", 0)))
        if len(query) != dim:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Query vector has invalid dimension: {len(query)}. Dimension should be: {dim}",
            )
        return spec, np.asarray(query, dtype=np.float64)

    @staticmethod
    def _cosines(docs: list, positions: list[int], field_name: str, q: np.ndarray) -> dict[int, float]:
        having = [i for i in positions if docs[i][1].get(field_name) is not None]
        if not having:
            return {}
        matrix = np.asarray([docs[i][1][field_name] for i in having], dtype=np.float64)
        cosines = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
        return dict(zip(having, cosines.tolist()))

    def _space(self, index: FakeIndex, mapping: dict[str, Any]) -> tuple[str, str]:
        """The space type and engine the k-NN plugin resolved for a ``knn_vector`` field."""
        method = mapping.get("method") or {}
        default_engine = "faiss" if self.profile.opensearch and self.profile.version >= (3,) else "nmslib"
        engine = method.get("engine", default_engine)
        if method.get("space_type"):
            return method["space_type"], engine
        if self.profile.opensearch and (2, 17) <= index.created < (2, 19):
            return "l2", engine  # k-NN #2296: 2.17 and 2.18 ignored index.knn.space_type (fixed by #2374)
        return index.settings.get("knn.space_type", "l2"), engine

    def _without_graph(self, index: FakeIndex, docs: list) -> set[int]:
        """Positions of this shard's documents in segments too small for a native (nmslib/faiss) graph.

        k-NN 2.18.0.0 ``NativeEngines990KnnVectorsWriter.shouldSkipBuildingVectorDataStructure``:
        no graph when the threshold is negative or the segment has fewer live documents than
        ``index.knn.advanced.approximate_threshold`` (:attr:`ServerProfile.approximate_threshold`).
        """
        default = self.profile.approximate_threshold
        if default is None:
            return set()
        threshold = int(index.settings.get("knn.advanced.approximate_threshold", default))
        sizes = Counter(index.segment_of.get(doc_id) for doc_id, _ in docs)
        return {
            i for i, (doc_id, _) in enumerate(docs) if threshold < 0 or sizes[index.segment_of.get(doc_id)] < threshold
        }

    def _knn(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        ((field_name, params),) = spec.items()
        if not self.profile.knn_plugin:
            raise ApiError(400, "parsing_exception", "unknown query [knn]")
        mapping, q = self._vector(index, field_name, params["vector"])
        k = int(params["k"])
        if not 1 <= k <= 10_000:
            raise ApiError(400, "illegal_argument_exception", "[knn] requires 0 < k <= 10000")
        space, engine = self._space(index, mapping)
        positions = list(range(len(docs)))
        if "filter" in params:
            if not self.profile.opensearch:
                raise ApiError(400, "parsing_exception", "[knn] unknown field [filter]")
            if engine != "lucene":
                raise ApiError(400, "illegal_argument_exception", f"Engine [{engine.upper()}] does not support filters")
            positions = sorted(self._query(index, docs, params["filter"]))
        if space == "cosinesimil":
            cosines = self._cosines(docs, positions, field_name, q)
            exact = set() if engine == "lucene" else self._without_graph(index, docs)
            paths = {i: "lucene" if engine == "lucene" else "exact" if i in exact else "ann" for i in cosines}
            scores = {i: self.profile.score(paths[i], c, index.created) for i, c in cosines.items()}
        else:
            scores = {}
            for i in positions:
                d = np.asarray(docs[i][1][field_name], dtype=np.float64) - q
                scores[i] = float(np.float32(1.0 / (1.0 + float(d @ d))))
        top = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        return {i: scores[i] for i in top}

    def _script_score(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        matched = self._query(index, docs, spec.get("query", {"match_all": {}}))
        script = spec["script"]
        params = script.get("params", {})
        if script.get("lang") == "knn" and script.get("source") == "knn_score" and self.profile.knn_plugin:
            if params.get("space_type") != "cosinesimil":
                raise ApiError(400, "illegal_argument_exception", f"Invalid space type: {params.get('space_type')}")
            _, q = self._vector(index, params["field"], params["query_value"])
            cosines = self._cosines(docs, sorted(matched), params["field"], q)
            return {i: self.profile.score("knn_score", c, index.created) for i, c in cosines.items()}
        painless = re.fullmatch(r"cosineSimilarity\(params\.(\w+), '(\w+)'\) \+ 1\.0", script.get("source", ""))
        if painless and script.get("lang", "painless") == "painless" and self.profile.dense_vector:
            param, field_name = painless.groups()
            _, q = self._vector(index, field_name, params[param])
            cosines = self._cosines(docs, sorted(matched), field_name, q)
            return {i: self.profile.score("painless", c, index.created) for i, c in cosines.items()}
        raise ApiError(
            400,
            "script_exception",
            "compile error",
            script=script.get("source", ""),
            lang=script.get("lang", "painless"),
        )
