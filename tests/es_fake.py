"""A wire-level fake of Elasticsearch 7.17, Open Distro/ESCloud 7.10 and OpenSearch 1.x-3.x.

No real search server can be installed from the package registries the development
machines reach, so this is a real HTTP server on 127.0.0.1 that answers the subset of the
REST API the project uses, as the engine under test would. Each behaviour names the
documentation or source it follows:

- ``GET /`` with that engine's version, distribution, tagline and build flavour, and the
  ``X-Elastic-Product`` header only where Elasticsearch 7.14+ sends it
  (elasticsearch-py 7.17 ``transport._ProductChecker``); OpenSearch in compatibility mode
  answers version 7.10.2 without ``distribution`` (OpenSearch PR #847 and #898) and keeps
  its tagline (grafana/opensearch-datasource#419 detects it by that), while ``GET /_nodes``
  still reports the real version (OpenSearch docs, "Rolling upgrade");
- index creation that accepts the mappings and settings that engine accepts and refuses
  the others with its error: stock Elasticsearch has no ``knn_vector``, OpenSearch no
  ``dense_vector``, OpenSearch 3 no index-level ``knn.space_type``; the Open Distro 1.13
  k-NN plugin (ESCloud 7.10) knows no ``method`` and stops at 10,000 dimensions
  (k-NN tag v1.13.0.0, ``KNNVectorFieldMapper``); OpenSearch refuses faiss with
  ``cosinesimil`` before 2.19 (k-NN #2376) and nmslib for new indices from 3.0;
- how the k-NN plugin resolves a field's space type: the field's ``method`` first, else the
  index-level ``knn.space_type``, except on indices created by 2.17 and 2.18, which fell back
  to l2 (k-NN issue #2296, fixed in 2.19.0 by #2374);
- ``_bulk`` with per-item errors (wrong vector dimension, unparseable date), aliases with
  atomic actions, ``_count``, ``_refresh`` (searches see documents only after one),
  settings (with ``index.version.created``, encoded as ``org.opensearch.Version`` does) and
  ``_meta`` updates, ``_doc`` reads and index deletion;
- ``_search``: ``knn`` (exact, whatever the engine would approximate), ``script_score`` with
  the k-NN plugin's ``knn_score`` or Elasticsearch's painless ``cosineSimilarity``, each
  scored by that engine's formula (see ``ServerProfile.score``), bool with term, terms and
  range filters, and ``multi_match`` scored by BM25 (k1 1.2, b 0.75) with each shard's own
  statistics, as Elasticsearch's default ``query_then_fetch`` does;
- documents routed to shards by id (a stable hash standing in for Elasticsearch's murmur3
  routing: only the per-shard statistics matter here).

A profile's :class:`Faults` add the failures real clusters answer with (see there).
``FakeSearchServer.requests`` records every request body so tests can assert the exact
mapping and queries on the wire; ``drop_bulk`` makes ``_bulk`` requests die mid-way (a
server gone during a build); :meth:`FakeSearchServer.switch_to` swaps the profile
under existing indices, as a rolling upgrade or a lost node does.
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
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

#: ``org.opensearch.Version.MASK``: OpenSearch flips this bit in its version ids, so an index
#: created by OpenSearch 2.11.1 has ``index.version.created`` 2110199 ^ MASK.
OPENSEARCH_VERSION_MASK = 0x08000000


@dataclass(frozen=True)
class Faults:
    """Failures a real cluster answers with, each in that engine's own shape.

    - ``item_rejections``: every n-th document of a bulk request is refused once with an
      item-level 429 ``es_rejected_execution_exception`` (a full write thread-pool queue;
      Elasticsearch docs, "Rejected requests"); it is accepted when sent again.
    - ``bulk_rejections``: the first n bulk requests are refused as a whole with 429
      ``es_rejected_execution_exception`` "rejected execution of coordinating operation"
      (Elasticsearch 7.9+ indexing pressure; OpenSearch shard indexing pressure).
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
    """

    item_rejections: int = 0
    bulk_rejections: int = 0
    max_content_length: int | None = None
    bulk_breaker: bool = False
    failed_shards: int = 0
    monitor_forbidden: bool = False


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
    def product_header(self) -> bool:
        return not self.opensearch and self.version >= (7, 14)

    def plugin_version(self, plugin: str) -> str:
        """Open Distro 1.13 plugins ship with Elasticsearch 7.10.2; OpenSearch's carry its version."""
        return f"{self.number}.0" if self.opensearch else ("1.13.0.0" if plugin.startswith("opendistro") else self.number)

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

        ``ann`` (an nmslib or faiss graph with space type cosinesimil), ``lucene`` (a per-field
        Lucene HNSW), ``knn_score`` (the k-NN plugin's exact script) or ``painless`` (the
        Elasticsearch expression ``cosineSimilarity(...) + 1.0``). k-NN 2.19.0 (#2357, #2375)
        moved ``SpaceType.COSINESIMIL.scoreTranslation`` to (1 + cos) / 2 for every index, but
        the ``knn_score`` script only on indices created by 2.19 or later.
        """
        if path == "painless":
            value = 1.0 + cos
        elif path == "lucene":
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


class FakeSearchServer:
    """The fake cluster; use as a context manager, then point the client at :attr:`url`."""

    def __init__(self, profile: str | ServerProfile, ssl_context: ssl.SSLContext | None = None):
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.indices: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.drop_bulk = False
        self._bulk_rejections_left = self.profile.faults.bulk_rejections
        self._rejected_once: set[tuple[str, str]] = set()
        self._lock = threading.RLock()
        self._ssl = ssl_context
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def switch_to(self, profile: str | ServerProfile) -> None:
        """Answer as ``profile`` from now on, over the same indices (a rolling upgrade, a node lost)."""
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self._bulk_rejections_left = self.profile.faults.bulk_rejections

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
                payload = b"" if self.command == "HEAD" or body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(0 if body is None else len(json.dumps(body).encode())))
                if fake.profile.product_header:
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                if body is None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
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
        """Answer one request: ``(status, JSON body)``, the body ``None`` for an empty one."""
        params = {k: v[-1] for k, v in query.items()}
        bulk = path.endswith("/_bulk")
        if bulk:
            body: Any = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        else:
            body = json.loads(raw) if raw else None
        self.requests.append((method, path, body))
        faults = self.profile.faults
        if faults.max_content_length is not None and len(raw) > faults.max_content_length:
            return 413, None
        segments = [s for s in path.split("/") if s]
        try:
            with self._lock:
                if bulk:
                    self._bulk_faults(len(raw))
                return 200, self._route(method, segments, params, body)
        except ApiError as err:
            return err.status, err.body()

    def _forbidden(self, action: str) -> ApiError:
        """403 as the OpenSearch/Open Distro security plugin or Elasticsearch security words it."""
        if self.profile.opensearch or self.profile.knn_plugin:
            reason = f"no permissions for [{action}] and User [name=image_search, backend_roles=[], requestedTenant=null]"
        else:
            reason = f"action [{action}] is unauthorized for user [image_search]"
        return ApiError(403, "security_exception", reason)

    def _monitor(self, action: str) -> None:
        if self.profile.faults.monitor_forbidden:
            raise self._forbidden(action)

    def _bulk_faults(self, size: int) -> None:
        if self.profile.faults.bulk_breaker:
            raise ApiError(
                429,
                "circuit_breaking_exception",
                f"[parent] Data too large, data for [<http_request>] would be [{1_020_054_732 + size}/972.8mb], which is"
                " larger than the limit of [1020054732/972.7mb], real usage: [1020054732/972.7mb], new bytes reserved:"
                f" [{size}/{size // 1024}kb]",
                bytes_wanted=1_020_054_732 + size,
                bytes_limit=1_020_054_732,
                durability="PERMANENT",
            )
        if self._bulk_rejections_left > 0:
            self._bulk_rejections_left -= 1
            raise ApiError(
                429,
                "es_rejected_execution_exception",
                f"rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0,"
                f" all_bytes=0, coordinating_operation_bytes={size}, max_coordinating_and_primary_bytes=0]",
            )

    def _route(self, method: str, seg: list[str], params: dict[str, str], body: Any) -> Any:
        if not seg:
            self._monitor("cluster:monitor/main")
            return self.profile.root()
        head, rest = seg[0], seg[1:]
        if head == "_cat" and rest == ["plugins"]:
            self._monitor("cluster:monitor/state")
            return [
                {"name": "fake-node", "component": p, "version": self.profile.plugin_version(p)} for p in self.profile.plugins
            ]
        if head == "_nodes":
            self._monitor("cluster:monitor/nodes/info")
            plugins = [{"name": p, "version": self.profile.plugin_version(p)} for p in self.profile.plugins]
            node = {"name": "fake-node", "version": self.profile.number, "plugins": plugins}
            return {"_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": "fake-cluster", "nodes": {"fAkEnOdE": node}}
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
            flat = params.get("flat_settings") == "true"
            return {n: self._describe(self.indices[n], flat) for n in self._resolve(head)}
        action = rest[0]
        if action == "_bulk":
            return self._bulk(body, head)
        if action == "_alias":
            if method == "PUT":
                return self._update_aliases([{"add": {"index": n, "alias": rest[1]}} for n in self._resolve(head)])
            return self._get_alias(rest[1] if len(rest) > 1 else "*", head)
        if action == "_refresh":
            return self._refresh(self._resolve(head))
        if action == "_settings":
            if method == "PUT":
                return self._put_settings(head, body)
            flat = params.get("flat_settings") == "true"
            wanted = rest[1] if len(rest) > 1 else "*"
            return {
                n: {"settings": self._settings_view(self.indices[n], flat, wanted)} for n in self._resolve(head)
            }
        if action == "_mapping":
            if method == "PUT":
                for name in self._resolve(head):
                    self.indices[name].mappings.update(body)
                return {"acknowledged": True}
            return {n: {"mappings": self.indices[n].mappings} for n in self._resolve(head)}
        if action == "_count":
            return self._count(self._resolve(head))
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

    def _describe(self, index: FakeIndex, flat: bool) -> dict[str, Any]:
        aliases = {a: {} for a, members in self.aliases.items() if index.name in members}
        return {"aliases": aliases, "mappings": index.mappings, "settings": self._settings_view(index, flat)}

    @staticmethod
    def _settings_view(index: FakeIndex, flat: bool, wanted: str = "*") -> dict[str, Any]:
        chosen = {k: v for k, v in index.settings.items() if fnmatch.fnmatchcase(f"index.{k}", wanted)}
        if flat:
            return {f"index.{k}": v for k, v in chosen.items()}
        nested: dict[str, Any] = {}
        for key, value in sorted(chosen.items()):
            node, parts = nested, key.split(".")
            while len(parts) > 1 and isinstance(node.setdefault(parts[0], {}), dict):
                node, parts = node[parts[0]], parts[1:]
            node[".".join(parts)] = value
        return {"index": nested} if nested else {}

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
                self._check_knn_vector(name, spec)

    def _check_knn_vector(self, name: str, spec: dict[str, Any]) -> None:
        if "dimension" not in spec:
            raise ApiError(400, "mapper_parsing_exception", f"Dimension value missing for vector: {name}")
        if not self.profile.opensearch:
            # Open Distro 1.13's KNNVectorFieldMapper: parameters store, doc_values, dimension, meta; at most 10,000.
            unknown = sorted(set(spec) - {"type", "dimension", "store", "doc_values", "meta"})
            if unknown:
                reason = f"unknown parameter [{unknown[0]}] on mapper [{name}] of type [knn_vector]"
                raise ApiError(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")
            if int(spec["dimension"]) > 10_000:
                reason = f"Dimension value cannot be greater than 10000 for vector: {name}"
                raise ApiError(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")
            return
        method = spec.get("method") or {}
        engine = method.get("engine")
        version = self.profile.version
        if engine == "lucene" and version < (2, 2):
            raise ApiError(400, "mapper_parsing_exception", "Invalid engine type: lucene")
        if engine == "nmslib" and version >= (3,):
            raise ApiError(
                400,
                "mapper_parsing_exception",
                "nmslib engine is deprecated in OpenSearch  and cannot be used for new index creation in OpenSearch"
                " from  3.0.0.",
            )
        if engine == "faiss" and method.get("space_type") == "cosinesimil" and version < (2, 19):
            raise ApiError(
                400,
                "mapper_parsing_exception",
                'Validation Failed: 1: "hnsw" with "faiss" configuration does not support space type: "cosinesimil".;',
            )

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
        settings.setdefault("number_of_shards", str(self.profile.default_shards))
        settings.setdefault("number_of_replicas", "1")
        settings["version.created"] = self.profile.version_id()
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
        every = self.profile.faults.item_rejections
        for position, (action, source) in enumerate(zip(lines[0::2], lines[1::2])):
            (op, meta), = action.items()
            target = meta.get("_index", default_index)
            names = self._resolve(target)
            if len(names) != 1:
                raise ApiError(400, "illegal_argument_exception", f"no write index is defined for alias [{target}]")
            index = self.indices[names[0]]
            doc_id = str(meta["_id"])
            result: dict[str, Any] = {"_index": index.name, "_id": doc_id}
            error = self._parse_error(index, doc_id, source)
            if every and position % every == 0 and (index.name, doc_id) not in self._rejected_once:
                self._rejected_once.add((index.name, doc_id))
                error = {
                    "type": "es_rejected_execution_exception",
                    "reason": "rejected execution of primary operation [shard_detail=[fake][0][P], shard_queue=200]"
                    " on EsThreadPoolExecutor[name = fake-node/write, queue capacity = 200]",
                }
                result.update(status=429, error=error)
            elif error:
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

    def _shard_docs(self, names: list[str]) -> tuple[list[tuple[FakeIndex, int, list[tuple[str, dict]]]], dict[str, Any]]:
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
        shards: dict[str, Any] = {"total": total, "successful": total - len(failures), "skipped": 0, "failed": len(failures)}
        if failures:
            shards["failures"] = failures
        return answering, shards

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

    def _knn(self, index: FakeIndex, docs: list, spec: dict[str, Any]) -> dict[int, float]:
        (field_name, params), = spec.items()
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
            path = "lucene" if engine == "lucene" else "ann"
            cosines = self._cosines(docs, positions, field_name, q)
            scores = {i: self.profile.score(path, c, index.created) for i, c in cosines.items()}
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
        raise ApiError(400, "script_exception", "compile error", script=script.get("source", ""), lang=script.get("lang", "painless"))
