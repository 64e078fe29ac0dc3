"""Sharded galleries: embed one block of an image list per job, rank the directory of shards as one.

``tbps index --shard I/N`` (I is 0-based, 0 <= I < N) collects and sorts the
image list exactly as an unsharded run does, then embeds only its I-th
contiguous block (``numpy.array_split`` semantics: the first ``total % N``
blocks hold one image more). The split depends on nothing but the list, so N
jobs on N machines (a Slurm array, an indexed Kubernetes Job) agree on it, and
shards 0..N-1 in order hold exactly the rows of the unsharded gallery.

With ``-o DIR/`` (or an existing directory) shard I of N is written to
``DIR/shard-I-of-N.npy`` + ``.json``. Each sidecar records which shard it is
(:class:`~tbps_runtime.gallery.records.ShardInfo`: index, count, total images, its
first position and a hash of the whole list), so a directory of shards is
checked before it is ranked: one bundle, one image list, every index from 0 to
N-1 exactly once. Shards are identified by their sidecars, not their names.

A :class:`ShardedGallery` ranks as the one gallery of all its shards' rows:
each shard stays memory-mapped, is scored on its own, and the per-shard top k
are merged (:func:`tbps_runtime.ranking.top_k_parts`), so results, scores and
tie order (lower global row first) are those of the unsharded gallery.
Each shard may carry its own FAISS index (``tbps index --shard I/N --faiss
SPEC``); :mod:`tbps_runtime.gallery.faiss_gallery` merges their top k the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from tbps_runtime.contract import shard_bounds
from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError
from tbps_runtime.gallery.npy import Gallery, check_same_bundle, load_gallery_file, sidecar_path
from tbps_runtime.gallery.records import MAX_SHARDS, GalleryEntry, ShardInfo

_SHARD_SYNTAX = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_file_name(index: int, count: int) -> str:
    """The name of shard I of N in a directory of shards: ``shard-I-of-N.npy``."""
    return f"shard-{index}-of-{count}.npy"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``, with I 0-based: ``0 <= I < N``.

    Raises:
        ConfigError: not of the form I/N (code ``shard_syntax``), N < 1 or too many
            (``shard_count_invalid``), or I out of range (``shard_index_invalid``); facts ``text``, ``count``.
    """
    match = _SHARD_SYNTAX.match(text)
    if match is None:
        raise ConfigError(f"a shard is I/N (shard I of N, I counted from 0), e.g. 0/4; got {text!r}",
                          code="shard_syntax", text=text)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ConfigError(f"shard {text}: the number of shards must be at least 1", code="shard_count_invalid",
                          text=text, count=count, most=MAX_SHARDS)
    if count > MAX_SHARDS:
        raise ConfigError(f"shard {text}: at most {MAX_SHARDS} shards", code="shard_count_invalid", text=text,
                          count=count, most=MAX_SHARDS)
    if index >= count:
        raise ConfigError(f"shard {text}: shards are numbered from 0, so I must be 0..{count - 1}",
                          code="shard_index_invalid", text=text, last=count - 1)
    return index, count


def image_list_hash(paths: Sequence[str], identities: Sequence[int | str | None] | None = None) -> str:
    """SHA-256 of the whole (ordered) image list and its identities: shards of different lists differ."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        identity = "" if identities is None or identities[i] is None else repr(identities[i])
        digest.update(f"{path}\t{identity}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def select_shard(paths: Sequence[str | Path], identities: Sequence[int | str | None] | None, index: int,
                 count: int) -> tuple[list[str], list[int | str | None] | None, ShardInfo]:
    """The images (absolute paths, as the indexer takes them; the shard's sidecar records those inside its
    folder relative to it) and identities of shard ``index`` of ``count``, and the :class:`ShardInfo` its
    sidecar records. ``paths`` must be in the order the
    unsharded index would use (what :func:`tbps_runtime.model.images.collect_images` returns)."""
    absolute = [os.path.abspath(p) for p in paths]
    start, stop = shard_bounds(len(absolute), index, count)
    info = ShardInfo(index, count, len(absolute), start, image_list_hash(absolute, identities))
    return absolute[start:stop], None if identities is None else list(identities[start:stop]), info


def shard_output(output: str | Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` goes: ``DIR/shard-I-of-N.npy`` when ``output`` is a directory
    (existing, or written with a trailing slash; created, as N jobs may race to), else ``output`` itself."""
    text = str(output)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        directory = Path(text)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / shard_file_name(index, count)
    if Path(text).suffix != ".npy":  # most likely a directory meant without its trailing slash
        raise ConfigError(f"the output {text} is neither a directory nor a .npy file: write {text}/ (trailing "
                          f"slash) to put {shard_file_name(index, count)} in that directory, or name the shard's .npy "
                          "file", code="shard_output_ambiguous", text=text, file=shard_file_name(index, count))
    return Path(text)


class ShardedGallery:
    """A directory of shard galleries that ranks as one gallery.

    ``shards`` are in shard order; row ``i`` of the whole is ``entries[i]``, held
    by the shard whose block contains it. Each shard's rows stay memory-mapped:
    nothing is concatenated to rank.
    """

    def __init__(self, shards: Sequence[Gallery], path: Path):
        self.shards = list(shards)
        self.path = path
        self.entries: list[GalleryEntry] = [e for shard in self.shards for e in shard.entries]
        self.unreadable: list[dict[str, str]] = [u for shard in self.shards for u in shard.unreadable]
        self.fingerprint = self.shards[0].fingerprint
        self.bundle = self.shards[0].bundle

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def parts(self) -> list[np.ndarray]:
        """Each shard's (n_i, K, d) rows, in shard order."""
        return [shard.embeddings for shard in self.shards]

    @property
    def sidecar(self) -> Path | None:
        """The first shard's ``.json`` (where the recorded bundle is read from)."""
        return self.shards[0].sidecar

    def check_bundle(self, fingerprint: str, bundle: str | Path | None = None) -> None:
        """Refuse a bundle other than the one whose image tower made these rows."""
        check_same_bundle(f"sharded gallery {self.path}", self.fingerprint, fingerprint, bundle)

    def check_finite(self) -> None:
        """Scan every shard for NaN/inf rows."""
        for shard in self.shards:
            shard.check_finite()

    def to_array(self) -> np.ndarray:
        """All rows in one (N, K, d) array, in memory: for small galleries and tests; ranking never needs it."""
        return np.concatenate([np.asarray(part) for part in self.parts])


def load_shard_directory(directory: str | Path, mmap: bool = True) -> ShardedGallery:
    """Load every ``*.npy`` gallery in ``directory`` as the shards of one gallery, after checking that they
    make one: the same bundle, the same image list, each shard index 0..N-1 exactly once.

    Raises:
        InputFileNotFoundError: no shard gallery in the directory.
        BundleError: a gallery that is not a shard, shards of different bundles or image lists,
            a duplicate or missing shard.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.npy") if not p.name.startswith("."))
    pending = sorted(directory.glob(".*.partial.npy"))
    busy = f" ({len(pending)} shard(s) are still being indexed there)" if pending else ""
    if not files:
        raise InputFileNotFoundError(f"{directory} holds no shard galleries{busy}: indexing shard I of N into the "
                                     "directory writes shard-I-of-N.npy there", code="shards_none",
                                     directory=str(directory), busy=busy)
    shards = [load_gallery_file(file, mmap=mmap) for file in files]
    for shard in shards:
        if shard.shard is None:
            raise BundleError(f"{shard.path} in the shard directory {directory} is not a shard (its "
                              f"{sidecar_path(shard.path).name} has no shard record): move it out, or rank "
                              "it alone")
    _check_one_bundle(directory, shards)
    _check_one_list(directory, shards)
    by_index: dict[int, Gallery] = {}
    for shard in shards:
        info = shard.shard
        if info.index in by_index:
            raise BundleError(f"shard {info.index} of {info.count} appears twice in {directory}: "
                              f"{by_index[info.index].path.name} and {shard.path.name}; remove one")
        _check_block(shard)
        by_index[info.index] = shard
    count = shards[0].shard.count
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        names = ", ".join(str(i) for i in missing[:10]) + more
        raise BundleError(f"{directory} lacks shard{'s' if len(missing) > 1 else ''} {names} of {count} (it has "
                          f"{', '.join(str(i) for i in sorted(by_index))}){busy}: index shard "
                          f"{missing[0]}/{count} from the same images with the same bundle", code="shards_missing",
                          directory=str(directory), missing=names, plural="s" if len(missing) > 1 else "",
                          count=count, present=", ".join(str(i) for i in sorted(by_index)), busy=busy,
                          first=missing[0])
    return ShardedGallery([by_index[i] for i in range(count)], directory)


def _check_one_bundle(directory: Path, shards: list[Gallery]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        if shard.fingerprint != first.fingerprint:
            raise BundleError(f"the shards in {directory} come from different bundles: {first.path.name} "
                              f"(fingerprint {first.fingerprint[:12]}) and {shard.path.name} (fingerprint "
                              f"{shard.fingerprint[:12]}); re-index them all with one bundle")


def _check_one_list(directory: Path, shards: list[Gallery]) -> None:
    def describe(shard: Gallery) -> str:
        info = shard.shard
        return (f"{shard.path.name} is shard {info.index} of {info.count} of a list of {info.total} images "
                f"(hash {info.list_hash[:12]})")

    first = shards[0].shard
    for shard in shards[1:]:
        info = shard.shard
        if (info.count, info.total, info.list_hash) != (first.count, first.total, first.list_hash):
            raise BundleError(f"the shards in {directory} are of different image lists: {describe(shards[0])}, "
                              f"{describe(shard)}; index every shard from the same images with the same N",
                              code="shards_of_different_lists", directory=str(directory), first=describe(shards[0]),
                              other=describe(shard))


def _check_block(shard: Gallery) -> None:
    """A shard must hold exactly its block of the list: its rows plus its unreadable images."""
    info = shard.shard
    start, stop = shard_bounds(info.total, info.index, info.count)
    if not 0 <= info.index < info.count or info.start != start or len(shard) + len(shard.unreadable) != stop - start:
        raise BundleError(f"{shard.path} does not hold block {info.index} of {info.count} of its list of "
                          f"{info.total} images (images {start}..{stop - 1}): index shard {info.index}/{info.count} "
                          "again", code="shard_block_wrong", path=str(shard.path), index=info.index, count=info.count,
                          total=info.total, start=start, last=stop - 1)
