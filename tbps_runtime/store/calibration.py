"""A store's own score threshold, calibrated without labels (``tbps calibrate --gallery STORE``).

Why. A bundle's ``score_threshold`` was measured on its dataset's crops; footage crops (detector boxes,
street background, compression, scale) are another domain, where the same Eq. 14 score means something
else. A store calibrates its own threshold from its own impostor distribution.

Definition. Captions of people who are not in the footage (the bundle's held-out captions, or a caption
file) are scored with Eq. 14 against the store's rows: almost every such (caption, row) pair is a
non-match, so these scores are the store's impostor scores. The threshold at false-match rate f is
defined as the bundle's (:func:`tbps_runtime.thresholds.false_match_threshold`): the smallest float32 t
such that at most ``f * n`` of the n impostor scores are ``>= t``. With the threshold the record keeps
:data:`QUANTILES` evenly spaced quantiles of the impostor scores; a hit's *match strength* is the
fraction of impostor scores below its score, read from them by linear interpolation (0 below the
lowest, 1 above the highest). Large stores are subsampled: at most :data:`MAX_SCORES` scores, from
evenly spaced rows.

The record lives in the store's meta under :data:`META_KEY` (JSON text), through
:meth:`~tbps_runtime.store.base.StoreBase.calibration`. A store that has grown by
:data:`REGROW_FRACTION` or more since it was calibrated is *stale*: its threshold still applies, and
readers are told to calibrate again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, QueryError
from tbps_runtime.ranking import similarity
from tbps_runtime.thresholds import DEFAULT_FALSE_MATCH_RATE, check_false_match_rate, false_match_threshold

logger = logging.getLogger(__name__)

META_KEY = "calibration"  # in a store's meta: the record's JSON
QUANTILES = 1001  # impostor-score quantiles kept, at 0, 0.001, ..., 1
MAX_SCORES = 16 << 20  # impostor scores scored at most (64 MiB of float32): rows are subsampled beyond it
REGROW_FRACTION = 0.5  # a store this much larger (in rows) than when calibrated is stale
FORMAT = 1


@dataclass(frozen=True)
class StoreCalibration:
    """A store's calibrated threshold (see the module's description)."""

    value: float  # the Eq. 14 threshold (float32 number)
    false_match_rate: float
    captions: int  # captions scored
    rows: int  # rows scored (fewer than rows_at_calibration when subsampled)
    rows_at_calibration: int  # rows the store held
    fingerprint: str  # the bundle that scored them
    captions_from: str  # "bundle" (its held-out captions) or the caption file's name
    created: float  # UTC seconds
    quantiles: tuple[float, ...]  # QUANTILES impostor-score quantiles, ascending
    format: int = FORMAT

    def strength(self, score: float) -> float:
        """The fraction of impostor scores below ``score``, in [0, 1] (interpolated in the quantiles)."""
        q = np.asarray(self.quantiles, np.float64)
        return float(np.interp(float(score), q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0))

    def grown(self, rows_now: int) -> bool:
        """Whether the store has grown by :data:`REGROW_FRACTION` or more since it was calibrated."""
        return rows_now >= self.rows_at_calibration * (1 + REGROW_FRACTION)

    def to_text(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))  # about 20 kB: within Milvus's 64 kB text

    def summary(self) -> dict[str, Any]:
        """The record without its quantiles (for info and answers)."""
        record = asdict(self)
        del record["quantiles"]
        return record

    @classmethod
    def from_text(cls, text: str, where: str) -> StoreCalibration:
        """Parse the meta value; BundleError naming ``where`` when it is not a calibration record."""
        try:
            record = json.loads(text)
            record["quantiles"] = tuple(float(v) for v in record["quantiles"])
            calibration = cls(**record)
        except (ValueError, TypeError, KeyError) as e:
            raise BundleError(f"{where} has a malformed calibration record ({e}): calibrate the store again "
                              "(tbps calibrate)") from None
        q = np.asarray(calibration.quantiles)
        if (len(q) < 2 or not np.isfinite(q).all() or np.any(np.diff(q) < 0)
                or not math.isfinite(calibration.value) or calibration.rows_at_calibration < 1):
            raise BundleError(f"{where} has a malformed calibration record (quantiles, value or rows): calibrate "
                              "the store again (tbps calibrate)")
        return calibration


def impostor_scores(captions: np.ndarray, store: Any) -> tuple[np.ndarray, int]:
    """Eq. 14 scores of every caption against the store's rows (evenly subsampled to at most
    :data:`MAX_SCORES` scores).

    Args:
        captions: (Q, K, d) text embeddings of captions of people not in the footage.
        store: a :class:`~tbps_runtime.store.base.Store`.

    Returns:
        ((Q, n) float32 scores, n rows scored).
    """
    total = len(store)
    if len(captions) == 0 or total == 0:
        raise ConfigError(f"nothing to calibrate on: {len(captions)} captions, {total} rows in the store")
    stride = max(1, math.ceil(len(captions) * total / MAX_SCORES))
    parts, seen, scored = [], 0, 0
    for ids, _ in store.iter_rows():
        picked = ids[(-seen) % stride::stride]  # the store's rows 0, stride, 2 * stride, ... in id order
        seen += len(ids)
        if len(picked):
            parts.append(similarity(captions, store.embeddings(picked)))  # (Q, b)
            scored += len(picked)
    return np.concatenate(parts, axis=1).astype(np.float32), scored


def calibrate_store(store: Any, captions: np.ndarray, fingerprint: str, captions_from: str,
                    false_match_rate: float) -> StoreCalibration:
    """Calibrate ``store`` on caption embeddings (the module's definition) and record it in its meta.

    Args:
        store: the store (opened for writing: this writes its meta inside ``store.writing()``).
        captions: (Q, K, d) embeddings of captions of people not in the footage.
        fingerprint: the bundle that embedded them (it must be the store's).
        captions_from: where the captions came from, for the record.
        false_match_rate: f in (0, 1).
    """
    false_match_rate = check_false_match_rate(false_match_rate)
    store.check_bundle(fingerprint)
    rows_now = len(store)
    scores, scored = impostor_scores(np.asarray(captions, np.float32), store)
    scores = scores.reshape(-1)  # (Q * n,)
    quantiles = np.quantile(scores.astype(np.float64), np.linspace(0.0, 1.0, QUANTILES))
    calibration = StoreCalibration(
        value=false_match_threshold(scores, false_match_rate), false_match_rate=false_match_rate,
        captions=len(captions), rows=scored, rows_at_calibration=rows_now, fingerprint=fingerprint,
        captions_from=captions_from, created=time.time(), quantiles=tuple(float(v) for v in quantiles))
    with store.writing("calibrating"):
        store.record_calibration(calibration.to_text())
    logger.info("calibrated %s: threshold %.4f at false-match rate %g (%d captions x %d rows)", store.location,
                calibration.value, false_match_rate, len(captions), scored)
    return calibration


@dataclass(frozen=True)
class ScoreThreshold:
    """The threshold a search used and where it came from: ``store`` (its own calibration), ``bundle``
    (the bundle's, calibrated on its dataset: another domain than a store's footage) or ``given``."""

    value: float
    source: str
    calibration: StoreCalibration | None = None  # the store's, when it has one (strength reads it)
    stale: bool = False  # the store grew by REGROW_FRACTION since its calibration

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "stale": self.stale}


def describe_empty(threshold: ScoreThreshold, best_score: float | None, where: str = "") -> str:
    """Why an answer is empty: ``0 hits at >= 3.83 (store threshold); best score 1.75 (cam3, 14:00:07)``.

    ``best_score``: the best score without the threshold, found at ``where`` (a store's camera and time,
    a gallery's row and image); None when no row passed the filters."""
    words = f"0 hits at >= {threshold.value:.4g} ({threshold.source} threshold)"
    if best_score is None:
        return words + "; no rows pass the filters"
    return words + f"; best score {best_score:.4g}" + (f" ({where})" if where else "")


# ---- the captions and the whole calibration -----------------------------------------------------

def read_captions(path: str | Path) -> list[str]:
    """A caption file: UTF-8 text, one caption per line (blank lines skipped).

    Raises:
        InputFileNotFoundError: no such file; QueryError: not UTF-8, or no caption in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"caption file not found: {path}")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise QueryError(f"{path} is not UTF-8 text ({e}): save it as UTF-8, one caption per line") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise QueryError(f"{path} holds no captions (one per line)")
    return captions


def calibration_captions(search: Any, captions_file: str | Path | None) -> tuple[list[str], str]:
    """The captions to calibrate on and where they came from: ``captions_file`` when given, else the
    bundle's held-out captions (code ``store_calibration_without_captions`` when it has none)."""
    from tbps_runtime.model.bundle import heldout_captions

    if captions_file is not None:
        return read_captions(captions_file), Path(captions_file).name
    captions = heldout_captions(search.directory, search.manifest)
    if captions is None:
        raise ConfigError(f"the bundle {search.directory} carries no held-out captions (it was exported before "
                          "they were added): give a caption file of people who are not in the footage",
                          code="store_calibration_without_captions", bundle=str(search.directory))
    return captions, "bundle"


def calibrate_gallery(search: Any, store: Any, captions_file: str | Path | None = None,
                      false_match_rate: float = DEFAULT_FALSE_MATCH_RATE) -> StoreCalibration:
    """Calibrate ``store`` with ``search``'s bundle (a :class:`~tbps_runtime.search.PersonSearch`, the one
    that built it) on ``captions_file`` or the bundle's held-out captions, and record it in the store."""
    from tbps_runtime.threads import BLAS

    false_match_rate = check_false_match_rate(false_match_rate)
    store.check_bundle(search.fingerprint, search.directory)
    captions, source = calibration_captions(search, captions_file)
    embedded = search.embed_texts(captions)  # (Q, K, d)
    with BLAS.limit(search.threads):
        return calibrate_store(store, embedded, search.fingerprint, source, false_match_rate)


__all__ = ["META_KEY", "QUANTILES", "REGROW_FRACTION", "ScoreThreshold", "StoreCalibration", "calibrate_store",
           "calibrate_gallery", "calibration_captions",
           "describe_empty", "impostor_scores", "read_captions"]
