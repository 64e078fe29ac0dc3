"""The store on Milvus: a :class:`~tbps_runtime.store.base.Store` for galleries that outgrow one machine
(``pip install 'tbps[milvus]'``; milvus-lite serves a local ``.db`` for tests).

A store is two collections and a local directory::

    <collection>            one row per crop: id (INT64 primary key, our row id), vector (FLOAT_VECTOR of
                            K*d: the flattened per-slot normalised row, FLAT index, metric IP, so the
                            inner product is Eq. 14), the CropRecord's fields as nullable scalars
                            (source, camera, time, offset_s, frame, x0..y1, score, track, crop,
                            identity), added (wall clock at append), batch (the append's first row id)
                            and crops (the append's crop folder)
    <collection>__meta      key -> value text: format, version, fingerprint, num_slots, embed_dim,
                            bundle, next_row, max_track (a hint), batch:<first row> (one per append:
                            its crop folder, rows, complete), summary:<first row>:<part> (the append's
                            rows, tracks and time span per camera, and its sources: what info() and
                            cameras() read instead of the rows, :mod:`tbps_runtime.store.milvus_summary`)
                            and progress:<source key> (ingest state)
    directory/crops/<hex>/  the crops of each append (``tbps ingest`` writes them); directory holds
                            nothing else but the writer's lock file

Search is exact: the filter (a :class:`~tbps_runtime.store.rows.RowFilter`) becomes a Milvus
boolean expression (:mod:`tbps_runtime.store.milvus_expr`) applied before the top k. Milvus may order
equal scores arbitrarily, so a few more than k rows are fetched and re-sorted (score descending, then the
lower row id, as LocalStore ranks); when the k-th score equals the last fetched one, more are fetched.
``per_track`` fetches ranked rows until the k best tracks are settled (milvus-lite's ``group_by_field``
over-fetches a fixed factor and puts all rows without a track in one group, so it is not exact). Past
Milvus's topk limit (16384) both fall back to scoring every selected row in numpy, page by page.

Milvus has no transactions. An append first registers its batch as incomplete (and reserves its row
ids), then inserts the rows, then marks the batch complete together with its summary and the ingest
progress in one upsert; the next writer (:meth:`MilvusStore.writing`) deletes the rows of incomplete
batches and any crop folder no batch names. Readers may see part of an append in progress (searches;
``info``, ``cameras`` and ``iter_rows`` see complete appends only). A deletion rewrites the summaries of
the appends it leaves with fewer rows. Row ids are never reused. Milvus's failures (unreachable, timed
out, refused) are :class:`~tbps_runtime.errors.StoreError`\\ s.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError, StoreError
from tbps_runtime.outputs import output_lock
from tbps_runtime.ranking import normalize_slots
from tbps_runtime.store.base import (CROPS, Pick, StoreBase, StoreSummary, check_meta, new_meta, remove_tree,
                                     tree_bytes)
from tbps_runtime.store.milvus_expr import (META_SUFFIX, check_collection_name, filter_expression, float_literal,
                                            store_uri, string_literal)
from tbps_runtime.store.milvus_summary import combine, parse_summary, summarise, summary_records
from tbps_runtime.store.rows import CropRecord, Removal, RowFilter

logger = logging.getLogger(__name__)

WRITER = ".milvus-writer"  # the lock file's name in the store directory
TOPK_LIMIT = 16384  # Milvus's largest topk and query page
_TEXT_BYTES = 4096  # VARCHAR cap of names: RowFilter's 1024 characters of UTF-8
_META_BYTES = 65535  # Milvus's largest VARCHAR
_PAGE = 4096  # rows per query page
_TRACK_FETCH = 64  # ranked rows a per-track search fetches first, at least (more when they hold < k tracks)
_ID_BATCH = 1000  # ids per `id in [...]` expression (get, delete)
_INSERT_BYTES = 16 << 20  # per insert request, well under gRPC's message limit
_TIMEOUT_S = 60.0
_TEXT_FIELDS = ("source", "camera", "crop", "identity")
_DOUBLE_FIELDS = ("time", "offset_s", "x0", "y0", "x1", "y1", "score")
_INT_FIELDS = ("frame", "track")
_RECORD_FIELDS = ("source", "camera", "time", "offset_s", "frame", "x0", "y0", "x1", "y1", "score", "track",
                  "crop", "identity")
_SUMMARY_FIELDS = ["camera", "source", "time", "track"]
_FIXED_META = ("format", "version", "fingerprint", "num_slots", "embed_dim", "bundle", "next_row", "created",
               "max_track")
Settled = Callable[[list[tuple[float, int, Any]], int], "list[tuple] | None"]


class MilvusStore(StoreBase):
    """A store in a Milvus collection (see the module's description), implementing
    :class:`~tbps_runtime.store.base.Store`.

    One writer at a time: :meth:`writing` takes a file lock in ``directory``, which serialises writers on
    one machine only; writers on several hosts must coordinate outside tbps. Readers need no lock.
    """

    _lock_file = WRITER

    def __init__(self, client: Any, uri: str, collection: str, directory: Path, meta: Mapping[str, str]):
        super().__init__(directory, store_uri(uri, collection), meta)
        self._client = client
        self.uri, self.collection = uri, collection
        self._meta_name = collection + META_SUFFIX

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, uri: str, collection: str, directory: str | Path, *, fingerprint: str, num_slots: int,
               embed_dim: int, bundle: str | Path | None = None) -> MilvusStore:
        """Open the store in ``collection``, creating it (and ``directory``) when absent.

        Raises:
            OutputError: the collection exists and is not a tbps store, or ``directory`` is a file.
            BundleError: an existing store was made by another bundle.
            StoreError: Milvus cannot be reached or fails.
            ConfigError: pymilvus is not installed.
        """
        check_collection_name(collection)
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"{directory} is a file, not a directory for the store's crops: pick another one")
        directory.mkdir(parents=True, exist_ok=True)
        client = _connect(uri)
        location = store_uri(uri, collection)
        try:
            with output_lock(directory / WRITER, "creating"), _milvus_errors(location, "creating the store"):
                _create_collections(client, uri, collection, {**new_meta(fingerprint, num_slots, embed_dim, bundle),
                                                              "max_track": "-1"})
            store = cls._open(client, uri, collection, directory)
            store.check_bundle(fingerprint, bundle)
        except BaseException:
            client.close()
            raise
        return store

    @classmethod
    def open(cls, uri: str, collection: str, directory: str | Path) -> MilvusStore:
        """Open an existing store; ``directory`` holds its crops (it need not exist to search).

        Raises:
            InputFileNotFoundError: no store in that collection.
            BundleError: the collection is not a tbps store's, or from a newer tbps.
            StoreError: Milvus cannot be reached or fails.
            ConfigError: pymilvus is not installed.
        """
        check_collection_name(collection)
        client = _connect(uri)
        try:
            return cls._open(client, uri, collection, Path(directory))
        except BaseException:
            client.close()
            raise

    @classmethod
    def _open(cls, client: Any, uri: str, collection: str, directory: Path) -> MilvusStore:
        location, meta_name = store_uri(uri, collection), collection + META_SUFFIX
        with _milvus_errors(location, "opening the store"):
            has_rows, has_meta = client.has_collection(collection), client.has_collection(meta_name)
            if not has_meta:
                if has_rows:
                    raise BundleError(f"{location} is not a tbps store (no {meta_name} collection)")
                raise InputFileNotFoundError(f"no tbps store at {location}: make one with tbps ingest")
            client.load_collection(meta_name)
            meta = _read_meta(client, meta_name, _FIXED_META)
            check_meta(location, meta)
            if not has_rows:
                raise BundleError(f"{location} is incomplete (its {collection} collection is missing): create "
                                  "the store again")
            _check_row_schema(location, client.describe_collection(collection),
                              int(meta["num_slots"]) * int(meta["embed_dim"]))
            client.load_collection(collection)
        return cls(client, uri, collection, directory, meta)

    def close(self) -> None:
        """Release the connection (the store's data stays in Milvus)."""
        self._client.close()

    @property
    def client(self) -> Any:
        """The ``pymilvus.MilvusClient`` (for tools that manage the collection itself, e.g. its index)."""
        return self._client

    def __len__(self) -> int:
        return self._count("")

    # -- writing ---------------------------------------------------------------------------------------

    def _append(self, embeddings: np.ndarray, records: list[CropRecord], crops: str | None,
                progress: dict[str, str]) -> np.ndarray:
        """Register the batch (incomplete), insert its rows, then mark it complete with its summary and
        ``progress`` in one upsert (see the module's description)."""
        progress_meta = _progress_meta(progress)
        _check_text("crops", crops)
        now = time.time()
        entities = [_entity(record) for record in records]  # checks every value before ids are taken
        with self._errors("appending rows"):
            meta = _read_meta(self._client, self._meta_name, ("next_row", "max_track"))
            first = int(meta["next_row"])
            tracks = [r.track for r in records if r.track is not None]
            batch = {"crops": crops, "rows": len(records), "created": now, "complete": False}
            self._put_meta({"next_row": str(first + len(records)), f"batch:{first}": json.dumps(batch),
                            "max_track": str(max([int(meta.get("max_track") or -1), *tracks]))})
            try:
                self._insert(first, embeddings, entities, now, crops)
                batch["complete"] = True
                summary = summary_records(first, summarise(entities), _META_BYTES)
                self._put_meta({f"batch:{first}": json.dumps(batch), **summary, **progress_meta})
            except BaseException:
                self._drop_batch(first, None)  # best effort; the next writer's sweep finishes it otherwise
                raise
        return np.arange(first, first + len(records), dtype=np.int64)

    def _insert(self, first: int, embeddings: np.ndarray, entities: list[dict[str, Any]], now: float,
                crops: str | None) -> None:
        flat = embeddings.reshape(len(embeddings), -1)  # (n, K*d)
        step = max(1, _INSERT_BYTES // flat[0].nbytes)
        for start in range(0, len(entities), step):
            self._client.insert(self.collection, [
                {**entity, "id": first + i, "vector": flat[i], "added": now, "batch": first, "crops": crops}
                for i, entity in enumerate(entities[start:start + step], start)])

    def save_progress(self, progress: Mapping[str, str]) -> None:
        """Save ingest state (source key -> text) without rows. Call inside :meth:`writing`."""
        progress_meta = _progress_meta(progress)
        with self._errors("saving ingest progress"):
            self._put_meta(progress_meta)

    def _delete(self, row_filter: RowFilter, cutoff: float | None, everything: bool, dry_run: bool) -> Removal:
        terms = [t for t in [filter_expression(row_filter)] if t]
        if cutoff is not None:
            literal = float_literal(cutoff)
            terms.append(f"((time is not null and time < {literal}) or (time is null and added < {literal}))")
        expr = " and ".join(f"({t})" for t in terms)
        removal = Removal()
        with self._errors("deleting rows"):
            doomed = [row for page in self._pages(expr, ["camera", "crop", "batch"]) for row in page]
            self._refuse_everything(len(doomed), self._count(""), everything or dry_run)
            removal.rows = len(doomed)
            removal.cameras = dict(Counter(row["camera"] for row in doomed))
            if dry_run or not doomed:
                return removal
            ids = [int(row["id"]) for row in doomed]
            for start in range(0, len(ids), _ID_BATCH):
                self._client.delete(self.collection, ids=ids[start:start + _ID_BATCH])
            emptied = self._update_batches({int(row["batch"]) for row in doomed})
            if row_filter.sources:  # deleting a source by name means starting it over: forget its progress
                _delete_meta(self._client, self._meta_name, [f"progress:{s}" for s in row_filter.sources])
        self._remove_crops(removal, (row.get("crop") for row in doomed), emptied.values())
        return removal

    def _update_batches(self, firsts: set[int]) -> dict[int, str | None]:
        """After a deletion from the appends ``firsts``: forget those left without rows, summarise the rest
        again. Returns the emptied ones: first row id -> crop folder."""
        batches = self._batches()
        emptied = {}
        for first in sorted(firsts):
            if self._count(f"batch == {first}"):
                self._put_summary(first, self._summarise_batch(first))
            else:
                emptied[first] = batches.get(first, {}).get("crops")
        if emptied:
            _delete_meta(self._client, self._meta_name, [f"batch:{first}" for first in emptied])
            self._delete_summaries(emptied)
        return emptied

    def _drop_batch(self, first: int, crops: str | None) -> None:
        """Delete an incomplete append's rows, crop folder and registration."""
        try:
            self._client.delete(self.collection, filter=f"batch == {first}")
            if crops:
                remove_tree(self._inside(crops))
            _delete_meta(self._client, self._meta_name, [f"batch:{first}"])
            self._delete_summaries([first])
        except Exception as e:  # the next writer's sweep retries
            logger.warning("could not remove the incomplete append at row %d of %s (%s)", first, self.location, e)

    def _sweep(self) -> None:
        """Remove incomplete appends (a crashed writer's) and crop folders no append names."""
        with self._errors("checking the store"):
            batches = self._batches()
        for first, batch in batches.items():
            if not batch.get("complete"):
                logger.info("removing the rows from %d of %s: left by an interrupted append", first, self.location)
                self._drop_batch(first, batch.get("crops"))
        self._sweep_folder(CROPS, {b.get("crops") for b in batches.values() if b.get("complete")})

    # -- reading ---------------------------------------------------------------------------------------

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key``, or None."""
        with self._errors("reading ingest progress"):
            return _read_meta(self._client, self._meta_name, (f"progress:{key}",)).get(f"progress:{key}")

    def _meta_value(self, key: str) -> str | None:
        with self._errors("reading the store's meta"):
            return _read_meta(self._client, self._meta_name, (key,)).get(key)

    def _set_meta_value(self, key: str, value: str) -> None:
        with self._errors("writing the store's meta"):
            self._put_meta({key: value})

    def all_progress(self) -> dict[str, str]:
        """Every source's saved ingest state (key -> text)."""
        with self._errors("reading ingest progress"):
            return {row["key"].split(":", 1)[1]: row["value"]
                    for page in _query_all(self._client, self._meta_name, 'key like "progress:%"', ["key", "value"])
                    for row in page}

    def max_track(self) -> int:
        """The largest track id in the store (-1 when none): new tracks are numbered after it."""
        with self._errors("reading tracks"):
            hint = int(_read_meta(self._client, self._meta_name, ("max_track",)).get("max_track") or -1)
            if hint >= 0 and self._count(f"track == {hint}"):  # the hint only grows: usually still there
                return hint
            tracks = [row["track"] for page in self._pages("track is not null", ["track"]) for row in page]
        return max(tracks, default=-1)

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> :class:`~tbps_runtime.store.rows.CropRecord` for the rows that exist."""
        return {int(row["id"]): _record(row) for row in self._get(rows, list(_RECORD_FIELDS))}

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows``, in the order given."""
        found = {int(row["id"]): row["vector"] for row in self._get(rows, ["vector"])}
        self._check_found(rows, found)
        out = np.empty((len(rows), *self.slot_shape), np.float32)
        for i, row in enumerate(rows):
            out[i] = np.asarray(found[int(row)], dtype=np.float32).reshape(self.slot_shape)
        return out

    def iter_rows(self, batch: int = 1024) -> Iterator[tuple[np.ndarray, list[CropRecord]]]:
        """Every row of the complete appends in id order, ``batch`` at a time: ((n,) int64 ids, records).
        Reads append by append (their id ranges), so deleted stretches cost nothing."""
        ids: list[int] = []
        records: list[CropRecord] = []
        for first, size in sorted((f, b["rows"]) for f, b in self._complete_batches().items()):
            for low in range(first, first + size, _PAGE):
                expr = f"id >= {low} and id < {min(low + _PAGE, first + size)}"
                with self._errors("reading rows"):
                    page = self._client.query(self.collection, filter=expr, output_fields=["id", *_RECORD_FIELDS],
                                              limit=_PAGE)
                for row in sorted(page, key=lambda r: r["id"]):
                    ids.append(int(row["id"]))
                    records.append(_record(row))
                    if len(ids) == batch:
                        yield np.array(ids, np.int64), records
                        ids, records = [], []
        if ids:
            yield np.array(ids, np.int64), records

    def cameras(self) -> list[str]:
        """The cameras that have rows, sorted (from the appends' summaries, not the rows)."""
        return sorted({camera for summary in self._batch_summaries() for camera in summary["cameras"]})

    def sources(self) -> list[str]:
        """The sources that have rows, sorted (from the appends' summaries, not the rows)."""
        return sorted({source for summary in self._batch_summaries() for source in summary["sources"]})

    def _summary(self) -> StoreSummary:
        """From the appends' summaries (one small record per append), never every row."""
        summaries = self._batch_summaries()
        summary = combine(summaries)
        size = tree_bytes(self.directory)
        lite = Path(self.uri)
        if not self.uri.startswith(("http://", "https://")) and self.directory.resolve() not in lite.resolve().parents:
            size += tree_bytes(lite)  # milvus-lite's data directory, when it is not inside the store's
        summary.bytes, summary.segments = size, len(summaries)
        return summary

    # -- ranking ---------------------------------------------------------------------------------------

    def _rank(self, queries: np.ndarray, k: int, row_filter: RowFilter, per_track: bool) -> list[list[Pick]]:
        flat = normalize_slots(queries).reshape(len(queries), -1)  # (Q, K*d)
        expr = filter_expression(row_filter)
        with self._errors("searching"):
            return self._top_tracks(flat, expr, k) if per_track else self._top_rows(flat, expr, k)

    def _top_rows(self, flat: np.ndarray, expr: str, k: int) -> list[list[Pick]]:
        """Per query the k best (score, row, None), exact with LocalStore's order: fetch k plus a margin,
        re-sort, and fetch more while the k-th score ties the last one fetched."""
        def settled(hits: list[tuple[float, int, Any]], limit: int) -> list[Pick] | None:
            if len(hits) < limit or hits[k - 1][0] > hits[-1][0]:
                return [(score, row, None) for score, row, _ in hits[:k]]
            return None
        return self._ranked(flat, expr, k + max(8, k // 4), settled, per_track=False, k=k)

    def _top_tracks(self, flat: np.ndarray, expr: str, k: int) -> list[list[Pick]]:
        """Per query the k best tracks as (score, best row, rows of the track passing the filter).

        Ranked rows are fetched until the k-th distinct track's best score beats the last row fetched
        (no unseen track can then outrank it) or every selected row came back."""
        def settled(hits: list[tuple[float, int, Any]], limit: int) -> list[tuple] | None:
            best = _best_per_track(hits)[:k]
            if len(hits) < limit or (len(best) == k and best[-1][0] > hits[-1][0]):
                return best
            return None
        picks = self._ranked(flat, expr, max(4 * k, _TRACK_FETCH), settled, per_track=True, k=k)
        return self._with_track_rows(picks, expr)

    def _ranked(self, flat: np.ndarray, expr: str, limit: int, settled: Settled, *, per_track: bool,
                k: int) -> list[list[tuple]]:
        """Run Milvus searches with growing limits until ``settled(sorted hits, limit)`` accepts each
        query's candidates; queries still open at TOPK_LIMIT are scored exactly in numpy."""
        results: list[Any] = [None] * len(flat)
        pending = list(range(len(flat)))
        fields = ["track"] if per_track else ["id"]
        while pending and limit <= TOPK_LIMIT:
            found = self._client.search(self.collection, data=[flat[q] for q in pending], limit=limit, filter=expr,
                                        output_fields=fields, anns_field="vector",
                                        search_params={"metric_type": "IP"})
            still = []
            for q, hits in zip(pending, found):
                ordered = sorted(((float(h["distance"]), int(h["id"]), (h.get("entity") or {}).get("track"))
                                  for h in hits), key=lambda h: (-h[0], h[1]))
                results[q] = settled(ordered, limit)
                if results[q] is None:
                    still.append(q)
            pending = still
            limit = TOPK_LIMIT + 1 if limit == TOPK_LIMIT else min(limit * 4, TOPK_LIMIT)
        if pending:
            logger.info("%d queries need more than %d ranked rows: scoring the selected rows in numpy",
                        len(pending), TOPK_LIMIT)
            for q, hits in zip(pending, self._scan(flat[pending], expr, k, per_track)):
                results[q] = hits
        return results

    def _scan(self, flat: np.ndarray, expr: str, k: int, per_track: bool) -> list[list[tuple]]:
        """Exact ranking of every selected row in numpy, read page by page: (Q, K*d) queries -> per query
        the k best (score, row, None), or ``per_track`` the k best tracks' (score, best row, track), as
        LocalStore ranks."""
        ids, tracks, blocks = [], [], []
        for page in self._pages(expr, ["track", "vector"]):
            ids.extend(int(row["id"]) for row in page)
            tracks.extend(row["track"] for row in page)
            vectors = np.asarray([row["vector"] for row in page], dtype=np.float32).reshape(len(page), -1)
            blocks.append(flat @ vectors.T)  # (Q, page) Eq. 14: keep scores, not the page's vectors
        if not ids:
            return [[] for _ in flat]
        scores = np.concatenate(blocks, axis=1)  # (Q, n)
        rows = np.asarray(ids, np.int64)
        out = []
        for query_scores in scores:
            order = np.lexsort((rows, -query_scores))
            hits = [(float(query_scores[i]), int(rows[i]), tracks[i]) for i in order]
            out.append(_best_per_track(hits)[:k] if per_track else [(s, r, None) for s, r, _ in hits[:k]])
        return out

    def _with_track_rows(self, picks: list[list[tuple]], expr: str) -> list[list[Pick]]:
        """Replace each pick's track by the number of selected rows of that track (1 without a track)."""
        wanted = sorted({t for hits in picks for _, _, t in hits if t is not None})
        counts: Counter = Counter()
        for start in range(0, len(wanted), _ID_BATCH):
            chunk = wanted[start:start + _ID_BATCH]
            term = f"track in [{', '.join(map(str, chunk))}]"
            for page in self._pages(" and ".join(f"({t})" for t in (expr, term) if t), ["track"]):
                counts.update(row["track"] for row in page)
        return [[(s, r, counts[t] if t is not None else 1) for s, r, t in hits] for hits in picks]

    # -- internals -------------------------------------------------------------------------------------

    def _pages(self, expr: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every row passing ``expr`` ("" for all) in pages of dicts holding ``id`` and ``fields``."""
        return _query_all(self._client, self.collection, expr or "id >= 0", ["id", *fields])

    def _get(self, rows: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        found = []
        ids = [int(r) for r in rows]
        with self._errors("reading rows"):
            for start in range(0, len(ids), _ID_BATCH):
                found.extend(self._client.get(self.collection, ids=ids[start:start + _ID_BATCH],
                                              output_fields=["id", *fields]))
        return found

    def _count(self, expr: str) -> int:
        with self._errors("counting rows"):
            result = self._client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def _put_meta(self, values: Mapping[str, str]) -> None:
        self._client.upsert(self._meta_name, [{"key": key, "value": value, "vector": [0.0, 0.0]}
                                              for key, value in values.items()])

    def _batches(self) -> dict[int, dict[str, Any]]:
        """Every registered append: first row id -> {crops, rows, created, complete}."""
        return {int(row["key"].split(":", 1)[1]): json.loads(row["value"])
                for page in _query_all(self._client, self._meta_name, 'key like "batch:%"', ["key", "value"])
                for row in page}

    def _complete_batches(self) -> dict[int, dict[str, Any]]:
        with self._errors("reading the store"):
            return {first: batch for first, batch in self._batches().items() if batch.get("complete")}

    def _batch_summaries(self) -> list[dict[str, Any]]:
        """The summary of every complete append (one written before summaries existed is made from its rows)."""
        batches = self._complete_batches()
        with self._errors("reading the store"):
            parts: dict[int, dict[int, str]] = {}
            for page in _query_all(self._client, self._meta_name, 'key like "summary:%"', ["key", "value"]):
                for row in page:
                    _, first, part = row["key"].split(":")
                    parts.setdefault(int(first), {})[int(part)] = row["value"]
            return [parse_summary(parts.get(first)) or self._summarise_batch(first) for first in sorted(batches)]

    def _summarise_batch(self, first: int) -> dict[str, Any]:
        return summarise([row for page in self._pages(f"batch == {first}", _SUMMARY_FIELDS) for row in page])

    def _put_summary(self, first: int, summary: dict[str, Any]) -> None:
        """Replace the summary of the append at ``first``: the new parts, then any older part left over."""
        parts = summary_records(first, summary, _META_BYTES)
        self._put_meta(parts)
        self._client.delete(self._meta_name, filter=f'key like "summary:{first}:%" and key not in '
                                                    f'[{", ".join(map(string_literal, parts))}]')

    def _delete_summaries(self, firsts: Iterable[int]) -> None:
        firsts = sorted(firsts)
        for start in range(0, len(firsts), 100):  # 100 terms per expression
            self._client.delete(self._meta_name, filter=" or ".join(f'key like "summary:{first}:%"'
                                                                    for first in firsts[start:start + 100]))

    def _errors(self, what: str) -> Any:
        return _milvus_errors(self.location, what)


# -- Milvus: connecting, errors, collections, meta --------------------------------------------------------

def _require_pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise ConfigError("a Milvus store needs pymilvus (and milvus-lite for local .db files), which is not "
                          "installed: pip install 'tbps[milvus]'") from e
    return pymilvus


def _connect(uri: str) -> Any:
    """A MilvusClient for ``uri`` (an http(s) address, or a milvus-lite ``.db`` path)."""
    pymilvus = _require_pymilvus()
    if not uri.startswith(("http://", "https://")):
        _quiet_unimplemented_rpcs()
    try:
        return pymilvus.MilvusClient(uri=uri, timeout=_TIMEOUT_S)
    except pymilvus.MilvusException as e:
        if uri.startswith(("http://", "https://")):
            raise StoreError(f"cannot reach Milvus at {uri} ({_message(e)})") from e
        raise BundleError(f"cannot open the milvus-lite database {uri} ({_message(e)}): check the path "
                          "(its folder must exist, and it must be a milvus-lite data directory)") from e


class _UnimplementedRpc(logging.Filter):
    """Drops gRPC's log of an RPC the in-process milvus-lite server lacks (its generated servicer raises
    ``NotImplementedError('Method not implemented!')``, grpc logs it with a traceback): pymilvus probes
    some (``AllocTimestamp``) and does without them. Any other exception in the server is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NotImplementedError) and str(error) == "Method not implemented!")


def _quiet_unimplemented_rpcs() -> None:
    """Install :class:`_UnimplementedRpc` on grpc's server logger, once (milvus-lite serves in this process)."""
    server_log = logging.getLogger("grpc._server")
    if not any(isinstance(f, _UnimplementedRpc) for f in server_log.filters):
        server_log.addFilter(_UnimplementedRpc())


@contextmanager
def _milvus_errors(location: str, what: str) -> Iterator[None]:
    """Turn pymilvus's errors into one-line StoreErrors naming the store."""
    pymilvus = _require_pymilvus()
    try:
        yield
    except pymilvus.MilvusException as e:
        raise StoreError(f"{location}: {what} failed: {_message(e)}") from e


def _message(error: Exception) -> str:
    text = str(getattr(error, "message", "") or error)
    return " ".join(text.split())[:300]


def _create_collections(client: Any, uri: str, collection: str, meta: dict[str, str]) -> None:
    """Make whichever of the two collections is missing; the meta collection first, so that a crash
    before the rows' collection exists is finished by the next create."""
    meta_name = collection + META_SUFFIX
    has_rows, has_meta = client.has_collection(collection), client.has_collection(meta_name)
    if has_rows and not has_meta:
        raise OutputError(f"Milvus collection {collection!r} at {uri} exists and is not a tbps store "
                          f"(no {meta_name}): pick another collection name")
    if not has_meta:
        _create_meta_collection(client, meta_name)
        client.upsert(meta_name, [{"key": key, "value": value, "vector": [0.0, 0.0]} for key, value in meta.items()])
    if not has_rows:
        client.load_collection(meta_name)
        meta = _read_meta(client, meta_name, _FIXED_META)
        check_meta(store_uri(uri, collection), meta)
        _create_row_collection(client, collection, int(meta["num_slots"]) * int(meta["embed_dim"]))


def _create_meta_collection(client: Any, name: str) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=_META_BYTES)
    schema.add_field("value", DataType.VARCHAR, max_length=_META_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")


def _create_row_collection(client: Any, name: str, dim: int) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    for field in _RECORD_FIELDS:
        if field in _TEXT_FIELDS:
            nullable = field in ("crop", "identity")
            schema.add_field(field, DataType.VARCHAR, max_length=_TEXT_BYTES, nullable=nullable)
        else:
            schema.add_field(field, DataType.INT64 if field in _INT_FIELDS else DataType.DOUBLE, nullable=True)
    schema.add_field("added", DataType.DOUBLE)
    schema.add_field("batch", DataType.INT64)
    schema.add_field("crops", DataType.VARCHAR, max_length=_TEXT_BYTES, nullable=True)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")  # exact: Eq. 14 over every row
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")


def _check_row_schema(location: str, description: dict[str, Any], dim: int) -> None:
    fields = {f["name"]: f for f in description.get("fields", [])}
    missing = [n for n in ("id", "vector", *_RECORD_FIELDS, "added", "batch", "crops") if n not in fields]
    if missing:
        raise BundleError(f"{location} is not a tbps store's collection (no field {missing[0]!r})")
    found = int((fields["vector"].get("params") or {}).get("dim", -1))
    if found != dim:
        raise BundleError(f"{location}'s vectors have {found} dimensions, its meta says K*d = {dim}: the store "
                          "is damaged")


def _query_all(client: Any, collection: str, expr: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``collection`` passing ``expr``, in pages: one query when they fit in one (the usual
    case), else pymilvus's query iterator (it pages by primary key; milvus-lite makes it log a warning)."""
    first = client.query(collection, filter=expr, output_fields=fields, limit=TOPK_LIMIT)
    if len(first) < TOPK_LIMIT:
        yield list(first)
        return
    iterator = client.query_iterator(collection, batch_size=_PAGE, filter=expr, output_fields=fields)
    try:
        while page := iterator.next():
            yield list(page)
    finally:
        iterator.close()


def _read_meta(client: Any, name: str, keys: Sequence[str]) -> dict[str, str]:
    # Not client.get: pymilvus pastes string keys into its expression unescaped (a source key may hold quotes).
    found = client.query(name, filter=f"key in [{', '.join(map(string_literal, keys))}]",
                         output_fields=["key", "value"])
    return {row["key"]: row["value"] for row in found}


def _delete_meta(client: Any, name: str, keys: Sequence[str]) -> None:
    client.delete(name, filter=f"key in [{', '.join(map(string_literal, keys))}]")


# -- rows and records ---------------------------------------------------------------------------------------

def _progress_meta(progress: Mapping[str, str]) -> dict[str, str]:
    for key, state in progress.items():
        if len(f"progress:{key}".encode("utf-8", "surrogatepass")) > _META_BYTES:
            raise ConfigError(f"ingest progress key {key[:80]!r}... is longer than {_META_BYTES - 9} bytes")
        if len(state.encode("utf-8", "surrogatepass")) > _META_BYTES:
            raise ConfigError(f"ingest progress of {key[:80]!r} is longer than {_META_BYTES} bytes")
    return {f"progress:{key}": state for key, state in progress.items()}


def _check_text(field: str, value: Any) -> None:
    if value is None:
        return
    try:
        size = len(value.encode("utf-8"))
    except (AttributeError, UnicodeEncodeError):
        raise ConfigError(f"{field} {value!r} is not UTF-8 text: a Milvus store keeps text fields as UTF-8") from None
    if size > _TEXT_BYTES:
        raise ConfigError(f"{field} {value[:60]!r}... is {size} bytes of UTF-8; a Milvus store keeps up to "
                          f"{_TEXT_BYTES}")


def _entity(record: CropRecord) -> dict[str, Any]:
    """A record as the row collection's scalar fields (NaN doubles become null, as SQLite stores them)."""
    box = record.box if record.box is not None else (None,) * 4
    values = dict(zip(_RECORD_FIELDS, (record.source, record.camera, record.time, record.offset, record.frame,
                                       *box, record.score, record.track, record.crop, record.identity)))
    for field in _TEXT_FIELDS:
        _check_text(field, values[field])
    for field in ("source", "camera"):
        if values[field] is None:
            raise ConfigError(f"a record's {field} is missing: every row needs a source and a camera")
    for field in _DOUBLE_FIELDS:
        value = values[field]
        values[field] = None if value is None or value != value else float(value)
    for field in _INT_FIELDS:
        value = values[field]
        if value is not None and not -2**63 <= int(value) < 2**63:
            raise ConfigError(f"{field} {value} does not fit a 64-bit integer")
        values[field] = None if value is None else int(value)
    return values


def _record(row: dict[str, Any]) -> CropRecord:
    box = None if row["x0"] is None else (row["x0"], row["y0"], row["x1"], row["y1"])
    return CropRecord(row["source"], row["camera"], row["time"], row["offset_s"], row["frame"], box, row["score"],
                      row["track"], row["crop"], row["identity"])


def _best_per_track(hits: list[tuple[float, int, int | None]]) -> list[tuple[float, int, int | None]]:
    """From hits sorted best first, each track's first (= best) hit, in order; a row without a track is
    its own track."""
    seen, best = set(), []
    for score, row, track in hits:
        key = ("row", row) if track is None else ("track", track)
        if key not in seen:
            seen.add(key)
            best.append((score, row, track))
    return best


__all__ = ["MilvusStore", "TOPK_LIMIT", "WRITER"]
