"""The one search-backend interface every engine implements, and the query vocabulary they share.

A backend stores each photo's unit image vector and catalog fields, publishes each build
atomically, and answers kNN (cosine) and keyword (BM25) searches with filters applied
inside the search, so ``k`` results come back whenever ``k`` documents pass.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args

import numpy as np
import pandas as pd

from resources.errors import ImageSearchError

ORIENTATIONS = ("landscape", "portrait", "square")
#: How a text query matches: by image vector, by keywords (BM25), or both fused.
Mode = Literal["vector", "keyword", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
#: The most results one search returns, on every query path.
MAX_K = 1000

#: Catalog columns stored with each document and returned with each hit.
STORED_FIELDS = (
    "photo_id",
    "describe",
    "photo_description",
    "ai_description",
    "photo_image_url",
    "photo_url",
    "photographer_name",
    "photographer_username",
    "orientation",
    "dominant_color",
    "colors",
    "photo_location_country",
    "photo_submitted_at",
)


def check_k(k: int, limit: int = MAX_K) -> int:
    """``k`` as an int when it asks for 1 to ``limit`` results; otherwise a one-line error."""
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise ImageSearchError(f"k={k!r} is out of range: ask for 1 to {limit} results")
    return int(k)


@dataclass(frozen=True)
class Filters:
    """Restrictions applied inside a search. ``None`` means no restriction on that field.

    ``color`` matches any of a photo's colour keywords (``colors`` in the catalog);
    ``country`` matches ``photo_location_country`` case-insensitively; ``since`` and
    ``until`` bound ``photo_submitted_at`` by calendar day, both inclusive.
    """

    orientation: str | None = None
    color: str | None = None
    country: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None

    def is_empty(self) -> bool:
        """True when no field restricts anything."""
        return all(v is None for v in (self.orientation, self.color, self.country, self.since, self.until))


@dataclass(frozen=True)
class BuildInfo:
    """What a published build was made from; the query service checks it against its models."""

    image_model: str
    text_model: str
    dim: int
    count: int
    built_at: str
    name: str

    @classmethod
    def for_vectors(cls, image_model: str, text_model: str, vectors: np.ndarray) -> "BuildInfo":
        """The info of a build of ``vectors`` made now; the backend fills in ``name`` when it publishes."""
        return cls(
            image_model=image_model,
            text_model=text_model,
            dim=int(vectors.shape[1]),
            count=int(vectors.shape[0]),
            built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            name="",
        )


@dataclass
class Hit:
    """One result: the photo, its score, and its stored fields (see :data:`STORED_FIELDS`)."""

    photo_id: str
    score: float
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildReport:
    """What :meth:`SearchBackend.build` did, for the asset's metadata."""

    name: str
    count: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


#: Called as ``progress(done, total)`` while a build loads documents.
BuildProgress = Callable[[int, int], None]


class SearchBackend(ABC):
    """A search index: built from catalog rows and vectors, queried by vector or by words."""

    #: ``local`` or the engine's name; shown in metadata and messages.
    engine: str

    @abstractmethod
    def build(
        self,
        documents: pd.DataFrame,
        vectors: np.ndarray,
        info: BuildInfo,
        progress: BuildProgress | None = None,
    ) -> BuildReport:
        """Write a new build beside the live one, validate its count, then publish it atomically.

        ``documents`` holds one row per photo with the :data:`STORED_FIELDS` columns, in the
        same order as the rows of ``vectors`` (float32, unit length). Re-running with the
        same documents leaves the same count. The previous build is kept for rollback, older
        ones are removed. A failed build raises and leaves the published one serving.
        """

    @abstractmethod
    def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> list[Hit]:
        """The ``k`` documents most similar to ``vector``, best first, scored by cosine similarity."""

    @abstractmethod
    def keyword(self, text: str, k: int, filters: Filters | None = None, exclude: str | None = None) -> list[Hit]:
        """The ``k`` best BM25 matches of ``text`` in describe and the descriptions, best first.

        ``exclude`` holds words no returned document may carry: a document matching any of
        them in the same fields is left out, as filters leave documents out.
        """

    @abstractmethod
    def get(self, photo_id: str) -> tuple[dict[str, Any], np.ndarray] | None:
        """The stored fields and vector of ``photo_id``, or ``None`` if it is not indexed."""

    @abstractmethod
    def info(self) -> BuildInfo | None:
        """The published build's :class:`BuildInfo`, or ``None`` when nothing is published yet."""

    def pinned(self) -> "SearchBackend":
        """This index held at the build published now, for one query to read from start to end.

        Every read of the returned backend answers from that build, even after a newer one
        is published. An engine that cannot hold a build returns itself.
        """
        return self

    @abstractmethod
    def count(self) -> int:
        """How many documents the published build holds (0 when nothing is published)."""

    @abstractmethod
    def adopt(self, source: "SearchBackend") -> BuildInfo:
        """Publish the build ``source`` publishes as this index's build, in one atomic step; returns its info.

        ``source`` is another index on the same engine and server (a model's shadow index,
        :func:`resources.index.model_backend`). Nothing is re-encoded or re-loaded and
        ``source`` keeps its build: what a model promotion and a rollback do (issue #27). The
        build published until now stays kept as the previous one, as after :meth:`build`.
        """

    @abstractmethod
    def drop_all(self) -> list[str]:
        """Remove every build of this index that no other index publishes, and the index itself; returns the builds removed.

        What unregistering a model does to its shadow index; the search index is never dropped.
        """

    def size_bytes(self) -> int | None:
        """Bytes the published build takes on disk; ``None`` where the engine does not say."""
        return None
