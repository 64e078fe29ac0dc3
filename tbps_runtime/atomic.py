"""Write-then-rename, so a reader never sees a half-written artifact; the one JSON reader, for which
anything that is not JSON is a ``ValueError``; and the one file hash (:func:`sha256_file`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path in ``path``'s directory; when the block ends, rename it to ``path``.

    For writers that need a file name (a memory map, a library's ``save``).
    On any failure (an interrupt included) the temp file is removed and
    ``path`` is left as it was. The file gets the permissions ``open()``
    would give it, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temp)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temp file in ``path``'s directory, then rename it to ``path``."""
    with atomic_path(path) as temp, open(temp, "wb") as stream:
        write(stream)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temp file and a rename."""
    return atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON (indented, newline-terminated) to ``path`` through a temp file and a rename."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def parse_json(data: str | bytes) -> Any:
    """Parse JSON text (bytes: UTF-8, -16 or -32, as ``json.loads`` detects). Whatever is not JSON raises
    ``ValueError``: invalid UTF-8, a syntax error, nesting too deep for the parser (a ``RecursionError``
    otherwise), an integer beyond Python's 4300-digit conversion limit."""
    try:
        return json.loads(data)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply to parse") from e


def read_json(path: str | Path) -> Any:
    """:func:`parse_json` of a file's bytes; an ``OSError`` reading it passes through."""
    return parse_json(Path(path).read_bytes())


def has_format(path: str | Path, tag: str) -> bool:
    """Whether ``path`` is a JSON object carrying ``"format": tag`` (how tbps recognises its own files:
    a bundle's manifest, a gallery's description, a dataset's marker); False when absent or unreadable."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == tag


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
