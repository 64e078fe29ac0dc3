"""The Python API for pipelines: load a bundle once, embed, index, rank. Numpy in, numpy out.

    search = PersonSearch.from_bundle("m.bundle")
    gallery = search.index(image_paths, "g.npy")         # or load_gallery("g.npy")
    for match in search.rank("a woman in a red coat", gallery, k=5)[0]:
        print(match.rank, match.score, match.path)

Built on public primitives: an :class:`~tbps_runtime.model.encoder.Encoder`
(towers in, embeddings out), the gallery formats (:mod:`tbps_runtime.gallery`)
and the indexers (:mod:`tbps_runtime.indexing`). Safe to share between
threads: onnxruntime sessions are thread-safe, the rest (tokenizer, lazily
created sessions, TensorRT contexts) is guarded by the Encoder's locks, and
search parameters are arguments of each call.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, DataError
from tbps_runtime.gallery.npy import Gallery, PartialIndex, check_gallery_output, write_gallery
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.gallery.records import GalleryEntry, ShardInfo
from tbps_runtime.gallery.shards import ShardedGallery
from tbps_runtime.indexing.local import embed_into
from tbps_runtime.paths import one_line
from tbps_runtime.model import attention
from tbps_runtime.model.attention import Explanation
from tbps_runtime.model.backends import Backend
from tbps_runtime.model.bundle import Manifest
from tbps_runtime.model.encoder import Encoder, ImageInput
from tbps_runtime.outputs import disk_errors, output_lock
from tbps_runtime.paths import printable
from tbps_runtime.ranking import top_k_parts
from tbps_runtime.store.base import Store
from tbps_runtime.store.open import is_store_directory, open_store
from tbps_runtime.store.rows import RowFilter, StoreHit
from tbps_runtime.text import check_queries
from tbps_runtime.threads import BLAS

if TYPE_CHECKING:
    from tbps_runtime.indexing.ray import RayIndexer
    from tbps_runtime.store.calibration import ScoreThreshold

logger = logging.getLogger(__name__)
_FAISS_OPEN = threading.Lock()


@dataclass(frozen=True)
class Match:
    """One ranked gallery row for one query (a store's hits are :class:`~tbps_runtime.store.rows.StoreHit` s,
    whose ``row`` is the same idea)."""

    rank: int  # 1-based
    score: float  # Eq. 14: sum of K cosines, in [-K, K]
    row: int  # the gallery's row
    path: str | None = None
    identity: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(self.score, 6), "path": self.path and printable(self.path)}


class PersonSearch:
    """A loaded bundle, for searching: embed, index, rank, explain. Built on an :class:`Encoder`."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    @classmethod
    def from_bundle(cls, directory: str | Path, backend: str = "onnxruntime", threads: int | None = None,
                    providers: Sequence[str] | None = None, device: int = 0,
                    spinning: bool | None = False) -> PersonSearch:
        """Load a bundle once, after checking the SHA-256 of every file the backend will read.

        Args:
            directory: the bundle (made by ``tbps export``).
            backend: ``"onnxruntime"`` or ``"tensorrt"``.
            threads: onnxruntime intra-op threads (default: the cores other processes leave idle).
            providers: onnxruntime execution providers, e.g. ``["CUDAExecutionProvider"]``.
            device: the CUDA device of the TensorRT backend.
            spinning: whether onnxruntime's idle threads spin-wait after a call. Off by default: a search
                ranks with numpy right after the text tower, and threads spinning on the same cores slowed
                a warm ``rank`` of 100,000 rows from 11 to 16-20 ms (docs/benchmarks/query_latency.md);
                None leaves it to the thread policy, as :meth:`Encoder.from_bundle` does.
        """
        return cls(Encoder.from_bundle(directory, backend, threads=threads, providers=providers, device=device,
                                       spinning=spinning))

    @property
    def directory(self) -> Path:
        return self.encoder.directory

    @property
    def manifest(self) -> Manifest:
        return self.encoder.manifest

    @property
    def backend(self) -> Backend:
        return self.encoder.backend

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    @property
    def threads(self) -> int | None:
        """Threads the towers and the ranking use (see tbps_runtime.threads); None on TensorRT."""
        return self.encoder.threads

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Captions -> (N, K, d) float32, every slot L2-normalised. Captions beyond the
        bundle's max length are truncated (with a logged warning).

        Raises:
            QueryError: an empty or whitespace-only text.
        """
        return self.encoder.embed_texts(texts, batch_size)

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Crops (paths or (H, W, 3) uint8 RGB arrays) -> (N, K, d) float32, every slot L2-normalised.

        Raises:
            DataError: an unreadable image or a malformed array.
        """
        return self.encoder.embed_images(images, batch_size)

    def rank(self, queries: str | Sequence[str] | np.ndarray,
             gallery: Gallery | ShardedGallery | Store | str | Path | np.ndarray, k: int = 10, *,
             exact: bool = False, nprobe: int | None = None, rescore: int = 0,
             row_filter: RowFilter | None = None, per_track: bool = False,
             min_score: float | str | None = None) -> list[list[Match]] | list[list[StoreHit]]:
        """The ``k`` best gallery rows for each query, best first (Eq. 14; ties keep gallery order).

        A gallery built with a FAISS index (``tbps index --faiss``) is searched with it
        unless ``exact``; :func:`describe_search` says which search that is. A store (``tbps ingest``)
        is searched exactly, after its ``row_filter``.

        Args:
            queries: a caption, a list of captions, or (Q, K, d) embeddings from :meth:`embed_texts`.
            gallery: a :class:`Gallery`, a sharded gallery (a directory of shards, ranked as one),
                a :class:`~tbps_runtime.store.base.Store` (:func:`~tbps_runtime.store.open.open_store`),
                the path of any of them, or (N, K, d) normalised embeddings.
            k: results per query (fewer when the gallery is smaller, or an approximate
                FAISS index finds fewer).
            exact: ignore the gallery's FAISS index: score every row.
            nprobe: FAISS IVF lists visited per query (only with a FAISS IVF index).
            rescore: score FAISS's best ``rescore`` candidates again exactly from the gallery's
                rows and keep the best k (for compressed indexes such as PQ); 0 = off.
            row_filter: a store's rows to search (camera, time range, track, source).
            per_track: a store's tracks, each by its best row, instead of rows.
            min_score: drop hits scoring below it; ``"auto"``: a store's own calibrated threshold
                (:meth:`threshold_for`) when it has one, else the bundle's (``tbps calibrate``).

        Returns:
            One list per query, in query order: :class:`Match` es for a gallery,
            :class:`~tbps_runtime.store.rows.StoreHit` s (with camera, time, box, track) for a store.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if isinstance(gallery, (str, Path)):
            gallery = open_store(gallery) if is_store_directory(gallery) else load_gallery(gallery)
        if isinstance(gallery, Store):
            chosen = self.threshold_for(min_score, gallery)
            return self._rank_store(queries, gallery, k, nprobe, rescore, row_filter, per_track,
                                    None if chosen is None else chosen.value)
        threshold = self.gallery_threshold(min_score)
        if (row_filter is not None and not row_filter.empty) or per_track:
            raise ConfigError("camera, time and track filters and per-track results need a store made by tbps "
                              "ingest; this gallery has no such metadata")
        results = self._rank_gallery(queries, gallery, k, exact, nprobe, rescore)
        return apply_threshold(results, threshold)[0]  # apply_threshold also says why an answer is empty

    def min_score(self, value: float | str | None) -> float | None:
        """``value`` as a score threshold: a number, None (no threshold) or ``"auto"`` (the bundle's
        calibrated one).

        Raises:
            ConfigError: not a number or ``"auto"``, or not finite (code ``parameter_invalid``), or
                ``"auto"`` with a bundle that was not calibrated (code ``min_score_uncalibrated``).
        """
        if value is None:
            return None
        if isinstance(value, str):
            if value.strip().lower() != "auto":
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"min_score {value!r} is not a number or 'auto'", code="parameter_invalid",
                                      names=("min_score",)) from None
            else:
                record = getattr(self.manifest, "score_threshold", None) or {}
                if not isinstance(record, dict) or record.get("value") is None:
                    raise ConfigError(f"the bundle {self.directory} has no calibrated score threshold for "
                                      "min_score 'auto': calibrate it on a labelled dataset (tbps calibrate), or "
                                      "give a number", code="min_score_uncalibrated", bundle=str(self.directory))
                return float(record["value"])
        if not np.isfinite(value):
            raise ConfigError(f"min_score must be a finite number, got {value}", code="parameter_invalid",
                              names=("min_score",))
        return float(value)

    def threshold_for(self, value: float | str | None, store: Store) -> ScoreThreshold | None:
        """``value`` as a store's threshold, saying where it came from: a number (``given``), None, or
        ``"auto"``: the store's own calibration (``store``; ``stale`` when it has grown by
        :data:`~tbps_runtime.store.calibration.REGROW_FRACTION` since) when it has one, else the bundle's
        (``bundle``: measured on its dataset, another domain than footage).

        Raises:
            ConfigError: as :meth:`min_score`; ``"auto"`` with neither calibrated (code
                ``min_score_uncalibrated``).
        """
        from tbps_runtime.store.calibration import ScoreThreshold

        auto = isinstance(value, str) and value.strip().lower() == "auto"
        calibration = store.calibration()
        if calibration is not None and calibration.fingerprint != self.fingerprint:
            calibration = None  # calibrated with another bundle: its scores are not these
        if auto and calibration is not None:
            return ScoreThreshold(calibration.value, "store", calibration, calibration.grown(len(store)))
        threshold = self.min_score(value)
        if threshold is None:
            return None
        return ScoreThreshold(threshold, "bundle" if auto else "given", calibration)

    def gallery_threshold(self, value: float | str | None) -> ScoreThreshold | None:
        """``value`` as a plain gallery's threshold, saying where it came from: a number (``given``), None,
        or ``"auto"`` (``bundle``: the bundle's calibrated one). Raises as :meth:`min_score`."""
        from tbps_runtime.store.calibration import ScoreThreshold

        threshold = self.min_score(value)
        if threshold is None:
            return None
        auto = isinstance(value, str) and value.strip().lower() == "auto"
        return ScoreThreshold(threshold, "bundle" if auto else "given")

    def _rank_store(self, queries: str | Sequence[str] | np.ndarray, store: Store, k: int, nprobe: int | None,
                    rescore: int, row_filter: RowFilter | None, per_track: bool, threshold: float | None
                    ) -> list[list[StoreHit]]:
        store.check_bundle(self.fingerprint, self.directory)
        if nprobe is not None or rescore:
            raise ConfigError("nprobe and rescore apply to a FAISS index; a store is searched exactly")
        embedded = queries if isinstance(queries, np.ndarray) else \
            self.embed_texts([queries] if isinstance(queries, str) else list(queries))
        with BLAS.limit(self.threads):
            return store.search(embedded, k, row_filter=row_filter, per_track=per_track, min_score=threshold)

    def _rank_gallery(self, queries: str | Sequence[str] | np.ndarray,
                      gallery: Gallery | ShardedGallery | np.ndarray, k: int, exact: bool, nprobe: int | None,
                      rescore: int) -> list[list[Match]]:
        parts, entries = self._gallery_rows(gallery)  # [(n_i, K, d)], one entry per row or None
        if isinstance(queries, np.ndarray):
            query_embeddings = queries
        else:
            query_embeddings = self.embed_texts([queries] if isinstance(queries, str) else list(queries))
        faiss = None if exact or entries is None else _gallery_faiss(gallery)
        if rescore < 0:
            raise ConfigError(f"rescore must be 0 (off) or a number of candidates, got {rescore}")
        for name, value in (("nprobe", nprobe), ("rescore", rescore or None)):
            if value is not None and faiss is None:
                raise ConfigError(f"{name} applies to a FAISS index: " + (
                    "this search is exact (exact=True)" if exact else "this gallery has none (build_gallery_faiss "
                    "builds one)"), code="faiss_option_without_index", name=name, exact=exact)
        if faiss is not None:
            scores, indices = faiss.top_k(query_embeddings, k, nprobe, rescore, parts)  # row -1: not found
        else:
            with BLAS.limit(self.threads):  # numpy's BLAS defaults to every core, busy or not
                scores, indices = top_k_parts(query_embeddings, parts, k)  # (Q, k), (Q, k)
        return [[_match(rank, float(score), int(row), entries)
                 for rank, (score, row) in enumerate(zip(row_scores, row_indices), start=1) if row >= 0]
                for row_scores, row_indices in zip(scores, indices)]

    def explain(self, query: str, images: Sequence[ImageInput]) -> Explanation:
        """The attention behind ``query``'s results (paper Fig. 4), from the bundle's explain graphs
        (``tbps export --explain``): an :class:`~tbps_runtime.model.attention.Explanation` with the query's
        ``tokens``, ``token_weights`` (D + P, T) and, per image, ``maps`` (N, D, h, w) and
        ``heatmaps`` (N, h, w) = A_avg."""
        check_queries([query])
        return attention.explain(self.encoder, query, list(images))

    def _gallery_rows(self, gallery: Gallery | ShardedGallery | str | Path | np.ndarray
                      ) -> tuple[list[np.ndarray], list[GalleryEntry] | None]:
        """The gallery's row blocks (one, or one per shard) and entries, checked against this bundle."""
        if isinstance(gallery, np.ndarray) or not hasattr(gallery, "parts"):
            parts, entries = [np.asarray(gallery)], None
        else:
            gallery.check_bundle(self.fingerprint, self.directory)
            parts, entries = gallery.parts, gallery.entries
        expected = self.encoder.slot_shape
        for embeddings in parts:
            if embeddings.ndim != 3 or embeddings.shape[1:] != expected:
                raise BundleError(f"the gallery's rows are {embeddings.shape[1:]}, this bundle's embeddings are "
                                  f"{expected} (K, d): index the gallery with this bundle")
        return parts, entries

    def index(self, images: Sequence[str | Path], output: str | Path, *,
              identities: Sequence[int | str | None] | None = None, batch_size: int = 32,
              strict: bool = False, progress: bool = False, shard: ShardInfo | None = None,
              distributed: RayIndexer | None = None, force: bool = False) -> Gallery:
        """Embed image files into ``output`` (``g.npy`` + ``g.json``), resumably.

        Unreadable images are skipped and listed in ``g.json`` (``strict``: the first
        one raises :class:`DataError`). An interrupted run resumes where it stopped
        when called again with the same images and bundle; the output appears
        only when complete. One run at a time writes an output: a run holds the
        output's lock (:func:`tbps_runtime.outputs.output_lock`) throughout, and
        another one, in this process or another, is refused with an
        :class:`~tbps_runtime.errors.OutputError`; so is an output whose disk
        cannot hold its rows.

        Args:
            shard: when ``images`` are one block of a larger list
                (:func:`tbps_runtime.gallery.shards.select_shard`), recorded in ``g.json``. A shard
                may be empty, or wholly unreadable: it is still written (with no rows), so
                that the directory of shards stays complete.
            distributed: embed with a Ray cluster (:class:`tbps_runtime.indexing.ray.RayIndexer`)
                instead of this process; the output is the same.
            force: replace ``output`` and the ``.json`` beside it even when they are not a tbps
                gallery (by default such files are refused:
                :func:`tbps_runtime.gallery.npy.check_gallery_output`).
        """
        output = _check_output(output)
        with output_lock(output, "indexing into"), disk_errors(output, resumable=True):
            check_gallery_output(output, force)
            return self._index(images, output, identities, batch_size, strict, progress, shard, distributed)

    def _index(self, images: Sequence[str | Path], output: Path, identities: Sequence[int | str | None] | None,
               batch_size: int, strict: bool, progress: bool, shard: ShardInfo | None,
               distributed: RayIndexer | None) -> Gallery:
        paths = [os.path.abspath(p) for p in images]
        if not paths and shard is not None:
            return write_gallery(output, self.encoder.empty(), [], fingerprint=self.fingerprint,
                                 bundle=self.directory, shard=shard)
        if not paths:
            raise DataError("no images to index")
        if identities is not None and len(identities) != len(paths):
            raise ConfigError(f"{len(identities)} identities for {len(paths)} images")
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        partial = PartialIndex(output, paths, self.fingerprint, self.encoder.slot_shape)
        if partial.done:
            logger.info("resuming %s: %d of %d images were already embedded", output, partial.done, len(paths))
        try:
            if distributed is not None:
                distributed.embed_into(self.encoder, partial, paths, batch_size, strict, progress)
            else:
                embed_into(self.encoder, partial, paths, batch_size, strict, progress)
        except BaseException:
            if not partial.done and hasattr(partial, "rows"):  # nothing worth resuming: leave nothing behind
                partial.discard()
            raise
        if len(partial.failures) == len(paths) and shard is None:
            partial.discard()
            raise DataError(f"none of the {len(paths)} images could be read (first: {partial.failures[0]}); "
                            "nothing was written")
        entries = [GalleryEntry(p, None if identities is None else identities[i]) for i, p in enumerate(paths)]
        gallery = partial.finish(entries, self.directory, shard)
        if gallery.unreadable:
            logger.warning("%d of %d images could not be read and were skipped (listed under 'unreadable' "
                           "in %s):%s", len(gallery.unreadable), len(paths), output.with_suffix(".json"),
                           describe_unreadable(gallery.unreadable))
        return gallery


def describe_unreadable(unreadable: Sequence[dict[str, str]], first: int = 5) -> str:
    """The ``first`` unreadable images of a gallery, one indented line each (the image and why), and how
    many more: what a user needs to find and fix them."""
    lines = []
    for record in unreadable[:first]:
        path, error = printable(record["path"]), printable(record["error"])
        lines.append(one_line(error if path in error else f"{path}: {error}"))  # most errors name the image
    more = len(unreadable) - first
    return "".join(f"\n  {line}" for line in lines) + (f"\n  and {more} more" if more > 0 else "")


def apply_threshold(ranked: Sequence[Sequence[Match]], threshold: ScoreThreshold | None
                    ) -> tuple[list[list[Match]], list[str | None]]:
    """The matches of each query scoring at least ``threshold`` (all without one), and per query why its
    answer is empty (the threshold and the best score below it, worded as a store's:
    :func:`~tbps_runtime.store.calibration.describe_empty`), or None when it is not, or not the threshold's doing.

    Args:
        ranked: each query's matches without the threshold, best first (:meth:`PersonSearch.rank`).
    """
    from tbps_runtime.store.calibration import describe_empty

    if threshold is None:
        return [list(matches) for matches in ranked], [None] * len(ranked)
    kept = [[m for m in matches if m.score >= threshold.value] for matches in ranked]
    empty = [describe_empty(threshold, matches[0].score, _where(matches[0])) if matches and not passed else None
             for matches, passed in zip(ranked, kept)]
    return kept, empty


def _where(match: Match) -> str:
    """A gallery row as an empty answer names it: its row and image."""
    return f"row {match.row}" + (f", {one_line(printable(match.path))}" if match.path else "")


def describe_search(gallery: Gallery | ShardedGallery, exact: bool = False) -> str:
    """Which search :meth:`PersonSearch.rank` uses for ``gallery``, in words: ``FAISS Flat (g.faiss)``,
    ``exact Eq. 14 over 1000 row(s) in 4 shards``, ..."""
    faiss = None if exact else _gallery_faiss(gallery)
    if faiss is not None:
        return faiss.describe()
    shards = len(gallery.parts)
    return f"exact Eq. 14 over {len(gallery)} row(s)" + (f" in {shards} shards" if shards > 1 else "")


def _gallery_faiss(gallery: Any) -> Any:
    """The gallery's FAISS search (None without one), opened once per gallery object (by one thread)."""
    with _FAISS_OPEN:
        if not hasattr(gallery, "_faiss_search"):
            from tbps_runtime.gallery.faiss_gallery import open_gallery_faiss

            gallery._faiss_search = open_gallery_faiss(gallery)
    return gallery._faiss_search


def _match(rank: int, score: float, row: int, entries: list[GalleryEntry] | None) -> Match:
    if entries is None:
        return Match(rank, score, row)
    return Match(rank, score, row, entries[row].path, entries[row].identity)


def _check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix != ".npy":
        raise ConfigError(f"the gallery file must end in .npy (its description goes beside it as .json), "
                          f"got {output}")
    if not output.parent.is_dir():
        blocker = next((p for p in Path(output).absolute().parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"cannot write {output}: {blocker} is a file, not a directory; choose another path")
        raise ConfigError(f"the directory of {output} does not exist: create it first")
    return output
