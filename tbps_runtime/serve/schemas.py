"""The request and response bodies of ``tbps serve`` (pydantic): validated on the way in, and the OpenAPI
description at ``/docs``. A request body refuses fields it does not know (a misspelt ``kk`` is a 400, not
silently ignored); the limits that settings can change (k, queries, lengths) are checked by the service,
so their descriptions state the defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400, not silently ignored


class Filters(_Body):
    """Which rows of a store to search or delete; empty fields select everything. Times: ISO-8601 (no
    zone: UTC); the range is since <= time < until."""

    cameras: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    tracks: list[int] = Field(default_factory=list)
    since: str | None = None
    until: str | None = None


class SearchRequest(_Body):
    """One query (``query``) or several (``queries``), ranked by Eq. 14."""

    query: str | None = Field(None, description="What the person looks like (at most 1000 characters).")
    queries: list[str] | None = Field(None, description="Several queries (at most 64): one result list each.")
    k: int = Field(10, description="Results per query, 1 to 100.")
    filters: Filters | None = Field(None, description="A store's rows to search (a plain gallery: none).")
    min_score: float | Literal["auto"] | None = Field(
        None, description="Drop hits scoring below it; 'auto': the bundle's calibrated threshold.")
    per_track: bool = Field(False, description="A store's tracks, each by its best row, instead of rows.")


class Hit(BaseModel):
    """One ranked row. A store's rows also say where and when the crop was seen."""

    rank: int
    score: float = Field(description="Eq. 14: the sum of the K slot cosines.")
    row: int
    crop_url: str
    identity: int | str | None = None
    camera: str | None = None
    source: str | None = None
    time: float | None = Field(None, description="UTC seconds since the epoch.")
    time_iso: str | None = None
    offset: float | None = Field(None, description="Seconds into the source.")
    frame: int | None = None
    box: list[float] | None = Field(None, description="x0, y0, x1, y1 in the source frame's pixels.")
    detector_score: float | None = None
    track: int | None = None
    track_rows: int | None = Field(None, description="per_track: the track's rows that passed the filters.")


class SearchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="One list per query, in query order, best first.")
    took_ms: float
    search: str = Field(description="The search made, in words.")
    request_id: str


class EmbedTextRequest(_Body):
    texts: list[str] = Field(description="At most 64 captions of at most 1000 characters.")
    encoding: Literal["json", "base64"] = "json"


class EmbedImageRequest(_Body):
    images: list[str] = Field(description="At most 64 base64 JPEG or PNG files, each at most 4096x4096 pixels.")
    encoding: Literal["json", "base64"] = "json"


class EmbedResponse(BaseModel):
    shape: list[int] = Field(description="[N, K, d]")
    dtype: Literal["float32"] = "float32"
    embeddings: list[list[list[float]]] | str = Field(
        description="Nested lists, or base64 of the little-endian float32 bytes in C order.")


class ExplainRequest(_Body):
    query: str
    rows: list[int] = Field(description="Gallery rows (at most 10), e.g. a search's hits.")


class ExplainResponse(BaseModel):
    tokens: list[str]
    token_weights: list[list[float]] = Field(description="(D + P, T): each decoder token's attention over the tokens.")
    heatmaps: list[str] = Field(description="Per row: base64 PNG of its crop with the attention A_avg blended.")


class IngestCropBody(_Body):
    image: str = Field(description="Base64 JPEG or PNG.")
    camera: str = Field(min_length=1, max_length=1024)
    time: str | None = Field(None, description="When it was seen: ISO-8601 (no zone: UTC).")
    source: str = Field("api", min_length=1, max_length=1024)
    track: int | None = Field(None, ge=0, le=2**63 - 1)
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="x0, y0, x1, y1")


class IngestRequest(_Body):
    crops: list[IngestCropBody] = Field(description="At most 64 crops.")


class IngestResponse(BaseModel):
    rows: list[int]


class DeleteRequest(_Body):
    filters: Filters | None = None
    older_than: str | None = Field(None, description="An age: 30d, 12h, 90m (rows without a time: when added).")
    dry_run: bool = False
    everything: bool = Field(False, description="Allow removing every row of the store.")


class RemovalResponse(BaseModel):
    dry_run: bool
    rows: int
    segments: int
    crops: int
    bytes: int
    cameras: dict[str, int]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    rows: int
    bundle: str = Field(description="The bundle's fingerprint (12 hex digits).")
    store: bool
    explain: bool
    cameras: list[str]


class ErrorDetail(BaseModel):
    code: Literal["bad_request", "unauthorized", "not_found", "too_large", "conflict", "unavailable", "internal"]
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


ERRORS: dict[int | str, dict[str, Any]] = {  # the refusals a data endpoint documents
    status: {"model": ErrorResponse, "description": code} for status, code in
    ((400, "bad request"), (401, "no or wrong API key"), (404, "not found"), (409, "conflict"), (413, "too large"),
     (503, "the store is not answering"))}


__all__ = ["DeleteRequest", "ERRORS", "EmbedImageRequest", "EmbedResponse", "EmbedTextRequest", "ErrorDetail",
           "ErrorResponse", "ExplainRequest", "ExplainResponse", "Filters", "Hit", "IngestCropBody", "IngestRequest",
           "IngestResponse", "ReadyResponse", "RemovalResponse", "SearchRequest", "SearchResponse"]
