"""A gallery's FAISS index: built beside it by ``tbps index --faiss SPEC``, used by ``tbps rank``.

The index of ``g.npy`` is ``g.faiss`` (of ``DIR/shard-I-of-N.npy``,
``DIR/shard-I-of-N.faiss``), written atomically after the gallery, then
recorded in its ``g.json`` (``"faiss": {"file", "spec"}``); the record is
what counts, so a gallery re-indexed without ``--faiss`` ignores a stale file.

A sharded gallery has one index per shard (each job builds its own); ranking
searches each and merges the per-shard top k by score, ties to the lower
global row, exactly as the exact path merges shards. If only some shards have
an index, ranking is exact (with a warning) rather than half approximate.

The index maths is in :mod:`tbps_runtime.gallery.faiss_index`; faiss is imported only when used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tbps_runtime.atomic import read_json
from tbps_runtime.errors import BundleError, ConfigError, OutputError
from tbps_runtime.gallery.npy import Gallery, record_faiss, sidecar_path
from tbps_runtime.outputs import output_lock
from tbps_runtime.ranking import merge_top_k

logger = logging.getLogger(__name__)

_MISSING_ROW = np.iinfo(np.int64).max  # sorts a "not found" place after every real row


def check_faiss_spec(spec: str, slots: int, dim: int) -> None:
    """Refuse, before any indexing, a spec FAISS cannot build for (K * d)-dimensional rows.

    Raises:
        ConfigError: faiss missing, or a spec FAISS cannot parse.
    """
    from tbps_runtime.gallery.faiss_index import require_faiss

    faiss = require_faiss()
    try:
        faiss.index_factory(slots * dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
        raise ConfigError(f"FAISS cannot make an index from the spec {spec!r} for {slots * dim}-dimensional rows "
                          f"({reason[-160:]}); examples: Flat, IVF1024,Flat, IVF1024,PQ64, HNSW32",
                          code="faiss_spec_invalid", spec=spec, dims=slots * dim, reason=reason[-160:]) from e


def faiss_path_for(gallery_path: str | Path) -> Path:
    """``g.npy`` -> ``g.faiss``."""
    return Path(gallery_path).with_suffix(".faiss")


def check_faiss_output(gallery_path: str | Path, force: bool = False) -> None:
    """Refuse to write ``g.faiss`` over a file that is not a FAISS index of tbps's (written with the
    tbps trailer, or recorded in the gallery's ``g.json``), unless ``force``.

    Raises:
        OutputError: naming the file and the two ways out.
    """
    from tbps_runtime.gallery.faiss_index import is_tbps_faiss_file

    path = faiss_path_for(gallery_path)
    if force or not path.exists() or is_tbps_faiss_file(path) or _recorded_faiss(gallery_path) == path.name:
        return
    raise OutputError(f"{path} exists and is not a FAISS index tbps wrote, and building the gallery's index would "
                      "replace it: move it, or pass force=True to replace it", code="faiss_output_foreign",
                      path=str(path))


def _recorded_faiss(gallery_path: str | Path) -> str | None:
    try:
        record = read_json(sidecar_path(gallery_path)).get("faiss")
        return record.get("file") if isinstance(record, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def build_gallery_faiss(gallery: Gallery, spec: str, seed: int = 0, force: bool = False) -> Gallery:
    """Build the FAISS index of ``gallery`` (a file on disk), write it beside it and record it in its
    ``g.json``; returns the gallery reloaded with the record. Holds the gallery's lock
    (:func:`tbps_runtime.outputs.output_lock`) while it writes; ``force``: see :func:`check_faiss_output`."""
    from tbps_runtime.gallery.faiss_index import build_faiss_index, write_faiss_index

    path = faiss_path_for(gallery.path)
    with output_lock(gallery.path, "indexing into"):
        check_faiss_output(gallery.path, force)
        index = build_faiss_index(gallery.embeddings, spec, seed=seed)
        write_faiss_index(index, path)
        logger.info("built FAISS index %s (%s) over %d row(s)", path, spec, len(gallery))
        return record_faiss(gallery.path, path.name, spec)


class FaissSearch:
    """The FAISS indexes of a gallery (one, or one per shard), searched as one Eq. 14 top k."""

    def __init__(self, indexes: list[Any], sizes: list[int], specs: list[str], paths: list[Path]):
        self.indexes, self.sizes, self.specs, self.paths = indexes, sizes, specs, paths

    def describe(self) -> str:
        """E.g. ``FAISS Flat (g.faiss)`` or ``FAISS IVF64,Flat (4 shard indexes)``."""
        specs = ", ".join(sorted(set(self.specs)))
        where = self.paths[0].name if len(self.paths) == 1 else f"{len(self.paths)} shard indexes"
        return f"FAISS {specs} ({where})"

    def top_k(self, queries: np.ndarray, k: int, nprobe: int | None = None, rescore: int = 0,
              parts: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` (Q, <=k), best first, rows global; places FAISS did not fill hold row -1.

        With ``rescore`` N, the best max(N, k) candidates are scored again exactly (Eq. 14)
        from the gallery's row blocks ``parts`` and the best k of them kept.
        """
        from tbps_runtime.gallery.faiss_index import rescore_exactly, search_faiss

        candidates = max(k, rescore)
        scores, rows, offset = [], [], 0
        for index, size in zip(self.indexes, self.sizes):
            part_scores, part_rows = search_faiss(index, queries, candidates, nprobe=nprobe)
            scores.append(part_scores)
            rows.append(np.where(part_rows < 0, _MISSING_ROW, part_rows + offset))
            offset += size
        best_scores, best_rows = merge_top_k(scores, rows, candidates)
        best_rows = np.where(best_rows == _MISSING_ROW, -1, best_rows)
        if not rescore:
            return best_scores, best_rows
        if parts is None:
            raise ValueError("rescoring needs the gallery's rows (parts)")
        return rescore_exactly(queries, parts, best_rows, k)


def open_gallery_faiss(gallery: Any) -> FaissSearch | None:
    """The FAISS search of a :class:`Gallery` or sharded gallery, or None when it records no index
    (or, sharded, only some shards do: then a warning, and ranking stays exact).

    Raises:
        BundleError: ``g.json`` records an index file that is missing or holds another number of rows.
    """
    shards = getattr(gallery, "shards", None) or [gallery]
    recorded = [shard for shard in shards if getattr(shard, "faiss", None) is not None]
    if not recorded:
        return None
    if len(recorded) < len(shards):
        logger.warning("only %d of %d shards have a FAISS index: ranking exactly (build one for every "
                       "shard to use them)", len(recorded), len(shards))
        return None
    from tbps_runtime.gallery.faiss_index import read_faiss_index

    indexes, paths = [], []
    for shard in shards:
        path = shard.faiss_path
        if not path.is_file():
            raise BundleError(f"{shard.sidecar} records the FAISS index {path.name}, which is missing: build "
                              "it again, or rank exactly (exact=True)", code="faiss_index_missing",
                              sidecar=str(shard.sidecar), file=path.name)
        index = read_faiss_index(path)
        if int(index.ntotal) != len(shard):
            raise BundleError(f"{path} holds {index.ntotal} rows, its gallery {shard.path.name} {len(shard)}: "
                              "build it again, or rank exactly (exact=True)", code="faiss_index_stale",
                              path=str(path), rows=int(index.ntotal), gallery=shard.path.name,
                              gallery_rows=len(shard))
        indexes.append(index)
        paths.append(path)
    return FaissSearch(indexes, [len(s) for s in shards], [s.faiss.spec for s in shards], paths)
