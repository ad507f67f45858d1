"""The fake's HTTP server and request routing."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.es_fake.indices import IndicesMixin
from tests.es_fake.profiles import PROFILES, ApiError, FakeIndex, ServerProfile
from tests.es_fake.search import SearchMixin


class FakeSearchServer(IndicesMixin, SearchMixin):
    """The fake cluster; use as a context manager, then point the client at :attr:`url`."""

    def __init__(self, profile: str | ServerProfile, ssl_context: ssl.SSLContext | None = None):
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.indices: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.drop_bulk = False
        self.gone = False
        self._bulk_rejections_left = self.profile.faults.bulk_rejections
        self._alias_answers_to_lose = self.profile.faults.aliases_lost_answers
        self._search_rejections_left = self.profile.faults.search_rejections
        self._rejections: dict[tuple[str, str], int] = {}
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
        self._alias_answers_to_lose = self.profile.faults.aliases_lost_answers
        self._search_rejections_left = self.profile.faults.search_rejections

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
                if fake.gone or (fake.drop_bulk and parts.path.endswith("/_bulk")):
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
        if bulk or path.endswith("/_msearch"):
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
                answer = self._route(method, segments, params, body)
                if segments == ["_aliases"] and self._alias_answers_to_lose > 0:
                    self._alias_answers_to_lose -= 1
                    gone = "upstream request timeout"
                    return 504, {"error": {"type": "gateway_timeout", "reason": gone}, "status": 504}
                return 200, answer
        except ApiError as err:
            return err.status, err.body()

    def _forbidden(self, action: str) -> ApiError:
        """403 as the OpenSearch/Open Distro security plugin or Elasticsearch security words it."""
        if self.profile.opensearch or self.profile.knn_plugin:
            reason = (
                f"no permissions for [{action}] and User [name=image_search, backend_roles=[], requestedTenant=null]"
            )
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
                self.profile.rejected_execution,
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
                {"name": "fake-node", "component": p, "version": self.profile.plugin_version(p)}
                for p in self.profile.plugins
            ]
        if head == "_nodes":
            self._monitor("cluster:monitor/nodes/info")
            plugins = [{"name": p, "version": self.profile.plugin_version(p)} for p in self.profile.plugins]
            nodes = {"fAkEnOdE": {"name": "fake-node", "version": self.profile.number, "plugins": plugins}}
            if self.profile.manager_number is not None:
                manager = {"name": "fake-manager", "version": self.profile.manager_number, "plugins": plugins}
                nodes["fAkEmAnAgEr"] = manager
            return {
                "_nodes": {"total": len(nodes), "successful": len(nodes), "failed": 0},
                "cluster_name": "fake-cluster",
                "nodes": nodes,
            }
        if head == "_bulk":
            return self._bulk(body, None)
        if head == "_aliases" and method == "POST":
            return self._update_aliases(body["actions"])
        if head == "_alias":
            return self._get_alias(rest[0] if rest else "*", None)
        if head == "_refresh":
            return self._refresh(list(self.indices))
        if not rest:
            return self._route_index(method, head, params, body)
        return self._route_action(method, head, rest, params, body)

    def _route_index(self, method: str, head: str, params: dict[str, str], body: Any) -> Any:
        if method == "PUT":
            return self._create(head, body or {})
        if method == "DELETE":
            return self._delete(head, params)
        if method == "HEAD":
            self._resolve(head)
            return {}
        self._settings_guard()
        flat = params.get("flat_settings") == "true"
        return {n: self._describe(self.indices[n], flat) for n in self._resolve(head)}

    def _settings_guard(self) -> None:
        if self.profile.faults.settings_forbidden:
            raise self._forbidden("indices:monitor/settings/get")

    def _route_action(self, method: str, head: str, rest: list[str], params: dict[str, str], body: Any) -> Any:
        action = rest[0]
        if action == "_msearch":
            return self._msearch(head, body)
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
            self._settings_guard()
            flat = params.get("flat_settings") == "true"
            wanted = rest[1] if len(rest) > 1 else "*"
            return {n: {"settings": self._settings_view(self.indices[n], flat, wanted)} for n in self._resolve(head)}
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
        if action in ("_doc", "_create") and len(rest) == 2:
            if method in ("PUT", "POST"):
                return self._write_doc(head, rest[1], body, params, create=action == "_create")
            if method == "DELETE":
                return self._delete_doc(head, rest[1], params)
            return self._get_doc(head, rest[1])
        raise ApiError(400, "illegal_argument_exception", f"the fake does not serve {method} /{head}/{'/'.join(rest)}")
