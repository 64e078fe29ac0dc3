"""``/search``: rank the gallery for one query or several."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.errors import request_id
from tbps_runtime.serve.schemas import ERRORS, SearchRequest, SearchResponse
from tbps_runtime.serve.service import parse_filters

router = APIRouter(tags=["search"], dependencies=KEYED, responses=ERRORS)


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, service: ServiceDep) -> JSONResponse:
    """Rank the gallery for one query or several (Eq. 14, exact; a store's filters applied first)."""
    started = time.perf_counter()
    texts = service.check_texts(*body.texts())
    row_filter = None if body.filters is None else parse_filters(**body.filters.model_dump())
    spec = service.rank_spec(body.k, row_filter, body.per_track, body.min_score)
    ranked = await asyncio.wrap_future(service.submit_search(texts, spec))  # [(hits, rows searched)]
    return JSONResponse({"results": [hits for hits, _ in ranked],
                         "took_ms": round((time.perf_counter() - started) * 1e3, 3),
                         "search": service.describe(spec, ranked[0][1]), "request_id": request_id(request)})
