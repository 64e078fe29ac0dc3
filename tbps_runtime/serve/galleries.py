"""The gallery a service serves, behind one interface (:class:`ServedGallery`): a plain one (``g.npy``, or
a directory of shards: :class:`PlainGallery`) or a store (:class:`StoreGallery`). The service asks it for
what differs between the two (how a hit reads, where a crop comes from, whether rows can be added and
removed); the search itself is :meth:`~tbps_runtime.search.PersonSearch.rank` on :attr:`~ServedGallery.target`.

File names reach the file system only from the gallery's own records (a store's crop names through
``Store.crop_path``, which keeps them inside the store; a plain gallery's indexed image paths): never
from a request. Everything here is blocking and thread-safe.

The gallery is opened by its absolute path, and remembered by the identity (device, inode) it had then:
moved away, deleted or replaced while the service runs, it is :meth:`~ServedGallery.gone`, and the
service answers 503 saying so instead of failing on whatever file it reaches first. The refusals below
carry a message for the client and a ``detail`` for the service's log (which may name the server's files:
no HTTP answer does).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, OutputError, StoreError
from tbps_runtime.gallery.npy import Gallery
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.gallery.shards import ShardedGallery
from tbps_runtime.model.images import read_image
from tbps_runtime.paths import printable
from tbps_runtime.search import Match, describe_search
from tbps_runtime.serve.messages import STORE_BUSY, STORE_FAILING, STORE_READ_ONLY, STORE_UNWRITABLE
from tbps_runtime.store.base import Store
from tbps_runtime.store.open import is_store_directory, open_store
from tbps_runtime.store.rows import CropRecord, RowFilter, StoreHit

_CAMERAS_TTL_S = 30.0  # how stale /readyz's camera list may be


class Refusal(Exception):
    """A refusal of the service's own: the message for the client; ``detail`` for the service's log only."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


class NotFound(Refusal):
    """A row, crop or page the request names does not exist, or cannot be read any more (HTTP 404)."""


class Conflict(Refusal):
    """The request does not fit this gallery or bundle (HTTP 409): a store endpoint on a plain gallery,
    explain without explain graphs, a store another process is writing."""


class Unavailable(Refusal):
    """The gallery cannot do what the request asks now (HTTP 503): gone, unreadable, or its disk full."""


@dataclass(frozen=True)
class IngestCrop:
    """One crop to append: (H, W, 3) uint8 RGB pixels and where and when it was seen."""

    pixels: np.ndarray
    camera: str
    source: str = "api"
    time: float | None = None
    track: int | None = None
    box: tuple[float, float, float, float] | None = None


class ServedGallery(Protocol):
    """What a service needs of its gallery, plain or store."""

    target: Gallery | ShardedGallery | Store  # what PersonSearch.rank searches
    bundle: str | None  # the bundle the gallery records
    path: Path  # where it was opened (absolute): for the log, never for an answer

    def gone(self) -> bool:
        """Whether ``path`` no longer holds the gallery opened there (moved, deleted or replaced)."""

    def rows(self) -> int:
        """How many rows a search ranks now."""

    def readiness(self) -> dict[str, Any]:
        """``{"store": bool, "cameras": [names]}`` for ``/readyz``."""

    def followed(self) -> dict[str, dict[str, Any]]:
        """The cameras ``tbps ingest --follow`` records into the gallery: name -> ``status`` (a state not
        recorded for a while reads ``stopped``), ``last_frame`` (ISO-8601), ``fps``, ``reconnects``,
        ``error``; {} for a plain gallery."""

    def check_filters(self, row_filter: RowFilter | None, per_track: bool) -> None:
        """Raises ConfigError when the gallery cannot apply filters or per-track results."""

    def describe(self, rows: int) -> str:
        """The search over ``rows`` rows, in words (filters aside)."""

    def hit(self, hit: Any) -> dict[str, Any]:
        """A ranked hit as the API's JSON (no server paths: a crop URL)."""

    def crop_jpeg(self, row: int) -> bytes:
        """The JPEG of ``row``'s crop. Raises NotFound."""

    def image_file(self, row: int) -> Path:
        """The image file of ``row`` (for heat maps). Raises NotFound."""

    def require_store(self, what: str) -> None:
        """Raises Conflict unless rows can be added and removed."""

    def append(self, embeddings: np.ndarray, crops: Sequence[IngestCrop]) -> list[int]:
        """Append (n, K, d) ``embeddings`` with their crops; the new row ids. Raises Conflict."""

    def delete(self, row_filter: RowFilter | None, age: float | None, dry_run: bool,
               everything: bool) -> dict[str, Any]:
        """Remove rows; what was (or would be) removed. Raises Conflict, ConfigError."""

    def info(self) -> dict[str, Any]:
        """The store's summary without server paths. Raises Conflict."""

    def close(self) -> None:
        """Release what the gallery holds."""


def open_served(path: str | Path) -> ServedGallery:
    """The gallery at ``path`` (opened by its absolute path): a store directory, else a plain gallery (file
    or shard directory)."""
    path = Path(path).absolute()
    if is_store_directory(path):
        return StoreGallery(open_store(path), path)
    return PlainGallery(load_gallery(path), path)


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of what ``path`` names now; None when nothing is there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class _Opened:
    """Where a gallery was opened, and whether it is still there."""

    def __init__(self, path: Path):
        self.path = path
        self._identity = _identity(path)

    def gone(self) -> bool:
        return _identity(self.path) != self._identity


class PlainGallery(_Opened):
    """A plain gallery: fixed rows, an image file and maybe an identity per row; no filters, no writes."""

    def __init__(self, gallery: Gallery | ShardedGallery, path: Path):
        super().__init__(path)
        self.target = gallery
        self.bundle = gallery.bundle

    def rows(self) -> int:
        return len(self.target)

    def readiness(self) -> dict[str, Any]:
        return {"store": False, "cameras": []}

    def followed(self) -> dict[str, dict[str, Any]]:
        return {}

    def check_filters(self, row_filter: RowFilter | None, per_track: bool) -> None:
        if (row_filter is not None and not row_filter.empty) or per_track:
            raise ConfigError("filters and per_track need a store made by tbps ingest; this service's gallery is "
                              "a plain one, without cameras, times or tracks")

    def describe(self, rows: int) -> str:
        return describe_search(self.target)

    def hit(self, hit: Match) -> dict[str, Any]:
        document = {"rank": hit.rank, "score": round(hit.score, 6), "row": hit.row, "crop_url": f"/crops/{hit.row}"}
        if hit.identity is not None:
            document["identity"] = printable(hit.identity) if isinstance(hit.identity, str) else hit.identity
        return document

    def crop_jpeg(self, row: int) -> bytes:
        """The row's indexed image, re-encoded as JPEG."""
        try:
            image = read_image(self.image_file(row))
        except (DataError, InputFileNotFoundError) as e:
            raise NotFound(f"the image of row {row} cannot be read any more", detail=str(e)) from None
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def image_file(self, row: int) -> Path:
        rows = len(self.target)
        if not 0 <= row < rows:
            raise NotFound(f"no row {row} in the gallery ({rows} rows: 0 to {rows - 1})")
        return Path(self.target.entries[row].path)

    def require_store(self, what: str) -> None:
        raise _not_a_store(what)

    def append(self, embeddings: np.ndarray, crops: Sequence[IngestCrop]) -> list[int]:
        raise _not_a_store("ingesting")

    def delete(self, row_filter: RowFilter | None, age: float | None, dry_run: bool,
               everything: bool) -> dict[str, Any]:
        raise _not_a_store("deleting rows")

    def info(self) -> dict[str, Any]:
        raise _not_a_store("gallery info")

    def close(self) -> None:
        """Nothing held: the rows are memory-mapped files."""


def _not_a_store(what: str) -> Conflict:
    return Conflict(f"{what} needs a store (a gallery made by tbps ingest); this service's gallery is a plain "
                    "g.npy, which cannot change while served")


class StoreGallery(_Opened):
    """A store: rows with camera, time and track; filters; rows added and removed while served."""

    def __init__(self, store: Store, path: Path):
        super().__init__(path)
        self.target = store
        self.bundle = store.bundle
        self._write_lock = threading.Lock()  # the store takes one writer at a time, in any thread
        self._cameras: tuple[float, list[str]] | None = None

    def rows(self) -> int:
        return len(self.target)

    def readiness(self) -> dict[str, Any]:
        return {"store": True, "cameras": self.cameras()}

    def followed(self) -> dict[str, dict[str, Any]]:
        from tbps_runtime.ingest.cameras import state_status

        return {printable(str(name)): {"status": state_status(state), "last_frame": state.get("last_frame_iso"),
                                       "fps": state.get("fps"), "reconnects": state.get("reconnects"),
                                       "error": state.get("error")}
                for name, state in sorted(self.target.camera_states().items())}

    def cameras(self) -> list[str]:
        """The store's camera names, cached for a few seconds."""
        cached = self._cameras
        if cached is None or time.monotonic() - cached[0] > _CAMERAS_TTL_S:
            cached = self._cameras = (time.monotonic(), sorted(printable(str(c)) for c in self.target.cameras()))
        return cached[1]

    def check_filters(self, row_filter: RowFilter | None, per_track: bool) -> None:
        """A store applies any filter."""

    def describe(self, rows: int) -> str:
        return f"exact Eq. 14 over {rows} row(s) of the store"

    def hit(self, hit: StoreHit) -> dict[str, Any]:
        document = hit.to_json()
        document.pop("crop", None)  # a path inside the server's store: the client gets a URL
        for name in ("camera", "source", "identity"):
            if isinstance(document.get(name), str):
                document[name] = printable(document[name])
        return {**document, "crop_url": f"/crops/{hit.row}"}

    def crop_jpeg(self, row: int) -> bytes:
        """The crop file the store kept."""
        path = self.image_file(row)
        try:
            return path.read_bytes()
        except OSError as e:
            raise NotFound(f"the crop of row {row} is missing from the store", detail=str(e)) from None

    def image_file(self, row: int) -> Path:
        record = self.target.records([row]).get(row) if 0 <= row < 2**63 else None
        if record is None:
            raise NotFound(f"no row {row} in the gallery")
        if not record.crop:
            raise NotFound(f"row {row} has no crop")
        try:
            return self.target.crop_path(record.crop)  # checked to stay inside the store
        except (DataError, OSError) as e:  # a crop name or link leading outside the store: not served
            raise NotFound(f"the crop of row {row} is not available", detail=str(e)) from None

    def require_store(self, what: str) -> None:
        """A store takes writes."""

    def append(self, embeddings: np.ndarray, crops: Sequence[IngestCrop]) -> list[int]:
        """Append (n, K, d) ``embeddings``, their crops saved as JPEGs in the store; the new row ids.

        Raises:
            Conflict: another process is writing the store.
        """
        with self._writing("ingesting into"):
            try:
                name, folder = self.target.new_batch()
                records = []
                for i, crop in enumerate(crops):
                    image = Image.fromarray(crop.pixels, mode="RGB")
                    atomic_write(folder / f"{i}.jpg",
                                 lambda stream, image=image: image.save(stream, "JPEG", quality=90))
                    records.append(CropRecord(crop.source, crop.camera, crop.time, None, None, crop.box, None,
                                              crop.track, f"{name}/{i}.jpg"))
                rows = self.target.append(embeddings, records, crops=name)
            except (OSError, OutputError, StoreError) as e:  # a full or failing disk: the store keeps none of them
                raise Unavailable(STORE_UNWRITABLE, detail=str(e)) from e
        self._cameras = None
        return [int(r) for r in rows]

    def delete(self, row_filter: RowFilter | None, age: float | None, dry_run: bool,
               everything: bool) -> dict[str, Any]:
        """Remove rows passing ``row_filter`` older than ``age`` seconds; what was (would be) removed.

        Raises:
            ConfigError: no condition; or every row, without ``everything`` (:meth:`Store.delete
                <tbps_runtime.store.base.Store.delete>`: the service words its code).
            Conflict: another process is writing the store.
        """
        with self._writing("deleting from"):
            try:
                removal = self.target.delete(row_filter, older_than=age, everything=everything, dry_run=dry_run)
            except OSError as e:  # a failing disk
                raise Unavailable(STORE_FAILING, detail=str(e)) from e
        self._cameras = None
        return {"dry_run": dry_run, **removal.to_json()}

    def info(self) -> dict[str, Any]:
        """The store's rows, tracks, cameras and size; no server paths."""
        info = self.target.info()
        for name in ("store", "bundle"):
            info.pop(name, None)
        return info

    def close(self) -> None:
        self.target.close()

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """This process's writer lock, then the store's own (another process writing it: :class:`Conflict`)."""
        with self._write_lock, contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.target.writing(what))
            except OutputError as e:  # another writer, or a store on a disk that cannot be written
                raise Conflict(STORE_READ_ONLY if e.code == "store_read_only" else STORE_BUSY, detail=str(e)) from None
            yield


__all__ = ["Conflict", "IngestCrop", "NotFound", "PlainGallery", "Refusal", "ServedGallery", "StoreGallery",
           "Unavailable", "open_served"]
