"""Embed a store's crops again with another bundle (``tbps gallery reindex``): a new store, same metadata."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from tbps_runtime.errors import DataError, OutputError
from tbps_runtime.model.encoder import Encoder
from tbps_runtime.store.base import Store
from tbps_runtime.store.open import create_store, is_store_directory, open_store
from tbps_runtime.store.rows import CropRecord

logger = logging.getLogger(__name__)


def reindex(directory: str | Path, bundle: str | Path, output: str | Path, *, batch_size: int = 32,
            threads: int | None = None, progress: bool = False, milvus: str | None = None) -> int:
    """Re-embed every row of the store ``directory`` (local or Milvus) with ``bundle`` into a new store at
    ``output`` (local, or in the Milvus collection ``milvus`` names: see
    :func:`~tbps_runtime.store.open.create_store`). Crops are hard-linked, or copied across file systems;
    ingest progress carries over, so ``tbps ingest`` can continue into the new store. Returns the number
    of rows.

    Raises:
        OutputError: ``output`` exists and is not empty, or lies inside the store (or the store inside it).
        DataError: a row has no crop to embed.
    """
    output = Path(output)
    check_apart(Path(directory), output)
    with open_store(directory) as source:
        if is_store_directory(output) or (output.exists() and any(output.iterdir())):
            raise OutputError(f"{output} exists and is not empty: reindex writes a new store")
        encoder = Encoder.from_bundle(bundle, threads=threads)
        with create_store(output, fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                          embed_dim=encoder.slot_shape[1], bundle=bundle, milvus=milvus) as target:
            return _copy(source, target, encoder, batch_size, progress)


def check_apart(directory: Path, output: Path) -> None:
    """Refuse an ``output`` inside the store ``directory`` (its writers would take the new store's files for
    their own) or a store inside ``output``; paths compared resolved, links followed.

    Raises:
        OutputError: naming both.
    """
    store, new = directory.resolve(), output.resolve()
    if new == store or store in new.parents:
        raise OutputError(f"the output {output} is inside the store {directory}: write the new store elsewhere")
    if new in store.parents:
        raise OutputError(f"the store {directory} is inside the output {output}: write the new store elsewhere")


def _copy(source: Store, target: Store, encoder: Encoder, batch_size: int, progress: bool) -> int:
    """Every row of ``source``, embedded again, appended to ``target`` with its crop; then the progress."""
    total = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source), unit="row", desc="reindex", leave=False)
    with target.writing("reindexing into"):
        for _, records in source.iter_rows(batch=max(batch_size, 256)):
            batch, folder = target.new_batch()
            images, moved = [], []
            for i, record in enumerate(records):
                if not record.crop:
                    raise DataError(f"a row of {source.location} from {record.source} frame {record.frame} has "
                                    "no crop to embed")
                crop = source.crop_path(record.crop)
                name = f"{i}{crop.suffix}"
                _link_or_copy(crop, folder / name)
                images.append(str(folder / name))
                moved.append(_with_crop(record, f"{batch}/{name}"))
            target.append(encoder.embed_images(images, batch_size), moved, crops=batch)
            total += len(moved)
            if bar is not None:
                bar.update(len(moved))
        target.save_progress(source.all_progress())
    if bar is not None:
        bar.close()
    return total


def _with_crop(record: CropRecord, crop: str) -> CropRecord:
    return replace(record, crop=crop)


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
