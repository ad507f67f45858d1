"""The one query service: text, image, more-like-this and composed searches over the published index.

The CLI and the Streamlit page share it; it imports no Dagster, so a query process loads
only the encoder, the backend and what they need. Queries are encoded with the models the
published build records, so a query vector always lives in the index's space; a refresh
to other models loads them. Each search reads one build from start to end
(:mod:`search_app.builds`), and decodes a query image once however often it re-runs.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from resources.config import Settings
from resources.errors import ImageSearchError, NotFoundError, UnavailableError
from resources.images.image_store import ImageStore
from resources.index import BUILD_HINT, open_backend
from resources.index.base import MAX_K, MODES, BuildInfo, Filters, Hit, Mode, SearchBackend, check_k
from search_app.builds import OneBuild, one_build, request_view
from search_app.parts import (  # noqa: F401 - re-exported: the service is where callers find a query's parts
    MAX_PARTS,
    MAX_QUERY_IMAGE_BYTES,
    QueryPart,
    check_parts,
    check_photo_id,
    check_query_image,
    load_query_image,
)
from search_app.results import SearchResult, one_per_group, result_of, rrf_fuse

log = logging.getLogger(__name__)


class ModelMismatchError(UnavailableError):
    """The query encoder's models or vector size are not the ones the index was built with."""


class Encoder(Protocol):
    """What the service needs of :mod:`resources.encoder.clip`'s encoder."""

    image_model_id: str
    text_model_id: str
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_image(self, image: Image.Image) -> np.ndarray: ...


def _draft_size(encoder: Encoder) -> int | None:
    """The shorter side the encoder resizes images to, so a large JPEG can decode straight to it."""
    pre = getattr(encoder, "preprocess", None)
    return getattr(pre, "size", None)


def _open_encoder(settings: Settings) -> Encoder:
    from resources.encoder.clip import ClipEncoder

    return ClipEncoder.from_settings(settings)


class SearchService:
    """Searches the published index; one instance per process serves every query."""

    def __init__(self, backend: SearchBackend, settings: Settings, encoder: Encoder | None = None):
        self.backend = backend
        self.settings = settings
        self.store = ImageStore(settings.images_dir)
        self._encoder = encoder
        #: An encoder given by the caller stays; one the service loaded follows the published build's models.
        self._encoder_given = encoder is not None
        self._lock = threading.Lock()
        self._groups: dict[str, int] = {}
        self._groups_stamp: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "SearchService":
        """The service over the configured backend; models load on the first query that needs them."""
        return cls(open_backend(settings), settings)

    # -- models ------------------------------------------------------------------

    def _index(self) -> OneBuild:
        """The backend as the running request sees it: one build from start to end."""
        return request_view(self) or OneBuild(self.backend)

    @one_build
    def build_info(self) -> BuildInfo:
        """The published build's info; raises when nothing is published yet."""
        info = self._index().info()
        if info is None:
            raise UnavailableError(
                f"no search index is published on the {self.backend.engine} backend yet: {BUILD_HINT}"
            )
        return info

    @one_build
    def encoder(self) -> Encoder:
        """The encoder for the published build's models, checked against the build.

        Loaded once; when a refresh publishes a build made with other models, the service
        loads those instead of refusing every search until a restart (an encoder given to
        the service is kept, and a build it does not match is refused).
        """
        info = self.build_info()
        with self._lock:
            current = self._encoder
            stale = current is None or (current.image_model_id, current.text_model_id) != (
                info.image_model,
                info.text_model,
            )
            if stale and not self._encoder_given:
                if current is not None:
                    log.info("the published build uses %s and %s: loading them", info.image_model, info.text_model)
                self._encoder = _open_encoder(
                    self.settings.replace(image_model=info.image_model, text_model=info.text_model)
                )
            encoder = self._encoder
        for kind, built, used in (
            ("image", info.image_model, encoder.image_model_id),
            ("text", info.text_model, encoder.text_model_id),
        ):
            if used != built:
                raise ModelMismatchError(
                    f"the index was built with {kind} model {built} but queries would be encoded with {used}: "
                    f"use the index's model (IMAGE_SEARCH_{kind.upper()}_MODEL) or rebuild search_index"
                )
        if encoder.dim != info.dim:
            raise ModelMismatchError(
                f"the index holds {info.dim}-d vectors but {encoder.image_model_id} gives {encoder.dim}-d: "
                "rebuild search_index with this model"
            )
        return encoder

    @one_build
    def answered_by(self) -> dict[str, Any]:
        """Which model answers (issue #27): the registered name (``default`` for the configured pair, ``None`` for an
        unregistered one), the model ids, the vector size and the build; every JSON result set carries it as ``model``.

        The registry only names the build's models: a damaged one is logged and the name left
        ``None``, so it never takes searches down (they answer from the build either way)."""
        from resources.models.registry import Registry

        info = self.build_info()
        try:
            name = Registry(self.settings).name_of(info.image_model, info.text_model)
        except ImageSearchError as exc:
            log.warning("answering without a model name: %s", exc)
            name = None
        return {
            "name": name,
            "image_model": info.image_model,
            "text_model": info.text_model,
            "dim": info.dim,
            "build": info.name,
        }

    @one_build
    def with_model(self, search: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """``search(*args, **kwargs)`` and :meth:`answered_by`, both read from the same build."""
        return search(*args, **kwargs), self.answered_by()

    @one_build
    def encode_text(self, query: str) -> np.ndarray:
        """The query text's unit vector in the index's space."""
        return np.asarray(self.encoder().encode_texts([query])[0], dtype=np.float32)

    # -- duplicates ----------------------------------------------------------------

    def duplicate_groups(self) -> dict[str, int]:
        """photo_id -> group of every photo in a stored near-duplicate group; empty when none are stored.

        Costs one ``stat`` when the file is unchanged. An unreadable file is logged and
        treated as no groups, so a damaged grouping never stops searches.
        """
        path = self.settings.duplicates_path
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            if stamp != self._groups_stamp:
                try:
                    table = pq.read_table(path, columns=["photo_id", "group_id"]).to_pydict()
                    self._groups = dict(zip(table["photo_id"], table["group_id"]))
                except Exception as exc:  # noqa: BLE001 - any damage means "no groups", reported once
                    log.warning("ignoring the near-duplicate groups in %s: %s", path, exc)
                    self._groups = {}
                self._groups_stamp = stamp
            return self._groups

    def _collapsed(self, search: Callable[[int], list[SearchResult]], k: int) -> list[SearchResult]:
        """The first ``k`` of ``search``'s results with one per duplicate group, searching deeper until ``k`` remain."""
        groups = self.duplicate_groups()
        if not groups:
            return search(k)
        limit = min(MAX_K, k + len(groups))
        depth = min(limit, 2 * k)
        while True:
            kept = one_per_group(search(depth), groups)
            if len(kept) >= k or depth >= limit:
                return kept[:k]
            depth = min(limit, 2 * depth)

    # -- searches ------------------------------------------------------------------

    @one_build
    def search_text(
        self,
        query: str,
        k: int = 20,
        min_score: float | None = None,
        mode: Mode = "vector",
        filters: Filters | None = None,
        collapse_duplicates: bool = False,
    ) -> list[SearchResult]:
        """Photos matching ``query`` (any language) by image vector, by keywords, or both fused."""
        k = check_k(k)
        if not query or not query.strip():
            raise ImageSearchError("the query text is empty: type some words to search for")
        if mode not in MODES:
            raise ImageSearchError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        vector = functools.cache(lambda: self.encode_text(query))
        search = lambda depth: self._ranked(query, None, vector, depth, min_score, mode, filters)  # noqa: E731
        return self._collapsed(search, k) if collapse_duplicates else search(k)

    @one_build
    def search_composed(
        self,
        parts: list[QueryPart],
        k: int = 20,
        min_score: float | None = None,
        mode: Mode = "vector",
        filters: Filters | None = None,
        collapse_duplicates: bool = False,
    ) -> list[SearchResult]:
        """Photos matching a composition: like these words, images and photos, and unlike those.

        The query vector is the normalised weighted sum of the parts' unit vectors (the text
        parts encoded together in one model call, a photo part by its stored vector); a
        single part's vector is used as encoded, so one part gives exactly what
        :meth:`search_text`, :meth:`search_image` or :meth:`more_like_this` gives.

        By mode:

        - ``vector``: the kNN of the composed vector.
        - ``keyword``: BM25 of the positive parts' words, leaving out every photo that carries
          any of the negative parts' words (both backends exclude inside the search, like a
          filter). Weights only give the sign here, and image and photo parts cannot take
          part, so a composition holding one is refused.
        - ``hybrid``: reciprocal rank fusion of the composed vector's kNN and that keyword
          list (empty when no part has positive words): negative words push the vector away
          and keep their photos out of the keyword list, though a photo can still come in
          through the vector list.

        Filters and ``collapse_duplicates`` apply as in every search. A bad composition (see
        :func:`check_parts`), an unknown photo id or parts that cancel out raise a one-line
        :class:`ImageSearchError`.
        """
        k = check_k(k)
        parts = check_parts(parts)
        if mode not in MODES:
            raise ImageSearchError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        words = " ".join(p.text for p in parts if p.text is not None and p.weight > 0)
        unwanted = " ".join(p.text for p in parts if p.text is not None and p.weight < 0)
        if mode == "keyword":
            other = next((p for p in parts if p.text is None), None)
            if other is not None:
                raise ImageSearchError(
                    f"keyword mode matches words only and cannot use {other.label()}: use hybrid or vector mode"
                )
        vector = functools.cache(lambda: self.composed_vector(parts))  # its images are decoded once however deep
        search = lambda depth: self._ranked(words, unwanted or None, vector, depth, min_score, mode, filters)  # noqa: E731
        return self._collapsed(search, k) if collapse_duplicates else search(k)

    @one_build
    def composed_vector(self, parts: list[QueryPart]) -> np.ndarray:
        """The unit query vector of a composition: the normalised weighted sum of its parts' unit vectors.

        Photo ids and images are checked before any model loads, so a bad part fails fast;
        images are then decoded at the scale the loaded image model needs.
        """
        parts = check_parts(parts)
        self.build_info()
        vectors: list[np.ndarray | None] = [None] * len(parts)
        pictures: dict[int, Image.Image] = {}
        for i, part in enumerate(parts):
            if part.photo_id is not None:
                found = self._index().get(check_photo_id(part.photo_id))
                if found is None:
                    raise NotFoundError(
                        f"part {i + 1}: photo id {part.photo_id!r} is not in the index: use a photo_id from a search result"
                    )
                vectors[i] = found[1]
            elif part.image is not None:
                check_query_image(part.image)
        for i, part in enumerate(parts):
            if part.image is not None:
                pictures[i] = load_query_image(part.image, draft_to=_draft_size(self.encoder()))
        texts = [(i, p.text) for i, p in enumerate(parts) if p.text is not None]
        if texts:
            encoded = self.encoder().encode_texts([t for _, t in texts])
            for (i, _), vector in zip(texts, encoded):
                vectors[i] = np.asarray(vector, dtype=np.float32)
        for i, picture in pictures.items():
            vectors[i] = np.asarray(self.encoder().encode_image(picture), dtype=np.float32)
        if len(parts) == 1:
            return vectors[0]
        total = np.zeros(vectors[0].shape[0], dtype=np.float64)
        for part, vector in zip(parts, vectors):
            unit = vector.astype(np.float64)
            total += float(part.weight) * unit / np.linalg.norm(unit)
        norm = float(np.linalg.norm(total))
        if not norm > 1e-6 * sum(abs(float(p.weight)) for p in parts):
            raise ImageSearchError("the composed query's parts cancel each other out: change a weight or drop a part")
        return (total / norm).astype(np.float32)

    @one_build
    def search_image(
        self,
        image: Image.Image | bytes | str | os.PathLike,
        k: int = 20,
        min_score: float | None = None,
        filters: Filters | None = None,
        collapse_duplicates: bool = False,
    ) -> list[SearchResult]:
        """Photos whose image vectors are nearest to ``image`` (a PIL image, bytes or a path)."""
        k = check_k(k)
        check_query_image(image)
        encoder = self.encoder()
        picture = load_query_image(image, draft_to=_draft_size(encoder))
        vector = np.asarray(encoder.encode_image(picture), dtype=np.float32)
        search = lambda depth: self._ranked("", None, lambda: vector, depth, min_score, "vector", filters)  # noqa: E731
        return self._collapsed(search, k) if collapse_duplicates else search(k)

    @one_build
    def more_like_this(
        self,
        photo_id: str,
        k: int = 20,
        min_score: float | None = None,
        filters: Filters | None = None,
        collapse_duplicates: bool = False,
    ) -> list[SearchResult]:
        """Photos nearest to an indexed photo's own image vector; the photo itself comes first."""
        k = check_k(k)
        vector = self._indexed(photo_id)[1]
        search = lambda depth: self._ranked("", None, lambda: vector, depth, min_score, "vector", filters)  # noqa: E731
        return self._collapsed(search, k) if collapse_duplicates else search(k)

    @one_build
    def photo(self, photo_id: str) -> SearchResult:
        """An indexed photo's record, as a result scored by its similarity to itself (1.0)."""
        fields, _ = self._indexed(photo_id)
        return result_of(Hit(photo_id=photo_id, score=1.0, fields=fields), 1.0, self.settings, self.store)

    def _indexed(self, photo_id: str) -> tuple[dict[str, Any], np.ndarray]:
        """The stored fields and vector of an indexed photo; a one-line error when it is not indexed."""
        check_photo_id(photo_id)
        self.build_info()
        found = self._index().get(photo_id)
        if found is None:
            raise NotFoundError(f"photo id {photo_id!r} is not in the index: use a photo_id from a search result")
        return found

    def _ranked(
        self,
        words: str,
        unwanted: str | None,
        vector: Callable[[], np.ndarray],
        k: int,
        min_score: float | None,
        mode: Mode,
        filters: Filters | None,
    ) -> list[SearchResult]:
        """The one search behind every query: by ``vector()``, by ``words``, or both fused.

        ``unwanted`` words keep the photos carrying them out of the keyword list.
        """
        if mode == "keyword":
            self.build_info()
            hits = self._index().keyword(words, k, filters, exclude=unwanted)
            return self._results(hits, min_score, cosines=None)
        query = vector()
        if mode == "vector":
            hits = self._index().knn(query, k, filters)
            return self._results(hits, min_score, cosines={h.photo_id: h.score for h in hits})
        return self._hybrid(words, unwanted, query, k, min_score, filters)

    def _hybrid(
        self,
        words: str,
        unwanted: str | None,
        vector: np.ndarray,
        k: int,
        min_score: float | None,
        filters: Filters | None,
    ) -> list[SearchResult]:
        depth = max(2 * k, 100)
        knn_hits = self._index().knn(vector, depth, filters)
        keyword_hits = self._index().keyword(words, depth, filters, exclude=unwanted) if words.strip() else []
        fused = rrf_fuse([h.photo_id for h in knn_hits], [h.photo_id for h in keyword_hits])
        cosines = {h.photo_id: h.score for h in knn_hits}
        by_id = {h.photo_id: h for h in keyword_hits} | {h.photo_id: h for h in knn_hits}
        ranked = sorted(fused, key=lambda pid: (-fused[pid], -cosines.get(pid, -2.0)))[:k]
        for pid in ranked:
            if pid not in cosines:
                found = self._index().get(pid)
                cosines[pid] = float(np.clip(found[1] @ vector, -1.0, 1.0)) if found else None
        hits = [Hit(photo_id=pid, score=fused[pid], fields=by_id[pid].fields) for pid in ranked]
        return self._results(hits, min_score, cosines=cosines)

    def _results(
        self,
        hits: list[Hit],
        min_score: float | None,
        cosines: dict[str, float | None] | None,
    ) -> list[SearchResult]:
        """Results for ``hits``, cut at ``min_score`` on the cosine (on the BM25 score when there is none)."""
        results = []
        for hit in hits:
            cosine = None if cosines is None else cosines.get(hit.photo_id)
            cut_value = hit.score if cosines is None else cosine
            if min_score is not None and (cut_value is None or cut_value < min_score):
                continue
            results.append(result_of(hit, cosine, self.settings, self.store))
        return results
