"""Footage to a searchable store: source -> sampled frames -> detector -> tracker -> best crops per track
-> image tower -> an appended segment, window by window.

Every ``window`` seconds of source time the crops kept so far are embedded and
appended to the store in one transaction together with the source's progress
(the last frame done). A crash or Ctrl-C loses at most the current window; the
same command continues after the last appended frame. A source ingested to its
end is skipped when given again; one ingested with other settings is refused
(delete its rows first: ``tbps gallery delete --source``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from tbps_runtime.errors import ConfigError, DataError
from tbps_runtime.ingest.detectors import Detector
from tbps_runtime.ingest.sources import SourceError, camera_name, open_source, source_name
from tbps_runtime.ingest.tracking import Candidate, TrackKeeper
from tbps_runtime.store.base import Store
from tbps_runtime.store.rows import CropRecord

logger = logging.getLogger(__name__)

MAX_FPS = 240.0
_JPEG_QUALITY = 90


class ImageEmbedder(Protocol):
    def embed_images(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True)
class IngestSettings:
    """How a source is turned into rows; a resumed run must use the same (``fps``, ``keep``, ``window``,
    the detector and the camera) as the run it continues."""

    detector: str
    fps: float | None = 5.0  # frames sampled per second of source time; None: every frame
    camera: str | None = None  # default: the source's name
    start: float | None = None  # UTC seconds of the source's first frame; default: its creation time
    keep: int = 2  # crops kept per track per window
    window: float = 10.0  # seconds of source time per appended batch
    batch_size: int = 32

    def __post_init__(self) -> None:
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
    resumed_after: int | None = None  # the frame the run continued after
    skipped: bool = False  # ingested to its end before
    error: str | None = None
    start_time: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ingest_source(source: str, store: Store, embedder: ImageEmbedder, detector: Detector,
                  settings: IngestSettings, progress: bool = False) -> SourceReport:
    """Ingest one source into ``store`` (inside its :meth:`~tbps_runtime.store.base.Store.writing`).

    A source that fails part-way keeps the rows appended so far; the report carries the error.

    Raises:
        ConfigError: the source was ingested before with other settings.
        SourceError: the source cannot be opened.
    """
    started = time.perf_counter()
    camera = settings.camera or camera_name(source)
    opened_as, source = source, source_name(source)  # rows, progress and messages never hold credentials
    report = SourceReport(source, camera)
    state = _saved_state(store, source)
    identity = settings.identity(camera)
    if state is not None and state.get("settings") != identity:
        raise ConfigError(f"{source} was ingested into {store.directory} with other settings "
                          f"({_differences(state.get('settings'), identity)}): use the same ones to continue, or "
                          f"delete its rows first (the source {source!r})", code="ingest_settings_changed",
                          source=source, directory=str(store.directory),
                          differences=_differences(state.get("settings"), identity))
    if state is not None and state.get("finished"):
        report.skipped = True
        logger.info("%s: already ingested to its end; skipped", source)
        return report
    after = int(state["frame"]) if state is not None else -1
    report.resumed_after = after if after >= 0 else None
    opened = open_source(opened_as, settings.fps)
    report.start_time = settings.start if settings.start is not None else opened.creation_time()
    if report.start_time is None:
        report.notes.append("no start time given and none in the file: its rows have no time (time filters "
                            "skip them); give the source's start time")
        logger.warning("%s: %s", source, report.notes[-1])
    rate = settings.fps or opened.frame_rate or 10.0
    keeper = TrackKeeper(rate, store.max_track() + 1, settings.keep)
    window_end = settings.window
    last_frame = after
    bar = _progress_bar(progress, source, opened.frame_count)
    try:
        for frame in opened.frames(settings.fps, after):
            keeper.update(frame.index, frame.offset, frame.image, detector.detect(frame.image, frame.index))
            report.frames += 1
            last_frame = frame.index
            if bar is not None:
                bar.update(frame.index + 1 - bar.n)
            if frame.offset >= window_end:
                report.crops += _append(store, embedder, keeper.take(), source, camera, report.start_time,
                                        settings, identity, last_frame, finished=False)
                window_end = (frame.offset // settings.window + 1) * settings.window
    except SourceError as e:
        report.error = str(e)
    except KeyboardInterrupt:
        logger.warning("%s: interrupted after frame %d; rows up to the last appended window are kept: run the "
                       "same command to continue", source, last_frame)
        raise
    finally:
        if bar is not None:
            bar.close()
    # The source's end (or its failure): the last window, and whether a rerun has anything left to do.
    report.crops += _append(store, embedder, keeper.take(), source, camera, report.start_time, settings, identity,
                            last_frame, finished=report.error is None)
    report.detections, report.tracks = keeper.detections, len(keeper.tracks_seen)
    report.seconds = time.perf_counter() - started
    return report


def _append(store: Store, embedder: ImageEmbedder, candidates: list[Candidate], source: str, camera: str,
            start_time: float | None, settings: IngestSettings, identity: dict[str, Any], last_frame: int,
            finished: bool) -> int:
    """Embed and append one window's crops with the source's progress, in one transaction."""
    state = json.dumps({"settings": identity, "frame": last_frame, "finished": finished})
    if not candidates:
        store.save_progress({source: state})
        return 0
    batch, folder = store.new_batch()
    records = []
    for i, candidate in enumerate(candidates):
        name = f"{i}.jpg"
        Image.fromarray(candidate.image).save(folder / name, quality=_JPEG_QUALITY)
        records.append(CropRecord(
            source=source, camera=camera,
            time=None if start_time is None else start_time + candidate.offset,
            offset=candidate.offset, frame=candidate.frame, box=candidate.box, score=candidate.score,
            track=candidate.track, crop=f"{batch}/{name}"))
    embeddings = embedder.embed_images([c.image for c in candidates], batch_size=settings.batch_size)
    store.append(embeddings, records, crops=batch, progress={source: state})
    return len(records)


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


def _progress_bar(enabled: bool, source: str, total: int | None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=camera_name(source), unit="frame", leave=False)
