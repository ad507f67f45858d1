"""The HTTP JSON API over the query service, for other applications (a CMS, a mobile app, a notebook).

Endpoints (OpenAPI at ``/openapi.json``, browsable at ``/docs``): ``GET /search`` (words,
every mode and filter the CLI has), ``POST /search/image`` (an uploaded image),
``GET /photos/{photo_id}/similar`` (more like an indexed photo), ``GET /photos/{photo_id}``
(its record), ``POST /search/composed`` (words, uploaded images and indexed photos added
and subtracted with weights), ``GET /health`` and ``GET /info``. Results carry the fields of
``image-search query --json``. Every search runs :class:`search_app.service.SearchService`,
the one the page and the CLI use; like them this module imports no Dagster.

Errors are ``application/problem+json`` (RFC 9457) whose ``detail`` is the one-line
message the CLI prints: 400 for a bad input, 404 for a photo that is not indexed, 413 for
an upload over the cap, 422 for a request the schema refuses, 503 when nothing is published,
the backend cannot answer or a search ran past ``IMAGE_SEARCH_API_REQUEST_TIMEOUT``.
Everything a caller controls is bounded, no path or URL a caller sends is ever opened, and
:func:`serve` refuses to listen beyond loopback without ``IMAGE_SEARCH_API_KEY``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
from http import HTTPStatus
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any, Callable, Literal

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from resources.backends.base import MAX_K, ORIENTATIONS, Filters, Mode
from resources.config import Settings, env_variable
from resources.errors import ImageSearchError, NotFoundError, UnavailableError
from search_app.compose import Term, parse_expression
from search_app.service import MAX_PARTS, MAX_QUERY_IMAGE_BYTES, QueryPart, SearchResult, SearchService

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
DEFAULT_K = 10
#: Longest query text accepted, in characters (the text model reads far fewer tokens anyway).
MAX_QUERY_CHARS = 1000
#: Longest value of one filter (a colour, a country) and of a photo id.
MAX_FILTER_CHARS = 100
MAX_PHOTO_ID_CHARS = 200
#: A request body may exceed the image cap by this much for the multipart framing and fields.
_FORM_OVERHEAD_BYTES = 64 * 1024
MIN_API_KEY_CHARS = 16
PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """An error (RFC 9457): ``detail`` is the one-line message the CLI would print."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class Result(BaseModel):
    """One photo found: the fields of ``image-search query --json``."""

    photo_id: str
    score: float
    cosine: float | None
    describe: str | None
    image_url: str | None
    local_path: str | None
    photo_url: str | None
    photographer_name: str | None
    photographer_username: str | None
    photographer_url: str | None
    photo_description: str | None
    ai_description: str | None
    orientation: str | None
    colors: list[str]
    country: str | None
    submitted_at: str | None


class SearchResponse(BaseModel):
    """The shape of ``image-search query --json``: what was asked, the mode, the filters, the results."""

    query: dict[str, Any]
    mode: str
    filters: dict[str, str]
    results: list[Result]
    model: dict[str, Any] = {}


class Build(BaseModel):
    """The published build: its models, vector size, document count, when and under which name."""

    image_model: str
    text_model: str
    dim: int
    count: int
    built_at: str
    name: str


class Info(BaseModel):
    """What serves the API: the backend, the published build, the limits and the query batching."""

    backend: str
    build: Build
    limits: dict[str, int]
    batching: dict[str, Any]


class Part(BaseModel):
    """One part of a composed query: exactly one of ``text``, ``photo_id`` or ``image`` (an upload's number, from 0)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    photo_id: str | None = Field(None, max_length=MAX_PHOTO_ID_CHARS)
    image: int | None = Field(None, ge=0, lt=MAX_PARTS)
    weight: float = Field(1.0, ge=-1e6, le=1e6, allow_inf_nan=False, description="negative weights subtract")


_PARTS = TypeAdapter(list[Part])


def _composition(parts: str | None, expr: str | None, uploads: list[bytes]) -> tuple[list[QueryPart], list[dict]]:
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


class Health(BaseModel):
    """The service answers: an index is published, holding ``documents`` photos."""

    status: Literal["ok"]
    documents: int


_ERRORS: dict[int, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM: {}}, "description": description}
    for status, description in (
        (400, "a bad input, explained in one line"),
        (401, "the API key is missing or wrong"),
        (404, "the photo is not in the index"),
        (413, "the upload is larger than the cap"),
        (422, "the request does not match the schema"),
        (503, "no index is published, the backend cannot answer, or the search timed out"),
    )
}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _status_of(exc: ImageSearchError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UnavailableError):
        return 503
    return 400


def _validation_detail(exc: RequestValidationError) -> str:
    """The first schema error as one line naming the parameter, like the CLI's messages."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "the request"
    return f"{where}: {error.get('msg', 'invalid')}"


class _BodyLimit:
    """Refuses request bodies over ``max_bytes`` (413), by Content-Length or while they stream in."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes // (1024 * 1024)} MB: send a smaller image"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _problem(413, self._message(), {"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse, in one line, to listen beyond loopback without an API key, or with a short one."""
    variable = env_variable("api_key")
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not is_loopback(host) and not key:
        raise ImageSearchError(
            f"refusing to serve the API on {host} without a key: set {variable} (callers send it as "
            f"{API_KEY_HEADER}), or listen on 127.0.0.1"
        )
    if key and len(key) < MIN_API_KEY_CHARS:
        raise ImageSearchError(
            f"{variable} is shorter than {MIN_API_KEY_CHARS} characters: use a long random one, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )


def _filters(
    orientation: Orientation = None, color: Color = None, country: Country = None, since: Since = None, until: Until = None,
) -> Filters:
    return _checked_filters(orientation, color, country, since, until)


def _form_filters(
    orientation: FormOrientation = None, color: FormColor = None, country: FormCountry = None,
    since: FormSince = None, until: FormUntil = None,
) -> Filters:
    return _checked_filters(orientation, color, country, since, until)


def _checked_filters(orientation, color, country, since, until) -> Filters:
    filters = Filters(
        orientation=orientation, color=(color or "").strip() or None, country=(country or "").strip() or None,
        since=since, until=until,
    )
    if filters.since and filters.until and filters.since > filters.until:
        raise ImageSearchError(f"since {filters.since} is after until {filters.until}: swap them")
    return filters


def _shown(filters: Filters) -> dict[str, str]:
    """The filters as ``image-search query --json`` shows them: only those set, dates as ISO days."""
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in vars(filters).items() if v}


def _response(
    query: dict[str, Any], mode: str, filters: Filters, results: list[SearchResult], model: dict[str, Any]
) -> dict[str, Any]:
    shown = [r.to_dict() for r in results]
    return {"query": query, "mode": mode, "filters": _shown(filters), "results": shown, "model": model}


def _option_types(param: Callable[..., Any]) -> tuple:
    """The options every search takes, as ``param`` (``Query`` for GET, ``Form`` for a multipart POST) fields."""
    return (
        Annotated[int, param(ge=1, le=MAX_K, description=f"how many results (1-{MAX_K})")],
        Annotated[float | None, param(
            ge=-1e6, le=1e6, description="drop results below this cosine (BM25 score in keyword mode)")],
        Annotated[bool, param(description="only the best photo of each near-duplicate group")],
        Annotated[Literal[ORIENTATIONS] | None, param(description="landscape, portrait or square")],  # type: ignore[valid-type]
        Annotated[str | None, param(max_length=MAX_FILTER_CHARS, description="a colour keyword, e.g. red")],
        Annotated[str | None, param(max_length=MAX_FILTER_CHARS, description="the photo's country, any case")],
        Annotated[dt.date | None, param(description="submitted on or after this day (YYYY-MM-DD)")],
        Annotated[dt.date | None, param(description="submitted on or before this day (YYYY-MM-DD)")],
    )


K, MinScore, HideDuplicates, Orientation, Color, Country, Since, Until = _option_types(Query)
FormK, FormMinScore, FormHideDuplicates, FormOrientation, FormColor, FormCountry, FormSince, FormUntil = _option_types(Form)
_KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when the server has a key")
ApiKey = Annotated[str | None, Security(_KEY_HEADER)]
PhotoId = Annotated[str, PathParam(min_length=1, max_length=MAX_PHOTO_ID_CHARS, description="an indexed photo's id")]


def create_app(service: SearchService, settings: Settings, *, warm_up: bool = True) -> FastAPI:
    """The API over ``service``; ``warm_up`` loads the models at start-up, so no caller waits for them."""
    expected_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
    timeout = settings.api_request_timeout

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if warm_up:
            await anyio.to_thread.run_sync(_warm, service)
        yield

    app = FastAPI(
        title="image-search",
        summary="Multilingual CLIP photo search: by words, by an image, or like an indexed photo.",
        version="1",
        lifespan=lifespan,
        responses={401: _ERRORS[401], 422: _ERRORS[422], 503: _ERRORS[503]},
    )
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.api_cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    app.add_middleware(_BodyLimit, max_bytes=MAX_QUERY_IMAGE_BYTES + _FORM_OVERHEAD_BYTES)

    @app.exception_handler(ImageSearchError)
    async def _search_error(_request: Request, exc: ImageSearchError) -> JSONResponse:
        return _problem(_status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def require_key(key: ApiKey = None) -> None:
        if expected_key is None:
            return
        if key is None or not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), expected_key):
            raise HTTPException(
                401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": "ApiKey"},
            )

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn`` on a worker thread, given up (503) after the request timeout; the thread finishes on its own."""
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), abandon_on_cancel=True)
        except TimeoutError:
            raise UnavailableError(
                f"the search took longer than {timeout:g} s ({env_variable('api_request_timeout')}): "
                "retry later or ask for fewer results"
            ) from None

    guarded = [Depends(require_key)]

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """200 while an index is published and answers; 503 (a problem) otherwise."""
        info = await run(service.build_info)
        return {"status": "ok", "documents": info.count}

    @app.get("/info", response_model=Info, dependencies=guarded, tags=["service"])
    async def info() -> dict[str, Any]:
        """The backend, the published build (models, build id, document count), the limits, the batching."""
        build = await run(service.build_info)
        return {
            "backend": service.backend.engine,
            "build": asdict(build),
            "limits": {
                "max_k": MAX_K, "max_query_chars": MAX_QUERY_CHARS, "max_filter_chars": MAX_FILTER_CHARS,
                "max_upload_bytes": MAX_QUERY_IMAGE_BYTES,
            },
            "batching": await run(_batching, service),
        }

    @app.get("/search", response_model=SearchResponse, dependencies=guarded, responses={400: _ERRORS[400]}, tags=["search"])
    async def search_text(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="words in any language")],
        filters: Annotated[Filters, Depends(_filters)],
        k: K = DEFAULT_K,
        min_score: MinScore = None,
        mode: Annotated[Mode, Query(description="how the words match")] = "vector",
        hide_duplicates: HideDuplicates = True,
    ) -> dict[str, Any]:
        """Photos matching words in any language: by image vector, by keywords (BM25), or both fused."""
        results = await run(
            service.search_text, q, k=k, min_score=min_score, mode=mode, filters=filters, collapse_duplicates=hide_duplicates
        )
        return _response({"text": q}, mode, filters, results, await run(service.answered_by))

    @app.post(
        "/search/image", response_model=SearchResponse, dependencies=guarded,
        responses={400: _ERRORS[400], 413: _ERRORS[413]}, tags=["search"],
    )
    async def search_image(
        image: Annotated[UploadFile, File(description="a JPEG, PNG or WebP image; its name and type are not trusted")],
        filters: Annotated[Filters, Depends(_form_filters)],
        k: FormK = DEFAULT_K,
        min_score: FormMinScore = None,
        hide_duplicates: FormHideDuplicates = True,
    ) -> dict[str, Any]:
        """Photos that look like an uploaded image (multipart form; the image is checked, never trusted)."""
        data = await image.read()
        results = await run(
            service.search_image, data, k=k, min_score=min_score, filters=filters, collapse_duplicates=hide_duplicates
        )
        return _response({"image_bytes": len(data)}, "image", filters, results, await run(service.answered_by))

    @app.post(
        "/search/composed", response_model=SearchResponse, dependencies=guarded,
        responses={400: _ERRORS[400], 404: _ERRORS[404], 413: _ERRORS[413]}, tags=["search"],
    )
    async def search_composed(
        filters: Annotated[Filters, Depends(_form_filters)],
        parts: Annotated[str | None, Form(
            max_length=64 * 1024,
            description='the parts as JSON, e.g. [{"photo_id": "abc"}, {"text": "at night"}, '
            '{"text": "people", "weight": -1}, {"image": 0}]; an image part is an upload\'s number from 0',
        )] = None,
        expr: Annotated[str | None, Form(
            max_length=MAX_QUERY_CHARS,
            description='or the CLI\'s syntax, e.g. "beach" - people + 0.5*photo:abc + image:0 (image:N is an upload)',
        )] = None,
        images: Annotated[list[UploadFile], File(description="the images the parts name, numbered from 0")] = [],
        k: FormK = DEFAULT_K,
        min_score: FormMinScore = None,
        mode: Annotated[Mode, Form(description="how the words match")] = "vector",
        hide_duplicates: FormHideDuplicates = True,
    ) -> dict[str, Any]:
        """Like these words, images and photos, unlike those: the normalised weighted sum of the parts' vectors.

        In keyword and hybrid modes the words take part as keywords too (negative words keep
        their photos out of the keyword list). A multipart form, so image parts can be uploads.
        """
        if len(images) > MAX_PARTS:
            raise ImageSearchError(f"{len(images)} images were uploaded: use at most {MAX_PARTS}")
        uploads = [await image.read() for image in images]
        query_parts, echo = _composition(parts, expr, uploads)
        results = await run(
            service.search_composed, query_parts, k=k, min_score=min_score, mode=mode, filters=filters,
            collapse_duplicates=hide_duplicates,
        )
        return _response({"parts": echo}, mode, filters, results, await run(service.answered_by))

    @app.get(
        "/photos/{photo_id}/similar", response_model=SearchResponse, dependencies=guarded,
        responses={400: _ERRORS[400], 404: _ERRORS[404]}, tags=["search"],
    )
    async def more_like_this(
        photo_id: PhotoId,
        filters: Annotated[Filters, Depends(_filters)],
        k: K = DEFAULT_K,
        min_score: MinScore = None,
        hide_duplicates: HideDuplicates = True,
    ) -> dict[str, Any]:
        """Photos nearest to an indexed photo (the photo itself first)."""
        results = await run(
            service.more_like_this, photo_id, k=k, min_score=min_score, filters=filters, collapse_duplicates=hide_duplicates
        )
        return _response({"like": photo_id}, "like", filters, results, await run(service.answered_by))

    @app.get("/photos/{photo_id}", response_model=Result, dependencies=guarded, responses={404: _ERRORS[404]}, tags=["photos"])
    async def photo(photo_id: PhotoId) -> dict[str, Any]:
        """An indexed photo's record, as a result scored by its similarity to itself (1.0)."""
        return (await run(service.photo, photo_id)).to_dict()

    return app


def _warm(service: SearchService) -> None:
    """Load both models and encode once with each, so no first caller waits; nothing published is only logged."""
    from PIL import Image

    try:
        service.encode_text("warm up")
        service.encoder().encode_image(Image.new("RGB", (64, 64)))
    except ImageSearchError as exc:
        log.warning("the API starts without warm models: %s", exc)


def _batching(service: SearchService) -> dict[str, Any]:
    encoder = service.encoder()
    text, image = getattr(encoder, "text_batcher", None), getattr(encoder, "image_batcher", None)
    if text is None or image is None:
        return {"enabled": False}
    return {
        "enabled": True, "max_batch": text.max_batch, "window_ms": text.window_s * 1000,
        "text": text.stats(), "image": image.stats(),
    }


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8502, *, access_log: bool = True) -> None:
    """Serve the API with uvicorn until interrupted; refuses beyond loopback without an API key."""
    import uvicorn

    check_exposure(settings, host)
    app = create_app(SearchService.from_settings(settings), settings)
    uvicorn.run(
        app, host=host, port=port, access_log=access_log, server_header=False, proxy_headers=False,
        timeout_keep_alive=5, limit_concurrency=512, log_level="info",
    )
