"""``/crops/{row}``: the JPEG of a gallery row's crop (the file the gallery records, never a request's path)."""

from __future__ import annotations

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import Response

from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.schemas import ERRORS, LARGEST_ID

router = APIRouter(tags=["search"], dependencies=KEYED, responses=ERRORS)


@router.get("/crops/{row:int}", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def crop(request: Request, service: ServiceDep, row: int = PathParam(ge=0, le=LARGEST_ID)) -> Response:
    """The JPEG of a gallery row's crop."""
    service.context.record_request(request, "crop", row=row)
    return Response(service.crop_jpeg(row), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})
