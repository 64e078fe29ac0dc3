"""The FastAPI application of ``tbps serve``, assembled as FastAPI's documentation shows larger
applications: one router per resource (:mod:`tbps_runtime.serve.routes`), ``Depends`` providers for the
service and the API key (:mod:`tbps_runtime.serve.deps`), the request and response models
(:mod:`tbps_runtime.serve.schemas`), the error contract (:mod:`tbps_runtime.serve.errors`) and the guard in
front of the routes (:mod:`tbps_runtime.serve.guard`).

Every response is JSON (but crops, the page and metrics) and carries ``X-Request-ID``; an error is
``{"error": {"code", "message"}, "request_id"}`` with the HTTP status. The routes call the
:class:`~tbps_runtime.serve.service.Service` off the event loop: text queries through its batcher's
thread, everything else in the thread pool.

:func:`create_app` builds an application for a service; :func:`app_from_environment` is the factory each
uvicorn worker calls with ``--workers N`` (settings from ``TBPS_SERVE_*``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from tbps_runtime.errors import ConfigError
from tbps_runtime.serve import SERVE_EXTRA_HINT, ServeSettings, settings_from_environment

try:
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
except ImportError as e:  # pragma: no cover - the edge install without the extra
    raise ConfigError(f"tbps serve needs FastAPI ({e.name} is missing): {SERVE_EXTRA_HINT}") from None

from tbps_runtime.serve.errors import EXCEPTION_HANDLERS, error_response
from tbps_runtime.serve.guard import RequestGuard, RequestTag
from tbps_runtime.serve.routes import ROUTERS
from tbps_runtime.serve.routes.page import page_files
from tbps_runtime.serve.schemas import check_limits
from tbps_runtime.serve.service import Service

PAGE_DIR = Path(__file__).parent / "page"  # the operator page (index.html and its files), when installed


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Warm the service up when the application starts (``/readyz`` answers 503 until then); stop its
    batcher when it stops."""
    service: Service = app.state.service
    warming = asyncio.get_running_loop().run_in_executor(None, service.warm_up)
    try:
        yield
    finally:
        await warming
        service.close()


def create_app(settings: ServeSettings, service: Service | None = None, *, page_dir: Path | None = None) -> FastAPI:
    """The application for ``service`` (default: :meth:`Service.load` of ``settings``).

    ``page_dir``: where the operator page's files are (default: the package's).

    Raises:
        ConfigError: limits above the request models' bounds (:func:`~tbps_runtime.serve.schemas.check_limits`).
    """
    check_limits(settings.limits)
    service = service or Service.load(settings)
    app = FastAPI(title="tbps serve", version=_version(), lifespan=_lifespan, redoc_url=None,
                  docs_url=None,  # /docs from the installed swagger-ui-py (routes/docs.py), never a CDN
                  exception_handlers=EXCEPTION_HANDLERS,
                  description="Text-based person search over one gallery. Data endpoints want the API key when the "
                              "service has one; /healthz, /readyz, /metrics, the page and this description do not.")
    app.state.service = service
    app.state.api_key = None if settings.api_key is None else settings.api_key.encode("ascii")
    app.state.page_files = page_files(page_dir or PAGE_DIR)
    for router in ROUTERS:
        app.include_router(router)
    # Added innermost first: RequestTag -> CORS (when configured) -> RequestGuard -> the routes.
    app.add_middleware(RequestGuard, api_key=settings.api_key, limits=settings.limits)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], expose_headers=["X-Request-ID"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"], max_age=600)
    app.add_middleware(RequestTag, metrics=service.metrics, routes=_routes(app))
    return app


def _routes(app: FastAPI) -> list[Any]:
    """Every route of ``app`` with a path template (the metrics' endpoint labels): its own (the OpenAPI
    description) and its routers' (an included router is matched as a whole, without one)."""
    own = [route for route in app.router.routes if getattr(route, "path", None) is not None]
    return own + [route for router in ROUTERS for route in router.routes]


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
