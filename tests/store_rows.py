"""Random store rows shared by the store tests (one store against the other, and Milvus's own)."""

from __future__ import annotations

import numpy as np

from tbps_runtime.ranking import normalize_slots
from tbps_runtime.store.rows import CropRecord

HOSTILE = 'x" or camera != "'  # a camera name that would escape a naively quoted filter
CAMERAS = ["cam1", "cam2", "cam3", HOSTILE]


def random_rows(n: int, seed: int, k: int, d: int, t0: float,
                now: float | None = None) -> tuple[np.ndarray, list[CropRecord]]:
    """(n, k, d) normalised rows and records with random cameras, sources, times after ``t0`` (some
    missing) and tracks (some missing); with ``now``, times are 10 days or 1 hour before it."""
    rng = np.random.default_rng(seed)
    embeddings = normalize_slots(rng.normal(size=(n, k, d)))
    records = []
    for i in range(n):
        if now is None:
            when = None if i % 7 == 0 else t0 + float(rng.uniform(0, 3600))
        else:
            when = None if i % 7 == 0 else now - (864_000 if i % 2 else 3600)
        records.append(CropRecord(
            source=f"s{rng.integers(3)}", camera=CAMERAS[rng.integers(len(CAMERAS))], time=when, offset=i / 10,
            frame=i, box=(1.0, 2.0, 30.5, 60.0) if i % 3 else None, score=float(rng.uniform()),
            track=None if i % 5 == 0 else int(rng.integers(40)), identity="p7" if i % 11 == 0 else None))
    return embeddings, records
