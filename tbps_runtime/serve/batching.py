"""Dynamic batching: text queries of concurrent requests share one text-tower call.

A request hands its captions to :meth:`QueryBatcher.submit` and gets a
:class:`concurrent.futures.Future` back (``await asyncio.wrap_future(f)`` in a
coroutine). One worker thread takes the first waiting request, then collects
more for up to ``window_s`` after it arrived, or until ``max_batch`` queries,
embeds all their captions in ONE call, and hands each request its own rows.
While a call runs, requests queue up and form the next batch at once: under load
the batch grows by itself. The window is only waited for when other requests are
still open (submitted, not yet answered): a lone client never waits for company
that is not coming.

A request may also pass ``then``, a function of its (q, K, d) embeddings that
returns one result per query (the ranking), and a hashable ``key``: requests of
one batch with equal keys (the same k, filters, threshold) are ranked in one
``then`` call over their stacked embeddings, which reads the gallery once for
all of them. A failure is retried request by request, so it reaches only the
request that caused it. A request is never split across batches; one larger
than ``max_batch`` goes alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]  # captions -> (Q, K, d)
Then = Callable[[np.ndarray], Sequence[Any]]  # (q, K, d) -> one result per query


@dataclass
class _Job:
    texts: list[str]
    then: Then | None
    key: Hashable | None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class QueryBatcher:
    """Batches the text-tower calls of concurrent requests (see the module's description). Thread-safe.

    Args:
        embed: captions -> (Q, K, d) float32 embeddings, one row per caption.
        window_s: how long the first request of a batch waits for company.
        max_batch: queries per call at most.
        on_batch: called after each call with (queries, seconds): metrics.
    """

    def __init__(self, embed: Embed, *, window_s: float = 0.005, max_batch: int = 32,
                 on_batch: Callable[[int, float], None] | None = None):
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"window_s must be >= 0 and max_batch >= 1, got {window_s} and {max_batch}")
        self._embed, self._window, self._max_batch, self._on_batch = embed, window_s, max_batch, on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # the running worker's
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._open = 0  # submitted requests whose futures are not done yet

    def submit(self, texts: Sequence[str], then: Then | None = None, key: Hashable | None = None) -> Future:
        """Queue ``texts``; the future's result is their (q, K, d) embeddings, or ``then`` of them."""
        job = _Job(list(texts), then, key)
        with self._lock:
            self._open += 1
        job.future.add_done_callback(self._closed)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name="tbps-query-batcher",
                                                daemon=True)
                self._thread.start()
            self._queue.put(job)
        return job.future

    def _closed(self, _: Future) -> None:
        with self._lock:
            self._open -= 1

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the queued requests and stop the worker thread (a later submit starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # -- the worker thread -------------------------------------------------------------------------

    def _run(self, jobs: queue.SimpleQueue) -> None:
        held: _Job | None = None  # a job that did not fit into the last batch: the first of the next
        while True:
            first = held if held is not None else jobs.get()
            if first is None:
                return
            batch, held, stopping = self._collect(first, jobs)
            self._process(batch)
            if stopping:
                return

    def _collect(self, first: _Job, jobs: queue.SimpleQueue) -> tuple[list[_Job], _Job | None, bool]:
        """``first`` and the jobs that join it within the window, up to ``max_batch`` queries: (the batch,
        a job that did not fit, whether :meth:`close` was called)."""
        batch, count = [first], len(first.texts)
        deadline = first.arrived + self._window
        while count < self._max_batch:
            with self._lock:
                alone = self._open <= len(batch)  # nobody else is waiting for an answer: do not wait either
            wait = 0.0 if alone else deadline - time.monotonic()
            try:
                job = jobs.get(timeout=wait) if wait > 0 else jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if count + len(job.texts) > self._max_batch:
                return batch, job, False
            batch.append(job)
            count += len(job.texts)
        return batch, None, False

    def _process(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop abandoned requests
        if not batch:
            return
        texts = [text for job in batch for text in job.texts]
        started = time.perf_counter()
        try:
            embeddings = self._embed(texts)  # (Q, K, d)
        except Exception as error:
            self._fail(batch, error, self._retry_embed)
            return
        if self._on_batch is not None:
            self._on_batch(len(texts), time.perf_counter() - started)
        bounds = np.cumsum([0] + [len(job.texts) for job in batch])
        groups: dict[Hashable, list[tuple[_Job, np.ndarray]]] = {}
        for i, job in enumerate(batch):
            rows = embeddings[bounds[i]:bounds[i + 1]]
            if job.then is None:
                job.future.set_result(rows)
            elif job.key is None:
                self._finish([(job, rows)])
            else:
                groups.setdefault(job.key, []).append((job, rows))
        for group in groups.values():
            self._finish(group)

    def _finish(self, group: list[tuple[_Job, np.ndarray]]) -> None:
        """One ``then`` call for a group of jobs with the same key; its results split back per job."""
        stacked = np.concatenate([rows for _, rows in group]) if len(group) > 1 else group[0][1]
        try:
            results = list(group[0][0].then(stacked))
            if len(results) != len(stacked):
                raise RuntimeError(f"then() returned {len(results)} results for {len(stacked)} queries")
        except Exception as error:
            if len(group) > 1:  # find the request that fails: each alone
                for member in group:
                    self._finish([member])
            else:
                group[0][0].future.set_exception(error)
            return
        start = 0
        for job, rows in group:
            job.future.set_result(results[start:start + len(rows)])
            start += len(rows)

    def _fail(self, batch: list[_Job], error: Exception, retry: Callable[[_Job], None]) -> None:
        if len(batch) == 1:
            batch[0].future.set_exception(error)
            return
        for job in batch:
            retry(job)

    def _retry_embed(self, job: _Job) -> None:
        """A failed batch again, one job at a time (already running: no second cancellation check)."""
        try:
            embeddings = self._embed(job.texts)
        except Exception as error:
            job.future.set_exception(error)
            return
        if job.then is None:
            job.future.set_result(embeddings)
        else:
            self._finish([(job, embeddings)])


__all__ = ["QueryBatcher"]
