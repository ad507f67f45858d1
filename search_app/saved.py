"""Saved searches on the query side: save a search after running it, run it again, mark and show its results.

The page, the CLI, the HTTP API and the pipeline's ``saved_search_results`` asset all go
through these functions, over :class:`search_app.service.SearchService` and
:class:`resources.saved.store.SavedStore`; like the rest of ``search_app`` no Dagster here.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

from resources.errors import ImageSearchError
from resources.index.base import Filters
from resources.saved.refresh import dropped_good, new_matches, next_results, unseen
from resources.saved.store import SavedSearch, SavedStore
from search_app.parts import check_photo_id
from search_app.results import SearchResult
from search_app.service import QueryPart, SearchService, load_query_image

FILTER_NAMES = ("orientation", "color", "country", "since", "until")


def filters_of(search: SavedSearch) -> Filters:
    """The search's filters as the service takes them."""
    given = {name: search.filters.get(name) or None for name in FILTER_NAMES}
    for name in ("since", "until"):
        if given[name]:
            given[name] = dt.date.fromisoformat(given[name])
    return Filters(**given)


def filters_dict(filters: Filters) -> dict[str, str]:
    """``filters`` as a saved search keeps them: only those set, dates as ISO days."""
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in vars(filters).items() if v}


def _parts(search: SavedSearch, store: SavedStore, images: list[bytes] | None) -> list[QueryPart]:
    parts = []
    for part in search.query["parts"]:
        image = part.get("image")
        data = None if image is None else (images[image] if images is not None else store.image(search.name, image))
        parts.append(
            QueryPart(text=part.get("text"), photo_id=part.get("photo_id"), image=data, weight=part.get("weight", 1.0))
        )
    return parts


def run(
    service: SearchService, store: SavedStore, search: SavedSearch, images: list[bytes] | None = None
) -> list[SearchResult]:
    """The search's results on the published index; ``images`` stand in for its stored images before it is saved."""
    options = {
        "k": search.k,
        "min_score": search.min_score,
        "filters": filters_of(search),
        "collapse_duplicates": search.hide_duplicates,
    }
    kind, value = search.kind, search.query[search.kind]
    if kind == "text":
        return service.search_text(value, mode=search.mode, **options)
    if kind == "like":
        return service.more_like_this(value, **options)
    if kind == "image":
        return service.search_image(images[value] if images is not None else store.image(search.name, value), **options)
    return service.search_composed(_parts(search, store, images), mode=search.mode, **options)


def entry(result: SearchResult) -> dict[str, Any]:
    """What a results record keeps of a result: its id, score and links."""
    return {
        "photo_id": result.photo_id,
        "score": round(float(result.score), 6),
        "photo_url": result.photo_url,
        "image_url": result.image_url,
    }


def as_jpeg(data: bytes) -> bytes:
    """An uploaded image checked (never trusted) and kept as a JPEG."""
    out = io.BytesIO()
    load_query_image(data).save(out, format="JPEG", quality=90)
    return out.getvalue()


def save(service: SearchService, store: SavedStore, search: SavedSearch, images: list[bytes] = ()) -> SavedSearch:
    """Run ``search`` (a bad one fails here, before anything is written) and save it with its results as the baseline."""
    store.check_free(search.name)
    images = [as_jpeg(data) for data in images]
    results = run(service, store, search, images)
    baseline = next_results(None, service.build_info().name, [entry(r) for r in results])
    return store.add(search, images, baseline)


def refresh(service: SearchService, store: SavedStore, name: str) -> dict[str, Any]:
    """Run ``name`` on the published build and record its results; returns the record (see :mod:`resources.saved.refresh`)."""
    search = store.get(name)
    build = service.build_info().name
    top = [entry(r) for r in run(service, store, search)]

    def record(previous: dict | None) -> dict[str, Any]:
        if (
            store.get(name) != search
        ):  # read again under the search's lock: the old query's results are not the new one's
            raise ImageSearchError(
                f"saved search {name!r} was removed and saved again while it was refreshed: its next refresh covers it"
            )
        return next_results(previous, build, top)

    return store.update_results(name, record)


def mark(service: SearchService, store: SavedStore, name: str, photo_id: str, value: str | None) -> dict[str, str]:
    """Mark ``photo_id`` good or bad (``None``: unmark) for ``name``; the photo must be indexed."""
    check_photo_id(photo_id)
    store.get(name)
    if value is not None:
        service.photo(photo_id)
    return store.mark(name, photo_id, value)


def show(store: SavedStore, name: str) -> dict[str, Any]:
    """Everything about ``name``: the search, its latest top k, what is new since the previous build, its marks."""
    search = store.get(name)
    results = store.results(name)
    marks = store.marks(name)
    return {
        "name": name,
        "search": search.to_dict(),
        "build": (results or {}).get("build"),
        "refreshed_at": (results or {}).get("refreshed_at"),
        "top": (results or {}).get("top", []),
        "new": new_matches(results),
        "unseen": len(unseen(results, store.looked(name))),
        "marks": marks,
        "missing_good": dropped_good(results, marks),
    }


def overview(store: SavedStore) -> tuple[list[dict[str, Any]], list[str]]:
    """One line of facts per saved search (name, what it searches, new and unseen counts), and a line per damaged one."""
    searches, problems = store.searches()
    rows = []
    for search in searches:
        try:
            results = store.results(search.name)
            looked = store.looked(search.name)
        except ImageSearchError as exc:
            problems.append(str(exc))
            results, looked = None, set()
        rows.append(
            {
                "name": search.name,
                "search": search.label(),
                "k": search.k,
                "build": (results or {}).get("build"),
                "new": len(new_matches(results)),
                "unseen": len(unseen(results, looked)),
            }
        )
    return rows, problems
