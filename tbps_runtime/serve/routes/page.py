"""``/`` and ``/static/{name}``: the operator page, public (it asks for the key and sends it with each
call). Its files are listed once when the application is made; a request's name is only a key."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from tbps_runtime.serve.deps import PageFiles
from tbps_runtime.serve.galleries import NotFound

# The page may load only its own files; it talks to this API only; no framing, no referrer leaks.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                           "media-src 'self' blob:; "  # a hit's clip: /clips, or fetched with the key
                                           "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                           "base-uri 'none'; form-action 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}

router = APIRouter(include_in_schema=False)


def page_files(page_dir: Path) -> dict[str, Path]:
    """The files of the page in ``page_dir`` by name (none when it is not installed)."""
    return {p.name: p for p in sorted(page_dir.iterdir()) if p.is_file()} if page_dir.is_dir() else {}


@router.get("/")
def page(files: PageFiles) -> Response:
    if "index.html" not in files:
        raise NotFound("the operator page is not installed (no tbps_runtime/serve/page/index.html); the API works "
                       "without it")
    return FileResponse(files["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/static/{name}")
def static(name: str, files: PageFiles) -> Response:
    path = files.get(name)
    if path is None:
        raise NotFound("no such file of the operator page")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)
