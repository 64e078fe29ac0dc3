"""A store row's moment in its source: the full frame with the row's box drawn, and a clip around it.

The source is the one the row records (``CropRecord.source``: a file's resolved path, a folder of frames,
or a stream's URL without credentials), never a path from a caller. A stream's frames are not kept
(:class:`NotKept`); a file that was moved or deleted since it was ingested is
:class:`~tbps_runtime.errors.InputFileNotFoundError`.

The frame is found by time: the file is sought to the keyframe before the row's ``offset`` (seconds from
the source's first frame, as ingest counts them) and decoded up to the first frame at or after it. A clip
is cut without re-encoding where the codec fits an MP4 (H.264, MPEG-4 part 2, HEVC, AV1...): packets are
copied from the keyframe at or before ``offset - before`` to the first packet past ``offset + after``, so
a clip starts up to one GOP early; :class:`Clip` says where it starts. A source whose codec an MP4 cannot
hold is decoded and encoded again (H.264 where FFmpeg has it, else MPEG-4 part 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.ingest.sources import FolderSource, _import_av, is_stream, is_url
from tbps_runtime.store.rows import CropRecord

logger = logging.getLogger(__name__)

MAX_CLIP_SIDE_S = 30.0  # before and after, each
BOX_COLOUR = (255, 214, 0)


class NotKept(InputFileNotFoundError):
    """The row's source is a stream: its frames were not kept."""


@dataclass(frozen=True)
class Clip:
    """A clip written to ``path``: ``start``/``end`` in seconds of the source (from its first frame),
    ``remuxed`` when its packets were copied (False: encoded again)."""

    path: Path
    start: float
    end: float
    remuxed: bool


def source_path(record: CropRecord) -> Path:
    """The file or folder of frames ``record`` was cut from.

    Raises:
        NotKept: a stream (its frames are not kept).
        InputFileNotFoundError: the file is not there any more.
    """
    if is_stream(record.source) or is_url(record.source):
        raise NotKept("the row comes from a stream: its frames are not kept")
    path = Path(record.source)
    if not (path.is_file() or path.is_dir()):
        raise InputFileNotFoundError(f"the source {record.source} is not there any more (moved or deleted since "
                                     "it was ingested)")
    return path


def frame_image(record: CropRecord) -> Image.Image:
    """The full frame ``record`` was cut from, RGB, with its box drawn.

    Raises:
        NotKept, InputFileNotFoundError: see :func:`source_path`.
        DataError: the row has no offset or frame, or the source has no frame there.
    """
    path = source_path(record)
    if path.is_dir():
        if record.frame is None:
            raise DataError("the row records no frame index")
        files = FolderSource(str(path), None).files
        if not 0 <= record.frame < len(files):
            raise DataError(f"the source has {len(files)} frames, none numbered {record.frame}")
        with Image.open(files[record.frame]) as opened:
            image = opened.convert("RGB")
    else:
        if record.offset is None:
            raise DataError("the row records no offset into its source")
        image = _decode_at(path, record.offset)
    if record.box is not None:
        draw = ImageDraw.Draw(image)
        width = max(2, round(max(image.size) / 320))
        draw.rectangle([round(v) for v in record.box], outline=BOX_COLOUR, width=width)
    return image


def write_clip(record: CropRecord, before: float, after: float, output: Path) -> Clip:
    """The source around ``record``: ``before`` seconds before its offset to ``after`` seconds after it,
    as an MP4 at ``output`` (see the module for where it is cut).

    Raises:
        ConfigError: ``before`` or ``after`` outside 0..:data:`MAX_CLIP_SIDE_S`.
        NotKept, InputFileNotFoundError: see :func:`source_path`; a folder of frames (no video to cut).
        DataError: the row has no offset, or the source cannot be read there.
    """
    for name, value in (("before", before), ("after", after)):
        if not 0 <= value <= MAX_CLIP_SIDE_S:
            raise ConfigError(f"{name} must be 0 to {MAX_CLIP_SIDE_S:g} seconds, got {value}")
    path = source_path(record)
    if path.is_dir():
        raise NotKept("the row comes from a folder of frames: there is no video to cut")
    if record.offset is None:
        raise DataError("the row records no offset into its source")
    start, end = max(0.0, record.offset - before), record.offset + after
    av = _import_av()
    try:
        try:
            return _remux(av, path, start, end, output)
        except (av.FFmpegError, ValueError) as e:  # a codec an MP4 cannot hold
            logger.info("cannot copy %s into an MP4 (%s): encoding it again", path, e)
            return _encode(av, path, start, end, output)
    except (av.FFmpegError, OSError) as e:
        raise DataError(f"cannot cut a clip from {path}: {e}") from e


def _first_time(container: Any, stream: Any) -> float:
    """The time of the first decoded frame: the zero of a row's ``offset``."""
    for frame in container.decode(stream):
        if frame.time is not None:
            return float(frame.time)
    return 0.0


def _seek(container: Any, stream: Any, seconds: float) -> None:
    """To the keyframe at or before ``seconds`` (stream time)."""
    container.seek(max(0, int(seconds / stream.time_base)), stream=stream, backward=True, any_frame=False)


def _decode_at(path: Path, offset: float) -> Image.Image:
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            target = _first_time(container, stream) + offset
            _seek(container, stream, target)
            rate = float(stream.average_rate or 25)
            found = None
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                found = frame
                if frame.time >= target - 0.5 / rate:
                    break
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DataError(f"cannot decode {path} at {offset:.3f} s: {e}") from e
    if found is None:
        raise DataError(f"{path} has no frame at {offset:.3f} s")
    return found.to_image()


def _remux(av: Any, path: Path, start: float, end: float, output: Path) -> Clip:
    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        first = _first_time(source, stream)
        _seek(source, stream, first + start)
        base, last = None, first + start
        with av.open(str(output), "w", format="mp4") as sink:
            copy = sink.add_stream_from_template(stream)
            for packet in source.demux(stream):
                if packet.dts is None:  # the demuxer's last, empty packet
                    continue
                if base is None:
                    if not packet.is_keyframe:
                        continue
                    base, clip_start = packet.dts, float(packet.dts * stream.time_base)
                if float(packet.dts * stream.time_base) > first + end:
                    break
                if packet.pts is not None:
                    last = max(last, float((packet.pts + (packet.duration or 0)) * stream.time_base))
                packet.dts -= base
                packet.pts = None if packet.pts is None else packet.pts - base
                packet.stream = copy
                sink.mux(packet)
    if base is None:
        raise DataError(f"{path} has no keyframe before {end:.3f} s")
    return Clip(output, max(0.0, clip_start - first), last - first, True)


def _encode(av: Any, path: Path, start: float, end: float, output: Path) -> Clip:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        first = _first_time(source, stream)
        _seek(source, stream, first + start)
        rate = stream.average_rate or Fraction(25)
        with av.open(str(output), "w", format="mp4") as sink:
            encoded = sink.add_stream(codec, rate=rate)
            encoded.width, encoded.height = stream.codec_context.width, stream.codec_context.height
            encoded.pix_fmt = "yuv420p"
            times = []
            for frame in source.decode(stream):
                if frame.time is None or frame.time < first + start:
                    continue
                if frame.time > first + end:
                    break
                times.append(frame.time - first)
                frame.pts = None
                for packet in encoded.encode(frame.reformat(format="yuv420p")):
                    sink.mux(packet)
            for packet in encoded.encode():
                sink.mux(packet)
    if not times:
        raise DataError(f"{path} has no frames between {start:.3f} and {end:.3f} s")
    return Clip(output, times[0], times[-1] + 1 / float(rate), False)


__all__ = ["BOX_COLOUR", "Clip", "MAX_CLIP_SIDE_S", "NotKept", "frame_image", "source_path", "write_clip"]
