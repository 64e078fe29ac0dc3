"""A Milvus store's text: its addresses (``milvus://HOST:PORT/COLLECTION``, ``milvus-lite:PATH.db/COLLECTION``),
collection names, and the boolean expressions its filters become. Plain text in, text out: no pymilvus.

Filters are built by escaping values, not by string templates: milvus-lite ignores ``filter_params``
(it parses the template text as the expression). Strings are double-quoted with ``\\`` and ``"``
(and CR/LF/TAB) escaped, which milvus-lite and Milvus's grammar read back as the same text.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import numpy as np

from tbps_runtime.errors import ConfigError
from tbps_runtime.store.rows import RowFilter

META_SUFFIX = "__meta"  # the meta collection's name: the rows' collection's and this
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_NAME = 255 - len(META_SUFFIX)  # the meta collection's name must fit Milvus's 255 too
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


__all__ = ["META_SUFFIX", "check_collection_name", "filter_expression", "float_literal", "parse_store_uri",
           "store_uri", "string_literal"]
