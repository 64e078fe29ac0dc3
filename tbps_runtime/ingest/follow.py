"""Follow cameras: ``tbps ingest --cameras FILE --follow``.

One worker thread per camera (:func:`follow_cameras`), all sharing the command's image tower (one
onnxruntime session serves several threads, and the towers' weights are loaded once) and one store, whose
writes they take in turn. Each worker runs the ordinary pipeline
(:func:`~tbps_runtime.ingest.pipeline.ingest_source`) over its stream, so every window is appended with
the camera's progress in one transaction, as a one-off ingest does; when the stream fails, ends or stalls
(no frame for the camera's ``stall`` seconds) it reconnects after an exponential back-off (1 s doubling to
60 s, back to 1 s after a connection that gave frames). A camera that never connects keeps retrying and
stops no other. A recording (a file, or a stream of known length) continues after its last appended window
with the same tracks, so a reconnection gives the rows an unbroken run would have given.

The calling thread records each camera's state in the store every few seconds
(:meth:`~tbps_runtime.store.base.Store.record_camera_states`: status, last frame, frames/s, reconnects,
last error with credentials redacted), applies each camera's retention at most every
``retention_every`` seconds (as ``tbps gallery prune`` does), and on a stop (:class:`threading.Event`
set, by SIGTERM or Ctrl-C in the command) lets each worker end after its current frame: the windows
appended stay, the one under way is read again by the next run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tbps_runtime.errors import OutputError, StoreError, TbpsError
from tbps_runtime.ingest.cameras import Camera, CameraState
from tbps_runtime.ingest.detectors import Detector
from tbps_runtime.ingest.pipeline import Following, ImageEmbedder, IngestSettings, ingest_source
from tbps_runtime.ingest.sources import STALLED, Frame, SourceError, redact_url
from tbps_runtime.paths import one_line
from tbps_runtime.store.base import Store
from tbps_runtime.store.rows import RowFilter

logger = logging.getLogger(__name__)

BACKOFF = (1.0, 60.0)  # seconds: the first retry's wait, doubling up to this cap
STATE_EVERY = 2.0  # seconds between records of the cameras' states
RETENTION_EVERY = 300.0  # seconds between retention passes


@dataclass
class FollowOptions:
    """The follow loop's timing; tests shorten it."""

    backoff: tuple[float, float] = BACKOFF
    state_every: float = STATE_EVERY
    retention_every: float = RETENTION_EVERY


@dataclass
class _Shared:
    """What the workers share: the store (its writes one at a time), the track numbers, the stop and a fatal
    error."""

    store: Store
    stop: threading.Event
    next_track: Callable[[], int] = field(default=lambda: 0)
    fatal: list[TbpsError] = field(default_factory=list)


def follow_cameras(cameras: list[Camera], store: Store, embedder: ImageEmbedder, detectors: Mapping[str, Detector],
                   settings: Mapping[str, IngestSettings], stop: threading.Event,
                   options: FollowOptions | None = None) -> dict[str, CameraState]:
    """Follow each camera on its own thread until ``stop`` is set (or, for recordings only, until every
    one is finished), inside the store's :meth:`~tbps_runtime.store.base.Store.writing`.

    Returns:
        Each camera's last state.

    Raises:
        StoreError, OutputError: the store failed (a full disk): every worker was stopped; the windows
            appended before are kept.
    """
    options = options or FollowOptions()
    counter = itertools.count(store.max_track() + 1)
    numbers = threading.Lock()

    def next_track() -> int:
        with numbers:
            return next(counter)

    shared = _Shared(_SerialStore(store, threading.Lock()), stop, next_track=next_track)  # type: ignore[arg-type]
    states = {c.name: CameraState(source=one_line(redact_url(c.source))) for c in cameras}
    workers = [threading.Thread(target=_worker, name=f"camera {c.name}", daemon=True,
                                args=(c, shared, embedder, detectors[c.name], settings[c.name], states[c.name],
                                      options)) for c in cameras]
    for worker in workers:
        worker.start()
    try:
        _supervise(cameras, shared, states, workers, options)
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping every camera after its current frame")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        for state in states.values():
            if state.status not in ("finished", "failed"):
                state.status, state.next_retry, state.fps = "stopped", None, 0.0
        _record(shared, states)
    if shared.fatal:
        raise shared.fatal[0]
    return states


def _supervise(cameras: list[Camera], shared: _Shared, states: dict[str, CameraState],
               workers: list[threading.Thread], options: FollowOptions) -> None:
    """Until a stop or every worker's end: record the states, apply retention."""
    frames = {name: 0 for name in states}
    last_tick, next_retention = time.monotonic(), time.monotonic()
    while not shared.stop.is_set() and any(w.is_alive() for w in workers):
        now = time.monotonic()
        if now >= next_retention:
            _retention(cameras, shared)
            next_retention = now + options.retention_every
        elapsed = max(now - last_tick, 1e-6)
        for name, state in states.items():
            state.fps, frames[name] = (state.frames - frames[name]) / elapsed, state.frames
        last_tick = now
        _record(shared, states)
        shared.stop.wait(options.state_every)


def _worker(camera: Camera, shared: _Shared, embedder: ImageEmbedder, detector: Detector, settings: IngestSettings,
            state: CameraState, options: FollowOptions) -> None:
    """Connect, ingest, and on a failure, an end or a stall reconnect after a back-off, until the stop."""

    def saw(frame: Frame) -> None:
        state.status, state.last_frame, state.next_retry = "live", time.time(), None
        state.frames += 1

    following = Following(stop=shared.stop, stall=camera.stall if camera.stream else None, on_frame=saw,
                          tracks=shared.next_track)
    delay = options.backoff[0]
    while not shared.stop.is_set():
        before = state.frames
        failure = _connection(camera, shared, embedder, detector, settings, state, following)
        if failure is None:
            return
        if state.frames > before:
            delay = options.backoff[0]  # it worked for a while: start the back-off again
        state.error, state.status = failure, "reconnecting"
        state.reconnects += 1
        state.next_retry = time.time() + delay
        logger.warning("camera %s: %s; next try in %.1f s (reconnect %d)", camera.name, failure, delay,
                       state.reconnects)
        shared.stop.wait(delay)
        delay = min(options.backoff[1], delay * 2)


def _connection(camera: Camera, shared: _Shared, embedder: ImageEmbedder, detector: Detector,
                settings: IngestSettings, state: CameraState, following: Following) -> str | None:
    """One connection of ``camera``: None when the worker is done (a stop, a recording's end, a camera
    that cannot be followed), else what failed, for the retry message."""
    try:
        report = ingest_source(camera.source, shared.store, embedder, detector, settings, following=following)
    except SourceError as e:
        return f"connect failed: {e}"
    except (StoreError, OutputError) as e:  # the store cannot take rows: every camera would fail
        logger.error("camera %s: %s: stopping every camera", camera.name, e)
        shared.fatal.append(e)
        shared.stop.set()
        return None
    except TbpsError as e:  # settings that cannot work (changed since the last run): no retry mends it
        state.status, state.error = "failed", str(e)
        logger.error("camera %s: %s", camera.name, e)
        return None
    if report.stopped:
        return None
    if report.error is not None:
        return ("stalled" if f" {STALLED} " in report.error else "read failed") + f": {report.error}"
    if not camera.stream or report.skipped:
        state.status = "finished"
        logger.info("camera %s: %s ingested to its end", camera.name, report.source)
        return None
    return f"the stream ended ({report.source}, after {report.frames} sampled frame(s))"


def _retention(cameras: list[Camera], shared: _Shared) -> None:
    """Remove each camera's rows older than its retention, as ``tbps gallery prune --camera`` does."""
    try:
        with_rows = set(shared.store.cameras())  # a camera without rows yet has nothing to prune (delete refuses it)
    except TbpsError as e:
        logger.warning("retention failed (%s); trying again later", e)
        return
    for camera in cameras:
        if camera.retention is None or camera.name not in with_rows:
            continue
        try:
            removal = shared.store.delete(RowFilter(cameras=(camera.name,)), older_than=camera.retention,
                                          everything=True)
        except TbpsError as e:
            logger.warning("camera %s: retention failed (%s); trying again later", camera.name, e)
            continue
        if removal.rows:
            logger.info("camera %s: retention removed %d row(s) older than %.0f h", camera.name, removal.rows,
                        camera.retention / 3600)


def _record(shared: _Shared, states: dict[str, CameraState]) -> None:
    try:
        shared.store.record_camera_states({name: state.to_json() for name, state in states.items()})
    except TbpsError as e:  # the rows matter more than the health record
        logger.warning("could not record the cameras' states: %s", e)


class _SerialStore:
    """A store whose writes (appends, progress, deletions, states) are taken one at a time by the
    workers sharing it; reads go straight through."""

    def __init__(self, store: Store, lock: threading.Lock):
        self._store, self._lock = store, lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def append(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._store.append(*args, **kwargs)

    def new_batch(self) -> Any:
        with self._lock:
            return self._store.new_batch()

    def save_progress(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._store.save_progress(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._store.delete(*args, **kwargs)

    def record_camera_states(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._store.record_camera_states(*args, **kwargs)
