"""A hit's context for ``tbps serve``: its full frame, a clip around it, and the audit log of who asked.

What :mod:`tbps_runtime.serve.routes.context` and the search and crop routes call, without HTTP. Only rows
of a store are reachable (a plain gallery has no sources: 409); the source file is the one the row
records, never a path from a request.

Clips are cut once and kept in a cache directory of the service's own (a temporary directory, removed
when the service stops, at most :data:`CLIP_CACHE_BYTES`, least recently used first out): a browser's
``<video>`` asks for one clip several times (a first request, then byte ranges as it plays and seeks),
and every range must come from the same bytes. The cache is not in the store: it is derived data, and a
store's size, copies and retention never see it.

The audit log (:class:`~tbps_runtime.store.audit.AuditLog`) is written before a request is answered; when
it cannot be written, the request is refused with a 503 and nothing is answered: a site must be able to
show who searched, so an unlogged search is not made. A plain gallery keeps no audit log (it has no store
directory to keep one in).
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Request

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, StoreError
from tbps_runtime.serve.galleries import Conflict, NotFound, ServedGallery, StoreGallery, Unavailable
from tbps_runtime.serve.security import presented_key
from tbps_runtime.store.audit import AuditEntry, AuditLog, key_id
from tbps_runtime.store.rows import CropRecord

logger = logging.getLogger(__name__)

CLIP_CACHE_BYTES = 256 * 2**20
AUDIT_UNWRITABLE = ("the audit log cannot be written, so the request was not answered: the service's operator "
                    "must make the store's audit log writable (the service's log says why)")


class HitContext:
    """Frames, clips and the audit log of one served gallery."""

    def __init__(self, gallery: ServedGallery, audit_days: float | None = None):
        self.gallery = gallery
        self.audit = (AuditLog(gallery.path, audit_days) if audit_days is not None else AuditLog(gallery.path)) \
            if isinstance(gallery, StoreGallery) else None
        self._clips: Path | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if self._clips is not None:
            shutil.rmtree(self._clips, ignore_errors=True)

    # -- rows ---------------------------------------------------------------------------------------

    def record(self, row: int, what: str) -> CropRecord:
        """The store's record of ``row``.

        Raises:
            Conflict: a plain gallery. NotFound: no such row.
        """
        if not isinstance(self.gallery, StoreGallery):
            raise Conflict(f"{what} needs a store (a gallery made by tbps ingest): a plain gallery has no sources")
        record = self.gallery.target.records([row]).get(row) if 0 <= row < 2**63 else None
        if record is None:
            raise NotFound(f"no row {row} in the gallery")
        return record

    def frame_jpeg(self, row: int) -> bytes:
        """The JPEG of ``row``'s full frame with its box drawn.

        Raises:
            Conflict: a plain gallery. NotFound: no such row, a stream's row, the source gone or unreadable.
        """
        from tbps_runtime.ingest.moments import frame_image

        record = self.record(row, "a frame")
        with _source_refusals(row):
            image = frame_image(record)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=88)
        return buffer.getvalue()

    def clip(self, row: int, before: float, after: float) -> tuple[Path, float, bool]:
        """An MP4 of ``row``'s source from ``before`` s before it to ``after`` s after it (cached): its file,
        the source time (s) at the clip's time 0, and whether it was cut without re-encoding.

        Raises:
            ConfigError: before/after out of range. Conflict: a plain gallery. NotFound: as :meth:`frame_jpeg`.
        """
        from tbps_runtime.ingest.moments import source_path, write_clip

        record = self.record(row, "a clip")
        with _source_refusals(row):
            source = source_path(record)
            status = source.stat()
            name = hashlib.sha256(repr((record.source, record.offset, status.st_size, status.st_mtime_ns, before,
                                        after)).encode()).hexdigest()[:24]
            with self._lock:
                folder = self._clip_folder()
                cached = folder / f"{name}.mp4"
                meta = folder / f"{name}.txt"
                if cached.is_file() and meta.is_file():
                    cached.touch()
                    start, remuxed = meta.read_text().split()
                    return cached, float(start), remuxed == "1"
                partial = folder / f"{name}.part.mp4"
                clip = write_clip(record, before, after, partial)
                partial.replace(cached)
                meta.write_text(f"{clip.start!r} {int(clip.remuxed)}")
                self._evict(folder, keep=cached)
        return cached, clip.start, clip.remuxed

    def _clip_folder(self) -> Path:
        if self._clips is None:
            self._clips = Path(tempfile.mkdtemp(prefix="tbps-clips-"))
        return self._clips

    def _evict(self, folder: Path, keep: Path) -> None:
        """Remove the least recently used clips beyond :data:`CLIP_CACHE_BYTES` (never ``keep``)."""
        clips = sorted(folder.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in clips)
        for path in clips:
            if total <= CLIP_CACHE_BYTES:
                break
            if path != keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                path.with_suffix(".txt").unlink(missing_ok=True)

    # -- audit --------------------------------------------------------------------------------------

    def record_request(self, request: Request, route: str, *, row: int | None = None, query: str | None = None,
                       filters: dict[str, Any] | None = None) -> None:
        """Append the request to the audit log (a store's; a plain gallery keeps none).

        Raises:
            Unavailable: the log cannot be written (the request is then not answered).
        """
        if self.audit is None:
            return
        key = presented_key(request.scope.get("headers", [])) if request.app.state.api_key is not None else None
        client = request.client.host if request.client is not None else "-"
        entry = AuditEntry(time.time(), key_id(key), client, route, row, query, filters,
                           getattr(request.state, "request_id", None))
        try:
            self.audit.append(entry)
        except StoreError as e:
            raise Unavailable(AUDIT_UNWRITABLE, detail=str(e)) from e


class _source_refusals:
    """A row's source that cannot give a frame or clip: 404 with the reason (no server path in it)."""

    def __init__(self, row: int):
        self.row = row

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> bool:
        from tbps_runtime.ingest.moments import NotKept

        if error is None or isinstance(error, ConfigError):
            return False
        if isinstance(error, NotKept):
            raise NotFound(f"row {self.row}: {error}") from None
        if isinstance(error, InputFileNotFoundError):
            raise NotFound(f"the source video of row {self.row} is not there any more (moved or deleted since it "
                           "was ingested)", detail=str(error)) from None
        if isinstance(error, (DataError, OSError)):
            raise NotFound(f"the source video of row {self.row} cannot be read there", detail=str(error)) from None
        return False


__all__ = ["AUDIT_UNWRITABLE", "CLIP_CACHE_BYTES", "HitContext"]
