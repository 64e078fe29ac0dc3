"""File names that come from files stay inside the directory they are relative to.

A manifest's ``tokenizer`` and tower files, a ``g.json``'s FAISS file, a dataset's
image paths: each is a name *inside* a root the user pointed at. :func:`resolve_inside`
is the one check every reader applies before it opens such a name.

The check is lexical (absolute names and ``..`` components are refused); a symbolic
link the user placed inside the root is theirs to follow (datasets often link their
image directory to another disk).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

from tbps_runtime.errors import UnsafePathError
from tbps_runtime.text import short


def resolve_inside(root: str | Path, name: Any, what: str) -> Path:
    """``root / name``, after checking that ``name`` is a relative name that stays inside ``root``.

    Args:
        root: the directory ``name`` is relative to (a bundle, a gallery's directory, an image folder).
        name: the name as read from the file.
        what: where the name comes from, for the message, e.g. ``"m.bundle/manifest.json: 'tokenizer'"``.

    Raises:
        UnsafePathError: ``name`` is not a non-empty string, holds a NUL byte, is absolute
            (``/x``, ``C:\\x``, ``\\\\host\\x``) or has a ``..`` component.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} is {short(name, 80)}, expected a path relative to {root}/")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if "\x00" in name or name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise UnsafePathError(f"{what} is {short(name, 80)}, expected a path relative to {root}/ that stays "
                              "inside it (no absolute path, no '..'): refusing to read outside it")
    return Path(root) / name


CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")  # what a name may not hold (tbps_runtime.store.rows.check_name)


def one_line(text: str) -> str:
    """``text`` with its control characters and line separators written as escapes (``\\n``,
    ``\\x1b``, ``\\u2028``): fit for a name, a log line or a table row, never two lines."""
    if not any(unicodedata.category(c) in CONTROL_CATEGORIES for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in CONTROL_CATEGORIES
                   else c for c in text)


def printable(text: str) -> str:
    """``text`` with no lone surrogates, so it can be printed, put in JSON or HTML as UTF-8.

    File names that are not UTF-8 (a Latin-1 ``café.png``) reach Python as lone surrogates
    (``surrogateescape``); their bytes are shown as ``\\xe9`` escapes instead. Other text is unchanged.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
