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
:meth:`Store.info`. An implementation provides ``_append``, ``_rank`` (or ``_picks_and_records``, when it can
rank and read the records in one snapshot), ``_delete``, ``_summary``, ``_sweep`` and the reads.

What a store's files may be trusted with: a writer records each crop folder and segment file it is about
to create in the store's pending list (:data:`PENDING`) first, and the next writer's sweep removes only
those of its entries that never got registered, never a file it does not know. Every name read from a
store resolves, symbolic links followed, inside the store's directory (:meth:`StoreBase.crop_path`).
A directory that cannot be written is searched, never written (:meth:`StoreBase.writing` says so).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from tbps_runtime.atomic import atomic_write_text
from tbps_runtime.errors import BundleError, ConfigError, DataError, OutputError, StoreError, UnsafePathError
from tbps_runtime.gallery.npy import check_same_bundle
from tbps_runtime.outputs import is_disk_full, output_lock
from tbps_runtime.paths import resolve_inside
from tbps_runtime.store.answers import check_cameras
from tbps_runtime.store.rows import CropRecord, Removal, RowFilter, StoreHit, check_record, format_time

logger = logging.getLogger(__name__)

STORE_FORMAT = "tbps-store"
STORE_VERSION = 1
CROPS = "crops"  # the crop folders' parent in a store directory
PENDING = ".tbps-pending"  # in a store directory: what its writers created and had not registered yet
CAMERA_STATES = "camera_states"  # meta key: the followed cameras' states (JSON), see Store.camera_states
_PENDING_NAME = re.compile(r"(crops|segments)/[0-9a-f]{32}(\.npy)?")  # what a pending list may name
_DIGITS = re.compile(r"[0-9]{1,18}")
_sessions: dict[tuple[str, int], int] = {}  # (store directory, thread) -> writer sessions open (see writing)
_sessions_guard = threading.Lock()
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
            OutputError: another writer holds it, or the store is read-only (code ``store_read_only``).
        """

    def new_batch(self) -> tuple[str, Path]:
        """A fresh crop folder for the next append: (its name relative to the store, its path)."""

    def crop_path(self, crop: str) -> Path:
        """The file of a record's ``crop``, checked to resolve (symbolic links followed) inside the store.

        Raises:
            UnsafePathError: it would lead outside.
        """

    def append(self, embeddings: np.ndarray, records: Sequence[CropRecord], *, crops: str | None = None,
               progress: Mapping[str, str] | None = None) -> np.ndarray:
        """Add rows: ``embeddings`` (n, K, d) float32, normalised per slot, one record each; ``crops`` is
        the folder from :meth:`new_batch` whose files the records name; ``progress`` (ingest state per
        source key) is saved with the rows, so that both or neither are kept.

        Returns:
            (n,) int64 row ids, numbered after every row ever appended.

        Raises:
            ConfigError: a record breaks :func:`~tbps_runtime.store.rows.check_record` (nothing is written).
            StoreError: the write failed (a full disk said so); the store holds what it held before.
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
            ConfigError: no condition at all (code ``delete_without_condition``); a camera or source the store
                has no rows of (code ``parameter_invalid``, listing those it has:
                :func:`~tbps_runtime.store.answers.check_cameras`); or every row without ``everything`` (code
                ``delete_everything_unconfirmed``, facts ``rows`` and ``location``).
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

    def sources(self) -> list[str]:
        """The sources (files, streams) that have rows, sorted."""

    def max_track(self) -> int:
        """The largest track id (-1 when none): new tracks are numbered after it."""

    def calibration(self) -> Any:
        """The store's calibrated threshold (a :class:`~tbps_runtime.store.calibration.StoreCalibration`), or
        None when it was never calibrated."""

    def record_calibration(self, text: str) -> None:
        """Replace the calibration record (its JSON text). Call inside :meth:`writing`."""

    def camera_states(self) -> dict[str, dict[str, Any]]:
        """What ``tbps ingest --follow`` last recorded of each camera it follows (camera -> its
        ``status``, ``last_frame``, ``fps``, ``reconnects``, ``error``, ``updated``); {} when none."""

    def record_camera_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the followed cameras' states (camera -> JSON-able state). Call inside :meth:`writing`."""

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


def check_meta(where: str, meta: Mapping[str, Any]) -> None:
    """Raises BundleError unless ``meta`` (a store's key -> text record) is a tbps store's that this
    version reads, with its fingerprint, K, d and next row id."""
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in meta.items()):
        raise BundleError(f"{where} is damaged: its meta holds values that are not text")
    if meta.get("format") != STORE_FORMAT:
        raise BundleError(f"{where} is not a tbps store (no '{STORE_FORMAT}' format in its meta)")
    if not _DIGITS.fullmatch(meta.get("version", "")) or int(meta["version"]) > STORE_VERSION:
        raise BundleError(f"{where} is store version {meta.get('version')}; this tbps reads up to "
                          f"{STORE_VERSION}: upgrade tbps")
    for name in ("fingerprint", "num_slots", "embed_dim", "next_row"):
        if name not in meta or (name != "fingerprint" and not _DIGITS.fullmatch(meta[name])):
            raise BundleError(f"{where} lacks or mistypes meta '{name}'")
    if int(meta["num_slots"]) < 1 or int(meta["embed_dim"]) < 1:
        raise BundleError(f"{where} is damaged: its rows would be ({meta['num_slots']}, {meta['embed_dim']}) (K, d)")


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
    _ending_session = False  # the sweep at the end of a writer's session is running

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
        crashed writer left (:meth:`_sweep`); refuse a read-only store first. When the block ends, what it
        made and did not register (a failed append's crop folder) goes too, as far as that can be done."""
        if not self.directory.is_dir():
            with self._write_errors():
                self.directory.mkdir(parents=True, exist_ok=True)
        self._check_writable()
        with output_lock(self.directory / self._lock_file, what), _session(self.directory) as outermost:
            if outermost:  # a session inside another (the lock is re-entrant) leaves the outer one's files be
                self._sweep()
            try:
                yield self
            finally:
                if outermost:
                    self._sweep_after()

    def new_batch(self) -> tuple[str, Path]:
        """A fresh crop folder for the next append: (its name relative to the store, its path). Recorded
        as pending first, so that the next writer removes it if no append registers it."""
        name = f"{CROPS}/{uuid.uuid4().hex}"
        path = self.directory / name
        self._mark_pending(name)
        with self._write_errors():
            path.mkdir(parents=True)
        return name, path

    def crop_path(self, crop: str) -> Path:
        """The file of a record's ``crop``, checked to resolve (symbolic links followed) inside the store."""
        return self._confined(crop)

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
        records = [check_record(record) for record in records]
        if crops is not None:
            self._inside(crops)
        return self._append(embeddings, records, crops, dict(progress or {}))

    def delete(self, row_filter: RowFilter | None = None, *, older_than: float | None = None,
               everything: bool = False, dry_run: bool = False) -> Removal:
        """Remove rows by filter and age; see :meth:`Store.delete`."""
        row_filter = row_filter or RowFilter()
        if row_filter.empty and older_than is None:
            raise ConfigError("say what to delete: a row filter (cameras, sources, tracks, since, until) or "
                              "older_than", code="delete_without_condition")
        check_cameras(self, row_filter)  # a misspelt name would otherwise remove 0 rows and pass as done
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
            path = self._removable(crop) if crop and crop.rsplit("/", 1)[0] not in gone else None
            if path is not None:
                removal.bytes += remove_file(path)
                removal.crops += 1
        for folder in emptied:
            removal.segments += 1
            path = self._removable(folder) if folder else None
            if path is not None:
                removal.crops += sum(1 for _ in path.glob("*")) if path.is_dir() and not path.is_symlink() else 0
                removal.bytes += remove_tree(path) if not path.is_symlink() else remove_file(path)

    def _sweep_folder(self, folder: str, known: set[str]) -> None:
        """Remove the pending entries under ``folder`` that are not in ``known`` (created by a writer that
        stopped before registering them) and forget them; an entry the pending list does not name is
        never touched. Called under the writer lock."""
        pending = self._pending()
        for name in pending:
            path = self._removable(name) if name.startswith(f"{folder}/") and name not in known else None
            if path is not None and (path.exists() or path.is_symlink()):
                # An interrupted run's leftovers are news (WARNING); this session's own failed append is
                # already reported by its error, so its clean-up must not add a line to stderr.
                logger.log(logging.INFO if self._ending_session else logging.WARNING,
                           "removing %s: made by a write to %s that stopped before registering it", path,
                           self.location)
                remove_tree(path) if path.is_dir() and not path.is_symlink() else remove_file(path)
        left = [name for name in pending if not name.startswith(f"{folder}/")]
        if left != pending:
            with self._write_errors():
                if left:
                    atomic_write_text(self.directory / PENDING, "".join(f"{name}\n" for name in left))
                else:
                    remove_file(self.directory / PENDING)

    def _sweep_after(self) -> None:
        """The sweep at the end of a writer's session, as far as it can go (the next writer's finishes it)."""
        self._ending_session = True
        try:
            self._sweep()
        except Exception as e:  # noqa: BLE001 - never hide what ended the session
            logger.info("could not yet remove what this write to %s left unregistered (%s)", self.location, e)
        finally:
            self._ending_session = False

    def _removable(self, name: str) -> Path | None:
        """``directory / name`` when its folder resolves inside the store (the entry itself, a link
        included, is then the store's to remove); None, with a warning, when it does not."""
        try:
            path = self._inside(name)
            self._confined(str(Path(name).parent))
        except UnsafePathError as e:
            logger.warning("not removing %s: %s", name, e)
            return None
        return path

    def _mark_pending(self, name: str) -> None:
        """Add ``name`` (a crop folder or segment file about to be created) to the pending list."""
        with self._write_errors(), open(self.directory / PENDING, "a", encoding="utf-8") as stream:
            stream.write(f"{name}\n")

    def _pending(self) -> list[str]:
        """The names in the pending list (lines that are not such a name are reported and ignored)."""
        try:
            lines = (self.directory / PENDING).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        names = [line for line in lines if _PENDING_NAME.fullmatch(line)]
        if len(names) != len([line for line in lines if line]):
            logger.warning("ignoring the lines of %s that name no crop folder or segment file",
                           self.directory / PENDING)
        return names

    def _check_writable(self) -> None:
        """Raises OutputError when the store directory cannot be written (a read-only store)."""
        if not os.access(self.directory, os.W_OK):
            raise self._read_only(f"its directory {self.directory} cannot be written")

    def _read_only(self, why: str) -> OutputError:
        return read_only(self.location, why)

    def _write_errors(self) -> ContextManager[None]:
        return write_errors(self.location)

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
        picks, records = self._picks_and_records(queries, k, row_filter or RowFilter(), per_track)
        results = []
        for hits in picks:
            # A row deleted since it was ranked (another process's retention, where ranking and reading the
            # records are not one snapshot) is left out.
            kept = [(score, row, count) for score, row, count in hits
                    if (min_score is None or score >= min_score) and row in records]
            results.append([StoreHit(rank, score, row, records[row], count)
                            for rank, (score, row, count) in enumerate(kept, 1)])
        return results

    def calibration(self) -> Any:
        """The store's calibrated threshold (:mod:`tbps_runtime.store.calibration`), or None."""
        from tbps_runtime.store.calibration import META_KEY, StoreCalibration

        text = self._meta_value(META_KEY)
        return None if text is None else StoreCalibration.from_text(text, self.location)

    def record_calibration(self, text: str) -> None:
        """Replace the calibration record (JSON text, checked to parse). Call inside :meth:`writing`."""
        from tbps_runtime.store.calibration import META_KEY, StoreCalibration

        StoreCalibration.from_text(text, "the calibration to record")
        self._check_writable()
        self._set_meta_value(META_KEY, text)

    def _check_found(self, rows: Sequence[int], found: Mapping[int, Any]) -> None:
        missing = [r for r in rows if int(r) not in found]
        if missing:
            raise ConfigError(f"no row {missing[0]} in {self.location}")

    def camera_states(self) -> dict[str, dict[str, Any]]:
        """The followed cameras' states (see :meth:`Store.camera_states`), kept as one meta value."""
        text = self._meta_value(CAMERA_STATES)
        if text is None:
            return {}
        try:
            states = json.loads(text)
        except ValueError:
            states = None
        if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
            logger.warning("ignoring the damaged camera states of %s", self.location)
            return {}
        return states

    def record_camera_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the followed cameras' states (one meta value). Call inside :meth:`writing`."""
        self._set_meta_value(CAMERA_STATES, json.dumps({name: dict(state) for name, state in states.items()}))

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
        """``directory / name`` for a relative ``name`` without ``..`` (a lexical check)."""
        return resolve_inside(self.directory, name, f"the store {self.directory}")

    def _confined(self, name: str) -> Path:
        """``directory / name``, checked to resolve, symbolic links followed, inside the store's directory.

        Raises:
            UnsafePathError: it leads outside (an absolute name, ``..``, or a link out of the store).
        """
        path = self._inside(name)
        root = self.directory.resolve()
        try:
            real = path.resolve()
        except (RuntimeError, OSError) as e:  # a loop of links
            raise UnsafePathError(f"{path} of the store {self.location} cannot be resolved ({e}): refusing to "
                                  "read it") from None
        if real != root and root not in real.parents:
            raise UnsafePathError(f"{path} of the store {self.location} leads to {real}, outside the store: "
                                  "refusing to read it")
        return path

    # -- what an implementation provides -----------------------------------------------------------------

    def _picks_and_records(self, queries: np.ndarray, k: int, row_filter: RowFilter, per_track: bool
                           ) -> tuple[list[list[Pick]], dict[int, CropRecord]]:
        """The picks of :meth:`_rank` and the records of their rows. Here two reads; an implementation that
        can read both in one snapshot does."""
        picks = self._rank(queries, k, row_filter, per_track)
        return picks, self.records(sorted({row for hits in picks for _, row, _ in hits}))

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

    def _meta_value(self, key: str) -> str | None:
        """One value of the store's meta (text), or None."""
        raise NotImplementedError

    def _set_meta_value(self, key: str, value: str) -> None:
        """Write one value of the store's meta (under the writer lock)."""
        raise NotImplementedError

    def _sweep(self) -> None:
        """Remove what a crashed writer left; called under the writer lock."""
        raise NotImplementedError


@contextmanager
def _session(directory: Path) -> Iterator[bool]:
    """Count this thread's writer sessions of the store at ``directory``; yields whether this one is the
    outermost."""
    key = (os.path.realpath(directory), threading.get_ident())
    with _sessions_guard:
        depth = _sessions.get(key, 0)
        _sessions[key] = depth + 1
    try:
        yield depth == 0
    finally:
        with _sessions_guard:
            if depth:
                _sessions[key] = depth
            else:
                del _sessions[key]


def write_failure(location: str, detail: str, disk_full: bool) -> StoreError:
    """The error of a write to the store at ``location`` that failed (``detail``: the system's words)."""
    if disk_full:
        return StoreError(f"the disk of the store {location} is full ({detail}): free some space, then try "
                          "again; the store holds every append completed before")
    return StoreError(f"writing the store {location} failed ({detail}); the store holds every append completed "
                      "before")


def read_only(location: str, why: str) -> OutputError:
    """The refusal to write the store at ``location``, which cannot be written (``why``); code
    ``store_read_only``."""
    return OutputError(f"the store {location} is read-only ({why}): it can be searched, not changed; to append "
                       "or delete rows, make it writable or copy it to a disk that is", code="store_read_only",
                       location=location)


@contextmanager
def write_errors(location: str) -> Iterator[None]:
    """An OS error met while writing the files of the store at ``location``, as a StoreError (a full disk
    said so)."""
    try:
        yield
    except OSError as e:
        raise write_failure(location, e.strerror or str(e), is_disk_full(e)) from e


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


__all__ = ["CROPS", "CameraSummary", "PENDING", "STORE_FORMAT", "STORE_VERSION", "Store", "StoreBase", "StoreSummary",
           "check_meta", "iso_time", "new_meta", "read_only", "remove_file", "remove_tree", "tree_bytes",
           "write_errors", "write_failure"]
