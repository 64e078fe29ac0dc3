"""What the service does, without HTTP: one loaded bundle and one gallery, searched, embedded, explained,
and (a store) appended to and pruned. The routes of :mod:`tbps_runtime.serve.app` call these methods off
the event loop; everything here is blocking and thread-safe.

Built on the public API only: :class:`~tbps_runtime.search.PersonSearch`, the gallery and store
interfaces, :mod:`tbps_runtime.report.draw` for heat maps. File names reach the file system only from
the gallery's own records (a store's crop names through ``store.crop_path``, which keeps them inside the
store; a plain gallery's indexed image paths): never from a request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import math
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tbps_runtime.atomic import atomic_write
from tbps_runtime.contract import IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, OutputError, QueryError
from tbps_runtime.gallery.open import is_store_directory, load_gallery, open_store
from tbps_runtime.gallery.rows import CropRecord, RowFilter, parse_age, parse_time
from tbps_runtime.model.encoder import Encoder, check_queries
from tbps_runtime.model.images import read_image
from tbps_runtime.paths import printable
from tbps_runtime.report.draw import CROP_SIZE, crop_image
from tbps_runtime.search import PersonSearch, describe_search
from tbps_runtime.serve import Limits, ServeSettings
from tbps_runtime.serve.batching import QueryBatcher
from tbps_runtime.serve.metrics import ServiceMetrics
from tbps_runtime.threads import choose_threads

logger = logging.getLogger(__name__)

WARM_UP_QUERY = "a person in a red coat"
_IMAGE_FORMATS = ("JPEG", "PNG")
_CAMERAS_TTL_S = 30.0  # how stale /readyz's camera list may be (a store's info() walks its directory)


class NotFound(Exception):
    """A row, crop or page the request names does not exist (HTTP 404)."""


class Conflict(Exception):
    """The request does not fit this gallery or bundle (HTTP 409): a store endpoint on a plain gallery,
    explain without explain graphs, a store another process is writing."""


@dataclass(frozen=True)
class RankSpec:
    """How one request ranks: requests with equal specs in one batch are ranked together."""

    k: int
    row_filter: RowFilter | None
    per_track: bool
    threshold: float | None


@dataclass(frozen=True)
class IngestCrop:
    """One crop to append: (H, W, 3) uint8 RGB pixels and where and when it was seen."""

    pixels: np.ndarray
    camera: str
    source: str = "api"
    time: float | None = None
    track: int | None = None
    box: tuple[float, float, float, float] | None = None


class Service:
    """A loaded bundle and gallery (plain ``g.npy``, a directory of shards, or a store), for the routes."""

    def __init__(self, search: PersonSearch, gallery: Any, is_store: bool, settings: ServeSettings,
                 metrics: ServiceMetrics | None = None):
        self.search, self.gallery, self.is_store = search, gallery, is_store
        self.settings, self.limits = settings, settings.limits
        self.metrics = metrics or ServiceMetrics()
        self.batcher = QueryBatcher(self._embed_texts, window_s=settings.batch_window_ms / 1000,
                                    max_batch=settings.max_batch, on_batch=self.metrics.observe_text_batch)
        self.ready = False
        self.failure: str | None = None  # why warming up failed
        self._write_lock = threading.Lock()  # the store takes one writer at a time, in any thread
        self._cameras: tuple[float, list[str]] | None = None
        self.metrics.count_rows(self.rows)

    @classmethod
    def load(cls, settings: ServeSettings, metrics: ServiceMetrics | None = None) -> Service:
        """Open the gallery and its bundle (``settings.bundle``, default: the one the gallery records).

        Raises:
            InputFileNotFoundError: no gallery or bundle there.
            BundleError: a gallery or bundle that is damaged, or made by another bundle.
            ConfigError: the gallery records no bundle and none is given.
        """
        is_store = is_store_directory(settings.gallery)
        gallery = open_store(settings.gallery) if is_store else load_gallery(settings.gallery)
        bundle = settings.bundle or gallery.bundle
        if not bundle:
            raise ConfigError(f"the gallery {settings.gallery} records no bundle: pass --bundle DIR")
        if not Path(bundle).is_dir():
            raise InputFileNotFoundError(f"no bundle at {bundle}" + ("" if settings.bundle else
                                                                     " (the one the gallery records): pass --bundle"))
        # Never spin-waiting: the event loop's thread needs the core an idle tower thread would spin on.
        search = PersonSearch(Encoder.from_bundle(bundle, threads=serving_threads(settings.threads), spinning=False))
        gallery.check_bundle(search.fingerprint, search.directory)
        return cls(search, gallery, is_store, settings, metrics)

    def close(self) -> None:
        self.batcher.close()

    # -- state -------------------------------------------------------------------------------------

    def rows(self) -> int:
        return len(self.gallery)

    @property
    def explain_available(self) -> bool:
        """Whether the bundle has the explain graphs (``tbps-export --explain``)."""
        manifest = self.search.manifest
        return all(spec.name in manifest.towers and spec.onnx_file in manifest.files
                   for spec in (IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER))

    def cameras(self) -> list[str]:
        """A store's camera names (cached for a few seconds); none for a plain gallery."""
        if not self.is_store:
            return []
        cached = self._cameras
        if cached is None or time.monotonic() - cached[0] > _CAMERAS_TTL_S:
            listed = getattr(self.gallery, "cameras", None)  # the local store answers from its index
            names = sorted(printable(str(c)) for c in listed()) if callable(listed) else \
                sorted(printable(str(c["camera"])) for c in self.gallery.info()["cameras"])
            cached = self._cameras = (time.monotonic(), names)
        return cached[1]

    def readiness(self) -> dict[str, Any]:
        return {"status": "ready", "rows": self.rows(), "bundle": self.search.fingerprint[:12],
                "store": self.is_store, "explain": self.explain_available, "cameras": self.cameras()}

    def warm_up(self) -> None:
        """One query through the batcher and the ranking, and one image-tower call: the first calls of a
        session are slow, and should not be a user's. Sets :attr:`ready` (or :attr:`failure`)."""
        try:
            spec = self.rank_spec(k=1)
            self.submit_search([WARM_UP_QUERY], spec).result()
            height, width = self.search.manifest.image_size
            self.embed_pixels([np.zeros((height, width, 3), np.uint8)])
            self.cameras()
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            logger.exception("warming up failed: the service stays unready")
            return
        self.ready = True

    # -- search ------------------------------------------------------------------------------------

    def check_texts(self, texts: Sequence[Any], what: str = "queries") -> list[str]:
        """``texts`` if each is a query this service takes: 1..max_queries of them, each a non-empty string
        of at most max_query_chars characters.

        Raises:
            QueryError: naming the text (1-based) and what is wrong.
        """
        limits = self.limits
        if not 1 <= len(texts) <= limits.max_queries:
            raise QueryError(f"{what}: give 1 to {limits.max_queries} texts per request, got {len(texts)}")
        for i, text in enumerate(texts):
            if isinstance(text, str) and len(text) > limits.max_query_chars:
                raise QueryError(f"{what}[{i}] is {len(text)} characters long; at most {limits.max_query_chars}: "
                                 "describe the person in fewer words")
        check_queries(texts)
        return list(texts)

    def rank_spec(self, k: int = 10, row_filter: RowFilter | None = None, per_track: bool = False,
                  min_score: float | str | None = None) -> RankSpec:
        """A request's ranking, checked against the limits and the gallery.

        Raises:
            ConfigError: k out of range, filters or per_track on a plain gallery, a bad threshold.
        """
        if not 1 <= k <= self.limits.max_k:
            raise ConfigError(f"k must be 1 to {self.limits.max_k}, got {k}")
        if not self.is_store and ((row_filter is not None and not row_filter.empty) or per_track):
            raise ConfigError("filters and per_track need a store made by tbps ingest; this service's gallery is "
                              "a plain one, without cameras, times or tracks")
        return RankSpec(k, row_filter if row_filter is not None and not row_filter.empty else None, per_track,
                        self._threshold(min_score))

    def _threshold(self, value: float | str | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return self.search.min_score("auto")
            except ConfigError:
                raise ConfigError("min_score 'auto' needs a bundle calibrated with tbps calibrate, and this one "
                                  "is not: give a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"min_score must be a finite number, got {value}")
        return float(value)

    def describe(self, spec: RankSpec, rows: int) -> str:
        """The search a spec makes over ``rows`` rows, in words: ``exact Eq. 14 over 800 row(s); no filter``."""
        if self.is_store:
            words = f"exact Eq. 14 over {rows} row(s) of the store"
        else:
            words = describe_search(self.gallery)
        words += "; " + (spec.row_filter.describe() if spec.row_filter is not None else "no filter")
        if spec.per_track:
            words += "; one hit per track"
        if spec.threshold is not None:
            words += f"; score >= {spec.threshold:g}"
        return words

    def submit_search(self, texts: list[str], spec: RankSpec) -> Future:
        """Queue checked ``texts`` for the batched text tower; the future's result is, per text, its hits
        (JSON-ready dicts) ranked by ``spec`` and the gallery's row count then."""
        return self.batcher.submit(texts, then=lambda embeddings: self._rank(embeddings, spec), key=spec)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.search.embed_texts(texts)  # (Q, K, d)

    def _rank(self, embeddings: np.ndarray, spec: RankSpec) -> list[tuple[list[dict[str, Any]], int]]:
        started = time.perf_counter()
        results = self.search.rank(embeddings, self.gallery, k=spec.k, row_filter=spec.row_filter,
                                   per_track=spec.per_track, min_score=spec.threshold)
        self.metrics.observe_rank(time.perf_counter() - started)
        rows = self.rows()  # here, off the event loop: a store counts its rows in SQLite
        return [([self._hit(hit) for hit in hits], rows) for hits in results]

    def _hit(self, hit: Any) -> dict[str, Any]:
        if self.is_store:
            document = hit.to_json()
            document.pop("crop", None)  # a path inside the server's store: the client gets a URL
            for name in ("camera", "source", "identity"):
                if isinstance(document.get(name), str):
                    document[name] = printable(document[name])
            return {**document, "crop_url": f"/crops/{hit.row}"}
        document = {"rank": hit.rank, "score": round(hit.score, 6), "row": hit.index, "crop_url": f"/crops/{hit.index}"}
        if hit.identity is not None:
            document["identity"] = printable(hit.identity) if isinstance(hit.identity, str) else hit.identity
        return document

    # -- embeddings --------------------------------------------------------------------------------

    def submit_texts(self, texts: list[str]) -> Future:
        """Queue checked ``texts`` for the batched text tower; the future's result is (N, K, d) float32."""
        return self.batcher.submit(texts)

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 crops -> (N, K, d) float32 through the image tower."""
        started = time.perf_counter()
        embeddings = self.search.embed_images(list(pixels))
        self.metrics.observe_image_batch(time.perf_counter() - started)
        return embeddings

    def decode_images(self, images: Sequence[str], what: str = "images") -> list[np.ndarray]:
        """Base64 JPEG/PNG files -> (H, W, 3) uint8 RGB each, decoded as ``tbps index`` decodes files.

        Raises:
            DataError: naming the image (0-based) that is not base64, not a JPEG or PNG, or too large.
        """
        if not 1 <= len(images) <= self.limits.max_images:
            raise DataError(f"{what}: give 1 to {self.limits.max_images} images per request, got {len(images)}")
        return [decode_image(text, f"{what}[{i}]", self.limits) for i, text in enumerate(images)]

    # -- crops and explanations --------------------------------------------------------------------

    def crop_jpeg(self, row: int) -> bytes:
        """The JPEG of ``row``'s crop: a store's crop file, or a plain gallery's indexed image re-encoded.

        Raises:
            NotFound: no such row, or its image is gone.
        """
        if self.is_store:
            path = self._crop_path(row)
            try:
                return path.read_bytes()
            except OSError:
                raise NotFound(f"the crop of row {row} is missing from the store") from None
        try:
            image = read_image(self._image_path(row))
        except (DataError, InputFileNotFoundError):
            raise NotFound(f"the image of row {row} cannot be read any more") from None
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def explain(self, query: str, rows: Sequence[int]) -> dict[str, Any]:
        """Token weights of ``query`` and a heat-map picture (base64 PNG) of each row's crop.

        Raises:
            Conflict: the bundle has no explain graphs.
            NotFound: a row that does not exist.
        """
        if not self.explain_available:
            raise Conflict("this bundle has no explain graphs: re-export it with tbps export --explain")
        if not 1 <= len(rows) <= self.limits.max_explain_rows:
            raise ConfigError(f"rows: give 1 to {self.limits.max_explain_rows} rows, got {len(rows)}")
        self.check_texts([query], "query")
        paths = [self._crop_path(row) if self.is_store else Path(self._image_path(row)) for row in rows]
        explanation = self.search.explain(query, [str(p) for p in paths])
        pictures = []
        for path, heatmap in zip(paths, explanation.heatmaps):
            buffer = io.BytesIO()
            crop_image(path, CROP_SIZE, heatmap).save(buffer, format="PNG")
            pictures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        weights = np.round(explanation.token_weights.astype(np.float64), 6).tolist()  # (D + P, T)
        return {"tokens": [printable(t) for t in explanation.tokens], "token_weights": weights, "heatmaps": pictures}

    def _crop_path(self, row: int) -> Path:
        record = self.gallery.records([row]).get(row) if 0 <= row < 2**63 else None
        if record is None:
            raise NotFound(f"no row {row} in the gallery")
        if not record.crop:
            raise NotFound(f"row {row} has no crop")
        return self.gallery.crop_path(record.crop)  # checked to stay inside the store

    def _image_path(self, row: int) -> str:
        if not 0 <= row < len(self.gallery):
            raise NotFound(f"no row {row} in the gallery ({len(self.gallery)} rows: 0 to {len(self.gallery) - 1})")
        return self.gallery.entries[row].path

    # -- a store's rows ----------------------------------------------------------------------------

    def require_store(self, what: str) -> None:
        if not self.is_store:
            raise Conflict(f"{what} needs a store (a gallery made by tbps ingest); this service's gallery is a "
                           "plain g.npy, which cannot change while served")

    def ingest(self, crops: Sequence[IngestCrop]) -> list[int]:
        """Embed ``crops`` and append them to the store, their JPEGs saved in it. Returns the new row ids.

        Raises:
            Conflict: a plain gallery, or another process is writing the store.
        """
        self.require_store("ingesting")
        if not 1 <= len(crops) <= self.limits.max_images:
            raise DataError(f"crops: give 1 to {self.limits.max_images} crops per request, got {len(crops)}")
        embeddings = self.embed_pixels([crop.pixels for crop in crops])  # (n, K, d), before taking the lock
        with self._writing("ingesting into"):
            name, folder = self.gallery.new_batch()
            records = []
            for i, crop in enumerate(crops):
                image = Image.fromarray(crop.pixels, mode="RGB")
                atomic_write(folder / f"{i}.jpg", lambda stream, image=image: image.save(stream, "JPEG", quality=90))
                records.append(CropRecord(crop.source, crop.camera, crop.time, None, None, crop.box, None, crop.track,
                                          f"{name}/{i}.jpg"))
            rows = self.gallery.append(embeddings, records, crops=name)
        self._cameras = None
        return [int(r) for r in rows]

    def delete(self, row_filter: RowFilter | None, older_than: str | None, dry_run: bool,
               everything: bool) -> dict[str, Any]:
        """Remove rows (with their embeddings and crops) that pass ``row_filter`` and are older than
        ``older_than`` (``30d``, ``12h``); what was (or, ``dry_run``, would be) removed.

        Raises:
            ConfigError: no condition; or every row, without ``everything``.
        """
        self.require_store("deleting rows")
        age = None if older_than is None else parse_age(older_than)
        if (row_filter is None or row_filter.empty) and age is None:
            raise ConfigError("say what to delete: filters (cameras, sources, tracks, since, until) or older_than")
        with self._writing("deleting from"):
            planned = self.gallery.delete(row_filter, older_than=age, everything=True, dry_run=True)
            total = self.rows()
            if planned.rows and planned.rows == total and not everything:
                raise ConfigError(f"this would remove all {total} rows of the store: send \"everything\": true "
                                  "to do it")
            removal = planned if dry_run else self.gallery.delete(row_filter, older_than=age, everything=everything)
        self._cameras = None
        return {"dry_run": dry_run, **removal.to_json()}

    def info(self) -> dict[str, Any]:
        """The store's rows, tracks, cameras and size; no server paths."""
        self.require_store("gallery info")
        info = self.gallery.info()
        for name in ("store", "bundle"):
            info.pop(name, None)
        return info

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """This process's writer lock, then the store's own (another process writing it: :class:`Conflict`)."""
        with self._write_lock, contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.gallery.writing(what))
            except OutputError as e:
                raise Conflict(f"the store is being written by another process ({e}); try again later") from None
            yield


def serving_threads(threads: int | None) -> int:
    """The towers' intra-op threads in a server: ``threads`` (``--threads``) if given, or ``OMP_NUM_THREADS``;
    else the thread policy's count less one core, left to the event loop that parses and answers requests
    (at least 1). Measured with ``benchmarks.serve`` on 2 cores: 32 clients get 380 requests/s with 1 tower
    thread, 230 with 2 (the tower's parallel sections wait for the thread that lost its core)."""
    choice = choose_threads(threads)
    return max(1, choice.threads - 1) if choice.adaptive else choice.threads


def decode_image(text: str, what: str, limits: Limits) -> np.ndarray:
    """A base64 JPEG or PNG file -> (H, W, 3) uint8 RGB, decoded as ``tbps index`` decodes image files
    (EXIF orientation applied, transparency on black), after checking its size from the header.

    Raises:
        DataError: naming ``what``: not base64, not a JPEG or PNG, larger than the limit, or undecodable.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{what} is not base64 text (standard alphabet, padded)") from None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise DataError(f"{what} is not a JPEG or PNG image") from None
    if kind not in _IMAGE_FORMATS:
        raise DataError(f"{what} is a {kind} image; send JPEG or PNG")
    side = limits.max_image_side
    if width > side or height > side:
        raise DataError(f"{what} is {width}x{height} pixels; at most {side}x{side}: send the person's crop")
    with tempfile.TemporaryDirectory(prefix="tbps-serve-") as folder:  # read_image reads files: one decoder
        path = Path(folder) / f"image.{kind.lower()}"
        path.write_bytes(data)
        try:
            return np.asarray(read_image(path), dtype=np.uint8)  # (H, W, 3)
        except (DataError, InputFileNotFoundError):
            raise DataError(f"{what} cannot be decoded (a damaged or truncated {kind})") from None


def parse_filters(cameras: Sequence[str] = (), sources: Sequence[str] = (), tracks: Sequence[int] = (),
                  since: str | None = None, until: str | None = None) -> RowFilter:
    """A request's filters as a :class:`RowFilter` (times: ISO-8601, no zone means UTC).

    Raises:
        ConfigError: a time that is not ISO-8601 (naming ``filters.since``/``filters.until``), a bad name or track.
    """
    return RowFilter(tuple(cameras), tuple(sources), tuple(tracks),
                     None if since is None else parse_time(since, "filters.since"),
                     None if until is None else parse_time(until, "filters.until"))


__all__ = ["Conflict", "IngestCrop", "NotFound", "RankSpec", "Service", "decode_image", "parse_filters",
           "serving_threads"]
