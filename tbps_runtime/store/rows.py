"""What a store keeps beside each embedding, and how queries select rows: the records every
:class:`~tbps_runtime.store.base.Store` implementation (local segments + SQLite, Milvus) shares.

Times are UTC seconds since the epoch (float). :func:`parse_time` reads the
ISO-8601 a user types (``2026-03-02T14:00``, ``...Z``, ``...+01:00``; no zone
means UTC) and :func:`parse_age` ages (``30d``, ``12h``). Every time that enters a store
(CLI, HTTP, container metadata, a catalog) lies in ``[TIME_MIN, TIME_MAX)``,
1900-01-01T00:00Z to 3000-01-01T00:00Z: :func:`check_time` holds the bound, so
:func:`format_time` never meets a year it cannot print. :func:`check_record` is the one
table of what a stored record may hold: every append applies it, and so does every
read of a catalog (which is input like any other file).
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from tbps_runtime.errors import ConfigError

MAX_TEXT = 1024  # a camera or source name longer than this is not a name
TIME_MIN = -2208988800.0  # 1900-01-01T00:00:00Z
TIME_MAX = 32503680000.0  # 3000-01-01T00:00:00Z (exclusive)
TIME_RANGE = "1900-01-01T00:00Z to 3000-01-01T00:00Z"
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class CropRecord:
    """One store row's metadata: where and when the crop was seen.

    ``box`` is (x0, y0, x1, y1) in the source frame's pixels; ``crop`` the JPEG's
    path relative to the store directory; ``offset`` seconds into the source
    (for playing the moment back); ``time`` UTC seconds since the epoch, None when
    the source's start is unknown.
    """

    source: str
    camera: str
    time: float | None = None
    offset: float | None = None
    frame: int | None = None
    box: tuple[float, float, float, float] | None = None
    score: float | None = None  # the detector's
    track: int | None = None
    crop: str | None = None
    identity: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["detector_score"] = record.pop("score")  # "score" is a hit's Eq. 14 score
        record["box"] = None if self.box is None else [round(float(v), 2) for v in self.box]
        record["time_iso"] = None if self.time is None else format_time(self.time)
        return record


@dataclass(frozen=True)
class RowFilter:
    """Which rows a query may return; empty fields select everything. The time range is half-open,
    ``since <= time < until``; rows without a time never pass a time filter."""

    cameras: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    tracks: tuple[int, ...] = ()
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        for name in ("cameras", "sources"):
            for value in getattr(self, name):
                check_name(value, name[:-1])
        for value in self.tracks:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise ConfigError(f"track {value!r} is not a track id (a non-negative integer)")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                check_time(value, name)
        if self.since is not None and self.until is not None and self.until <= self.since:
            since, until = format_time(self.since), format_time(self.until)
            raise ConfigError(f"until ({until}) must be after since ({since})", code="parameter_invalid",
                              names=("until", "since"))

    @property
    def empty(self) -> bool:
        return self == RowFilter()

    def sql(self) -> tuple[str, list[Any]]:
        """A SQL condition over the ``rows`` table's columns and its parameters (``"1"`` when empty)."""
        terms, params = [], []
        for column, values in (("camera", self.cameras), ("source", self.sources), ("track", self.tracks)):
            if values:
                terms.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        if self.since is not None:
            terms.append("time >= ?")
            params.append(float(self.since))
        if self.until is not None:
            terms.append("time < ?")
            params.append(float(self.until))
        return (" AND ".join(terms) or "1"), params

    def describe(self) -> str:
        """The filter in words, for log lines: ``camera in cam1, cam3; 14:00:00Z <= time < 15:00:00Z``."""
        words = [f"{name} in {', '.join(map(str, values))}"
                 for name, values in (("camera", self.cameras), ("source", self.sources), ("track", self.tracks))
                 if values]
        if self.since is not None or self.until is not None:
            low = "" if self.since is None else f"{format_time(self.since)} <= "
            high = "" if self.until is None else f" < {format_time(self.until)}"
            words.append(f"{low}time{high}")
        return "; ".join(words) or "no filter"

    def to_json(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras), "sources": list(self.sources), "tracks": list(self.tracks),
                "since": self.since, "until": self.until}


@dataclass(frozen=True)
class StoreHit:
    """One ranked store row for one query (``row``: the store's row id, as ``Match.row`` is a plain
    gallery's)."""

    rank: int  # 1-based
    score: float  # Eq. 14
    row: int  # the store's row id
    record: CropRecord
    track_rows: int | None = None  # per-track results: how many rows of the track passed the filter

    @property
    def path(self) -> str | None:
        return self.record.crop

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "rank": self.rank, "score": round(self.score, 6), "row": self.row,
                **({} if self.track_rows is None else {"track_rows": self.track_rows})}


@dataclass
class Removal:
    """What a deletion removed."""

    rows: int = 0
    segments: int = 0
    crops: int = 0
    bytes: int = 0
    cameras: dict[str, int] = field(default_factory=dict)  # rows removed per camera

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_time(text: str, option: str = "time") -> float:
    """ISO-8601 date or date-time -> UTC seconds since the epoch; no zone means UTC.

    Raises:
        ConfigError: not such a time.
    """
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a time: use ISO-8601, e.g. 2026-03-02T14:00 (UTC), "
                          "2026-03-02T14:00+01:00 or 2026-03-02") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        seconds = moment.timestamp()
    except (OverflowError, ValueError):  # year 1 or 9999 moved out of range by its zone
        seconds = math.inf
    return check_time(seconds, option, text)


def check_time(seconds: Any, name: str = "time", shown: str | None = None) -> float:
    """A time as UTC seconds, checked to lie in ``[TIME_MIN, TIME_MAX)`` -> that float.

    Raises:
        ConfigError: not a finite number, or outside the range (``shown``: the text the user typed).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not TIME_MIN <= seconds < TIME_MAX:
        raise ConfigError(f"{name} {shown if shown is not None else seconds!r} is not a time in the accepted "
                          f"range, {TIME_RANGE}", code="parameter_invalid", names=(name,))
    return float(seconds)


def check_name(value: Any, what: str = "camera") -> str:
    """A camera or source name, checked where it enters a store or a filter -> the name.

    A name is 1..:data:`MAX_TEXT` characters without control characters or line/paragraph separators,
    so every name stored can be selected again and printed on one line.

    Raises:
        ConfigError: not such a name.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60]) + "..."
        raise ConfigError(f"{what} {shown} is not a name: 1 to {MAX_TEXT} characters",
                          code="parameter_invalid", names=(what,))
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"{what} {value[:60]!r} is not a name: it holds the control character {bad!r}",
                          code="parameter_invalid", names=(what,))
    return value


def check_record(record: Any) -> CropRecord:
    """A record checked where it enters a store, or where a store's catalog is read -> the same record with
    plain Python values (numpy scalars become ``int``/``float``).

    ``source``, ``camera`` (and ``identity``, ``crop`` when given) are names (:func:`check_name`); ``time``
    lies in the accepted range (:func:`check_time`); ``offset``, ``score`` and the four ``box`` values are
    finite numbers; ``frame`` and ``track`` integers in ``[0, 2**63)``. Every field but source and camera
    may be None.

    Raises:
        ConfigError: the first field that breaks its rule, named.
    """
    if not isinstance(record, CropRecord):
        raise ConfigError(f"a store row's record is {type(record).__name__}, not a CropRecord")
    box = record.box
    if box is not None:
        if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4 or None in box:
            raise ConfigError(f"box {box!r} is not four numbers (x0, y0, x1, y1)")
        box = tuple(_finite(value, "box") for value in box)
    return CropRecord(
        source=check_name(record.source, "source"), camera=check_name(record.camera, "camera"),
        time=None if record.time is None else check_time(_finite(record.time, "time"), "time"),
        offset=_finite(record.offset, "offset"), frame=_index(record.frame, "frame"), box=box,
        score=_finite(record.score, "score"), track=_index(record.track, "track"),
        crop=None if record.crop is None else check_name(record.crop, "crop"),
        identity=None if record.identity is None else check_name(record.identity, "identity"))


def _finite(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} {value!r} is not a finite number")
    return float(value)


def _index(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < 2**63:
        raise ConfigError(f"{name} {value!r} is not an integer from 0 to 2**63 - 1")
    return int(value)


def format_time(seconds: float) -> str:
    """UTC seconds since the epoch (in ``[TIME_MIN, TIME_MAX)``) -> ``2026-03-02T14:00:05.300Z``
    (milliseconds)."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_age(text: str) -> float:
    """An age (``older_than``: ``30d``, ``12h``, ``90m``, ``45s``, ``2w``) -> seconds.

    Raises:
        ConfigError: not such an age.
    """
    match = _AGE.match(text)
    if match is None:
        raise ConfigError(f"older_than {text!r} is not an age: a number and a unit, s, m, h, d or w (e.g. 30d, "
                          "12h)", code="parameter_invalid", names=("older_than",))
    return float(match.group(1)) * _AGE_SECONDS[match.group(2)]
