"""``/search``: rank the gallery for one query or several."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tbps_runtime.errors import ConfigError
from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.errors import request_id
from tbps_runtime.serve.schemas import ERRORS, SearchRequest, SearchResponse
from tbps_runtime.serve.service import parse_filters

router = APIRouter(tags=["search"], dependencies=KEYED, responses=ERRORS)


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, service: ServiceDep) -> JSONResponse:
    """Rank the gallery for one query or several (Eq. 14, exact; a store's filters applied first)."""
    started = time.perf_counter()
    texts = service.check_texts(*body.texts()) if body.like_row is None or body.query is not None else []
    if body.like_row is not None and body.min_score == "auto":
        raise ConfigError("min_score 'auto' is a threshold calibrated for captions against crops; like_row ranks "
                          "crops against a crop (the row itself scores K): give a number")
    row_filter = None if body.filters is None else parse_filters(**body.filters.model_dump())
    spec = service.rank_spec(body.k, row_filter, body.per_track, body.min_score)
    await run_in_threadpool(service.context.record_request, request, "search", row=body.like_row,
                            query=_audited_query(texts), filters=_audited_options(body))  # before searching
    if body.like_row is not None:
        ranked = [await run_in_threadpool(service.search_like, body.like_row, texts[0] if texts else None, spec)]
    else:
        ranked = await asyncio.wrap_future(service.submit_search(texts, spec))  # [(hits, rows searched)]
    words = service.describe(spec, ranked[0][1])
    if body.like_row is not None:
        words += f"; like row {body.like_row}" + (" and the query" if texts else "")
    notes = await run_in_threadpool(service.answer_notes, [] if body.like_row is not None else texts, spec, ranked)
    return JSONResponse({"results": [hits for hits, _ in ranked],
                         "took_ms": round((time.perf_counter() - started) * 1e3, 3),
                         "search": words, "request_id": request_id(request), **notes})


def _audited_query(texts: list[str]) -> str | None:
    """The query as the audit log keeps it: the text, or the JSON list of several."""
    return None if not texts else texts[0] if len(texts) == 1 else json.dumps(texts)


def _audited_options(body: SearchRequest) -> dict[str, Any]:
    """The filters and options of a search, as the audit log keeps them."""
    return {"filters": None if body.filters is None else body.filters.model_dump(), "k": body.k,
            "per_track": body.per_track, "min_score": body.min_score}
