"""The store on Milvus: :class:`~tbps_runtime.gallery.store.LocalStore`'s interface for galleries that
outgrow one machine (``pip install 'tbps[milvus]'``; milvus-lite serves a local ``.db`` for tests).

A store is two collections and a local directory::

    <collection>            one row per crop: id (INT64 primary key, our row id), vector (FLOAT_VECTOR of
                            K*d: the flattened per-slot normalised row, FLAT index, metric IP, so the
                            inner product is Eq. 14), the CropRecord's fields as nullable scalars
                            (source, camera, time, offset_s, frame, x0..y1, score, track, crop,
                            identity), added (wall clock at append), batch (the append's first row id)
                            and crops (the append's crop folder)
    <collection>__meta      key -> value text: format, version, fingerprint, num_slots, embed_dim,
                            bundle, next_row, max_track (a hint), batch:<first row> (one per append:
                            its crop folder, rows, complete) and progress:<source key> (ingest state)
    directory/crops/<hex>/  the crops of each append (``tbps ingest`` writes them); directory holds
                            nothing else but the writer's lock file

Search is exact: the filter (a :class:`~tbps_runtime.gallery.rows.RowFilter`) becomes a Milvus
boolean expression applied before the top k. Milvus may order equal scores arbitrarily, so a few more
than k rows are fetched and re-sorted (score descending, then the lower row id, as LocalStore ranks);
when the k-th score equals the last fetched one, more are fetched. ``per_track`` fetches ranked rows
until the k best tracks are settled (milvus-lite's ``group_by_field`` over-fetches a fixed factor and
puts all rows without a track in one group, so it is not exact). Past Milvus's topk limit (16384)
both fall back to scoring every selected row in numpy, page by page.

Filters are built by escaping values, not by string templates: milvus-lite ignores ``filter_params``
(it parses the template text as the expression). Strings are double-quoted with ``\\`` and ``"``
(and CR/LF/TAB) escaped, which milvus-lite and Milvus's grammar read back as the same text.

Milvus has no transactions. An append first registers its batch as incomplete (and reserves its row
ids), then inserts the rows, then marks the batch complete together with the ingest progress in one
upsert; the next writer (:meth:`MilvusStore.writing`) deletes the rows of incomplete batches and any
crop folder no batch names. Readers may see part of an append in progress. Row ids are never reused.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError, OutputError
from tbps_runtime.gallery.crops import CROPS, CropFolders, remove_file, remove_tree, tree_bytes
from tbps_runtime.gallery.rows import CropRecord, Removal, RowFilter, StoreHit, format_time
from tbps_runtime.gallery.store import STORE_FORMAT, STORE_VERSION
from tbps_runtime.outputs import output_lock
from tbps_runtime.ranking import normalize_slots

logger = logging.getLogger(__name__)

META_SUFFIX = "__meta"
WRITER = ".milvus-writer"  # the lock file's name in the store directory
TOPK_LIMIT = 16384  # Milvus's largest topk and query page
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_NAME = 255 - len(META_SUFFIX)  # the meta collection's name must fit Milvus's 255 too
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
_FIXED_META = ("format", "version", "fingerprint", "num_slots", "embed_dim", "bundle", "next_row", "created",
               "max_track")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# -- addresses and expressions ---------------------------------------------------------------------------

def parse_store_uri(text: str) -> tuple[str, str]:
    """A ``--gallery`` store address -> (pymilvus URI, collection name).

    ``milvus://HOST:PORT/COLLECTION`` -> (``http://HOST:PORT``, COLLECTION) (port 19530 when omitted);
    ``milvus-lite:///abs/path.db/COLLECTION`` or ``milvus-lite:rel/path.db/COLLECTION`` -> (the ``.db``
    path, COLLECTION).

    Raises:
        ConfigError: any other form, or a collection name Milvus refuses.
    """
    forms = ("milvus://HOST:PORT/COLLECTION, milvus-lite:///abs/path.db/COLLECTION or "
             "milvus-lite:relative/path.db/COLLECTION")
    if text.startswith("milvus://"):
        parts = urlsplit(text)
        try:
            host, port = parts.hostname, parts.port or 19530
        except ValueError:
            host = port = None
        collection = parts.path[1:]
        if not host or port is None or parts.username or parts.query or parts.fragment or "/" in collection:
            raise ConfigError(f"{text!r} is not a Milvus store address: use {forms}")
        check_collection_name(collection)
        netloc = f"[{host}]" if ":" in host else host
        return f"http://{netloc}:{port}", collection
    if text.startswith("milvus-lite:"):
        rest = text[len("milvus-lite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise ConfigError(f"{text!r}: milvus-lite:// takes an absolute path (milvus-lite:///abs/path.db/"
                                  "COLLECTION); a relative one is milvus-lite:relative/path.db/COLLECTION")
        path, _, collection = rest.rpartition("/")
        if not path.endswith(".db") or path.rsplit("/", 1)[-1] == ".db" or "\x00" in path:
            raise ConfigError(f"{text!r} is not a Milvus store address: the milvus-lite file must end in .db; "
                              f"use {forms}")
        check_collection_name(collection)
        return path, collection
    raise ConfigError(f"{text!r} is not a Milvus store address: use {forms}")


def store_uri(uri: str, collection: str) -> str:
    """The store address :func:`parse_store_uri` reads back: (pymilvus URI, collection) -> text."""
    if uri.startswith(("http://", "https://")):
        return f"milvus://{uri.split('://', 1)[1].rstrip('/')}/{collection}"
    return f"milvus-lite://{uri}/{collection}" if uri.startswith("/") else f"milvus-lite:{uri}/{collection}"


def check_collection_name(name: str) -> None:
    """Raises ConfigError unless ``name`` is a collection name Milvus takes (letters, digits, underscores;
    a letter or underscore first) that leaves room for the ``__meta`` suffix."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > _MAX_NAME:
        raise ConfigError(f"collection name {name!r} is not valid: letters, digits and underscores, starting "
                          f"with a letter or underscore, at most {_MAX_NAME} characters")


def filter_expression(row_filter: RowFilter) -> str:
    """A Milvus boolean expression selecting the rows ``row_filter`` selects ("" when empty).

    Values are literals made by :func:`string_literal` and :func:`float_literal`, never pasted text;
    a row without a time fails any comparison of ``time`` (Milvus's null semantics), as in RowFilter.
    """
    terms = []
    for field, values in (("camera", row_filter.cameras), ("source", row_filter.sources)):
        if values:
            terms.append(f"{field} in [{', '.join(string_literal(v) for v in values)}]")
    if row_filter.tracks:
        terms.append(f"track in [{', '.join(str(int(t)) for t in row_filter.tracks)}]")
    if row_filter.since is not None:
        terms.append(f"time >= {float_literal(row_filter.since)}")
    if row_filter.until is not None:
        terms.append(f"time < {float_literal(row_filter.until)}")
    return " and ".join(terms)


def string_literal(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal (backslash, quote, CR, LF, TAB escaped)."""
    if "\x00" in value:
        raise ConfigError(f"{value!r} holds a NUL character: not a name")
    return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'


def float_literal(value: float) -> str:
    """A finite float as a positional decimal literal that parses back to the same double (no exponent,
    which not every Milvus version reads)."""
    return np.format_float_positional(float(value), unique=True, trim="0")


# -- the store ------------------------------------------------------------------------------------------

class MilvusStore(CropFolders):
    """A store in a Milvus collection (see the module's description), with LocalStore's methods.

    One writer at a time: :meth:`writing` takes a file lock in ``directory``, which serialises writers on
    one machine only; writers on several hosts must coordinate outside tbps. Readers need no lock.
    """

    def __init__(self, client: Any, uri: str, collection: str, directory: Path, meta: dict[str, str]):
        self._client = client
        self.uri, self.collection = uri, collection
        self.location = store_uri(uri, collection)
        self.directory = directory
        self.fingerprint = meta["fingerprint"]
        self.bundle = meta.get("bundle") or None
        self.num_slots = int(meta["num_slots"])
        self.embed_dim = int(meta["embed_dim"])
        self._meta_name = collection + META_SUFFIX

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, uri: str, collection: str, directory: str | Path, *, fingerprint: str, num_slots: int,
               embed_dim: int, bundle: str | Path | None = None) -> MilvusStore:
        """Open the store in ``collection``, creating it (and ``directory``) when absent.

        Raises:
            OutputError: the collection exists and is not a tbps store, or ``directory`` is a file.
            BundleError: an existing store was made by another bundle.
            ConfigError: Milvus cannot be reached, or pymilvus is not installed.
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
                meta_name = collection + META_SUFFIX
                has_rows, has_meta = client.has_collection(collection), client.has_collection(meta_name)
                if has_rows and not has_meta:
                    raise OutputError(f"Milvus collection {collection!r} at {uri} exists and is not a tbps store "
                                      f"(no {meta_name}): pick another collection name")
                if not has_meta:  # meta first: a crash before the rows' collection is finished below
                    _create_meta_collection(client, meta_name)
                    bundle_text = "" if bundle is None else str(Path(bundle).resolve())
                    _put_meta(client, meta_name, {
                        "format": STORE_FORMAT, "version": str(STORE_VERSION), "fingerprint": fingerprint,
                        "num_slots": str(num_slots), "embed_dim": str(embed_dim), "bundle": bundle_text,
                        "next_row": "0", "created": str(time.time()), "max_track": "-1"})
                if not has_rows:
                    client.load_collection(meta_name)
                    meta = _read_meta(client, meta_name, _FIXED_META)
                    _check_meta(location, meta)
                    _create_row_collection(client, collection, int(meta["num_slots"]) * int(meta["embed_dim"]))
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
            ConfigError: Milvus cannot be reached, or pymilvus is not installed.
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
            _check_meta(location, meta)
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

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Refuse a bundle other than the one whose image tower made these rows."""
        from tbps_runtime.gallery.storage import check_same_bundle

        check_same_bundle(f"the store {self.location}", self.fingerprint, fingerprint, bundle)

    @property
    def client(self) -> Any:
        """The ``pymilvus.MilvusClient`` (for tools that manage the collection itself, e.g. its index)."""
        return self._client

    @property
    def slot_shape(self) -> tuple[int, int]:
        return self.num_slots, self.embed_dim

    def __len__(self) -> int:
        return self._count("")

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def writing(self, what: str = "writing into") -> Iterator[MilvusStore]:
        """Hold the writer lock (a file lock in ``directory``: one writer per machine; writers on several
        hosts must coordinate outside tbps) and clear what a crashed writer left: the rows of incomplete
        appends and crop folders no append names."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with output_lock(self.directory / WRITER, what):
            self._sweep()
            yield self

    def append(self, embeddings: np.ndarray, records: Sequence[CropRecord], *, crops: str | None = None,
               progress: dict[str, str] | None = None) -> np.ndarray:
        """Add rows: ``embeddings`` (n, K, d) float32, normalised per slot, and one record each.

        Call inside :meth:`writing`. ``crops`` is the batch folder from :meth:`new_batch` whose files the
        records name; ``progress`` (ingest state per source key, JSON text) is saved with the batch's
        completion (see the module's description).

        Returns:
            (n,) int64 row ids.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 3 or embeddings.shape[1:] != self.slot_shape or len(embeddings) != len(records):
            raise ValueError(f"append takes (n, {self.num_slots}, {self.embed_dim}) float32 with one record per "
                             f"row, got {embeddings.shape} and {len(records)} records")
        progress_meta = _progress_meta(progress or {})
        if not len(embeddings):
            if progress_meta:
                with self._errors("saving ingest progress"):
                    _put_meta(self._client, self._meta_name, progress_meta)
            return np.zeros(0, np.int64)
        if not np.isfinite(embeddings).all():
            raise ValueError("append: embeddings hold NaN or inf")
        _check_text("crops", crops)
        now = time.time()
        entities = [_entity(record) for record in records]  # checks every value before ids are taken
        with self._errors("appending rows"):
            meta = _read_meta(self._client, self._meta_name, ("next_row", "max_track"))
            first = int(meta["next_row"])
            tracks = [r.track for r in records if r.track is not None]
            batch = {"crops": crops, "rows": len(records), "created": now, "complete": False}
            _put_meta(self._client, self._meta_name, {
                "next_row": str(first + len(records)), f"batch:{first}": json.dumps(batch),
                "max_track": str(max([int(meta.get("max_track") or -1), *tracks]))})
            try:
                flat = embeddings.reshape(len(embeddings), -1)  # (n, K*d)
                step = max(1, _INSERT_BYTES // flat[0].nbytes)
                for start in range(0, len(entities), step):
                    self._client.insert(self.collection, [
                        {**entity, "id": first + i, "vector": flat[i], "added": now, "batch": first,
                         "crops": crops}
                        for i, entity in enumerate(entities[start:start + step], start)])
                batch["complete"] = True
                _put_meta(self._client, self._meta_name, {f"batch:{first}": json.dumps(batch), **progress_meta})
            except BaseException:
                self._drop_batch(first, None)  # best effort; the next writer's sweep finishes it otherwise
                raise
        return np.arange(first, first + len(records), dtype=np.int64)

    def progress(self, key: str) -> str | None:
        """The ingest state saved for ``key`` by :meth:`append`, or None."""
        with self._errors("reading ingest progress"):
            return _read_meta(self._client, self._meta_name, (f"progress:{key}",)).get(f"progress:{key}")

    def max_track(self) -> int:
        """The largest track id in the store (-1 when none): new tracks are numbered after it."""
        with self._errors("reading tracks"):
            hint = int(_read_meta(self._client, self._meta_name, ("max_track",)).get("max_track") or -1)
            if hint >= 0 and self._count(f"track == {hint}"):  # the hint only grows: usually still there
                return hint
            tracks = [row["track"] for page in self._pages("track is not null", ["track"]) for row in page]
        return max(tracks, default=-1)

    def delete(self, row_filter: RowFilter | None = None, *, older_than: float | None = None,
               everything: bool = False, dry_run: bool = False) -> Removal:
        """Remove rows (their embeddings, metadata and crops) that pass ``row_filter`` and, with
        ``older_than`` (seconds), were seen (or, without a time, added) more than that long ago.

        A deletion that would leave the store empty needs ``everything=True``; one with no condition is
        refused. ``Removal.segments`` counts appends left without rows (their crop folders go too);
        ``bytes`` counts crop files only (Milvus keeps the embeddings). Call inside :meth:`writing`.

        Raises:
            ConfigError: no condition, or it would remove every row without ``everything``.
        """
        row_filter = row_filter or RowFilter()
        if row_filter.empty and older_than is None:
            raise ConfigError("say what to delete: --older-than AGE, --camera, --source, --track, --since/--until")
        terms = [t for t in [filter_expression(row_filter)] if t]
        if older_than is not None:
            cutoff = float_literal(time.time() - older_than)
            terms.append(f"((time is not null and time < {cutoff}) or (time is null and added < {cutoff}))")
        expr = " and ".join(f"({t})" for t in terms)
        removal = Removal()
        with self._errors("deleting rows"):
            doomed = [row for page in self._pages(expr, ["camera", "crop", "batch"]) for row in page]
            total = self._count("")
            if doomed and len(doomed) == total and not everything:
                raise ConfigError(f"this would remove all {total} rows of {self.location}: add --yes to do it")
            removal.rows = len(doomed)
            removal.cameras = dict(Counter(row["camera"] for row in doomed))
            if dry_run or not doomed:
                return removal
            ids = [int(row["id"]) for row in doomed]
            for start in range(0, len(ids), _ID_BATCH):
                self._client.delete(self.collection, ids=ids[start:start + _ID_BATCH])
            emptied = self._emptied_batches({int(row["batch"]) for row in doomed})
            if emptied:
                _delete_meta(self._client, self._meta_name, [f"batch:{first}" for first in emptied])
            if row_filter.sources:  # deleting a source by name means starting it over: forget its progress
                _delete_meta(self._client, self._meta_name, [f"progress:{s}" for s in row_filter.sources])
        self._remove_crops(doomed, emptied, removal)
        return removal

    def _remove_crops(self, doomed: list[dict[str, Any]], emptied: dict[int, str | None], removal: Removal) -> None:
        """Remove the deleted rows' crop files, and the crop folders of appends left without rows.

        They go after the rows and registrations: a crash leaves files no row names, and the next
        writer's sweep removes crop folders no append names."""
        emptied_crops = {crops for crops in emptied.values() if crops}
        for row in doomed:
            crop = row.get("crop")
            if crop and crop.rsplit("/", 1)[0] not in emptied_crops:
                removal.bytes += remove_file(self._inside(crop))
                removal.crops += 1
        for crops in emptied.values():
            removal.segments += 1
            if crops:
                folder = self._inside(crops)
                removal.crops += sum(1 for _ in folder.glob("*")) if folder.is_dir() else 0
                removal.bytes += remove_tree(folder)

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
            One list of :class:`StoreHit` per query, best first; ties go to the lower row id.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 3 or queries.shape[1:] != self.slot_shape:
            raise BundleError(f"queries are {queries.shape[1:]}, this store's rows are {self.slot_shape} (K, d): "
                              "query with the bundle that built it")
        if not np.isfinite(queries).all():
            raise DataError("a query embedding contains NaN or inf")
        if not len(queries):
            return []
        flat = normalize_slots(queries).reshape(len(queries), -1)  # (Q, K*d)
        expr = filter_expression(row_filter or RowFilter())
        with self._errors("searching"):
            picks = self._top_tracks(flat, expr, k) if per_track else self._top_rows(flat, expr, k)
            records = self.records(sorted({row for hits in picks for _, row, _ in hits}))
        results = []
        for hits in picks:
            # A row deleted since the search (another process's retention) is left out.
            kept = [(score, row, count) for score, row, count in hits
                    if (min_score is None or score >= min_score) and row in records]
            results.append([StoreHit(rank, score, row, records[row], count)
                            for rank, (score, row, count) in enumerate(kept, 1)])
        return results

    def records(self, rows: Sequence[int]) -> dict[int, CropRecord]:
        """Row id -> :class:`CropRecord` for the rows that exist."""
        return {int(row["id"]): _record(row) for row in self._get(rows, list(_RECORD_FIELDS))}

    def embeddings(self, rows: Sequence[int]) -> np.ndarray:
        """(n, K, d) float32: the stored embeddings of ``rows`` (existing ones), in the order given."""
        found = {int(row["id"]): row["vector"] for row in self._get(rows, ["vector"])}
        missing = [r for r in rows if int(r) not in found]
        if missing:
            raise ConfigError(f"no row {missing[0]} in {self.location}")
        out = np.empty((len(rows), *self.slot_shape), np.float32)
        for i, row in enumerate(rows):
            out[i] = np.asarray(found[int(row)], dtype=np.float32).reshape(self.slot_shape)
        return out

    def info(self) -> dict[str, Any]:
        """Rows, tracks, cameras (rows and time span each), sources, appends ("segments") and bytes: the
        crops' plus, for milvus-lite, its data directory's. Reads every row's metadata (not vectors)."""
        cameras: dict[str, dict[str, Any]] = {}
        tracks, sources, times, undated, rows = set(), set(), [], 0, 0
        with self._errors("reading the store"):
            for page in self._pages("", ["camera", "source", "time", "track"]):
                for row in page:
                    rows += 1
                    entry = cameras.setdefault(row["camera"], {"rows": 0, "tracks": set(), "times": []})
                    entry["rows"] += 1
                    sources.add(row["source"])
                    if row["track"] is not None:
                        tracks.add(row["track"])
                        entry["tracks"].add(row["track"])
                    if row["time"] is None:
                        undated += 1
                    else:
                        times.append(row["time"])
                        entry["times"].append(row["time"])
            segments = len(self._batches())
        size = tree_bytes(self.directory)
        lite = Path(self.uri)
        if not self.uri.startswith(("http://", "https://")) and self.directory.resolve() not in lite.resolve().parents:
            size += tree_bytes(lite)
        return {"store": self.location, "fingerprint": self.fingerprint, "bundle": self.bundle,
                "rows": rows, "tracks": len(tracks), "sources": len(sources), "segments": segments,
                "first": _iso(min(times, default=None)), "last": _iso(max(times, default=None)),
                "undated_rows": undated,
                "cameras": [{"camera": c, "rows": e["rows"], "tracks": len(e["tracks"]),
                             "first": _iso(min(e["times"], default=None)), "last": _iso(max(e["times"], default=None))}
                            for c, e in sorted(cameras.items())],
                "bytes": size, "num_slots": self.num_slots, "embed_dim": self.embed_dim}

    # -- ranking ---------------------------------------------------------------------------------------

    def _top_rows(self, flat: np.ndarray, expr: str, k: int) -> list[list[tuple[float, int, None]]]:
        """Per query the k best (score, row, None), exact with LocalStore's order: fetch k plus a margin,
        re-sort, and fetch more while the k-th score ties the last one fetched."""
        def settled(hits: list[tuple[float, int, Any]], limit: int):
            if len(hits) < limit or hits[k - 1][0] > hits[-1][0]:
                return [(score, row, None) for score, row, _ in hits[:k]]
            return None
        return self._ranked(flat, expr, k + max(8, k // 4), settled, per_track=False, k=k)

    def _top_tracks(self, flat: np.ndarray, expr: str, k: int) -> list[list[tuple[float, int, int]]]:
        """Per query the k best tracks as (score, best row, rows of the track passing the filter).

        Ranked rows are fetched until the k-th distinct track's best score beats the last row fetched
        (no unseen track can then outrank it) or every selected row came back."""
        def settled(hits: list[tuple[float, int, Any]], limit: int):
            best = _best_per_track(hits)[:k]
            if len(hits) < limit or (len(best) == k and best[-1][0] > hits[-1][0]):
                return best
            return None
        picks = self._ranked(flat, expr, max(4 * k, _TRACK_FETCH), settled, per_track=True, k=k)
        return self._with_track_rows(picks, expr)

    def _ranked(self, flat: np.ndarray, expr: str, limit: int, settled, *, per_track: bool, k: int) -> list:
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

    def _with_track_rows(self, picks: list[list[tuple]], expr: str) -> list[list[tuple[float, int, int]]]:
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

    def _batches(self) -> dict[int, dict[str, Any]]:
        """Every registered append: first row id -> {crops, rows, created, complete}."""
        return {int(row["key"].split(":", 1)[1]): json.loads(row["value"])
                for page in _query_all(self._client, self._meta_name, 'key like "batch:%"', ["key", "value"])
                for row in page}

    def _emptied_batches(self, firsts: set[int]) -> dict[int, str | None]:
        """Of the appends ``firsts``, those with no row left: first row id -> crop folder."""
        batches = self._batches()
        return {first: batches.get(first, {}).get("crops") for first in sorted(firsts)
                if not self._count(f"batch == {first}")}

    def _drop_batch(self, first: int, crops: str | None) -> None:
        """Delete an incomplete append's rows, crop folder and registration."""
        try:
            self._client.delete(self.collection, filter=f"batch == {first}")
            if crops:
                remove_tree(self._inside(crops))
            _delete_meta(self._client, self._meta_name, [f"batch:{first}"])
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
        known = {b.get("crops") for b in batches.values() if b.get("complete")}
        base = self.directory / CROPS
        for entry in base.iterdir() if base.is_dir() else ():
            if f"{CROPS}/{entry.name}" not in known and not entry.name.startswith(".tmp"):
                logger.info("removing %s: left by an interrupted run, never registered", entry)
                remove_tree(entry) if entry.is_dir() else remove_file(entry)

    def _errors(self, what: str):
        return _milvus_errors(self.location, what)


# -- module helpers -------------------------------------------------------------------------------------

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
    try:
        return pymilvus.MilvusClient(uri=uri, timeout=_TIMEOUT_S)
    except pymilvus.MilvusException as e:
        if uri.startswith(("http://", "https://")):
            raise ConfigError(f"cannot reach Milvus at {uri} ({_message(e)}): start the server or check "
                              "the address") from e
        raise BundleError(f"cannot open the milvus-lite database {uri} ({_message(e)}): check the path "
                          "(its folder must exist, and it must be a milvus-lite data directory)") from e


@contextmanager
def _milvus_errors(location: str, what: str) -> Iterator[None]:
    """Turn pymilvus's errors into one-line BundleErrors naming the store."""
    pymilvus = _require_pymilvus()
    try:
        yield
    except pymilvus.MilvusException as e:
        raise BundleError(f"{location}: {what} failed: {_message(e)}") from e


def _message(error: Exception) -> str:
    text = str(getattr(error, "message", "") or error)
    return " ".join(text.split())[:300]


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


def _put_meta(client: Any, name: str, values: dict[str, str]) -> None:
    client.upsert(name, [{"key": key, "value": value, "vector": [0.0, 0.0]} for key, value in values.items()])


def _read_meta(client: Any, name: str, keys: Sequence[str]) -> dict[str, str]:
    # Not client.get: pymilvus pastes string keys into its expression unescaped (a source key may hold quotes).
    found = client.query(name, filter=f"key in [{', '.join(map(string_literal, keys))}]",
                         output_fields=["key", "value"])
    return {row["key"]: row["value"] for row in found}


def _delete_meta(client: Any, name: str, keys: Sequence[str]) -> None:
    client.delete(name, filter=f"key in [{', '.join(map(string_literal, keys))}]")


def _check_meta(location: str, meta: dict[str, str]) -> None:
    if meta.get("format") != STORE_FORMAT:
        raise BundleError(f"{location} is not a tbps store (no '{STORE_FORMAT}' format in its meta)")
    if not meta.get("version", "").isdigit() or int(meta["version"]) > STORE_VERSION:
        raise BundleError(f"{location} is store version {meta.get('version')}; this tbps reads up to "
                          f"{STORE_VERSION}: upgrade tbps")
    for name in ("fingerprint", "num_slots", "embed_dim", "next_row"):
        if name not in meta or (name != "fingerprint" and not meta[name].isdigit()):
            raise BundleError(f"{location} lacks or mistypes meta '{name}'")


def _progress_meta(progress: dict[str, str]) -> dict[str, str]:
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


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else format_time(seconds)


__all__ = ["MilvusStore", "check_collection_name", "filter_expression", "float_literal", "parse_store_uri",
           "store_uri", "string_literal"]
