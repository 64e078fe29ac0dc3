"""The FastAPI application of ``tbps serve``: its routes, the error contract and the guard in front of them
(the bodies' models are :mod:`tbps_runtime.serve.schemas`).

Every response is JSON (but crops, the page and metrics) and carries ``X-Request-ID``; an error is
``{"error": {"code", "message"}, "request_id"}`` with the HTTP status, a 500 says only "internal error"
(the traceback goes to the log under the request id). In front of the routes, :class:`RequestTag` gives
each request its id and counts it in the metrics, and :class:`RequestGuard` checks the API key before
reading anything, bounds the body (its Content-Length and the bytes actually read) and turns an
unexpected exception into that 500. The routes call the
:class:`~tbps_runtime.serve.service.Service` off the event loop: text queries through its batcher's
thread, everything else in the thread pool.

:func:`create_app` builds an application for a service; :func:`app_from_environment` is the factory each
uvicorn worker calls with ``--workers N`` (settings from ``TBPS_SERVE_*``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import re
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError, StoreError, TbpsError
from tbps_runtime.serve import SERVE_EXTRA_HINT, Limits, ServeSettings, settings_from_environment

try:
    from fastapi import FastAPI, Path as PathParam, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPBearer
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import MutableHeaders
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
except ImportError as e:  # pragma: no cover - the edge install without the extra
    raise ConfigError(f"tbps serve needs FastAPI ({e.name} is missing): {SERVE_EXTRA_HINT}") from None

import numpy as np

from tbps_runtime.paths import printable
from tbps_runtime.serve.galleries import Conflict, IngestCrop, NotFound
from tbps_runtime.serve.metrics import ServiceMetrics
from tbps_runtime.serve.schemas import (ERRORS, DeleteRequest, EmbedImageRequest, EmbedResponse, EmbedTextRequest,
                                        ErrorResponse, ExplainRequest, ExplainResponse, IngestCropBody, IngestRequest,
                                        IngestResponse, ReadyResponse, RemovalResponse, SearchRequest, SearchResponse)
from tbps_runtime.serve.security import is_public, key_matches, presented_key
from tbps_runtime.serve.service import Service, decode_image, parse_filters

logger = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).parent / "page"  # the operator page (index.html and its files), when installed
UPLOAD_PATHS = frozenset({"/embed/image", "/gallery/ingest"})  # bodies of base64 images: the larger limit
_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large",
                503: "unavailable"}
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The page may load only its own files; it talks to this API only; no framing, no referrer leaks.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                           "base-uri 'none'; form-action 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


# ---- errors ---------------------------------------------------------------------------------------------

def error_response(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"code", "message"}, "request_id"}``."""
    code = _ERROR_CODES.get(status, "internal" if status >= 500 else "bad_request")
    text = "internal error" if code == "internal" else printable(" ".join(str(message).split()))[:2000]
    return JSONResponse({"error": {"code": code, "message": text}, "request_id": request_id}, status_code=status,
                        headers=headers)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def _validation_message(error: RequestValidationError) -> str:
    """Pydantic's errors as ``field.path: what is wrong`` (never the values sent)."""
    parts = []
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            return "the body is not valid JSON" + (f" ({item['ctx']['error']})" if item.get("ctx") else "")
        location = [str(p) for p in item.get("loc", ())]
        if location and location[0] in ("body", "path", "query", "header"):
            location = location[1:]
        parts.append(f"{'.'.join(location) or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(error), _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        messages = {404: f"no such endpoint: {request.method} {request.url.path[:200]}",
                    405: f"{request.method} is not allowed on {request.url.path[:200]}"}
        message = messages.get(error.status_code, str(error.detail))
        return error_response(error.status_code, message, _request_id(request), getattr(error, "headers", None))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        return error_response(404, str(error), _request_id(request))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict) -> JSONResponse:
        return error_response(409, str(error), _request_id(request))

    @app.exception_handler(TbpsError)
    async def user_error(request: Request, error: TbpsError) -> JSONResponse:
        request_id = _request_id(request)
        if isinstance(error, BundleError):  # the server's own files, not the request: the log says what
            logger.error("request %s: %s", request_id, error)
            return error_response(500, "internal error", request_id)
        if isinstance(error, StoreError):  # the store's database, not the request: later may work
            logger.error("request %s: %s", request_id, error)
            return error_response(503, "the gallery's store is not answering: try again later", request_id,
                                  {"Retry-After": "5"})
        status = 404 if isinstance(error, InputFileNotFoundError) else 409 if isinstance(error, OutputError) else 400
        return error_response(status, str(error), request_id)


# ---- the guard in front of the routes --------------------------------------------------------------------

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class RequestTag:
    """Pure ASGI middleware, outermost: gives each request its id (``X-Request-ID`` on every response, CORS
    preflights included), the headers every response carries, and its count and latency in the metrics."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, routes: list[Any]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [500]

        async def send_tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        finally:
            self.metrics.observe_request(self._endpoint(scope), status[0], time.perf_counter() - started)

    def _endpoint(self, scope: dict) -> str:
        """The route's template (``/crops/{row}``): a label of bounded cardinality, never the raw path."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path_format", route.path)
        return "other"


class RequestGuard:
    """Pure ASGI middleware, inside CORS (its refusals carry the CORS headers): the API key (checked before
    the body is read), the body limits, and the last word on exceptions (a 500 in the error shape, the
    traceback in the log under the request id)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, limits: Limits):
        self.app, self.limits = app, limits
        self.expected = None if api_key is None else api_key.encode("ascii")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope["state"]["request_id"]
        started = [False]

        async def send_watched(message: dict) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            refusal = self._check_key(scope, request_id)
            if refusal is None:
                receive, refusal = await self._read_body(scope, receive, request_id)
            await (refusal or self.app)(scope, receive, send_watched)
        except Exception:
            logger.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            if not started[0]:
                await error_response(500, "internal error", request_id)(scope, receive, send_watched)

    def _check_key(self, scope: dict, request_id: str) -> JSONResponse | None:
        if self.expected is None or scope["method"] == "OPTIONS" or is_public(scope["path"]):
            return None
        if key_matches(presented_key(scope.get("headers", [])), self.expected):
            return None
        return error_response(401, "a valid API key is required: send 'Authorization: Bearer KEY' or "
                                   "'X-API-Key: KEY'", request_id, {"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: dict, receive: Callable, request_id: str) -> tuple[Callable, Any]:
        """The whole body, read up to the path's limit, and a ``receive`` that replays it; or a refusal."""
        limit = self.limits.max_upload_bytes if scope["path"] in UPLOAD_PATHS else self.limits.max_body_bytes
        too_large = error_response(413, f"the request body is larger than {_size(limit)}, the limit of "
                                        f"{printable(scope['path'])[:200]}", request_id)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return receive, error_response(400, "Content-Length is not a number", request_id)
            if int(length) > limit:
                return receive, too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return _replay([message], receive), None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:  # a body without Content-Length (chunked) is cut at the limit
                return receive, too_large
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), None


def _replay(messages: list[dict], receive: Callable) -> Callable:
    async def replayed() -> dict:
        return messages.pop(0) if messages else await receive()

    return replayed


def _incoming_request_id(scope: dict) -> str | None:
    """A client's (or proxy's) ``X-Request-ID``, if it is a plain token: it goes into log lines."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_REQUEST_ID.fullmatch(text) else None
    return None


def _new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"


# ---- the application ------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (when the service has a key)")
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")


def _documented_key(bearer: Any = Security(_bearer), key: Any = Security(_key_header)) -> None:
    """Declares the key in the OpenAPI description; the check itself is :class:`RequestGuard`'s."""


def create_app(settings: ServeSettings, service: Service | None = None, *, page_dir: Path | None = None) -> FastAPI:
    """The application for ``service`` (default: :meth:`Service.load` of ``settings``).

    The application warms the service up when it starts (``/readyz`` answers 503 until then) and stops
    its batcher when it stops. ``page_dir``: where the operator page's files are (default: the package's).
    """
    service = service or Service.load(settings)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warming = asyncio.get_running_loop().run_in_executor(None, service.warm_up)
        try:
            yield
        finally:
            await warming
            service.close()

    app = FastAPI(title="tbps serve", version=_version(), lifespan=lifespan, redoc_url=None,
                  description="Text-based person search over one gallery. Data endpoints want the API key when the "
                              "service has one; /healthz, /readyz, /metrics, the page and this description do not.")
    app.state.service = service
    _install_error_handlers(app)
    _add_routes(app, service)
    _add_page(app, page_dir or PAGE_DIR)
    # Added innermost first: RequestTag -> CORS (when configured) -> RequestGuard -> the routes.
    app.add_middleware(RequestGuard, api_key=settings.api_key, limits=settings.limits)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], expose_headers=["X-Request-ID"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"], max_age=600)
    app.add_middleware(RequestTag, metrics=metrics, routes=app.router.routes)
    return app


def _add_routes(app: FastAPI, service: Service) -> None:
    keyed = {"dependencies": [Security(_documented_key)], "responses": ERRORS}

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
    def readyz(request: Request) -> Any:
        """Readiness: the bundle and gallery are loaded and a warm-up query ran (503 before)."""
        if not service.ready:
            message = "warming up failed: see the service's log" if service.failure else "warming up"
            return error_response(503, message, _request_id(request))
        return service.readiness()

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (counts and timings only)."""
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)

    @app.post("/search", tags=["search"], response_model=SearchResponse, **keyed)
    async def search(body: SearchRequest, request: Request) -> JSONResponse:
        """Rank the gallery for one query or several (Eq. 14, exact; a store's filters applied first)."""
        started = time.perf_counter()
        if (body.query is None) == (body.queries is None):
            raise ConfigError("give either query (a string) or queries (a list of strings)")
        texts = service.check_texts([body.query] if body.query is not None else body.queries,
                                    "query" if body.query is not None else "queries")
        row_filter = None if body.filters is None else parse_filters(**body.filters.model_dump())
        spec = service.rank_spec(body.k, row_filter, body.per_track, body.min_score)
        ranked = await asyncio.wrap_future(service.submit_search(texts, spec))  # [(hits, rows searched)]
        return JSONResponse({"results": [hits for hits, _ in ranked],
                             "took_ms": round((time.perf_counter() - started) * 1e3, 3),
                             "search": service.describe(spec, ranked[0][1]), "request_id": _request_id(request)})

    @app.post("/embed/text", tags=["embed"], response_model=EmbedResponse, **keyed)
    async def embed_text(body: EmbedTextRequest) -> JSONResponse:
        """Captions -> (N, K, d) float32 embeddings, every slot L2-normalised."""
        texts = service.check_texts(body.texts, "texts")
        embeddings = await asyncio.wrap_future(service.submit_texts(texts))
        return await run_in_threadpool(_embeddings_response, embeddings, body.encoding)

    @app.post("/embed/image", tags=["embed"], response_model=EmbedResponse, **keyed)
    def embed_image(body: EmbedImageRequest) -> JSONResponse:
        """Crops (base64 JPEG/PNG) -> (N, K, d) float32 embeddings, every slot L2-normalised."""
        pixels = service.decode_images(body.images, "images")
        return _embeddings_response(service.embed_pixels(pixels), body.encoding)

    @app.post("/explain", tags=["search"], response_model=ExplainResponse,
              **{**keyed, "responses": {**ERRORS, 409: {"model": ErrorResponse,
                                                         "description": "the bundle has no explain graphs"}}})
    def explain(body: ExplainRequest) -> JSONResponse:
        """The attention behind a query's hits: its tokens' weights and a heat map over each row's crop."""
        return JSONResponse(service.explain(body.query, body.rows))

    @app.get("/crops/{row:int}", tags=["search"], response_class=Response,
             **{**keyed, "responses": {**ERRORS, 200: {"content": {"image/jpeg": {}}}}})
    def crop(row: int = PathParam(ge=0, le=2**63 - 1)) -> Response:
        """The JPEG of a gallery row's crop."""
        return Response(service.crop_jpeg(row), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})

    @app.post("/gallery/ingest", tags=["gallery"], response_model=IngestResponse, **keyed)
    def ingest(body: IngestRequest) -> IngestResponse:
        """Embed crops and append them to the store (their JPEGs kept in it); the new rows' ids."""
        service.require_store("ingesting")
        if not 1 <= len(body.crops) <= service.limits.max_images:
            raise ConfigError(f"crops: give 1 to {service.limits.max_images} crops, got {len(body.crops)}")
        crops = [_ingest_crop(item, i, service) for i, item in enumerate(body.crops)]
        return IngestResponse(rows=service.ingest(crops))

    @app.delete("/gallery/rows", tags=["gallery"], response_model=RemovalResponse, **keyed)
    def delete_rows(body: DeleteRequest) -> dict[str, Any]:
        """Remove a store's rows that pass the filters and are older than older_than (dry_run: count only)."""
        row_filter = None if body.filters is None else parse_filters(**body.filters.model_dump())
        return service.delete(row_filter, body.older_than, body.dry_run, body.everything)

    @app.get("/gallery/info", tags=["gallery"], **keyed)
    def gallery_info() -> dict[str, Any]:
        """A store's rows, tracks, cameras (rows and time span each) and size."""
        return service.info()


def _ingest_crop(item: IngestCropBody, index: int, service: Service) -> IngestCrop:
    from tbps_runtime.store.rows import RowFilter, parse_time

    RowFilter(cameras=(item.camera,), sources=(item.source,))  # the names a filter will have to match
    box = None
    if item.box is not None:
        if not all(np.isfinite(item.box)):
            raise ConfigError(f"crops[{index}].box must be 4 finite numbers (x0, y0, x1, y1)")
        box = tuple(float(v) for v in item.box)
    pixels = decode_image(item.image, f"crops[{index}].image", service.limits)
    when = None if item.time is None else parse_time(item.time, f"crops[{index}].time")
    return IngestCrop(pixels, item.camera, item.source, when, item.track, box)


def _embeddings_response(embeddings: np.ndarray, encoding: str) -> JSONResponse:
    """(N, K, d) float32 as JSON: nested lists, or base64 of its little-endian bytes in C order."""
    array = np.ascontiguousarray(embeddings, dtype="<f4")
    content = base64.b64encode(array.tobytes()).decode("ascii") if encoding == "base64" else array.tolist()
    return JSONResponse({"shape": list(array.shape), "dtype": "float32", "embeddings": content})


def _add_page(app: FastAPI, page_dir: Path) -> None:
    """``/`` and ``/static/{name}``: the page's files, listed once now; a request's name is only a key."""
    files = {p.name: p for p in sorted(page_dir.iterdir()) if p.is_file()} if page_dir.is_dir() else {}

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        if "index.html" not in files:
            raise NotFound("the operator page is not installed (no tbps_runtime/serve/page/index.html); the API "
                           "works without it")
        return FileResponse(files["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        path = files.get(name)
        if path is None:
            raise NotFound("no such file of the operator page")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tbps")
    except metadata.PackageNotFoundError:
        return "0"


def app_from_environment() -> FastAPI:
    """The application of one uvicorn worker (``tbps serve --workers N``): settings from ``TBPS_SERVE_*``."""
    settings = settings_from_environment()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("tbps_runtime").setLevel(logging.WARNING if settings.quiet else logging.INFO)
    return create_app(settings)


__all__ = ["create_app", "app_from_environment", "error_response", "RequestGuard", "RequestTag", "PAGE_DIR"]
