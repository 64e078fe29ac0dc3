"""The local store: append-only segments of embeddings and a SQLite catalog of their metadata.

A store is a directory::

    store.sqlite            the catalog (WAL): meta, segments, rows, sources
    segments/<hex>.npy      (n, K, d) float32 blocks, per-slot normalised, memory-mapped when read
    crops/<hex>/<i>.jpg     the crops of each appended batch (written by ``tbps ingest``)

Appending writes a new segment file (temp file + rename) and then registers it
and its rows in one transaction: readers see whole segments or none, a crash
leaves at most an unregistered file, which the next writer removes. Readers need
no lock (SQLite's WAL gives each search a consistent snapshot), so ``tbps rank``
runs while ``tbps ingest`` appends; writers take the store's lock
(:func:`tbps_runtime.outputs.output_lock`), one at a time.

Search is exact Eq. 14: filters (:class:`~tbps_runtime.store.rows.RowFilter`)
select rows in SQL, then every selected row is scored; the top k are the
same as ranking those rows in a plain gallery (ties: the lower row id first).
Row ids are never reused, also after deletions.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import BundleError, InputFileNotFoundError, OutputError, StoreError
from tbps_runtime.outputs import ensure_space, output_lock
from tbps_runtime.ranking import merge_top_k, similarity, top_k
from tbps_runtime.store.base import (CROPS, CameraSummary, Pick, StoreBase, StoreSummary, check_meta, new_meta,
                                     remove_file, tree_bytes)
from tbps_runtime.store.rows import CropRecord, Removal, RowFilter

logger = logging.getLogger(__name__)

CATALOG = "store.sqlite"
SEGMENTS = "segments"
_BUSY_MS = 30_000  # how long a statement waits for another process's write transaction
_ROW_COLUMNS = ("source", "camera", "time", "offset_s", "frame", "x0", "y0", "x1", "y1", "score", "track",
                "crop", "identity")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, crops TEXT, first_row INTEGER NOT NULL,
    rows INTEGER NOT NULL, live INTEGER NOT NULL, created REAL NOT NULL);
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
# Per segment, what a search reads: (file, first row id, selected offsets or None for all, their tracks or None).
Block = tuple[str, int, np.ndarray | None, np.ndarray | None]


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
        """Open the store at ``directory``, creating it (and the directory) when absent.

        Raises:
            OutputError: ``directory`` holds files but no store (it is not tbps's to fill).
            BundleError: an existing store was made by another bundle (its scores would not compare).
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory} is a file, not a store directory: a store needs a directory",
                              code="store_path_is_file", path=str(directory))
        if not is_store(directory) and directory.is_dir() and any(directory.iterdir()):
            raise OutputError(f"{directory} is not empty and not a tbps store (no {CATALOG}): a new store needs a "
                              "new or empty directory", code="store_path_not_empty", path=str(directory),
                              catalog=CATALOG)
        directory.mkdir(parents=True, exist_ok=True)
        with output_lock(directory / CATALOG, "creating"):
            db = _connect(directory / CATALOG)
            try:
                with db:
                    db.executescript(_SCHEMA)
                    if db.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0:
                        db.executemany("INSERT INTO meta VALUES (?, ?)",
                                       new_meta(fingerprint, num_slots, embed_dim, bundle).items())
            finally:
                db.close()
        store = cls.open(directory)
        store.check_bundle(fingerprint, bundle)
        return store

    @classmethod
    def open(cls, directory: str | Path) -> LocalStore:
        """Open an existing store.

        Raises:
            InputFileNotFoundError: no store there.
            BundleError: the catalog is not a tbps store's, or from a newer tbps.
        """
        directory = Path(directory)
        if not is_store(directory):
            raise InputFileNotFoundError(f"no tbps store at {directory} (no {CATALOG}): make one with tbps ingest")
        try:
            db = _connect(directory / CATALOG)
            try:
                meta = dict(db.execute("SELECT key, value FROM meta"))
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise BundleError(f"{directory / CATALOG} is not a readable store catalog ({e})") from None
        check_meta(str(directory / CATALOG), meta)
        return cls(directory, meta)

    def close(self) -> None:
        """Drop the segments' memory maps (each call opens its own SQLite connection: none to close)."""
        with self._maps_lock:
            self._maps.clear()

    def __len__(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT COALESCE(SUM(live), 0) FROM segments").fetchone()[0])

    # -- writing ---------------------------------------------------------------------------------------

    def _append(self, embeddings: np.ndarray, records: list[CropRecord], crops: str | None,
                progress: dict[str, str]) -> np.ndarray:
        """The segment file first; then the rows, the segment and ``progress`` in one transaction."""
        (self.directory / SEGMENTS).mkdir(exist_ok=True)
        name = f"{SEGMENTS}/{uuid.uuid4().hex}.npy"
        ensure_space(self.directory, embeddings.nbytes + 4096, f"the store {self.directory}")
        atomic_write(self.directory / name, lambda stream: np.save(stream, embeddings))
        now = time.time()
        try:
            with self._write() as db:
                first = int(db.execute("SELECT value FROM meta WHERE key = 'next_row'").fetchone()[0])
                segment = db.execute(
                    "INSERT INTO segments (file, crops, first_row, rows, live, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, crops, first, len(records), len(records), now)).lastrowid
                db.executemany(
                    f"INSERT INTO rows (id, segment, offset, {', '.join(_ROW_COLUMNS)}, added) "
                    f"VALUES ({', '.join('?' * (len(_ROW_COLUMNS) + 4))})",
                    [(first + i, segment, i, *_record_values(r), now) for i, r in enumerate(records)])
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (str(first + len(records)),))
                _save_progress(db, progress)
        except BaseException:
            (self.directory / name).unlink(missing_ok=True)
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
            total = int(db.execute("SELECT COALESCE(SUM(live), 0) FROM segments").fetchone()[0])
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
        self._remove_crops(removal, (crop for *_, crop in doomed), (crops for _, crops in emptied))
        for file, _ in emptied:
            removal.bytes += remove_file(self._inside(file))
        with self._maps_lock:
            for file, _ in emptied:
                self._maps.pop(file, None)
        return removal

    def _sweep(self) -> None:
        """Remove segment files and crop folders that no segment row names (a crashed writer's)."""
        with self._read() as db:
            known = {name for row in db.execute("SELECT file, crops FROM segments") for name in row if name}
        for folder in (SEGMENTS, CROPS):
            self._sweep_folder(folder, known)

    # -- reading ---------------------------------------------------------------------------------------

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key``, or None."""
        with self._read() as db:
            row = db.execute("SELECT state FROM sources WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def all_progress(self) -> dict[str, str]:
        """Every source's saved ingest state (key -> text)."""
        with self._read() as db:
            return dict(db.execute("SELECT key, state FROM sources"))

    def max_track(self) -> int:
        """The largest track id in the store (-1 when none): new tracks are numbered after it."""
        with self._read() as db:
            value = db.execute("SELECT MAX(track) FROM rows").fetchone()[0]
        return -1 if value is None else int(value)

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> :class:`~tbps_runtime.store.rows.CropRecord` for the rows that exist."""
        found: dict[int, CropRecord] = {}
        with self._read() as db:
            for chunk in _chunks(rows):
                query = (f"SELECT id, {', '.join(_ROW_COLUMNS)} FROM rows "
                         f"WHERE id IN ({', '.join('?' * len(chunk))})")
                for row in db.execute(query, chunk):
                    found[int(row[0])] = _record(row[1:])
        return found

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows``, in the order given."""
        places = {}
        with self._read() as db:
            for chunk in _chunks(rows):
                for row, file, offset in db.execute(
                        f"SELECT rows.id, segments.file, rows.offset FROM rows JOIN segments ON segments.id = "
                        f"rows.segment WHERE rows.id IN ({', '.join('?' * len(chunk))})", chunk):
                    places[row] = (file, offset)
        self._check_found(rows, places)
        out = np.empty((len(rows), *self.slot_shape), np.float32)
        for i, row in enumerate(rows):
            file, offset = places[int(row)]
            out[i] = self._segment(file)[offset]
        return out

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
            yield np.array([row[0] for row in chunk], np.int64), [_record(row[1:]) for row in chunk]

    def cameras(self) -> list[str]:
        """The cameras that have rows, sorted (an index lookup: cheap at any size)."""
        with self._read() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT camera FROM rows ORDER BY camera")]

    def _summary(self) -> StoreSummary:
        with self._read() as db:
            span = db.execute("SELECT MIN(time), MAX(time) FROM rows").fetchone()
            summary = StoreSummary(
                rows=_scalar(db, "SELECT COALESCE(SUM(live), 0) FROM segments"),
                tracks=_scalar(db, "SELECT COUNT(DISTINCT track) FROM rows"),
                sources=_scalar(db, "SELECT COUNT(DISTINCT source) FROM rows"),
                segments=_scalar(db, "SELECT COUNT(*) FROM segments"), first=span[0], last=span[1],
                undated_rows=_scalar(db, "SELECT COUNT(*) FROM rows WHERE time IS NULL"), bytes=0,
                cameras=[CameraSummary(*row) for row in db.execute(
                    "SELECT camera, COUNT(*), COUNT(DISTINCT track), MIN(time), MAX(time) FROM rows "
                    "GROUP BY camera ORDER BY camera")])
        summary.bytes = tree_bytes(self.directory)
        return summary

    # -- ranking ---------------------------------------------------------------------------------------

    def _rank(self, queries: np.ndarray, k: int, row_filter: RowFilter, per_track: bool) -> list[list[Pick]]:
        blocks = self._selection(row_filter, per_track)
        if per_track:
            scores, rows, counts = self._top_tracks(queries, blocks, k)
        else:
            (scores, rows), counts = self._top_rows(queries, blocks, k), None
        return [[(float(scores[q, j]), int(rows[q, j]), None if counts is None else int(counts[q, j]))
                 for j in range(rows.shape[1]) if rows[q, j] >= 0] for q in range(len(queries))]

    def _selection(self, row_filter: RowFilter, need_tracks: bool) -> list[Block]:
        """The blocks of the selected rows, read in one snapshot."""
        blocks = []
        with self._read() as db:
            segments = db.execute("SELECT id, file, first_row, rows, live FROM segments ORDER BY id").fetchall()
            if row_filter.empty and not need_tracks:
                for segment, file, first, count, live in segments:
                    offsets = None if live == count else _ints(db.execute(
                        "SELECT offset FROM rows WHERE segment = ? ORDER BY offset", (segment,)))
                    blocks.append((file, first, offsets, None))
                return blocks
            where, params = row_filter.sql()
            picked = db.execute(f"SELECT segment, offset, COALESCE(track, -1 - id) FROM rows WHERE {where} "
                                "ORDER BY segment, offset", params).fetchall()
        if not picked:
            return []
        table = np.asarray(picked, dtype=np.int64)  # (n, 3)
        files = {segment: (file, first) for segment, file, first, _, _ in segments}
        cuts = np.flatnonzero(np.diff(table[:, 0])) + 1
        for part in np.split(table, cuts):
            file, first = files[int(part[0, 0])]
            blocks.append((file, first, part[:, 1], part[:, 2]))
        return blocks

    def _top_rows(self, queries: np.ndarray, blocks: list[Block], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = [np.zeros((len(queries), 0), np.float32)], [np.zeros((len(queries), 0), np.int64)]
        for file, first, offsets, _ in blocks:
            embeddings = self._segment(file)
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
        all_scores = np.concatenate([similarity(queries, self._segment(file)[offsets])
                                     for file, _, offsets, _ in blocks], axis=1)  # (Q, n)
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

    # -- internals -------------------------------------------------------------------------------------

    def _segment(self, file: str) -> np.ndarray:
        with self._maps_lock:
            array = self._maps.get(file)
            if array is None:
                path = self._inside(file)
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise BundleError(f"segment {path} of the store is unreadable ({e})") from None
                if array.ndim != 3 or array.shape[1:] != self.slot_shape or array.dtype != np.float32:
                    raise BundleError(f"segment {path} is {array.shape} {array.dtype}, not (n, {self.num_slots}, "
                                      f"{self.embed_dim}) float32")
                self._maps[file] = array
            return array

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = _connect(self.directory / CATALOG)
        try:
            with _store_errors(self.directory):
                db.execute("BEGIN")  # one snapshot for the whole read
                yield db
                db.rollback()
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = _connect(self.directory / CATALOG)
        try:
            with _store_errors(self.directory):
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.rollback()
                    raise
                if db.in_transaction:
                    db.commit()
        finally:
            db.close()


@contextmanager
def _store_errors(directory: Path) -> Iterator[None]:
    """SQLite's operational failures (a lock held past the busy timeout, a disk error) as StoreErrors."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise StoreError(f"the catalog of the store {directory} failed: {e}") from e


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        return db
    except sqlite3.DatabaseError as e:
        raise BundleError(f"{path} is not a readable store catalog ({e})") from None


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
    return CropRecord(source, camera, when, offset, frame, None if x0 is None else (x0, y0, x1, y1), score, track,
                      crop, identity)


def _ints(cursor: sqlite3.Cursor) -> np.ndarray:
    return np.fromiter((row[0] for row in cursor), dtype=np.int64)


__all__ = ["CATALOG", "LocalStore", "is_store"]
