"""tbps_runtime.gallery.faiss_index: FAISS search agrees with the exact Eq. 14 ``top_k``, and refuses
what it cannot answer (another (K, d), a bad spec, a damaged file)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.ranking import normalize_slots, top_k

faiss = pytest.importorskip("faiss")

from tbps_runtime.gallery.faiss_index import (  # noqa: E402
    build_faiss_index,
    index_shape,
    read_faiss_index,
    require_faiss,
    rescore_exactly,
    search_faiss,
    write_faiss_index,
)

K, D = 3, 16


def _gallery(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return normalize_slots(rng.standard_normal((rows, K, D), dtype=np.float32))


def _queries(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, K, D), dtype=np.float32)  # not normalised


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return _gallery(2000)


def test_import_needs_no_faiss():
    code = ("import sys; sys.modules['faiss'] = None; import tbps_runtime.gallery.faiss_index as f\n"
            "try:\n    f.require_faiss()\nexcept f.ConfigError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'tbps[faiss]'" in out
    assert require_faiss() is faiss


def test_flat_equals_top_k(gallery):
    queries = _queries(7)
    index = build_faiss_index(gallery, "Flat")
    assert index.ntotal == len(gallery) and index_shape(index) == (K, D)
    scores, rows = search_faiss(index, queries, 10)
    exact_scores, exact_rows = top_k(queries, gallery, 10)
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (7, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)


def test_queries_are_normalised_per_slot(gallery):
    queries = _queries(4)
    scale = np.array([0.1, 3.0, 40.0], np.float32)[None, :, None]  # a different scale per slot
    index = build_faiss_index(gallery, "Flat")
    scores, rows = search_faiss(index, queries * scale, 5)
    ref_scores, ref_rows = search_faiss(index, normalize_slots(queries), 5)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert scores.max() <= K + 1e-4  # a sum of K cosines


def test_ivf_with_every_list_probed_is_exact(gallery):
    queries = _queries(5)
    index = build_faiss_index(gallery, "IVF8,Flat", seed=0)
    assert faiss.extract_index_ivf(index).nprobe == 1  # 8 // 16, at least 1
    scores, rows = search_faiss(index, queries, 10, nprobe=8)
    exact_scores, exact_rows = top_k(queries, gallery, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    assert faiss.extract_index_ivf(index).nprobe == 1  # the call's nprobe is not left behind


def test_build_is_repeatable_and_train_rows(gallery):
    a = build_faiss_index(gallery, "IVF8,PQ4x4", seed=3, train_rows=600)
    b = build_faiss_index(gallery, "IVF8,PQ4x4", seed=3, train_rows=600)
    queries = _queries(3)
    np.testing.assert_array_equal(search_faiss(a, queries, 5, nprobe=8)[1], search_faiss(b, queries, 5, nprobe=8)[1])
    with pytest.raises(ConfigError, match="train_rows"):
        build_faiss_index(gallery, "IVF8,Flat", train_rows=0)


def test_hnsw_ef_search(gallery):
    index = build_faiss_index(gallery, "HNSW16")
    queries = _queries(5)
    _, rows = search_faiss(index, queries, 10, ef_search=512)
    _, exact_rows = top_k(queries, gallery, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_rows)]) >= 0.9
    with pytest.raises(ConfigError, match="nprobe applies to IVF"):
        search_faiss(index, queries, 10, nprobe=4)
    with pytest.raises(ConfigError, match="ef_search applies to HNSW"):
        search_faiss(build_faiss_index(gallery[:50], "Flat"), queries, 10, ef_search=4)


def test_k_larger_than_gallery():
    small = _gallery(6)
    queries = _queries(2)
    scores, rows = search_faiss(build_faiss_index(small, "Flat"), queries, 10)
    exact_scores, exact_rows = top_k(queries, small, 10)
    assert rows.shape == exact_rows.shape == (2, 6)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="k must be"):
        search_faiss(build_faiss_index(small, "Flat"), queries, 0)


def test_short_results_are_padded_at_the_end(gallery):
    # 4 lists of ~500 rows, 1 probed, k = 1500: FAISS finds fewer rows than asked for
    index = build_faiss_index(gallery, "IVF4,Flat")
    scores, rows = search_faiss(index, _queries(2), 1500, nprobe=1)
    assert rows.shape == (2, 1500)
    for s, r in zip(scores, rows):
        found = r >= 0
        assert not found.all() and found[:found.sum()].all()  # the -1s come last
        assert np.all(np.isneginf(s[~found])) and np.all(np.diff(s[found]) <= 0)


def test_equal_scores_keep_row_order():
    base = _gallery(5)
    gallery = np.concatenate([base, base, base])  # rows i, i + 5, i + 10 tie exactly
    scores, rows = search_faiss(build_faiss_index(gallery, "Flat"), base[:1], 3)
    np.testing.assert_array_equal(rows, [[0, 5, 10]])


def test_shape_mismatch_is_refused(gallery):
    index = build_faiss_index(gallery, "Flat")
    with pytest.raises(BundleError, match=r"\(K, d\) = \(3, 16\).*\(6, 8\)"):
        search_faiss(index, np.ones((1, 6, 8), np.float32), 5)  # same K * d, other slots
    with pytest.raises(BundleError, match="different models"):
        search_faiss(index, np.ones((1, K, 8), np.float32), 5)
    with pytest.raises(DataError, match="NaN"):
        search_faiss(index, np.full((1, K, D), np.nan, np.float32), 5)


def test_bad_spec_names_it(gallery):
    with pytest.raises(ConfigError, match=r"spec 'IVFbogus,Flat'.*48-dimensional"):
        build_faiss_index(gallery, "IVFbogus,Flat")
    with pytest.raises(ConfigError, match="factory string"):
        build_faiss_index(gallery, "  ")


def test_nan_gallery_row_is_reported(gallery):
    bad = gallery[:100].copy()
    bad[42, 1, 3] = np.inf
    with pytest.raises(DataError, match="row 42"):
        build_faiss_index(bad, "Flat")


def test_memory_mapped_gallery(tmp_path, gallery):
    np.save(tmp_path / "g.npy", gallery)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    index = build_faiss_index(mapped, "IVF8,Flat")
    queries = _queries(3)
    np.testing.assert_array_equal(search_faiss(index, queries, 5, nprobe=8)[1], top_k(queries, gallery, 5)[1])


def test_write_read_roundtrip(tmp_path, gallery):
    index = build_faiss_index(gallery, "IVF8,Flat")
    path = write_faiss_index(index, tmp_path / "sub" / "g.faiss")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p != path]  # no temp file left
    loaded = read_faiss_index(path)
    assert index_shape(loaded) == (K, D) and loaded.ntotal == len(gallery)
    assert faiss.extract_index_ivf(loaded).nprobe == faiss.extract_index_ivf(index).nprobe
    queries = _queries(4)
    for a, b in zip(search_faiss(index, queries, 10, nprobe=3), search_faiss(loaded, queries, 10, nprobe=3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BundleError):
        search_faiss(loaded, np.ones((1, 6, 8), np.float32), 5)
    assert faiss.read_index(str(path)).ntotal == len(gallery)  # still a plain FAISS file


def test_plain_faiss_file_is_read(tmp_path, gallery):
    index = faiss.IndexFlatIP(K * D)
    index.add(gallery.reshape(len(gallery), -1))
    faiss.write_index(index, str(tmp_path / "plain.faiss"))
    loaded = read_faiss_index(tmp_path / "plain.faiss")
    assert index_shape(loaded) is None
    queries = _queries(2)
    np.testing.assert_array_equal(search_faiss(loaded, queries, 5)[1], top_k(queries, gallery, 5)[1])
    with pytest.raises(BundleError, match="flatten to"):
        search_faiss(loaded, np.ones((1, K, 8), np.float32), 5)


def test_missing_and_corrupt_files(tmp_path, gallery):
    with pytest.raises(InputFileNotFoundError, match="not found"):
        read_faiss_index(tmp_path / "nope.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"this is not an index" * 10)
    with pytest.raises(DataError, match="not a readable FAISS index"):
        read_faiss_index(tmp_path / "junk.faiss")
    good = write_faiss_index(build_faiss_index(gallery, "Flat"), tmp_path / "g.faiss").read_bytes()
    (tmp_path / "cut.faiss").write_bytes(good[:len(good) // 2])  # truncated: the trailer is gone too
    with pytest.raises(DataError, match="not a readable FAISS index"):
        read_faiss_index(tmp_path / "cut.faiss")
    (tmp_path / "trailer.faiss").write_bytes(good[:-20] + b"{broken}" + good[-16:])  # damaged trailer
    with pytest.raises(DataError, match="trailer"):
        read_faiss_index(tmp_path / "trailer.faiss")


def test_rescoring_candidates_gives_the_exact_scores_and_order_across_blocks(gallery):
    """Candidates holding the exact top k (plus others, and -1 places) rescore to exactly top_k,
    with rows numbered across two blocks as for shards."""
    queries = _queries(5)
    exact_scores, exact_rows = top_k(queries, gallery, 10)
    rng = np.random.default_rng(3)
    candidates = np.concatenate([exact_rows, rng.integers(0, len(gallery), (5, 30)),
                                 np.full((5, 4), -1)], axis=1)
    candidates = rng.permuted(candidates, axis=1)
    scores, rows = rescore_exactly(queries, [gallery[:700], gallery[700:]], candidates, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)


def test_rescoring_keeps_the_best_of_what_was_found(gallery):
    queries = _queries(2)
    _, exact_rows = top_k(queries, gallery, 10)
    candidates = np.array([[exact_rows[0, 9], exact_rows[0, 3], -1, -1], [-1, -1, -1, -1]])
    scores, rows = rescore_exactly(queries, [gallery], candidates, 3)
    assert rows.tolist() == [[exact_rows[0, 3], exact_rows[0, 9], -1], [-1, -1, -1]]
    assert np.isneginf(scores[0, 2]) and np.isneginf(scores[1]).all()


def test_rescoring_restores_the_recall_of_a_coarse_product_quantiser(gallery):
    """PQ with 1 byte per slot ranks roughly; its best 100, rescored, hold the exact top 10."""
    queries = _queries(20)
    _, exact_rows = top_k(queries, gallery, 10)
    index = build_faiss_index(gallery, "PQ3x4", seed=0)
    _, rough = search_faiss(index, queries, 10)
    _, candidates = search_faiss(index, queries, 100)
    _, rescored = rescore_exactly(queries, [gallery], candidates, 10)

    def recall(found):
        return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact_rows.tolist())])

    assert recall(rough) < 0.8 and recall(rescored) > recall(rough) + 0.1
