"""What the HTTP API reads and answers: its parameters, its bodies and its problem responses.

The response models are the query service's own types (:class:`BuildInfo`) or derived from
them (:data:`Result` is :class:`SearchResult` less the server's file path), so a field added
to the service reaches the API without a second copy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from http import HTTPStatus
from typing import Annotated, Any, Callable, Literal

from fastapi import Form, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from resources.errors import ImageSearchError
from resources.index.base import MAX_K, ORIENTATIONS, BuildInfo, Filters
from search_app.compose import Term, parse_expression
from search_app.parts import MAX_PARTS, PHOTO_ID, QueryPart
from search_app.results import SearchResult

PROBLEM = "application/problem+json"
API_KEY_HEADER = "X-API-Key"
DEFAULT_K = 10
#: Longest query text accepted, in characters (the text model reads far fewer tokens anyway).
MAX_QUERY_CHARS = 1000
#: Longest value of one filter (a colour, a country) and of a photo id.
MAX_FILTER_CHARS = 100
MAX_PHOTO_ID_CHARS = 200
#: A photo id as the API accepts it: the catalog's shape (:data:`search_app.parts.PHOTO_ID`).
PHOTO_ID_PATTERN = f"^{PHOTO_ID.pattern}$"
#: Result fields the API leaves out: where the server keeps its files is none of a caller's business.
PRIVATE_FIELDS = ("local_path",)


class Problem(BaseModel):
    """An error (RFC 9457): ``detail`` is the one-line message the CLI would print."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem response (also a plain ASGI app, which the middleware answers with)."""
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _public_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], ...) for f in dataclasses.fields(cls) if f.name not in PRIVATE_FIELDS}


#: One photo found: the fields of ``image-search query --json`` but the server's file path.
Result = create_model(
    "Result",
    __doc__="One photo found: a search result of the query service.",
    __config__=ConfigDict(from_attributes=True),
    **_public_fields(SearchResult),
)


class SearchResponse(BaseModel):
    """The shape of ``image-search query --json``: what was asked, the mode, the filters, the results."""

    query: dict[str, Any]
    mode: str
    filters: dict[str, str]
    results: list[Result]  # type: ignore[valid-type]
    #: Which model answered (issue #27): registered name, model ids, vector size, build.
    model: dict[str, Any]


class Info(BaseModel):
    """What serves the API: the backend, the published build, the limits and the query batching."""

    backend: str
    build: BuildInfo
    limits: dict[str, int]
    batching: dict[str, Any]


class Health(BaseModel):
    """The service is up: an index is published and answers. Nothing more is said, to anyone."""

    status: Literal["ok"]


class Part(BaseModel):
    """One part of a composed query: exactly one of ``text``, ``photo_id`` or ``image`` (an upload's number, from 0)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    photo_id: str | None = Field(None, max_length=MAX_PHOTO_ID_CHARS, pattern=PHOTO_ID_PATTERN)
    image: int | None = Field(None, ge=0, lt=MAX_PARTS)
    weight: float = Field(1.0, ge=-1e6, le=1e6, allow_inf_nan=False, description="negative weights subtract")


_PARTS = TypeAdapter(list[Part])

ERRORS: dict[int, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM: {}}, "description": description}
    for status, description in (
        (400, "a bad input, explained in one line"),
        (401, "the API key is missing or wrong"),
        (403, "refused from its headers: a host, origin or proxy the API does not answer without a key"),
        (404, "the photo is not in the index (or no photo id has that shape)"),
        (413, "the upload is larger than the cap, or its image declares more pixels than the cap"),
        (415, "the upload is an image format other than JPEG, PNG or WebP"),
        (408, "the request body paused for longer than the server waits"),
        (422, "the request does not match the schema"),
        (431, "the request's headers are larger than 16 KB"),
        (500, "an unexpected error; the detail names a request id the server's log also names"),
        (502, "the search backend failed (a damaged index, a cluster refusing the service)"),
        (503, "no index is published, the backend cannot answer, the server is busy or the search timed out"),
    )
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented problem responses ``statuses`` of a route."""
    return {status: ERRORS[status] for status in statuses}


def composition(parts: str | None, expr: str | None, uploads: list[bytes]) -> tuple[list[QueryPart], list[dict]]:
    """The service's parts and their JSON echo, from ``parts`` (JSON) or ``expr`` (the CLI's syntax).

    An image part names an upload by its number; no path or URL in either form is opened.
    """
    if (parts is None) == (expr is None):
        raise ImageSearchError("give the composed query as parts (JSON) or as expr (an expression), one of the two")
    try:
        if parts is not None:
            given = _PARTS.validate_json(parts)
        else:
            given = _PARTS.validate_python([_expression_part(term) for term in parse_expression(expr)])
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        name = "parts" if parts is not None else "expr"
        raise ImageSearchError(f"{name}[{where}]: {error['msg']}" if where else f"{name}: {error['msg']}") from None
    if len(given) > MAX_PARTS:
        raise ImageSearchError(f"the composed query has {len(given)} parts: use at most {MAX_PARTS}")
    query_parts, echo = [], []
    for number, part in enumerate(given, start=1):
        if part.image is not None and part.image >= len(uploads):
            raise ImageSearchError(f"part {number} names image {part.image} but {len(uploads)} images were uploaded")
        image = None if part.image is None else uploads[part.image]
        query_parts.append(QueryPart(text=part.text, photo_id=part.photo_id, image=image, weight=part.weight))
        echo.append(part.model_dump(exclude_none=True))
    return query_parts, echo


def _expression_part(term: Term) -> dict[str, Any]:
    """A parsed term as a part; ``image:N`` names the N-th upload, any other image term is refused."""
    if term.kind != "image":
        return term.as_dict()
    if term.value.isdigit() and int(term.value) < MAX_PARTS:
        return {"image": int(term.value), "weight": term.weight}
    raise ImageSearchError(
        f"{term.written.strip()!r}: the API opens no files; upload the image and write image:N, "
        "N its number among the uploads from 0"
    )


def _option_types(param: Callable[..., Any]) -> tuple:
    """The options every search takes, as ``param`` (``Query`` for GET, ``Form`` for a multipart POST) fields."""
    return (
        Annotated[int, param(ge=1, le=MAX_K, description=f"how many results (1-{MAX_K})")],
        Annotated[
            float | None,
            param(ge=-1e6, le=1e6, description="drop results below this cosine (BM25 score in keyword mode)"),
        ],
        Annotated[bool, param(description="only the best photo of each near-duplicate group")],
        Annotated[Literal[ORIENTATIONS] | None, param(description="landscape, portrait or square")],  # type: ignore[valid-type]
        Annotated[str | None, param(max_length=MAX_FILTER_CHARS, description="a colour keyword, e.g. red")],
        Annotated[str | None, param(max_length=MAX_FILTER_CHARS, description="the photo's country, any case")],
        Annotated[dt.date | None, param(description="submitted on or after this day (YYYY-MM-DD)")],
        Annotated[dt.date | None, param(description="submitted on or before this day (YYYY-MM-DD)")],
    )


K, MinScore, HideDuplicates, Orientation, Color, Country, Since, Until = _option_types(Query)
FormK, FormMinScore, FormHideDuplicates, FormOrientation, FormColor, FormCountry, FormSince, FormUntil = _option_types(
    Form
)
PhotoId = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=MAX_PHOTO_ID_CHARS,
        pattern=PHOTO_ID_PATTERN,
        description="an indexed photo's id (letters, digits, _ and -)",
    ),
]


def query_filters(
    orientation: Orientation = None,
    color: Color = None,
    country: Country = None,
    since: Since = None,
    until: Until = None,
) -> Filters:
    """The filters of a GET search."""
    return _checked_filters(orientation, color, country, since, until)


def form_filters(
    orientation: FormOrientation = None,
    color: FormColor = None,
    country: FormCountry = None,
    since: FormSince = None,
    until: FormUntil = None,
) -> Filters:
    """The filters of a multipart POST search."""
    return _checked_filters(orientation, color, country, since, until)


def _checked_filters(orientation, color, country, since, until) -> Filters:
    filters = Filters(
        orientation=orientation,
        color=(color or "").strip() or None,
        country=(country or "").strip() or None,
        since=since,
        until=until,
    )
    if filters.since and filters.until and filters.since > filters.until:
        raise ImageSearchError(f"since {filters.since} is after until {filters.until}: swap them")
    return filters


def search_response(
    query: dict[str, Any], mode: str, filters: Filters, results: list[SearchResult], model: dict[str, Any]
) -> SearchResponse:
    """The answer to a search: the filters as ``image-search query --json`` shows them (only those set, ISO days)."""
    shown = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in vars(filters).items() if v}
    results = [Result.model_validate(r) for r in results]
    return SearchResponse(query=query, mode=mode, filters=shown, results=results, model=model)
