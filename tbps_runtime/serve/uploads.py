"""Images a request sends (base64 JPEG or PNG), decoded as ``tbps index`` decodes files, and refused when
they are not whole.

Pillow decodes two kinds of damaged file without a word, so a request's crop would be embedded as if it
were whole: a PNG whose compressed pixel data ends before its last row (the rows after it come out black),
and a JPEG whose scan stops early and is closed with an end-of-image marker (what Pillow's own
``LOAD_TRUNCATED_IMAGES`` does to a cut file: libjpeg paints the rest grey). Both are refused here without
touching Pillow's global settings:

- a PNG's pixel data is inflated and counted against the rows its header declares (:func:`png_is_whole`);
- a JPEG is decoded a second time with filler bytes before its end marker (:func:`jpeg_is_whole`): a whole
  scan never reads them, so both decodings agree; a scan that stopped early reads them as its missing data,
  and the pictures differ.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tbps_runtime.errors import DataError, InputFileNotFoundError
from tbps_runtime.model.images import read_image
from tbps_runtime.serve import Limits

IMAGE_FORMATS = ("JPEG", "PNG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7's seven passes: the first column and row of each, and its steps (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_JPEG_END = b"\xff\xd9"
_JPEG_FILLER = b"\x55" * 512  # alternating bits, no 0xFF: a scan that reads them decodes to other pixels
_INFLATE_STEP = 16 * 2**20  # bytes inflated at a time: the most held at once


def decode_image(text: str, what: str, limits: Limits) -> np.ndarray:
    """A base64 JPEG or PNG file -> (H, W, 3) uint8 RGB, decoded as ``tbps index`` decodes image files
    (EXIF orientation applied, transparency on black), after checking its size from the header.

    Raises:
        DataError: naming ``what``: not base64, not a JPEG or PNG, larger than the limit, undecodable,
            or not whole (a damaged or truncated file).
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{what} is not base64 text (standard alphabet, padded)") from None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DataError(f"{what} is not a JPEG or PNG image") from None
    if kind not in IMAGE_FORMATS:
        raise DataError(f"{what} is a {kind} image; send JPEG or PNG")
    side = limits.max_image_side
    if width > side or height > side:
        raise DataError(f"{what} is {width}x{height} pixels; at most {side}x{side}: send the person's crop")
    damaged = DataError(f"{what} cannot be decoded (a damaged or truncated {kind}): send the whole file")
    if kind == "PNG" and not png_is_whole(data):
        raise damaged
    with tempfile.TemporaryDirectory(prefix="tbps-serve-") as folder:  # read_image reads files: one decoder
        try:
            pixels = np.asarray(_read(Path(folder) / f"image.{kind.lower()}", data), dtype=np.uint8)  # (H, W, 3)
            if kind == "JPEG" and not jpeg_is_whole(data, pixels, Path(folder) / "probe.jpeg"):
                raise damaged
        except (DataError, InputFileNotFoundError):
            raise damaged from None
    return pixels


def _read(path: Path, data: bytes) -> Image.Image:
    path.write_bytes(data)
    return read_image(path)


def png_is_whole(data: bytes) -> bool:
    """Whether a PNG's pixel data (its IDAT chunks, inflated) holds every row its header declares.

    Inflated in steps and counted, never kept whole; at most one byte past what the rows need is inflated.
    """
    header, idat = _png_chunks(data)
    if header is None:
        return False
    width, height, depth, colour, _, _, interlace = header
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    needed = 0
    for x0, y0, dx, dy in (_ADAM7 if interlace else ((0, 0, 1, 1),)):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            needed += rows * (1 + (columns * bits + 7) // 8)  # a filter byte, then the row's samples
    try:
        return _inflated_size(idat, needed) >= needed
    except zlib.error:
        return False


def _png_chunks(data: bytes) -> tuple[tuple[int, ...] | None, list[bytes]]:
    """The IHDR fields (width, height, depth, colour, compression, filter, interlace) and the IDAT bodies."""
    if not data.startswith(_PNG_SIGNATURE):
        return None, []
    header, idat, at = None, [], len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        at += 12 + length
    return header, idat


def _inflated_size(chunks: list[bytes], most: int) -> int:
    """How many bytes the zlib stream split over ``chunks`` inflates to, counting up to ``most`` + 1."""
    inflater, size = zlib.decompressobj(), 0
    for chunk in chunks:
        while chunk and size <= most:
            size += len(inflater.decompress(chunk, min(_INFLATE_STEP, most + 1 - size)))
            chunk = inflater.unconsumed_tail
    return size


def jpeg_is_whole(data: bytes, pixels: np.ndarray, probe: Path) -> bool:
    """Whether a JPEG's scan reached its end marker whole: decoded again with filler bytes before that
    marker (written to ``probe``), it gives the same ``pixels``. A scan that stopped early reads the filler
    as its missing data (or fails on it); a whole one skips it."""
    end = data.rfind(_JPEG_END)
    if end < 0:
        return False
    try:
        again = np.asarray(_read(probe, data[:end] + _JPEG_FILLER + data[end:]), dtype=np.uint8)
    except (DataError, InputFileNotFoundError):
        return False
    return again.shape == pixels.shape and bool(np.array_equal(again, pixels))


__all__ = ["IMAGE_FORMATS", "decode_image", "jpeg_is_whole", "png_is_whole"]
