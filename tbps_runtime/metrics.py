"""Text-to-image retrieval metrics as the field reports them (×100).

A query's hits are all gallery items with the query's identity. Ranking is
by descending similarity; ties keep gallery order (a stable sort), so the
figures are deterministic.
"""

from __future__ import annotations

import numpy as np

# Queries ranked per block: bounds the (block, gallery) index array in memory.
_QUERY_BLOCK = 1024


def retrieval_metrics(
    similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray
) -> dict[str, float]:
    """R@1/5/10, mAP and mINP of a (queries, gallery) similarity matrix.

    Args:
        similarity: (Q, G) scores, higher is more similar.
        query_ids: (Q,) identity of each query.
        gallery_ids: (G,) identity of each gallery item.

    Returns:
        ``{"r1", "r5", "r10", "map", "minp"}``, each a percentage in [0, 100].

    Raises:
        ValueError: on mismatched shapes, an empty input, non-finite scores,
            or a query whose identity is absent from the gallery.
    """
    similarity = np.asarray(similarity)
    query_ids = np.asarray(query_ids)
    gallery_ids = np.asarray(gallery_ids)
    _check_inputs(similarity, query_ids, gallery_ids)
    recall_at = {1: 0.0, 5: 0.0, 10: 0.0}
    ap_sum = inp_sum = 0.0
    for start in range(0, len(query_ids), _QUERY_BLOCK):
        block = slice(start, start + _QUERY_BLOCK)
        order = np.argsort(-similarity[block], axis=1, kind="stable")  # (b, G)
        matches = gallery_ids[order] == query_ids[block, None]  # (b, G) bool
        first_hit = matches.argmax(axis=1)  # rank (0-based) of the first hit
        for k in recall_at:
            recall_at[k] += float(np.sum(first_hit < k))
        ap, inp = _average_precision(matches)
        ap_sum += float(ap.sum())
        inp_sum += float(inp.sum())
    n = len(query_ids)
    return {
        "r1": 100.0 * recall_at[1] / n,
        "r5": 100.0 * recall_at[5] / n,
        "r10": 100.0 * recall_at[10] / n,
        "map": 100.0 * ap_sum / n,
        "minp": 100.0 * inp_sum / n,
    }


def _average_precision(matches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP and INP from a (b, G) boolean hit matrix in rank order."""
    ranks = np.arange(1, matches.shape[1] + 1)  # 1-based rank of each column
    hits_so_far = np.cumsum(matches, axis=1)
    n_hits = hits_so_far[:, -1]
    # AP: mean over hits of precision at that hit's rank.
    ap = np.sum(np.where(matches, hits_so_far / ranks, 0.0), axis=1) / n_hits
    # INP: hits / rank of the hardest (last) hit.
    last_hit_rank = matches.shape[1] - np.argmax(matches[:, ::-1], axis=1)
    return ap, n_hits / last_hit_rank


def _check_inputs(similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray) -> None:
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (queries, gallery), got shape {similarity.shape}")
    if query_ids.shape != (similarity.shape[0],) or gallery_ids.shape != (similarity.shape[1],):
        raise ValueError(
            f"similarity {similarity.shape} does not match query_ids {query_ids.shape} "
            f"and gallery_ids {gallery_ids.shape}"
        )
    if similarity.size == 0:
        raise ValueError(f"cannot rank an empty similarity matrix of shape {similarity.shape}")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity contains NaN or inf")
    missing = ~np.isin(query_ids, gallery_ids)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(query_ids)} queries have an identity absent from "
            f"the gallery (first: {query_ids[missing][:3].tolist()}); every query needs a match"
        )
