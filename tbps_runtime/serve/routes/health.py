"""``/healthz``, ``/readyz`` and ``/metrics``: the service's state, public (no data behind them).

What a caller without the key (of a service that has one) learns from ``/readyz``: whether the service is
ready, and if not, the class of reason (warming up, warming up failed, the gallery gone). Never the
gallery's rows, cameras, bundle or paths: those are for callers with the key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tbps_runtime.serve.deps import HoldsKey, ServiceDep
from tbps_runtime.serve.errors import error_response, request_id
from tbps_runtime.serve.schemas import ErrorResponse, ReadyResponse

router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyResponse, response_model_exclude_none=True,
            responses={503: {"model": ErrorResponse, "description": "warming up, warming up failed, the gallery gone"}})
def readyz(request: Request, service: ServiceDep, detail: HoldsKey) -> Any:
    """Readiness: the bundle and gallery are loaded and a warm-up query ran (503 before, or when the gallery
    is gone). Without the service's key (when it has one), only the status."""
    if not service.ready:
        message = "warming up failed: see the service's log" if service.failure else "warming up"
        return error_response(503, message, request_id(request))
    return service.readiness(detail)


@router.get("/metrics", response_class=Response)
def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics (counts and timings only)."""
    content, media_type = service.metrics.render()
    return Response(content, media_type=media_type)
