"""The crop files a store keeps beside its rows, shared by the local and the Milvus store: one folder per
appended batch (``crops/<hex>/``), names resolved inside the store, removal that reports bytes freed."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tbps_runtime.paths import resolve_inside

CROPS = "crops"


class CropFolders:
    """Mixin for a store with a ``directory``: its batch folders and crop files."""

    directory: Path

    def new_batch(self) -> tuple[str, Path]:
        """A fresh crop folder for the next append: (its name relative to the store, its path)."""
        name = f"{CROPS}/{uuid.uuid4().hex}"
        path = self.directory / name
        path.mkdir(parents=True)
        return name, path

    def crop_path(self, crop: str) -> Path:
        """The file of a record's ``crop`` (checked to stay inside the store)."""
        return self._inside(crop)

    def _inside(self, name: str) -> Path:
        return resolve_inside(self.directory, name, f"the store {self.directory}")


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is not a directory)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove_file(path: Path) -> int:
    """Remove ``path``; the bytes freed (0 when it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


def remove_tree(path: Path) -> int:
    """Remove the directory ``path`` and all under it; the bytes freed."""
    size = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return size
