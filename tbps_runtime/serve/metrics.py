"""The service's Prometheus metrics, in a registry of its own (one per application, so two applications in one
process, as in tests, never share counts).

=========================== ======================================================================
``tbps_requests_total``     requests, by ``endpoint`` (the route's template, ``other`` for no route) and ``status``
``tbps_request_seconds``    request latency by ``endpoint`` (histogram)
``tbps_tower_seconds``      one tower call by ``tower`` (``text``, ``image``; histogram)
``tbps_rank_seconds``       one ranking call: Eq. 14 over the gallery for a batch of queries (histogram)
``tbps_batch_queries``      queries per text-tower call: what dynamic batching achieved (histogram)
``tbps_gallery_rows``       rows in the gallery, read at each scrape (gauge)
``tbps_camera_up``          per followed ``camera`` (``tbps ingest --follow``): 1 while live, else 0 (gauge)
``tbps_camera_last_frame``  per ``camera``: when its last frame was read, UTC seconds (gauge)
``tbps_camera_fps``         per ``camera``: sampled frames read per second (gauge)
``tbps_camera_reconnects``  per ``camera``: reconnections since its follow loop started (gauge)
=========================== ======================================================================

The camera metrics are read from the store at each scrape (what the follow loop last recorded).

With ``--workers N`` each worker process counts its own requests: a scrape sees the worker that answered it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The metrics of one application and its Prometheus text rendering."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tbps_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=self.registry)
        self.request_seconds = Histogram("tbps_request_seconds", "HTTP request latency by endpoint, seconds.",
                                         ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tower_seconds = Histogram("tbps_tower_seconds", "One tower call, seconds.", ["tower"],
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.rank_seconds = Histogram("tbps_rank_seconds", "One ranking call (a batch of queries), seconds.",
                                      buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_queries = Histogram("tbps_batch_queries", "Queries per text-tower call.",
                                       buckets=_BATCH_BUCKETS, registry=self.registry)
        self.gallery_rows = Gauge("tbps_gallery_rows", "Rows in the gallery.", registry=self.registry)

    def count_rows(self, rows: Callable[[], int]) -> None:
        """Read the gallery's size from ``rows()`` at each scrape (a store grows while it is served)."""

        def read() -> float:
            try:
                return float(rows())
            except Exception:  # a scrape must not fail because the catalog is busy: report no value
                logger.debug("could not count the gallery's rows", exc_info=True)
                return float("nan")

        self.gallery_rows.set_function(read)

    def watch_cameras(self, followed: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Report the followed cameras' states (``followed()``: camera -> ``status``, ``last_frame`` (ISO),
        ``fps``, ``reconnects``) at each scrape."""
        self.registry.register(_CameraCollector(followed))

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.request_seconds.labels(endpoint=endpoint).observe(seconds)

    def observe_text_batch(self, queries: int, seconds: float) -> None:
        self.batch_queries.observe(queries)
        self.tower_seconds.labels(tower="text").observe(seconds)

    def observe_image_batch(self, seconds: float) -> None:
        self.tower_seconds.labels(tower="image").observe(seconds)

    def observe_rank(self, seconds: float) -> None:
        self.rank_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _CameraCollector:
    """The ``tbps_camera_*`` gauges, read from the store at each scrape."""

    def __init__(self, followed: Callable[[], dict[str, dict[str, Any]]]):
        self.followed = followed

    def describe(self) -> list:
        return []  # read at each scrape: nothing to declare up front

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            states = self.followed()
        except Exception:  # a scrape must not fail because the store is busy: report no cameras
            logger.debug("could not read the followed cameras' states", exc_info=True)
            states = {}
        up = GaugeMetricFamily("tbps_camera_up", "1 while the camera is live, else 0.", labels=["camera"])
        last = GaugeMetricFamily("tbps_camera_last_frame", "When its last frame was read, UTC seconds.",
                                 labels=["camera"])
        fps = GaugeMetricFamily("tbps_camera_fps", "Sampled frames read per second.", labels=["camera"])
        reconnects = GaugeMetricFamily("tbps_camera_reconnects", "Reconnections since following began.",
                                       labels=["camera"])
        for camera, state in states.items():
            up.add_metric([camera], 1.0 if state.get("status") == "live" else 0.0)
            if state.get("last_frame"):
                last.add_metric([camera], datetime.fromisoformat(state["last_frame"]).timestamp())
            fps.add_metric([camera], float(state.get("fps") or 0.0) if state.get("status") == "live" else 0.0)
            reconnects.add_metric([camera], float(state.get("reconnects") or 0))
        yield from (up, last, fps, reconnects)


__all__ = ["ServiceMetrics"]
