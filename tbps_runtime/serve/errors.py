"""The error contract of ``tbps serve``: one JSON shape for every refusal, and the handlers that turn
exceptions into it.

An error is ``{"error": {"code", "message"}, "request_id"}`` with the HTTP status; a 500 says only
"internal error" (the traceback goes to the log under the request id). A library error is worded for a
client of the API (:func:`tbps_runtime.serve.messages.for_http`); a store that does not answer is a 503
that hides its address, and so are the server's own damaged files (a gallery or bundle that cannot be read:
the log says which); a gallery moved or deleted while the service runs is a 503 that says so, whatever
failed on the way. Only a bug is a 500.

One rule for every answer built here (:func:`error_response`, which every refusal goes through): no path
of the server's file system. A message that names one is answered with ``[server path]`` in its place,
and logged whole under the request id for the operator.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tbps_runtime.errors import BundleError, InputFileNotFoundError, OutputError, StoreError, TbpsError
from tbps_runtime.paths import printable
from tbps_runtime.serve.galleries import Conflict, NotFound, Refusal, Unavailable
from tbps_runtime.serve.messages import (GALLERY_GONE, KEY_REQUIRED, SERVER_FILES_UNREADABLE, STORE_NOT_ANSWERING,
                                         for_http)

if TYPE_CHECKING:  # for annotations only
    from tbps_runtime.serve.service import Service

logger = logging.getLogger(__name__)

_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict", 413: "too_large",
                503: "unavailable"}
SERVER_PATH = "[server path]"
# An absolute path: "/" then a name (its first one is checked against the root directory's entries, so that
# "/search" or "/crops/7" stay), running on across a space while the next word holds a "/" too; or a
# Windows drive path. Never preceded by a character that would make it part of a word or a URL.
_ABSOLUTE = re.compile(r"(?<![\w/.~-])/([^\s/'\"`()]+)[^\s'\"`()]*(?: [^\s'\"`()/]+/[^\s'\"`()]*)*"
                       r"|(?<![\w])[A-Za-z]:\\[^\s'\"`()]*")


class KeyRefused(Exception):
    """A data endpoint was called without the service's API key (HTTP 401)."""


def error_response(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"code", "message"}, "request_id"}``, with no server path in it
    (:func:`without_server_paths`; the message as it was goes to the log)."""
    code = _ERROR_CODES.get(status, "internal" if status >= 500 else "bad_request")
    text = "internal error" if code == "internal" else printable(" ".join(str(message).split()))
    answered = without_server_paths(text)
    if answered != text:
        logger.warning("request %s: answered %d without the server's paths: %s", request_id, status, text)
    return JSONResponse({"error": {"code": code, "message": answered[:2000]}, "request_id": request_id},
                        status_code=status, headers=headers)


def without_server_paths(text: str) -> str:
    """``text`` with each absolute path of this machine's file system (one under an entry of its root
    directory: ``/tmp/...``, ``/home/...``) or Windows drive path said as ``[server path]``."""

    def hide(match: re.Match) -> str:
        first, entries = match.group(1), _root_entries()
        if first is not None and entries is not None and first.rstrip(":;,.") not in entries:
            return match.group(0)  # a URL path ("/crops/7"), not a file's
        path = match.group(0)
        return SERVER_PATH + path[len(path.rstrip(":;,.")):]  # the sentence's punctuation stays

    return _ABSOLUTE.sub(hide, text)


@lru_cache(maxsize=1)
def _root_entries() -> frozenset[str] | None:
    """The names in this machine's root directory (None when it cannot be listed: every path is hidden)."""
    try:
        return frozenset(os.listdir(os.sep))
    except OSError:
        return None


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


def gone_response(service: Service, request_id: str) -> JSONResponse | None:
    """The 503 of a gallery moved or deleted while the service ran, when it is gone; else None. What failed
    on the way (a crop missing, the catalog unreadable) is a consequence, not the news."""
    if not service.gallery.gone():
        return None
    logger.error("request %s: the gallery %s was moved, deleted or replaced while the service ran", request_id,
                 service.gallery.path)
    return error_response(503, GALLERY_GONE, request_id)


_REFUSAL_STATUS = {NotFound: 404, Conflict: 409, Unavailable: 503}


async def _refused(request: Request, error: Refusal) -> JSONResponse:
    rid = request_id(request)
    status = _REFUSAL_STATUS[type(error)]
    if status != 409:
        gone = gone_response(request.app.state.service, rid)
        if gone is not None:
            return gone
    if error.detail:
        logger.warning("request %s: %s (%s)", rid, error, error.detail)
    return error_response(status, str(error), rid)


async def _key_refused(request: Request, error: KeyRefused) -> JSONResponse:
    return key_refusal(request_id(request))


async def _user_error(request: Request, error: TbpsError) -> JSONResponse:
    rid = request_id(request)
    if isinstance(error, (BundleError, StoreError, OutputError, InputFileNotFoundError)):
        gone = gone_response(request.app.state.service, rid)  # the server's files failing because they are gone
        if gone is not None:
            return gone
    if isinstance(error, BundleError):  # the server's own files, damaged, not the request: the log says what
        logger.error("request %s: %s", rid, error)
        return error_response(503, SERVER_FILES_UNREADABLE, rid)
    if isinstance(error, StoreError):  # the store's database, not the request: later may work
        logger.error("request %s: %s", rid, error)
        return error_response(503, STORE_NOT_ANSWERING, rid, {"Retry-After": "5"})
    status = 404 if isinstance(error, InputFileNotFoundError) else 409 if isinstance(error, OutputError) else 400
    return error_response(status, for_http(error), rid)


def unexpected_response(service: Service, request_id: str) -> JSONResponse:
    """The answer to an exception nobody planned for (logged by the caller): the gallery gone, if it is
    (:func:`gone_response`); else a 500 that says only "internal error"."""
    return gone_response(service, request_id) or error_response(500, "internal error", request_id)


# For FastAPI(exception_handlers=...): every refusal in the one shape.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    RequestValidationError: _invalid, StarletteHTTPException: _http_error, NotFound: _refused,
    Conflict: _refused, Unavailable: _refused, KeyRefused: _key_refused, TbpsError: _user_error,
}

__all__ = ["EXCEPTION_HANDLERS", "KeyRefused", "SERVER_PATH", "error_response", "gone_response", "key_refusal",
           "request_id", "unexpected_response", "validation_message", "without_server_paths"]
