"""A wire-level fake of Elasticsearch 7.17, Open Distro/ESCloud 7.10 and OpenSearch 2.x/3.x.

No real search server can be installed from the package registries the development
machines reach, so this is a real HTTP server on 127.0.0.1 that answers the subset of the
REST API the project uses, as the engine under test would:

- ``GET /`` with that engine's version, distribution, tagline and build flavour, and the
  ``X-Elastic-Product`` header only where Elasticsearch 7.14+ sends it;
- index creation that accepts the mappings and settings that engine accepts and refuses
  the others with its error (stock Elasticsearch has no ``knn_vector``, OpenSearch no
  ``dense_vector``, OpenSearch 3 no index-level ``knn.space_type``, a filter inside an
  nmslib ``knn`` query is refused);
- ``_bulk`` with per-item errors (wrong vector dimension, unparseable date), aliases with
  atomic actions, ``_count``, ``_refresh`` (searches see documents only after one),
  settings and ``_meta`` updates, ``_doc`` reads and index deletion;
- ``_search``: ``knn`` (exact, whatever the engine would approximate), ``script_score`` with
  the k-NN plugin's ``knn_score`` or Elasticsearch's painless ``cosineSimilarity``, each
  scored by that engine's formula (see ``ServerProfile.score``), bool with term, terms and
  range filters, and ``multi_match`` scored by a plain BM25 (k1 1.2, b 0.75, one shard).

``FakeSearchServer.requests`` records every request body so tests can assert the exact
mapping and queries on the wire; ``drop_bulk`` makes ``_bulk`` requests die mid-way (a
server gone during a build).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np


@dataclass(frozen=True)
class ServerProfile:
    """How one engine answers: its ``GET /`` and what its mapping and scoring accept."""

    name: str
    number: str
    distribution: str | None
    build_flavor: str | None
    tagline: str
    plugins: tuple[str, ...] = ()

    @property
    def version(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.number.split("."))

    @property
    def opensearch(self) -> bool:
        return self.distribution == "opensearch"

    @property
    def knn_plugin(self) -> bool:
        return self.opensearch or any("knn" in p for p in self.plugins)

    @property
    def dense_vector(self) -> bool:
        return not self.opensearch and self.build_flavor == "default"

    @property
    def product_header(self) -> bool:
        return not self.opensearch and self.version >= (7, 14)

    def root(self) -> dict[str, Any]:
        """The ``GET /`` body."""
        version: dict[str, Any] = {"number": self.number}
        if self.distribution:
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

    def score(self, path: str, cos: float) -> float:
        """The engine's ``_score`` for a cosine similarity, on a k-NN ``path``.

        ``nmslib`` (an index-level space type, approximate search), ``lucene`` (a per-field
        Lucene HNSW), ``knn_score`` (the k-NN plugin's exact script) or ``painless`` (the
        Elasticsearch expression ``cosineSimilarity(...) + 1.0``). OpenSearch 2.19 moved every
        k-NN path to (1 + cos) / 2.
        """
        if path == "painless":
            value = 1.0 + cos
        elif path == "lucene" or (self.opensearch and self.version >= (2, 19)):
            value = (1.0 + cos) / 2.0
        elif path == "nmslib":
            value = 1.0 / (2.0 - cos)
        else:
            value = 1.0 + cos
        return float(np.float32(value))


_ES_TAGLINE = "You Know, for Search"
_OS_TAGLINE = "The OpenSearch Project: https://opensearch.org/"

PROFILES = {
    p.name: p
    for p in (
        ServerProfile("escloud-7.10", "7.10.2", None, "oss", _ES_TAGLINE, ("opendistro-knn", "opendistro-sql")),
        ServerProfile("opensearch-2.11", "2.11.1", "opensearch", None, _OS_TAGLINE),
        ServerProfile("opensearch-2.19", "2.19.1", "opensearch", None, _OS_TAGLINE),
        ServerProfile("opensearch-3.1", "3.1.0", "opensearch", None, _OS_TAGLINE),
        ServerProfile("elasticsearch-7.17", "7.17.25", None, "default", _ES_TAGLINE),
        ServerProfile("elasticsearch-oss-7.10", "7.10.2", None, "oss", _ES_TAGLINE),
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


@dataclass
class FakeIndex:
    """One concrete index: settings, mapping, stored documents and the refreshed view searches read."""

    name: str
    settings: dict[str, str]
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def properties(self) -> dict[str, Any]:
        return self.mappings.get("properties", {})


class FakeSearchServer:
    """The fake cluster; use as a context manager, then point the client at :attr:`url`."""

    def __init__(self, profile: str | ServerProfile, ssl_context: ssl.SSLContext | None = None):
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.indices: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.drop_bulk = False
        self._lock = threading.RLock()
        self._ssl = ssl_context
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeSearchServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                parts = urlsplit(self.path)
                if fake.drop_bulk and parts.path.endswith("/_bulk"):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, body = fake.handle(self.command, unquote(parts.path), parse_qs(parts.query), raw)
                payload = b"" if self.command == "HEAD" else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(json.dumps(body).encode())))
                if fake.profile.product_header:
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self._ssl is not None:
            self._server.socket = self._ssl.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def bodies(self, method: str, path_suffix: str) -> list[Any]:
        """The bodies of recorded requests with that method whose path ends with ``path_suffix``."""
        return [body for m, p, body in self.requests if m == method and p.endswith(path_suffix)]

    # -- routing ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
        """Answer one request: ``(status, JSON body)``."""
        params = {k: v[-1] for k, v in query.items()}
        if path.endswith("/_bulk"):
            body: Any = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        else:
            body = json.loads(raw) if raw else None
        self.requests.append((method, path, body))
        segments = [s for s in path.split("/") if s]
        try:
            with self._lock:
                return 200, self._route(method, segments, params, body)
        except ApiError as err:
            return err.status, err.body()

    def _route(self, method: str, seg: list[str], params: dict[str, str], body: Any) -> Any:
        if not seg:
            return self.profile.root()
        head, rest = seg[0], seg[1:]
        if head == "_cat" and rest == ["plugins"]:
            return [{"name": "fake-node", "component": p, "version": self.profile.number} for p in self.profile.plugins]
        if head == "_bulk":
            return self._bulk(body, None)
        if head == "_aliases" and method == "POST":
            return self._update_aliases(body["actions"])
        if head == "_alias":
            return self._get_alias(rest[0] if rest else "*", None)
        if head == "_refresh":
            return self._refresh(list(self.indices))
        if not rest:
            if method == "PUT":
                return self._create(head, body or {})
            if method == "DELETE":
                return self._delete(head, params)
            if method == "HEAD":
                self._resolve(head)
                return {}
            return {n: self._describe(self.indices[n]) for n in self._resolve(head)}
        action = rest[0]
        if action == "_bulk":
            return self._bulk(body, head)
        if action == "_alias":
            return self._get_alias(rest[1] if len(rest) > 1 else "*", head)
        if action == "_refresh":
            return self._refresh(self._resolve(head))
        if action == "_settings":
            if method == "PUT":
                return self._put_settings(head, body)
            flat = params.get("flat_settings") == "true"
            return {n: {"settings": self._settings_view(self.indices[n], flat)} for n in self._resolve(head)}
        if action == "_mapping":
            if method == "PUT":
                for name in self._resolve(head):
                    self.indices[name].mappings.update(body)
                return {"acknowledged": True}
            return {n: {"mappings": self.indices[n].mappings} for n in self._resolve(head)}
        if action == "_count":
            return {"count": sum(len(self.indices[n].visible) for n in self._resolve(head))}
        if action == "_search":
            return self._search(self._resolve(head), body or {})
        if action == "_doc" and len(rest) == 2:
            return self._get_doc(head, rest[1])
        raise ApiError(400, "illegal_argument_exception", f"the fake does not serve {method} /{'/'.join(seg)}")

    # -- indices and aliases ---------------------------------------------------------------

    def _resolve(self, expression: str) -> list[str]:
        names: list[str] = []
        for part in expression.split(","):
            if any(c in part for c in "*?"):
                names += [n for n in self.indices if fnmatch.fnmatchcase(n, part)]
                names += [i for a, members in self.aliases.items() if fnmatch.fnmatchcase(a, part) for i in members]
            elif part in self.indices:
                names.append(part)
            elif part in self.aliases:
                names += sorted(self.aliases[part])
            else:
                raise _not_found(part)
        return list(dict.fromkeys(names))

    def _describe(self, index: FakeIndex) -> dict[str, Any]:
        aliases = {a: {} for a, members in self.aliases.items() if index.name in members}
        return {"aliases": aliases, "mappings": index.mappings, "settings": self._settings_view(index, False)}

    @staticmethod
    def _settings_view(index: FakeIndex, flat: bool) -> dict[str, Any]:
        if flat:
            return {f"index.{k}": v for k, v in index.settings.items()}
        nested: dict[str, Any] = {}
        for key, value in sorted(index.settings.items()):
            node, parts = nested, key.split(".")
            while len(parts) > 1 and isinstance(node.setdefault(parts[0], {}), dict):
                node, parts = node[parts[0]], parts[1:]
            node[".".join(parts)] = value
        return {"index": nested}

    def _check_settings(self, settings: dict[str, str]) -> None:
        known = {
            "number_of_shards", "number_of_replicas", "refresh_interval", "auto_expand_replicas",
            "max_result_window",
        }
        if self.profile.knn_plugin:
            known.add("knn")
            if not (self.profile.opensearch and self.profile.version >= (3,)):
                known.add("knn.space_type")
        for key in settings:
            if key not in known and not key.startswith("analysis."):
                raise ApiError(
                    400,
                    "illegal_argument_exception",
                    f"unknown setting [index.{key}] please check that any required plugins are installed, or check"
                    " the breaking changes documentation for removed settings",
                )

    def _check_mapping(self, mappings: dict[str, Any], settings: dict[str, str]) -> None:
        normalizers = {k.split(".")[2] for k in settings if k.startswith("analysis.normalizer.")}
        for name, spec in mappings.get("properties", {}).items():
            kind = spec.get("type")
            handled = {"keyword", "text", "date", "long", "float", "boolean"}
            if self.profile.knn_plugin:
                handled.add("knn_vector")
            if self.profile.dense_vector:
                handled.add("dense_vector")
            if kind not in handled:
                raise ApiError(
                    400, "mapper_parsing_exception", f"No handler for type [{kind}] declared on field [{name}]"
                )
            if spec.get("normalizer") and spec["normalizer"] not in normalizers:
                raise ApiError(
                    400, "mapper_parsing_exception", f"normalizer [{spec['normalizer']}] not found for field [{name}]"
                )
            if kind == "dense_vector" and not 1 <= int(spec.get("dims", 0)) <= 2048:
                raise ApiError(
                    400, "mapper_parsing_exception", f"The number of dimensions for field [{name}] should be in the range [1, 2048]"
                )
            if kind == "knn_vector":
                if "dimension" not in spec:
                    raise ApiError(400, "mapper_parsing_exception", f"Dimension value missing for vector: {name}")
                engine = (spec.get("method") or {}).get("engine")
                if engine == "lucene" and not (self.profile.opensearch and self.profile.version >= (2, 2)):
                    raise ApiError(400, "mapper_parsing_exception", "Invalid engine type: lucene")

    def _create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name in self.indices:
            raise ApiError(400, "resource_already_exists_exception", f"index [{name}] already exists", index=name)
        if name in self.aliases:
            raise ApiError(400, "invalid_index_name_exception", f"Invalid index name [{name}], already exists as alias")
        raw_settings = dict(body.get("settings") or {})
        raw_settings = raw_settings.get("index", raw_settings)
        settings = {k.removeprefix("index."): str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in _flatten("", raw_settings, {}).items()}
        self._check_settings(settings)
        mappings = body.get("mappings") or {}
        self._check_mapping(mappings, settings)
        settings.setdefault("number_of_shards", "1")
        settings.setdefault("number_of_replicas", "1")
        self.indices[name] = FakeIndex(name, settings, json.loads(json.dumps(mappings)))
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _delete(self, expression: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            names = self._resolve(expression)
        except ApiError:
            if params.get("ignore_unavailable") == "true":
                return {"acknowledged": True}
            raise
        for name in names:
            del self.indices[name]
            for members in self.aliases.values():
                members.discard(name)
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return {"acknowledged": True}

    def _put_settings(self, expression: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("index", body)
        changes = {k.removeprefix("index."): str(v).lower() if isinstance(v, bool) else str(v)
                   for k, v in _flatten("", raw, {}).items()}
        self._check_settings(changes)
        for name in self._resolve(expression):
            if any(k in ("knn", "knn.space_type", "number_of_shards") for k in changes):
                raise ApiError(400, "illegal_argument_exception", f"Can't update non dynamic settings {sorted(changes)}")
            self.indices[name].settings.update(changes)
        return {"acknowledged": True}

    def _refresh(self, names: list[str]) -> dict[str, Any]:
        for name in names:
            index = self.indices[name]
            index.visible = dict(index.docs)
        return {"_shards": {"total": len(names), "successful": len(names), "failed": 0}}

    def _get_alias(self, alias_pattern: str, index_expression: str | None) -> dict[str, Any]:
        names = self._resolve(index_expression) if index_expression else list(self.indices)
        out: dict[str, Any] = {}
        for name in names:
            matching = {
                a: {} for a, members in self.aliases.items() if name in members and fnmatch.fnmatchcase(a, alias_pattern)
            }
            if matching or alias_pattern == "*":
                out[name] = {"aliases": matching}
        if not out and alias_pattern != "*":
            reason = f"alias [{alias_pattern}] missing"
            raise ApiError(404, "aliases_not_found_exception", reason, answer={"error": reason, "status": 404})
        return out

    def _update_aliases(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        aliases = {a: set(m) for a, m in self.aliases.items()}
        doomed: set[str] = set()
        for action in actions:
            (kind, spec), = action.items()
            if kind == "remove_index":
                doomed.update(self._resolve(spec["index"]))
                continue
            if spec["index"] not in self.indices:
                raise _not_found(spec["index"])
            if kind == "add":
                aliases.setdefault(spec["alias"], set()).add(spec["index"])
            elif kind == "remove":
                if spec["index"] not in aliases.get(spec["alias"], set()):
                    raise ApiError(404, "aliases_not_found_exception", f"aliases [{spec['alias']}] missing")
                aliases[spec["alias"]].discard(spec["index"])
        for alias in aliases:
            if alias in self.indices and alias not in doomed and aliases[alias]:
                raise ApiError(
                    400,
                    "invalid_alias_name_exception",
                    f"Invalid alias name [{alias}]: an index or data stream exists with the same name as the alias",
                )
        for name in doomed:
            del self.indices[name]
            for members in aliases.values():
                members.discard(name)
        self.aliases = {a: m for a, m in aliases.items() if m}
        return {"acknowledged": True}

    # -- documents ---------------------------------------------------------------------

    def _parse_error(self, index: FakeIndex, doc_id: str, source: dict[str, Any]) -> dict[str, Any] | None:
        for name, spec in index.properties.items():
            value = source.get(name)
            if value is None:
                continue
            kind = spec["type"]
            if kind in ("knn_vector", "dense_vector"):
                expected = int(spec.get("dimension", spec.get("dims", 0)))
                if not isinstance(value, list) or len(value) != expected:
                    given = len(value) if isinstance(value, list) else 1
                    reason = (
                        f"Vector dimension mismatch. Expected: {expected}, Given: {given}"
                        if kind == "knn_vector"
                        else f"The [dims] of the dense_vector field [{name}] should be [{expected}] but was [{given}]"
                    )
                    return {"type": "mapper_parsing_exception", "reason": reason}
            if kind == "date":
                for item in value if isinstance(value, list) else [value]:
                    try:
                        _parse_date(item)
                    except ValueError:
                        return {
                            "type": "mapper_parsing_exception",
                            "reason": f"failed to parse field [{name}] of type [date] in document with id '{doc_id}'."
                            f" Preview of field's value: '{item}'",
                        }
        return None

    def _bulk(self, lines: list[dict[str, Any]], default_index: str | None) -> dict[str, Any]:
        items = []
        for action, source in zip(lines[0::2], lines[1::2]):
            (op, meta), = action.items()
            target = meta.get("_index", default_index)
            names = self._resolve(target)
            if len(names) != 1:
                raise ApiError(400, "illegal_argument_exception", f"no write index is defined for alias [{target}]")
            index = self.indices[names[0]]
            doc_id = str(meta["_id"])
            result: dict[str, Any] = {"_index": index.name, "_id": doc_id}
            error = self._parse_error(index, doc_id, source)
            if error:
                result.update(status=400, error=error)
            else:
                created = doc_id not in index.docs
                index.docs[doc_id] = source
                result.update(status=201 if created else 200, result="created" if created else "updated")
            items.append({op: result})
        return {"took": 1, "errors": any("error" in next(iter(i.values())) for i in items), "items": items}

    def _get_doc(self, expression: str, doc_id: str) -> dict[str, Any]:
        names = self._resolve(expression)
        for name in names:
            if doc_id in self.indices[name].docs:
                return {"_index": name, "_id": doc_id, "found": True, "_source": self.indices[name].docs[doc_id]}
        answer = {"_index": names[0] if names else expression, "_id": doc_id, "found": False}
        raise ApiError(404, "document_missing", f"[{doc_id}]: document missing", answer=answer)

    # -- search ------------------------------------------------------------------------

    def _search(self, names: list[str], body: dict[str, Any]) -> dict[str, Any]:
        size = int(body.get("size", 10))
        if size + int(body.get("from", 0)) > 10_000:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Result window is too large, from + size must be less than or equal to: [10000] but was [{size}].",
            )
        scored: list[tuple[float, int, str, str]] = []
        for name in names:
            index = self.indices[name]
            docs = list(index.visible.items())
            scores = self._query(index, docs, body.get("query", {"match_all": {}}))
            scored += [(s, i, name, docs[i][0]) for i, s in scores.items()]
        scored.sort(key=lambda t: (-t[0], t[1]))
        wanted = body.get("_source", True)
        hits = []
        for score, _, name, doc_id in scored[:size]:
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
            "_shards": {"total": len(names), "successful": len(names), "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(scored), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }

    def _query(self, index: FakeIndex, docs: list[tuple[str, dict]], query: dict[str, Any]) -> dict[int, float]:
        """Matching document positions and their scores."""
        (kind, spec), = query.items()
        if kind == "match_all":
            return {i: 1.0 for i in range(len(docs))}
        if kind in ("term", "terms", "range"):
            (field_name, condition), = spec.items()
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
        return any(
            all(checks[op](v, bound(b)) for op, b in condition.items() if op in checks) for v in values
        )

    def _bm25(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        terms = set(_tokens(spec["query"]))
        per_doc: dict[int, dict[str, float]] = {}
        for field_name in spec.get("fields", []):
            if index.properties.get(field_name, {}).get("type") != "text":
                continue
            tokenized = {i: _tokens(src[field_name]) for i, (_, src) in enumerate(docs) if src.get(field_name) is not None}
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
                400, "illegal_argument_exception", f"Query vector has invalid dimension: {len(query)}. Dimension should be: {dim}"
            )
        return spec, np.asarray(query, dtype=np.float64)

    @staticmethod
    def _cosines(docs: list, positions: list[int], field_name: str, q: np.ndarray) -> dict[int, float]:
        out = {}
        for i in positions:
            v = docs[i][1].get(field_name)
            if v is None:
                continue
            v = np.asarray(v, dtype=np.float64)
            out[i] = float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
        return out

    def _knn(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        (field_name, params), = spec.items()
        if not self.profile.knn_plugin:
            raise ApiError(400, "parsing_exception", "unknown query [knn]")
        mapping, q = self._vector(index, field_name, params["vector"])
        k = int(params["k"])
        if not 1 <= k <= 10_000:
            raise ApiError(400, "illegal_argument_exception", "[knn] requires 0 < k <= 10000")
        method = mapping.get("method") or {}
        space = method.get("space_type") or index.settings.get("knn.space_type", "l2")
        engine = method.get("engine", "nmslib" if not (self.profile.opensearch and self.profile.version >= (3,)) else "faiss")
        positions = list(range(len(docs)))
        if "filter" in params:
            if not self.profile.opensearch:
                raise ApiError(400, "parsing_exception", "[knn] unknown field [filter]")
            if engine != "lucene":
                raise ApiError(400, "illegal_argument_exception", f"Engine [{engine.upper()}] does not support filters")
            positions = sorted(self._query(index, docs, params["filter"]))
        if space == "cosinesimil":
            path = "lucene" if engine == "lucene" else "nmslib"
            scores = {i: self.profile.score(path, c) for i, c in self._cosines(docs, positions, field_name, q).items()}
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
            return {i: self.profile.score("knn_score", c) for i, c in cosines.items()}
        painless = re.fullmatch(r"cosineSimilarity\(params\.(\w+), '(\w+)'\) \+ 1\.0", script.get("source", ""))
        if painless and script.get("lang", "painless") == "painless" and self.profile.dense_vector:
            param, field_name = painless.groups()
            _, q = self._vector(index, field_name, params[param])
            cosines = self._cosines(docs, sorted(matched), field_name, q)
            return {i: self.profile.score("painless", c) for i, c in cosines.items()}
        raise ApiError(400, "script_exception", "compile error", script=script.get("source", ""), lang=script.get("lang", "painless"))
