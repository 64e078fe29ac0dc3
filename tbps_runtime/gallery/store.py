"""A gallery that grows: append-only segments of embeddings and a SQLite catalog of their metadata.

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

Search is exact Eq. 14: filters (:class:`~tbps_runtime.gallery.rows.RowFilter`)
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
from typing import Any, Iterator, Sequence

import numpy as np

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError
from tbps_runtime.gallery.crops import CROPS, CropFolders, remove_file, remove_tree
from tbps_runtime.gallery.rows import CropRecord, Removal, RowFilter, StoreHit, format_time
from tbps_runtime.outputs import ensure_space, output_lock
from tbps_runtime.ranking import merge_top_k, similarity, top_k

logger = logging.getLogger(__name__)

STORE_FORMAT = "tbps-store"
STORE_VERSION = 1
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


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a store directory (it holds the catalog)."""
    return (Path(path) / CATALOG).is_file()


class LocalStore(CropFolders):
    """A store directory (see the module's description). Thread-safe: each call opens its own
    SQLite connection; memory maps of segments are shared."""

    def __init__(self, directory: Path, meta: dict[str, str]):
        self.directory = directory
        self.fingerprint = meta["fingerprint"]
        self.bundle = meta.get("bundle") or None
        self.num_slots = int(meta["num_slots"])
        self.embed_dim = int(meta["embed_dim"])
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
            raise OutputError(f"{directory} is a file, not a store directory: pick another --gallery")
        if not is_store(directory) and directory.is_dir() and any(directory.iterdir()):
            raise OutputError(f"{directory} is not empty and not a tbps store (no {CATALOG}): pick a new or "
                              "empty directory for --gallery")
        directory.mkdir(parents=True, exist_ok=True)
        with output_lock(directory / CATALOG, "creating"):
            db = _connect(directory / CATALOG)
            try:
                with db:
                    db.executescript(_SCHEMA)
                    meta = dict(db.execute("SELECT key, value FROM meta"))
                    if not meta:
                        meta = {"format": STORE_FORMAT, "version": str(STORE_VERSION), "fingerprint": fingerprint,
                                "num_slots": str(num_slots), "embed_dim": str(embed_dim),
                                "bundle": "" if bundle is None else str(Path(bundle).resolve()),
                                "next_row": "0", "created": str(time.time())}
                        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
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
        if meta.get("format") != STORE_FORMAT:
            raise BundleError(f"{directory / CATALOG} is not a tbps store catalog (no '{STORE_FORMAT}' format)")
        if not meta.get("version", "").isdigit() or int(meta["version"]) > STORE_VERSION:
            raise BundleError(f"{directory} is store version {meta.get('version')}; this tbps reads up to "
                              f"{STORE_VERSION}: upgrade tbps")
        for name in ("fingerprint", "num_slots", "embed_dim", "next_row"):
            if name not in meta or (name != "fingerprint" and not meta[name].isdigit()):
                raise BundleError(f"{directory / CATALOG} lacks or mistypes meta '{name}'")
        return cls(directory, meta)

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Refuse a bundle other than the one whose image tower made these rows."""
        from tbps_runtime.gallery.storage import check_same_bundle

        check_same_bundle(f"the store {self.directory}", self.fingerprint, fingerprint, bundle)

    @property
    def slot_shape(self) -> tuple[int, int]:
        return self.num_slots, self.embed_dim

    def __len__(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT COALESCE(SUM(live), 0) FROM segments").fetchone()[0])

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def writing(self, what: str = "writing into") -> Iterator[LocalStore]:
        """Hold the store's writer lock (one writer at a time, in any process) and clear what a crashed
        writer left: segment files and crop folders no segment row names."""
        with output_lock(self.directory / CATALOG, what):
            self._sweep()
            yield self

    def append(self, embeddings: np.ndarray, records: Sequence[CropRecord], *, crops: str | None = None,
               progress: dict[str, str] | None = None) -> np.ndarray:
        """Add rows: ``embeddings`` (n, K, d) float32, normalised per slot, and one record each.

        Call inside :meth:`writing`. The segment file is written first; the rows, ``crops`` (the batch
        folder from :meth:`new_batch` whose files the records name) and ``progress`` (ingest state per
        source key, JSON text) are registered in one transaction.

        Returns:
            (n,) int64 row ids.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 3 or embeddings.shape[1:] != self.slot_shape or len(embeddings) != len(records):
            raise ValueError(f"append takes (n, {self.num_slots}, {self.embed_dim}) float32 with one record per "
                             f"row, got {embeddings.shape} and {len(records)} records")
        if not len(embeddings):
            if progress:
                with self._write() as db:
                    self._save_progress(db, progress)
            return np.zeros(0, np.int64)
        if not np.isfinite(embeddings).all():
            raise ValueError("append: embeddings hold NaN or inf")
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
                if progress:
                    self._save_progress(db, progress)
        except BaseException:
            (self.directory / name).unlink(missing_ok=True)
            raise
        return np.arange(first, first + len(records), dtype=np.int64)

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key`` by :meth:`append`, or None."""
        with self._read() as db:
            row = db.execute("SELECT state FROM sources WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def max_track(self) -> int:
        """The largest track id in the store (-1 when none): new tracks are numbered after it."""
        with self._read() as db:
            value = db.execute("SELECT MAX(track) FROM rows").fetchone()[0]
        return -1 if value is None else int(value)

    def delete(self, row_filter: RowFilter | None = None, *, older_than: float | None = None,
               everything: bool = False, dry_run: bool = False) -> Removal:
        """Remove rows (their embeddings, metadata and crops) that pass ``row_filter`` and, with
        ``older_than`` (seconds), were seen (or, without a time, added) more than that long ago.

        A deletion that would leave the store empty needs ``everything=True``; a deletion with no
        condition at all is refused. Segments left without rows are removed. Call inside :meth:`writing`.

        Raises:
            ConfigError: no condition, or it would remove every row without ``everything``.
        """
        row_filter = row_filter or RowFilter()
        if row_filter.empty and older_than is None:
            raise ConfigError("say what to delete: --older-than AGE, --camera, --source, --track, --since/--until")
        where, params = row_filter.sql()
        if older_than is not None:
            where += " AND COALESCE(time, added) < ?"
            params.append(time.time() - older_than)
        removal = Removal()
        with self._write() as db:
            doomed = db.execute(f"SELECT id, segment, camera, crop FROM rows WHERE {where}", params).fetchall()
            total = int(db.execute("SELECT COALESCE(SUM(live), 0) FROM segments").fetchone()[0])
            if doomed and len(doomed) == total and not everything:
                raise ConfigError(f"this would remove all {total} rows of {self.directory}: add --yes to do it")
            removal.rows = len(doomed)
            for _, _, camera, _ in doomed:
                removal.cameras[camera] = removal.cameras.get(camera, 0) + 1
            if dry_run or not doomed:
                db.rollback()
                return removal
            per_segment: dict[int, int] = {}
            for _, segment, _, _ in doomed:
                per_segment[segment] = per_segment.get(segment, 0) + 1
            db.executemany("DELETE FROM rows WHERE id = ?", [(row,) for row, *_ in doomed])
            emptied = []
            for segment, count in per_segment.items():
                db.execute("UPDATE segments SET live = live - ? WHERE id = ?", (count, segment))
                file, crops, live = db.execute("SELECT file, crops, live FROM segments WHERE id = ?",
                                               (segment,)).fetchone()
                if live <= 0:
                    emptied.append((segment, file, crops))
            db.executemany("DELETE FROM segments WHERE id = ?", [(s,) for s, _, _ in emptied])
            if row_filter.sources:  # deleting a source by name means starting it over: forget its progress
                db.executemany("DELETE FROM sources WHERE key = ?", [(s,) for s in row_filter.sources])
        # Files go after the commit: a crash here leaves unreferenced files, never rows without embeddings.
        emptied_crops = {crops for _, _, crops in emptied if crops}
        for _, _, _, crop in doomed:
            if crop and crop.rsplit("/", 1)[0] not in emptied_crops:
                removal.bytes += remove_file(self._inside(crop))
                removal.crops += 1
        for _, file, crops in emptied:
            removal.bytes += remove_file(self._inside(file))
            removal.segments += 1
            if crops:
                folder = self._inside(crops)
                removal.crops += sum(1 for _ in folder.glob("*")) if folder.is_dir() else 0
                removal.bytes += remove_tree(folder)
        with self._maps_lock:
            for _, file, _ in emptied:
                self._maps.pop(file, None)
        return removal

    # -- reading ---------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, *, row_filter: RowFilter | None = None,
               per_track: bool = False, min_score: float | None = None) -> list[list[StoreHit]]:
        """The ``k`` best rows (or, ``per_track``, tracks by their best row) for each query.

        Args:
            queries: (Q, K, d) text embeddings (normalised here).
            row_filter: only rows that pass it; applied before the top k, so the result is exact.
            per_track: one hit per track (its best row; rows without a track count as their own).
            min_score: drop hits scoring below it (Eq. 14).

        Returns:
            One list of :class:`StoreHit` per query, best first.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 3 or queries.shape[1:] != self.slot_shape:
            raise BundleError(f"queries are {queries.shape[1:]}, this store's rows are {self.slot_shape} (K, d): "
                              "query with the bundle that built it")
        blocks = self._selection(row_filter or RowFilter(), per_track)
        if per_track:
            scores, rows, counts = self._top_tracks(queries, blocks, k)
        else:
            scores, rows = self._top_rows(queries, blocks, k)
            counts = None
        records = self.records(sorted({int(r) for r in rows.ravel() if r >= 0}))
        results = []
        for q in range(len(queries)):
            hits = []
            for j in range(rows.shape[1]):
                row, score = int(rows[q, j]), float(scores[q, j])
                if row < 0 or (min_score is not None and score < min_score):
                    continue
                hits.append(StoreHit(len(hits) + 1, score, row, records[row],
                                     None if counts is None else int(counts[q, j])))
            results.append(hits)
        return results

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> :class:`CropRecord` for the rows that exist."""
        found: dict[int, CropRecord] = {}
        with self._read() as db:
            for start in range(0, len(rows), 900):  # SQLite's parameter limit
                chunk = list(rows[start:start + 900])
                query = (f"SELECT id, {', '.join(_ROW_COLUMNS)} FROM rows "
                         f"WHERE id IN ({', '.join('?' * len(chunk))})")
                for row in db.execute(query, chunk):
                    found[int(row[0])] = _record(row[1:])
        return found

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows`` (existing ones), in the order given."""
        with self._read() as db:
            places = {}
            for start in range(0, len(rows), 900):
                chunk = list(rows[start:start + 900])
                for row, file, offset in db.execute(
                        f"SELECT rows.id, segments.file, rows.offset FROM rows JOIN segments ON segments.id = "
                        f"rows.segment WHERE rows.id IN ({', '.join('?' * len(chunk))})", chunk):
                    places[row] = (file, offset)
        missing = [r for r in rows if r not in places]
        if missing:
            raise ConfigError(f"no row {missing[0]} in {self.directory}")
        out = np.empty((len(rows), *self.slot_shape), np.float32)
        for i, row in enumerate(rows):
            file, offset = places[row]
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

    def all_progress(self) -> dict[str, str]:
        """Every source's saved ingest state (key -> JSON text)."""
        with self._read() as db:
            return dict(db.execute("SELECT key, state FROM sources"))

    def cameras(self) -> list[str]:
        """The cameras that have rows, sorted (an index lookup: cheap at any size)."""
        with self._read() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT camera FROM rows ORDER BY camera")]

    def info(self) -> dict[str, Any]:
        """Rows, tracks, cameras (rows and time span each), sources, segments and bytes on disk."""
        with self._read() as db:
            rows = int(db.execute("SELECT COALESCE(SUM(live), 0) FROM segments").fetchone()[0])
            segments = int(db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])
            tracks = int(db.execute("SELECT COUNT(DISTINCT track) FROM rows").fetchone()[0])
            span = db.execute("SELECT MIN(time), MAX(time) FROM rows").fetchone()
            cameras = [{"camera": c, "rows": n, "tracks": t, "first": _iso(a), "last": _iso(b)}
                       for c, n, t, a, b in db.execute(
                           "SELECT camera, COUNT(*), COUNT(DISTINCT track), MIN(time), MAX(time) FROM rows "
                           "GROUP BY camera ORDER BY camera")]
            sources = int(db.execute("SELECT COUNT(DISTINCT source) FROM rows").fetchone()[0])
            undated = int(db.execute("SELECT COUNT(*) FROM rows WHERE time IS NULL").fetchone()[0])
        size = sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())
        return {"store": str(self.directory), "fingerprint": self.fingerprint, "bundle": self.bundle,
                "rows": rows, "tracks": tracks, "sources": sources, "segments": segments,
                "first": _iso(span[0]), "last": _iso(span[1]), "undated_rows": undated,
                "cameras": cameras, "bytes": size, "num_slots": self.num_slots, "embed_dim": self.embed_dim}

    # -- internals -------------------------------------------------------------------------------------

    def _selection(self, row_filter: RowFilter, need_tracks: bool
                   ) -> list[tuple[str, int, np.ndarray | None, np.ndarray | None]]:
        """Per segment: (file, first row id, selected offsets or None for all, their tracks or None),
        read in one snapshot."""
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

    def _top_rows(self, queries: np.ndarray, blocks, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = [np.zeros((len(queries), 0), np.float32)], [np.zeros((len(queries), 0), np.int64)]
        for file, first, offsets, _ in blocks:
            embeddings = self._segment(file)
            block_scores, local = top_k(queries, embeddings if offsets is None else embeddings[offsets], k)
            scores.append(block_scores)
            rows.append(first + (local if offsets is None else offsets[local]))
        return merge_top_k(scores, rows, k)

    def _top_tracks(self, queries: np.ndarray, blocks, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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

    def _sweep(self) -> None:
        """Remove segment files and crop folders that no segment row names (a crashed writer's)."""
        with self._read() as db:
            known = {name for row in db.execute("SELECT file, crops FROM segments") for name in row if name}
        for folder in (SEGMENTS, CROPS):
            base = self.directory / folder
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                name = f"{folder}/{entry.name}"
                if name not in known and not entry.name.startswith(".tmp"):
                    logger.info("removing %s: left by an interrupted run, never registered", entry)
                    remove_tree(entry) if entry.is_dir() else remove_file(entry)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = _connect(self.directory / CATALOG)
        try:
            db.execute("BEGIN")  # one snapshot for the whole read
            yield db
            db.rollback()
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = _connect(self.directory / CATALOG)
        try:
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

    @staticmethod
    def _save_progress(db: sqlite3.Connection, progress: dict[str, str]) -> None:
        db.executemany("INSERT INTO sources (key, state, updated) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                       "SET state = excluded.state, updated = excluded.updated",
                       [(key, state, time.time()) for key, state in progress.items()])


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        return db
    except sqlite3.DatabaseError as e:
        raise BundleError(f"{path} is not a readable store catalog ({e})") from None


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


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else format_time(seconds)


__all__ = ["CATALOG", "LocalStore", "is_store", "STORE_FORMAT", "STORE_VERSION"]
