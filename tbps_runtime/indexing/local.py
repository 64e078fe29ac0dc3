"""Indexing in this process: decode the next batch on a thread while the current one runs the image tower."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from tqdm import tqdm

from tbps_runtime.gallery.npy import PartialIndex
from tbps_runtime.model.encoder import Encoder


def embed_into(encoder: Encoder, partial: PartialIndex, paths: Sequence[str], batch_size: int, strict: bool,
               progress: bool) -> None:
    """Embed ``paths[partial.done:]`` into ``partial``, batch by batch, recording each batch.

    Unreadable images are recorded as failures, or with ``strict`` end the run
    (:meth:`~tbps_runtime.gallery.npy.PartialIndex.strict_failure`).
    """
    starts = range(partial.done, len(paths), batch_size)
    with tqdm(total=len(paths), initial=partial.done, desc="index", unit="img", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=1) as reader:  # decode the next batch while this one runs
        pending = reader.submit(encoder.read_batch, paths[starts[0]:starts[0] + batch_size]) if starts else None
        for start in starts:
            positions, pixels, failures = pending.result()
            end = min(start + batch_size, len(paths))
            if end < len(paths):
                pending = reader.submit(encoder.read_batch, paths[end:end + batch_size])
            if failures and strict:
                raise partial.strict_failure(next(iter(failures.values())))
            rows = encoder.embed_pixels(pixels) if positions else encoder.empty()  # (b, K, d)
            partial.record(end, [start + p for p in positions], rows,
                           {start + p: message for p, message in failures.items()})
            bar.update(end - start)
