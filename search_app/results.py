"""What a search returns: one result per photo, made from an index hit, and how result lists combine.

:class:`SearchResult` is what the page, the CLI, the saved searches and the HTTP API show;
:func:`rrf_fuse` fuses a kNN and a keyword list (hybrid mode); :func:`one_per_group` keeps
one photo per near-duplicate group. Nothing here loads a model or reads an index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resources.config import Settings
from resources.images.downloader import with_imgix_params
from resources.images.image_store import ImageStore
from resources.index.base import Hit

#: The rank offset of reciprocal rank fusion: 60, the value of Cormack, Clarke and Buettcher (2009).
RRF_K = 60


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


def result_of(hit: Hit, cosine: float | None, settings: Settings, store: ImageStore) -> SearchResult:
    """The result ``hit`` makes: its stored fields, the image URL with the configured imgix parameters, the local copy."""
    f = hit.fields
    username = f.get("photographer_username")
    image_url = f.get("photo_image_url")
    return SearchResult(
        photo_id=hit.photo_id,
        score=float(hit.score),
        cosine=cosine,
        describe=f.get("describe"),
        image_url=with_imgix_params(image_url, settings.imgix_params) if image_url else None,
        local_path=store.local_path(hit.photo_id),
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
