"""``/docs``: Swagger UI over ``/openapi.json``, served from the installed ``swagger-ui-py`` package (Swagger UI 5,
which reads the OpenAPI 3.1 FastAPI writes; swagger-ui-bundle's 4.15 cannot), never from a CDN (sites are often
air-gapped). Its three files are listed once and served by name under
``/docs/``; public, like the description they show. Without the package, ``/docs`` answers 404 saying which
package to install (the API and ``/openapi.json`` work without it)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from tbps_runtime.serve.galleries import NotFound

DOCS_FILES = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
              "favicon-32x32.png": "image/png"}
SWAGGER_MISSING = "the offline API browser needs swagger-ui-py: pip install 'tbps[serve]' (/openapi.json works)"

router = APIRouter(include_in_schema=False)


def swagger_files() -> dict[str, Path]:
    """Swagger UI's files by name, from the installed ``swagger-ui-py`` (none when it is missing). Its package is
    found, not imported: only its static files are used."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return {name: folder / name for name in DOCS_FILES if (folder / name).is_file()}


_FILES = swagger_files()


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    if set(_FILES) != set(DOCS_FILES):
        raise NotFound(SWAGGER_MISSING)
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - API",
                               swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                               swagger_favicon_url="/docs/favicon-32x32.png",
                               oauth2_redirect_url="/docs/oauth2-redirect")


@router.get("/docs/oauth2-redirect")
def oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/docs/{name}")
def docs_file(name: str) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise NotFound("no such file of the API browser")
    return FileResponse(path, media_type=DOCS_FILES[name], headers={"Cache-Control": "public, max-age=86400"})
