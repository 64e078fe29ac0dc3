"""The operator page's hit context in a real browser (chromium + Playwright, as tests/test_serve_page.py,
whose service, store and browser fixtures these tests share): a hit's full frame, its clip played by the
page's <video> through HTTP range requests (and from a blob: URL when the service wants a key), find
similar, a search restored from a shared address, and the export of a result list as CSV and as JSON
with the crops. Skipped, with the reason, where chromium or the playwright package is missing."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest

from page_helpers import (KEY, TIMEOUT_MS, browser, browsing, footage, keyed_service, offline,  # noqa: F401
                          open_page, open_service, page, search, store)


def open_first_hit(page, base, query="a person in red"):
    open_page(page, base)
    hits = search(page, query)
    page.locator("#hits .hit").first.click()
    page.wait_for_selector("#panel:not([hidden])")
    return hits


def test_a_hits_panel_shows_its_full_frame_with_the_box(page, open_service):
    open_first_hit(page, open_service)
    page.wait_for_function("() => { const i = document.getElementById('frame-image'); "
                           "return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); }")
    assert page.evaluate("[document.getElementById('frame-image').naturalWidth, "
                         "document.getElementById('frame-image').naturalHeight]") == [320, 180]  # the footage's
    assert "box drawn" in page.text_content("#frame-status")


def test_the_clip_plays_in_the_page_through_range_requests(page, open_service):
    ranges = []
    page.on("response", lambda r: ranges.append((r.status, r.request.headers.get("range"), r.headers))
            if "/clips/" in r.url else None)
    open_first_hit(page, open_service)
    page.click("#clip-play")
    page.wait_for_function("() => document.getElementById('clip-video').readyState >= 2", timeout=TIMEOUT_MS)
    duration = page.evaluate("document.getElementById('clip-video').duration")
    assert 1.0 < duration <= 3.2  # the 3 s footage, cut at keyframes
    page.evaluate("document.getElementById('clip-video').play()")
    page.wait_for_function("() => document.getElementById('clip-video').currentTime > 0.3")
    assert "before and after the hit" in page.text_content("#clip-status")
    assert ranges and all(status == 206 for status, _, _ in ranges)  # every answer a byte range
    assert any(r is not None and r.startswith("bytes=") for _, r, _ in ranges[1:])  # the <video>'s own
    assert all(h.get("accept-ranges") == "bytes" for _, _, h in ranges)


def test_find_similar_ranks_the_hit_first_and_goes_in_the_address(page, open_service):
    open_first_hit(page, open_service)
    row = page.get_attribute("#hits .hit >> nth=0", "data-row")
    page.click("#similar")
    page.wait_for_function("(r) => document.getElementById('echo').textContent === 'like row ' + r", arg=row)
    hits = page.eval_on_selector_all("#hits .hit", "nodes => nodes.map(n => Object.assign({}, n.dataset))")
    assert hits[0]["row"] == row and float(hits[0]["score"]) == pytest.approx(3.0, abs=1e-3)  # K cosines of 1
    assert "like row " + row in page.text_content("#summary")
    assert f"like={row}" in page.url and "q=" not in page.url


def test_a_shared_address_restores_the_search(browser, open_service):  # noqa: F811
    with browsing(browser) as page:
        page.goto(open_service + "/#q=a+person+in+red&k=3&camera=cam2&per_track=0")
        page.wait_for_function("() => document.getElementById('echo').textContent === '“a person in red”'")
        assert page.input_value("#query") == "a person in red" and page.input_value("#k") == "3"
        assert not page.is_checked("#per-track")
        assert page.eval_on_selector_all("#cameras option:checked", "ns => ns.map(n => n.value)") == ["cam2"]
        cameras = page.eval_on_selector_all("#hits .hit", "ns => ns.map(n => n.dataset.camera)")
        assert 0 < len(cameras) <= 3 and set(cameras) == {"cam2"}
        assert "key" not in page.url.lower()


def test_the_results_export_as_csv_and_as_json_with_crops(page, open_service, tmp_path):
    open_page(page, open_service)
    hits = search(page, "a person in blue")
    with page.expect_download() as download:
        page.click("#export-csv")
    path = Path(download.value.path())
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["row"] for r in rows] == [h["row"] for h in hits]
    assert rows[0]["camera"] == hits[0]["camera"] and rows[0]["crop_url"] == "/crops/" + hits[0]["row"]
    with page.expect_download() as download:
        page.click("#export-json")
    doc = json.loads(Path(download.value.path()).read_text())
    assert doc["query"] == "a person in blue" and len(doc["hits"]) == len(hits)
    from PIL import Image

    crop = Image.open(io.BytesIO(base64.b64decode(doc["hits"][0]["crop_jpeg_base64"])))
    assert crop.format == "JPEG" and crop.width > 0


def test_with_a_key_the_frame_and_clip_are_fetched_with_it(page, keyed_service):
    open_page(page, keyed_service)
    page.fill("#query", "a person in red")
    page.press("#query", "Enter")  # 401: the page asks for the key
    page.wait_for_selector("#key-box:not([hidden])")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")  # and the query runs again
    page.wait_for_selector("#hits .hit")
    page.locator("#hits .hit").first.click()
    page.wait_for_function("() => document.getElementById('frame-image').naturalWidth > 0")
    page.click("#clip-play")
    page.wait_for_function("() => document.getElementById('clip-video').readyState >= 2")
    assert page.evaluate("document.getElementById('clip-video').currentSrc").startswith("blob:")


# ---- the documentation's screenshots ---------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Screenshots of a hit's context at 1280x800 for docs/guides/serve.md: its panel with the full frame
    (serve-frame.png), its clip playing (serve-clip.png), and the find-similar results (serve-similar.png)."""
    from page_helpers import save_screenshot, screenshot_page, wait_for_crops

    with screenshot_page(argv, main.__doc__, "the rank of the hit whose context is shown") as (args, page):
        page.locator("#hits .hit").nth(args.hit - 1).click()
        page.wait_for_function("() => document.getElementById('frame-image').naturalWidth > 0")
        page.evaluate("document.activeElement.blur()")
        save_screenshot(page, args.output / "serve-frame.png")
        page.click("#clip-play")
        page.wait_for_function("() => document.getElementById('clip-video').readyState >= 2")
        page.locator("#clip").scroll_into_view_if_needed()
        page.evaluate("document.getElementById('clip-video').play()")
        page.wait_for_timeout(1500)
        page.evaluate("document.getElementById('clip-video').pause(); document.activeElement.blur()")
        save_screenshot(page, args.output / "serve-clip.png")
        page.click("#similar")
        page.wait_for_function("() => document.getElementById('echo').textContent.startsWith('like row')")
        wait_for_crops(page, "#hits img")
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        save_screenshot(page, args.output / "serve-similar.png")


if __name__ == "__main__":
    main()


def test_the_api_browser_works_with_the_network_cut_to_this_machine(browser, open_service):  # noqa: F811
    """/docs on an air-gapped site: Swagger UI comes from the service itself and lists the operations."""
    with offline(browser) as (page, tried):
        page.goto(open_service + "/docs")
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=TIMEOUT_MS)
        paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
        title = page.text_content(".swagger-ui .info .title")
    assert tried == []  # nothing asked of any other host
    assert "/search" in {p.replace("\u200b", "") for p in paths} and "tbps" in title.lower()
