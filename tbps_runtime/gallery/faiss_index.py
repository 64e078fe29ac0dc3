"""Approximate Eq. 14 search with FAISS (optional: ``pip install 'tbps[faiss]'``).

Eq. 14 with per-slot L2-normalised embeddings is the inner product of the
flattened (K * d) rows (see :mod:`tbps_runtime.ranking`), so any FAISS index
over ``METRIC_INNER_PRODUCT`` on the flattened gallery ranks by Eq. 14:
``"Flat"`` exactly, ``"IVF…"``, ``"HNSW…"``, ``"…PQ…"`` approximately (how
approximately is measured by ``python -m benchmarks.faiss_search``).

faiss is imported inside the functions only, so this module imports (and the
runtime works) without it; :func:`require_faiss` says how to install it.

Files written by :func:`write_faiss_index` are FAISS's own index file
followed by a small trailer (JSON: the (K, d) slot shape, the spec, the row
count; then its length and a magic tag). ``faiss.read_index`` ignores the
trailer, so the file stays readable by plain FAISS; :func:`read_faiss_index`
uses it to refuse queries of another shape.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from tbps_runtime.atomic import atomic_path, parse_json
from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.ranking import gallery_chunks, normalize_slots, rows_per_chunk

# Training rows when not given: enough for k-means with ~64 points per IVF list
# (FAISS subsamples above 256 per list anyway) or 100k, whichever is more.
TRAIN_ROWS_MIN = 100_000
TRAIN_POINTS_PER_LIST = 64
# nprobe set at build time for IVF indexes (FAISS's own default, 1, finds few
# neighbours): 1/16 of the lists, see docs/benchmarks/faiss_search.md for the recall it gives.
DEFAULT_NPROBE_FRACTION = 16

_MAGIC = b"TBPSFAI1"  # trailer tag, the last 8 bytes of a file written here
_TRAILER_VERSION = 1
_SHAPE_ATTR = "tbps_shape"  # (K, d) attached to index objects made or read here
_SPEC_ATTR = "tbps_spec"


def require_faiss() -> Any:
    """The ``faiss`` module.

    Raises:
        ConfigError: faiss is not installed (with the pip command that installs it).
    """
    try:
        import faiss
    except ImportError as e:
        raise ConfigError("FAISS search needs the faiss package, which is not installed: "
                          "pip install 'tbps[faiss]' (or pip install faiss-cpu)") from e
    return faiss


def build_faiss_index(embeddings: np.ndarray, spec: str, seed: int = 0, train_rows: int | None = None) -> Any:
    """A FAISS inner-product index over the flattened gallery rows, trained and filled.

    Args:
        embeddings: (N, K, d) float32 per-slot normalised gallery (e.g. a memory-mapped
            ``g.npy``); read in ~64 MiB chunks, never copied whole.
        spec: a ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,Flat"``,
            ``"IVF1024,PQ64"``, ``"HNSW32"``.
        seed: picks the training sample (and seeds FAISS's k-means), so a build is repeatable.
        train_rows: rows to train on when the index needs training; default
            ``min(N, max(100_000, 64 * nlist))``. Ignored for indexes without training.

    Returns:
        The ``faiss.Index``; row i of ``embeddings`` has id i. Its (K, d) is recorded
        (:func:`index_shape`) and IVF indexes get ``nprobe = nlist // 16`` (at least 1).

    Raises:
        ConfigError: faiss missing, a spec FAISS cannot parse, or a bad ``train_rows``.
        DataError: a gallery row holding NaN or inf, or an empty gallery for an index that needs training.
    """
    faiss = require_faiss()
    if not isinstance(embeddings, np.ndarray):
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be (N, K, d), got shape {embeddings.shape}")
    n, slots, dim = embeddings.shape
    width = slots * dim
    index = _factory(faiss, width, spec)
    if not index.is_trained:
        _train(faiss, index, embeddings, spec, seed, train_rows)
    ivf = _ivf_or_none(faiss, index)
    if ivf is not None:  # FAISS's default (1 list) gives poor recall; 1/16 of the lists is a sane start
        ivf.nprobe = max(1, ivf.nlist // DEFAULT_NPROBE_FRACTION)
    _reserve_flat_codes(faiss, index, n)
    for start, block in _flat_chunks(embeddings):
        index.add(block)
    _tag(index, (slots, dim), spec)
    return index


def search_faiss(index: Any, queries: np.ndarray, k: int, nprobe: int | None = None, *,
                 ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best gallery rows for each query by the index's Eq. 14 (inner product), best first.

    Matches :func:`tbps_runtime.ranking.top_k`: queries are normalised per slot
    here; ``(scores, rows)`` are (Q, min(k, ntotal)) float32 and int64, ordered by
    score descending and, among equal scores, by row ascending. Unlike ``top_k``,
    an approximate index may find fewer than ``min(k, ntotal)`` rows for a query
    (e.g. IVF with a small ``nprobe``): the missing places hold row ``-1`` and
    score ``-inf``, at the end. Which of several rows tied at the k-th score is
    returned is FAISS's choice. ``nprobe``/``ef_search`` reach FAISS as search
    parameters of this call: the index is never modified, so threads may share it.

    Args:
        index: from :func:`build_faiss_index` or :func:`read_faiss_index` (or any FAISS
            inner-product index over K * d dimensions).
        queries: (Q, K, d) query embeddings.
        k: how many rows to return per query.
        nprobe: IVF lists searched for this call (default: the index's own, see
            :func:`build_faiss_index`); more is slower and closer to exact.
        ef_search: HNSW ``efSearch`` for this call (default: the index's own, FAISS's 16).

    Raises:
        ConfigError: ``k``/``nprobe``/``ef_search`` below 1, or ``nprobe`` (``ef_search``)
            for an index without IVF (HNSW).
        BundleError: queries of another (K, d) than the index was built for.
        DataError: a query holding NaN or inf.
    """
    faiss = require_faiss()
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    queries = np.asarray(queries)
    if queries.ndim != 3:
        raise ValueError(f"queries must be (Q, K, d), got shape {queries.shape}")
    _check_shape(index, queries.shape[1:])
    if not np.all(np.isfinite(queries)):
        raise DataError("a query embedding contains NaN or inf")
    keep = min(k, int(index.ntotal))
    if keep == 0 or len(queries) == 0:
        return np.zeros((len(queries), keep), np.float32), np.zeros((len(queries), keep), np.int64)
    flat = np.ascontiguousarray(normalize_slots(queries).reshape(len(queries), -1))
    for option, value, kind, find in (("nprobe", nprobe, "IVF", _ivf_or_none),
                                      ("ef_search", ef_search, "HNSW", _hnsw_or_none)):
        if value is not None and find(faiss, index) is None:
            raise ConfigError(f"{option} applies to {kind} indexes; this one ({_describe(index)}) has none: "
                              f"leave {option} out")
    if nprobe is None and ef_search is None:
        scores, rows = index.search(flat, keep)
    else:  # per-call parameters: the shared index is never modified, so threads may search it at once
        nprobe = None if nprobe is None else _positive("nprobe", nprobe)
        ef_search = None if ef_search is None else _positive("ef_search", ef_search)
        alive: list = []  # the nested SWIG parameter objects must outlive the search
        params = _search_parameters(faiss, index, nprobe, ef_search, alive)
        if params is None:
            raise ConfigError(f"this FAISS index ({_describe(index)}, {type(faiss.downcast_index(index)).__name__}) "
                              "takes no per-call nprobe/ef_search: leave them out")
        scores, rows = index.search(flat, keep, params=params)
    scores = np.asarray(scores, np.float32)
    rows = np.asarray(rows, np.int64)
    scores[rows < 0] = -np.inf  # FAISS pads a short result with id -1 and -FLT_MAX
    order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def rescore_exactly(queries: np.ndarray, parts: list[np.ndarray], candidates: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 14 recomputed for an approximate index's candidates from the gallery's own rows; the best k.

    A compressed index (PQ, SQ) ranks by approximate scores; reading its top
    candidates back from the memory-mapped gallery (a few rows per query) and
    scoring them exactly restores most of the recall at little cost.

    Args:
        queries: (Q, K, d) query embeddings (normalised here).
        parts: the gallery's (n_i, K, d) normalised row blocks (one, or one per shard), rows
            numbered consecutively across blocks.
        candidates: (Q, C) global rows from :func:`search_faiss`, -1 where none was found.
        k: results to keep per query.

    Returns:
        ``(scores, rows)`` (Q, min(k, C)) like :func:`search_faiss`: best first, ties to the lower
        row, missing places row -1 and score -inf at the end.
    """
    flat_queries = normalize_slots(queries).reshape(len(queries), -1)  # (Q, K*d)
    offsets = np.cumsum([0] + [len(part) for part in parts])
    keep = min(k, candidates.shape[1])
    scores = np.full((len(queries), keep), -np.inf, np.float32)
    rows = np.full((len(queries), keep), -1, np.int64)
    for query, found in enumerate(candidates):
        found = np.unique(found[found >= 0])  # sorted: each block is read in row order
        block = np.searchsorted(offsets, found, side="right") - 1
        vectors = np.concatenate([np.asarray(parts[b][found[block == b] - offsets[b]], np.float32)
                                  for b in np.unique(block)]) if len(found) else np.zeros((0, flat_queries.shape[1]))
        exact = vectors.reshape(len(found), flat_queries.shape[1]) @ flat_queries[query]  # (C,)
        best = np.lexsort((found, -exact))[:keep]
        scores[query, :len(best)], rows[query, :len(best)] = exact[best], found[best]
    return scores, rows


def write_faiss_index(index: Any, path: str | Path) -> Path:
    """Write ``index`` to ``path`` atomically (temp file + rename), with the tbps trailer
    (shape, spec, row count). Streams: no in-memory copy of the index is made."""
    faiss = require_faiss()
    path = Path(path)
    trailer = {"format": "tbps-faiss", "version": _TRAILER_VERSION, "ntotal": int(index.ntotal),
               "dim": int(index.d), "shape": _shape_or_none(index), "spec": getattr(index, _SPEC_ATTR, None)}
    blob = json.dumps(trailer).encode("utf-8")
    with atomic_path(path, suffix=".tmp.faiss") as temp:
        faiss.write_index(index, str(temp))  # FAISS writes by file name
        with open(temp, "ab") as stream:
            stream.write(blob + struct.pack("<Q", len(blob)) + _MAGIC)
    return path


def read_faiss_index(path: str | Path) -> Any:
    """Read an index written by :func:`write_faiss_index` (or a plain ``faiss.write_index``
    file, whose (K, d) is then unknown and only K * d is checked at search time).

    Raises:
        InputFileNotFoundError: no such file.
        DataError: the file is not a readable FAISS index (truncated, corrupt, another format).
    """
    faiss = require_faiss()
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"FAISS index not found: {path}")
    trailer = _read_trailer(path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:  # FAISS reports any malformed file as a RuntimeError
        reason = str(e).strip().splitlines()[-1]
        raise DataError(f"{path} is not a readable FAISS index ({reason[-200:]}): build it again",
                        code="faiss_index_damaged", path=str(path)) from e
    if trailer is not None:
        if trailer.get("ntotal") != int(index.ntotal) or trailer.get("dim") != int(index.d):
            raise DataError(f"{path} holds {index.ntotal} rows of {index.d} dimensions, its trailer says "
                            f"{trailer.get('ntotal')} of {trailer.get('dim')}: the file is damaged; rebuild it")
        shape = trailer.get("shape")
        if shape is not None:
            _tag(index, (int(shape[0]), int(shape[1])), trailer.get("spec"))
    return index


def is_tbps_faiss_file(path: str | Path) -> bool:
    """Whether ``path`` ends with the trailer :func:`write_faiss_index` writes (damaged or not)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, 2)
            if stream.tell() < 16:
                return False
            stream.seek(-8, 2)
            return stream.read(8) == _MAGIC
    except OSError:
        return False


def index_shape(index: Any) -> tuple[int, int] | None:
    """The (K, d) an index was built for (None for an index not made or read here)."""
    return _shape_or_none(index)


def default_train_rows(rows: int, nlist: int) -> int:
    """Training sample size used when ``train_rows`` is not given."""
    return min(rows, max(TRAIN_ROWS_MIN, TRAIN_POINTS_PER_LIST * nlist))


# -- helpers -----------------------------------------------------------------------------------

def _factory(faiss: Any, width: int, spec: str) -> Any:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a FAISS index spec is a factory string such as 'Flat', 'IVF1024,Flat' or "
                          f"'HNSW32', got {spec!r}")
    try:
        return faiss.index_factory(width, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1]
        reason = reason.split(": ", 1)[-1] if "index_factory" in reason else reason
        raise ConfigError(f"FAISS cannot make an index from spec {spec!r} for {width}-dimensional rows "
                          f"({reason[-200:]}); examples: 'Flat' (exact), 'IVF1024,Flat', 'IVF1024,PQ64', "
                          "'HNSW32' (see the faiss wiki, 'The index factory')") from e


def _train(faiss: Any, index: Any, embeddings: np.ndarray, spec: str, seed: int, train_rows: int | None) -> None:
    """Train on a seeded sample of rows (sorted, so a memory map is read forwards)."""
    n = len(embeddings)
    ivf = _ivf_or_none(faiss, index)
    if train_rows is None:
        train_rows = default_train_rows(n, ivf.nlist if ivf is not None else 0)
    elif train_rows < 1:
        raise ConfigError(f"train_rows must be at least 1, got {train_rows}")
    train_rows = min(train_rows, n)
    if train_rows == 0:
        raise DataError(f"index spec {spec!r} needs training, and the gallery is empty")
    if ivf is not None:
        ivf.cp.seed = seed  # FAISS's k-means seed: the build is repeatable
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=train_rows, replace=False)) if train_rows < n else np.arange(n)
    width = embeddings.shape[1] * embeddings.shape[2]
    sample = np.empty((train_rows, width), np.float32)  # the one copy: the training rows only
    step = rows_per_chunk(embeddings)
    for start in range(0, train_rows, step):
        rows = picked[start:start + step]
        block = np.asarray(embeddings[rows], dtype=np.float32).reshape(len(rows), width)
        _check_rows(block, rows)
        sample[start:start + len(rows)] = block
    try:
        index.train(sample)
    except RuntimeError as e:  # e.g. fewer rows than IVF lists or PQ centroids
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise ConfigError(f"index spec {spec!r} cannot be trained on {train_rows} gallery row(s) "
                          f"({reason[-200:]}): choose one for this gallery's size (fewer IVF lists, or Flat)") from e


def _flat_chunks(embeddings: np.ndarray):
    """(start, (c, K*d) contiguous float32) pieces, each checked for NaN/inf rows."""
    for start, block in gallery_chunks(embeddings):
        block = np.ascontiguousarray(block.reshape(len(block), -1))
        _check_rows(block, np.arange(start, start + len(block)))
        yield start, block


def _reserve_flat_codes(faiss: Any, index: Any, rows: int) -> None:
    """Reserve a flat (or HNSW-flat) index's storage for ``rows`` up front.

    Its codes grow as a std::vector: adding in chunks would reallocate it a few
    times, and the last reallocation holds the old and the new buffer at once
    (measured: 1.3x the index at 100k rows, up to 2x). resize + resize(0) keeps
    the capacity. Best effort: other index types, or a FAISS without this
    vector API, just grow as usual."""
    try:
        target = faiss.downcast_index(index)
        if hasattr(target, "hnsw"):
            target = faiss.downcast_index(target.storage)
        codes = getattr(target, "codes", None)
        if codes is None or target.ntotal != 0 or not hasattr(codes, "resize"):
            return
        codes.resize(rows * int(target.code_size))
        codes.resize(0)
    except (AttributeError, RuntimeError, TypeError):
        pass


def _check_rows(block: np.ndarray, rows: np.ndarray) -> None:
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        raise DataError(f"gallery row {int(rows[np.flatnonzero(bad)[0]])} contains NaN or inf "
                        f"({int(bad.sum())} bad row(s) in this chunk): re-index the gallery with tbps index")


def _ivf_or_none(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # "'ivf' failed": no IVF inside
        return None


def _hnsw_or_none(faiss: Any, index: Any) -> Any:
    """The ``HNSW`` structure of an HNSW index, looking through pre-transforms and refinement."""
    seen = 0
    while index is not None and seen < 8:
        index = faiss.downcast_index(index)
        if hasattr(index, "hnsw"):
            return index.hnsw
        index = getattr(index, "index", None) or getattr(index, "base_index", None)
        seen += 1
    return None


def _search_parameters(faiss: Any, index: Any, nprobe: int | None, ef_search: int | None, alive: list) -> Any:
    """FAISS ``SearchParameters`` giving ``index`` (through the wrappers the factory makes: pre-transforms,
    id maps, refinement) this ``nprobe`` (IVF) / ``efSearch`` (HNSW) for one call; None when nothing
    inside takes them. Every object made is appended to ``alive``: FAISS keeps only raw pointers to the
    nested ones."""
    index = faiss.downcast_index(index)
    params = None
    if isinstance(index, faiss.IndexPreTransform):
        inner = _search_parameters(faiss, index.index, nprobe, ef_search, alive)
        if inner is not None:
            params = faiss.SearchParametersPreTransform()
            params.index_params = inner
    elif isinstance(index, faiss.IndexRefine):
        inner = _search_parameters(faiss, index.base_index, nprobe, ef_search, alive)
        if inner is not None:
            params = faiss.IndexRefineSearchParameters()
            params.base_index_params, params.k_factor = inner, index.k_factor
    elif isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return _search_parameters(faiss, index.index, nprobe, ef_search, alive)
    elif isinstance(index, faiss.IndexIVF) and nprobe is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe, params.max_codes = nprobe, index.max_codes
    elif isinstance(index, faiss.IndexHNSW) and ef_search is not None:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef_search
        params.check_relative_distance = index.hnsw.check_relative_distance
        params.bounded_queue = index.hnsw.search_bounded_queue
    if params is not None:
        alive.append(params)
    return params


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tag(index: Any, shape: tuple[int, int], spec: str | None) -> None:
    # faiss >= 1.12 refuses unknown attributes through its __setattr__; the proxy has a
    # plain __dict__, so object.__setattr__ attaches the metadata to this Python object.
    object.__setattr__(index, _SHAPE_ATTR, (int(shape[0]), int(shape[1])))
    object.__setattr__(index, _SPEC_ATTR, spec)


def _shape_or_none(index: Any) -> tuple[int, int] | None:
    shape = index.__dict__.get(_SHAPE_ATTR) if hasattr(index, "__dict__") else None
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _check_shape(index: Any, shape: tuple[int, ...]) -> None:
    expected = _shape_or_none(index)
    if expected is not None and tuple(shape) != expected:
        raise BundleError(f"the FAISS index was built for (K, d) = {expected} rows, the queries are "
                          f"{tuple(shape)}: they come from different models; rebuild the index with this "
                          "bundle's gallery")
    if expected is None and int(np.prod(shape)) != int(index.d):
        raise BundleError(f"the FAISS index has {index.d} dimensions, the queries (K, d) = {tuple(shape)} "
                          f"flatten to {int(np.prod(shape))}: they come from different models")


def _describe(index: Any) -> str:
    spec = getattr(index, "__dict__", {}).get(_SPEC_ATTR)
    return f"spec {spec!r}" if spec else type(index).__name__


def _read_trailer(path: Path) -> dict[str, Any] | None:
    """The JSON trailer of a file written by :func:`write_faiss_index`, or None (a plain FAISS file)."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        if size < 16:
            return None
        stream.seek(size - 16)
        tail = stream.read(16)
        if tail[8:] != _MAGIC:
            return None
        (length,) = struct.unpack("<Q", tail[:8])
        if length > min(size - 16, 1 << 20):
            raise DataError(f"{path} has a damaged tbps trailer: build it again", code="faiss_index_damaged",
                            path=str(path))
        stream.seek(size - 16 - length)
        try:
            trailer = parse_json(stream.read(length))
        except ValueError as e:
            raise DataError(f"{path} has a damaged tbps trailer ({e}): build it again", code="faiss_index_damaged",
                            path=str(path)) from e
    if not isinstance(trailer, dict) or trailer.get("format") != "tbps-faiss":
        raise DataError(f"{path} has a damaged tbps trailer: build it again", code="faiss_index_damaged",
                        path=str(path))
    if not isinstance(trailer.get("version"), int) or trailer["version"] > _TRAILER_VERSION:
        raise DataError(f"{path} is a tbps FAISS index of version {trailer.get('version')}; this tbps reads up "
                        f"to {_TRAILER_VERSION}: upgrade tbps")
    return trailer
