"""``/frames/{row}`` and ``/clips/{row}``: a store row's full frame (its box drawn) and the source video
around it, played by the page's ``<video>`` through HTTP range requests (206, ``Accept-Ranges``,
``Content-Range``: Starlette's :class:`~starlette.responses.FileResponse` over the cached clip). Only rows
of the store are reachable, never a path; each request is written to the audit log first."""

from __future__ import annotations

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from tbps_runtime.ingest.moments import MAX_CLIP_SIDE_S
from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.schemas import ERRORS, LARGEST_ID

router = APIRouter(tags=["context"], dependencies=KEYED, responses=ERRORS)

_SECONDS = dict(ge=0, le=MAX_CLIP_SIDE_S, allow_inf_nan=False)


@router.get("/frames/{row:int}", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def frame(request: Request, service: ServiceDep, row: int = PathParam(ge=0, le=LARGEST_ID)) -> Response:
    """The full frame of a store row, its box drawn (404: no such row, a stream's row, the source gone)."""
    service.context.record_request(request, "frame", row=row)
    return Response(service.context.frame_jpeg(row), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=300"})


@router.get("/clips/{row:int}", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a byte range of the clip"}})
async def clip(request: Request, service: ServiceDep, row: int = PathParam(ge=0, le=LARGEST_ID),
               before: float = Query(5.0, description=f"Seconds before the hit, 0 to {MAX_CLIP_SIDE_S:g}.", **_SECONDS),
               after: float = Query(5.0, description=f"Seconds after the hit, 0 to {MAX_CLIP_SIDE_S:g}.", **_SECONDS)
               ) -> FileResponse:
    """An MP4 of the source around a store row, cut at keyframes without re-encoding where possible; byte
    ranges answered with 206. ``X-Clip-Start``: the source time (s) at the clip's time 0, so the hit is at
    ``offset - X-Clip-Start`` in the clip."""
    await run_in_threadpool(service.context.record_request, request, "clip", row=row,
                            filters={"before": before, "after": after})
    path, start, remuxed = await run_in_threadpool(service.context.clip, row, before, after)
    return FileResponse(path, media_type="video/mp4", headers={
        "Cache-Control": "private, max-age=300", "X-Clip-Start": f"{start:.3f}",
        "X-Clip-Remuxed": "1" if remuxed else "0"})
