"""Frames in: video files and network streams through PyAV (FFmpeg), and folders of frame images.

A source yields :class:`Frame` s, sampled to at most ``fps`` per second of the
source's own time, decoded on a worker thread (PyAV releases the GIL while it
decodes, so the towers keep the other core busy). Sampling depends only on each
frame's presentation time, so a resumed run keeps exactly the frames the
interrupted one would have kept.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_QUEUE_FRAMES = 16  # decoded frames waiting for the detector: bounded, so decoding never outruns memory
_OPEN_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Frame:
    """One sampled frame: ``image`` (H, W, 3) uint8 RGB, its 0-based ``index`` in the source and its
    ``offset`` in seconds from the source's first frame."""

    index: int
    offset: float
    image: np.ndarray


class SourceError(DataError):
    """A source that could not be opened, or that failed part-way (the frames before are kept)."""


def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_SCHEMES)


_SECRET_PARAMETERS = {"password", "passwd", "pass", "pwd", "token", "access_token", "key", "apikey", "api_key",
                      "auth", "secret", "signature", "sig", "credential", "credentials"}


def source_name(source: str) -> str:
    """How a source is recorded and reported: a stream's URL without credentials (``user:pass@`` and
    query parameters such as ``token=``); a file's or folder's path as given."""
    if not is_stream(source):
        return source
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(source)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                           if k.lower() not in _SECRET_PARAMETERS])
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:  # not a parseable URL: keep only what precedes any credentials
        return source.split("://", 1)[0] + "://" + source.split("@")[-1].split("?")[0]


def camera_name(source: str) -> str:
    """The default camera name of a source: a file's or folder's name without suffix, a stream's host and path."""
    if is_stream(source):
        rest = source.split("://", 1)[1].split("@")[-1]  # never keep credentials in a name
        return re.sub(r"[^A-Za-z0-9._:/-]+", "_", rest.split("?")[0]).strip("/") or "stream"
    path = Path(source)
    return (path.stem if path.suffix else path.name) or "camera"


def sample_bucket(offset: float, fps: float | None) -> int:
    """Which 1/fps slot of source time a frame falls in; the first frame of each slot is kept."""
    return -1 if fps is None else int(math.floor(offset * fps + 1e-6))


class VideoSource:
    """A video file or a stream, opened with PyAV."""

    def __init__(self, source: str):
        self.source = source_name(source)  # in messages and records: never a stream's credentials
        self._raw = source
        self.stream_input = is_stream(source)
        if not self.stream_input and not Path(source).is_file():
            raise InputFileNotFoundError(f"no such video: {source}")
        av = _import_av()
        options = {"rw_timeout": str(int(_READ_TIMEOUT_S * 1e6))} if self.stream_input else {}
        try:
            self._container = av.open(source, options=options, timeout=(_OPEN_TIMEOUT_S, _READ_TIMEOUT_S))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise SourceError(f"cannot open {self.source}: {_reason(e, source, self.source)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{self.source} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.opened_at = time.time()

    @property
    def frame_count(self) -> int | None:
        return int(self._stream.frames) or None

    @property
    def frame_rate(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def creation_time(self) -> float | None:
        """The container's ``creation_time`` (UTC seconds), when it records one; a stream's: when it was opened."""
        from tbps_runtime.store.rows import parse_time

        text = self._container.metadata.get("creation_time") or self._stream.metadata.get("creation_time")
        if text:
            try:
                return parse_time(text)
            except ConfigError:
                logger.warning("%s: ignoring its creation_time %r (not ISO-8601)", self.source, text)
        return self.opened_at if self.stream_input else None

    def frames(self, fps: float | None, after: int = -1) -> Iterator[Frame]:
        """Sampled frames with index > ``after``, decoded on a worker thread.

        Raises:
            SourceError: the stream failed part-way (frames before it were yielded).
        """
        return _threaded(self._decode(fps, after), f"decoding {self.source}")

    def _decode(self, fps: float | None, after: int) -> Iterator[Frame]:
        av = _import_av()
        first_time = None
        index, last_bucket, corrupt = -1, None, 0
        try:
            for packet in self._container.demux(self._stream):
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    corrupt += 1
                    continue
                for frame in decoded:
                    index += 1
                    when = frame.time if frame.time is not None else index / (self.frame_rate or 25.0)
                    first_time = when if first_time is None else first_time
                    offset = max(0.0, when - first_time)
                    bucket = sample_bucket(offset, fps)
                    if fps is not None and bucket == last_bucket:
                        continue
                    last_bucket = bucket
                    if index <= after:
                        continue
                    yield Frame(index, offset, frame.to_ndarray(format="rgb24"))
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"{self.source} failed after frame {index}: {_reason(e, self._raw, self.source)}") from None
        finally:
            if corrupt:
                logger.warning("%s: %d corrupt packet(s) skipped", self.source, corrupt)
            self._container.close()


class FolderSource:
    """A folder of frame images, in name order (numbers compared as numbers), one frame each ``1 / fps`` s."""

    stream_input = False

    def __init__(self, source: str, fps: float | None):
        self.source = source
        folder = Path(source)
        if not folder.is_dir():
            raise InputFileNotFoundError(f"no such folder: {source}")
        self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
                            key=lambda p: _natural(p.name))
        if not self.files:
            raise SourceError(f"{source} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        self.frame_rate = fps or 1.0
        self.frame_count = len(self.files)

    def creation_time(self) -> float | None:
        return None

    def frames(self, fps: float | None, after: int = -1) -> Iterator[Frame]:
        return _threaded(self._read(after), f"reading {self.source}")

    def _read(self, after: int) -> Iterator[Frame]:
        from PIL import Image, UnidentifiedImageError

        skipped = 0
        for index, path in enumerate(self.files):
            if index <= after:
                continue
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
                skipped += 1
                continue
            yield Frame(index, index / self.frame_rate, pixels)
        if skipped:
            logger.warning("%s: %d unreadable frame image(s) skipped", self.source, skipped)


def open_source(source: str, fps: float | None) -> VideoSource | FolderSource:
    """A folder of frames, or a video file/stream."""
    if not source or "\x00" in source:
        raise ConfigError(f"{source!r} is not a source")
    if not is_stream(source) and Path(source).is_dir():
        return FolderSource(source, fps)
    return VideoSource(source)


def _threaded(frames: Iterator[Frame], what: str) -> Iterator[Frame]:
    """Run ``frames`` on a worker thread, handing frames over through a bounded queue; the worker's
    exception is raised here, after the frames it yielded."""
    handoff: queue.Queue = queue.Queue(maxsize=_QUEUE_FRAMES)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        handoff.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(done)
        except BaseException as e:  # handed to the consumer
            handoff.put(e)
        finally:
            frames.close()

    worker = threading.Thread(target=work, name=what, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let it see the stop while the queue still has room
            try:
                handoff.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError("reading video needs PyAV: pip install 'tbps[footage]'") from None
    return av


def _reason(error: BaseException, raw: str | None = None, name: str | None = None) -> str:
    """The first line of an FFmpeg error, with the source as recorded (FFmpeg quotes the URL it was given:
    credentials and all)."""
    text = str(error).strip() or type(error).__name__
    if raw and name:
        text = text.replace(raw, name)
    text = re.sub(r"//[^/@\s'\"]*@", "//", text)  # any other user:password@
    return text.splitlines()[0][:300]


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
