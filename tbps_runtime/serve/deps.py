"""What the routes of ``tbps serve`` depend on (FastAPI ``Depends``): the application's service, its
operator page, and the API key.

The key is checked twice, by one function (:func:`~tbps_runtime.serve.security.key_matches`): by
:class:`~tbps_runtime.serve.guard.RequestGuard` before a body is read, for every path that is not public,
and by :func:`require_key` on every route of a data router, which also declares the key in the OpenAPI
description. A data route is keyed by its router, whatever the guard's list of public paths says. A public
route that says more to a caller with the key (``/readyz``) asks :func:`holds_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from tbps_runtime.serve.errors import KeyRefused
from tbps_runtime.serve.security import key_matches, presented_key
from tbps_runtime.serve.service import Service

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (when the service has a key)")
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")


async def get_service(request: Request) -> Service:
    """The application's :class:`Service` (set by :func:`~tbps_runtime.serve.app.create_app`)."""
    return request.app.state.service


async def get_page_files(request: Request) -> dict[str, Path]:
    """The operator page's files by name, listed once when the application was made."""
    return request.app.state.page_files


async def holds_key(request: Request) -> bool:
    """Whether the request may see the service's data: the service has no key, or the request carries it
    (read from the raw headers, as the guard reads it)."""
    expected = request.app.state.api_key
    return expected is None or key_matches(presented_key(request.scope.get("headers", [])), expected)


async def require_key(request: Request, bearer: Any = Security(_bearer), key: Any = Security(_key_header)) -> None:
    """Refuse (401) a request without the service's API key, when it has one.

    ``bearer`` and ``key`` declare the two ways to send it in the OpenAPI description.
    """
    if not await holds_key(request):
        raise KeyRefused()


ServiceDep = Annotated[Service, Depends(get_service)]
HoldsKey = Annotated[bool, Depends(holds_key)]
PageFiles = Annotated[dict[str, Path], Depends(get_page_files)]
KEYED = [Security(require_key)]  # a data router's dependencies

__all__ = ["KEYED", "HoldsKey", "PageFiles", "ServiceDep", "get_page_files", "get_service", "holds_key", "require_key"]
