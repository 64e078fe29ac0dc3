"""retrieval_metrics on hand-computed cases, and against a plain per-query loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tbps_runtime.metrics import retrieval_metrics


def test_hand_computed_case():
    # Gallery ids: [a, b, a, c]; query 0 is id a, query 1 is id c.
    similarity = np.array([
        [0.1, 0.9, 0.5, 0.2],   # ranking: b, a(2), c, a(0) -> hits at ranks 2 and 4
        [0.0, 0.1, 0.2, 0.3],   # ranking: c first -> hit at rank 1
    ])
    result = retrieval_metrics(similarity, np.array([0, 2]), np.array([0, 1, 0, 2]))
    # Query 0: R@1 miss, R@5 hit. AP = (1/2 + 2/4) / 2 = 0.5. INP = 2/4 = 0.5.
    # Query 1: AP = 1, INP = 1.
    assert result["r1"] == pytest.approx(50.0)
    assert result["r5"] == pytest.approx(100.0)
    assert result["r10"] == pytest.approx(100.0)
    assert result["map"] == pytest.approx(75.0)
    assert result["minp"] == pytest.approx(75.0)


def test_ties_break_by_gallery_order():
    similarity = np.zeros((1, 3))
    # All tied: gallery order decides, so the hit at index 2 is rank 3.
    result = retrieval_metrics(similarity, np.array([7]), np.array([1, 2, 7]))
    assert result["r1"] == 0.0
    assert result["map"] == pytest.approx(100.0 / 3)
    result = retrieval_metrics(similarity, np.array([1]), np.array([1, 2, 7]))
    assert result["r1"] == 100.0


@pytest.mark.parametrize("bad", [
    (np.zeros(3), np.array([0]), np.array([0, 1, 2])),
    (np.zeros((2, 3)), np.array([0]), np.array([0, 1, 2])),
    (np.zeros((0, 3)), np.array([], dtype=int), np.array([0, 1, 2])),
    (np.full((1, 3), np.nan), np.array([0]), np.array([0, 1, 2])),
    (np.zeros((1, 3)), np.array([9]), np.array([0, 1, 2])),
])
def test_bad_inputs_raise_value_error(bad):
    with pytest.raises(ValueError):
        retrieval_metrics(*bad)


def _reference(similarity, query_ids, gallery_ids):
    """A plain loop, written independently of the vectorised version."""
    totals = {"r1": 0.0, "r5": 0.0, "r10": 0.0, "map": 0.0, "minp": 0.0}
    for q in range(len(query_ids)):
        order = sorted(range(len(gallery_ids)), key=lambda g: (-similarity[q, g], g))
        hit_ranks = [r + 1 for r, g in enumerate(order) if gallery_ids[g] == query_ids[q]]
        for k in (1, 5, 10):
            totals[f"r{k}"] += hit_ranks[0] <= k
        totals["map"] += np.mean([(i + 1) / r for i, r in enumerate(hit_ranks)])
        totals["minp"] += len(hit_ranks) / hit_ranks[-1]
    return {k: 100.0 * v / len(query_ids) for k, v in totals.items()}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_matches_reference_loop(n_queries, n_gallery, seed):
    rng = np.random.default_rng(seed)
    gallery_ids = rng.integers(0, 5, n_gallery)
    query_ids = rng.choice(gallery_ids, n_queries)
    # Coarse values so ties happen often.
    similarity = rng.integers(0, 4, (n_queries, n_gallery)).astype(np.float32)
    got = retrieval_metrics(similarity, query_ids, gallery_ids)
    want = _reference(similarity, query_ids, gallery_ids)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9)
