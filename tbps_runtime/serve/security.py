"""Who may call the service: loopback detection, the API key, public paths, CORS origins.

The model: ``tbps serve`` binds 127.0.0.1 unless told otherwise; on any other address it refuses to
start without an API key (a key file or ``TBPS_API_KEY``). With a key, every data endpoint
wants ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time
(:func:`hmac.compare_digest` over SHA-256 digests: neither the content nor the length of the key
shows in the time taken). Liveness, readiness (without the key: ready or not, and why not; never what is
served), metrics (counts only, no data), the operator page and its static files, and the OpenAPI
description are public: the page asks the operator for the key and sends it with each call.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from tbps_runtime.errors import ConfigError, InputFileNotFoundError

KEY_ENVIRONMENT = "TBPS_API_KEY"
MIN_KEY_CHARS = 16
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                          # Swagger UI's own files (tbps_runtime.serve.routes.docs), served from the installed package
                          "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/favicon-32x32.png"})
STATIC_PREFIX = "/static/"
_KEY_ADVICE = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > key.txt"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def read_api_key(path: str | Path) -> str:
    """The key in the first line of ``path`` (surrounding whitespace dropped).

    Raises:
        InputFileNotFoundError: no such file.
        ConfigError: an empty, short (< 16 characters) or malformed key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"no API key file at {path}", code="api_key_file_missing", path=str(path))
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return check_api_key(lines[0] if lines else "", f"the first line of the API key file {path}")


def check_api_key(key: str, where: str) -> str:
    """``key`` stripped, if it can be a key: printable ASCII without spaces, 16 characters or more.

    Raises:
        ConfigError: naming ``where`` the key came from and how to make a good one.
    """
    key = key.strip()
    if not key:
        raise ConfigError(f"{where} is empty: put an API key there ({_KEY_ADVICE})")
    if not all(33 <= ord(c) < 127 for c in key):
        raise ConfigError(f"{where} is not an API key: use printable ASCII without spaces ({_KEY_ADVICE})")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{where} is {len(key)} characters long: an API key needs at least {MIN_KEY_CHARS} "
                          f"({_KEY_ADVICE})")
    return key


def resolve_api_key(api_key_file: str | Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from ``api_key_file`` (first), else ``TBPS_API_KEY``, else None (no key)."""
    if api_key_file is not None:
        return read_api_key(api_key_file)
    environ = os.environ if environ is None else environ
    value = environ.get(KEY_ENVIRONMENT)
    return None if value is None else check_api_key(value, KEY_ENVIRONMENT)


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve on a non-loopback address without a key.

    Raises:
        ConfigError: ``host`` is reachable from other machines and no key is configured.
    """
    if api_key is None and not is_loopback(host):
        raise ConfigError(f"the host {host} is reachable from other machines: an API key is required there (a key "
                          f"file or {KEY_ENVIRONMENT}); or serve on 127.0.0.1", code="serve_exposed_without_key",
                          host=host, environment=KEY_ENVIRONMENT)


def is_public(path: str) -> bool:
    """Whether ``path`` is served without a key (no data behind it)."""
    if path.startswith(STATIC_PREFIX):
        return "/" not in path[len(STATIC_PREFIX):]  # one file name, nothing deeper
    return path in PUBLIC_PATHS


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (raw ASGI headers)."""
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


def key_matches(presented: bytes | None, expected: bytes) -> bool:
    """Constant-time comparison of a presented key with the configured one."""
    digest = lambda value: hashlib.sha256(value).digest()  # noqa: E731  equal lengths: no length leak
    return hmac.compare_digest(digest(presented or b""), digest(expected)) and presented is not None


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """CORS origins as browsers send them (``https://host[:port]``), each checked.

    Raises:
        ConfigError: ``*``, or a value with a path, query or another scheme.
    """
    checked = []
    for origin in origins:
        parts = urlsplit(origin)
        if origin == "*" or parts.scheme not in ("http", "https") or not parts.netloc \
                or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"the CORS origin {origin!r} is not an origin: give scheme and host, e.g. "
                              "https://ops.example.org or http://localhost:3000 (no '*', no path)",
                              code="cors_origin_invalid", origin=origin)
        checked.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(checked)


__all__ = ["check_api_key", "check_exposure", "check_origins", "is_loopback", "is_public", "key_matches",
           "presented_key", "read_api_key", "resolve_api_key", "KEY_ENVIRONMENT"]
