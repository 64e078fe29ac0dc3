"""The browser half of the page tests: Debian's chromium driven by Playwright, the real service in a thread,
the store of synthetic footage they search, and the screenshot helpers (shared by test_serve_page,
test_hit_context_page and test_follow)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_CHROMIUM = "apt-get update && apt-get install -y chromium"
VIEWPORT = {"width": 1280, "height": 800}
KEY = "page-test-key-0123456789abcdef"
HOSTILE = '<img src=x onerror="window.__pwned=1">'
HOSTILE_CAMERA = '<img src=x onerror="window.__pwned=2">'
# Records Content-Security-Policy violations (the page must need no inline script or style).
RECORD_CSP = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
              "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
TIMEOUT_MS = 10_000


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install playwright (its browser download is not needed)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: {INSTALL_CHROMIUM}"
    return None


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread until the block ends, once
    ``/readyz`` says ready. Yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tbps-page-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the service did not get ready"
                time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, through Playwright (its own browser download does not work here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def app_for(gallery: Path, bundle: Path | None = None, api_key: str | None = None) -> Any:
    from tbps_runtime.serve import ServeSettings
    from tbps_runtime.serve.app import create_app

    settings = ServeSettings(gallery=str(gallery), bundle=None if bundle is None else str(bundle), threads=1,
                             quiet=True, api_key=api_key)
    return create_app(settings)


def search(page: Any, query: str) -> list[dict[str, str]]:
    """Type ``query``, press Enter, wait for the answer; the hits' data attributes, best first."""
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_function("(q) => document.getElementById('echo').textContent === '“' + q + '”'", arg=query,
                           timeout=TIMEOUT_MS)
    return page.eval_on_selector_all("#hits .hit", "nodes => nodes.map(n => Object.assign({}, n.dataset))")


def open_page(page: Any, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#search-button:not([disabled])", timeout=TIMEOUT_MS)


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two cameras, 3 s at 10 fps, four people each dressed in one colour (ground truth in footage.json)."""
    pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
    pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")
    from tbps_runtime.synth.footage import generate_footage

    folder = Path(generate_footage(tmp_path_factory.mktemp("page-footage") / "f", cameras=2, seconds=3.0, fps=10.0,
                                   size=(320, 180), people=4, seed=0, outfits="solid"))
    return folder, json.loads((folder / "footage.json").read_text())


@pytest.fixture(scope="module")
def store(browser, footage, fake_bundle, tmp_path_factory):
    """The footage ingested with its ground-truth boxes, plus one black crop from a camera whose name is
    markup (data from the service must show as text too)."""
    from cli_assertions import run

    from tbps_runtime.cli.ingest import ingest_command
    from tbps_runtime.serve import ServeSettings
    from tbps_runtime.serve.service import IngestCrop, Service

    folder, _ = footage
    path = tmp_path_factory.mktemp("page-store") / "s"
    for camera in ("cam1", "cam2"):
        result = run(ingest_command, [folder / f"{camera}.mp4", "--gallery", path, "--bundle", fake_bundle,
                                      "--detections", folder / f"{camera}.gt.txt", "--fps", 5, "--window", 1, "-q"])
        assert result.exit_code == 0, result.output
    service = Service.load(ServeSettings(gallery=str(path), threads=1))
    try:
        service.ingest([IngestCrop(np.zeros((20, 10, 3), np.uint8), HOSTILE_CAMERA, time=1772460001.0, track=999)])
    finally:
        service.close()
    return path


@pytest.fixture(scope="module")
def open_service(store):
    with running(app_for(store)) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_service(store):
    with running(app_for(store, api_key=KEY)) as base:
        yield base


@contextlib.contextmanager
def browsing(browser: Any, timezone: str = "UTC") -> Iterator[Any]:
    """A fresh tab at 1280x800 in ``timezone``; on leaving, checks that nothing broke the CSP."""
    context = browser.new_context(viewport=VIEWPORT, timezone_id=timezone, locale="en-GB")
    context.add_init_script(RECORD_CSP)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        assert page.evaluate("window.__csp") == []  # the page works under the service's CSP as it is
    finally:
        context.close()


@contextlib.contextmanager
def offline(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    """A tab whose network reaches 127.0.0.1 only, as on an air-gapped site; yields it and the list of
    every other address it tried (each one refused)."""
    from urllib.parse import urlsplit

    tried: list[str] = []

    def only_this_machine(route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            tried.append(route.request.url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport=VIEWPORT, locale="en-GB", service_workers="block")
    context.route("**/*", only_this_machine)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page, tried
    finally:
        context.close()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """``directory``'s files over HTTP (Python's server: no range requests) on 127.0.0.1 until the block
    ends. Yields its ``127.0.0.1:PORT``."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="tbps-folder-server", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture()
def page(browser):
    with browsing(browser) as opened:
        yield opened


def save_screenshot(page: Any, path: Path) -> None:
    """The viewport as a 256-colour PNG (a third of the size; the page and the crops are flat colours)."""
    from PIL import Image

    from tbps_runtime.atomic import atomic_write

    picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    atomic_write(path, lambda stream: picture.save(stream, format="PNG", optimize=True))


def wait_for_crops(page: Any, selector: str) -> None:
    page.wait_for_function("(s) => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=selector)


@contextlib.contextmanager
def screenshot_page(argv: list[str] | None, description: str, hit_help: str) -> Iterator[tuple[Any, Any]]:
    """For a screenshot script: parse ``--gallery --bundle --query --hit -o``, serve the gallery, open the
    page at 1280x800 in chromium and run the query with its crops loaded; yields (arguments, page)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gallery", required=True, type=Path)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--query", required=True)
    parser.add_argument("--hit", type=int, default=1, help=hit_help)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    reason = missing_browser()
    if reason:
        sys.exit(f"error: {reason}")
    with running(app_for(args.gallery, args.bundle)) as base, chromium() as browser:
        context = browser.new_context(viewport=VIEWPORT, timezone_id="UTC", locale="en-GB")
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        open_page(page, base)
        search(page, args.query)
        wait_for_crops(page, "#hits img")
        yield args, page
        context.close()
