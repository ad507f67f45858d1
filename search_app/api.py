"""The HTTP JSON API over the query service, for other applications (a CMS, a mobile app, a notebook).

Endpoints (OpenAPI at ``/openapi.json``, browsable at ``/docs``): ``GET /search`` (words,
every mode and filter the CLI has), ``POST /search/image`` (an uploaded image),
``GET /photos/{photo_id}/similar`` (more like an indexed photo), ``GET /photos/{photo_id}``
(its record), ``POST /search/composed`` (words, uploaded images and indexed photos added
and subtracted with weights), ``GET /health`` and ``GET /info``. Results carry the fields of
``image-search query --json`` but the server's file path. Every search runs
:class:`search_app.service.SearchService`, the one the page and the CLI use; like them this
module imports no Dagster.

The routes live on :data:`router`; :func:`create_app` puts them behind
:class:`search_app.api_security.Guard` (who is answered, decided from the headers) and maps
the service's errors to ``application/problem+json`` (RFC 9457) whose ``detail`` is the
one-line message the CLI prints: 400 a bad input, 404 an unknown photo, 413 too large, 415
not JPEG, PNG or WebP, 422 refused by the schema, 500 unexpected (with a request id), 502 the
backend failed, 503 nothing published, the backend cannot answer, the server is busy or a
search ran past ``IMAGE_SEARCH_API_REQUEST_TIMEOUT``. Security: docs/api.md.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, Callable

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from resources.config import Settings, env_variable
from resources.errors import (
    ImageSearchError,
    NotFoundError,
    ServerSideError,
    TooLargeError,
    UnavailableError,
    UnsupportedTypeError,
)
from resources.index.base import MAX_K, Filters, Mode
from search_app import saved_api
from search_app.api_connections import server_options
from search_app.api_models import (
    API_KEY_HEADER,
    DEFAULT_K,
    MAX_FILTER_CHARS,
    MAX_QUERY_CHARS,
    PROBLEM,  # noqa: F401 - public here too
    FormHideDuplicates,
    FormK,
    FormMinScore,
    Health,
    HideDuplicates,
    Info,
    K,
    MinScore,
    PhotoId,
    Result,
    SearchResponse,
    composition,
    form_filters,
    problem,
    query_filters,
    responses,
    search_response,
)
from search_app.api_security import Guard, check_exposure, listed  # noqa: F401 - check_exposure is public here too
from search_app.service import MAX_PARTS, MAX_QUERY_IMAGE_BYTES, SearchService

log = logging.getLogger(__name__)

#: A request body may exceed the image cap by this much for the multipart framing and fields.
_FORM_OVERHEAD_BYTES = 64 * 1024
#: Seconds a caller refused for overload or a timeout is told to wait (``Retry-After``).
RETRY_AFTER_S = 1
#: An address in a message (a cluster's URL), which a caller is not told.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
#: The status of each kind of the service's errors; any other is the caller's mistake (400).
_STATUS = (
    (NotFoundError, 404),
    (TooLargeError, 413),
    (UnsupportedTypeError, 415),
    (ServerSideError, 502),
    (UnavailableError, 503),
)


class _Slot:
    """One search's claim on a slot, given back when its work has really stopped, or if it never starts."""

    def __init__(self, slots: threading.Semaphore, fn: Callable[[], Any]):
        self._slots, self._fn, self._lock, self._state = slots, fn, threading.Lock(), "queued"

    def __call__(self) -> Any:
        with self._lock:
            if self._state == "dropped":
                return None
            self._state = "running"
        try:
            return self._fn()
        finally:
            self._slots.release()

    def drop(self) -> None:
        """The caller gave up: a search not started yet never runs and gives its slot back now."""
        with self._lock:
            if self._state == "queued":
                self._state = "dropped"
                self._slots.release()


class Searches:
    """Runs service calls on worker threads: at most ``slots`` at once, each answered 503 after ``timeout_s``.

    A search that runs past the timeout keeps its slot until its thread finishes, so a
    caller who keeps timing out cannot pile work up behind the limit; when every slot is
    taken, a new search is answered 503 with ``Retry-After`` at once.
    """

    def __init__(self, slots: int, timeout_s: float):
        self._slots = threading.Semaphore(slots)
        self._limiter = anyio.CapacityLimiter(slots)
        self.timeout_s = timeout_s

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._slots.acquire(blocking=False):
            raise UnavailableError("the server is busy with other searches: retry in a moment")
        job = _Slot(self._slots, partial(fn, *args, **kwargs))
        try:
            with anyio.fail_after(self.timeout_s):
                return await anyio.to_thread.run_sync(job, abandon_on_cancel=True, limiter=self._limiter)
        except TimeoutError:
            raise UnavailableError(
                f"the search took longer than {self.timeout_s:g} s ({env_variable('api_request_timeout')}): "
                "retry later or ask for fewer results"
            ) from None
        finally:
            job.drop()


def _service(request: Request) -> SearchService:
    return request.app.state.service


def _searches(request: Request) -> Searches:
    return request.app.state.searches


Service = Annotated[SearchService, Depends(_service)]
Run = Annotated[Searches, Depends(_searches)]
_KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when the server has a key")
#: Documents the key in the schema; :class:`Guard` has checked it before any route runs.
_KEYED = [Security(_KEY_HEADER)]

router = APIRouter()


@router.get("/health", response_model=Health, tags=["service"], responses=responses(503))
async def health(request: Request, service: Service, searches: Run) -> Health:
    """200 ``{"status": "ok"}`` while an index is published and answers; a 503 problem saying only that it is down."""
    try:
        await searches.run(service.build_info)
    except ImageSearchError as exc:
        log.warning("request %s: /health is down: %s", request.state.request_id, exc)
        return problem(503, "the search service is down", {"Retry-After": str(RETRY_AFTER_S)})  # type: ignore[return-value]
    return Health(status="ok")


@router.get("/info", response_model=Info, dependencies=_KEYED, tags=["service"])
async def info(service: Service, searches: Run) -> Info:
    """The backend, the published build (models, build id, document count), the limits, the batching."""
    build = await searches.run(service.build_info)
    limits = {
        "max_k": MAX_K,
        "max_query_chars": MAX_QUERY_CHARS,
        "max_filter_chars": MAX_FILTER_CHARS,
        "max_upload_bytes": MAX_QUERY_IMAGE_BYTES,
    }
    return Info(
        backend=service.backend.engine, build=build, limits=limits, batching=await searches.run(_batching, service)
    )


@router.get("/search", response_model=SearchResponse, dependencies=_KEYED, responses=responses(400), tags=["search"])
async def search_text(
    service: Service,
    searches: Run,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="words in any language")],
    filters: Annotated[Filters, Depends(query_filters)],
    k: K = DEFAULT_K,
    min_score: MinScore = None,
    mode: Annotated[Mode, Query(description="how the words match")] = "vector",
    hide_duplicates: HideDuplicates = True,
) -> SearchResponse:
    """Photos matching words in any language: by image vector, by keywords (BM25), or both fused."""
    results, model = await searches.run(
        service.with_model,
        service.search_text,
        q,
        k=k,
        min_score=min_score,
        mode=mode,
        filters=filters,
        collapse_duplicates=hide_duplicates,
    )
    return search_response({"text": q}, mode, filters, results, model)


@router.post(
    "/search/image",
    response_model=SearchResponse,
    dependencies=_KEYED,
    responses=responses(400, 413, 415),
    tags=["search"],
)
async def search_image(
    service: Service,
    searches: Run,
    image: Annotated[UploadFile, File(description="a JPEG, PNG or WebP image; its name and type are not trusted")],
    filters: Annotated[Filters, Depends(form_filters)],
    k: FormK = DEFAULT_K,
    min_score: FormMinScore = None,
    hide_duplicates: FormHideDuplicates = True,
) -> SearchResponse:
    """Photos that look like an uploaded image (multipart form; the image is checked, never trusted)."""

    def search() -> tuple[int, tuple[list, dict]]:
        data = read_upload(image)
        return len(data), service.with_model(
            service.search_image, data, k=k, min_score=min_score, filters=filters, collapse_duplicates=hide_duplicates
        )

    size, (results, model) = await searches.run(search)
    return search_response({"image_bytes": size}, "image", filters, results, model)


def read_upload(upload: UploadFile) -> bytes:
    """An upload's bytes, read on a search's worker thread once it holds a slot.

    Starlette spools an upload past 1 MB to a temporary file while it parses the form, so
    uploads waiting for a slot cost disk, not memory; each is read into memory only by a
    search that may run (OWASP API4:2023, unrestricted resource consumption).
    """
    upload.file.seek(0)
    return upload.file.read()


@router.post(
    "/search/composed",
    response_model=SearchResponse,
    dependencies=_KEYED,
    responses=responses(400, 404, 413, 415),
    tags=["search"],
)
async def search_composed(
    service: Service,
    searches: Run,
    filters: Annotated[Filters, Depends(form_filters)],
    parts: Annotated[
        str | None,
        Form(
            max_length=64 * 1024,
            description='the parts as JSON, e.g. [{"photo_id": "abc"}, {"text": "at night"}, '
            '{"text": "people", "weight": -1}, {"image": 0}]; an image part is an upload\'s number from 0',
        ),
    ] = None,
    expr: Annotated[
        str | None,
        Form(
            max_length=MAX_QUERY_CHARS,
            description='or the CLI\'s syntax, e.g. "beach" - people + 0.5*photo:abc + image:0 (image:N is an upload)',
        ),
    ] = None,
    images: Annotated[list[UploadFile], File(description="the images the parts name, numbered from 0")] = [],
    k: FormK = DEFAULT_K,
    min_score: FormMinScore = None,
    mode: Annotated[Mode, Form(description="how the words match")] = "vector",
    hide_duplicates: FormHideDuplicates = True,
) -> SearchResponse:
    """Like these words, images and photos, unlike those: the normalised weighted sum of the parts' vectors.

    In keyword and hybrid modes the words take part as keywords too (negative words keep
    their photos out of the keyword list). A multipart form, so image parts can be uploads.
    """
    if len(images) > MAX_PARTS:
        raise ImageSearchError(f"{len(images)} images were uploaded: use at most {MAX_PARTS}")

    def search() -> tuple[list, tuple[list, dict]]:
        query_parts, echo = composition(parts, expr, [read_upload(image) for image in images])
        return echo, service.with_model(
            service.search_composed,
            query_parts,
            k=k,
            min_score=min_score,
            mode=mode,
            filters=filters,
            collapse_duplicates=hide_duplicates,
        )

    echo, (results, model) = await searches.run(search)
    return search_response({"parts": echo}, mode, filters, results, model)


@router.get(
    "/photos/{photo_id}/similar",
    response_model=SearchResponse,
    dependencies=_KEYED,
    responses=responses(400, 404),
    tags=["search"],
)
async def more_like_this(
    service: Service,
    searches: Run,
    photo_id: PhotoId,
    filters: Annotated[Filters, Depends(query_filters)],
    k: K = DEFAULT_K,
    min_score: MinScore = None,
    hide_duplicates: HideDuplicates = True,
) -> SearchResponse:
    """Photos nearest to an indexed photo (the photo itself first)."""
    results, model = await searches.run(
        service.with_model,
        service.more_like_this,
        photo_id,
        k=k,
        min_score=min_score,
        filters=filters,
        collapse_duplicates=hide_duplicates,
    )
    return search_response({"like": photo_id}, "like", filters, results, model)


@router.get("/photos/{photo_id}", response_model=Result, dependencies=_KEYED, responses=responses(404), tags=["photos"])
async def photo(service: Service, searches: Run, photo_id: PhotoId) -> Any:
    """An indexed photo's record, as a result scored by its similarity to itself (1.0)."""
    return Result.model_validate(await searches.run(service.photo, photo_id))


def status_of(exc: ImageSearchError) -> int:
    """The HTTP status of a service error: whose move it is (see :mod:`resources.errors`)."""
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 400)


async def _search_error(request: Request, exc: ImageSearchError) -> JSONResponse:
    """The error as a problem; a server-side one is logged in full and told to the caller without addresses."""
    status, detail = status_of(exc), str(exc)
    if status >= 500:
        request_id = request.state.request_id
        log.warning("request %s: %s", request_id, detail)
        detail = _URL.sub("the search backend", detail)
        if status == 502:
            detail = f"the search backend failed on the server's side; its log names this request {request_id}"
    return problem(status, detail, {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None)


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """The first schema error as one line naming the parameter, like the CLI's messages."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "the request"
    return problem(422, f"{where}: {error.get('msg', 'invalid')}")


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


def create_app(service: SearchService, settings: Settings, *, warm_up: bool = True) -> FastAPI:
    """The API over ``service``; ``warm_up`` loads the models at start-up, so no caller waits for them."""

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
        responses=responses(401, 403, 408, 422, 431, 500, 502, 503),
        exception_handlers={
            ImageSearchError: _search_error,
            RequestValidationError: _invalid,
            StarletteHTTPException: _http_error,
        },
    )
    app.state.service = service
    app.state.searches = Searches(settings.api_max_searches, settings.api_request_timeout)
    app.include_router(router)
    app.include_router(saved_api.router(service, settings), dependencies=_KEYED, responses=responses(400, 404))
    app.add_middleware(Guard, settings=settings, max_body=MAX_QUERY_IMAGE_BYTES + _FORM_OVERHEAD_BYTES)
    if settings.api_cors_origins:  # outside the guard, so a preflight (which carries no key) is answered
        app.add_middleware(
            CORSMiddleware,
            allow_origins=listed(settings.api_cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=["X-Request-ID"],
        )
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
        "enabled": True,
        "max_batch": text.max_batch,
        "window_ms": text.window_s * 1000,
        "text": text.stats(),
        "image": image.stats(),
    }


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8502, *, access_log: bool = True) -> None:
    """Serve the API with uvicorn until interrupted; refuses beyond loopback without an API key."""
    import uvicorn

    check_exposure(settings, host)
    app = create_app(SearchService.from_settings(settings), settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info",
        **server_options(settings.api_header_timeout),
    )
