"""The camera file: the cameras ``tbps ingest --cameras FILE [--follow]`` reads, one TOML table each.

.. code-block:: toml

    [[camera]]
    name = "gate"                                  # the rows' camera name (check_name)
    url = "rtsp://user:secret@10.0.0.7/stream1"    # a stream (rtsp, rtsps, rtmp, http, https, udp, tcp, srt)
    fps = 5                                        # frames sampled per second (0: every frame)
    detector = "hog"                               # optional: hog or PATH.onnx (default: the command's)
    timezone = "Europe/Berlin"                     # optional: the zone of a naive start
    start = "2026-03-02T14:00"                     # optional: when a recording's first frame was taken
    retention = "30d"                              # optional: rows older than this are pruned while following
    stall = 20                                     # optional: seconds without a frame before a reopen

    [[camera]]
    name = "hall"
    path = "recordings/hall.mp4"                   # a video file or a folder of frames instead of a url

Every problem is collected, each naming its entry (:class:`CameraFileError`), before anything is
opened or written. A url's credentials never appear in a message (:func:`~tbps_runtime.ingest.sources.shown_source`).
"""

from __future__ import annotations

import math
import time
import tomllib
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tbps_runtime.errors import ConfigError, InputFileNotFoundError
from tbps_runtime.ingest.sources import STREAM_SCHEMES, is_stream, is_url, shown_source, source_name
from tbps_runtime.store.rows import check_name, format_time, parse_age, parse_time

MAX_FPS = 240.0  # as tbps_runtime.ingest.pipeline.MAX_FPS
RETENTION_RANGE = (3600.0, 100 * 366 * 86400.0)  # an hour .. a century
STALL_RANGE = (1.0, 3600.0)
DEFAULT_STALL = 20.0
KEYS = ("name", "url", "path", "fps", "detector", "timezone", "start", "retention", "stall")


@dataclass(frozen=True)
class Camera:
    """One entry of a camera file, checked. ``source`` is the url or path as written (a url may hold
    credentials: show it only through :func:`~tbps_runtime.ingest.sources.shown_source`)."""

    name: str
    source: str
    fps: float | None = 5.0  # None: every frame
    detector: str | None = None  # None: the command's
    start: float | None = None  # UTC seconds of a recording's first frame
    retention: float | None = None  # seconds
    stall: float = DEFAULT_STALL  # seconds without a frame before the stream is reopened

    @property
    def stream(self) -> bool:
        return is_stream(self.source)


class CameraFileError(ConfigError):
    """A camera file with problems: ``problems`` holds one line per problem, each naming its entry."""

    def __init__(self, path: str, problems: list[str]):
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}", code="camera_file_invalid", path=path)
        self.problems = problems


def load_cameras(path: str | Path) -> list[Camera]:
    """The cameras of the TOML file at ``path``, in file order.

    Raises:
        InputFileNotFoundError: no such file.
        CameraFileError: the file is not TOML, or an entry is wrong (every problem, one line each).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"no camera file at {path}")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CameraFileError(str(path), [f"{path}: not a TOML file ({e})"]) from None
    problems = [f"{path}: unknown top-level key {key!r} (a camera file holds [[camera]] tables)"
                for key in document if key != "camera"]
    entries = document.get("camera", [])
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        problems.append(f"{path}: no [[camera]] tables")
        raise CameraFileError(str(path), problems)
    cameras, seen, sources = [], set(), set()
    for number, entry in enumerate(entries, 1):
        label = _label(entry, number)
        found: list[str] = []
        camera = _camera(entry, path.parent, found)
        name = entry.get("name")
        if isinstance(name, str) and name in seen:
            found.append(f"the name {name!r} is used by an earlier camera: names must be unique")
        if camera is not None and source_name(camera.source) in sources:
            found.append(f"{shown_source(camera.source)} is read by an earlier camera: give each source once")
        problems += [f"{path}: {label}: {problem}" for problem in found]
        if isinstance(name, str):
            seen.add(name)
        if camera is not None and not found:
            sources.add(source_name(camera.source))
            cameras.append(camera)
    if problems:
        raise CameraFileError(str(path), problems)
    return cameras


def _label(entry: dict[str, Any], number: int) -> str:
    name = entry.get("name")
    if isinstance(name, str) and name and len(name) <= 60 and name.isprintable():
        return f"camera {number} ({name!r})"
    return f"camera {number}"


def _camera(entry: dict[str, Any], folder: Path, problems: list[str]) -> Camera | None:
    """The checked camera of ``entry``, its problems appended to ``problems`` (None when it has any)."""
    for key in entry:
        if key not in KEYS:
            problems.append(f"unknown key {key!r} (known: {', '.join(KEYS)})")
    name = _checked(problems, lambda: check_name(entry.get("name"), "name"))
    source = _source(entry, folder, problems)
    fps = _number(entry, "fps", 5.0, (0.0, MAX_FPS), problems, "0 (every frame) to 240 frames per second")
    stall = _number(entry, "stall", DEFAULT_STALL, STALL_RANGE, problems, "1 to 3600 seconds")
    detector = entry.get("detector")
    if detector is not None and (not isinstance(detector, str) or not detector.strip()):
        problems.append(f"detector {detector!r} is not hog or a path to an .onnx file")
    retention = None
    if "retention" in entry:
        text = entry["retention"]
        retention = _checked([], lambda: parse_age(text)) if isinstance(text, str) else None
        if retention is None:
            problems.append(f"retention {text!r} is not an age: a number and a unit, s, m, h, d or w (e.g. 30d)")
        elif retention is not None and not RETENTION_RANGE[0] <= retention <= RETENTION_RANGE[1]:
            problems.append(f"retention {text!r} is outside 1h .. 100 years: rows would be pruned as soon as they "
                            "are written, or kept for ever (leave retention out)")
    start = _start(entry, problems)
    if problems:
        return None
    return Camera(name, source, fps or None, detector, start, retention, stall)


def _source(entry: dict[str, Any], folder: Path, problems: list[str]) -> str | None:
    """The entry's url or path: a url in a stream scheme, or a path (relative to the camera file's folder)
    that exists."""
    url, path = entry.get("url"), entry.get("path")
    if (url is None) == (path is None):
        problems.append("give exactly one of url (a stream) or path (a video file or folder of frames)")
        return None
    if url is not None:
        if not isinstance(url, str) or not is_stream(url):
            shown = shown_source(url) if isinstance(url, str) else repr(url)
            problems.append(f"url {shown} is not a stream: it must start with {', '.join(STREAM_SCHEMES)}"
                            + (" (a file is given as path = ...)" if isinstance(url, str) and not is_url(url) else ""))
            return None
        return url
    if not isinstance(path, str) or not path or "\x00" in path:
        problems.append(f"path {path!r} is not a path")
        return None
    if is_url(path):
        problems.append(f"path {shown_source(path)} is a url: give it as url = ...")
        return None
    full = Path(path) if Path(path).is_absolute() else folder / path
    if not full.exists():
        problems.append(f"path {shown_source(str(full))} does not exist")
        return None
    return str(full)


def _number(entry: dict[str, Any], key: str, default: float, bounds: tuple[float, float], problems: list[str],
            expected: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not bounds[0] <= value <= bounds[1]:
        problems.append(f"{key} {value!r} is absurd: give {expected}")
        return default
    return float(value)


def _start(entry: dict[str, Any], problems: list[str]) -> float | None:
    """The entry's start as UTC seconds; a naive one is read in its ``timezone`` (default UTC)."""
    zone = None
    if "timezone" in entry:
        try:
            zone = ZoneInfo(entry["timezone"]) if isinstance(entry["timezone"], str) else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        if zone is None:
            problems.append(f"timezone {entry['timezone']!r} is not a time zone name (e.g. Europe/Berlin, UTC)")
            return None
    text = entry.get("start")
    if text is None:
        return None
    if isinstance(text, datetime):  # TOML's own date-times
        text = text.isoformat()
    if not isinstance(text, str):
        problems.append(f"start {text!r} is not a time: use ISO-8601, e.g. 2026-03-02T14:00")
        return None
    if zone is not None:
        try:
            moment = datetime.fromisoformat(text.strip())
            if moment.tzinfo is None:
                text = moment.replace(tzinfo=zone).isoformat()
        except ValueError:
            pass  # parse_time words it
    return _checked(problems, lambda: parse_time(text, "start"))


def _checked(problems: list[str], check: Any) -> Any:
    """``check()``, or None with its ConfigError's message appended to ``problems``."""
    try:
        return check()
    except ConfigError as e:
        problems.append(str(e))
        return None


@dataclass
class CameraState:
    """One followed camera, as :meth:`~tbps_runtime.store.base.Store.camera_states` records it."""

    status: str = "connecting"  # connecting, live, reconnecting, finished (a recording's end), failed, stopped
    last_frame: float | None = None  # wall-clock UTC seconds when its last frame was read
    fps: float = 0.0  # sampled frames per second read, over the last state interval
    frames: int = 0  # sampled frames read since the command started
    reconnects: int = 0
    error: str | None = None  # the last failure, credentials redacted
    next_retry: float | None = None  # wall-clock UTC seconds of the next connection attempt
    source: str = ""  # the url (credentials redacted) or path

    def to_json(self) -> dict[str, Any]:
        state = asdict(self)
        state["last_frame_iso"] = None if self.last_frame is None else format_time(self.last_frame)
        state["updated"] = time.time()
        return state


STALE_AFTER = 30.0  # seconds: a state a running follow loop would have recorded again by then


def state_status(state: Mapping[str, Any], now: float | None = None) -> str:
    """A recorded state's status, ``stopped`` when it says live (connecting, reconnecting) but no follow loop
    has recorded it for :data:`STALE_AFTER` seconds (the command died without recording its stop)."""
    status = str(state.get("status", "unknown"))
    updated = state.get("updated")
    if status in ("live", "connecting", "reconnecting") and isinstance(updated, (int, float)) \
            and (now or time.time()) - updated > STALE_AFTER:
        return "stopped"
    return status


def describe_state(state: Mapping[str, Any], now: float | None = None) -> str:
    """One line of a recorded camera state, for people: status, last frame, frames/s, reconnects, error."""
    now = now or time.time()
    status = state_status(state, now)
    parts = [status if status == state.get("status") else f"{status} (not updated since "
             f"{format_time(float(state['updated']))}: is tbps ingest --follow running?)"]
    last = state.get("last_frame")
    parts.append("no frame yet" if not isinstance(last, (int, float)) else
                 f"last frame {format_time(float(last))} ({max(0.0, now - last):.0f} s ago)")
    if status == "live":
        parts.append(f"{float(state.get('fps') or 0):.1f} frames/s")
    parts.append(f"{int(state.get('reconnects') or 0)} reconnect(s)")
    if state.get("error"):
        parts.append(f"last error: {state['error']}")
    return ", ".join(parts)
