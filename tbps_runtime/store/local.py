"""The local store: append-only segments of embeddings and a SQLite catalog of their metadata.

A store is a directory::

    store.sqlite            the catalog (WAL): meta, segments, rows, sources
    segments/<hex>.npy      (n, K, d) float32 blocks, per-slot normalised, memory-mapped when read
    crops/<hex>/<i>.jpg     the crops of each appended batch (written by ``tbps ingest``)
    .tbps-pending           what the writer created and had not registered yet (see the base module)

Appending writes a new segment file (temp file + rename) and then registers it, with its row count
and checksum, and its rows in one transaction: readers see whole segments or none, a crash leaves at
most an unregistered file, which the next writer removes. Writers take the store's lock
(:func:`tbps_runtime.outputs.output_lock`), one at a time.

Readers need no lock and never write: they open the catalog read-only (on a read-only directory, as an
immutable file). A search reads the selection, the segments and the records in one snapshot (one read
transaction); a deletion committed meanwhile may remove a segment file that snapshot still names, and
the search then starts again in a newer snapshot, so an answer is always one snapshot's, whole.

The catalog is input like any other file: its tables, each segment's registration (checked on open and
on every read of the segment list), the places and values of the rows read, and each segment file
against its registration (shape, row count, checksum; inside the store, links followed) are checked,
and anything else is a BundleError naming the store and what is wrong.

Search is exact Eq. 14: filters (:class:`~tbps_runtime.store.rows.RowFilter`)
select rows in SQL, then every selected row is scored; the top k are the
same as ranking those rows in a plain gallery (ties: the lower row id first).
Row ids are never reused, also after deletions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from tbps_runtime.atomic import atomic_path, atomic_write
from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError, StoreError
from tbps_runtime.outputs import ensure_space, output_lock
from tbps_runtime.ranking import merge_top_k, similarity, top_k
from tbps_runtime.store.base import (CROPS, CameraSummary, Pick, StoreBase, StoreSummary, check_meta, new_meta,
                                     read_only, remove_file, tree_bytes, write_errors, write_failure)
from tbps_runtime.store.rows import CropRecord, Removal, RowFilter, check_name, check_record, check_time

logger = logging.getLogger(__name__)

CATALOG = "store.sqlite"
SEGMENTS = "segments"
DIGEST = "sampled-sha256:"  # a segment's checksum: sha256 of its size and SAMPLES blocks of SAMPLE bytes
SAMPLES, SAMPLE = 64, 16384  # a segment up to SAMPLES * SAMPLE bytes is hashed whole
_BUSY_MS = 30_000  # how long a statement waits for another process's write transaction
_SNAPSHOT_TRIES = 20  # searches in a row that may meet a segment deleted after their snapshot began
_LOW_SPACE = 1 << 20  # below this many free bytes, a disk I/O error of the catalog is a full disk
_ROW_COLUMNS = ("source", "camera", "time", "offset_s", "frame", "x0", "y0", "x1", "y1", "score", "track",
                "crop", "identity")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, crops TEXT, first_row INTEGER NOT NULL,
    rows INTEGER NOT NULL, live INTEGER NOT NULL, created REAL NOT NULL, digest TEXT);
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY, segment INTEGER NOT NULL REFERENCES segments(id), offset INTEGER NOT NULL,
    source TEXT NOT NULL, camera TEXT NOT NULL, time REAL, offset_s REAL, frame INTEGER,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, score REAL, track INTEGER, crop TEXT, identity TEXT, added REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rows_camera_time ON rows (camera, time);
CREATE INDEX IF NOT EXISTS rows_time ON rows (time);
CREATE INDEX IF NOT EXISTS rows_track ON rows (track);
CREATE INDEX IF NOT EXISTS rows_segment ON rows (segment, offset);
CREATE INDEX IF NOT EXISTS rows_source ON rows (source);
CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL);
"""
# The columns every reader needs (a catalog from before checksums lacks segments.digest: see _has_digest).
_TABLES = {"meta": ("key", "value"), "segments": ("id", "file", "crops", "first_row", "rows", "live"),
           "rows": ("id", "segment", "offset", *_ROW_COLUMNS, "added"), "sources": ("key", "state")}
# Why a segment's registration cannot be used, or NULL: the rules a reader holds every segment to, cheap enough
# for every search (its file is checked to resolve inside the store, and against its checksum, where opened).
_SEGMENT_FAULT = f"""CASE
    WHEN typeof(file) != 'text' OR file NOT LIKE '{SEGMENTS}/%.npy' THEN 'its file is not a segment name'
    WHEN crops IS NOT NULL AND typeof(crops) != 'text' THEN 'its crop folder is not a name'
    WHEN typeof(first_row) != 'integer' OR first_row < 0 THEN 'its first row is not a row id'
    WHEN typeof(rows) != 'integer' OR rows < 1 THEN 'its row count is not a positive integer'
    WHEN typeof(live) != 'integer' OR live < 0 OR live > rows THEN 'its live row count is not within its rows'
    WHEN first_row + rows > :next_row THEN 'its rows lie past the next row id'
END"""
# Whether a row's place (segment, offset) and track are integers a search can use.
_PLACE_OK = ("typeof(segment) = 'integer' AND typeof(offset) = 'integer' AND offset >= 0 "
             "AND (track IS NULL OR (typeof(track) = 'integer' AND track >= 0))")
T = TypeVar("T")


class Segment(NamedTuple):
    """One registered segment: its file, first row id, row count, rows left and checksum (None: unknown)."""

    id: int
    file: str
    first: int
    rows: int
    live: int
    digest: str | None


# Per segment, what a search reads: (its (n, K, d) map, first row id, selected offsets or None for all, their
# tracks or None).
Block = tuple[np.ndarray, int, np.ndarray | None, np.ndarray | None]


class _SegmentGone(Exception):
    """A segment file the snapshot names is not there (deleted since the snapshot began, or lost)."""

    def __init__(self, file: str, path: Path):
        super().__init__(file)
        self.file, self.path = file, path


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a local store directory (it holds the catalog)."""
    return (Path(path) / CATALOG).is_file()


class LocalStore(StoreBase):
    """A store directory (see the module's description), implementing
    :class:`~tbps_runtime.store.base.Store`. Thread-safe: each call opens its own SQLite connection;
    memory maps of segments are shared."""

    _lock_file = CATALOG

    def __init__(self, directory: Path, meta: Mapping[str, str]):
        super().__init__(directory, str(directory), meta)
        self._maps: dict[str, np.ndarray] = {}
        self._maps_lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | Path, *, fingerprint: str, num_slots: int, embed_dim: int,
               bundle: str | Path | None = None) -> LocalStore:
        """Open the store at ``directory`` for writing, creating it (and the directory) when absent. A new
        catalog is written whole under a temporary name and renamed: there is a complete store or none.

        Raises:
            OutputError: ``directory`` holds files but no store (it is not tbps's to fill), or the store is
                read-only.
            BundleError: an existing store was made by another bundle (its scores would not compare).
            StoreError: the catalog cannot be written (a full disk says so); nothing is left behind.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory} is a file, not a store directory: a store needs a directory",
                              code="store_path_is_file", path=str(directory))
        if not is_store(directory) and directory.is_dir() and any(directory.iterdir()):
            raise OutputError(f"{directory} is not empty and not a tbps store (no {CATALOG}): a new store needs a "
                              "new or empty directory", code="store_path_not_empty", path=str(directory),
                              catalog=CATALOG)
        if not is_store(directory):
            _create_catalog(directory, new_meta(fingerprint, num_slots, embed_dim, bundle))
        store = cls.open(directory)
        store._check_writable()
        store.check_bundle(fingerprint, bundle)
        return store

    @classmethod
    def open(cls, directory: str | Path) -> LocalStore:
        """Open an existing store (read-only: opening writes nothing), checking its catalog's tables,
        meta and segment registrations.

        Raises:
            InputFileNotFoundError: no store there.
            BundleError: the catalog is not a tbps store's, is damaged, or is from a newer tbps.
        """
        directory = Path(directory)
        if not is_store(directory):
            raise InputFileNotFoundError(f"no tbps store at {directory} (no {CATALOG}): make one with tbps ingest")
        where = str(directory / CATALOG)
        with _reading(directory) as db:
            _check_tables(db, where)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            check_meta(where, meta)
            store = cls(directory, meta)
            store._segments(db)
        return store

    def close(self) -> None:
        """Drop the segments' memory maps (each call opens its own SQLite connection: none to close)."""
        with self._maps_lock:
            self._maps.clear()

    def __len__(self) -> int:
        with self._read() as db:
            return sum(segment.live for segment in self._segments(db))

    # -- writing ---------------------------------------------------------------------------------------

    def _append(self, embeddings: np.ndarray, records: list[CropRecord], crops: str | None,
                progress: dict[str, str]) -> np.ndarray:
        """The segment file first (named in the pending list before it exists); then the rows, the segment
        with its checksum and ``progress`` in one transaction. On any failure the file goes again."""
        with self._write_errors():
            (self.directory / SEGMENTS).mkdir(exist_ok=True)
        name = f"{SEGMENTS}/{uuid.uuid4().hex}.npy"
        ensure_space(self.directory, embeddings.nbytes + 4096, f"the store {self.directory}")
        self._mark_pending(name)
        path = self.directory / name
        now = time.time()
        try:
            with self._write_errors():
                atomic_write(path, lambda stream: np.save(stream, embeddings))
                with open(path, "rb") as stream:
                    digest = segment_digest(stream)
            with self._write() as db:
                if not _has_digest(db):  # a catalog from before checksums: its older segments stay unknown
                    db.execute("ALTER TABLE segments ADD COLUMN digest TEXT")
                first = int(db.execute("SELECT value FROM meta WHERE key = 'next_row'").fetchone()[0])
                segment = db.execute(
                    "INSERT INTO segments (file, crops, first_row, rows, live, created, digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, crops, first, len(records), len(records), now, digest)
                ).lastrowid
                db.executemany(
                    f"INSERT INTO rows (id, segment, offset, {', '.join(_ROW_COLUMNS)}, added) "
                    f"VALUES ({', '.join('?' * (len(_ROW_COLUMNS) + 4))})",
                    [(first + i, segment, i, *_record_values(r), now) for i, r in enumerate(records)])
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (str(first + len(records)),))
                _save_progress(db, progress)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return np.arange(first, first + len(records), dtype=np.int64)

    def save_progress(self, progress: Mapping[str, str]) -> None:
        """Save ingest state (source key -> text) without rows. Call inside :meth:`writing`."""
        with self._write() as db:
            _save_progress(db, progress)

    def _delete(self, row_filter: RowFilter, cutoff: float | None, everything: bool, dry_run: bool) -> Removal:
        where, params = row_filter.sql()
        if cutoff is not None:
            where += " AND COALESCE(time, added) < ?"
            params.append(cutoff)
        removal = Removal()
        with self._write() as db:
            doomed = db.execute(f"SELECT id, segment, camera, crop FROM rows WHERE {where}", params).fetchall()
            segments = self._segments(db)
            self._check_doomed(doomed, {segment.id for segment in segments})
            total = sum(segment.live for segment in segments)
            self._refuse_everything(len(doomed), total, everything or dry_run)
            removal.rows = len(doomed)
            for _, _, camera, _ in doomed:
                removal.cameras[camera] = removal.cameras.get(camera, 0) + 1
            if dry_run or not doomed:
                db.rollback()
                return removal
            emptied = _delete_rows(db, doomed)
            if row_filter.sources:  # deleting a source by name means starting it over: forget its progress
                db.executemany("DELETE FROM sources WHERE key = ?", [(s,) for s in row_filter.sources])
        # Files go after the commit: a crash here leaves unreferenced files, never rows without embeddings.
        # A search whose snapshot still names a removed segment starts again (see _in_snapshot).
        self._remove_crops(removal, (crop for *_, crop in doomed), (crops for _, crops in emptied))
        for file, _ in emptied:
            path = self._removable(file)
            removal.bytes += 0 if path is None else remove_file(path)
        with self._maps_lock:
            for file, _ in emptied:
                self._maps.pop(file, None)
        return removal

    def _check_doomed(self, doomed: list[tuple[Any, ...]], segments: set[int]) -> None:
        """Raises BundleError, before anything is deleted, when a row to delete has a camera, crop or segment
        its deletion could not use."""
        for row, segment, camera, crop in doomed:
            try:
                check_name(camera, "camera")
                if crop is not None:
                    check_name(crop, "crop")
            except ConfigError as e:
                raise self._damaged(f"row {row}: {e}") from None
            if segment not in segments:
                raise self._damaged(f"row {row} names segment {segment!r}, which is not registered")

    def _sweep(self) -> None:
        """Remove the pending segment files and crop folders that no segment names (a crashed writer's)."""
        with self._read() as db:
            known = {name for row in db.execute("SELECT file, crops FROM segments") for name in row if name}
        for folder in (SEGMENTS, CROPS):
            self._sweep_folder(folder, known)

    def _check_writable(self) -> None:
        """Raises OutputError (a read-only store) unless the directory, its segments folder and the catalog's
        files can be written."""
        for path in (self.directory, self.directory / SEGMENTS, *_catalog_files(self.directory / CATALOG)):
            if path.exists() and not os.access(path, os.W_OK):
                raise self._read_only(f"{path} cannot be written")

    # -- reading ---------------------------------------------------------------------------------------

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key``, or None."""
        with self._read() as db:
            row = db.execute("SELECT state FROM sources WHERE key = ?", (key,)).fetchone()
        if row is not None and not isinstance(row[0], str):
            raise self._damaged(f"the saved progress of {key!r} is not text")
        return None if row is None else row[0]

    def all_progress(self) -> dict[str, str]:
        """Every source's saved ingest state (key -> text)."""
        with self._read() as db:
            states = dict(db.execute("SELECT key, state FROM sources"))
        if not all(isinstance(key, str) and isinstance(state, str) for key, state in states.items()):
            raise self._damaged("its saved ingest progress holds values that are not text")
        return states

    def _meta_value(self, key: str) -> str | None:
        with self._read() as db:
            found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else found[0]

    def _set_meta_value(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def max_track(self) -> int:
        """The largest track id in the store (-1 when none): new tracks are numbered after it."""
        with self._read() as db:
            value = db.execute("SELECT MAX(track) FROM rows").fetchone()[0]
        if value is not None and (not isinstance(value, int) or value < 0):
            raise self._damaged(f"its largest track id is {value!r}, not a non-negative integer")
        return -1 if value is None else value

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> :class:`~tbps_runtime.store.rows.CropRecord` for the rows that exist."""
        with self._read() as db:
            return self._records(db, rows)

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows``, in the order given (one snapshot)."""
        return self._in_snapshot(lambda db: self._embeddings(db, rows))

    def iter_rows(self, batch: int = 1024) -> Iterator[tuple[np.ndarray, list[CropRecord]]]:
        """Every row in id order, ``batch`` at a time: ((n,) int64 ids, their records)."""
        last = -1
        while True:
            with self._read() as db:
                chunk = db.execute(f"SELECT id, {', '.join(_ROW_COLUMNS)} FROM rows WHERE id > ? ORDER BY id "
                                   "LIMIT ?", (last, batch)).fetchall()
            if not chunk:
                return
            last = int(chunk[-1][0])
            yield np.array([row[0] for row in chunk], np.int64), [self._row_record(row) for row in chunk]

    def cameras(self) -> list[str]:
        """The cameras that have rows, sorted (an index lookup: cheap at any size)."""
        with self._read() as db:
            cameras = [row[0] for row in db.execute("SELECT DISTINCT camera FROM rows ORDER BY camera")]
        return [self._stored("a camera", lambda camera=camera: check_name(camera, "camera")) for camera in cameras]

    def sources(self) -> list[str]:
        """The sources that have rows, sorted (an index lookup)."""
        with self._read() as db:
            sources = [row[0] for row in db.execute("SELECT DISTINCT source FROM rows ORDER BY source")]
        return [self._stored("a source", lambda source=source: check_name(source, "source")) for source in sources]

    def _summary(self) -> StoreSummary:
        with self._read() as db:
            span = db.execute("SELECT MIN(time), MAX(time) FROM rows").fetchone()
            summary = StoreSummary(
                rows=sum(segment.live for segment in self._segments(db)),
                tracks=_scalar(db, "SELECT COUNT(DISTINCT track) FROM rows"),
                sources=_scalar(db, "SELECT COUNT(DISTINCT source) FROM rows"),
                segments=_scalar(db, "SELECT COUNT(*) FROM segments"), first=self._time(span[0]),
                last=self._time(span[1]),
                undated_rows=_scalar(db, "SELECT COUNT(*) FROM rows WHERE time IS NULL"), bytes=0,
                cameras=[CameraSummary(self._stored("a camera", lambda camera=camera: check_name(camera, "camera")),
                                       rows, tracks, self._time(first), self._time(last))
                         for camera, rows, tracks, first, last in db.execute(
                             "SELECT camera, COUNT(*), COUNT(DISTINCT track), MIN(time), MAX(time) FROM rows "
                             "GROUP BY camera ORDER BY camera")])
        summary.bytes = tree_bytes(self.directory)
        return summary

    # -- ranking ---------------------------------------------------------------------------------------

    def _picks_and_records(self, queries: np.ndarray, k: int, row_filter: RowFilter, per_track: bool
                           ) -> tuple[list[list[Pick]], dict[int, CropRecord]]:
        """The picks and their records, read in one snapshot."""
        return self._in_snapshot(lambda db: self._picks_in(db, queries, k, row_filter, per_track))

    def _picks_in(self, db: sqlite3.Connection, queries: np.ndarray, k: int, row_filter: RowFilter,
                   per_track: bool) -> tuple[list[list[Pick]], dict[int, CropRecord]]:
        blocks = self._selection(db, row_filter, per_track)
        if per_track:
            scores, rows, counts = self._top_tracks(queries, blocks, k)
        else:
            (scores, rows), counts = self._top_rows(queries, blocks, k), None
        picks = [[(float(scores[q, j]), int(rows[q, j]), None if counts is None else int(counts[q, j]))
                  for j in range(rows.shape[1]) if rows[q, j] >= 0] for q in range(len(queries))]
        wanted = sorted({row for hits in picks for _, row, _ in hits})
        records = self._records(db, wanted)
        missing = [row for row in wanted if row not in records]
        if missing:
            raise self._damaged(f"row {missing[0]} is counted live in its segment but has no record")
        return picks, records

    def _selection(self, db: sqlite3.Connection, row_filter: RowFilter, need_tracks: bool) -> list[Block]:
        """The blocks of the selected rows (segments mapped) in the snapshot of ``db``."""
        segments = self._segments(db)
        self._keep_maps({segment.file for segment in segments})
        if row_filter.empty and not need_tracks:
            return [(self._map(segment), segment.first,
                     None if segment.live == segment.rows else self._offsets(db, segment), None)
                    for segment in segments]
        where, params = row_filter.sql()
        picked = db.execute(f"SELECT segment, offset, COALESCE(track, -1 - id), {_PLACE_OK} FROM rows "
                            f"WHERE {where} ORDER BY segment, offset", params).fetchall()
        if not picked:
            return []
        if not all(row[3] for row in picked):
            raise self._damaged("a row's segment, offset or track is not a non-negative integer")
        table = np.asarray(picked, dtype=np.int64)[:, :3]  # (n, 3): segment, offset, track key
        by_id = {segment.id: segment for segment in segments}
        blocks = []
        for part in np.split(table, np.flatnonzero(np.diff(table[:, 0])) + 1):
            segment = by_id.get(int(part[0, 0]))
            if segment is None:
                raise self._damaged(f"rows name segment {int(part[0, 0])}, which is not registered")
            self._check_offsets(segment, part[:, 1])
            blocks.append((self._map(segment), segment.first, part[:, 1], part[:, 2]))
        return blocks

    def _top_rows(self, queries: np.ndarray, blocks: list[Block], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = [np.zeros((len(queries), 0), np.float32)], [np.zeros((len(queries), 0), np.int64)]
        for embeddings, first, offsets, _ in blocks:
            block_scores, local = top_k(queries, embeddings if offsets is None else embeddings[offsets], k)
            scores.append(block_scores)
            rows.append(first + (local if offsets is None else offsets[local]))
        return merge_top_k(scores, rows, k)

    def _top_tracks(self, queries: np.ndarray, blocks: list[Block], k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best row per track, then the k best tracks: (scores, rows, rows of the track selected)."""
        q = len(queries)
        if not blocks:
            return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64), np.zeros((q, 0), np.int64)
        all_scores = np.concatenate([similarity(queries, embeddings[offsets])
                                     for embeddings, _, offsets, _ in blocks], axis=1)  # (Q, n)
        row_ids = np.concatenate([first + offsets for _, first, offsets, _ in blocks])
        tracks = np.concatenate([t for *_, t in blocks])
        keys, inverse, counts = np.unique(tracks, return_inverse=True, return_counts=True)
        out_scores, out_rows, out_counts = [], [], []
        for query_scores in all_scores:
            order = np.lexsort((row_ids, -query_scores, inverse))  # per track: best score, then lowest row
            starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
            best = order[starts]  # one row per track
            pick = np.lexsort((row_ids[best], -query_scores[best]))[:k]
            out_scores.append(query_scores[best[pick]])
            out_rows.append(row_ids[best[pick]])
            out_counts.append(counts[inverse[best[pick]]])
        return np.stack(out_scores), np.stack(out_rows), np.stack(out_counts)

    # -- reading, checked ------------------------------------------------------------------------------

    def _segments(self, db: sqlite3.Connection) -> list[Segment]:
        """Every registered segment in the snapshot of ``db``, each checked (:data:`_SEGMENT_FAULT`)."""
        digest = "digest" if _has_digest(db) else "NULL"
        next_row = db.execute("SELECT value FROM meta WHERE key = 'next_row'").fetchone()
        if next_row is None or not isinstance(next_row[0], str) or not next_row[0].isascii() \
                or not next_row[0].isdigit():
            raise self._damaged(f"its next row id is {next_row and next_row[0]!r}")
        bad = db.execute(f"SELECT id, file, {_SEGMENT_FAULT} FROM segments WHERE ({_SEGMENT_FAULT}) IS NOT NULL "
                         "LIMIT 1", {"next_row": int(next_row[0])}).fetchone()
        if bad is not None:
            raise self._damaged(f"segment {bad[0]} ({bad[1]!r}): {bad[2]}")
        return list(map(Segment._make, db.execute(
            f"SELECT id, file, first_row, rows, live, {digest} FROM segments ORDER BY id")))

    def _offsets(self, db: sqlite3.Connection, segment: Segment) -> np.ndarray:
        """The offsets of ``segment``'s rows that are left, checked."""
        found = db.execute(f"SELECT offset, {_PLACE_OK} FROM rows WHERE segment = ? ORDER BY offset",
                           (segment.id,)).fetchall()
        if not all(ok for _, ok in found):
            raise self._damaged(f"a row of segment {segment.id} has an offset or track that is not a non-negative "
                                "integer")
        offsets = np.fromiter((offset for offset, _ in found), dtype=np.int64, count=len(found))
        self._check_offsets(segment, offsets)
        return offsets

    def _check_offsets(self, segment: Segment, offsets: np.ndarray) -> None:
        if len(offsets) and offsets.max() >= segment.rows:
            raise self._damaged(f"a row of segment {segment.id} lies at offset {int(offsets.max())}, past its "
                                f"{segment.rows} rows")

    def _records(self, db: sqlite3.Connection, rows: Sequence[int]) -> dict[int, CropRecord]:
        found: dict[int, CropRecord] = {}
        for chunk in _chunks(rows):
            query = f"SELECT id, {', '.join(_ROW_COLUMNS)} FROM rows WHERE id IN ({', '.join('?' * len(chunk))})"
            for row in db.execute(query, chunk):
                found[int(row[0])] = self._row_record(row)
        return found

    def _row_record(self, row: Sequence[Any]) -> CropRecord:
        """A catalog row (id, *_ROW_COLUMNS) as its record, held to the rules of an appended one."""
        return self._stored(f"row {row[0]}", lambda: check_record(_record(row[1:])))

    def _embeddings(self, db: sqlite3.Connection, rows: Sequence[int]) -> np.ndarray:
        segments = {segment.id: segment for segment in self._segments(db)}
        places = {}
        for chunk in _chunks(rows):
            for row, segment, offset, ok in db.execute(
                    f"SELECT id, segment, offset, {_PLACE_OK} FROM rows WHERE id IN ({', '.join('?' * len(chunk))})",
                    chunk):
                if not ok or segment not in segments:
                    raise self._damaged(f"row {row} has no usable place (segment {segment!r}, offset {offset!r})")
                self._check_offsets(segments[segment], np.array([offset], np.int64))
                places[row] = (segments[segment], offset)
        self._check_found(rows, places)
        out = np.empty((len(rows), *self.slot_shape), np.float32)
        for i, row in enumerate(rows):
            segment, offset = places[int(row)]
            out[i] = self._map(segment)[offset]
        return out

    def _time(self, value: Any) -> float | None:
        return None if value is None else self._stored("a row's time", lambda: check_time(value, "time"))

    def _stored(self, what: str, check: Callable[[], T]) -> T:
        """``check()``, its ConfigError about a value read from the catalog said as the catalog's damage."""
        try:
            return check()
        except ConfigError as e:
            raise self._damaged(f"{what}: {e}") from None

    def _damaged(self, what: str) -> BundleError:
        return BundleError(f"the catalog of the store {self.location} is damaged: {what}")

    # -- segment files ---------------------------------------------------------------------------------

    def _in_snapshot(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read(db)`` in one read snapshot; again, in a newer one, when a segment file it names was removed
        by a deletion committed after it began. The same file missing in two snapshots in a row is lost."""
        gone = None
        for _ in range(_SNAPSHOT_TRIES):
            try:
                with self._read() as db:
                    return read(db)
            except _SegmentGone as e:
                if e.file == gone:
                    raise self._damaged(f"its segment file {e.path} is missing") from None
                logger.debug("%s was deleted after this read's snapshot began: reading again", e.path)
                gone = e.file
        raise StoreError(f"the store {self.location} changed under {_SNAPSHOT_TRIES} reads in a row (segments "
                         "deleted while they were read): try again")

    def _map(self, segment: Segment) -> np.ndarray:
        """The (n, K, d) memory map of ``segment``'s file, checked against its registration on first use."""
        with self._maps_lock:
            array = self._maps.get(segment.file)
        if array is None:
            array = self._load(segment)
            with self._maps_lock:
                array = self._maps.setdefault(segment.file, array)
        return array

    def _keep_maps(self, files: set[str]) -> None:
        """Drop the maps of segments a snapshot no longer names (their disk space is freed once unused)."""
        with self._maps_lock:
            for file in [file for file in self._maps if file not in files]:
                del self._maps[file]

    def _load(self, segment: Segment) -> np.ndarray:
        path = self._confined(segment.file)
        try:
            fd = os.open(path.resolve(), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise _SegmentGone(segment.file, path) from None
        except OSError as e:
            raise BundleError(f"segment {path} of the store is unreadable ({e.strerror})") from None
        with open(fd, "rb") as stream:
            array = read_segment(stream, path, self.slot_shape)
            if len(array) != segment.rows:
                raise self._damaged(f"segment {path} holds {len(array)} rows, its registration {segment.rows}: it "
                                    "is not the file registered")
            if segment.digest is not None and segment_digest(stream) != segment.digest:
                raise self._damaged(f"segment {path} does not match its registered checksum: it was replaced, "
                                    "swapped with another or altered")
        return array

    # -- connections -----------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with _reading(self.directory) as db:
            yield db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (committed when the block ends), its failures as StoreErrors."""
        with _catalog_errors(self.directory, self.location):
            db = _connect_writer(self.directory / CATALOG)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
                if db.in_transaction:
                    db.commit()
            finally:
                db.close()


def segment_digest(stream: BinaryIO) -> str:
    """The checksum recorded for a segment file (open for reading): sha256 of its size and of
    :data:`SAMPLES` blocks of :data:`SAMPLE` bytes spread evenly over it, first and last included; a file
    up to their total size is hashed whole. Swapped, replaced, truncated or extended files differ; reading
    it costs the same for any size (see the module's description)."""
    size = os.fstat(stream.fileno()).st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= SAMPLES * SAMPLE:
        stream.seek(0)
        digest.update(stream.read())
    else:
        for i in range(SAMPLES):
            stream.seek(i * (size - SAMPLE) // (SAMPLES - 1))
            digest.update(stream.read(SAMPLE))
    return DIGEST + digest.hexdigest()


def read_segment(stream: BinaryIO, path: Path, slot_shape: tuple[int, int]) -> np.ndarray:
    """Map the .npy file open as ``stream`` read-only, checked to be (n, K, d) little-endian float32 and
    complete. Raises BundleError naming ``path`` otherwise."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]}")
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError, SyntaxError) as e:
        raise BundleError(f"segment {path} of the store is unreadable ({e})") from None
    if fortran or dtype != np.dtype("<f4") or len(shape) != 3 or tuple(shape[1:]) != slot_shape:
        raise BundleError(f"segment {path} is {shape} {dtype}, not (n, {slot_shape[0]}, {slot_shape[1]}) float32")
    start = stream.tell()
    if os.fstat(stream.fileno()).st_size < start + int(np.prod(shape)) * 4:
        raise BundleError(f"segment {path} is shorter than its {shape[0]} rows: it is truncated")
    if shape[0] == 0:
        return np.zeros(shape, np.float32)
    return np.memmap(stream, dtype=np.float32, mode="r", offset=start, shape=tuple(shape))


# -- the catalog's connections ---------------------------------------------------------------------------

def _create_catalog(directory: Path, meta: Mapping[str, str]) -> None:
    """Write a new catalog under a temporary name, then rename it into place (one creator at a time);
    on failure, remove what this call made."""
    made = not directory.exists()
    location = str(directory)
    try:
        with write_errors(location):
            directory.mkdir(parents=True, exist_ok=True)
        with _catalog_errors(directory, location), write_errors(location), \
                output_lock(directory / CATALOG, "creating"):
            if is_store(directory):  # another process made it meanwhile
                return
            with atomic_path(directory / CATALOG) as temp:
                try:
                    _fill_catalog(temp, meta)
                finally:
                    for extra in _catalog_files(temp)[1:]:
                        extra.unlink(missing_ok=True)
    except BaseException:
        if made:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _fill_catalog(path: Path, meta: Mapping[str, str]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        db.commit()
        db.execute("PRAGMA journal_mode = WAL")  # recorded in the file: every later connection uses WAL
    finally:
        db.close()


@contextmanager
def _reading(directory: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the catalog in one read transaction (one snapshot)."""
    with _catalog_errors(directory, str(directory)):
        db = _connect_reader(directory / CATALOG)
        try:
            db.execute("BEGIN")
            yield db
            db.rollback()
        finally:
            db.close()


def _connect_reader(path: Path) -> sqlite3.Connection:
    """The catalog opened read-only: it is never created or changed. A catalog in WAL mode whose directory
    cannot be written (a read-only disk), with no unfinished log, is opened as an immutable file."""
    uri = path.absolute().as_uri()
    try:
        return _open(f"{uri}?mode=ro")
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"the catalog of the store {path.parent} has writes not yet merged ({wal.name}) and "
                             "its directory cannot be written: open it once where it can be, or copy the store "
                             "to such a disk") from None
        return _open(f"{uri}?mode=ro&immutable=1")


def _connect_writer(path: Path) -> sqlite3.Connection:
    db = _open(f"{path.absolute().as_uri()}?mode=rw")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
    return db


def _open(uri: str) -> sqlite3.Connection:
    db = sqlite3.connect(uri, uri=True, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file (and its log) now
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _catalog_errors(directory: Path, location: str) -> Iterator[None]:
    """SQLite's failures as tbps errors: a file that is no catalog is a BundleError; a read-only store an
    OutputError; a full disk, a lock held past the busy timeout or another failure a StoreError."""
    try:
        yield
    except sqlite3.OperationalError as e:
        name = getattr(e, "sqlite_errorname", "")
        if name.startswith("SQLITE_READONLY"):
            raise read_only(location, str(e)) from e
        if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _low_space(directory)):
            raise write_failure(location, str(e), disk_full=True) from e
        raise StoreError(f"the catalog of the store {location} failed: {e}") from e
    except sqlite3.DatabaseError as e:
        if type(e) is not sqlite3.DatabaseError:  # integrity or programming errors are bugs: keep them
            raise
        raise BundleError(f"{directory / CATALOG} is not a readable store catalog ({e})") from None


def _low_space(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < _LOW_SPACE
    except OSError:
        return False


def _catalog_files(path: Path) -> list[Path]:
    """The catalog's file and SQLite's files beside it."""
    return [path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]


def _check_tables(db: sqlite3.Connection, where: str) -> None:
    """Raises BundleError unless the catalog has every table and column a reader needs."""
    for table, columns in _TABLES.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise BundleError(f"{where} is damaged: it has no table '{table}'")
        missing = [column for column in columns if column not in have]
        if missing:
            raise BundleError(f"{where} is damaged: its table '{table}' has no column '{missing[0]}'")


def _has_digest(db: sqlite3.Connection) -> bool:
    """Whether the catalog records segment checksums (catalogs from before them do not: unknown, unchecked)."""
    return any(row[1] == "digest" for row in db.execute("PRAGMA table_info(segments)"))


def _delete_rows(db: sqlite3.Connection, doomed: list[tuple[int, int, str, str | None]]
                 ) -> list[tuple[str, str | None]]:
    """Delete the rows (id, segment, camera, crop) and the segments they leave empty; those segments'
    (file, crop folder)."""
    per_segment: dict[int, int] = {}
    for _, segment, _, _ in doomed:
        per_segment[segment] = per_segment.get(segment, 0) + 1
    db.executemany("DELETE FROM rows WHERE id = ?", [(row,) for row, *_ in doomed])
    emptied = []
    for segment, count in per_segment.items():
        db.execute("UPDATE segments SET live = live - ? WHERE id = ?", (count, segment))
        file, crops, live = db.execute("SELECT file, crops, live FROM segments WHERE id = ?", (segment,)).fetchone()
        if live <= 0:
            emptied.append((segment, file, crops))
    db.executemany("DELETE FROM segments WHERE id = ?", [(s,) for s, _, _ in emptied])
    return [(file, crops) for _, file, crops in emptied]


def _save_progress(db: sqlite3.Connection, progress: Mapping[str, str]) -> None:
    db.executemany("INSERT INTO sources (key, state, updated) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                   "SET state = excluded.state, updated = excluded.updated",
                   [(key, state, time.time()) for key, state in progress.items()])


def _scalar(db: sqlite3.Connection, sql: str) -> int:
    return int(db.execute(sql).fetchone()[0])


def _chunks(rows: Sequence[int]) -> Iterator[list[int]]:
    """``rows`` as ints, 900 at a time (SQLite's parameter limit)."""
    for start in range(0, len(rows), 900):
        yield [int(r) for r in rows[start:start + 900]]


def _record_values(record: CropRecord) -> tuple:
    box = record.box if record.box is not None else (None,) * 4
    return (record.source, record.camera, record.time, record.offset, record.frame, *box, record.score,
            record.track, record.crop, record.identity)


def _record(values: Sequence[Any]) -> CropRecord:
    source, camera, when, offset, frame, x0, y0, x1, y1, score, track, crop, identity = values
    box = None if (x0, y0, x1, y1) == (None,) * 4 else (x0, y0, x1, y1)
    return CropRecord(source, camera, when, offset, frame, box, score, track, crop, identity)


__all__ = ["CATALOG", "DIGEST", "LocalStore", "Segment", "is_store", "read_segment", "segment_digest"]
