"""The audit log of a store: who searched for what, and who looked at which crop, frame or clip.

One SQLite file in the store directory (``audit.sqlite``, WAL mode), apart from the catalog: appending to
it never waits for an ingest's transaction, and deleting rows never touches it. One row per request:

    time     REAL     UTC seconds since the epoch
    key_id   TEXT     a short hash of the API key the request carried (never the key); "-" without one
    client   TEXT     the client's address
    route    TEXT     "search", "crop", "frame", "clip", ...
    row      INTEGER  the store row asked for (crop, frame, clip, like_row), or NULL
    query    TEXT     the query text, or NULL
    filters  TEXT     the filters and options as JSON, or NULL
    request  TEXT     the request id (the X-Request-ID of the answer)

Entries older than the log's retention (default 90 days) are removed when the log is opened and then at
most once an hour while it is appended to. :func:`read_audit` reads it back (``tbps gallery audit``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tbps_runtime.errors import ConfigError, InputFileNotFoundError, StoreError

AUDIT_FILE = "audit.sqlite"
DEFAULT_RETENTION_DAYS = 90.0
_PRUNE_EVERY_S = 3600.0
_BUSY_MS = 5000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, key_id TEXT NOT NULL, client TEXT NOT NULL, route TEXT NOT NULL,
    row INTEGER, query TEXT, filters TEXT, request TEXT);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
"""


@dataclass(frozen=True)
class AuditEntry:
    """One audited request (see the module for the fields)."""

    time: float
    key_id: str
    client: str
    route: str
    row: int | None = None
    query: str | None = None
    filters: dict[str, Any] | None = None
    request: str | None = None

    def to_json(self) -> dict[str, Any]:
        from tbps_runtime.store.rows import format_time

        return {**asdict(self), "time_iso": format_time(self.time)}


def key_id(key: bytes | str | None) -> str:
    """A short, stable name for an API key: the first 12 hex digits of its SHA-256 ("-" for no key). The
    key cannot be read back from it."""
    if key is None:
        return "-"
    data = key.encode("utf-8") if isinstance(key, str) else key
    return hashlib.sha256(data).hexdigest()[:12]


class AuditLog:
    """The audit log of the store in ``directory``, appended to by one process's threads (and by other
    processes: SQLite serialises the writers)."""

    def __init__(self, directory: str | Path, retention_days: float = DEFAULT_RETENTION_DAYS):
        if not retention_days > 0:
            raise ConfigError(f"the audit log's retention must be a positive number of days, got {retention_days}")
        self.path = Path(directory) / AUDIT_FILE
        self.retention_s = float(retention_days) * 86400.0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pruned = 0.0

    def append(self, entry: AuditEntry) -> None:
        """Write ``entry`` (committed when this returns).

        Raises:
            StoreError: the log cannot be written (a read-only or full disk, a damaged file).
        """
        values = (entry.time, entry.key_id, entry.client, entry.route, entry.row, entry.query,
                  None if entry.filters is None else json.dumps(entry.filters, sort_keys=True), entry.request)
        with self._lock:
            try:
                db = self._connection()
                with db:
                    db.execute("INSERT INTO audit (time, key_id, client, route, row, query, filters, request) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                if entry.time - self._pruned > _PRUNE_EVERY_S:
                    self._prune(db, entry.time)
            except (sqlite3.Error, OSError) as e:
                self._close()
                raise StoreError(f"the audit log {self.path} cannot be written ({e})") from e

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.isolation_level = ""  # transactions from here on (``with db``)
            self._db = db
        return self._db

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        with db:
            db.execute("DELETE FROM audit WHERE time < ?", (now - self.retention_s,))
        self._pruned = now

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def read_audit(directory: str | Path, since: float | None = None, until: float | None = None) -> list[AuditEntry]:
    """The entries of the store's audit log with ``since <= time < until``, oldest first (read-only).

    Raises:
        InputFileNotFoundError: the store has no audit log (nothing was served from it yet).
        StoreError: the file is not an audit log.
    """
    path = Path(directory) / AUDIT_FILE
    if not path.is_file():
        raise InputFileNotFoundError(f"{directory} has no audit log ({AUDIT_FILE}): it is written by tbps serve "
                                     "when a store is searched",)
    terms, params = ["1"], []
    if since is not None:
        terms.append("time >= ?")
        params.append(since)
    if until is not None:
        terms.append("time < ?")
        params.append(until)
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_MS / 1000) as db:
            found = db.execute("SELECT time, key_id, client, route, row, query, filters, request FROM audit WHERE "
                               f"{' AND '.join(terms)} ORDER BY time, id", params).fetchall()
    except sqlite3.Error as e:
        raise StoreError(f"{path} is not a readable audit log ({e})") from e
    return [AuditEntry(t, k, c, r, row, q, None if f is None else json.loads(f), request)
            for t, k, c, r, row, q, f, request in found]


__all__ = ["AUDIT_FILE", "DEFAULT_RETENTION_DAYS", "AuditEntry", "AuditLog", "key_id", "read_audit"]
