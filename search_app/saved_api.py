"""The HTTP API's saved searches: create, list, read with new results, delete, and mark results.

``POST /saved`` runs a search and saves it under a name (its results become the baseline
the next build is compared with); ``GET /saved`` lists them with their new and unseen
counts; ``GET /saved/{name}`` gives the latest top k, what entered it with the latest build
(``new``), its marks and the good answers it lost; ``DELETE /saved/{name}`` removes it;
``PUT``/``DELETE /saved/{name}/marks/{photo_id}`` mark a result good or bad, or unmark it.
Included by :func:`search_app.api.create_app` under the API key like every search route;
errors are the API's one-line problems. No Dagster here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from resources.config import Settings
from resources.errors import ImageSearchError
from resources.index.base import MAX_K, ORIENTATIONS, Mode
from resources.saved.store import SavedSearch, SavedStore
from search_app import saved
from search_app.api_models import PhotoId
from search_app.service import MAX_PARTS, SearchService

Name = Annotated[str, PathParam(min_length=1, max_length=64, description="the saved search's name")]


class SavedPart(BaseModel):
    """One part of a composed query: exactly one of ``text``, ``photo_id`` or ``image`` (a number among ``images``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000)
    photo_id: str | None = Field(None, max_length=200)
    image: int | None = Field(None, ge=0, lt=MAX_PARTS)
    weight: float = Field(1.0, ge=-1e6, le=1e6, allow_inf_nan=False)


class SavedFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orientation: Literal[ORIENTATIONS] | None = None  # type: ignore[valid-type]
    color: str | None = Field(None, max_length=100)
    country: str | None = Field(None, max_length=100)
    since: dt.date | None = None
    until: dt.date | None = None


class NewSaved(BaseModel):
    """A search to save: exactly one of ``text``, ``like``, ``image`` (a number among ``images``) or ``parts``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    text: str | None = Field(None, max_length=1000)
    like: str | None = Field(None, max_length=200)
    image: int | None = Field(None, ge=0, lt=MAX_PARTS)
    parts: list[SavedPart] | None = Field(None, max_length=MAX_PARTS)
    images: list[str] = Field([], max_length=MAX_PARTS, description="base64 JPEG, PNG or WebP images the query names")
    mode: Mode = "vector"
    k: int = Field(10, ge=1, le=MAX_K)
    min_score: float | None = Field(None, ge=-1e6, le=1e6)
    hide_duplicates: bool = True
    filters: SavedFilters = SavedFilters()


class Mark(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mark: Literal["good", "bad"]


def _search(body: NewSaved) -> tuple[SavedSearch, list[bytes]]:
    given = {kind: value for kind in ("text", "like", "image", "parts") if (value := getattr(body, kind)) is not None}
    if len(given) != 1:
        raise ImageSearchError("give the search as exactly one of text, like, image or parts")
    if "parts" in given:
        given["parts"] = [part.model_dump(exclude_none=True) for part in body.parts]
    try:
        images = [base64.b64decode(image, validate=True) for image in body.images]
    except (binascii.Error, ValueError):
        raise ImageSearchError("images: each must be an image in base64") from None
    named = [given["image"]] if "image" in given else [p["image"] for p in given.get("parts", []) if "image" in p]
    if any(number >= len(images) for number in named):
        raise ImageSearchError(f"the query names an image beyond the {len(images)} given in images")
    filters = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in body.filters.model_dump().items() if v}
    search = SavedSearch(
        name=body.name,
        query=given,
        mode=body.mode,
        k=body.k,
        filters=filters,
        min_score=body.min_score,
        hide_duplicates=body.hide_duplicates,
    )
    return search, images


def router(service: SearchService, settings: Settings) -> APIRouter:
    """The saved-search routes over ``service`` and the saved searches under ``settings.home`` (blocking work runs on FastAPI's thread pool)."""
    store = SavedStore(settings.home)
    routes = APIRouter(prefix="/saved", tags=["saved searches"])

    @routes.post("", status_code=201)
    def create(body: NewSaved) -> dict[str, Any]:
        """Run a search and save it under ``name``; 400 for a name in use or with path characters."""
        search, images = _search(body)
        store.check_free(search.name)
        saved.save(service, store, search, images)
        return saved.show(store, search.name)

    @routes.get("")
    def listing() -> dict[str, Any]:
        """Every saved search with its counts of new (since the previous build) and unseen photos."""
        rows, problems = saved.overview(store)
        return {"searches": rows, "problems": problems}

    @routes.get("/{name}")
    def read(name: Name) -> dict[str, Any]:
        """The latest top k, the photos ``new`` since the previous build (``photo_id``, ``score``, links), the marks."""
        return saved.show(store, name)

    @routes.delete("/{name}", status_code=204)
    def delete(name: Name) -> Response:
        store.remove(name)
        return Response(status_code=204)

    @routes.put("/{name}/marks/{photo_id}")
    def mark(name: Name, photo_id: PhotoId, body: Mark) -> dict[str, Any]:
        """Mark an indexed photo a good or bad answer of the search (404 for a photo not indexed)."""
        return {"name": name, "marks": saved.mark(service, store, name, photo_id, body.mark)}

    @routes.delete("/{name}/marks/{photo_id}")
    def unmark(name: Name, photo_id: PhotoId) -> dict[str, Any]:
        return {"name": name, "marks": saved.mark(service, store, name, photo_id, None)}

    return routes
