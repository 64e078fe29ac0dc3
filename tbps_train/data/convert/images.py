"""The images of a converted dataset: ``ROOT/imgs`` becomes a relative link, never a copy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tbps_runtime.errors import InputFileNotFoundError, OutputError
from tbps_train.data.formats import IMAGE_DIR, Entry

__all__ = ["Link", "apply_link", "count_found", "plan_images"]


@dataclass(frozen=True)
class Link:
    """What to do about ``ROOT/imgs``."""

    target: Path | None  # the folder ROOT/imgs should point to; None: leave ROOT/imgs as it is
    note: str | None = None


def plan_images(root: Path, images: str | Path | None, entries: list[Entry], candidates: list[Path],
                overwrite: bool) -> Link:
    """What to do about ROOT/imgs, decided before anything is written."""
    link = root / IMAGE_DIR
    if images is None:
        if os.path.lexists(link):  # the root's own images (or link) stay as they are
            return Link(None)
        target = next((c for c in candidates if (c / entries[0].image).is_file()), None)
        if target is None:
            where = " or ".join(str(c) for c in candidates[:2])
            return Link(None, f"images not linked: {entries[0].image!r} is not under {where}; pass --images DIR, "
                              f"or link them yourself: ln -s DIR {link}")
        return Link(target)
    target = Path(images).expanduser().absolute()
    if not target.is_dir():
        raise InputFileNotFoundError(f"images {images} is not a folder: give the folder that holds the images (the "
                                     "paths in the annotations are relative to it)", code="parameter_invalid",
                                     names=("images",))
    if os.path.lexists(link):
        if link.exists() and os.path.samefile(link, target):
            return Link(None)
        if not link.is_symlink():
            raise OutputError(f"{link} is a folder: images are linked, never copied or replaced; move it away, or "
                              "convert without images (None) to keep it", code="convert_images_folder_in_the_way",
                              link=str(link))
        if not overwrite:
            raise OutputError(f"{link} links to {os.readlink(link)}, not {target}: pass overwrite=True to relink it",
                              code="convert_images_link_differs", link=str(link), current=os.readlink(link),
                              target=str(target))
    return Link(target)


def apply_link(root: Path, plan: Link) -> list[str]:
    """Carry out ``plan`` (after the annotation files are written); the notes for the summary."""
    if plan.target is None:
        return [plan.note] if plan.note else []
    link = root / IMAGE_DIR
    relative = os.path.relpath(os.path.realpath(plan.target), os.path.realpath(root))
    temp = root / f".{IMAGE_DIR}.link.tmp"
    try:
        temp.unlink(missing_ok=True)
        os.symlink(relative, temp, target_is_directory=True)
        os.replace(temp, link)  # atomic, and replaces an older link
    except OSError as e:
        temp.unlink(missing_ok=True)
        return [f"could not link {link} ({e.strerror}): run  ln -s {relative} {link}"]
    return [f"linked {link} -> {relative}"]


def count_found(root: Path, images: list[Path]) -> int | None:
    """How many of ``images`` exist, None when the root has no image folder."""
    if not (root / IMAGE_DIR).is_dir():
        return None
    return sum(1 for p in images if os.path.isfile(p))  # False, never an error, for a name the OS refuses
