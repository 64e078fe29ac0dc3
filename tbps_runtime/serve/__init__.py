"""``tbps serve``: a search service over :class:`~tbps_runtime.search.PersonSearch` (FastAPI + uvicorn).

    tbps serve --gallery store/ [--host 127.0.0.1] [--port 8000] [--workers 1]

The modules, from the outside in:

- :mod:`~tbps_runtime.serve.app`: the FastAPI application, assembled by :func:`~tbps_runtime.serve.app.create_app`
  from the routers of :mod:`~tbps_runtime.serve.routes` (one per resource: search, embed and explain,
  crops, gallery, health, page);
- :mod:`~tbps_runtime.serve.deps`: the ``Depends`` providers of the routes (the service, the API key,
  the page's files); :mod:`~tbps_runtime.serve.schemas`: the request and response models, bounds
  included; :mod:`~tbps_runtime.serve.errors`: the one error shape and the exception handlers;
  :mod:`~tbps_runtime.serve.guard`: the middleware in front (request ids, API key, body limits, metrics);
- :mod:`~tbps_runtime.serve.messages`: the service's words (library errors in request fields);
- :mod:`~tbps_runtime.serve.service`: what the routes do, without HTTP (one loaded bundle and gallery);
- :mod:`~tbps_runtime.serve.uploads`: a request's images, decoded, and refused when they are not whole;
- :mod:`~tbps_runtime.serve.galleries`: that gallery behind one interface, a plain one or a store;
- :mod:`~tbps_runtime.serve.batching`: concurrent text queries share one text-tower call;
- :mod:`~tbps_runtime.serve.security`: loopback detection, the API key, CORS origins;
- :mod:`~tbps_runtime.serve.metrics`: the Prometheus registry of one application.

This module holds only the settings (no FastAPI import): ``tbps serve`` builds them, and with
``--workers N`` hands them to each worker process through ``TBPS_SERVE_*`` environment variables.
FastAPI, uvicorn and prometheus-client come with ``pip install 'tbps[serve]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping

from tbps_runtime.errors import ConfigError

SERVE_EXTRA_HINT = "pip install 'tbps[serve]'"
_ENV = "TBPS_SERVE_"
MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; more is refused (400, or 413 for a body)."""

    max_body_bytes: int = 1 * MiB  # every JSON body but the two below
    max_upload_bytes: int = 16 * MiB  # /embed/image and /gallery/ingest (base64 images)
    max_query_chars: int = 1000
    max_queries: int = 64  # per request
    max_k: int = 100
    max_images: int = 64  # per /embed/image or /gallery/ingest request
    max_image_side: int = 4096  # decoded width and height, pixels
    max_explain_rows: int = 10


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``tbps serve`` is told. ``api_key`` None: no key asked (loopback only)."""

    gallery: str
    bundle: str | None = None  # default: the bundle the gallery records
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_key_file: str | None = None
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    batch_window_ms: float = 5.0
    max_batch: int = 32
    threads: int | None = None
    quiet: bool = False
    limits: Limits = Limits()
    audit_days: float = 90.0  # a store's audit log keeps this many days (tbps_runtime.store.audit)

    def with_key(self, api_key: str | None) -> ServeSettings:
        return replace(self, api_key=api_key)

    def to_environment(self) -> dict[str, str]:
        """``TBPS_SERVE_*`` variables that :func:`settings_from_environment` reads back in a worker. The key
        itself is never put there: a worker reads ``--api-key-file`` again, or inherits ``TBPS_API_KEY``."""
        values = {"GALLERY": self.gallery, "BUNDLE": self.bundle or "", "HOST": self.host, "PORT": str(self.port),
                  "WORKERS": str(self.workers), "API_KEY_FILE": self.api_key_file or "",
                  "CORS_ORIGINS": " ".join(self.cors_origins), "BATCH_WINDOW_MS": repr(self.batch_window_ms),
                  "MAX_BATCH": str(self.max_batch), "THREADS": "" if self.threads is None else str(self.threads),
                  "QUIET": "1" if self.quiet else "", "AUDIT_DAYS": repr(self.audit_days)}
        return {_ENV + name: value for name, value in values.items()}


def settings_from_environment(environ: Mapping[str, str] | None = None) -> ServeSettings:
    """The settings ``tbps serve`` put in ``TBPS_SERVE_*`` (the key: from the key file or ``TBPS_API_KEY``).

    Raises:
        ConfigError: no ``TBPS_SERVE_GALLERY``, or a value that is not of its type.
    """
    from tbps_runtime.serve.security import resolve_api_key

    environ = os.environ if environ is None else environ
    get = lambda name: environ.get(_ENV + name, "")  # noqa: E731
    if not get("GALLERY"):
        raise ConfigError(f"{_ENV}GALLERY is not set: workers get their settings from tbps serve, which sets it")
    try:
        settings = ServeSettings(
            gallery=get("GALLERY"), bundle=get("BUNDLE") or None, host=get("HOST") or "127.0.0.1",
            port=int(get("PORT") or 8000), workers=int(get("WORKERS") or 1), api_key_file=get("API_KEY_FILE") or None,
            cors_origins=tuple(get("CORS_ORIGINS").split()), batch_window_ms=float(get("BATCH_WINDOW_MS") or 5.0),
            max_batch=int(get("MAX_BATCH") or 32), threads=int(get("THREADS")) if get("THREADS") else None,
            quiet=bool(get("QUIET")), audit_days=float(get("AUDIT_DAYS") or 90.0))
    except ValueError as e:
        raise ConfigError(f"a {_ENV}* variable is not of its type ({e}): start the service with tbps serve") from None
    return settings.with_key(resolve_api_key(settings.api_key_file, environ))


__all__ = ["Limits", "ServeSettings", "SERVE_EXTRA_HINT", "settings_from_environment"]
