"""Eq. 14 ranking: the one-matrix-product path against the per-slot reference, chunking, ties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tbps_runtime.errors import DataError
from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.ranking import naive_similarity, normalize_slots, similarity, top_k


def random_embeddings(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(queries=st.integers(1, 5), rows=st.integers(1, 60), slots=st.integers(1, 9), dim=st.integers(1, 16),
       k=st.integers(1, 70), chunk=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_top_k_equals_naive_per_slot_sum_of_cosines(queries, rows, slots, dim, k, chunk, seed):
    q = random_embeddings(seed, queries, slots, dim)
    g = random_embeddings(seed + 1, rows, slots, dim)
    reference = naive_similarity(q, g)  # (Q, N) float64, from the raw (unnormalised) embeddings
    scores, indices = top_k(q, normalize_slots(g), k, chunk_rows=chunk)
    keep = min(k, rows)
    assert scores.shape == indices.shape == (queries, keep)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, indices, axis=1), atol=1e-4)
    # The k best by the reference: the same scores, best first.
    expected = -np.sort(-reference, axis=1)[:, :keep]
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    np.testing.assert_allclose(similarity(q, normalize_slots(g), chunk_rows=chunk), reference, atol=1e-4)


def test_top_k_order_matches_the_reference_order():
    q, g = random_embeddings(0, 4, 9, 32), random_embeddings(1, 500, 9, 32)
    _, indices = top_k(q, normalize_slots(g), 20)
    expected = np.argsort(-naive_similarity(q, g), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(indices, expected)


def test_chunked_memory_mapped_gallery_equals_in_memory(tmp_path):
    q = random_embeddings(2, 3, 5, 8)
    g = normalize_slots(random_embeddings(3, 1000, 5, 8))
    np.save(tmp_path / "g.npy", g)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    whole_scores, whole_indices = top_k(q, g, 25, chunk_rows=len(g))
    for chunk in (1, 7, 64, 999):
        scores, indices = top_k(q, mapped, 25, chunk_rows=chunk)
        np.testing.assert_array_equal(indices, whole_indices)
        np.testing.assert_allclose(scores, whole_scores, atol=1e-6)
    np.testing.assert_allclose(similarity(q, mapped, chunk_rows=13), similarity(q, g), atol=1e-6)


def test_default_chunk_size_is_used_for_large_galleries(monkeypatch):
    import tbps_runtime.ranking as ranking

    monkeypatch.setattr(ranking, "CHUNK_BYTES", 5 * 8 * 4 * 10)  # 10 rows per chunk
    q, g = random_embeddings(4, 2, 5, 8), normalize_slots(random_embeddings(5, 95, 5, 8))
    chunked = top_k(q, g, 12)
    monkeypatch.setattr(ranking, "CHUNK_BYTES", 1 << 30)
    np.testing.assert_array_equal(chunked[1], top_k(q, g, 12)[1])


def test_ties_keep_gallery_order_like_retrieval_metrics():
    # Integer-valued embeddings: every score is exact, so ties are real ties.
    rng = np.random.default_rng(6)
    g = rng.integers(-1, 2, size=(40, 2, 3)).astype(np.float32)
    g[10:20] = g[0]  # many exact duplicates, across chunk borders
    q = np.zeros((3, 2, 3), np.float32)  # one-hot slots: unit norm, so scores stay integers
    q[np.arange(3)[:, None], np.arange(2), rng.integers(0, 3, size=(3, 2))] = 1
    raw_scores = q.reshape(3, -1) @ g.reshape(40, -1).T  # (3, 40), exact
    expected = np.argsort(-raw_scores, axis=1, kind="stable")
    for chunk in (3, 7, 40):
        _, indices = top_k(q, g, 15, chunk_rows=chunk)
        np.testing.assert_array_equal(indices, expected[:, :15])


def test_recall_from_top_k_equals_retrieval_metrics():
    rng = np.random.default_rng(7)
    gallery_ids = np.repeat(np.arange(30), 3)
    centres = rng.normal(size=(30, 4, 16))
    g = normalize_slots(centres[gallery_ids] + rng.normal(scale=1.5, size=(90, 4, 16)))
    query_ids = np.repeat(np.arange(30), 2)
    q = normalize_slots(centres[query_ids] + rng.normal(scale=1.5, size=(60, 4, 16)))
    metrics = retrieval_metrics(similarity(q, g), query_ids, gallery_ids)
    for k, name in ((1, "r1"), (5, "r5"), (10, "r10")):
        _, indices = top_k(q, g, k, chunk_rows=17)
        hits = (gallery_ids[indices] == query_ids[:, None]).any(axis=1)
        assert 100.0 * hits.mean() == pytest.approx(metrics[name])


def test_empty_inputs_give_empty_outputs():
    g = normalize_slots(random_embeddings(8, 5, 3, 4))
    scores, indices = top_k(np.zeros((0, 3, 4), np.float32), g, 3)
    assert scores.shape == indices.shape == (0, 3)
    scores, indices = top_k(random_embeddings(9, 2, 3, 4), np.zeros((0, 3, 4), np.float32), 3)
    assert scores.shape == indices.shape == (2, 0)
    assert similarity(random_embeddings(9, 2, 3, 4), np.zeros((0, 3, 4), np.float32)).shape == (2, 0)


def test_k_larger_than_the_gallery_returns_all_rows():
    q, g = random_embeddings(10, 1, 3, 4), normalize_slots(random_embeddings(11, 4, 3, 4))
    scores, indices = top_k(q, g, 100)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(scores[0]) <= 0)


def test_non_finite_gallery_rows_are_refused_with_their_row():
    g = normalize_slots(random_embeddings(12, 50, 3, 4))
    g[37, 1, 2] = np.nan
    with pytest.raises(DataError, match="row 37"):
        top_k(random_embeddings(13, 2, 3, 4), g, 5, chunk_rows=16)
    g[37] = 0
    g[3, 0, 0] = np.inf
    with pytest.raises(DataError, match="row 3 "):
        similarity(random_embeddings(13, 2, 3, 4), g)


def test_bad_shapes_and_k_are_refused():
    q, g = random_embeddings(14, 2, 3, 4), random_embeddings(15, 5, 3, 4)
    with pytest.raises(ValueError, match="differ"):
        top_k(q, random_embeddings(15, 5, 4, 4), 3)
    with pytest.raises(ValueError, match=r"\(N, K, d\)"):
        top_k(q, g.reshape(5, 12), 3)
    with pytest.raises(ValueError, match="k must be"):
        top_k(q, g, 0)
    with pytest.raises(DataError, match="query"):
        top_k(np.full((1, 3, 4), np.nan, np.float32), g, 3)


def test_normalize_slots_is_per_slot_and_keeps_zero_slots():
    x = random_embeddings(16, 4, 3, 5)
    x[1, 2] = 0
    y = normalize_slots(x)
    norms = np.linalg.norm(y, axis=-1)
    assert norms[1, 2] == 0
    norms[1, 2] = 1
    np.testing.assert_allclose(norms, 1, atol=1e-6)
