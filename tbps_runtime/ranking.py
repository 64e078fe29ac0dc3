"""Eq. 14 ranking: S(I, T) = sum over the K slots of cos(slot_v, slot_t).

With every slot L2-normalised, Eq. 14 is one dot product of the flattened
(K * d) vectors, so a whole gallery is scored by one matrix product. The
gallery may be a memory-mapped ``g.npy`` larger than RAM: it is scored in
chunks of rows, and only the running top k survive each chunk. Ties keep
gallery order (the lower row first), exactly as
:func:`tbps_runtime.metrics.retrieval_metrics` ranks.

Gallery rows are expected to be normalised already (the towers emit
normalised slots and the index stores them as is); queries are normalised
here, which is cheap.
"""

from __future__ import annotations

import numpy as np

from tbps_runtime.errors import DataError

# Gallery bytes scored per chunk: large enough for an efficient matrix
# product, small enough that a memory-mapped gallery streams through RAM.
CHUNK_BYTES = 64 << 20
_EPS = 1e-12


def normalize_slots(embeddings: np.ndarray) -> np.ndarray:
    """(N, K, d) -> (N, K, d) float32 with every slot scaled to unit L2 norm
    (an all-zero slot stays zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)  # (N, K, 1)
    return embeddings / np.maximum(norms, np.float32(_EPS))


def similarity(queries: np.ndarray, gallery: np.ndarray, chunk_rows: int | None = None) -> np.ndarray:
    """Eq. 14 for every (query, gallery row) pair: (Q, K, d) x (N, K, d) -> (Q, N) float32.

    Queries are normalised per slot here; gallery rows must already be.
    """
    queries, gallery = _check_pair(queries, gallery)
    flat_queries = _flat_queries(queries)  # (Q, K*d)
    out = np.empty((len(queries), len(gallery)), np.float32)
    for start, chunk in gallery_chunks(gallery, chunk_rows):
        out[:, start:start + len(chunk)] = _scores(flat_queries, chunk)
    _check_finite(out, 0)
    return out


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int,
          chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best gallery rows for each query, best first.

    Args:
        queries: (Q, K, d) query embeddings (normalised here).
        gallery: (N, K, d) per-slot normalised gallery, e.g. a memory map.
        k: how many to keep; fewer come back when the gallery is smaller.
        chunk_rows: gallery rows scored per matrix product (default: ~64 MiB).

    Returns:
        ``(scores, indices)``, both (Q, min(k, N)): Eq. 14 scores (float32)
        and gallery rows (int64). Equal scores keep gallery order.

    Raises:
        DataError: when a gallery row holds NaN or inf (its score is not finite).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries, gallery = _check_pair(queries, gallery)
    keep = min(k, len(gallery))
    best_scores = np.empty((len(queries), 0), np.float32)
    best_indices = np.empty((len(queries), 0), np.int64)
    if keep == 0 or len(queries) == 0:
        return np.zeros((len(queries), keep), np.float32), np.zeros((len(queries), keep), np.int64)
    flat_queries = _flat_queries(queries)  # (Q, K*d)
    for start, chunk in gallery_chunks(gallery, chunk_rows):
        scores = _scores(flat_queries, chunk)  # (Q, c)
        _check_finite(scores, start)
        indices = _chunk_top(scores, keep) + start  # (Q, <=keep) global rows
        chunk_scores = np.take_along_axis(scores, indices - start, axis=1)
        best_scores, best_indices = merge_top_k([best_scores, chunk_scores], [best_indices, indices], keep)
    return best_scores, best_indices


def merge_top_k(scores: list[np.ndarray], rows: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge candidate lists into the k best per query: score descending, ties to the lower row.

    Args:
        scores: (Q, c_i) float32 candidate scores, one array per source (a chunk, a shard).
        rows: (Q, c_i) int64 global gallery rows of those candidates.
        k: how many to keep (fewer when there are fewer candidates).

    Returns:
        ``(scores, rows)``, both (Q, min(k, sum c_i)), best first.
    """
    all_scores = np.concatenate(scores, axis=1)
    all_rows = np.concatenate(rows, axis=1).astype(np.int64, copy=False)
    order = np.lexsort((all_rows, -all_scores), axis=1)[:, :k]  # score desc, row asc
    return np.take_along_axis(all_scores, order, axis=1), np.take_along_axis(all_rows, order, axis=1)


def top_k_parts(queries: np.ndarray, parts: list[np.ndarray], k: int,
                chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` over a gallery held as consecutive blocks (e.g. the memory-mapped shards of a
    sharded gallery), without concatenating them: the rows of ``parts[i]`` are numbered after those
    of ``parts[:i]``. Each block's top k are merged, so the result equals :func:`top_k` on the
    concatenation (the same rows, scores and tie order); empty blocks are allowed.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(parts) == 1:
        return top_k(queries, parts[0], k, chunk_rows)
    queries = np.asarray(queries)
    if not parts:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    scores, rows, offset = [], [], 0
    for number, part in enumerate(parts):
        try:
            part_scores, part_rows = top_k(queries, part, k, chunk_rows)  # (Q, <=k) each, rows local
        except DataError as e:  # its row numbers are the block's own: say which block
            raise DataError(f"in shard {number} (global rows from {offset}): {e}") from e
        scores.append(part_scores)
        rows.append(part_rows + offset)
        offset += len(part)
    return merge_top_k(scores, rows, k)


def naive_similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Eq. 14 written out: a per-slot sum of cosines, (Q, K, d) x (N, K, d) -> (Q, N) float64.

    The reference the fast path is tested and benchmarked against; not for production.
    """
    queries = np.asarray(queries, np.float64)
    gallery = np.asarray(gallery, np.float64)
    out = np.zeros((len(queries), len(gallery)))
    for slot in range(queries.shape[1]):
        q = queries[:, slot]  # (Q, d)
        g = gallery[:, slot]  # (N, d)
        q_norm = np.maximum(np.linalg.norm(q, axis=1, keepdims=True), _EPS)
        g_norm = np.maximum(np.linalg.norm(g, axis=1, keepdims=True), _EPS)
        out += (q / q_norm) @ (g / g_norm).T  # cos(slot_v, slot_t)
    return out


def _chunk_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Column indices of the ``keep`` best scores of each row of a chunk, ties to the
    lower column; unordered. ``argpartition`` finds the k-th best value; a row
    with several values equal to it is resolved exactly, which is rare."""
    columns = scores.shape[1]
    if columns <= keep:
        return np.broadcast_to(np.arange(columns), scores.shape).copy()
    part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]  # (Q, keep)
    threshold = np.take_along_axis(scores, part, axis=1).min(axis=1)  # k-th best per row
    tied = np.flatnonzero((scores >= threshold[:, None]).sum(axis=1) > keep)
    for row in tied:  # more candidates than places: keep the lower columns among equals
        candidates = np.flatnonzero(scores[row] >= threshold[row])
        order = np.lexsort((candidates, -scores[row, candidates]))[:keep]
        part[row] = candidates[order]
    return part


def _scores(flat_queries: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """Eq. 14 as one matrix product: (Q, K*d) x (c, K, d) -> (Q, c). A NaN/inf row gives a
    non-finite score, reported by :func:`_check_finite`, so numpy's warning is silenced."""
    with np.errstate(invalid="ignore", over="ignore"):
        return flat_queries @ chunk.reshape(len(chunk), -1).T


def _flat_queries(queries: np.ndarray) -> np.ndarray:
    return normalize_slots(queries).reshape(len(queries), -1)  # (Q, K*d)


def rows_per_chunk(gallery: np.ndarray) -> int:
    """Gallery rows in about CHUNK_BYTES: a block worth one matrix product, small next to RAM."""
    return max(1, CHUNK_BYTES // max(1, gallery.shape[1] * gallery.shape[2] * gallery.itemsize))


def gallery_chunks(gallery: np.ndarray, chunk_rows: int | None = None):
    """(start, (c, K, d) float32 rows) pieces of the gallery; slicing a memory map reads only those rows."""
    if chunk_rows is None:
        chunk_rows = rows_per_chunk(gallery)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, len(gallery), chunk_rows):
        yield start, np.asarray(gallery[start:start + chunk_rows], dtype=np.float32)


def _check_pair(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries = np.asarray(queries)
    if not isinstance(gallery, np.ndarray):
        gallery = np.asarray(gallery)
    if queries.ndim != 3 or gallery.ndim != 3:
        raise ValueError(f"queries and gallery must be (N, K, d), got {queries.shape} and {gallery.shape}")
    if queries.shape[1:] != gallery.shape[1:]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} differ in (K, d): "
                         "they come from different models")
    if not np.all(np.isfinite(queries)):
        raise DataError("a query embedding contains NaN or inf")
    return queries, gallery


def _check_finite(scores: np.ndarray, start: int) -> None:
    bad = ~np.isfinite(scores).all(axis=0)
    if bad.any():
        row = start + int(np.flatnonzero(bad)[0])
        raise DataError(f"gallery row {row} contains NaN or inf ({int(bad.sum())} bad row(s) in rows "
                        f"{start}..{start + scores.shape[1] - 1}): re-index the gallery with tbps index")
