"""The gallery on disk: ``g.npy`` (N, K, d) float32 and ``g.json`` beside it.

``g.json`` records the format and version, the fingerprint of the bundle
whose image tower made the rows (a gallery is refused with any other bundle),
that bundle's directory (``tbps rank``'s default), one entry per row (image
path, optional identity) and the images that could not be read. Paths inside
the gallery's folder tree are recorded relative to that folder, so a folder
holding the bundle, the crops and the gallery can be moved as one (a shard's
paths are relative to the folder holding its directory of shards); others are
absolute (as every path of a gallery written before was), and both are read.

Indexing is resumable: rows go into a memory-mapped ``.g.npy.partial.npy``
and progress into ``.g.npy.partial.json`` after every batch (:class:`PartialIndex`);
the final pair is written atomically (temp file + rename) and the partial files removed.

A gallery may also be one shard of a larger one (``tbps index --shard I/N``):
its ``g.json`` then holds a ``shard`` record (:class:`~tbps_runtime.gallery.records.ShardInfo`),
and a directory of such shards loads as one
:class:`~tbps_runtime.gallery.shards.ShardedGallery`. A FAISS index built
beside the gallery (``tbps index --faiss SPEC``) is recorded under ``faiss``
(:class:`~tbps_runtime.gallery.records.FaissRecord`). This module reads one
gallery file; :func:`tbps_runtime.gallery.open.load_gallery` opens whatever is
at a path, file or shard directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tbps_runtime.atomic import atomic_path, atomic_write, has_format, read_json, write_json_atomic
from tbps_runtime.contract import GALLERY_FORMAT, GALLERY_VERSION
from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError, OutputError, \
    UnsafePathError
from tbps_runtime.gallery.records import FaissRecord, GalleryEntry, ShardInfo
from tbps_runtime.paths import resolve_inside
from tbps_runtime.outputs import ensure_space, output_lock, reserve, unallocated_bytes

logger = logging.getLogger(__name__)

_COPY_ROWS = 16384  # rows per block when compacting a partial gallery


@dataclass
class Gallery:
    """An indexed gallery. ``embeddings`` is (N, K, d) float32, memory-mapped read-only
    when loaded from disk; row i is ``entries[i]``."""

    embeddings: np.ndarray
    entries: list[GalleryEntry]
    fingerprint: str
    bundle: str | None = None
    unreadable: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None
    shard: ShardInfo | None = None  # set when this gallery is one shard of a larger one
    faiss: FaissRecord | None = None  # the FAISS index beside g.npy, if one was built

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def parts(self) -> list[np.ndarray]:
        """The row blocks to rank, in gallery order: one here, one per shard in a sharded gallery."""
        return [self.embeddings]

    @property
    def sidecar(self) -> Path | None:
        """The ``g.json`` that describes this gallery (None in memory)."""
        return None if self.path is None else sidecar_path(self.path)

    @property
    def faiss_path(self) -> Path | None:
        """The FAISS index recorded in ``g.json``, if any."""
        if self.faiss is None or self.path is None:
            return None
        return resolve_inside(self.path.parent, self.faiss.file, f"{sidecar_path(self.path)}: faiss 'file'")

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Refuse a bundle other than the one whose image tower made these rows."""
        check_same_bundle(f"gallery {self.path or '(in memory)'}", self.fingerprint, fingerprint, bundle)

    def check_finite(self, chunk_rows: int = _COPY_ROWS) -> None:
        """Scan every row for NaN/inf (ranking also catches them, as non-finite scores)."""
        for start in range(0, len(self.embeddings), chunk_rows):
            block = np.asarray(self.embeddings[start:start + chunk_rows])
            bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                raise BundleError(f"gallery {self.path} row {row} ({self.entries[row].path}) contains NaN or inf: "
                                  "re-index the gallery with tbps index")


def check_same_bundle(what: str, built_with: str, fingerprint: str, bundle: str | Path | None) -> None:
    """Refuse ranking ``what`` (built with the bundle of fingerprint ``built_with``) with another bundle."""
    if fingerprint != built_with:
        where = f" ({bundle})" if bundle is not None else ""
        raise BundleError(
            f"{what} was built with the bundle of fingerprint {built_with[:12]}, not this bundle{where} "
            f"({fingerprint[:12]}): its scores would be meaningless; re-index it with this bundle, or rank with "
            "the bundle that built it", code="gallery_of_another_bundle", what=what, built_with=built_with[:12],
            fingerprint=fingerprint[:12], where=where)


def sidecar_path(path: str | Path) -> Path:
    """``g.npy`` -> ``g.json``."""
    return Path(path).with_suffix(".json")


def is_gallery_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is a ``g.json`` tbps wrote (a JSON object with the gallery format tag)."""
    return has_format(path, GALLERY_FORMAT)


def check_gallery_output(output: str | Path, force: bool = False) -> None:
    """Refuse to index into ``output`` (``g.npy``) when it, or the ``g.json`` its description would
    replace, exists and is not part of a tbps gallery (a bundle's ``manifest.json``, a dataset's
    ``reid_raw.json``), unless ``force``.

    Raises:
        OutputError: naming the file and the two ways out.
    """
    output = Path(output)
    sidecar = sidecar_path(output)
    if force or is_gallery_sidecar(sidecar):
        return
    if sidecar.exists():
        raise OutputError(f"{sidecar} is not a tbps gallery description (no '{GALLERY_FORMAT}' format tag), and "
                          f"indexing into {output.name} would replace it with one: index into another output, or "
                          "pass force=True to replace it", code="gallery_output_foreign_sidecar", sidecar=str(sidecar),
                          output=output.name, tag=GALLERY_FORMAT)
    if output.exists():
        raise OutputError(f"{output} exists and is not a tbps gallery (no {sidecar.name} beside it): index into "
                          "another output, or pass force=True to replace it", code="gallery_output_foreign",
                          output=str(output), sidecar=sidecar.name)


def load_gallery_file(path: str | Path, mmap: bool = True) -> Gallery:
    """Read and validate ``g.npy`` and its ``g.json``; rows are memory-mapped unless ``mmap=False``.

    Raises:
        InputFileNotFoundError: no such file.
        BundleError: no ``g.json`` beside it, or the two disagree, or the array
            is not (N, K, d) float32.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(f"pass the gallery's .npy file, not its {path.name}")
    if not path.is_file():
        raise InputFileNotFoundError(f"gallery not found: {path}")
    meta = _read_sidecar(path)
    embeddings = _read_array(path, mmap)
    _check_consistent(path, embeddings, meta)
    prefix, where = _folder(path, meta.get("shard") is not None), sidecar_path(path)
    entries = [GalleryEntry(_resolve(prefix, e["path"], where, "entry", i), e.get("identity"))
               for i, e in enumerate(meta["entries"])]
    unreadable = [{**u, "path": _resolve(prefix, u["path"], where, "unreadable image", i)}
                  for i, u in enumerate(meta.get("unreadable", []))]
    bundle = None if meta.get("bundle") is None else \
        str(Path(_resolve(prefix, meta["bundle"], where, "'bundle'")).resolve())
    shard = faiss = None
    if meta.get("shard") is not None:
        shard = ShardInfo.from_json(meta["shard"])
        if shard is None:
            raise BundleError(f"{sidecar_path(path)} has a malformed shard record; index the shard again",
                              code="gallery_record_malformed", sidecar=str(sidecar_path(path)), record="shard")
    if meta.get("faiss") is not None:
        faiss = FaissRecord.from_json(meta["faiss"])
        if faiss is None:
            raise BundleError(f"{sidecar_path(path)} has a malformed faiss record; build its FAISS index again",
                              code="gallery_record_malformed", sidecar=str(sidecar_path(path)), record="faiss")
        resolve_inside(path.parent, faiss.file, f"{sidecar_path(path)}: faiss 'file'")
    return Gallery(embeddings, entries, meta["fingerprint"], bundle, unreadable, path, shard, faiss)


def _recorded(prefix: str, path: str | Path) -> str:
    """How ``g.json`` records ``path`` (relative to the working directory when not absolute): relative to the
    gallery's folder (``prefix``: its absolute path and a separator) when it lies inside that folder's tree,
    so the folder can move; else absolute."""
    text = os.fspath(path)
    if not text.startswith(prefix) or os.sep + "." in text or os.sep * 2 in text:  # normalise the unusual
        text = os.path.abspath(text)
    if not text.startswith(prefix):
        return text
    relative = text[len(prefix):]
    if _unusual(relative):
        try:
            resolve_inside(prefix, relative, "a gallery path")  # what the reader accepts
        except UnsafePathError:
            return text
    return relative.replace(os.sep, "/")


def _resolve(prefix: str, recorded: str, sidecar: Path, field: str, row: int | None = None) -> str:
    """A path as ``g.json`` records it, made usable: relative ones are inside the gallery's folder (``prefix``:
    its absolute path and a separator); ``field`` and ``row`` say where it was read, for the error."""
    if os.path.isabs(recorded):  # outside the gallery's folder, or a gallery written before relative paths
        return recorded
    if _unusual(recorded):
        return str(resolve_inside(prefix, recorded, f"{sidecar}: {field}" + ("" if row is None else f" {row}")))
    return prefix + recorded  # a million entries: plain strings, no Path objects


def _unusual(name: str) -> bool:
    """Whether a relative name needs :func:`resolve_inside`'s full check (most names do not: it is slow)."""
    return ".." in name or ":" in name or name.startswith("\\") or not name


def _folder(path: Path, shard: bool) -> str:
    """The gallery's folder as the prefix its relative paths go after: absolute, ending in a separator.
    A shard is one file of a directory of shards, which is the gallery: its folder is the directory's."""
    return os.path.join(os.path.abspath(path.parent.parent if shard else path.parent), "")


def write_gallery(path: str | Path, embeddings: np.ndarray, entries: Sequence[GalleryEntry], *,
                  fingerprint: str, bundle: str | Path | None = None,
                  unreadable: Sequence[dict[str, str]] = (), shard: ShardInfo | None = None) -> Gallery:
    """Write ``g.npy`` + ``g.json`` atomically (each via a temp file and a rename; the JSON last), holding
    the gallery's lock (:func:`tbps_runtime.outputs.output_lock`): two writers never mix their files."""
    path = Path(path)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 3 or embeddings.dtype != np.float32 or len(embeddings) != len(entries):
        raise ValueError(f"a gallery is (N, K, d) float32 with one entry per row, got {embeddings.shape} "
                         f"{embeddings.dtype} and {len(entries)} entries")
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        atomic_write(path, lambda stream: np.save(stream, embeddings))
        _write_sidecar(path, embeddings.shape, entries, fingerprint, bundle, unreadable, shard)
        return load_gallery_file(path)


def record_faiss(path: str | Path, file_name: str, spec: str) -> Gallery:
    """Record the FAISS index ``file_name`` (beside ``path``) and its spec in ``path``'s ``g.json``,
    atomically; the index file must be written first, so the record never names a missing file."""
    path = Path(path)
    meta = _read_sidecar(path)
    meta["faiss"] = FaissRecord(file_name, spec).to_json()
    write_json_atomic(sidecar_path(path), meta)
    return load_gallery_file(path)


def _write_sidecar(path: Path, shape: tuple[int, ...], entries: Sequence[GalleryEntry], fingerprint: str,
                   bundle: str | Path | None, unreadable: Sequence[dict[str, str]],
                   shard: ShardInfo | None = None) -> None:
    # A rewritten gallery drops any FAISS record: the index described the old rows.
    prefix = _folder(path, shard is not None)
    write_json_atomic(sidecar_path(path), {
        "format": GALLERY_FORMAT, "version": GALLERY_VERSION,
        "fingerprint": fingerprint,
        "bundle": None if bundle is None else _recorded_bundle(prefix, bundle),
        "count": int(shape[0]), "num_slots": int(shape[1]), "embed_dim": int(shape[2]),
        "entries": [GalleryEntry(_recorded(prefix, e.path), e.identity).to_json() for e in entries],
        "unreadable": [{**u, "path": _recorded(prefix, u["path"])} for u in unreadable],
        **({} if shard is None else {"shard": shard.to_json()}),
    })


def _recorded_bundle(prefix: str, bundle: str | Path) -> str:
    """The bundle as ``g.json`` records it: relative inside the gallery's folder tree, else resolved."""
    recorded = _recorded(prefix, bundle)
    return recorded if not os.path.isabs(recorded) else str(Path(bundle).resolve())


def _read_sidecar(path: Path) -> dict[str, Any]:
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise BundleError(f"gallery {path} has no {meta_path.name} beside it (tbps index writes the two "
                          "together): move it back or re-index with tbps index")
    try:
        meta = read_json(meta_path)
    except ValueError as e:
        raise BundleError(f"{meta_path} is not valid JSON: {e}; re-index with tbps index") from e
    if not isinstance(meta, dict) or meta.get("format") != GALLERY_FORMAT:
        raise BundleError(f"{meta_path} is not a tbps gallery description (no '{GALLERY_FORMAT}' format tag): "
                          "re-index with tbps index")
    if not isinstance(meta.get("version"), int) or meta["version"] > GALLERY_VERSION:
        raise BundleError(f"{meta_path} has gallery version {meta.get('version')}; this tbps reads up to "
                          f"{GALLERY_VERSION}: upgrade tbps")
    fields = {"fingerprint": str, "count": int, "num_slots": int, "embed_dim": int, "entries": list}
    wrong = [name for name, kind in fields.items() if not isinstance(meta.get(name), kind)]
    wrong += [name for name in ("bundle",) if not isinstance(meta.get(name), (str, type(None)))]
    wrong += [name for name in ("unreadable",) if not isinstance(meta.get(name, []), list)]
    if not wrong:  # each row's entry: a path and an optional identity; each unreadable image: path and error
        wrong += ["entries"] * (not all(isinstance(e, dict) and _is_path(e.get("path"))
                                        and _is_identity(e.get("identity")) for e in meta["entries"]))
        wrong += ["unreadable"] * (not all(isinstance(u, dict) and _is_path(u.get("path"))
                                           and isinstance(u.get("error"), str) for u in meta.get("unreadable", [])))
    if wrong:
        raise BundleError(f"{meta_path} lacks or mistypes {', '.join(wrong)}; re-index with tbps index")
    return meta


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


def _is_identity(value: Any) -> bool:
    return value is None or isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)


def _read_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        if mmap and "empty" in str(e):  # a 0-row array cannot be memory-mapped
            return _read_array(path, mmap=False)
        raise BundleError(f"{path} is not a .npy array file ({e}); re-index with tbps index") from e
    except (OSError, EOFError) as e:
        raise BundleError(f"{path} is not a readable .npy file ({e}); re-index with tbps index") from e
    if not isinstance(array, np.ndarray):
        raise BundleError(f"{path} is not a single .npy array; re-index with tbps index")
    return array


def _check_consistent(path: Path, embeddings: np.ndarray, meta: dict[str, Any]) -> None:
    expected = (meta["num_slots"], meta["embed_dim"])
    if embeddings.ndim != 3 or embeddings.shape[1:] != expected:
        raise BundleError(f"{path} has shape {embeddings.shape}; its {sidecar_path(path).name} describes "
                          f"(N, {expected[0]}, {expected[1]}) rows: re-index with tbps index")
    if embeddings.dtype != np.float32:
        raise BundleError(f"{path} holds {embeddings.dtype}; a gallery is float32: re-index with tbps index")
    if not len(embeddings) == meta["count"] == len(meta["entries"]):
        raise BundleError(f"{path} has {len(embeddings)} rows but {sidecar_path(path).name} lists "
                          f"{len(meta['entries'])}: the two files are out of step; re-index with tbps index")


class PartialIndex:
    """The resumable state of one indexing run into ``output``.

    ``done`` images (in the order given) are finished; ``failures`` maps the
    position of each unreadable image among them to its error message.
    """

    def __init__(self, output: Path, paths: Sequence[str], fingerprint: str, shape: tuple[int, int]):
        self.output = output
        self.rows_path = output.with_name(f".{output.name}.partial.npy")
        self.state_path = output.with_name(f".{output.name}.partial.json")
        self.key = _run_key(paths, fingerprint, shape)
        self.count = len(paths)
        self.fingerprint = fingerprint
        self.shape = shape  # (K, d)
        self.done = 0
        self.failures: dict[int, str] = {}
        self.rows = self._open_rows(shape)  # (N, K, d) memory map

    def _open_rows(self, shape: tuple[int, int]) -> np.ndarray:
        state = self._read_state()
        if state is not None and state.get("key") == self.key and self.rows_path.is_file():
            try:
                done, failures = self._progress(state)
                rows = np.lib.format.open_memmap(self.rows_path, mode="r+")
            except (ValueError, OSError, AttributeError, TypeError) as e:
                logger.warning("ignoring unreadable partial index %s (%s): starting over", self.rows_path, e)
            else:
                if rows.shape == (self.count, *shape) and rows.dtype == np.float32:
                    _reserve_rows(self.rows_path, f"the gallery {self.output}")  # a sparse file's holes
                    self.done, self.failures = done, failures
                    return rows
                del rows
        elif state is not None:
            logger.info("partial index %s is from another run (other images or bundle): starting over",
                        self.state_path)
        self.state_path.unlink(missing_ok=True)
        return _create_rows(self.rows_path, (self.count, *shape), f"the gallery {self.output}")

    def _progress(self, state: dict[str, Any]) -> tuple[int, dict[int, str]]:
        """``done`` and ``failures`` of a saved state, checked: done in 0..N, failures at positions
        before it with string messages (a tampered state raises ``ValueError``: the run starts over)."""
        done, failures = state["done"], state["failures"]
        if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= self.count:
            raise ValueError(f"'done' is {done!r}, expected 0..{self.count}")
        if not isinstance(failures, dict):
            raise ValueError("'failures' is not an object")
        checked = {}
        for key, message in failures.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) < done
                    and isinstance(message, str)):
                raise ValueError(f"failure {key!r}: {message!r} is not a position before 'done' and a message")
            checked[int(key)] = message
        return done, checked

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = read_json(self.state_path)
            return state if isinstance(state, dict) and {"key", "done", "failures"} <= set(state) else None
        except (OSError, ValueError):
            return None

    def record(self, end: int, positions: Sequence[int], rows: np.ndarray, failures: dict[int, str]) -> None:
        """Store the rows of the images at ``positions`` and the failed ones; every image before ``end`` is done.
        The rows reach the disk before the progress that claims them."""
        if len(positions):
            self.rows[np.asarray(positions)] = rows
            self.rows.flush()
        self.failures.update(failures)
        self.done = end
        write_json_atomic(self.state_path, {"key": self.key, "done": end,
                                            "failures": {str(k): v for k, v in self.failures.items()}})

    def discard(self) -> None:
        """Remove the partial files (nothing worth resuming)."""
        del self.rows
        self.rows_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def strict_failure(self, message: str) -> DataError:
        """The error that ends a ``strict`` run at an unreadable image (``message``): before any
        batch was recorded the partial files are discarded, after one they are kept to resume."""
        if not self.done:
            self.discard()
            return DataError(f"{message} (strict=True makes unreadable images fatal)", code="index_strict_unreadable",
                             reason=message, kept=0)
        return DataError(f"{message} (strict=True makes unreadable images fatal; the {self.done} image(s) before its "
                         "batch are kept: index again to resume)", code="index_strict_unreadable", reason=message,
                         kept=self.done)

    def finish(self, entries: Sequence[GalleryEntry], bundle: str | Path | None,
               shard: ShardInfo | None = None) -> Gallery:
        """Write the final ``g.npy`` + ``g.json`` from the readable rows and remove the partial files."""
        assert self.done == self.count == len(entries)
        ok = np.array([i for i in range(self.count) if i not in self.failures], dtype=np.int64)
        unreadable = [{"path": entries[i].path, "error": self.failures[i]} for i in sorted(self.failures)]
        self.rows.flush()
        if len(ok) == self.count:
            del self.rows  # the partial rows are the gallery: rename, no copy
            os.replace(self.rows_path, self.output)
        else:
            self._compact(ok)
        _write_sidecar(self.output, (len(ok), *self.shape), [entries[i] for i in ok],
                       self.fingerprint, bundle, unreadable, shard)
        self.rows_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return load_gallery_file(self.output)

    def _compact(self, ok: np.ndarray) -> None:
        if not len(ok):  # a shard whose images were all unreadable: a 0-row array cannot be memory-mapped
            atomic_write(self.output, lambda stream: np.save(stream, np.zeros((0, *self.shape), np.float32)))
            return
        with atomic_path(self.output, suffix=".tmp.npy") as temp:
            out = _create_rows(temp, (len(ok), *self.shape), f"the gallery {self.output}")
            for start in range(0, len(ok), _COPY_ROWS):
                out[start:start + _COPY_ROWS] = self.rows[ok[start:start + _COPY_ROWS]]
            out.flush()
            del out


def _create_rows(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A new (N, K, d) float32 ``.npy`` memory map at ``path``, its disk blocks allocated up front: writing
    through a map onto a full disk kills the process (SIGBUS), so a full disk is refused here instead."""
    header = 4096  # an upper bound of the .npy header
    ensure_space(path.parent, int(np.prod(shape)) * 4 + header, what)
    try:
        rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        _reserve_rows(path, what)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return rows


def _reserve_rows(path: Path, what: str) -> None:
    """Allocate the holes of the sparse ``.npy`` at ``path`` (after checking they fit)."""
    missing = unallocated_bytes(path)
    if missing:
        ensure_space(path.parent, missing, what)
        reserve(path, path.stat().st_size, what)


def _run_key(paths: Sequence[str], fingerprint: str, shape: tuple[int, int]) -> str:
    """What a resumed run must share with the interrupted one: the images, in order, and the model."""
    digest = hashlib.sha256(f"{fingerprint}\n{shape}\n".encode())
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()
