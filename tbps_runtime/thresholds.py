"""False-match-rate thresholds: the order statistic behind ``tbps calibrate`` (a bundle on a labelled split,
:mod:`tbps_export.calibrate`) and ``tbps calibrate --gallery`` (a store on its own impostor scores,
:mod:`tbps_runtime.store.calibration`). Torch-free, so an edge box calibrates its store.

The threshold at false-match rate f over n non-matching scores: with m the largest count with
``m / n <= f``, t is the float32 number just above the (m + 1)-th highest score, so every score tied with
it is below t (the rate is never exceeded) and any lower float32 t would let m + 1 through.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tbps_runtime.errors import ConfigError

DEFAULT_FALSE_MATCH_RATE = 0.01


def check_false_match_rate(false_match_rate: Any) -> float:
    """``false_match_rate`` as a float in (0, 1); anything else raises :class:`ConfigError`."""
    if isinstance(false_match_rate, bool) or not isinstance(false_match_rate, (int, float)) \
            or not 0 < false_match_rate < 1:
        raise ConfigError(f"false-match rate must be between 0 and 1 (exclusive), got {false_match_rate!r}: "
                          f"e.g. {DEFAULT_FALSE_MATCH_RATE} lets 1 stranger in 100 score above the threshold")
    return float(false_match_rate)


def allowed_false_matches(non_matching: int, false_match_rate: float) -> int:
    """m: the most non-matching pairs that may score ``>= t``, the largest count with
    ``m / non_matching <= false_match_rate`` (evaluated in floating point, as a reader checks it)."""
    allowed = min(non_matching, math.floor(false_match_rate * non_matching))
    while allowed < non_matching and (allowed + 1) / non_matching <= false_match_rate:
        allowed += 1
    while allowed > 0 and allowed / non_matching > false_match_rate:
        allowed -= 1
    return allowed


def threshold_above(score: float) -> float:
    """The smallest float32 number greater than ``score`` (a float32 value), as a Python float.

    Float32, not float64: numpy compares float32 scores with a Python float in float32, where a float64
    step above ``score`` would round back to ``score`` and let it through."""
    return float(np.nextafter(np.float32(score), np.float32(np.inf)))


def false_match_threshold(non_matching: np.ndarray, false_match_rate: float) -> float:
    """The threshold t of the module's definition from the non-matching scores alone.

    Args:
        non_matching: (n,) Eq. 14 scores of the non-matching pairs (any order; cast to float32).
        false_match_rate: f in (0, 1).

    Returns:
        t, a float32 value: at most ``f * n`` of the scores are ``>= t``; at the next lower float32, more.
    """
    scores = np.asarray(non_matching, np.float32).reshape(-1)
    if scores.size == 0:
        raise ConfigError("no non-matching pairs: a threshold needs captions and images of different identities")
    tally = OrderStatistic(scores.size, check_false_match_rate(false_match_rate))
    tally.add(scores)
    return threshold_above(tally.value())


class OrderStatistic:
    """The (m + 1)-th highest of n scores that arrive in blocks, keeping only the side that holds it."""

    def __init__(self, total: int, false_match_rate: float):
        self.total = total
        self.rank = allowed_false_matches(total, false_match_rate) + 1  # 1-based, from the top
        self.high = self.rank <= total - self.rank + 1  # keep the highest `rank`, else the lowest n - rank + 1
        self.keep = self.rank if self.high else total - self.rank + 1
        self.kept = np.empty(0, np.float32)
        self.seen = 0

    def add(self, scores: np.ndarray) -> None:
        """Take a block of (b,) float32 scores."""
        self.seen += scores.size
        pool = np.concatenate([self.kept, scores])
        if pool.size > self.keep:
            cut = pool.size - self.keep if self.high else self.keep - 1
            pool = np.partition(pool, cut)
            pool = pool[cut:] if self.high else pool[:self.keep]
        self.kept = pool

    def value(self) -> float:
        assert self.seen == self.total, (self.seen, self.total)  # every block was added
        return float(self.kept.min() if self.high else self.kept.max())


__all__ = ["DEFAULT_FALSE_MATCH_RATE", "OrderStatistic", "allowed_false_matches", "check_false_match_rate",
           "false_match_threshold", "threshold_above"]
