"""The operator page of tbps serve in a real browser: Debian's chromium driven by Playwright for Python,
against the real service (uvicorn on 127.0.0.1, a free port, in a thread) over a store of synthetic
footage ingested with its ground-truth boxes and the fake bundle of tests/runtime_fakes.py, whose
towers score a crop by its mean colour (so "a person in red" finds the person dressed in red).

Skipped, with the reason, where chromium or the playwright package is absent. Run as a script, the
module takes the documentation's screenshots instead (see ``main``)::

    python tests/test_serve_page.py --gallery STORE --bundle runs/bench/m.bundle --query "..." -o docs
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.request
from pathlib import Path

from page_helpers import (HOSTILE, HOSTILE_CAMERA, KEY, app_for, browser, browsing, footage,  # noqa: F401
                          keyed_service, open_page, open_service, page, running, save_screenshot, screenshot_page,
                          search, store, wait_for_crops)


def red_rows(store: Path, footage) -> set[int]:
    """The store's rows that are the red person: ground-truth boxes of their id at the row's frame."""
    from tbps_runtime.store.open import open_store

    folder, meta = footage
    (red,) = [p for p in meta["people"] if p["captions"][0] == "A person in red."]
    boxes = {}  # (camera, 0-based frame) -> (x0, y0, x1, y1)
    for appearance in red["appearances"]:
        camera = appearance["camera"]
        for line in (folder / f"{camera}.gt.txt").read_text().splitlines():
            frame, pid, left, top, width, height = (float(v) for v in line.split(",")[:6])
            if int(pid) == red["id"]:
                boxes[camera, int(frame) - 1] = (left, top, left + width, top + height)
    opened = open_store(store)
    records = opened.records(list(range(len(opened))))
    return {row for row, r in records.items() if (r.camera, r.frame) in boxes and
            iou(r.box, boxes[r.camera, r.frame]) > 0.8}


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---- the tests -------------------------------------------------------------------------------------

def test_a_caption_finds_the_red_person_in_the_top_5_with_crops_and_status(page, open_service, store, footage):
    from tbps_runtime.store.open import open_store

    expected = red_rows(store, footage)
    assert expected  # the red person was ingested
    open_page(page, open_service)
    assert page.locator("#key-box").is_hidden()  # no key asked on a service without one
    assert page.is_checked("#per-track")  # one hit per track by default; rows here
    page.uncheck("#per-track")
    hits = search(page, "a person in red")
    rows = len(open_store(store))
    assert len(hits) == min(20, rows)  # k's default is 20
    assert int(hits[0]["row"]) in expected and {int(h["row"]) for h in hits[:5]} & expected
    assert [int(h["rank"]) for h in hits] == list(range(1, len(hits) + 1))
    summary = page.text_content("#summary")
    assert f"{len(hits)} hit(s) · exact Eq. 14 over {rows} row(s) of the store; no filter · " in summary
    assert summary.endswith(" ms")
    first = page.locator("#hits .hit").first
    assert first.locator(".camera").text_content() == hits[0]["camera"]
    assert first.locator("time").get_attribute("title") == "UTC " + hits[0]["time"].replace(".000Z", "Z")
    page.wait_for_function("() => [...document.querySelectorAll('#hits img')].every(i => i.complete && "
                           "i.naturalWidth > 0 && i.src.startsWith('blob:'))")


def test_a_camera_filter_applies_and_a_min_score_can_leave_nothing(page, open_service):
    open_page(page, open_service)
    cameras = page.eval_on_selector_all("#cameras option", "nodes => nodes.map(n => n.textContent)")
    assert cameras == sorted(["cam1", "cam2", HOSTILE_CAMERA])
    page.select_option("#cameras", ["cam2"])
    hits = search(page, "a person in red")
    assert hits and {h["camera"] for h in hits} == {"cam2"}
    assert "camera in cam2" in page.text_content("#summary")
    page.fill("#min-score", "100")  # above any score: K = 3 cosines at most
    hits = search(page, "a person in blue")
    assert hits == [] and page.locator("#empty").is_visible()
    assert page.text_content("#empty").startswith("Nothing found above the minimum score. (0 hits at >= 100 (given "
                                                  "threshold); best score ")  # the service's explanation
    page.fill("#min-score", "high")
    page.press("#query", "Enter")
    assert page.locator("#banner").is_visible() and "min score" in page.text_content("#banner-message")


def test_a_time_window_in_local_time_is_sent_as_utc(browser, open_service):
    with browsing(browser, "Europe/Paris") as page:  # UTC+1 in March
        open_page(page, open_service)
        page.fill("#since", "2026-03-02T15:00:01")
        page.fill("#until", "2026-03-02T15:00:02")
        hits = search(page, "a person in red")
        assert hits and all(h["time"].startswith("2026-03-02T14:00:01") for h in hits)
        assert "2026-03-02T14:00:01.000Z <= time < 2026-03-02T14:00:02.000Z" in page.text_content("#summary")
        first = page.locator("#hits .hit time").first
        assert first.text_content().endswith("15:00:01") and first.get_attribute("title").startswith(
            "UTC 2026-03-02T14:00:01")


def test_a_hostile_query_and_a_hostile_camera_name_show_as_text(page, open_service):
    open_page(page, open_service)
    images_before = page.locator("img").count()
    page.select_option("#cameras", [HOSTILE_CAMERA])
    hits = search(page, HOSTILE)
    assert page.text_content("#echo") == f"“{HOSTILE}”"
    assert len(hits) == 1 and hits[0]["camera"] == HOSTILE_CAMERA
    assert page.locator("#hits .camera").text_content() == HOSTILE_CAMERA
    page.wait_for_timeout(100)  # an injected onerror would have fired by now
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("img").count() == images_before + len(hits)  # the crops only


def test_a_hit_opens_its_panel_with_the_track_by_keyboard(page, open_service):
    open_page(page, open_service)
    hits = search(page, "a person in red")
    assert page.locator("#explain").is_hidden()  # /readyz: explain false
    page.locator("#hits .hit").first.focus()
    page.keyboard.press("Enter")
    assert page.locator("#panel").is_visible()
    page.wait_for_selector("#track-hits .track-hit")
    track = page.eval_on_selector_all("#track-hits .track-hit", "nodes => nodes.map(n => Object.assign({}, n.dataset))")
    assert track and {t["track"] for t in track} == {hits[0]["track"]}
    assert hits[0]["row"] in {t["row"] for t in track}
    assert [t["time"] for t in track] == sorted(t["time"] for t in track)
    facts = page.eval_on_selector_all("#panel-facts dt, #panel-facts dd", "nodes => nodes.map(n => n.textContent)")
    assert facts[facts.index("camera") + 1] == hits[0]["camera"] and facts[facts.index("track") + 1] == hits[0]["track"]
    assert facts[facts.index("source") + 1] == hits[0]["camera"] + ".mp4"  # the file's name, not the server's path
    assert page.locator("#explain").is_hidden()
    page.keyboard.press("Escape")
    assert page.locator("#panel").is_hidden()
    assert page.evaluate("document.activeElement.dataset.row") == hits[0]["row"]


def test_a_plain_gallery_gets_no_store_filters_and_shows_identities(page, fake_bundle, tmp_path):
    from cli_assertions import index
    from runtime_fakes import COLOURS, solid_image

    lines = [f"{solid_image(tmp_path / f'{colour}.png', colour).name}\t{colour}" for colour in COLOURS]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    index(fake_bundle, tmp_path / "list.txt", tmp_path / "g.npy")
    with running(app_for(tmp_path / "g.npy")) as base:
        open_page(page, base)
        assert page.locator(".store-only").evaluate_all("nodes => nodes.every(n => n.hidden)")
        assert search(page, "green")[0]["row"] == str(list(COLOURS).index("green"))
        assert page.locator("#hits .hit").first.locator(".identity").text_content() == "id green"
        assert page.locator("#hits .hit time").count() == 0
        page.locator("#hits .hit").first.click()
        assert page.locator("#track").is_hidden()  # no tracks in a plain gallery


def test_a_hit_never_shows_stream_credentials_and_crops_come_only_from_crops_urls(page, open_service):
    """A /search answer made here: a stream source with credentials, a crop URL of another origin."""
    hit = {"rank": 1, "score": 2.5, "row": 3, "camera": "door", "track": None, "time": 1772460001.5,
           "time_iso": "2026-03-02T14:00:01.500Z", "source": "rtsp://admin:secret@10.0.0.5:554/s1?token=t",
           "box": [1.4, 2.6, 30, 90], "frame": 15}
    answer = {"results": [[hit, {**hit, "rank": 2, "row": 4, "crop_url": "https://example.org/x.jpg"}]],
              "took_ms": 1.0, "search": "made here", "request_id": "0123456789abcdef"}
    answer["results"][0][0]["crop_url"] = "/crops/3"
    page.route("**/search", lambda route: route.fulfill(json=answer))
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    open_page(page, open_service)
    search(page, "anyone")
    page.locator("#hits .hit").first.click()
    facts = page.eval_on_selector_all("#panel-facts dt, #panel-facts dd", "nodes => nodes.map(n => n.textContent)")
    assert facts == ["score", "2.500", "camera", "door", "time", "2 Mar 2026, 14:00:01", "UTC",
                     "2026-03-02T14:00:01.500Z", "box", "1, 3, 30, 90", "frame", "15",
                     "source", "rtsp://10.0.0.5:554/s1"]
    assert "secret" not in page.content() and "token" not in page.content()
    page.wait_for_selector("#hits .hit[data-row='4'] img.missing")
    assert not [url for url in requested if "example.org" in url]
    assert any(url.endswith("/crops/3") for url in requested)


def png_base64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 8), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_show_attention_draws_the_heat_map_and_shades_the_words(page, open_service):
    """The fake bundle has no explain graphs: /readyz and /explain are answered here, as the service would."""
    ready = json.loads(urllib.request.urlopen(open_service + "/readyz").read())
    page.route("**/readyz", lambda route: route.fulfill(json={**ready, "explain": True}))
    sent = []
    explanation = {"tokens": ["[CLS]", "a", "red", "co", "##at", "<b>x</b>", "[SEP]"],
                   "token_weights": [[0.5, 0.1, 0.8, 0.1, 0.0, 0.0, 0.5], [0.5, 0.3, 0.4, 0.3, 0.0, 0.0, 0.5]],
                   "heatmaps": [png_base64()]}
    page.route("**/explain", lambda route: (sent.append(route.request.post_data_json),
                                            route.fulfill(json=explanation)))
    open_page(page, open_service)
    hits = search(page, "a person in red")
    page.locator("#hits .hit").first.click()
    page.click("#explain")
    page.wait_for_selector("#attention:not([hidden])")
    assert sent == [{"query": "a person in red", "rows": [int(hits[0]["row"])]}]
    # Means over the two decoder tokens: a 0.2, red 0.6, co 0.2, at 0, <b>x</b> 0; shade = round(9 * w / 0.6).
    words = page.eval_on_selector_all("#words span", "nodes => nodes.map(n => [n.textContent, n.className])")
    assert words == [["a", "w3"], ["red", "w9"], ["co", "w3"], ["at", "w0"], ["<b>x</b>", "w0"]]
    assert page.text_content("#words") == "a red coat <b>x</b>"  # a word piece joins its word
    assert page.locator("#words b").count() == 0
    assert page.get_attribute("#heatmap", "src") == "data:image/png;base64," + explanation["heatmaps"][0]
    page.wait_for_function("() => document.getElementById('heatmap').naturalWidth === 4")


def test_an_api_key_is_asked_for_a_wrong_one_is_an_error_and_the_right_one_searches(page, keyed_service):
    open_page(page, keyed_service)
    assert page.locator("#key-box").is_hidden()
    page.fill("#query", "a person in red")
    page.press("#query", "Enter")
    page.wait_for_selector("#key-box:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.locator("#hits .hit").count() == 0 and page.locator("#banner").is_hidden()

    page.fill("#api-key", "not-the-key-0123456789")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#banner:not([hidden])")
    assert "a valid API key is required" in page.text_content("#banner-message")
    assert re.fullmatch(r"request [0-9a-f]{16}", page.text_content("#banner-request"))
    assert page.evaluate("sessionStorage.getItem('tbps.apiKey')") is None  # a refused key is not kept
    assert "refused" in page.text_content("#key-hint")

    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")  # and the query in the box runs again
    page.wait_for_selector("#hits .hit")
    assert page.locator("#banner").is_hidden()
    assert page.evaluate("sessionStorage.getItem('tbps.apiKey')") == KEY
    page.wait_for_function("() => [...document.querySelectorAll('#hits img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")  # crops fetched with the key, shown as blob: URLs
    open_page(page, keyed_service)  # the key stays for this tab
    assert search(page, "a person in blue")


def test_the_page_files_use_no_inline_code_and_no_network():
    page_dir = Path(__file__).parents[1] / "tbps_runtime" / "serve" / "page"
    html = (page_dir / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and "style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    script = (page_dir / "app.js").read_text()
    assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function", script)
    for name in ("index.html", "app.js", "style.css"):
        assert not re.search(r"https?://", (page_dir / name).read_text()), name


# ---- the documentation's screenshots ---------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Screenshots of the page at 1280x800 for docs/guides/serve.md: the results grid (serve.png) and a
    hit's side panel with its track (serve-track.png)."""
    with screenshot_page(argv, main.__doc__, "the rank of the hit whose panel is shown") as (args, page):
        page.evaluate("document.activeElement.blur()")
        save_screenshot(page, args.output / "serve.png")
        page.locator("#hits .hit").nth(args.hit - 1).click()
        page.wait_for_selector("#track-hits .track-hit")
        wait_for_crops(page, "#panel img.crop, #panel-crop")
        save_screenshot(page, args.output / "serve-track.png")


if __name__ == "__main__":
    main()
