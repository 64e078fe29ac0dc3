"""What a store's answer says about itself: the threshold it used and where it came from, each hit's match
strength, why an answer is empty, and a camera the store does not know. Shared by ``tbps rank``, the
service and :meth:`Store.delete <tbps_runtime.store.base.Store.delete>` (so ``tbps gallery delete/prune``
and the service's ``DELETE /gallery/rows``), so all say the same facts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tbps_runtime.errors import PARAMETER_INVALID, ConfigError
from tbps_runtime.store.calibration import ScoreThreshold, describe_empty
from tbps_runtime.store.rows import RowFilter, StoreHit, format_time


def check_cameras(store: Any, row_filter: RowFilter | None) -> None:
    """Refuse a filter naming a camera the store has no rows of, or sources none of which it has rows of
    (a filter holds each source under several spellings: :func:`~tbps_runtime.ingest.sources.source_spellings`),
    listing those it has.

    Raises:
        ConfigError: code ``parameter_invalid`` naming ``camera`` or ``source``.
    """
    if row_filter is None:
        return
    if row_filter.cameras:
        known = store.cameras()
        unknown = [camera for camera in row_filter.cameras if camera not in known]
        if unknown:
            raise _unknown("camera", unknown[0], known)
    if row_filter.sources:
        known = store.sources()
        if not set(row_filter.sources) & set(known):
            raise _unknown("source", row_filter.sources[0], known)


def _unknown(name: str, value: str, known: list[str]) -> ConfigError:
    listed = ", ".join(known) if known else "none (it has no rows)"
    return ConfigError(f"{name} {value!r} is not in the store: its {name}s are {listed}", code=PARAMETER_INVALID,
                       names=(name,))


def strength(threshold: ScoreThreshold | None, score: float) -> float | None:
    """A hit's match strength in [0, 1] from the store's calibration, or None when it has none."""
    calibration = None if threshold is None else threshold.calibration
    return None if calibration is None else round(calibration.strength(score), 4)


def notices(threshold: ScoreThreshold | None, store: Any) -> list[str]:
    """Facts a reader of the answer should know about its threshold: it came from the bundle (another domain
    than this store's crops), or the store has grown since its calibration."""
    if threshold is None:
        return []
    said = []
    if threshold.source == "bundle":
        said.append(f"the threshold {threshold.value:.4g} is the bundle's, calibrated on its dataset's crops, another "
                    f"domain than the store {store.location}: calibrate the store (tbps calibrate --gallery)")
    if threshold.stale and threshold.calibration is not None:
        said.append(f"the store {store.location} has grown from {threshold.calibration.rows_at_calibration} to "
                    f"{len(store)} rows since its threshold was calibrated: calibrate it again "
                    "(tbps calibrate --gallery)")
    return said


def explain_empty(store: Any, query: np.ndarray, row_filter: RowFilter | None,
                  threshold: ScoreThreshold | None) -> str | None:
    """Why a query's answer is empty: the threshold and the best score without it, or None when no
    threshold was applied (an empty answer is then only the filters').

    Args:
        query: (1, K, d) the query's embedding.
    """
    if threshold is None:
        return None
    best = store.search(query, 1, row_filter=row_filter)[0]
    if not best:
        return describe_empty(threshold, None)
    record = best[0].record
    where = record.camera + ("" if record.time is None else ", " + format_time(record.time)[11:19])
    return describe_empty(threshold, best[0].score, where)


def annotate(store: Any, embedded: np.ndarray, results: Sequence[Sequence[StoreHit]],
             row_filter: RowFilter | None, threshold: ScoreThreshold | None) -> list[dict[str, Any]]:
    """Per query: ``{"strengths": [...], "empty": str | None}`` (see :func:`strength`, :func:`explain_empty`).

    Args:
        embedded: (Q, K, d) the queries' embeddings; results: their hits.
    """
    return [{"strengths": [strength(threshold, hit.score) for hit in hits],
             "empty": None if hits else explain_empty(store, embedded[q:q + 1], row_filter, threshold)}
            for q, hits in enumerate(results)]


__all__ = ["annotate", "check_cameras", "explain_empty", "notices", "strength"]
