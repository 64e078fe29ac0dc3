"""``/gallery/ingest``, ``/gallery/rows`` and ``/gallery/info``: a store's rows, added, removed, summed up
(a plain gallery answers 409)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tbps_runtime.serve.deps import KEYED, ServiceDep
from tbps_runtime.serve.galleries import IngestCrop
from tbps_runtime.serve.schemas import (ERRORS, DeleteRequest, IngestCropBody, IngestRequest, IngestResponse,
                                        RemovalResponse)
from tbps_runtime.serve.service import Service, parse_filters
from tbps_runtime.serve.uploads import decode_image
from tbps_runtime.store.rows import parse_time

router = APIRouter(prefix="/gallery", tags=["gallery"], dependencies=KEYED, responses=ERRORS)


@router.post("/ingest", response_model=IngestResponse)
def ingest(body: IngestRequest, service: ServiceDep) -> IngestResponse:
    """Embed crops and append them to the store (their JPEGs kept in it); the new rows' ids."""
    service.require_store("ingesting")
    crops = [_ingest_crop(item, i, service) for i, item in enumerate(body.crops)]
    return IngestResponse(rows=service.ingest(crops))


@router.delete("/rows", response_model=RemovalResponse)
def delete_rows(body: DeleteRequest, service: ServiceDep) -> dict[str, Any]:
    """Remove a store's rows that pass the filters and are older than older_than (dry_run: count only)."""
    row_filter = None if body.filters is None else parse_filters(**body.filters.model_dump())
    return service.delete(row_filter, body.older_than, body.dry_run, body.everything)


@router.get("/info")
def gallery_info(service: ServiceDep) -> dict[str, Any]:
    """A store's rows, tracks, cameras (rows and time span each) and size."""
    return service.info()


def _ingest_crop(item: IngestCropBody, index: int, service: Service) -> IngestCrop:
    """One crop of a request, decoded and checked (its names were checked by the request model, as a store
    checks them)."""
    pixels = decode_image(item.image, f"crops[{index}].image", service.limits)
    when = None if item.time is None else parse_time(item.time, f"crops[{index}].time")
    box = None if item.box is None else (item.box[0], item.box[1], item.box[2], item.box[3])
    return IngestCrop(pixels, item.camera, item.source, when, item.track, box)
