"""The embedded search backend: files under ``IMAGE_SEARCH_HOME/index``, no server.

Each build is a folder under ``index/builds/`` (layout in docs/backends.md), published by
replacing ``index/CURRENT``, so a reader sees the old build or the new one, never half of
one. kNN is exact up to ``Settings.ann_min_docs`` documents, approximate (faiss, tuned to
:data:`resources.index.local_build.TARGET_RECALL`) above; filters apply inside the search.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from resources.config import Settings
from resources.errors import ImageSearchError, UnavailableError
from resources.index import BUILD_HINT
from resources.index.base import (
    BuildInfo,
    BuildProgress,
    BuildReport,
    Filters,
    Hit,
    SearchBackend,
)
from resources.index.keyword_index import KeywordIndex, document_text
from resources.index.local_build import (
    SCREEN_MIN_DOCS,
    Build,
    save_npy,
    screened_top_k,
    top_k,
    validated,
    write_ann,
)
from resources.storage.files import Staged, sweep, write_text

log = logging.getLogger(__name__)

#: Below this share of passing documents a filtered search scores only the passing rows.
_SUBSET_SHARE = 0.25


class IndexNotBuiltError(UnavailableError):
    """Nothing is published yet."""


def _build_name() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _publish(current_file: Path, name: str) -> None:
    """Point ``CURRENT`` at build ``name``: the one write that makes a build live, flushed to disk."""
    write_text(current_file, name + "\n", durable=True)


class LocalBackend(SearchBackend):
    """The embedded index under ``settings.index_dir`` (see the module docstring)."""

    engine = "local"

    def __init__(self, settings: Settings, *, ann_min_docs: int | None = None, root: Path | None = None):
        self.settings = settings
        self.root = Path(root or settings.index_dir)
        self.builds_dir = self.root / "builds"
        self.current_file = self.root / "CURRENT"
        self.ann_min_docs = settings.ann_min_docs if ann_min_docs is None else ann_min_docs
        self._build: Build | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._held: tuple[Build | None] | None = None

    @property
    def name(self) -> str:
        """Where the index lives, for messages and metadata."""
        return str(self.root)

    # -- reading ---------------------------------------------------------------

    def pinned(self) -> "LocalBackend":
        """This index held at the build ``CURRENT`` names now; a build stays on disk while it or the next one is published."""
        view = copy.copy(self)
        view._held = (self._published(),)
        return view

    def _published(self) -> Build | None:
        """The published build, reopened when ``CURRENT`` changed since the last call (the held one when pinned)."""
        if self._held is not None:
            return self._held[0]
        try:
            st = os.stat(self.current_file)
        except FileNotFoundError:
            self._build, self._stamp = None, None
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp and self._build is not None:
            return self._build
        with self._lock:
            if stamp != self._stamp or self._build is None:
                name = self.current_file.read_text().strip()
                if self._build is None or self._build.path.name != name:
                    path = self.builds_dir / name
                    if not (path / "info.json").exists():
                        raise ImageSearchError(
                            f"local index {self.root} points at build {name!r}, which is missing: "
                            "re-materialize search_index"
                        )
                    self._build = Build(path)
                self._stamp = stamp
        return self._build

    def _require(self) -> Build:
        build = self._published()
        if build is None:
            raise IndexNotBuiltError(f"no search index under {self.root} yet: {BUILD_HINT}")
        return build

    def info(self) -> BuildInfo | None:
        build = self._published()
        return None if build is None else build.info

    def count(self) -> int:
        build = self._published()
        return 0 if build is None else len(build.documents)

    def builds(self) -> list[str]:
        """Names of the builds on disk, oldest first."""
        if not self.builds_dir.exists():
            return []
        return sorted(p.name for p in self.builds_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def get(self, photo_id: str) -> tuple[dict[str, Any], np.ndarray] | None:
        build = self._require()
        row = build.rows.get_indexer([photo_id])[0]
        if row < 0:
            return None
        hit = build.hits(np.array([row]), np.array([1.0]))[0]
        return hit.fields, np.array(build.vectors[row], dtype=np.float32)

    def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None, *, exact: bool = False) -> list[Hit]:
        """The ``k`` nearest documents by cosine; ``exact=True`` skips the approximate index."""
        build = self._require()
        rows, scores = self._knn_rows(build, vector, k, filters, exact=exact)
        return build.hits(rows, scores)

    def knn_rows(
        self, vector: np.ndarray, k: int, filters: Filters | None = None, *, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and cosine scores of the kNN answer, without stored fields (what benchmarks time)."""
        return self._knn_rows(self._require(), vector, k, filters, exact=exact)

    def _knn_rows(
        self, build: Build, vector: np.ndarray, k: int, filters: Filters | None, *, exact: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != build.vectors.shape[1]:
            raise ImageSearchError(
                f"query vector has {q.shape[0]} dimensions but the index holds {build.vectors.shape[1]}: "
                "query with the models the index was built with"
            )
        mask = build.mask(filters)
        passing = len(build.documents) if mask is None else int(mask.sum())
        k = min(k, passing)
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if not exact and build.ann is not None and passing >= _SUBSET_SHARE * len(build.documents):
            rows, scores = self._ann_search(build, q, k, mask)
            if len(rows) >= k:
                return rows, np.clip(scores, -1.0, 1.0)
        if mask is not None and passing < _SUBSET_SHARE * len(build.documents):
            subset = np.flatnonzero(mask)
            sub_scores = build.vectors[subset] @ q
            best = top_k(sub_scores, k)
            return subset[best], np.clip(sub_scores[best], -1.0, 1.0)
        if build.screen is not None:
            rows, scores = screened_top_k(build, q, k, mask)
            return rows, np.clip(scores, -1.0, 1.0)
        scores = build.vectors @ q
        if mask is not None:
            scores[~mask] = -np.inf
        best = top_k(scores, k)
        return best, np.clip(scores[best], -1.0, 1.0)

    def _ann_search(
        self, build: Build, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = faiss.SearchParametersIVF(nprobe=int(build.ann_meta["nprobe"]))
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores, rows = build.ann.search(q.reshape(1, -1), k, params=params)
        found = rows[0] >= 0
        return rows[0][found].astype(np.int64), scores[0][found]

    def keyword(self, text: str, k: int, filters: Filters | None = None, exclude: str | None = None) -> list[Hit]:
        build = self._require()
        mask = build.mask(filters)
        if exclude:
            allowed = ~build.keyword.containing(exclude)
            mask = allowed if mask is None else mask & allowed
        rows, scores = build.keyword.search(text, k, mask)
        return build.hits(rows, scores)

    # -- building --------------------------------------------------------------

    def build(
        self,
        documents: pd.DataFrame,
        vectors: np.ndarray,
        info: BuildInfo,
        progress: BuildProgress | None = None,
    ) -> BuildReport:
        started = time.perf_counter()
        documents, vectors = validated(documents, vectors, info)
        # Builds may run from several processes at once (an asset, the CLI): only abandoned temporaries go.
        sweep(self.builds_dir)
        sweep(self.current_file.parent)
        name = _build_name()
        final = self.builds_dir / name
        previous = self._published_name()
        info = dataclasses.replace(info, name=name, count=len(documents), dim=int(vectors.shape[1]))
        steps = 5
        with Staged(final, folder=True) as tmp:
            save_npy(tmp / "vectors.npy", vectors)
            screen = None
            if len(documents) >= SCREEN_MIN_DOCS:
                save_npy(tmp / "vectors_f16.npy", vectors.astype(np.float16))
                screen = {"dtype": "float16", "max_norm": float(np.linalg.norm(vectors, axis=1).max())}
            _report(progress, 1, steps)
            documents.to_parquet(tmp / "documents.parquet", index=False)
            _report(progress, 2, steps)
            KeywordIndex.build(document_text(r) for r in documents.to_dict("records")).save(tmp / "keyword")
            _report(progress, 3, steps)
            ann = None
            if len(documents) >= self.ann_min_docs:
                ann = write_ann(tmp / "ann.faiss", vectors)
            _report(progress, 4, steps)
            meta = {"info": dataclasses.asdict(info), "ann": ann, "screen": screen, "previous": previous}
            (tmp / "info.json").write_text(json.dumps(meta, indent=2))
            check = Build(tmp)
            if len(check.documents) != len(documents) or check.vectors.shape != vectors.shape:
                raise ImageSearchError(f"local index build {name} did not validate: count differs after writing")
            del check
        _publish(self.current_file, name)
        _report(progress, 5, steps)
        removed = self._remove_old(keep={name, previous})
        seconds = time.perf_counter() - started
        log.info("published local index build %s: %d documents in %.1fs", name, len(documents), seconds)
        return BuildReport(
            name=name,
            count=len(documents),
            seconds=seconds,
            details={
                "path": str(final),
                "previous": previous,
                "removed": removed,
                "approximate": None if ann is None else f"faiss IVF-flat nlist={ann['nlist']} nprobe={ann['nprobe']}",
            },
        )

    def adopt(self, source: SearchBackend) -> BuildInfo:
        """Hard-link ``source``'s published build into this index's builds and publish it (see the interface)."""
        if not isinstance(source, LocalBackend):
            raise ImageSearchError(f"cannot publish a {source.engine} build in the local index {self.root}")
        build = source._require()
        name = build.path.name
        target = self.builds_dir / name
        previous = self._published_name()
        if not (target / "info.json").exists():
            sweep(self.builds_dir)
            with Staged(target, folder=True) as tmp:
                # Builds are never changed once written, so links share them safely and cost no copy.
                shutil.copytree(build.path, tmp, copy_function=os.link, dirs_exist_ok=True)
        _publish(self.current_file, name)
        self._remove_old(keep={name, previous})
        return self._require().info

    def drop_all(self) -> list[str]:
        """Remove the whole folder: a build another index publishes is its own hard-linked copy there."""
        if self.root == Path(self.settings.index_dir):
            raise ImageSearchError(f"refusing to drop the search index {self.root}")
        names = self.builds()
        shutil.rmtree(self.root, ignore_errors=True)
        self._build, self._stamp = None, None
        return names

    def size_bytes(self) -> int | None:
        build = self._published()
        if build is None:
            return None
        return sum(p.stat().st_size for p in build.path.rglob("*") if p.is_file())

    def rollback(self) -> str:
        """Publish the build that was live before the current one again; returns its name."""
        build = self._require()
        previous = build.previous
        if not previous or not (self.builds_dir / previous / "info.json").exists():
            raise ImageSearchError(f"local index {self.root}: no previous build to roll back to")
        _publish(self.current_file, previous)
        return previous

    def _published_name(self) -> str | None:
        try:
            return self.current_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _remove_old(self, keep: set[str | None]) -> list[str]:
        removed = []
        for name in self.builds():
            if name not in keep:
                shutil.rmtree(self.builds_dir / name, ignore_errors=True)
                removed.append(name)
        return removed


def _report(progress: BuildProgress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
