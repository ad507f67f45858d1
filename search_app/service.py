"""The one query service: text, image, more-like-this and composed searches over the published index.

The CLI and the Streamlit page share it; it imports no Dagster, so a query process loads
only the encoder, the backend and what they need. Queries are encoded with the models the
published build records, so a query vector always lives in the index's space.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from resources.backends import BUILD_HINT, open_backend
from resources.backends.base import MAX_K, MODES, BuildInfo, Filters, Hit, Mode, SearchBackend, check_k
from resources.config import Settings
from resources.downloader import FetchFailure, normalise_image, with_imgix_params
from resources.errors import ImageSearchError, NotFoundError, UnavailableError
from resources.image_store import ImageStore

log = logging.getLogger(__name__)

RRF_K = 60
#: The largest query image accepted from a file or an upload (the CLI, the HTTP API); the
#: pixel cap is :data:`resources.pictures.MAX_PIXELS`, read from the header before decoding.
MAX_QUERY_IMAGE_BYTES = 50 * 1024 * 1024
#: The most parts one composed query may have: enough for any phrasing a person writes,
#: few enough that a caller cannot make one query encode hundreds of images.
MAX_PARTS = 16


class ModelMismatchError(UnavailableError):
    """The query encoder's image model is not the one the index was built with."""


class Encoder(Protocol):
    """What the service needs of :mod:`resources.clip`'s encoder."""

    image_model_id: str
    text_model_id: str
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_image(self, image: Image.Image) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchResult:
    """One photo found, with what a result list shows and links to.

    ``score`` is the cosine similarity (vector, image and more-like-this searches), the BM25
    score (keyword mode) or the reciprocal rank fusion score (hybrid mode, the cosine then in
    ``cosine``).
    """

    photo_id: str
    score: float
    cosine: float | None
    describe: str | None
    image_url: str | None
    local_path: Path | None
    photo_url: str | None
    photographer_name: str | None
    photographer_username: str | None
    photographer_url: str | None
    photo_description: str | None = None
    ai_description: str | None = None
    orientation: str | None = None
    colors: list[str] = field(default_factory=list)
    country: str | None = None
    submitted_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        data = asdict(self)
        data["local_path"] = None if self.local_path is None else str(self.local_path)
        return data


@dataclass(frozen=True)
class QueryPart:
    """One part of a composed query: exactly one of words, an image or an indexed photo, with a weight.

    A positive ``weight`` pulls results towards the part, a negative one pushes them away.
    """

    text: str | None = None
    image: Image.Image | bytes | None = None
    photo_id: str | None = None
    weight: float = 1.0

    def label(self) -> str:
        """How messages name the part: ``words 'beach'``, ``photo 'abc'`` or ``an image``."""
        if self.text is not None:
            return f"words {self.text!r}"
        if self.photo_id is not None:
            return f"photo {self.photo_id!r}"
        return "an image"


def check_parts(parts: list[QueryPart]) -> list[QueryPart]:
    """``parts`` as a list when they make a composition; otherwise a one-line error naming the bad part."""
    parts = list(parts)
    if not parts:
        raise ImageSearchError("the composed query has no parts: give words, an image or a photo to search for")
    if len(parts) > MAX_PARTS:
        raise ImageSearchError(f"the composed query has {len(parts)} parts: use at most {MAX_PARTS}")
    for number, part in enumerate(parts, start=1):
        given = sum(v is not None for v in (part.text, part.image, part.photo_id))
        if given != 1:
            raise ImageSearchError(
                f"part {number} gives {given} of words, image and photo id: give exactly one per part"
            )
        for name, value in (("words", part.text), ("photo id", part.photo_id)):
            if value is not None and not isinstance(value, str):
                raise ImageSearchError(f"part {number} gives its {name} as {type(value).__name__}: give a string")
        if part.text is not None and not part.text.strip():
            raise ImageSearchError(f"part {number} has empty words: type some words or drop the part")
        if part.image is not None and not isinstance(part.image, (Image.Image, bytes, bytearray, memoryview)):
            raise ImageSearchError(
                f"part {number} has an image of type {type(part.image).__name__}: give a PIL image or the image's bytes"
            )
        if part.photo_id is not None and not part.photo_id.strip():
            raise ImageSearchError(f"part {number} has an empty photo id: use a photo_id from a search result")
        weight = part.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise ImageSearchError(f"part {number} ({part.label()}) has weight {weight!r}: give a number")
        if not np.isfinite(weight) or weight == 0:
            raise ImageSearchError(
                f"part {number} ({part.label()}) has weight {weight!r}: give a finite number other than 0"
            )
    if all(part.weight < 0 for part in parts):
        raise ImageSearchError(
            "the composed query has only negative parts: add words, an image or a photo to search for"
        )
    return parts


def rrf_fuse(*ranked: list[str], depth_k: int = RRF_K) -> dict[str, float]:
    """Reciprocal rank fusion: per photo, the sum over lists of 1/(depth_k + rank), ranks from 1."""
    fused: dict[str, float] = {}
    for ids in ranked:
        for rank, photo_id in enumerate(ids, start=1):
            fused[photo_id] = fused.get(photo_id, 0.0) + 1.0 / (depth_k + rank)
    return fused


def one_per_group(results: list[SearchResult], groups: dict[str, int]) -> list[SearchResult]:
    """``results`` in order, without any photo whose duplicate group already has a better-ranked one."""
    seen: set[int] = set()
    kept = []
    for result in results:
        group = groups.get(result.photo_id)
        if group is not None:
            if group in seen:
                continue
            seen.add(group)
        kept.append(result)
    return kept


def load_query_image(image: Image.Image | bytes | str | os.PathLike) -> Image.Image:
    """An RGB image from a PIL image, raw bytes or a file path; a bad one raises ImageSearchError.

    Bytes and files go through the same validation as downloaded photos (a byte cap, a pixel
    cap read before decoding, a real decode, EXIF rotation, conversion to RGB), so an upload
    is never trusted.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    label = "the uploaded image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        label = str(path)
        if not path.is_file():
            raise ImageSearchError(f"image file {path} not found: give the path of a JPEG, PNG or WebP file")
        if path.stat().st_size > MAX_QUERY_IMAGE_BYTES:
            raise ImageSearchError(f"image file {path} is larger than 50 MB: give a smaller image")
        image = path.read_bytes()
    if len(image) > MAX_QUERY_IMAGE_BYTES:
        raise ImageSearchError(f"{label} is larger than 50 MB: give a smaller image")
    try:
        data, _, _, _ = normalise_image(bytes(image))
    except FetchFailure as exc:
        raise ImageSearchError(f"cannot use {label} as a query: {exc}") from None
    return Image.open(io.BytesIO(data)).convert("RGB")


def _open_encoder(settings: Settings) -> Encoder:
    from resources.clip import ClipEncoder

    return ClipEncoder.from_settings(settings)


class SearchService:
    """Searches the published index; one instance per process serves every query."""

    def __init__(self, backend: SearchBackend, settings: Settings, encoder: Encoder | None = None):
        self.backend = backend
        self.settings = settings
        self.store = ImageStore(settings.images_dir)
        self._encoder = encoder
        self._encoder_given = encoder is not None
        self._lock = threading.Lock()
        self._groups: dict[str, int] = {}
        self._groups_stamp: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "SearchService":
        """The service over the configured backend; models load on the first query that needs them."""
        return cls(open_backend(settings), settings)

    # -- models ------------------------------------------------------------------

    def build_info(self) -> BuildInfo:
        """The published build's info; raises when nothing is published yet."""
        info = self.backend.info()
        if info is None:
            raise UnavailableError(f"no search index is published on the {self.backend.engine} backend yet: {BUILD_HINT}")
        return info

    def encoder(self) -> Encoder:
        """The encoder for the published build's models, loaded once and checked against the build."""
        info = self.build_info()
        encoder = self._encoder_for(info)
        if encoder.image_model_id != info.image_model:
            raise ModelMismatchError(
                f"the index was built with image model {info.image_model} but queries would be encoded with "
                f"{encoder.image_model_id}: use the index's model (IMAGE_SEARCH_IMAGE_MODEL) or rebuild search_index"
            )
        if encoder.dim != info.dim:
            raise ModelMismatchError(
                f"the index holds {info.dim}-d vectors but {encoder.image_model_id} gives {encoder.dim}-d: "
                "rebuild search_index with this model"
            )
        return encoder

    def _encoder_for(self, info: BuildInfo) -> Encoder:
        """The encoder of ``info``'s models: the loaded one, or (issue #27) one loaded for them when a build made
        with other models was published since, e.g. by ``image-search models promote``.

        An encoder given to the constructor is never replaced: a mismatch with it stays an error.
        """
        with self._lock:
            loaded = self._encoder
            stale = loaded is not None and (loaded.image_model_id, loaded.text_model_id) != (info.image_model, info.text_model)
            if loaded is None or (stale and not self._encoder_given):
                self._encoder = _open_encoder(self.settings.replace(image_model=info.image_model, text_model=info.text_model))
            return self._encoder

    def answered_by(self, info: BuildInfo | None = None) -> dict[str, Any]:
        """Which model answers (issue #27): the registered name (``default`` for the configured pair), the model ids,
        the vector size and the build; every JSON result set carries it under ``model``."""
        from resources.models.registry import Registry

        info = info or self.build_info()
        name = Registry(self.settings).name_of(info.image_model, info.text_model)
        return {"name": name, "image_model": info.image_model, "text_model": info.text_model, "dim": info.dim, "build": info.name}

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
        if collapse_duplicates:
            return self._collapsed(lambda depth: self.search_text(query, depth, min_score, mode, filters), k)
        if not query or not query.strip():
            raise ImageSearchError("the query text is empty: type some words to search for")
        if mode not in MODES:
            raise ImageSearchError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        return self._ranked(query, None, lambda: self.encode_text(query), k, min_score, mode, filters)

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
        if collapse_duplicates:
            return self._collapsed(lambda depth: self.search_composed(parts, depth, min_score, mode, filters), k)
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
        return self._ranked(words, unwanted or None, lambda: self.composed_vector(parts), k, min_score, mode, filters)

    def composed_vector(self, parts: list[QueryPart]) -> np.ndarray:
        """The unit query vector of a composition: the normalised weighted sum of its parts' unit vectors.

        Photo ids and images are checked before any model loads, so a bad part fails fast.
        """
        parts = check_parts(parts)
        self.build_info()
        vectors: list[np.ndarray | None] = [None] * len(parts)
        pictures: dict[int, Image.Image] = {}
        for i, part in enumerate(parts):
            if part.photo_id is not None:
                found = self.backend.get(part.photo_id)
                if found is None:
                    raise NotFoundError(
                        f"part {i + 1}: photo id {part.photo_id!r} is not in the index: use a photo_id from a search result"
                    )
                vectors[i] = found[1]
            elif part.image is not None:
                pictures[i] = load_query_image(part.image)
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
        if collapse_duplicates:
            return self._collapsed(lambda depth: self.search_image(image, depth, min_score, filters), k)
        picture = load_query_image(image)
        vector = np.asarray(self.encoder().encode_image(picture), dtype=np.float32)
        return self._ranked("", None, lambda: vector, k, min_score, "vector", filters)

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
        if collapse_duplicates:
            return self._collapsed(lambda depth: self.more_like_this(photo_id, depth, min_score, filters), k)
        vector = self._indexed(photo_id)[1]
        return self._ranked("", None, lambda: vector, k, min_score, "vector", filters)

    def photo(self, photo_id: str) -> SearchResult:
        """An indexed photo's record, as a result scored by its similarity to itself (1.0)."""
        fields, _ = self._indexed(photo_id)
        return self._result(Hit(photo_id=photo_id, score=1.0, fields=fields), 1.0)

    def _indexed(self, photo_id: str) -> tuple[dict[str, Any], np.ndarray]:
        """The stored fields and vector of an indexed photo; a one-line error when it is not indexed."""
        self.build_info()
        found = self.backend.get(photo_id)
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
            hits = self.backend.keyword(words, k, filters, exclude=unwanted)
            return self._results(hits, min_score, cosines=None)
        query = vector()
        if mode == "vector":
            hits = self.backend.knn(query, k, filters)
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
        knn_hits = self.backend.knn(vector, depth, filters)
        keyword_hits = self.backend.keyword(words, depth, filters, exclude=unwanted) if words.strip() else []
        fused = rrf_fuse([h.photo_id for h in knn_hits], [h.photo_id for h in keyword_hits])
        cosines = {h.photo_id: h.score for h in knn_hits}
        by_id = {h.photo_id: h for h in keyword_hits} | {h.photo_id: h for h in knn_hits}
        ranked = sorted(fused, key=lambda pid: (-fused[pid], -cosines.get(pid, -2.0)))[:k]
        for pid in ranked:
            if pid not in cosines:
                found = self.backend.get(pid)
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
            results.append(self._result(hit, cosine))
        return results

    def _result(self, hit: Hit, cosine: float | None) -> SearchResult:
        f = hit.fields
        username = f.get("photographer_username")
        image_url = f.get("photo_image_url")
        return SearchResult(
            photo_id=hit.photo_id,
            score=float(hit.score),
            cosine=cosine,
            describe=f.get("describe"),
            image_url=with_imgix_params(image_url, self.settings.imgix_params) if image_url else None,
            local_path=self.store.local_path(hit.photo_id),
            photo_url=f.get("photo_url"),
            photographer_name=f.get("photographer_name"),
            photographer_username=username,
            photographer_url=f"https://unsplash.com/@{username}" if username else None,
            photo_description=f.get("photo_description"),
            ai_description=f.get("ai_description"),
            orientation=f.get("orientation"),
            colors=list(f.get("colors") or []),
            country=f.get("photo_location_country"),
            submitted_at=f.get("photo_submitted_at"),
        )
