"""The Elasticsearch, OpenSearch and ESCloud search backend, through ``elasticsearch7``.

This module is the backend: construction and building (load, self-check, publish); its
query side is the ``es_query`` mixin. What it leans on lives beside it, one reason to change
each: ``es_transport`` (the client, who the server is, errors), ``es_engines`` (mapping, query
and score formula per engine family), ``es_load`` (bulk loading under overload), ``es_verify``
(the self-check before publishing) and ``es_publish`` (the build lock, the alias swap read
back, clean-up). Details: docs/backends.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time
from typing import Any, Callable

import numpy as np
from elasticsearch7.exceptions import TransportError

from resources.config import Settings, mask_url
from resources.errors import ClusterError, ImageSearchError
from resources.index.base import STORED_FIELDS, BuildInfo, BuildReport, SearchBackend
from resources.index.es_engines import (
    COSINE,
    META_KEY,
    THRESHOLD,
    VECTOR_FIELD,
    EsCloudEngine,
    ScoreFormula,
    check_engine_name,
    choose_engine,
    vector_space,
)
from resources.index.es_load import Backoff, BulkLoader
from resources.index.es_publish import (
    BuildLock,
    NotPublished,
    aliased,
    built_here,
    check_no_stranger,
    clean_up,
    publish,
)
from resources.index.es_query import EsQueries
from resources.index.es_transport import (
    Release,
    absent,
    check_shards,
    connect,
    identify,
    one_line_errors,
    read_server,
    reason,
    release_from_id,
)
from resources.index.es_verify import search_many, verify

#: What other modules import from here, besides the backend: kept where they were before the split.
__all__ = ["ElasticsearchBackend", "EsCloudEngine", "VECTOR_FIELD", "choose_engine", "read_server"]

logger = logging.getLogger(__name__)

_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ElasticsearchBackend(EsQueries, SearchBackend):
    """A search index on an Elasticsearch, OpenSearch or ESCloud cluster, published under an alias.

    Construction identifies the server once (``GET /`` and the plugin list) and picks the
    engine; an unreachable or unsupported server raises :class:`ImageSearchError` naming the
    masked URL.
    """

    #: Seconds of the first backoff after documents or requests refused with HTTP 429 (doubling, with full jitter).
    bulk_backoff_s: float = 1.0
    #: How the build waits and tells time; tests replace them so that nothing sleeps.
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, settings: Settings):
        if not settings.es_url:
            raise ImageSearchError(
                "IMAGE_SEARCH_ES_URL is not set: point it at the cluster, e.g. https://localhost:9200"
            )
        if not _INDEX_NAME.match(settings.index_name):
            raise ImageSearchError(
                f"IMAGE_SEARCH_INDEX={settings.index_name!r} is not a valid index name: use lowercase letters,"
                " digits, '_', '-' or '.'"
            )
        check_engine_name(settings.es_engine)
        self.settings = settings
        self.alias = settings.index_name
        #: What queries read: the alias, or the concrete build a :meth:`pinned` view holds.
        self.reading = self.alias
        self._alias_unreadable = False
        self.url = mask_url(settings.es_url)
        self._created_by: dict[str, Release | None] = {}
        self._unreadable: set[str] = set()
        self._calibrated: dict[tuple[str, str], ScoreFormula] = {}
        if not settings.es_verify_certs and settings.es_url.startswith("https"):
            logger.warning("TLS certificate verification is off for %s (IMAGE_SEARCH_ES_VERIFY_CERTS=false)", self.url)
        self.client = connect(settings)
        with self._errors("reading the server's version (GET /)"):
            self.server = identify(self.client, self.url, settings.es_engine)
        self.impl = choose_engine(settings.es_engine, self.server)
        self.engine = self.impl.name
        if self.server.unknown:
            logger.warning(
                "%s: %s: using IMAGE_SEARCH_ES_ENGINE=%s without checking that the server runs it; run"
                " `image-search cluster check` to test the cluster",
                self.url,
                self.server.unknown,
                self.engine,
            )
        logger.info("search index: %s at %s, engine %s, alias %s", self.server.label, self.url, self.engine, self.alias)

    def _errors(self, doing: str):
        return one_line_errors(self.url, doing)

    # -- building ---------------------------------------------------------------------

    def _check_input(self, documents, vectors: np.ndarray) -> int:
        """The vectors' dimension, once the documents and vectors are fit to index."""
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
        return dim

    def build(self, documents, vectors, info, progress=None) -> BuildReport:
        started = time.perf_counter()
        vectors = np.asarray(vectors, dtype=np.float32)
        dim = self._check_input(documents, vectors)
        lock = BuildLock(self.client, self.alias, self.url, self.settings.es_build_timeout)
        with self._errors(f"preparing a build of {self.alias}"):
            check_no_stranger(self.client, self.alias, self.url)
            lock.acquire()
        try:
            index, count, errors, checked, previous = self._build_and_publish(
                documents, vectors, info, dim, lock, progress
            )
            # Under the lock: once it is given up, the next build's unpublished index looks stale.
            removed = clean_up(self.client, self.alias, keep={index, *previous})
        finally:
            with self._errors("releasing the build lock"):
                lock.release()
        seconds = time.perf_counter() - started
        logger.info(
            "published %s (%d documents) as %s in %.1f s; self-check: %s",
            index,
            count,
            self.alias,
            seconds,
            checked.summary(),
        )
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
                "verification": checked.summary(),
                "max_cosine_deviation": checked.max_deviation,
            },
        )

    def adopt(self, source: SearchBackend) -> BuildInfo:
        """Point this alias at the concrete index ``source``'s alias points to, under the build lock (issue #27)."""
        if not isinstance(source, ElasticsearchBackend) or source.url != self.url:
            raise ImageSearchError(f"cannot publish a {source.engine} build under {self.alias} on {self.url}")
        with self._errors(f"reading the build behind {source.alias}"):
            behind = sorted(aliased(source.client, source.alias))
        if len(behind) != 1 or source.info() is None:
            raise ImageSearchError(f"{source.alias} on {self.url} publishes no build: build it before publishing it")
        lock = BuildLock(self.client, self.alias, self.url, self.settings.es_build_timeout)
        with self._errors(f"publishing {behind[0]} as {self.alias}"):
            check_no_stranger(self.client, self.alias, self.url)
            lock.acquire()
            try:
                previous = publish(self.client, self.alias, behind[0], self.url)
                clean_up(self.client, self.alias, keep={behind[0], *previous})
            finally:
                lock.release()
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
                if build_name.fullmatch(name)
                and built_here(name, body, self.alias)
                and set(body.get("aliases") or {}) <= {self.alias}
            )
            if mine:
                self.client.indices.delete(index=",".join(mine))
        return mine

    def _build_and_publish(self, documents, vectors, info, dim, lock: BuildLock, progress):
        """Create, load, finish, self-check and publish one build; a failure drops it unless it may be published."""
        index = f"{self.alias}_v{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S%f}"
        meta = {**dataclasses.asdict(dataclasses.replace(info, dim=dim, count=0, name=index)), "alias": self.alias}
        backoff = Backoff(self.clock() + self.settings.es_build_timeout, self.bulk_backoff_s, self.clock, self.sleep)
        try:
            with self._errors(f"creating index {index}"):
                self._create(index, dim, meta)
            with self._errors(f"loading index {index}"):
                indexed, errors = BulkLoader(self.client, self.url, backoff).load(index, documents, vectors, progress)
            ids = [str(p) for p in documents["photo_id"]]
            self._check_error_share(errors, len(documents))
            with self._errors(f"finishing index {index}"):
                count = self._finish(index, len(indexed), {**meta, "count": 0})
            with self._errors(f"checking index {index} before publishing it"):
                checked = self._verify(index, [p if p in indexed else None for p in ids], vectors, backoff)
            with self._errors(f"publishing {index} as {self.alias}"):
                lock.check()
                previous = publish(self.client, self.alias, index, self.url)
        except NotPublished as exc:
            if not exc.unsure:
                self._drop(index)
            raise
        except ImageSearchError as exc:
            self._drop(index)
            raise type(exc)(f"{exc}; the published index is unchanged") from None
        except BaseException:
            self._drop(index)
            raise
        return index, count, errors, checked, previous

    def _check_error_share(self, errors, total: int) -> None:
        """Fail when the cluster refused more documents as invalid than IMAGE_SEARCH_ES_MAX_ERROR_SHARE allows."""
        failed = sum(errors.values())
        if failed > self.settings.es_max_error_share * total:
            summary = ", ".join(f"{n} {kind}" for kind, n in errors.most_common())
            raise ImageSearchError(
                f"{failed} of {total} documents could not be indexed on {self.url} ({summary}), more than"
                f" IMAGE_SEARCH_ES_MAX_ERROR_SHARE={self.settings.es_max_error_share}"
            )

    def _finish(self, index: str, indexed: int, meta: dict[str, Any]) -> int:
        """Restore serving settings, refresh, check the count and record it in ``_meta``; returns the count."""
        self.client.indices.put_settings(index=index, body={"index": self.impl.serving_settings})
        self.client.indices.refresh(index=index)
        count = self._count(index)
        if count != indexed:
            raise ClusterError(f"index {index} holds {count} documents but {indexed} were written: re-run the build")
        self.client.indices.put_mapping(index=index, body={"_meta": {META_KEY: {**meta, "count": count}}})
        return count

    def _verify(self, index: str, ids: list[str | None], vectors: np.ndarray, backoff: Backoff):
        """The self-check of es_verify on the new ``index`` (``None``: a row not indexed), read by the formulas queries will use."""
        created = self._created_by.get(index)
        where = (
            f"{self.server.label} (index created by {created or 'an unknown version'}) with the {self.engine} engine"
        )
        return verify(
            ids,
            vectors,
            self.impl,
            lambda bodies: search_many(self.client, self.url, index, bodies, backoff),
            lambda path: self.impl.formula(path, created),
            where,
        )

    def _create(self, index: str, dim: int, meta: dict[str, Any]) -> None:
        """Create ``index`` with the first mapping the server accepts, then read it back: its vector field must score by cosine."""
        bodies = self.impl.create_bodies(dim, meta)
        for attempt, body in enumerate(bodies, start=1):
            try:
                self._send_create(index, body, meta)
            except TransportError as exc:
                if attempt == len(bodies) or exc.status_code != 400:
                    raise
                logger.info("%s refused one form of the vector mapping (%s): trying the next", self.url, reason(exc))
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

    def _send_create(self, index: str, body: dict[str, Any], meta: dict[str, Any]) -> None:
        """``PUT index`` with ``body``, settling the two 400s that do not say this mapping form is refused.

        - ``resource_already_exists_exception``: the client resends a create after a timeout or a
          502/503/504 (es_transport ``connect``), and the resend meets the index the first one
          made. Ours only if its ``_meta`` is the one this build wrote (name, stamp, build info).
        - ``unknown setting [index.knn.advanced.approximate_threshold]``: ``GET /`` answers from one
          node, so in a rolling upgrade to 2.18 the cluster manager, which validates index settings
          (``MetadataCreateIndexService`` -> ``IndexScopedSettings.validate``), may still run 2.17.
          The index is created without it; the self-check judges the scores it then gives.
        """
        settings = body["settings"]["index"]
        try:
            self.client.indices.create(index=index, **body)
        except TransportError as exc:
            if exc.error == "resource_already_exists_exception":
                self._check_resent(index, meta)
                return
            unknown = exc.status_code == 400 and f"unknown setting [index.{THRESHOLD}]" in reason(exc)
            if not unknown or THRESHOLD not in settings:
                raise
            logger.warning(
                "%s refused index.%s as an unknown setting (its cluster manager runs OpenSearch before 2.18, as in a"
                " rolling upgrade): creating %s without it; the self-check decides whether its scores read true",
                self.url,
                THRESHOLD,
                index,
            )
            without = {k: v for k, v in settings.items() if k != THRESHOLD}
            self._send_create(index, {**body, "settings": {**body["settings"], "index": without}}, meta)

    def _check_resent(self, index: str, meta: dict[str, Any]) -> None:
        """Go on when ``index`` already exists because this build made it; stop in one line otherwise."""
        found = self.client.indices.get_mapping(index=index)
        existing = ((found.get(index) or {}).get("mappings") or {}).get("_meta", {}).get(META_KEY)
        if existing != json.loads(json.dumps(meta)):
            owner = f"build {existing.get('name')}" if isinstance(existing, dict) else "no build of this project"
            raise ImageSearchError(
                f"index {index} already exists on {self.url} and this build did not make it (its _meta names {owner}):"
                " another process builds under the same name; build again"
            )
        logger.info("%s: the resent create of %s met the index this build had made: going on", self.url, index)

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

    def _count(self, index: str) -> int:
        counted = self.client.count(index=index)
        check_shards(counted, self.url, f"counting the documents of {index}")
        return int(counted["count"])

    def _drop(self, index: str) -> None:
        """Delete the unfinished build ``index``, only if its ``_meta`` says this build made it (never a stranger's)."""
        try:
            found = self.client.indices.get_mapping(index=index, ignore=404)
            if absent(found):
                return
            meta = ((found.get(index) or {}).get("mappings") or {}).get("_meta", {}).get(META_KEY) or {}
            if meta.get("name") != index or meta.get("alias") != self.alias:
                return
            self.client.indices.delete(index=index, ignore_unavailable=True)
        except TransportError as exc:
            logger.warning("could not delete the unfinished build %s: %s", index, reason(exc))
