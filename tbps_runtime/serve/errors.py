"""The error contract of ``tbps serve``: one JSON shape for every refusal, and the handlers that turn
exceptions into it.

An error is ``{"error": {"code", "message"}, "request_id"}`` with the HTTP status; a 500 says only
"internal error" (the traceback goes to the log under the request id). A library error is worded for a
client of the API (:func:`tbps_runtime.serve.messages.for_http`); a store that does not answer is a 503
that hides its address; the server's own damaged files are a 500.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tbps_runtime.errors import BundleError, InputFileNotFoundError, OutputError, StoreError, TbpsError
from tbps_runtime.paths import printable
from tbps_runtime.serve.galleries import Conflict, NotFound
from tbps_runtime.serve.messages import KEY_REQUIRED, for_http

logger = logging.getLogger(__name__)

_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large",
                503: "unavailable"}


class KeyRefused(Exception):
    """A data endpoint was called without the service's API key (HTTP 401)."""


def error_response(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"code", "message"}, "request_id"}``."""
    code = _ERROR_CODES.get(status, "internal" if status >= 500 else "bad_request")
    text = "internal error" if code == "internal" else printable(" ".join(str(message).split()))[:2000]
    return JSONResponse({"error": {"code": code, "message": text}, "request_id": request_id}, status_code=status,
                        headers=headers)


def key_refusal(request_id: str) -> JSONResponse:
    """The 401 of a missing or wrong key: the same answer for both."""
    return error_response(401, KEY_REQUIRED, request_id, {"WWW-Authenticate": "Bearer"})


def request_id(request: Request) -> str:
    """The id :class:`~tbps_runtime.serve.guard.RequestTag` gave the request."""
    return getattr(request.state, "request_id", "-")


def validation_message(error: RequestValidationError) -> str:
    """Pydantic's errors as ``field.path[i]: what is wrong`` (never the values sent)."""
    parts = []
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            return "the body is not valid JSON" + (f" ({item['ctx']['error']})" if item.get("ctx") else "")
        location = list(item.get("loc", ()))
        if location and location[0] in ("body", "path", "query", "header"):
            location = location[1:]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location).lstrip(".") or "body"
        cause = (item.get("ctx") or {}).get("error")  # a validator's ValueError: the service's own words
        what = str(cause) if item.get("type") == "value_error" and cause is not None else item.get("msg", "invalid")
        parts.append(f"{where}: {what}")
    return "; ".join(parts) or "the request is not valid"


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(400, validation_message(error), request_id(request))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    messages = {404: f"no such endpoint: {request.method} {request.url.path[:200]}",
                405: f"{request.method} is not allowed on {request.url.path[:200]}"}
    message = messages.get(error.status_code, str(error.detail))
    return error_response(error.status_code, message, request_id(request), getattr(error, "headers", None))


async def _not_found(request: Request, error: NotFound) -> JSONResponse:
    return error_response(404, str(error), request_id(request))


async def _conflict(request: Request, error: Conflict) -> JSONResponse:
    return error_response(409, str(error), request_id(request))


async def _key_refused(request: Request, error: KeyRefused) -> JSONResponse:
    return key_refusal(request_id(request))


async def _user_error(request: Request, error: TbpsError) -> JSONResponse:
    rid = request_id(request)
    if isinstance(error, BundleError):  # the server's own files, not the request: the log says what
        logger.error("request %s: %s", rid, error)
        return error_response(500, "internal error", rid)
    if isinstance(error, StoreError):  # the store's database, not the request: later may work
        logger.error("request %s: %s", rid, error)
        return error_response(503, "the gallery's store is not answering: try again later", rid, {"Retry-After": "5"})
    status = 404 if isinstance(error, InputFileNotFoundError) else 409 if isinstance(error, OutputError) else 400
    return error_response(status, for_http(error), rid)


# For FastAPI(exception_handlers=...): every refusal in the one shape.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    RequestValidationError: _invalid, StarletteHTTPException: _http_error, NotFound: _not_found,
    Conflict: _conflict, KeyRefused: _key_refused, TbpsError: _user_error,
}

__all__ = ["EXCEPTION_HANDLERS", "KeyRefused", "error_response", "key_refusal", "request_id", "validation_message"]
