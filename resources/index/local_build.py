"""The on-disk form of one local index build: opening it for search, and writing its parts.

:class:`Build` is one opened build (memory-mapped vectors, documents, filter masks, keyword and
ANN indexes) and the exact top-k kernels over it; :func:`validated`, :func:`save_npy` and
:func:`write_ann` make a build's files. Publishing builds is :mod:`resources.index.local`'s.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from resources.errors import ImageSearchError
from resources.index.base import STORED_FIELDS, BuildInfo, Filters, Hit
from resources.index.keyword_index import KeywordIndex

#: The recall@10 against exact search that the approximate index is tuned to reach.
TARGET_RECALL = 0.99
_NPROBES = (8, 16, 24, 32, 48, 64, 96, 128, 256)
_TUNING_QUERIES = 200
#: From this many documents builds carry a float16 copy for exact search: the float32 matrix is
#: then 32 MB or more, the last-level cache of the CPUs this runs on, and one pass over it is
#: bound by memory bandwidth, which half the bytes relieve.
SCREEN_MIN_DOCS = 16_384
#: Unit roundoff of float16 and of float32.
_F16_EPS = 2.0**-11
_F32_EPS = 2.0**-24


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


class Build:
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
        """The float16 copy of the vectors (memory-mapped), or ``None`` for a build below :data:`SCREEN_MIN_DOCS`."""
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


def screened_top_k(build: Build, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
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


def validated(documents: pd.DataFrame, vectors: np.ndarray, info: BuildInfo) -> tuple[pd.DataFrame, np.ndarray]:
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


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as ``.npy``, flushed to disk before the build holding it is published."""
    with open(path, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def write_ann(path: Path, vectors: np.ndarray) -> dict[str, Any]:
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
