"""The store role: the :class:`Store` protocol every store implements, and :class:`StoreBase`, the checks
and shapes its implementations share.

A store is a gallery that grows: rows of (K, d) per-slot normalised embeddings, each with a
:class:`~tbps_runtime.store.rows.CropRecord`, appended in batches (each with its folder of crop files,
``crops/<hex>/``), searched exactly (Eq. 14) after filters, deleted by filter or age. Row ids are never
reused. Two implementations: :class:`~tbps_runtime.store.local.LocalStore` (segments + SQLite) and
:class:`~tbps_runtime.store.milvus.MilvusStore` (a Milvus collection); consumers type against
:class:`Store`, and one contract test suite (``tests/test_store_contract.py``) runs against both.

:class:`StoreBase` holds what does not depend on where the rows live: the argument checks of append,
search and delete, the bundle check, the crop folders and their removal, the ranked hits and the shape of
:meth:`Store.info`. An implementation provides ``_append``, ``_rank``, ``_delete`` and ``_summary`` and
the reads.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, DataError
from tbps_runtime.gallery.npy import check_same_bundle
from tbps_runtime.outputs import output_lock
from tbps_runtime.paths import resolve_inside
from tbps_runtime.store.rows import CropRecord, Removal, RowFilter, StoreHit, format_time

logger = logging.getLogger(__name__)

STORE_FORMAT = "tbps-store"
STORE_VERSION = 1
CROPS = "crops"  # the crop folders' parent in a store directory
Pick = tuple[float, int, int | None]  # a ranked row: (Eq. 14 score, row id, rows of its track or None)


@runtime_checkable
class Store(Protocol):
    """A gallery that grows (see the module's description). Thread-safe for readers; writers call
    :meth:`append`, :meth:`delete` and :meth:`save_progress` inside :meth:`writing`."""

    directory: Path  # the crops (and, for a local store, everything else)
    location: str  # where the rows are, for messages: a directory or a Milvus address
    fingerprint: str  # the bundle whose image tower made the rows
    bundle: str | None  # that bundle's directory, when recorded
    num_slots: int  # K
    embed_dim: int  # d

    @property
    def slot_shape(self) -> tuple[int, int]:
        """(K, d) of every row."""

    def __len__(self) -> int:
        """The number of rows."""

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: Any) -> None: ...

    def close(self) -> None:
        """Release connections; the store's data stays."""

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Raises BundleError unless ``fingerprint`` is the bundle that made these rows."""

    def writing(self, what: str = "writing into") -> ContextManager[Store]:
        """Hold the store's writer lock (one writer at a time) and clear what a crashed writer left.

        Raises:
            OutputError: another writer holds it.
        """

    def new_batch(self) -> tuple[str, Path]:
        """A fresh crop folder for the next append: (its name relative to the store, its path)."""

    def crop_path(self, crop: str) -> Path:
        """The file of a record's ``crop`` (checked to stay inside the store)."""

    def append(self, embeddings: np.ndarray, records: Sequence[CropRecord], *, crops: str | None = None,
               progress: Mapping[str, str] | None = None) -> np.ndarray:
        """Add rows: ``embeddings`` (n, K, d) float32, normalised per slot, one record each; ``crops`` is
        the folder from :meth:`new_batch` whose files the records name; ``progress`` (ingest state per
        source key) is saved with the rows, so that both or neither are kept.

        Returns:
            (n,) int64 row ids, numbered after every row ever appended.
        """

    def save_progress(self, progress: Mapping[str, str]) -> None:
        """Save ingest state (source key -> text) without rows."""

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key``, or None."""

    def all_progress(self) -> dict[str, str]:
        """Every saved ingest state: source key -> text."""

    def delete(self, row_filter: RowFilter | None = None, *, older_than: float | None = None,
               everything: bool = False, dry_run: bool = False) -> Removal:
        """Remove the rows (embeddings, records, crops) that pass ``row_filter`` and, with ``older_than``
        (seconds), were seen (or, without a time, added) longer ago than that. Deleting a source by name
        forgets its ingest progress; batches left without rows go with their crop folders.

        ``dry_run``: count what would go, remove nothing; every row may be counted without ``everything``.

        Raises:
            ConfigError: no condition at all (code ``delete_without_condition``), or every row without
                ``everything`` (code ``delete_everything_unconfirmed``, facts ``rows`` and ``location``).
        """

    def search(self, queries: np.ndarray, k: int = 10, *, row_filter: RowFilter | None = None,
               per_track: bool = False, min_score: float | None = None) -> list[list[StoreHit]]:
        """The ``k`` best rows (``per_track``: tracks, each by its best row) for each query, exact.

        Args:
            queries: (Q, K, d) text embeddings (normalised here).
            row_filter: only rows that pass it; applied before the top k.
            per_track: one hit per track (rows without a track count as their own), with ``track_rows``.
            min_score: drop hits scoring below it (Eq. 14).

        Returns:
            One list of :class:`~tbps_runtime.store.rows.StoreHit` per query, best first; equal scores
            go to the lower row id.
        """

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> record, for the rows that exist."""

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows``, in the order given.

        Raises:
            ConfigError: a row that does not exist.
        """

    def iter_rows(self, batch: int = 1024) -> Iterator[tuple[np.ndarray, list[CropRecord]]]:
        """Every row in id order, ``batch`` at a time: ((n,) int64 ids, their records)."""

    def cameras(self) -> list[str]:
        """The cameras that have rows, sorted."""

    def max_track(self) -> int:
        """The largest track id (-1 when none): new tracks are numbered after it."""

    def info(self) -> dict[str, Any]:
        """A summary: ``store``, ``fingerprint``, ``bundle``, ``rows``, ``tracks``, ``sources``,
        ``segments`` (appends with rows left), ``first``/``last`` (ISO-8601 UTC or None), ``undated_rows``,
        ``cameras`` (``camera``, ``rows``, ``tracks``, ``first``, ``last`` each), ``bytes``, ``num_slots``,
        ``embed_dim``."""


@dataclass
class CameraSummary:
    """One camera's rows, distinct tracks and time span (UTC seconds; None without dated rows)."""

    camera: str
    rows: int
    tracks: int
    first: float | None
    last: float | None


@dataclass
class StoreSummary:
    """What :meth:`Store.info` reports, as numbers: an implementation's aggregates."""

    rows: int
    tracks: int
    sources: int
    segments: int
    first: float | None
    last: float | None
    undated_rows: int
    bytes: int
    cameras: list[CameraSummary] = field(default_factory=list)


def check_meta(where: str, meta: Mapping[str, str]) -> None:
    """Raises BundleError unless ``meta`` (a store's key -> text record) is a tbps store's that this
    version reads, with its fingerprint, K, d and next row id."""
    if meta.get("format") != STORE_FORMAT:
        raise BundleError(f"{where} is not a tbps store (no '{STORE_FORMAT}' format in its meta)")
    if not meta.get("version", "").isdigit() or int(meta["version"]) > STORE_VERSION:
        raise BundleError(f"{where} is store version {meta.get('version')}; this tbps reads up to "
                          f"{STORE_VERSION}: upgrade tbps")
    for name in ("fingerprint", "num_slots", "embed_dim", "next_row"):
        if name not in meta or (name != "fingerprint" and not meta[name].isdigit()):
            raise BundleError(f"{where} lacks or mistypes meta '{name}'")


def new_meta(fingerprint: str, num_slots: int, embed_dim: int, bundle: str | Path | None) -> dict[str, str]:
    """The meta record of a new store (every value text)."""
    return {"format": STORE_FORMAT, "version": str(STORE_VERSION), "fingerprint": fingerprint,
            "num_slots": str(num_slots), "embed_dim": str(embed_dim),
            "bundle": "" if bundle is None else str(Path(bundle).resolve()), "next_row": "0",
            "created": str(time.time())}


class StoreBase:
    """The shared half of a :class:`Store`: checks, crop folders, hits and the info shape (see the module's
    description). Subclasses set ``_lock_file`` and implement the private hooks and the reads."""

    _lock_file: str  # in ``directory``: the writer lock's

    def __init__(self, directory: Path, location: str, meta: Mapping[str, str]):
        self.directory, self.location = directory, location
        self.fingerprint = meta["fingerprint"]
        self.bundle = meta.get("bundle") or None
        self.num_slots = int(meta["num_slots"])
        self.embed_dim = int(meta["embed_dim"])

    @property
    def slot_shape(self) -> tuple[int, int]:
        """(K, d) of every row."""
        return self.num_slots, self.embed_dim

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release connections (none held here)."""

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Refuse a bundle other than the one whose image tower made these rows."""
        check_same_bundle(f"the store {self.location}", self.fingerprint, fingerprint, bundle)

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def writing(self, what: str = "writing into") -> Iterator[StoreBase]:
        """Hold the writer lock (a file lock in ``directory``: one writer per machine) and clear what a
        crashed writer left (:meth:`_sweep`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with output_lock(self.directory / self._lock_file, what):
            self._sweep()
            yield self

    def new_batch(self) -> tuple[str, Path]:
        """A fresh crop folder for the next append: (its name relative to the store, its path)."""
        name = f"{CROPS}/{uuid.uuid4().hex}"
        path = self.directory / name
        path.mkdir(parents=True)
        return name, path

    def crop_path(self, crop: str) -> Path:
        """The file of a record's ``crop`` (checked to stay inside the store)."""
        return self._inside(crop)

    def append(self, embeddings: np.ndarray, records: Sequence[CropRecord], *, crops: str | None = None,
               progress: Mapping[str, str] | None = None) -> np.ndarray:
        """Add rows ((n, K, d) float32 and one record each) and, with them, ``progress``; see
        :meth:`Store.append`. Returns (n,) int64 row ids."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 3 or embeddings.shape[1:] != self.slot_shape or len(embeddings) != len(records):
            raise ValueError(f"append takes (n, {self.num_slots}, {self.embed_dim}) float32 with one record per "
                             f"row, got {embeddings.shape} and {len(records)} records")
        if not len(embeddings):
            if progress:
                self.save_progress(progress)
            return np.zeros(0, np.int64)
        if not np.isfinite(embeddings).all():
            raise ValueError("append: embeddings hold NaN or inf")
        return self._append(embeddings, list(records), crops, dict(progress or {}))

    def delete(self, row_filter: RowFilter | None = None, *, older_than: float | None = None,
               everything: bool = False, dry_run: bool = False) -> Removal:
        """Remove rows by filter and age; see :meth:`Store.delete`."""
        row_filter = row_filter or RowFilter()
        if row_filter.empty and older_than is None:
            raise ConfigError("say what to delete: a row filter (cameras, sources, tracks, since, until) or "
                              "older_than", code="delete_without_condition")
        cutoff = None if older_than is None else time.time() - older_than
        return self._delete(row_filter, cutoff, everything, dry_run)

    def _refuse_everything(self, doomed: int, total: int, everything: bool) -> None:
        """Raises ConfigError when ``doomed`` rows are all ``total`` rows and ``everything`` is not set."""
        if doomed and doomed == total and not everything:
            raise ConfigError(f"this would remove all {total} rows of {self.location}: removing every row needs "
                              "everything=True", code="delete_everything_unconfirmed", rows=total,
                              location=self.location)

    def _remove_crops(self, removal: Removal, crops: Iterable[str | None], emptied: Iterable[str | None]) -> None:
        """Remove the deleted rows' crop files (``crops``) and the crop folders of batches left without rows
        (``emptied``, one per batch), counting them into ``removal``. Called after the rows are gone: a
        crash leaves files no row names, which the next writer's sweep removes."""
        emptied = list(emptied)
        gone = {folder for folder in emptied if folder}
        for crop in crops:
            if crop and crop.rsplit("/", 1)[0] not in gone:
                removal.bytes += remove_file(self._inside(crop))
                removal.crops += 1
        for folder in emptied:
            removal.segments += 1
            if folder:
                path = self._inside(folder)
                removal.crops += sum(1 for _ in path.glob("*")) if path.is_dir() else 0
                removal.bytes += remove_tree(path)

    def _sweep_folder(self, folder: str, known: set[str]) -> None:
        """Remove the entries of ``directory/folder`` whose ``folder/name`` is not in ``known`` (a crashed
        writer's), except temporary files being written."""
        base = self.directory / folder
        for entry in base.iterdir() if base.is_dir() else ():
            if f"{folder}/{entry.name}" not in known and not entry.name.startswith(".tmp"):
                logger.info("removing %s: left by an interrupted run, never registered", entry)
                remove_tree(entry) if entry.is_dir() else remove_file(entry)

    # -- reading ---------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, *, row_filter: RowFilter | None = None,
               per_track: bool = False, min_score: float | None = None) -> list[list[StoreHit]]:
        """The ``k`` best rows or tracks per query, exact; see :meth:`Store.search`."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 3 or queries.shape[1:] != self.slot_shape:
            raise BundleError(f"queries are {queries.shape[1:]}, this store's rows are {self.slot_shape} (K, d): "
                              "query with the bundle that built it")
        if not np.isfinite(queries).all():
            raise DataError("a query embedding contains NaN or inf")
        if not len(queries):
            return []
        picks = self._rank(queries, k, row_filter or RowFilter(), per_track)
        records = self.records(sorted({row for hits in picks for _, row, _ in hits}))
        results = []
        for hits in picks:
            # A row deleted since it was ranked (another process's retention) is left out.
            kept = [(score, row, count) for score, row, count in hits
                    if (min_score is None or score >= min_score) and row in records]
            results.append([StoreHit(rank, score, row, records[row], count)
                            for rank, (score, row, count) in enumerate(kept, 1)])
        return results

    def _check_found(self, rows: Sequence[int], found: Mapping[int, Any]) -> None:
        missing = [r for r in rows if int(r) not in found]
        if missing:
            raise ConfigError(f"no row {missing[0]} in {self.location}")

    def info(self) -> dict[str, Any]:
        """Rows, tracks, cameras (rows, tracks and time span each), sources, segments and bytes; see
        :meth:`Store.info`."""
        summary = self._summary()
        return {"store": self.location, "fingerprint": self.fingerprint, "bundle": self.bundle,
                "rows": summary.rows, "tracks": summary.tracks, "sources": summary.sources,
                "segments": summary.segments, "first": iso_time(summary.first), "last": iso_time(summary.last),
                "undated_rows": summary.undated_rows,
                "cameras": [{"camera": c.camera, "rows": c.rows, "tracks": c.tracks, "first": iso_time(c.first),
                             "last": iso_time(c.last)} for c in summary.cameras],
                "bytes": summary.bytes, "num_slots": self.num_slots, "embed_dim": self.embed_dim}

    def _inside(self, name: str) -> Path:
        return resolve_inside(self.directory, name, f"the store {self.directory}")

    # -- what an implementation provides -----------------------------------------------------------------

    def _append(self, embeddings: np.ndarray, records: list[CropRecord], crops: str | None,
                progress: dict[str, str]) -> np.ndarray:
        """Register checked, non-empty rows ((n, K, d) float32) with ``progress``; (n,) int64 row ids."""
        raise NotImplementedError

    def _delete(self, row_filter: RowFilter, cutoff: float | None, everything: bool, dry_run: bool) -> Removal:
        """Delete the rows passing ``row_filter`` seen (or added) before ``cutoff`` (UTC seconds)."""
        raise NotImplementedError

    def _rank(self, queries: np.ndarray, k: int, row_filter: RowFilter, per_track: bool) -> list[list[Pick]]:
        """Per query of checked (Q, K, d) ``queries``, the k best picks, best first, ties to the lower row."""
        raise NotImplementedError

    def _summary(self) -> StoreSummary:
        raise NotImplementedError

    def _sweep(self) -> None:
        """Remove what a crashed writer left; called under the writer lock."""
        raise NotImplementedError


def iso_time(seconds: float | None) -> str | None:
    """UTC seconds -> ISO-8601 (:func:`~tbps_runtime.store.rows.format_time`); None stays None."""
    return None if seconds is None else format_time(seconds)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is not a directory)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove_file(path: Path) -> int:
    """Remove ``path``; the bytes freed (0 when it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


def remove_tree(path: Path) -> int:
    """Remove the directory ``path`` and all under it; the bytes freed."""
    size = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    return size


__all__ = ["CROPS", "CameraSummary", "STORE_FORMAT", "STORE_VERSION", "Store", "StoreBase", "StoreSummary",
           "check_meta", "iso_time", "new_meta", "remove_file", "remove_tree", "tree_bytes"]
