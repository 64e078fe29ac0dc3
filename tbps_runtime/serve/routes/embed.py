"""``/embed/text``, ``/embed/image`` and ``/explain``: the towers' outputs, without ranking."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.schemas import (ERRORS, EmbedImageRequest, EmbedResponse, EmbedTextRequest, ErrorResponse,
                                        ExplainRequest, ExplainResponse)

router = APIRouter(dependencies=KEYED, responses=ERRORS)


@router.post("/embed/text", tags=["embed"], response_model=EmbedResponse)
async def embed_text(body: EmbedTextRequest, service: ServiceDep) -> JSONResponse:
    """Captions -> (N, K, d) float32 embeddings, every slot L2-normalised."""
    texts = service.check_texts(body.texts, "texts")
    embeddings = await asyncio.wrap_future(service.submit_texts(texts))
    return await run_in_threadpool(embeddings_response, embeddings, body.encoding)


@router.post("/embed/image", tags=["embed"], response_model=EmbedResponse)
def embed_image(body: EmbedImageRequest, service: ServiceDep) -> JSONResponse:
    """Crops (base64 JPEG/PNG) -> (N, K, d) float32 embeddings, every slot L2-normalised."""
    pixels = service.decode_images(body.images, "images")
    return embeddings_response(service.embed_pixels(pixels), body.encoding)


@router.post("/explain", tags=["search"], response_model=ExplainResponse,
             responses={409: {"model": ErrorResponse, "description": "the bundle has no explain graphs"}})
def explain(body: ExplainRequest, request: Request, service: ServiceDep) -> JSONResponse:
    """The attention behind a query's hits: its tokens' weights and a heat map over each row's crop."""
    service.context.record_request(request, "explain", query=body.query, filters={"rows": list(body.rows)})
    return JSONResponse(service.explain(body.query, body.rows))


def embeddings_response(embeddings: np.ndarray, encoding: str) -> JSONResponse:
    """(N, K, d) float32 as JSON: nested lists, or base64 of its little-endian bytes in C order."""
    array = np.ascontiguousarray(embeddings, dtype="<f4")
    content = base64.b64encode(array.tobytes()).decode("ascii") if encoding == "base64" else array.tolist()
    return JSONResponse({"shape": list(array.shape), "dtype": "float32", "embeddings": content})
