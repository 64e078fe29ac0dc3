"""The pure ASGI middleware in front of the routes of ``tbps serve``.

:class:`RequestTag` (outermost) gives each request its id and counts it in the metrics;
:class:`RequestGuard` (inside CORS, so that its refusals carry the CORS headers) checks the API key
before reading anything, bounds the body (its Content-Length and the bytes actually read) and turns an
unexpected exception into a 500 in the error shape (or the 503 of a gallery that is gone, when it is).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import Match

from tbps_runtime.paths import printable
from tbps_runtime.serve import Limits
from tbps_runtime.serve.errors import error_response, key_refusal, unexpected_response
from tbps_runtime.serve.metrics import ServiceMetrics
from tbps_runtime.serve.security import is_public, key_matches, presented_key

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
UPLOAD_PATHS = frozenset({"/embed/image", "/gallery/ingest"})  # bodies of base64 images: the larger limit
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
                answer = unexpected_response(scope["app"].state.service, request_id)
                await answer(scope, receive, send_watched)

    def _check_key(self, scope: dict, request_id: str) -> JSONResponse | None:
        if self.expected is None or scope["method"] == "OPTIONS" or is_public(scope["path"]):
            return None
        if key_matches(presented_key(scope.get("headers", [])), self.expected):
            return None
        return key_refusal(request_id)

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


__all__ = ["RequestGuard", "RequestTag", "UPLOAD_PATHS"]
