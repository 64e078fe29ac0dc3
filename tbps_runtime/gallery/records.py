"""The plain records a gallery's ``g.json`` holds: one entry per row, the shard it is, its FAISS index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_SHARDS = 100_000  # --shard I/N: more shards than this is a typo, and would not fit a directory listing


@dataclass(frozen=True)
class GalleryEntry:
    """One gallery row: the image it came from and, when known, the person's identity."""

    path: str
    identity: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path} if self.identity is None else {"path": self.path, "identity": self.identity}


@dataclass(frozen=True)
class ShardInfo:
    """Which part of a larger image list a shard gallery holds: the ``index``-th (0-based) of ``count``
    contiguous blocks of the ``total`` images of the sorted list whose hash is ``list_hash``;
    its first image is at position ``start`` of that list."""

    index: int
    count: int
    total: int
    start: int
    list_hash: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "total": self.total, "start": self.start,
                "list_hash": self.list_hash}

    @classmethod
    def from_json(cls, record: Any) -> ShardInfo | None:
        """The record of a sidecar, or None when it is malformed."""
        names = ("index", "count", "total", "start")
        if not isinstance(record, dict) or not all(isinstance(record.get(n), int) for n in names) \
                or not isinstance(record.get("list_hash"), str):
            return None
        index, count, total, start = (record[n] for n in names)
        if not (0 <= index < count <= MAX_SHARDS and 0 <= start <= total):
            return None
        return cls(*(record[n] for n in names), record["list_hash"])


@dataclass(frozen=True)
class FaissRecord:
    """The FAISS index built beside a gallery (``tbps index --faiss SPEC``): its ``file`` name
    (in the gallery's directory) and the factory ``spec`` it was built from."""

    file: str
    spec: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "spec": self.spec}

    @classmethod
    def from_json(cls, record: Any) -> FaissRecord | None:
        """The record of a sidecar, or None when it is malformed."""
        if not isinstance(record, dict) or not isinstance(record.get("file"), str) \
                or not isinstance(record.get("spec"), str):
            return None
        return cls(record["file"], record["spec"])
