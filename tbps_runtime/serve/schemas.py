"""The request and response bodies of ``tbps serve`` (pydantic): validated on the way in, and the OpenAPI
description at ``/docs``. A request body refuses fields it does not know (a misspelt ``kk`` is a 400, not
silently ignored), values of the wrong type, numbers that are not finite, negative row and track ids, and
more texts, images, rows or characters than :data:`BOUNDS` (the default :class:`~tbps_runtime.serve.Limits`);
a service built with lower limits refuses past those as well (:class:`~tbps_runtime.serve.service.Service`),
in the same words (:mod:`tbps_runtime.serve.messages`).

The OpenAPI description states every bound a model holds (``minItems``, ``maxItems``, ``minLength``,
``maxLength``, ``minimum``, ``maximum``, ``pattern``, which of two fields is required), so that a request
a generated client or a fuzzer builds from it is never refused for a bound it did not state
(tests/test_guarantees_service.py fuzzes it). What a schema cannot state is said in the field's
description and refused by the service: an image that does not decode, a time outside 1900..3000 or
an empty time range, a query with nothing visible in it, filters on a plain gallery."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tbps_runtime.errors import ConfigError
from tbps_runtime.serve import Limits
from tbps_runtime.serve.messages import WORDS, count_refusal, length_refusal, range_refusal
from tbps_runtime.store.rows import MAX_TEXT, TIME_RANGE, check_name

BOUNDS = Limits()  # what any request body may hold: the default limits
# Rows and tracks are int64 in a store, but a JSON number above 2**53 - 1 is not an exact integer to many
# clients (a browser's among them), nor to JSON-Schema tools, which read 2**63 - 1 as 2**63.
LARGEST_ID = 2**53 - 1
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"  # no control character, line or paragraph separator
AGE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[smhdw]\s*$"  # 30d, 12h, 90m, 45s, 2w (store.rows.parse_age)
_TIME = f"ISO-8601 (no zone: UTC), from {TIME_RANGE}, e.g. 2026-03-02T14:00:05Z"


def _counted(item: Any, noun: str, most: int) -> Any:
    """A list of 1 to ``most`` items, refused in the service's words, its bounds in the OpenAPI description."""

    def check(items: list) -> list:
        if not 1 <= len(items) <= most:
            raise ValueError(count_refusal(most, noun, len(items)))
        return items

    return Annotated[list[item], AfterValidator(check), Field(json_schema_extra={"minItems": 1, "maxItems": most})]


def _query_length(text: str) -> str:
    if len(text) > BOUNDS.max_query_chars:
        raise ValueError(length_refusal(len(text), BOUNDS.max_query_chars))
    return text


def _name(value: str) -> str:
    """A camera or source name (:func:`~tbps_runtime.store.rows.check_name`: what a store keeps)."""
    return check_name(value, "text")


def _between(name: str, most: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not 1 <= value <= most:
            raise ValueError(range_refusal(name, most, value))
        return value

    return check


# A query: its length here; an empty or invisible one is the service's refusal (text.check_queries), which
# the schema states as far as it can (minLength).
Query = Annotated[str, AfterValidator(_query_length),
                  Field(json_schema_extra={"minLength": 1, "maxLength": BOUNDS.max_query_chars})]
Name = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_name),
                 Field(json_schema_extra={"pattern": NAME_PATTERN})]  # a camera or source
Id = Annotated[int, Field(ge=0, le=LARGEST_ID)]  # a row or track
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400, not silently ignored


class Filters(_Body):
    """Which rows of a store to search or delete; empty fields select everything. Times: ISO-8601 (no
    zone: UTC); the range is since <= time < until."""

    cameras: list[Name] = Field(default_factory=list)
    sources: list[Name] = Field(default_factory=list)
    tracks: list[Id] = Field(default_factory=list)
    since: str | None = Field(None, description=f"Rows seen at or after it: {_TIME}.")
    until: str | None = Field(None, description=f"Rows seen before it (after since): {_TIME}.")


class SearchRequest(_Body):
    """One query (``query``) or several (``queries``), ranked by Eq. 14."""

    model_config = ConfigDict(json_schema_extra={  # as _one_kind_of_query: query or queries, or like_row
        "anyOf": [{"required": ["query"], "properties": {"query": {"type": "string"}}},
                  {"required": ["queries"], "properties": {"queries": {"type": "array"}}},
                  {"required": ["like_row"], "properties": {"like_row": {"type": "integer"}}}],
        "allOf": [{"not": {"required": ["query", "queries"], "properties": {"query": {"type": "string"},
                                                                          "queries": {"type": "array"}}}},
                  {"not": {"required": ["queries", "like_row"], "properties": {"queries": {"type": "array"},
                                                                               "like_row": {"type": "integer"}}}}]})

    query: Query | None = Field(None, description="What the person looks like.")
    queries: _counted(Query, "texts", BOUNDS.max_queries) | None = Field(
        None, description="Several queries: one result list each.")
    k: Annotated[int, AfterValidator(_between("k", BOUNDS.max_k))] = Field(
        10, description="Results per query.", json_schema_extra={"minimum": 1, "maximum": BOUNDS.max_k})
    filters: Filters | None = Field(None, description="A store's rows to search (a plain gallery: none).")
    min_score: Finite | Literal["auto"] | None = Field(
        None, description="Drop hits scoring below it; 'auto': a store's own calibrated threshold (tbps calibrate "
                          "--gallery) when it has one, else the bundle's (tbps calibrate; refused when neither).")
    per_track: bool = Field(False, description="A store's tracks, each by its best row, instead of rows.")
    like_row: Id | None = Field(None, description="Find similar (a store): this row's image embedding is the query, "
                                                  "ranked by the same Eq. 14 (the row itself scores K and ranks "
                                                  "first unless a filter leaves it out); with query, each slot of "
                                                  "the query is the normalised sum of the text's and the row's.")

    @model_validator(mode="after")
    def _one_kind_of_query(self) -> SearchRequest:
        if self.like_row is not None and self.queries is not None:
            raise ValueError("like_row takes one query (query), not queries")
        if self.like_row is None and (self.query is None) == (self.queries is None):
            raise ValueError("give either query (a string) or queries (a list of strings), or like_row")
        if self.query is not None and self.queries is not None:
            raise ValueError("give either query (a string) or queries (a list of strings)")
        return self

    def texts(self) -> tuple[list[str], str]:
        """The query texts and the field they came from (none: like_row alone)."""
        return ([self.query], "query") if self.query is not None else (list(self.queries or ()), "queries")


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
    strength: float | None = Field(None, description="A store's hits: the match strength in [0, 1], the fraction of "
                                                     "the store's impostor scores below this score (None until the "
                                                     "store is calibrated: tbps calibrate --gallery).")


class Threshold(BaseModel):
    value: float = Field(description="Hits score at least this (Eq. 14).")
    source: Literal["store", "bundle", "given"] = Field(
        description="store: the store's own calibration; bundle: the bundle's, measured on its dataset (another "
                    "domain than footage); given: the request's number.")
    stale: bool = Field(description="The store has grown by half or more since it was calibrated.")


class SearchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="One list per query, in query order, best first.")
    took_ms: float
    search: str = Field(description="The search made, in words.")
    request_id: str
    threshold: Threshold | None = Field(None, description="A store's search with min_score: the threshold used.")
    empty: list[str | None] | None = Field(
        None, description="Per query, why its list is empty: the threshold and the best score without it "
                          "(0 hits at >= 3.83 (store threshold); best score 1.75 (cam3, 14:00:07)); else null.")


class EmbedTextRequest(_Body):
    texts: _counted(Query, "texts", BOUNDS.max_queries) = Field(description="Captions.")
    encoding: Literal["json", "base64"] = "json"


class EmbedImageRequest(_Body):
    images: _counted(str, "images", BOUNDS.max_images) = Field(
        description=f"Base64 JPEG or PNG files, each at most {BOUNDS.max_image_side}x{BOUNDS.max_image_side} pixels "
                    "and whole (a damaged or truncated file is refused); the body at most "
                    f"{BOUNDS.max_upload_bytes // 2**20} MiB.")
    encoding: Literal["json", "base64"] = "json"


class EmbedResponse(BaseModel):
    shape: list[int] = Field(description="[N, K, d]")
    dtype: Literal["float32"] = "float32"
    embeddings: list[list[list[float]]] | str = Field(
        description="Nested lists, or base64 of the little-endian float32 bytes in C order.")


class ExplainRequest(_Body):
    query: Query
    rows: _counted(Id, "rows", BOUNDS.max_explain_rows) = Field(description="Gallery rows, e.g. a search's hits.")


class ExplainResponse(BaseModel):
    tokens: list[str]
    token_weights: list[list[float]] = Field(description="(D + P, T): each decoder token's attention over the tokens.")
    heatmaps: list[str] = Field(description="Per row: base64 PNG of its crop with the attention A_avg blended.")


class IngestCropBody(_Body):
    image: str = Field(description=f"Base64 JPEG or PNG, whole, at most {BOUNDS.max_image_side}x"
                                   f"{BOUNDS.max_image_side} pixels; the body at most "
                                   f"{BOUNDS.max_upload_bytes // 2**20} MiB.")
    camera: Name
    time: str | None = Field(None, description=f"When it was seen: {_TIME}.")
    source: Name = "api"
    track: Id | None = None
    box: list[Finite] | None = Field(None, min_length=4, max_length=4, description="x0, y0, x1, y1")


class IngestRequest(_Body):
    crops: _counted(IngestCropBody, "crops", BOUNDS.max_images) = Field(description="Crops to append.")


class IngestResponse(BaseModel):
    rows: list[int]


class DeleteRequest(_Body):
    """Which rows to remove: filters, older_than, or both (one of them is required)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [  # as _a_condition
        {"required": ["filters"], "properties": {"filters": {"type": "object"}}},
        {"required": ["older_than"], "properties": {"older_than": {"type": "string"}}}]})

    filters: Filters | None = Field(None, description="Rows passing them (some field of them not empty).")
    older_than: str | None = Field(None, description="An age: 30d, 12h, 90m (rows without a time: when added).",
                                   json_schema_extra={"pattern": AGE_PATTERN})
    dry_run: bool = Field(False, description="Count what would go (every row too, without everything); remove "
                                             "nothing.")
    everything: bool = Field(False, description="Allow removing every row of the store.")

    @model_validator(mode="after")
    def _a_condition(self) -> DeleteRequest:
        if self.filters is None and self.older_than is None:
            raise ValueError(WORDS["delete_without_condition"])
        return self


class RemovalResponse(BaseModel):
    dry_run: bool
    rows: int
    segments: int
    crops: int
    bytes: int
    cameras: dict[str, int]


class FollowedCamera(BaseModel):
    """A camera ``tbps ingest --follow`` records into the store."""

    status: str = Field(description="live, connecting, reconnecting, finished, failed or stopped")
    last_frame: str | None = Field(None, description="When its last frame was read (ISO-8601 UTC).")
    fps: float | None = None
    reconnects: int | None = None
    error: str | None = Field(None, description="Its last failure (credentials never shown).")


class ReadyResponse(BaseModel):
    """Without the service's key (when it has one): the status only. With it: what is served."""

    status: Literal["ready"]
    rows: int | None = None
    bundle: str | None = Field(None, description="The bundle's fingerprint (12 hex digits).")
    store: bool | None = None
    explain: bool | None = None
    cameras: list[str] | None = None
    followed: dict[str, FollowedCamera] | None = None


class ErrorDetail(BaseModel):
    code: Literal["bad_request", "unauthorized", "not_found", "too_large", "conflict", "unavailable", "internal"]
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


ERRORS: dict[int | str, dict[str, Any]] = {  # the refusals a data endpoint documents
    status: {"model": ErrorResponse, "description": code} for status, code in
    ((400, "bad request"), (401, "no or wrong API key"), (404, "not found"), (409, "conflict"), (413, "too large"),
     (503, "the gallery is not answering, or is gone"))}


def check_limits(limits: Limits) -> None:
    """Refuse limits above :data:`BOUNDS`: the request models would refuse what the settings allow.

    Raises:
        ConfigError: naming the limit.
    """
    for name in ("max_query_chars", "max_queries", "max_k", "max_images", "max_explain_rows"):
        if getattr(limits, name) > getattr(BOUNDS, name):
            raise ConfigError(f"limits.{name} is {getattr(limits, name)}, above {getattr(BOUNDS, name)}, the bound "
                              "of the request bodies: a service may lower its limits, not raise them")


__all__ = ["AGE_PATTERN", "BOUNDS", "LARGEST_ID", "NAME_PATTERN", "DeleteRequest", "ERRORS", "EmbedImageRequest",
           "EmbedResponse", "EmbedTextRequest", "ErrorDetail", "ErrorResponse", "ExplainRequest", "ExplainResponse",
           "Filters", "Hit", "IngestCropBody", "IngestRequest", "IngestResponse", "ReadyResponse", "RemovalResponse",
           "SearchRequest", "SearchResponse", "check_limits"]
