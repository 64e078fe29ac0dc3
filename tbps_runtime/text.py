"""Text as tbps reads and shows it: the checks a caption or query passes, and values cut short for messages.

- :func:`check_queries` refuses what cannot be a query (not a string, not valid Unicode, nothing
  visible); :func:`visible_text` is what a tokenizer reads of a caption (no invisible characters).
  The runtime's searches, the service and the trainer's dataset readers apply the same rules.
- :func:`clip` and :func:`short` keep a value quoted in an error message to one readable line.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

from tbps_runtime.errors import QueryError

__all__ = ["check_queries", "clip", "short", "visible_text"]

_SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable bytes of argv/stdin become lone surrogates
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}


def check_queries(texts: Sequence[Any]) -> None:
    """Refuse what cannot be a query: a non-string, text that is not valid Unicode (undecodable
    bytes), or one with nothing to read once :func:`visible_text` drops its invisible characters.

    Raises:
        QueryError: naming the query (1-based) and what is wrong with it.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise QueryError(f"query {i + 1} is a {type(text).__name__}, not a string")
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise QueryError(f"query {i + 1} is not valid UTF-8 text (an undecodable byte at character "
                             f"{bad.start() + 1}): pass the query as UTF-8")
        if not visible_text(text).strip():
            raise QueryError(f"query {i + 1} is empty, or only whitespace or invisible characters: "
                             "describe the person to search for")


def visible_text(text: str) -> str:
    """``text`` without control and format characters (NUL, zero-width spaces and joiners,
    bidi marks, byte-order marks), the characters a tokenizer drops; whitespace is kept."""
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) not in _INVISIBLE)


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters (the last three ``...``)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a value quoted in a message, never a page of it."""
    return clip(repr(value), limit)
