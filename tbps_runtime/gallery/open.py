"""Open whatever plain gallery is at a path: a ``g.npy`` file, or a directory of shards ranked as one
(a store directory: :func:`tbps_runtime.store.open.open_store`)."""

from __future__ import annotations

from pathlib import Path

from tbps_runtime.gallery.npy import Gallery, load_gallery_file
from tbps_runtime.gallery.shards import ShardedGallery, load_shard_directory


def load_gallery(path: str | Path, mmap: bool = True) -> Gallery | ShardedGallery:
    """Read and validate ``g.npy`` and its ``g.json``; rows are memory-mapped unless ``mmap=False``.

    ``path`` may also be a directory of shard galleries (``tbps index --shard``):
    that gives a :class:`~tbps_runtime.gallery.shards.ShardedGallery`, which ranks as
    the one gallery of all its shards' images.

    Returns:
        A :class:`~tbps_runtime.gallery.npy.Gallery`, or a
        :class:`~tbps_runtime.gallery.shards.ShardedGallery` for a directory.

    Raises:
        InputFileNotFoundError: no such file.
        BundleError: no ``g.json`` beside it, or the two disagree, or the array
            is not (N, K, d) float32; for a directory, shards that do not make one gallery.
    """
    path = Path(path)
    if path.is_dir():
        return load_shard_directory(path, mmap=mmap)
    return load_gallery_file(path, mmap=mmap)


__all__ = ["load_gallery"]
