"""The embedded search backend: files under ``IMAGE_SEARCH_HOME/index``, no server.

Each build is a folder under ``index/builds/`` (layout in docs/backends.md), published by
replacing ``index/CURRENT``, so a reader sees the old build or the new one, never half of
one. kNN is exact up to ``Settings.ann_min_docs`` documents, approximate (faiss, tuned to
:data:`TARGET_RECALL`) above; filters apply inside the search.
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
    STORED_FIELDS,
    BuildInfo,
    BuildProgress,
    BuildReport,
    Filters,
    Hit,
    SearchBackend,
)
from resources.index.keyword_index import KeywordIndex, document_text
from resources.storage.files import Staged, sweep, write_text

log = logging.getLogger(__name__)

#: The recall@10 against exact search that the approximate index is tuned to reach.
TARGET_RECALL = 0.99
_NPROBES = (8, 16, 24, 32, 48, 64, 96, 128, 256)
_TUNING_QUERIES = 200
#: Below this share of passing documents a filtered search scores only the passing rows.
_SUBSET_SHARE = 0.25
#: From this many documents builds carry a float16 copy for exact search: the float32 matrix is
#: then 32 MB or more, the last-level cache of the CPUs this runs on, and one pass over it is
#: bound by memory bandwidth, which half the bytes relieve.
_SCREEN_MIN_DOCS = 16_384
#: Unit roundoff of float16 and of float32.
_F16_EPS = 2.0**-11
_F32_EPS = 2.0**-24


class IndexNotBuiltError(UnavailableError):
    """Nothing is published yet."""


def _build_name() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def _publish(current_file: Path, name: str) -> None:
    """Point ``CURRENT`` at build ``name``: the one write that makes a build live, flushed to disk."""
    write_text(current_file, name + "\n", durable=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest ``scores``, largest first (a partial sort: O(n))."""
    if k <= 0 or scores.size == 0:
        return np.empty(0, dtype=np.int64)
    if k >= scores.size:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _to_plain(value: Any) -> Any:
    """A stored field as plain JSON-friendly Python (ISO strings for timestamps, lists for arrays)."""
    if isinstance(value, np.ndarray):
        return [_to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value, tz="UTC").isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


class _Build:
    """One opened build: memory-mapped vectors, documents, filter columns, keyword and ANN indexes."""

    def __init__(self, path: Path):
        self.path = path
        meta = json.loads((path / "info.json").read_text())
        self.info = BuildInfo(**meta["info"])
        self.ann_meta: dict[str, Any] | None = meta.get("ann")
        self.screen_meta: dict[str, Any] | None = meta.get("screen")
        self.previous: str | None = meta.get("previous")
        self.vectors = np.load(path / "vectors.npy", mmap_mode="r")
        self.documents = pd.read_parquet(path / "documents.parquet")
        if len(self.documents) != self.vectors.shape[0]:
            raise ImageSearchError(f"local index build {path} is damaged: documents and vectors differ in count")
        self.rows = pd.Index(self.documents["photo_id"].astype(str))
        submitted = pd.to_datetime(self.documents["photo_submitted_at"], utc=True, errors="coerce")
        submitted = submitted.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        self.columns = {name: self.documents[name].to_numpy() for name in STORED_FIELDS}
        self.columns["photo_submitted_at"] = submitted
        self.orientation = pd.Categorical(self.documents["orientation"])
        self.country = pd.Categorical(self.documents["photo_location_country"].str.lower())
        days = submitted.astype("datetime64[D]")
        self.submitted_day = np.where(np.isnat(days), np.iinfo(np.int64).min, days.astype(np.int64))
        self._color_rows: dict[str, np.ndarray] | None = None
        self._keyword: KeywordIndex | None = None
        self._ann = None
        self._screen = None
        self._lock = threading.Lock()

    @property
    def keyword(self) -> KeywordIndex:
        with self._lock:
            if self._keyword is None:
                self._keyword = KeywordIndex.load(self.path / "keyword")
            return self._keyword

    @property
    def ann(self):
        if self.ann_meta is None:
            return None
        with self._lock:
            if self._ann is None:
                import faiss

                self._ann = faiss.read_index(str(self.path / "ann.faiss"))
            return self._ann

    @property
    def screen(self) -> np.ndarray | None:
        """The float16 copy of the vectors (memory-mapped), or ``None`` for a build below ``_SCREEN_MIN_DOCS``."""
        if self.screen_meta is None:
            return None
        with self._lock:
            if self._screen is None:
                self._screen = np.load(self.path / "vectors_f16.npy", mmap_mode="r")
            return self._screen

    def color_rows(self, color: str) -> np.ndarray:
        """Rows whose colour keywords include ``color`` (an inverted index built on first use)."""
        with self._lock:
            if self._color_rows is None:
                exploded = self.documents["colors"].explode().dropna()
                rows = pd.Series(exploded.index.to_numpy(dtype=np.int64))
                keys = exploded.astype(str).str.lower().to_numpy()
                self._color_rows = {key: np.unique(group.to_numpy()) for key, group in rows.groupby(keys)}
            return self._color_rows.get(color.lower(), np.empty(0, dtype=np.int64))

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """The boolean mask of documents passing ``filters``; ``None`` when nothing is restricted."""
        if filters is None or filters.is_empty():
            return None
        mask = np.ones(len(self.documents), dtype=bool)
        if filters.orientation is not None:
            mask &= _category_equals(self.orientation, filters.orientation.lower())
        if filters.country is not None:
            mask &= _category_equals(self.country, filters.country.strip().lower())
        if filters.color is not None:
            in_color = np.zeros(len(self.documents), dtype=bool)
            in_color[self.color_rows(filters.color.strip())] = True
            mask &= in_color
        if filters.since is not None:
            mask &= self.submitted_day >= np.datetime64(filters.since, "D").astype(np.int64)
        if filters.until is not None:
            mask &= (self.submitted_day <= np.datetime64(filters.until, "D").astype(np.int64)) & (
                self.submitted_day != np.iinfo(np.int64).min
            )
        return mask

    def hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for ``rows`` with their ``scores``, stored fields included."""
        return [
            Hit(
                photo_id=str(self.columns["photo_id"][row]),
                score=float(score),
                fields={name: _to_plain(values[row]) for name, values in self.columns.items()},
            )
            for row, score in zip(rows.tolist(), scores.tolist())
        ]


def _category_equals(column: pd.Categorical, value: str) -> np.ndarray:
    code = column.categories.get_indexer([value])[0]
    if code < 0:
        return np.zeros(len(column), dtype=bool)
    return column.codes == code


class LocalBackend(SearchBackend):
    """The embedded index under ``settings.index_dir`` (see the module docstring)."""

    engine = "local"

    def __init__(self, settings: Settings, *, ann_min_docs: int | None = None, root: Path | None = None):
        self.settings = settings
        self.root = Path(root or settings.index_dir)
        self.builds_dir = self.root / "builds"
        self.current_file = self.root / "CURRENT"
        self.ann_min_docs = settings.ann_min_docs if ann_min_docs is None else ann_min_docs
        self._build: _Build | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._held: tuple[_Build | None] | None = None

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

    def _published(self) -> _Build | None:
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
                    self._build = _Build(path)
                self._stamp = stamp
        return self._build

    def _require(self) -> _Build:
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
        self, build: _Build, vector: np.ndarray, k: int, filters: Filters | None, *, exact: bool
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
            rows, scores = _screened_top_k(build, q, k, mask)
            return rows, np.clip(scores, -1.0, 1.0)
        scores = build.vectors @ q
        if mask is not None:
            scores[~mask] = -np.inf
        best = top_k(scores, k)
        return best, np.clip(scores[best], -1.0, 1.0)

    def _ann_search(
        self, build: _Build, q: np.ndarray, k: int, mask: np.ndarray | None
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
        documents, vectors = _validated(documents, vectors, info)
        # Builds may run from several processes at once (an asset, the CLI): only abandoned temporaries go.
        sweep(self.builds_dir)
        sweep(self.current_file.parent)
        name = _build_name()
        final = self.builds_dir / name
        previous = self._published_name()
        info = dataclasses.replace(info, name=name, count=len(documents), dim=int(vectors.shape[1]))
        steps = 5
        with Staged(final, folder=True) as tmp:
            _save_npy(tmp / "vectors.npy", vectors)
            screen = None
            if len(documents) >= _SCREEN_MIN_DOCS:
                _save_npy(tmp / "vectors_f16.npy", vectors.astype(np.float16))
                screen = {"dtype": "float16", "max_norm": float(np.linalg.norm(vectors, axis=1).max())}
            _report(progress, 1, steps)
            documents.to_parquet(tmp / "documents.parquet", index=False)
            _report(progress, 2, steps)
            KeywordIndex.build(document_text(r) for r in documents.to_dict("records")).save(tmp / "keyword")
            _report(progress, 3, steps)
            ann = None
            if len(documents) >= self.ann_min_docs:
                ann = _write_ann(tmp / "ann.faiss", vectors)
            _report(progress, 4, steps)
            meta = {"info": dataclasses.asdict(info), "ann": ann, "screen": screen, "previous": previous}
            (tmp / "info.json").write_text(json.dumps(meta, indent=2))
            check = _Build(tmp)
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


def _screened_top_k(build: _Build, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` by float32 cosine, found by screening the float16 copy first.

    SimSIMD scores every document from the float16 copy, widening to float32 to multiply
    and add, on every core. For a query ``q`` and a stored vector ``d`` that score differs
    from the float32 one by at most ``eps = ||q|| * max||d|| * (3 * 2**-11 + dim * 2**-24)``:
    rounding ``q`` and ``d`` to float16, the float32 sum of ``dim`` products, and one more
    float16 rounding to spare. The bound used is twice that, which also covers values in
    float16's subnormal range. Every document whose screened score is within ``2 * eps`` of
    the ``k``-th best is re-scored in float32. A document left out scores, exactly, below
    at least ``k`` re-scored ones, so it cannot be in the top ``k``: the answer is the one
    a full float32 pass gives.
    """
    import simsimd

    query = q.astype(np.float16)[None]
    scores = np.asarray(
        simsimd.cdist(query, build.screen, metric="dot", out_dtype="float32", threads=os.cpu_count() or 1)
    )[0]
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    eps = 2 * float(np.linalg.norm(q)) * build.screen_meta["max_norm"] * (3 * _F16_EPS + q.shape[0] * _F32_EPS)
    kth = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
    candidates = np.flatnonzero(scores >= kth - 2 * eps)
    exact = build.vectors[candidates] @ q
    best = top_k(exact, k)
    return candidates[best], exact[best]


def _report(progress: BuildProgress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _validated(documents: pd.DataFrame, vectors: np.ndarray, info: BuildInfo) -> tuple[pd.DataFrame, np.ndarray]:
    """The build's inputs in stored form, or an ImageSearchError saying what is wrong with them."""
    missing = [c for c in STORED_FIELDS if c not in documents.columns]
    if missing:
        raise ImageSearchError(f"search index documents lack columns {missing}: rebuild photo_catalog")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(documents):
        raise ImageSearchError(
            f"search index got {len(documents)} documents but vectors of shape {vectors.shape}: "
            "re-materialize image_embeddings"
        )
    if info.dim and vectors.shape[1] != info.dim:
        raise ImageSearchError(
            f"vectors have {vectors.shape[1]} dimensions but model {info.image_model} has {info.dim}: "
            "re-materialize image_embeddings"
        )
    if not np.isfinite(vectors).all():
        raise ImageSearchError("search index vectors contain NaN or infinity: re-materialize image_embeddings")
    ids = documents["photo_id"].astype(str)
    if ids.duplicated().any():
        raise ImageSearchError(
            f"search index documents repeat photo_id {ids[ids.duplicated()].iloc[0]!r}: rebuild photo_catalog"
        )
    documents = documents[list(STORED_FIELDS)].reset_index(drop=True).assign(photo_id=ids.to_numpy())
    return documents, vectors


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _write_ann(path: Path, vectors: np.ndarray) -> dict[str, Any]:
    """Train, fill and tune a faiss IVF-flat inner-product index; returns its parameters."""
    import faiss

    n, dim = vectors.shape
    nlist = int(min(4096, max(64, round(np.sqrt(n)))))
    rng = np.random.default_rng(0)
    train = vectors[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.add(vectors)
    nprobe, recall = _tune_nprobe(index, vectors, rng)
    faiss.write_index(index, str(path))
    return {"kind": "ivf-flat", "nlist": nlist, "nprobe": nprobe, "tuned_recall_at_10": recall}


def _tune_nprobe(index, vectors: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """The smallest nprobe reaching :data:`TARGET_RECALL` recall@10 on perturbed document vectors."""
    n, dim = vectors.shape
    picks = vectors[rng.choice(n, size=min(n, _TUNING_QUERIES), replace=False)]
    queries = picks + rng.standard_normal(picks.shape).astype(np.float32) / np.sqrt(dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top10(vectors, queries)
    recall = 0.0
    for nprobe in _NPROBES:
        index.nprobe = nprobe
        _, found = index.search(queries, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        if recall >= TARGET_RECALL:
            return nprobe, recall
    return _NPROBES[-1], recall


def exact_top10(vectors: np.ndarray, queries: np.ndarray, chunk: int = 131072) -> np.ndarray:
    """Rows of the exact 10 nearest documents of each query, by chunked matrix products."""
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        scores = queries @ vectors[start : start + chunk].T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-best_scores, min(9, best_scores.shape[1] - 1), axis=1)[:, :10]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)
