"""Image preprocessing shared by training and the runtime, so both see the same pixels.

Pillow decodes and resizes; numpy normalises. A crop is either a file path or
an (H, W, 3) uint8 RGB array (a detector's output in a pipeline).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError

# ImageNet statistics: the backbones' pretrained weights expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file as RGB, applying its EXIF orientation.

    Any mode (1, L, P, RGBA, LA, CMYK, 16-bit, 32-bit int or float) becomes
    8-bit RGB; transparency is composited on black. A corrupt, empty,
    truncated or non-image file raises :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the range the mode allows.
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / (65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        # Float greyscale: [0, 1] when it fits there, else taken as 0..255.
        array = np.asarray(image, dtype=np.float64)
        array = np.nan_to_num(array, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # Composite on black: what hides under a transparent pixel is undefined.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return image.convert("RGB")


def resize_rgb(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A crop resized to ``size`` = (H, W): returns (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if min(image.shape[:2]) == 0:
            raise DataError(f"an image array must not be empty, got {image.shape}")
        image = Image.fromarray(image, mode="RGB")
    height, width = size
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def normalize(pixels: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 with (x / 255 - mean) / std."""
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    scaled -= np.asarray(mean, np.float32)
    scaled /= np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm",
                              ".pgm", ".pbm", ".jfif"})



_INTEGER = re.compile(r"-?[0-9]{1,18}")  # an int64; longer digit strings stay text


def collect_images(source: str | Path) -> tuple[list[Path], list[int | str | None] | None]:
    """Image paths (and identities, when a list gives them) from a directory or a list file.

    A directory is walked recursively for image files (by extension), in sorted
    order. A list file holds one image per line, optionally followed by a TAB
    and the person's identity; relative paths are relative to the list file;
    blank lines and lines starting with ``#`` are skipped.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}")
        return paths, None
    if not source.is_file():
        raise InputFileNotFoundError(f"no such directory or list file of images: {source}", code="images_missing",
                                     source=str(source))
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        raise ConfigError(f"images are a directory or a list file (one image path per line), not an image: {source}",
                          code="images_is_an_image", source=str(source))
    return _read_list(source)


def _read_list(source: Path) -> tuple[list[Path], list[int | str | None] | None]:
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not a UTF-8 text list of image paths: {e}") from e
    paths, identities = [], []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, _, identity = line.rstrip("\r").partition("\t")
        paths.append(source.parent / path.strip())
        identity = identity.strip()
        # ASCII digits only: str.isdigit() accepts '²', which int() refuses
        identities.append(None if not identity else int(identity) if _INTEGER.fullmatch(identity) else identity)
    if not paths:
        raise DataError(f"{source} lists no images (one path per line)")
    return paths, identities if any(i is not None for i in identities) else None
