"""Footage to a searchable store: source -> sampled frames -> detector -> tracker -> best crops per track
-> image tower -> an appended segment, window by window.

Every ``window`` seconds of source time the crops kept so far are embedded and
appended to the store in one transaction together with the source's progress
(the last frame done). A crash or Ctrl-C loses at most the current window; the
same command continues after the last appended frame; so does it after the
store failed (a full disk), which keeps every window committed before. A source
is keyed by its resolved path (a stream by its URL without credentials), so one
ingested to its end is skipped when given again under any spelling; one ingested
with other settings is refused (delete its rows first: ``tbps gallery delete
--source``). Every row's time lies in the range a store accepts
(:data:`~tbps_runtime.store.rows.TIME_RANGE`): a start that would date rows
past it is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from tbps_runtime.errors import ConfigError, DataError, OutputError, StoreError
from tbps_runtime.ingest.detectors import Detector
from tbps_runtime.ingest.sources import (Frame, SourceError, camera_name, is_stream, is_url, open_source,
                                         source_name)
from tbps_runtime.ingest.tracking import Candidate, TrackKeeper
from tbps_runtime.outputs import is_disk_full
from tbps_runtime.store.base import Store
from tbps_runtime.store.rows import TIME_MAX, TIME_RANGE, CropRecord, check_name, check_time, format_time

logger = logging.getLogger(__name__)

MAX_FPS = 240.0
_JPEG_QUALITY = 90
PACE_WINDOW = 10.0  # wall seconds over which a live source's processing rate is measured
_BEHIND = 0.9  # processed below this share of the source's own rate: falling behind (jitter stays above)


class ImageEmbedder(Protocol):
    def embed_images(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class IngestSettings:
    """How a source is turned into rows; a resumed run must use the same (``fps``, ``keep``, ``window``,
    the detector and the camera) as the run it continues."""

    detector: str
    fps: float | None = 5.0  # frames sampled per second of source time; None: every frame
    camera: str | None = None  # default: the source's name (camera_name); a name check_name accepts
    start: float | None = None  # UTC seconds of the source's first frame (check_time); default: its creation time
    keep: int = 2  # crops kept per track per window
    window: float = 10.0  # seconds of source time per appended batch
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.camera is not None:
            check_name(self.camera, "camera")
        if self.start is not None:
            check_time(self.start, "start")
        if self.fps is not None and not 0 < self.fps <= MAX_FPS:
            raise ConfigError(f"fps must be in (0, {MAX_FPS:g}], got {self.fps}", code="parameter_invalid",
                              names=("fps",))
        if not 0 < self.window <= 86400:
            raise ConfigError(f"window must be in (0, 86400] seconds, got {self.window}", code="parameter_invalid",
                              names=("window",))
        if self.keep < 1 or self.batch_size < 1:
            raise ConfigError(f"keep and batch_size must be at least 1, got {self.keep} and {self.batch_size}",
                              code="parameter_invalid", names=("keep", "batch_size"))

    def identity(self, camera: str) -> dict[str, Any]:
        """What must match between a run and the one it resumes."""
        return {"detector": self.detector, "fps": self.fps, "camera": camera, "keep": self.keep,
                "window": self.window}


@dataclass
class SourceReport:
    """What one source gave."""

    source: str
    camera: str
    frames: int = 0  # sampled frames processed in this run
    detections: int = 0
    tracks: int = 0
    crops: int = 0  # rows appended in this run
    seconds: float = 0.0
    video_seconds: float = 0.0  # source time the sampled frames of this run span
    resumed_after: int | None = None  # the frame the run continued after
    skipped: bool = False  # ingested to its end before
    error: str | None = None
    start_time: float | None = None
    notes: list[str] = field(default_factory=list)
    stopped: bool = False  # a follow loop's stop ended it (a recording's window under way was not appended)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Following:
    """How :func:`ingest_source` runs for the follow loop (:mod:`tbps_runtime.ingest.follow`), one per
    camera, kept across its connections.

    A followed stream's end is never its finish (the next connection continues it). A source of known
    length (a recording, also served over HTTP) continues after the last appended window, whose tracker
    state :attr:`snapshot` keeps, so a reconnection gives the rows an unbroken run would; a failure there
    drops the window under way (the next connection reads it again). A live stream (no length) starts a
    new timeline on each connection, dated from when it was opened, and keeps its partial window on a
    failure (its frames never come again)."""

    stop: threading.Event = field(default_factory=threading.Event)  # set: end after the current frame
    stall: float | None = None  # seconds without a frame before the connection is given up as stalled
    on_frame: Callable[[Frame], None] | None = None
    tracks: Callable[[], int] | None = None  # numbers new tracks store-wide (several cameras in one store)
    snapshot: tuple[int, Any] | None = None  # (last frame appended, the tracker's state after it)
    behind: bool = False  # the camera was said to fall behind real time: once per camera, not per connection


def ingest_source(source: str, store: Store, embedder: ImageEmbedder, detector: Detector,
                  settings: IngestSettings, progress: bool = False,
                  following: Following | None = None) -> SourceReport:
    """Ingest one source into ``store`` (inside its :meth:`~tbps_runtime.store.base.Store.writing`).

    The source is keyed, and its rows named, by :func:`~tbps_runtime.ingest.sources.source_name` (a
    file's resolved path, a stream's URL without credentials), so the same file given under another
    spelling is the same source. A source that fails part-way keeps the rows appended so far; the report
    carries the error.

    Raises:
        ConfigError: the source was ingested before with other settings, or its rows would be dated
            outside the accepted range (:data:`~tbps_runtime.store.rows.TIME_RANGE`).
        SourceError: the source cannot be opened.
        StoreError: the store failed while writing (a full disk): the rows of the windows appended before
            are kept, and ingesting again continues after them.
    """
    started = time.perf_counter()
    camera = settings.camera or camera_name(source)
    opened_as, source = source, _progress_key(store, source)  # rows, progress and messages: never credentials
    report = SourceReport(source, camera)
    state = _saved_state(store, source)
    identity = settings.identity(camera)
    if state is not None and state.get("settings") != identity:
        raise ConfigError(f"{source} was ingested into {store.directory} with other settings "
                          f"({_differences(state.get('settings'), identity)}): use the same ones to continue, or "
                          f"delete its rows first (the source {source!r})", code="ingest_settings_changed",
                          source=source, directory=str(store.directory),
                          differences=_differences(state.get("settings"), identity))
    if state is not None and state.get("finished") and not (following is not None and is_stream(opened_as)):
        report.skipped = True
        logger.info("%s: already ingested to its end; skipped", source)
        return report
    after = int(state["frame"]) if state is not None else -1
    opened = open_source(opened_as, settings.fps)
    count, frame_rate = opened.frame_count, opened.frame_rate  # read now: decoding closes the container
    live = following is not None and opened.stream_input and count is None
    if live:
        after = -1  # a new connection of a live stream: its frames are all new
    report.resumed_after = after if after >= 0 else None
    report.start_time = _start_time(settings.start, opened, source)
    if report.start_time is None:
        report.notes.append("no start time given and none in the file: its rows have no time (time filters "
                            "skip them); give the source's start time")
        logger.warning("%s: %s", source, report.notes[-1])
    rate = settings.fps or opened.frame_rate or 10.0
    keeper = TrackKeeper(rate, store.max_track() + 1, settings.keep,
                         numbering=None if following is None else following.tracks)
    if following is not None and not live and following.snapshot is not None and following.snapshot[0] == after:
        keeper.restore(following.snapshot[1])  # the same tracks as before the connection failed
    window_end = None  # the end of the window under way: after the first frame's (a resumed run's too)
    last_frame = after
    bar = _progress_bar(progress, source, _sampled(count, frame_rate, settings.fps),
                        _sampled(after + 1, frame_rate, settings.fps) or 0)  # sampled frames, as the summary
    pace = _Pace(camera, settings.fps, 1.0 / min(r for r in (settings.fps, frame_rate, rate) if r), following,
                 watch=following is not None or is_stream(opened_as))
    reading = (opened.frames(settings.fps, after) if following is None else
               opened.frames(settings.fps, after, stall=following.stall, cancel=following.stop))
    try:
        with contextlib.closing(reading) as frames:
            for frame in frames:  # closing stops the decoder on any error
                keeper.update(frame.index, frame.offset, frame.image, detector.detect(frame.image, frame.index))
                report.frames += 1
                last_frame = frame.index
                pace.frame(frame.offset)
                if window_end is None:
                    window_end = (frame.offset // settings.window + 1) * settings.window
                if following is not None and following.on_frame is not None:
                    following.on_frame(frame)
                if bar is not None:
                    bar.update(1)
                if frame.offset >= window_end:
                    report.crops += _append(store, embedder, keeper.take(), source, camera, report.start_time,
                                            settings, identity, last_frame, finished=False)
                    window_end = (frame.offset // settings.window + 1) * settings.window
                    if following is not None and not live:
                        following.snapshot = (last_frame, keeper.snapshot())
        if following is not None and not live and opened.stream_input and report.frames:
            report.error = _ended_early(count, frame_rate, frame.offset, settings.fps, source)
        if bar is not None and report.error is None and not (following is not None and following.stop.is_set()):
            bar.total = bar.n  # the source's end is 100 %, whatever its header estimated
            bar.refresh()
    except SourceError as e:
        report.error = str(e)
    except KeyboardInterrupt:
        logger.warning("%s: interrupted after frame %d; rows up to the last appended window are kept: run the "
                       "same command to continue", source, last_frame)
        raise
    finally:
        if bar is not None:
            bar.close()
    report.detections, report.tracks, report.video_seconds = keeper.detections, len(keeper.tracks_seen), pace.span
    report.seconds = time.perf_counter() - started
    if following is not None:
        report.stopped = following.stop.is_set()
        if not live and (report.stopped or report.error is not None):
            return report  # the window under way is read again by the next connection or run
    # The source's end (or its failure): the last window, and whether a rerun has anything left to do. A
    # followed stream's end is not its finish: the next connection continues it.
    finished = report.error is None and not (following is not None and opened.stream_input)
    report.crops += _append(store, embedder, keeper.take(), source, camera, report.start_time, settings, identity,
                            last_frame, finished=finished)
    report.detections, report.tracks = keeper.detections, len(keeper.tracks_seen)
    report.seconds = time.perf_counter() - started
    return report


def _ended_early(count: int | None, rate: float | None, offset: float, fps: float | None, source: str
                 ) -> str | None:
    """Why a followed stream of ``count`` frames at ``rate`` that ended at ``offset`` seconds was cut short
    (a server that went away may end it as if it were whole), or None when it reached its end."""
    if not count or not rate:
        return None
    length = count / rate
    if offset + 1.0 / (fps or rate) + 2.0 / rate >= length:
        return None
    return f"{source} ended after {offset:.1f} s of its {length:.1f} s (the connection was cut)"


def _progress_key(store: Store, source: str) -> str:
    """The key of ``source`` in ``store``: its :func:`~tbps_runtime.ingest.sources.source_name`, or the
    spelling a store made before sources were keyed by resolved path holds the same file under (the path as
    it was typed then, resolved against the current directory now), so its rows and progress stay one
    source."""
    key = source_name(source)
    if is_url(source) or store.progress(key) is not None:
        return key
    for old in store.all_progress():
        if old != key and not is_url(old) and _resolved(old) == key:
            return old
    return key


def _resolved(key: str) -> str | None:
    try:
        return source_name(key)
    except (ConfigError, OSError, ValueError):  # too long, or not a path this system can resolve
        return None


def _start_time(given: float | None, opened: Any, source: str) -> float | None:
    """When the source's first frame was taken: ``given``, or the source's own creation time. Every row of
    the source must be dated inside :data:`~tbps_runtime.store.rows.TIME_RANGE`: a ``given`` start that
    dates the source's stated length (frames / rate) past its end is refused; a creation time that would
    is ignored. A source of unknown length (a stream) is checked window by window (:func:`_row_time`).

    Raises:
        ConfigError: ``given`` plus the source's length runs past the range.
    """
    count, rate = opened.frame_count, opened.frame_rate
    length = count / rate if count and rate else 0.0
    if given is not None:
        if given + length >= TIME_MAX:
            raise ConfigError(f"start {format_time(given)} plus the {length:.1f} s of {source} ends after "
                              f"{format_time(TIME_MAX)}, past the times a store accepts ({TIME_RANGE}): give an "
                              "earlier start", code="parameter_invalid", names=("start",))
        return given
    start = opened.creation_time()
    if start is not None and start + length >= TIME_MAX:
        logger.warning("%s: ignoring its creation time %s: with its %.1f s it ends after %s, past the times a store "
                       "accepts", source, format_time(start), length, format_time(TIME_MAX))
        return None
    return start


def _append(store: Store, embedder: ImageEmbedder, candidates: list[Candidate], source: str, camera: str,
            start_time: float | None, settings: IngestSettings, identity: dict[str, Any], last_frame: int,
            finished: bool) -> int:
    """Embed and append one window's crops with the source's progress, in one transaction.

    Raises:
        ConfigError: a crop would be dated past the accepted range (nothing of this window is written).
        StoreError: the store or its crop folder failed to take them (a full disk); the window is not kept.
    """
    state = json.dumps({"settings": identity, "frame": last_frame, "finished": finished})
    times = [None if start_time is None else _row_time(start_time, c, source) for c in candidates]
    with _store_failures(store):
        if not candidates:
            store.save_progress({source: state})
            return 0
        batch, folder = store.new_batch()
        try:
            records = []
            for i, (candidate, when) in enumerate(zip(candidates, times)):
                name = f"{i}.jpg"
                Image.fromarray(candidate.image).save(folder / name, quality=_JPEG_QUALITY)
                records.append(CropRecord(
                    source=source, camera=camera, time=when, offset=candidate.offset, frame=candidate.frame,
                    box=candidate.box, score=candidate.score, track=candidate.track, crop=f"{batch}/{name}"))
            embeddings = embedder.embed_images([c.image for c in candidates], batch_size=settings.batch_size)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # no row names it yet; on a full disk, room again
            raise
        try:
            store.append(embeddings, records, crops=batch, progress={source: state})
        except (StoreError, OutputError, ConfigError):  # refused or failed as a whole: nothing names the crops
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return len(records)


def _row_time(start: float, candidate: Candidate, source: str) -> float:
    """``start`` plus the crop's offset, checked to lie in the accepted range.

    Raises:
        ConfigError: it does not (a stream, or a file longer than it says, running past the range's end).
    """
    when = start + candidate.offset
    if not when < TIME_MAX:
        raise ConfigError(f"start {format_time(start)} dates frame {candidate.frame} of {source}, "
                          f"{candidate.offset:.1f} s in, after {format_time(TIME_MAX)}, past the times a store "
                          f"accepts ({TIME_RANGE}): give an earlier start", code="parameter_invalid",
                          names=("start",))
    return check_time(when, "time")


@contextlib.contextmanager
def _store_failures(store: Store) -> Iterator[None]:
    """An operating-system error met while writing into the store (its crops, its files) as a StoreError
    that says the window was not kept and what to do."""
    try:
        yield
    except OSError as e:
        full = is_disk_full(e)
        raise StoreError(f"writing into the store {store.directory} failed ({e.strerror or e}): "
                         + ("free some space" if full else "check the disk and the permissions of the store")
                         + ", then ingest again: it continues after the last appended window",
                         directory=str(store.directory)) from e


def _saved_state(store: Store, source: str) -> dict[str, Any] | None:
    text = store.progress(source)
    if text is None:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("frame"), int):
        raise DataError(f"the saved progress of {source} in {store.directory} is damaged: delete its rows (the "
                        f"source {source!r}) and ingest it again", code="ingest_progress_damaged", source=source,
                        directory=str(store.directory))
    return state


def _differences(before: Any, now: dict[str, Any]) -> str:
    if not isinstance(before, dict):
        return "unknown settings"
    return ", ".join(f"{key} {before.get(key)!r} then, {value!r} now" for key, value in now.items()
                     if before.get(key) != value)


def _progress_bar(enabled: bool, source: str, total: int | None, initial: int = 0) -> Any:
    """A bar of sampled frames (the unit of the summary), ``initial`` of them done before a resumed run."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=camera_name(source), unit="frame", leave=False)


def _sampled(count: int | None, rate: float | None, fps: float | None) -> int | None:
    """How many of a source's first ``count`` frames at ``rate`` frames/s sampling at ``fps`` keeps (one per
    1/fps s slot: :func:`~tbps_runtime.ingest.sources.sample_bucket`); None when ``count`` is unknown."""
    if count is None or count <= 0 or fps is None or not rate:
        return count
    return min(count, int((count - 1) * fps / rate + 1e-6) + 1)


class _Pace:
    """The source time a run's sampled frames span (:attr:`span`), and whether a live source (a stream, or
    any followed camera: ``watch``) is processed as fast as it plays: sampled frames processed per wall
    second against those it gives per second of its own time, over windows of :data:`PACE_WINDOW` wall
    seconds. Falling behind, it says so once per camera: a live camera's frames queue up, then are lost."""

    def __init__(self, camera: str, fps: float | None, slot: float, following: Following | None, watch: bool):
        self.camera, self.fps, self.slot, self.following, self.watch = camera, fps, slot, following, watch
        self.said = following.behind if following is not None else False
        self.first: float | None = None  # the run's first offset
        self.span = 0.0
        self.start: tuple[float, float] | None = None  # (wall time, source offset) where the window began
        self.frames = 0

    def frame(self, offset: float) -> None:
        """Count a sampled frame at ``offset`` seconds of source time, processed now."""
        self.first = offset if self.first is None else self.first
        self.span = offset - self.first + self.slot  # a sampled frame stands for its 1/fps s slot
        if not self.watch or self.said:
            return
        now = time.monotonic()
        if self.start is None:
            self.start = (now, offset)
            return
        self.frames += 1
        elapsed, played = now - self.start[0], offset - self.start[1]
        if elapsed < PACE_WINDOW:
            return
        achieved, needed = self.frames / elapsed, self.frames / played if played > 0 else 0.0
        if achieved < needed * _BEHIND:
            self._say(achieved, needed)
        self.start, self.frames = (now, offset), 0

    def _say(self, achieved: float, needed: float) -> None:
        self.said = True
        if self.following is not None:
            self.following.behind = True
        logger.warning("camera %s falls behind real time: %.1f sampled frames/s processed, %.1f needed (%s): "
                       "lower its fps (--fps, or fps in the camera file), use a lighter detector, or give it more "
                       "threads (--threads)", self.camera, achieved, needed,
                       "every frame" if self.fps is None else f"{self.fps:g} per second of video")
