"""Frames in: video files and network streams through PyAV (FFmpeg), and folders of frame images.

A source yields :class:`Frame` s, sampled to at most ``fps`` per second of the
source's own time, decoded on a worker thread (PyAV releases the GIL while it
decodes, so the towers keep the other core busy). Sampling depends only on each
frame's presentation time, so a resumed run keeps exactly the frames the
interrupted one would have kept.

A source is named (:func:`source_name`) by its resolved path, or a stream by
its URL without credentials (:func:`redact_url`, which reads the URL as users
paste it, unescaped); that name keys its rows and progress in a store and is
the only form of it any message, log line or record shows.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

import numpy as np

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.paths import CONTROL_CATEGORIES, one_line, printable

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_QUEUE_FRAMES = 16  # decoded frames waiting for the detector: bounded, so decoding never outruns memory
_OPEN_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 15.0
_POLL_S = 0.25  # how often a followed source's consumer checks for a stall or a stop
STALLED = "gave no frame for"  # the words of a stalled stream's SourceError


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
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# What follows the @ that ends a userinfo: a host, a name or a bracketed IPv6 address (an @ followed by a
# delimiter, or by nothing, does not end one).
_HOST = re.compile(r"\[|[^\s/?#;@:&]")
_SEPARATORS = "?&;"  # between the parameters of a path (;name=value) and of a query (?name=value&...)
_PARAMETER = re.compile(r"[^?&;=/#]+=")  # what starts a parameter: a name and its =


def is_url(text: str) -> bool:
    """Whether ``text`` is written as a URL (``scheme://...``), a stream tbps reads or not."""
    return _URL.match(text) is not None


def redact_url(url: str) -> str:
    """``url`` without credentials: its userinfo (``user:password@``) and every secret parameter
    (``password=``, ``pwd=``, ``token=``, ...; in the query or as ``;name=value``); its fragment dropped.
    Text that is not a URL is returned as it is.

    Written for URLs as users paste them, unescaped: the raw string is read, never split by a URL parser
    (which ends the authority at the first ``/``, ``?`` or ``#``, so a password holding one lands in the
    path, query or fragment). The userinfo runs from after ``scheme://`` to the last ``@`` that a host
    follows. A URL has one when its first ``@`` comes before any ``/``, ``?`` or ``#``, or when a ``:``
    does (``user:pass/word@host``). ``host:554/path@x`` reads the same as ``user:554/pass@x`` and is
    redacted as one: a credential is never kept for a guess; an ``@`` in the path of a URL without a port
    or userinfo (``rtsp://cam/live@main``) is kept.
    """
    match = _URL.match(url)
    if match is None:
        return url
    scheme, rest = match.group(1), url[match.end():]
    end = _userinfo_end(rest)
    # a secret parameter that runs past the userinfo's @ goes whole (``host&password=@x``: FFmpeg's userinfo)
    rest = _without(rest, [(0, end), *[span for span in _secret_spans(rest) if span[1] > end]])
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find(c) for c in "/?;&") if i >= 0), default=len(rest))
    return f"{scheme}://{rest[:cut]}{rest[cut:]}"


def url_secrets(url: str) -> list[str]:
    """The credentials :func:`redact_url` removes from ``url`` (its userinfo and password, each secret
    parameter and its value), longest first: what a message quoting any part of the URL must not show."""
    match = _URL.match(url)
    if match is None:
        return []
    rest = url[match.end():]
    userinfo = rest[:max(0, _userinfo_end(rest) - 1)]
    found = [userinfo, userinfo.partition(":")[2]]
    for start, stop in _secret_spans(rest):
        found += [rest[start + 1:stop], rest[start + 1:stop].partition("=")[2]]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _userinfo_end(rest: str) -> int:
    """Where the host starts in ``rest`` (a URL after ``scheme://``): after the userinfo's @, or 0."""
    first = rest.find("@")
    if first < 0:
        return 0
    stop = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if first > stop and ":" not in rest[:stop]:
        return 0  # an @ in the path or query of a URL without userinfo
    ats = [i for i, c in enumerate(rest) if c == "@"]
    hosted = [i for i in ats if _HOST.match(rest, i + 1)]
    return (hosted or ats)[-1] + 1


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """(start, stop) of each secret ``name=value`` parameter in ``text`` (a URL's path, parameters and
    query), from its separator on. A value runs to the next separator that starts another parameter, so
    an unescaped ``&`` or ``;`` inside a password does not end it."""
    starts = [i for i, c in enumerate(text) if c in _SEPARATORS and _PARAMETER.match(text, i + 1)]
    spans = []
    for n, start in enumerate(starts):
        name = text[start + 1:text.index("=", start + 1)]
        if unquote(name).strip().lower() in _SECRET_PARAMETERS:
            spans.append((start, starts[n + 1] if n + 1 < len(starts) else len(text)))
    return spans


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the (start, stop) spans; where a query's first parameter went, the next one leads
    it (``?password=x&channel=1`` -> ``?channel=1``)."""
    kept, last = [], 0
    for start, stop in sorted(spans):
        if stop <= last:
            continue
        start = max(start, last)
        kept.append(text[last:start])
        if text[start] == "?" and stop < len(text) and text[stop] in "&;":
            kept.append("?")
            stop += 1
        last = stop
    return "".join(kept) + text[last:]


def source_name(source: str) -> str:
    """How a source is keyed, recorded and reported: a stream's URL without credentials
    (:func:`redact_url`); a file's or folder's resolved path, so ``foot/cam1.mp4``, ``./foot/cam1.mp4`` and
    its absolute path are one source. Characters that cannot be stored or printed on one line
    (control characters, bytes that are not UTF-8) are written as escapes (``\\n``, ``\\xe9``).

    Raises:
        ConfigError: the name is longer than a store keeps (:data:`~tbps_runtime.store.rows.MAX_TEXT`).
    """
    from tbps_runtime.store.rows import MAX_TEXT

    if is_url(source):
        name = one_line(printable(redact_url(source)))
    else:
        name = one_line(printable(str(Path(source).resolve())))
    if len(name) > MAX_TEXT:
        raise ConfigError(f"the source {name[:60]}... is named by {len(name)} characters, more than the "
                          f"{MAX_TEXT} a store keeps: " + ("shorten its URL" if is_url(source) else
                                                           "move or link it to a shorter path"))
    return name


def source_spellings(sources: Iterable[str]) -> tuple[str, ...]:
    """The names rows of each of ``sources`` may be stored under, for a filter that selects them: its
    :func:`source_name`; for a file also the spellings stores made before files were keyed by resolved
    path may hold it under (the path as it was typed then: as typed now, normalised, or relative to the
    current directory)."""
    names: dict[str, None] = {}
    for source in sources:
        key = source_name(source)
        if not is_url(source):
            for spelling in (source, os.path.normpath(source), os.path.relpath(key)):
                names[one_line(printable(spelling))] = None
        names[key] = None
    return tuple(names)


def shown_source(source: str) -> str:
    """A source as typed, fit for a message: credentials redacted from anything written as a URL, on one
    line."""
    return one_line(printable(redact_url(source)))


def camera_name(source: str) -> str:
    """The default camera name of a source: a file's or folder's name without suffix, a stream's host and
    path (never its credentials or parameters). Always a valid camera name
    (:func:`~tbps_runtime.store.rows.check_name`): control characters become ``_``, and it is cut to
    :data:`~tbps_runtime.store.rows.MAX_TEXT` characters."""
    from tbps_runtime.store.rows import MAX_TEXT

    if is_url(source):
        rest = redact_url(source).split("://", 1)[1]
        name = re.sub(r"[^A-Za-z0-9._:/-]+", "_", re.split(r"[?;#]", rest, maxsplit=1)[0]).strip("/") or "stream"
    else:
        path = Path(source)
        name = printable((path.stem if path.suffix else path.name) or Path(source).resolve().name) or "camera"
    name = "".join("_" if unicodedata.category(c) in CONTROL_CATEGORIES else c for c in name)
    return name[:MAX_TEXT]




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
            raise InputFileNotFoundError(f"no such video: {shown_source(source)}")
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
        """Frames in the file, as it counts them or as its duration and rate give them; None for a stream, or
        a file that states neither."""
        if self._stream.frames or self.stream_input:
            return int(self._stream.frames) or None
        rate = self.frame_rate
        if not self._container.duration or not rate:
            return None
        return max(1, round(self._container.duration / 1e6 * rate))  # duration in FFmpeg's AV_TIME_BASE

    @property
    def frame_rate(self) -> float | None:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else None

    def creation_time(self) -> float | None:
        """The container's ``creation_time`` (UTC seconds), when it records one that is a time in the accepted
        range (:func:`~tbps_runtime.store.rows.check_time`; any other is ignored with a warning); a
        stream's: when it was opened."""
        from tbps_runtime.store.rows import TIME_RANGE, parse_time

        text = self._container.metadata.get("creation_time") or self._stream.metadata.get("creation_time")
        if text:
            try:
                return parse_time(text, "creation_time")
            except ConfigError as e:
                reason = f"outside {TIME_RANGE}" if "range" in str(e) else "not an ISO-8601 time"
                logger.warning("%s: ignoring its creation_time %s (%s)", self.source, _shown(text), reason)
        return self.opened_at if self.stream_input else None

    def frames(self, fps: float | None, after: int = -1, stall: float | None = None,
               cancel: threading.Event | None = None) -> Iterator[Frame]:
        """Sampled frames with index > ``after``, decoded on a worker thread; they end early, without an
        error, once ``cancel`` is set.

        Raises:
            SourceError: the stream failed part-way (frames before it were yielded), or, with ``stall``,
                gave no frame for ``stall`` seconds (a stalled stream).
        """
        return _threaded(self._decode(fps, after), f"decoding {self.source}", stall, cancel, self.source)

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
            where = f"after frame {index}" if index >= 0 else "before its first frame"
            trouble = _reason(e, self._raw, self.source, started=index >= 0, container=self._container.format.name)
            raise SourceError(f"{self.source} failed {where}: {trouble}") from None
        finally:
            if corrupt:
                logger.warning("%s: %d corrupt packet(s) skipped", self.source, corrupt)
            self._container.close()


class FolderSource:
    """A folder of frame images, in name order (numbers compared as numbers), one frame each ``1 / fps`` s."""

    stream_input = False

    def __init__(self, source: str, fps: float | None):
        self.source = source_name(source)
        folder = Path(source)
        if not folder.is_dir():
            raise InputFileNotFoundError(f"no such folder: {shown_source(source)}")
        self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
                            key=lambda p: _natural(p.name))
        if not self.files:
            raise SourceError(f"{self.source} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        self.frame_rate = fps or 1.0
        self.frame_count = len(self.files)

    def creation_time(self) -> float | None:
        return None

    def frames(self, fps: float | None, after: int = -1, stall: float | None = None,
               cancel: threading.Event | None = None) -> Iterator[Frame]:
        return _threaded(self._read(after), f"reading {self.source}", None, cancel, self.source)

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
        raise ConfigError(f"{_shown(redact_url(source))} is not a source (empty, or holding a NUL)")
    if not is_stream(source) and Path(source).is_dir():
        return FolderSource(source, fps)
    return VideoSource(source)


def _threaded(frames: Iterator[Frame], what: str, stall: float | None = None,
              cancel: threading.Event | None = None, name: str = "") -> Iterator[Frame]:
    """Run ``frames`` on a worker thread, handing frames over through a bounded queue; the worker's
    exception is raised here, after the frames it yielded. ``cancel`` set ends the frames early; ``stall``
    seconds without a frame raise SourceError (the worker, blocked in a read, ends at its read timeout)."""
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
    waited = 0.0
    try:
        while True:
            try:
                item = handoff.get(timeout=_POLL_S) if stall is not None or cancel is not None else handoff.get()
            except queue.Empty:
                waited += _POLL_S
                if cancel is not None and cancel.is_set():
                    return
                if stall is not None and waited >= stall:
                    raise SourceError(f"{name} {STALLED} {stall:g} s") from None
                continue
            waited = 0.0
            if cancel is not None and cancel.is_set():
                return
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Let it see the stop while the queue still has room. A worker blocked in a stalled read is left to
        # end at its read timeout when stall or cancel is given (it stops at its next frame).
        deadline = time.monotonic() + (_POLL_S * 4 if stall is not None or cancel is not None else math.inf)
        while worker.is_alive() and time.monotonic() < deadline:
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


def _reason(error: BaseException, raw: str | None = None, name: str | None = None, *, started: bool = False,
            container: str | None = None) -> str:
    """What went wrong with a source and what to try, from a PyAV/FFmpeg (or operating-system) error raised
    opening it, or part-way when ``started`` (a frame was decoded). ``container``: the demuxer's name, once
    opened. FFmpeg's own words (:func:`_ffmpeg_words`, credentials removed) go to the debug log; they stand
    in only for an error this does not know."""
    said = _ffmpeg_words(error, raw, name)
    logger.debug("%s: FFmpeg said: %s", name or "a source", said)
    return _explain(error, raw or "", started, container) or said


_VIDEO_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75",
                b"GIF8", b"nut/")  # Matroska/WebM, AVI, FLV, Ogg, MPEG-PS, ASF, GIF, NUT
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
_FASTSTART = "ffmpeg -i IN -c copy -movflags +faststart OUT"


def _explain(error: BaseException, raw: str, started: bool, container: str | None) -> str | None:
    """:func:`_reason`'s words for the errors a user can act on, or None."""
    av = _import_av()
    number = getattr(error, "errno", None)
    stream = is_stream(raw)
    if isinstance(error, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        code = "401 Unauthorized" if isinstance(error, av.error.HTTPUnauthorizedError) else "403 Forbidden"
        return (f"authentication failed (the server answered {code}): check the user name and password in the "
                "URL, and that this user may view the stream")
    if isinstance(error, av.error.HTTPNotFoundError):
        return "the server has no such path (404 Not Found): check the URL's path"
    if number == errno.ECONNREFUSED:
        return (f"connection refused: nothing accepts connections at {_address(raw)}: check that the camera or "
                "server is running and the port is right")
    if number in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"host unreachable ({_address(raw)}): check the address and that this machine's network reaches it"
    if number == errno.ETIMEDOUT or isinstance(error, (TimeoutError, av.error.ExitError)):
        limit = _READ_TIMEOUT_S if started else _OPEN_TIMEOUT_S
        return (f"timed out: {_address(raw)} gave no answer within {limit:g} s: check the address, a firewall "
                "between, and that the camera is not overloaded")
    if number == errno.ECONNRESET:
        return "the server closed the connection: check its log, and how many clients it allows"
    if stream:
        return _stream_trouble(error, raw, started, container, number)
    if isinstance(error, av.error.InvalidDataError) or (number == errno.EIO and not started):
        return _file_trouble(raw)
    if number == errno.EIO:
        return ("reading the file failed (input/output error): a failing disk, a network share that went away, or "
                "a file changed while read; copy it to a local disk and ingest it again")
    return None


def _stream_trouble(error: BaseException, raw: str, started: bool, container: str | None,
                    number: int | None) -> str | None:
    """:func:`_explain` for a stream's input/output and invalid-data errors."""
    mp4 = container is not None and "mp4" in container  # opened (an open's I/O error is the connection's)
    if raw.lower().startswith(("http://", "https://")) and mp4 and not started and number == errno.EIO:
        return ("an MP4 served over HTTP without range requests cannot be read when its index (moov atom) is at "
                "its end, as recorders write it: serve it from a server that allows range requests, or move the "
                f"index to the front ({_FASTSTART})")
    if number == errno.EIO and container is None:
        return (f"could not connect to {_address(raw)} (input/output error): check the host name, the network "
                "and the server")
    if number == errno.EIO:
        return ("the connection was cut (input/output error): check the network and the server; tbps ingest "
                "--cameras FILE --follow reconnects by itself")
    if isinstance(error, _import_av().error.InvalidDataError):
        return ("the stream's data is not video FFmpeg can read: check that the URL names a video stream (not a "
                "web page or a playlist of another kind)")
    return None


def _file_trouble(path: str) -> str:
    """Why FFmpeg found no video it can read in the file at ``path``: empty, cut short, or not a video."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return "the file cannot be read as a video"
    if size == 0:
        return "the file is empty: a copy or recording that did not finish"
    if head[4:8] in _MP4_BOXES:
        return _mp4_trouble(path, size) or "the MP4 is damaged: play it elsewhere to check it, or copy it again"
    if head.startswith(_VIDEO_MAGIC) or head[:1] == b"\x47":  # \x47: an MPEG-TS packet's sync byte
        return ("the video file is damaged or truncated (cut short): copy it again, or ingest the complete "
                "recording")
    return ("not a video, or in a container FFmpeg cannot read: check it is the file you meant (ffprobe FILE says "
            "what it holds), or convert it to MP4")


def _mp4_trouble(path: str, size: int) -> str | None:
    """An MP4's (ISO base media file's) top-level boxes, read for a cut: truncated inside a box, or without
    the index (moov atom) a finished recording has; None when neither."""
    seen, at = set(), 0
    with open(path, "rb") as file:
        while at + 8 <= size:
            file.seek(at)
            header = file.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")  # a 64-bit size follows the type
            elif length == 0:
                length = size - at  # the last box runs to the end
            if length < 8:
                return "the MP4 is damaged (a box of an impossible size): copy it again"
            if at + length > size:
                return (f"the file is truncated: it ends at byte {size} inside its "
                        f"{kind.decode('latin-1')!r} box, {at + length - size} byte(s) short (a copy or download "
                        "that did not finish, or a recording still being written): copy it again once complete")
            seen.add(kind)
            at += length
    if b"moov" not in seen:
        return ("the MP4 has no index (moov atom): a recording stopped before it was finished; ingest a finished "
                "recording, or repair this one (e.g. with untrunc)")
    return None


def _address(raw: str) -> str:
    """A stream's host (and port) without credentials, for a message."""
    rest = redact_url(raw).split("://", 1)[-1]
    return one_line(printable(re.split(r"[/?;#]", rest, maxsplit=1)[0])) or "the stream's address"


def _ffmpeg_words(error: BaseException, raw: str | None = None, name: str | None = None) -> str:
    """The first line of an FFmpeg error, with the source as recorded: FFmpeg quotes the URL it was given,
    credentials and all (Python shows it escaped, as ``repr`` does), so the URL becomes ``name``, and any
    credential (:func:`url_secrets`), or run of 4 letters or digits of one, quoted on its own becomes ``***``."""
    text = str(error).strip() or type(error).__name__
    if raw and name:
        # one pass: a relative path is part of the absolute name put in its place, and must not be replaced
        # again inside it ('/tmp/x//tmp/x/a.mp4')
        forms = sorted({raw, repr(raw)[1:-1]}, key=len, reverse=True)
        text = re.sub("|".join(re.escape(form) for form in forms), lambda _: name, text)
        secrets = url_secrets(raw)
        pieces = {piece for secret in secrets for piece in re.findall(r"[^\W_]{4,}", secret)
                  if piece.lower() not in _SECRET_PARAMETERS}  # a value's words, not the parameter's name
        for secret in [*secrets, *(repr(s)[1:-1] for s in secrets), *sorted(pieces, key=len, reverse=True)]:
            text = text.replace(secret, "***")
    text = re.sub(r"//[^/@\s'\"]*@", "//", text)  # any other user:password@
    return one_line(printable(text.splitlines()[0][:300] if text.strip() else type(error).__name__))


def _shown(text: str) -> str:
    """Untrusted text (metadata, a source) for a message: quoted, on one line, cut to 60 characters."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
