"""What the service does, without HTTP: one loaded bundle and one gallery, searched, embedded, explained,
and (a store) appended to and pruned. The routes of :mod:`tbps_runtime.serve.routes` call these methods
off the event loop; everything here is blocking and thread-safe. The request models bound every request
at the default limits (:mod:`tbps_runtime.serve.schemas`); the service holds it to its own, which may be
lower, and refuses in the same words (:mod:`tbps_runtime.serve.messages`).

Built on the public API only: :class:`~tbps_runtime.search.PersonSearch`, the gallery behind one interface
(:class:`~tbps_runtime.serve.galleries.ServedGallery`: a plain gallery or a store),
:mod:`tbps_runtime.report.draw` for heat maps. File names never come from a request.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tbps_runtime.contract import IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, QueryError
from tbps_runtime.model.encoder import Encoder
from tbps_runtime.paths import printable
from tbps_runtime.report.draw import CROP_SIZE, crop_image
from tbps_runtime.search import PersonSearch
from tbps_runtime.serve import ServeSettings
from tbps_runtime.serve.batching import QueryBatcher
from tbps_runtime.serve.galleries import Conflict, IngestCrop, NotFound, ServedGallery, Unavailable, open_served
from tbps_runtime.serve.hit_context import HitContext
from tbps_runtime.serve.messages import (GALLERY_GONE, NO_EXPLAIN_GRAPHS, SERVER_FILES_UNREADABLE, count_refusal,
                                         length_refusal, range_refusal)
from tbps_runtime.serve.metrics import ServiceMetrics
from tbps_runtime.serve.uploads import decode_image
from tbps_runtime.store.answers import check_cameras, explain_empty, notices, strength
from tbps_runtime.store.base import Store
from tbps_runtime.store.calibration import ScoreThreshold
from tbps_runtime.store.rows import RowFilter, parse_age, parse_time
from tbps_runtime.text import check_queries
from tbps_runtime.threads import choose_threads

logger = logging.getLogger(__name__)

WARM_UP_QUERY = "a person in a red coat"


@dataclass(frozen=True)
class RankSpec:
    """How one request ranks: requests with equal specs in one batch are ranked together."""

    k: int
    row_filter: RowFilter | None
    per_track: bool
    threshold: float | None
    chosen: ScoreThreshold | None = None  # a store's threshold and where it came from (strength reads it)


class Service:
    """A loaded bundle and gallery (plain ``g.npy``, a directory of shards, or a store), for the routes."""

    def __init__(self, search: PersonSearch, gallery: ServedGallery, settings: ServeSettings,
                 metrics: ServiceMetrics | None = None):
        self.search, self.gallery = search, gallery
        self.settings, self.limits = settings, settings.limits
        self.metrics = metrics or ServiceMetrics()
        self.batcher = QueryBatcher(self._embed_texts, window_s=settings.batch_window_ms / 1000,
                                    max_batch=settings.max_batch, on_batch=self.metrics.observe_text_batch)
        self.ready = False
        self.failure: str | None = None  # why warming up failed
        self.said: set[str] = set()  # threshold notices already logged (once each, not per request)
        self.metrics.count_rows(self.rows)
        self.metrics.watch_cameras(self.gallery.followed)
        self.context = HitContext(gallery, settings.audit_days)  # frames, clips, the audit log

    @classmethod
    def load(cls, settings: ServeSettings, metrics: ServiceMetrics | None = None) -> Service:
        """Open the gallery and its bundle (``settings.bundle``, default: the one the gallery records).

        Raises:
            InputFileNotFoundError: no gallery or bundle there.
            BundleError: a gallery or bundle that is damaged, or made by another bundle.
            ConfigError: the gallery records no bundle and none is given.
        """
        gallery = open_served(settings.gallery)
        bundle = settings.bundle or gallery.bundle
        if not bundle:
            raise ConfigError(f"the gallery {settings.gallery} records no bundle: name one (ServeSettings.bundle)",
                              code="gallery_without_bundle", gallery=settings.gallery)
        if not Path(bundle).is_dir():
            recorded = not settings.bundle
            raise InputFileNotFoundError(f"no bundle at {bundle}" + (" (the one the gallery records): name one "
                                                                     "(ServeSettings.bundle)" if recorded else ""),
                                         code="bundle_missing", bundle=str(bundle), recorded=recorded)
        # Never spin-waiting: the event loop's thread needs the core an idle tower thread would spin on.
        search = PersonSearch(Encoder.from_bundle(bundle, threads=serving_threads(settings.threads), spinning=False))
        gallery.target.check_bundle(search.fingerprint, search.directory)
        return cls(search, gallery, settings, metrics)

    def close(self) -> None:
        self.batcher.close()
        self.context.close()
        self.gallery.close()

    # -- state -------------------------------------------------------------------------------------

    def rows(self) -> int:
        return self.gallery.rows()

    @property
    def explain_available(self) -> bool:
        """Whether the bundle has the explain graphs (``tbps export --explain``)."""
        manifest = self.search.manifest
        return all(spec.name in manifest.towers and spec.onnx_file in manifest.files
                   for spec in (IMAGE_EXPLAIN_TOWER, TEXT_EXPLAIN_TOWER))

    def readiness(self, detail: bool = True) -> dict[str, Any]:
        """``/readyz``: ``{"status": "ready"}``; with ``detail`` (a caller holding the key, or a service without
        one) also the rows, the bundle, whether the gallery is a store, explain, the cameras.

        Raises:
            Unavailable: the gallery is gone.
            StoreError, BundleError: its rows cannot be counted (a store that does not answer, or damaged).
        """
        self.check_gallery()
        rows = self.rows()  # the gallery answers: a probe's "ready" means searches can be answered
        if not detail:
            return {"status": "ready"}
        gallery = self.gallery.readiness()
        return {"status": "ready", "rows": rows, "bundle": self.search.fingerprint[:12],
                "store": gallery["store"], "explain": self.explain_available, "cameras": gallery["cameras"],
                "followed": self.gallery.followed() or None}

    def check_gallery(self) -> None:
        """Raises :class:`Unavailable` when the gallery was moved, deleted or replaced since it was opened."""
        if self.gallery.gone():
            raise Unavailable(GALLERY_GONE, detail=f"{self.gallery.path} was moved, deleted or replaced while "
                                                   "the service ran")

    def warm_up(self) -> None:
        """One query through the batcher and the ranking, and one image-tower call: the first calls of a
        session are slow, and should not be a user's. Sets :attr:`ready` (or :attr:`failure`)."""
        try:
            spec = self.rank_spec(k=1)
            self.submit_search([WARM_UP_QUERY], spec).result()
            height, width = self.search.manifest.image_size
            self.embed_pixels([np.zeros((height, width, 3), np.uint8)])
            self.gallery.readiness()  # a store's camera list, cached
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
            raise QueryError(f"{what}: {count_refusal(limits.max_queries, 'texts', len(texts))}")
        for i, text in enumerate(texts):
            field = what if what == "query" else f"{what}[{i}]"
            if isinstance(text, str) and len(text) > limits.max_query_chars:
                raise QueryError(f"{field}: {length_refusal(len(text), limits.max_query_chars)}")
            try:
                check_queries([text])
            except QueryError as e:  # the library counts queries from 1 ("query 1 is empty"): say the field
                raise QueryError(str(e).replace("query 1", field, 1)) from None
        return list(texts)

    def rank_spec(self, k: int = 10, row_filter: RowFilter | None = None, per_track: bool = False,
                  min_score: float | str | None = None) -> RankSpec:
        """A request's ranking, checked against the limits and the gallery.

        Raises:
            ConfigError: k out of range, filters or per_track on a plain gallery, a bad threshold
                (:meth:`PersonSearch.min_score <tbps_runtime.search.PersonSearch.min_score>`).
        """
        if not 1 <= k <= self.limits.max_k:
            raise ConfigError(range_refusal("k", self.limits.max_k, k))
        self.check_gallery()
        self.gallery.check_filters(row_filter, per_track)
        row_filter = row_filter if row_filter is not None and not row_filter.empty else None
        store = self.gallery.target
        if isinstance(store, Store):
            check_cameras(store, row_filter)
            chosen = self.search.threshold_for(min_score, store)
            for notice in set(notices(chosen, store)) - self.said:
                self.said.add(notice)
                logger.warning("%s", notice)
            return RankSpec(k, row_filter, per_track, None if chosen is None else chosen.value, chosen)
        return RankSpec(k, row_filter, per_track, self.search.min_score(min_score))

    def answer_notes(self, texts: list[str], spec: RankSpec, ranked: list[tuple[list[dict[str, Any]], int]]
                     ) -> dict[str, Any]:
        """The answer's own account (a store's): ``threshold`` (value, source, stale) and, per query, why it
        is empty (``empty``: ``0 hits at >= 3.83 (store threshold); best score 1.75 (cam3, 14:00:07)``)."""
        store = self.gallery.target
        if not isinstance(store, Store) or spec.chosen is None:
            return {"threshold": None, "empty": [None] * len(ranked)}
        empty = [None] * len(ranked)
        for q, (hits, _) in enumerate(ranked):
            if not hits and q < len(texts):
                empty[q] = explain_empty(store, self.search.embed_texts([texts[q]]), spec.row_filter, spec.chosen)
        return {"threshold": spec.chosen.to_json(), "empty": empty}

    def describe(self, spec: RankSpec, rows: int) -> str:
        """The search a spec makes over ``rows`` rows, in words: ``exact Eq. 14 over 800 row(s); no filter``."""
        words = self.gallery.describe(rows)
        words += "; " + (spec.row_filter.describe() if spec.row_filter is not None else "no filter")
        if spec.per_track:
            words += "; one hit per track"
        if spec.threshold is not None:
            words += f"; score >= {spec.threshold:g}"
            if spec.chosen is not None:
                words += f" ({spec.chosen.source} threshold{', stale' if spec.chosen.stale else ''})"
        return words

    def submit_search(self, texts: list[str], spec: RankSpec) -> Future:
        """Queue checked ``texts`` for the batched text tower; the future's result is, per text, its hits
        (JSON-ready dicts) ranked by ``spec`` and the gallery's row count then."""
        return self.batcher.submit(texts, then=lambda embeddings: self._rank(embeddings, spec), key=spec)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.search.embed_texts(texts)  # (Q, K, d)

    def _rank(self, embeddings: np.ndarray, spec: RankSpec) -> list[tuple[list[dict[str, Any]], int]]:
        started = time.perf_counter()
        try:
            results = self.search.rank(embeddings, self.gallery.target, k=spec.k, row_filter=spec.row_filter,
                                       per_track=spec.per_track, min_score=spec.threshold)
        except (DataError, InputFileNotFoundError) as e:  # the gallery's own files (a FAISS index gone, a segment)
            raise Unavailable(SERVER_FILES_UNREADABLE, detail=str(e)) from e
        self.metrics.observe_rank(time.perf_counter() - started)
        rows = self.rows()  # here, off the event loop: a store counts its rows in SQLite
        meter = self._strength(spec)
        return [([{**self.gallery.hit(hit), **meter(hit.score)} for hit in hits], rows) for hits in results]

    def _strength(self, spec: RankSpec) -> Any:
        """score -> ``{"strength": ...}`` for a store's hits (None until the store is calibrated), ``{}`` for a
        plain gallery's."""
        if not isinstance(self.gallery.target, Store):
            return lambda score: {}
        chosen = spec.chosen
        if chosen is None:
            calibration = self.gallery.target.calibration()
            chosen = None if calibration is None else ScoreThreshold(calibration.value, "store", calibration)
        return lambda score: {"strength": strength(chosen, score)}

    def search_like(self, row: int, text: str | None, spec: RankSpec) -> tuple[list[dict[str, Any]], int]:
        """Find similar: the hits for ``row``'s image embedding as the query (with ``text``'s combined, when
        given: :func:`~tbps_runtime.store.like.like_query`), ranked by ``spec``, and the rows searched.

        Raises:
            Conflict: a plain gallery. NotFound: no such row.
        """
        from tbps_runtime.store.like import like_query

        self.context.record(row, "like_row")  # a store's row, or the refusal
        text_embedding = None if text is None else self.search.embed_texts([text])  # (1, K, d)
        query = like_query(self.gallery.target, row, text_embedding)  # (1, K, d)
        return self._rank(query, spec)[0]

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
            raise DataError(f"{what}: {count_refusal(self.limits.max_images, 'images', len(images))}")
        return [decode_image(text, f"{what}[{i}]", self.limits) for i, text in enumerate(images)]

    # -- crops and explanations --------------------------------------------------------------------

    def crop_jpeg(self, row: int) -> bytes:
        """The JPEG of ``row``'s crop: a store's crop file, or a plain gallery's indexed image re-encoded.

        Raises:
            NotFound: no such row, or its image is gone.
            Unavailable: the gallery is gone.
        """
        self.check_gallery()
        return self.gallery.crop_jpeg(row)

    def explain(self, query: str, rows: Sequence[int]) -> dict[str, Any]:
        """Token weights of ``query`` and a heat-map picture (base64 PNG) of each row's crop.

        Raises:
            Conflict: the bundle has no explain graphs.
            NotFound: a row that does not exist.
        """
        if not self.explain_available:
            raise Conflict(NO_EXPLAIN_GRAPHS)
        if not 1 <= len(rows) <= self.limits.max_explain_rows:
            raise ConfigError(f"rows: {count_refusal(self.limits.max_explain_rows, 'rows', len(rows))}")
        self.check_texts([query], "query")
        self.check_gallery()
        paths = [self.gallery.image_file(row) for row in rows]
        pictures = []
        try:
            explanation = self.search.explain(query, [str(p) for p in paths])
            for path, heatmap in zip(paths, explanation.heatmaps):
                buffer = io.BytesIO()
                crop_image(path, CROP_SIZE, heatmap).save(buffer, format="PNG")
                pictures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        except (DataError, InputFileNotFoundError) as e:  # a row's image, gone or damaged since it was indexed
            raise NotFound("the image of a row cannot be read any more", detail=str(e)) from None
        weights = np.round(explanation.token_weights.astype(np.float64), 6).tolist()  # (D + P, T)
        return {"tokens": [printable(t) for t in explanation.tokens], "token_weights": weights, "heatmaps": pictures}

    # -- a store's rows ----------------------------------------------------------------------------

    def require_store(self, what: str) -> None:
        """Raises Conflict unless the gallery is a store (rows can be added and removed); Unavailable when it
        is gone."""
        self.gallery.require_store(what)
        self.check_gallery()

    def ingest(self, crops: Sequence[IngestCrop]) -> list[int]:
        """Embed ``crops`` and append them to the store, their JPEGs saved in it. Returns the new row ids.

        Raises:
            Conflict: a plain gallery, or another process is writing the store.
        """
        self.require_store("ingesting")
        if not 1 <= len(crops) <= self.limits.max_images:
            raise DataError(f"crops: {count_refusal(self.limits.max_images, 'crops', len(crops))}")
        embeddings = self.embed_pixels([crop.pixels for crop in crops])  # (n, K, d), before taking the lock
        return self.gallery.append(embeddings, crops)

    def delete(self, row_filter: RowFilter | None, older_than: str | None, dry_run: bool,
               everything: bool) -> dict[str, Any]:
        """Remove rows (with their embeddings and crops) that pass ``row_filter`` and are older than
        ``older_than`` (``30d``, ``12h``); what was (or, ``dry_run``, would be) removed.

        Raises:
            Conflict: a plain gallery, or another process is writing the store.
            ConfigError: no condition; every row, without ``everything`` (its code and facts say which:
                :meth:`Store.delete <tbps_runtime.store.base.Store.delete>`); an age that is not one.
        """
        self.require_store("deleting rows")
        age = None if older_than is None else parse_age(older_than)
        return self.gallery.delete(row_filter, age, dry_run, everything)

    def info(self) -> dict[str, Any]:
        """The store's rows, tracks, cameras and size; no server paths."""
        self.gallery.require_store("gallery info")
        self.check_gallery()
        return self.gallery.info()


def serving_threads(threads: int | None) -> int:
    """The towers' intra-op threads in a server: ``threads`` (``--threads``) if given, or ``OMP_NUM_THREADS``;
    else the thread policy's count less one core, left to the event loop that parses and answers requests
    (at least 1). Measured with ``benchmarks.serve`` on 2 cores: 32 clients get 380 requests/s with 1 tower
    thread, 230 with 2 (the tower's parallel sections wait for the thread that lost its core)."""
    choice = choose_threads(threads)
    return max(1, choice.threads - 1) if choice.adaptive else choice.threads


def parse_filters(cameras: Sequence[str] = (), sources: Sequence[str] = (), tracks: Sequence[int] = (),
                  since: str | None = None, until: str | None = None) -> RowFilter:
    """A request's filters as a :class:`RowFilter` (times: ISO-8601, no zone means UTC).

    Raises:
        ConfigError: a time that is not ISO-8601 (naming ``filters.since``/``filters.until``), a bad name or track.
    """
    return RowFilter(tuple(cameras), tuple(sources), tuple(tracks),
                     None if since is None else parse_time(since, "filters.since"),
                     None if until is None else parse_time(until, "filters.until"))


__all__ = ["IngestCrop", "RankSpec", "Service", "parse_filters", "serving_threads"]
