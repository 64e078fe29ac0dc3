"""The checks of the images: paths inside the image folder, missing and empty files, a decoded sample."""

from __future__ import annotations

import logging
import os
import random
import stat
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from tbps_runtime.errors import UnsafePathError
from tbps_runtime.paths import printable, resolve_inside
from tbps_runtime.text import clip, short
from tbps_train.data.doctor.adapters import DatasetAdapter
from tbps_train.data.doctor.report import Report, plural, shown, them
from tbps_train.data.formats import Entry

__all__ = ["image_checks"]

logger = logging.getLogger(__name__)


def image_checks(report: Report, entries: list[Entry], adapter: DatasetAdapter, image_dir: Path,
                 sample: int, seed: int) -> None:
    """Paths that leave the image folder, missing and empty images, and ``sample`` images decoded
    (drawn with ``seed``; 0: all)."""
    safe: list[tuple[Entry, Path]] = []
    unsafe = []
    for entry in entries:
        try:
            safe.append((entry, resolve_inside(image_dir, entry.image, entry.where)))
        except UnsafePathError:
            unsafe.append(f"{entry.where}: {printable(short(entry.image))}")
    if unsafe:
        report.add("error", "unsafe-path", "images", f"{plural(len(unsafe), 'image path', 'leads')} outside "
                   f"{image_dir.name}/ (absolute, or with '..'): tbps refuses {them(len(unsafe))}; make "
                   f"{them(len(unsafe))} relative to {image_dir.name}/", len(unsafe), unsafe)
    logger.info("checking %s images under %s", f"{len(safe):,}", image_dir)
    sizes = {entry.image: _file_size(path) for entry, path in safe}
    report.images = {"referenced": len(sizes), "missing": sum(s is None for s in sizes.values())}
    _missing_images(report, adapter, image_dir, sizes)
    empty = [image for image, size in sizes.items() if size == 0]
    if empty:
        report.add("error", "zero-size-image", "images", f"{plural(len(empty), 'image', 'is')} empty "
                   f"(0 bytes): restore {them(len(empty))} from the dataset archive", len(empty), map(shown, empty))
    readable = [(image, image_dir / image) for image, size in sizes.items() if size]
    _decode_sample(report, readable, sample, seed)


def _file_size(path: Path) -> int | None:
    """Size in bytes of a regular file, None when it is missing (or not a file)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # ValueError: a name the OS cannot take
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _missing_images(report: Report, adapter: DatasetAdapter, image_dir: Path, sizes: dict[str, int | None]) -> None:
    """One line per top folder under the image folder, largest first."""
    total, missing = Counter(), defaultdict(list)
    for image, size in sizes.items():
        top = _top_folder(image)
        total[top] += 1
        if size is None:
            missing[top].append(image)
    if missing and not image_dir.is_dir():
        count = sum(map(len, missing.values()))
        report.add("error", "missing-images", "images", f"{image_dir.name}/ does not exist under {image_dir.parent}: "
                   f"all {count:,} images are missing; unpack the dataset's images there", count)
        return
    for top, images in sorted(missing.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        report.add("error", "missing-images", "images", _missing_message(adapter, image_dir, top, len(images),
                   total[top]), len(images), map(shown, images))


def _top_folder(image: str) -> str:
    parts = PurePosixPath(image.replace("\\", "/")).parts
    return parts[0] if len(parts) > 1 else ""


def _missing_message(adapter: DatasetAdapter, image_dir: Path, top: str, count: int, total: int) -> str:
    where = f"{image_dir.name}/{top}/" if top else f"{image_dir.name}/"
    amount = (f"{count:,} of {plural(total, 'image')}" if count < total
              else f"all {count:,} images" if count > 1 else "the only image")
    missing = f"{amount} under {where} {'is' if count == 1 else 'are'} missing"
    folder_gone = count == total and top and not (image_dir / top).is_dir()
    source = adapter.sources.get(top)
    if folder_gone and source:
        return (f"{missing}: the {source} part of {adapter.title}, which some copies of the release lack; "
                f"get the complete {image_dir.name}/ from the dataset's authors")
    if folder_gone:
        return f"{missing} ({where} does not exist): unpack that folder there"
    return f"{missing}: restore {them(count)} from the dataset archive"


def _decode_sample(report: Report, images: list[tuple[str, Path]], sample: int, seed: int) -> None:
    """Decode every image, or ``sample`` of them drawn with ``seed``; undecodable ones are errors."""
    sampled = 0 < sample < len(images)
    chosen = sorted(random.Random(seed).sample(range(len(images)), sample)) if sampled else range(len(images))
    failures = [f"{shown(images[i][0])}: {reason}" for i in chosen if (reason := _decode_error(images[i][1]))]
    report.images.update(decoded=len(chosen), sampled=sampled, seed=seed)
    if failures:
        scope = (f"of a sample of {len(chosen):,} (seed {seed}; --images-sample 0 decodes all {len(images):,})"
                 if sampled else f"of {len(chosen):,}")
        report.add("error", "unreadable-image", "images", f"{plural(len(failures), 'image')} {scope} cannot be "
                   f"decoded (truncated or not an image): restore {them(len(failures))} from "
                   "the dataset archive", len(failures), failures)


def _decode_error(path: Path) -> str | None:
    """Why Pillow cannot verify and decode ``path``, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # checksums and structure
        with Image.open(path) as image:
            image.load()  # the pixels, as training decodes them
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as e:
        return printable(clip(str(e) or type(e).__name__, 80))
    return None
