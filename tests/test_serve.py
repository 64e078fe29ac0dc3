"""tbps serve: every endpoint and every refusal through FastAPI's test client, dynamic batching under
concurrency, the command's refusals before uvicorn starts, and the load benchmark in --quick mode.

The towers are the fake bundle's (tests/runtime_fakes.py: a crop's mean colour), so "red" finds the red
crop; the store is synthetic footage ingested with its ground-truth boxes, as in tests/test_ingest.py."""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="tbps serve needs FastAPI: pip install 'tbps[serve]'")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from cli_assertions import assert_user_error, index, run  # noqa: E402
from runtime_fakes import COLOURS, solid_image  # noqa: E402
from serve_clients import ReadyClient, error_of, serving, settings_for  # noqa: E402

from tbps_runtime.errors import ConfigError  # noqa: E402
from tbps_runtime.search import PersonSearch  # noqa: E402
from tbps_runtime.serve import Limits, ServeSettings, settings_from_environment  # noqa: E402
from tbps_runtime.serve import security  # noqa: E402
from tbps_runtime.serve.app import app_from_environment, create_app  # noqa: E402
from tbps_runtime.serve.batching import QueryBatcher  # noqa: E402
from tbps_runtime.serve.service import Service  # noqa: E402

KEY = "k" * 8 + "-serve-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain(fake_bundle, tmp_path_factory):
    """The six colour crops indexed with identities (the colour's name): g.npy + g.json."""
    folder = tmp_path_factory.mktemp("serve-crops")
    lines = []
    for colour in COLOURS:
        solid_image(folder / f"{colour}.png", colour)
        lines.append(f"{colour}.png\t{colour}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    output = tmp_path_factory.mktemp("serve-gallery") / "g.npy"
    index(fake_bundle, folder / "list.txt", output)
    return output


@pytest.fixture(scope="module")
def store_template(fake_bundle, tmp_path_factory):
    """Two cameras of synthetic footage (people dressed in one colour each) ingested with ground truth."""
    pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
    pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")
    from tbps_runtime.cli.ingest import ingest_command
    from tbps_runtime.synth.footage import generate_footage

    footage = Path(generate_footage(tmp_path_factory.mktemp("serve-footage") / "f", cameras=2, seconds=3.0,
                                    fps=10.0, size=(320, 180), people=4, seed=0, outfits="solid"))
    store = tmp_path_factory.mktemp("serve-store") / "s"
    for camera in ("cam1", "cam2"):
        result = run(ingest_command, [footage / f"{camera}.mp4", "--gallery", store, "--bundle", fake_bundle,
                                      "--detections", footage / f"{camera}.gt.txt", "--fps", 5, "--window", 1, "-q"])
        assert result.exit_code == 0, result.output
    return store


@pytest.fixture()
def store(store_template, tmp_path):
    """A copy of the store for one test (ingest and delete change it)."""
    return Path(shutil.copytree(store_template, tmp_path / "s"))










def b64_png(colour=None, size=(20, 10), fmt="PNG", rgb=None) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), rgb or COLOURS[colour]).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- liveness, readiness, metrics --------------------------------------------------------------------

def test_health_readiness_and_metrics_are_public_and_data_is_not(plain):
    with serving(plain, api_key=KEY) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}  # without the key: the status only
        ready = client.get("/readyz", headers=AUTH).json()
        fingerprint = json.loads(plain.with_suffix(".json").read_text())["fingerprint"]
        assert ready == {"status": "ready", "rows": 6, "bundle": fingerprint[:12], "store": False, "explain": False,
                         "cameras": []}
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        error_of(client.post("/search", json={"query": "red"}), 401, "unauthorized", "API key")
        error_of(client.get("/crops/0"), 401, "unauthorized")
        assert client.post("/search", json={"query": "red"}, headers=AUTH).status_code == 200


def test_readyz_is_503_until_the_warm_up_query_ran(plain, monkeypatch):
    release = threading.Event()
    real = Service.warm_up
    monkeypatch.setattr(Service, "warm_up", lambda self: (release.wait(10), real(self)))
    with TestClient(create_app(settings_for(plain))) as client:
        error_of(client.get("/readyz"), 503, "unavailable", "warming up")
        assert client.get("/healthz").status_code == 200
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_metrics_count_requests_batches_and_rows(plain):
    with serving(plain, api_key=KEY) as client:
        for query in ("red", "blue", "green"):
            assert client.post("/search", json={"query": query}, headers=AUTH).status_code == 200
        client.post("/search", json={"query": "red"})  # 401
        client.get("/crops/99", headers=AUTH)  # 404
        text = client.get("/metrics").text
    assert 'tbps_requests_total{endpoint="/search",status="200"} 3.0' in text
    assert 'tbps_requests_total{endpoint="/search",status="401"} 1.0' in text
    assert 'tbps_requests_total{endpoint="/crops/{row}",status="404"} 1.0' in text
    assert "tbps_gallery_rows 6.0" in text
    assert re.search(r"^tbps_batch_queries_count 4\.0$", text, re.M)  # the warm-up's query and the three
    assert re.search(r'^tbps_tower_seconds_count\{tower="text"\} 4\.0$', text, re.M)
    assert re.search(r"^tbps_rank_seconds_count 4\.0$", text, re.M)
    assert re.search(r'^tbps_request_seconds_count\{endpoint="/search"\} 4\.0$', text, re.M)


# ---- the API key -------------------------------------------------------------------------------------

def test_no_key_and_a_wrong_key_get_the_same_401_and_the_comparison_is_constant_time(plain, monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    with serving(plain, api_key=KEY) as client:
        missing = error_of(client.post("/search", json={"query": "red"}), 401, "unauthorized")
        wrong = error_of(client.post("/search", json={"query": "red"}, headers={"X-API-Key": KEY + "x"}), 401,
                         "unauthorized")
        assert missing == wrong
        assert client.post("/search", json={"query": "red"}, headers={"X-API-Key": KEY}).status_code == 200
        lower = {"authorization": f"bearer {KEY}"}
        assert client.post("/search", json={"query": "red"}, headers=lower).status_code == 200
        error_of(client.post("/search", json={"query": "red"}, headers={"Authorization": f"Basic {KEY}"}), 401,
                 "unauthorized")
    assert len(calls) >= 4 and all(isinstance(a, bytes) and isinstance(b, bytes) and len(a) == len(b) == 32
                                   for a, b in calls)


def test_a_refused_key_is_refused_before_the_body_is_read(plain):
    with serving(plain, api_key=KEY) as client:
        response = client.post("/search", content=b"x" * (2 * 2**20), headers={"Content-Type": "application/json"})
    error_of(response, 401, "unauthorized")


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=80)), max_size=4))
def test_presented_key_never_fails_on_any_headers(headers):
    found = security.presented_key(headers)
    assert found is None or (isinstance(found, bytes) and found == found.strip() and found)


def test_key_sources_and_their_refusals(tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"  {KEY}  \nsecond line\n")
    assert security.resolve_api_key(key_file, {}) == KEY
    assert security.resolve_api_key(None, {"TBPS_API_KEY": KEY}) == KEY
    assert security.resolve_api_key(None, {}) is None
    for text, fragment in (("", "empty"), ("short", "at least 16"), ("has a space in it ok", "printable")):
        key_file.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            security.read_api_key(key_file)
    with pytest.raises(FileNotFoundError):
        security.read_api_key(tmp_path / "nope")
    assert security.is_loopback("127.0.0.1") and security.is_loopback("127.8.0.1") and security.is_loopback("::1")
    assert security.is_loopback("localhost") and not security.is_loopback("0.0.0.0")
    assert not security.is_loopback("::") and not security.is_loopback("example.org")
    for bad in ("*", "example.org", "https://x.org/path", "ftp://x.org"):
        with pytest.raises(ConfigError, match="not an origin"):
            security.check_origins([bad])
    assert security.check_origins(["https://ops.example.org/", "http://localhost:3000"]) == \
        ("https://ops.example.org", "http://localhost:3000")


# ---- search ------------------------------------------------------------------------------------------

QUERIES = ["red", "a person in blue", "green shirt", "white", "yellow coat", "black"]


def test_search_equals_person_search_rank(plain, fake_bundle):
    expected = PersonSearch.from_bundle(fake_bundle, threads=1).rank(QUERIES, plain, k=4)
    with serving(plain) as client:
        response = client.post("/search", json={"queries": QUERIES, "k": 4})
        single = client.post("/search", json={"query": "red", "k": 2}).json()
    body = response.json()
    assert response.status_code == 200 and set(body) == {"results", "took_ms", "search", "request_id", "threshold",
                                                          "empty"}
    assert body["threshold"] is None and body["empty"] == [None] * len(QUERIES)  # a plain gallery: no store threshold
    assert body["search"] == "exact Eq. 14 over 6 row(s); no filter" and body["took_ms"] > 0
    assert body["request_id"] == response.headers["X-Request-ID"]
    for hits, matches in zip(body["results"], expected, strict=True):
        assert [(h["rank"], h["row"]) for h in hits] == [(m.rank, m.row) for m in matches]
        assert [h["score"] for h in hits] == pytest.approx([m.score for m in matches], abs=1e-5)
        assert [h["identity"] for h in hits] == [m.identity for m in matches]
        assert all(h["crop_url"] == f"/crops/{h['row']}" and "path" not in h for h in hits)
    assert single["results"][0][0]["identity"] == "red" and single["results"][0][0]["score"] == pytest.approx(3.0)
    assert len(single["results"]) == 1 and len(single["results"][0]) == 2


def test_min_score_drops_weak_hits(plain):
    with serving(plain) as client:
        hits = client.post("/search", json={"query": "red", "min_score": 2.5}).json()["results"][0]
        assert [h["identity"] for h in hits] == ["red"]
        error_of(client.post("/search", json={"query": "red", "min_score": "auto"}), 400, "bad_request",
                 "calibrated")
        error_of(client.post("/search", content=b'{"query": "red", "min_score": NaN}',
                             headers={"Content-Type": "application/json"}), 400, "bad_request", "finite")


@pytest.mark.parametrize("body, fragments", [
    ({"queries": ["red"] * 65}, ["1 to 64"]),
    ({"query": "red", "k": 101}, ["k must be 1 to 100"]),
    ({"query": "red", "k": 0}, ["k must be 1 to 100"]),
    ({"query": "red " * 251}, ["1004 characters", "at most 1000"]),
    ({"query": "   "}, ["empty"]),
    ({"query": "red", "queries": ["blue"]}, ["either query"]),
    ({"k": 3}, ["either query"]),
    ({"query": "red", "kk": 3}, ["kk"]),
    ({"query": 3}, ["query"]),
    ({"query": "red", "filters": {"cameras": ["cam1"]}}, ["need a store"]),
    ({"query": "red", "per_track": True}, ["need a store"]),
])
def test_search_refusals(plain, body, fragments):
    with serving(plain) as client:
        error_of(client.post("/search", json=body), 400, "bad_request", *fragments)


def test_a_library_error_names_the_request_field(plain):
    body = {"query": "red", "filters": {"since": "2026-03-02T15:00", "until": "2026-03-02T14:00"}}
    with serving(plain) as client:
        message = error_of(client.post("/search", json=body), 400, "bad_request",
                           "filters.until (2026-03-02T14:00:00.000Z) must be after filters.since (")
    assert "--" not in message


def test_a_body_that_is_not_json_is_a_400(plain):
    with serving(plain) as client:
        error_of(client.post("/search", content=b"{nope", headers={"Content-Type": "application/json"}), 400,
                 "bad_request", "not valid JSON")


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["query", "queries", "k", "filters", "min_score", "per_track", "x"]),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                                         | st.floats(allow_nan=False, allow_infinity=False),
                                         lambda inner: st.lists(inner, max_size=3)
                                         | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6),
                            max_size=4))
def test_any_json_body_gets_results_or_a_400_never_a_500(plain_client, body):
    response = plain_client.post("/search", json=body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error_of(response, 400, "bad_request")


@pytest.fixture(scope="module")
def plain_client(plain):
    with serving(plain) as client:
        yield client


# ---- bounds on bodies ----------------------------------------------------------------------------------

def test_oversize_bodies_are_refused_with_413(plain):
    with serving(plain) as client:
        big = json.dumps({"query": "red", "pad": "x" * 2**20}).encode()
        error_of(client.post("/search", content=big, headers={"Content-Type": "application/json"}), 413,
                 "too_large", "1 MiB")

        def chunks():  # no Content-Length: read until the limit, then refused
            for _ in range(40):
                yield b" " * 65536

        error_of(client.post("/search", content=chunks(), headers={"Content-Type": "application/json"}), 413,
                 "too_large")
        # /embed/image takes up to 16 MiB: this 2 MiB body is read, and refused for what it holds
        error_of(client.post("/embed/image", json={"images": ["AAAA" * (2**19)]}), 400, "bad_request",
                 "images[0]", "not a JPEG or PNG")


def test_small_limits_from_the_settings_apply(plain):
    limits = Limits(max_body_bytes=200, max_queries=2, max_k=5, max_query_chars=10)
    with serving(plain, limits=limits) as client:
        error_of(client.post("/search", json={"query": "red", "pad": "x" * 300}), 413, "too_large", "200 bytes")
        error_of(client.post("/search", json={"queries": ["a", "b", "c"]}), 400, "bad_request", "1 to 2")
        error_of(client.post("/search", json={"query": "red", "k": 6}), 400, "bad_request", "1 to 5")
        error_of(client.post("/search", json={"query": "a red person"}), 400, "bad_request", "at most 10")


# ---- crops -------------------------------------------------------------------------------------------

def test_crops_of_a_plain_gallery_and_path_tricks(plain, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    with serving(plain) as client:
        response = client.get("/crops/0")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        pixel = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))[5, 5]
        assert np.allclose(pixel, COLOURS["red"], atol=8)  # row 0 is red.png
        error_of(client.get("/crops/6"), 404, "not_found", "no row 6")
        for trick in ("/crops/..%2F..%2Fetc%2Fpasswd", "/crops/-1", "/crops/1.0", "/crops/%2Fetc%2Fpasswd",
                      "/crops/0%2F..%2F..%2Fg.json", "/crops/0x1"):
            response = client.get(trick)
            assert response.status_code in (400, 404), (trick, response.text)
            error_of(response, response.status_code, "bad_request" if response.status_code == 400 else "not_found")
        error_of(client.get("/crops/99999999999999999999999"), 400, "bad_request", "row")
    assert all("passwd" not in name and "g.json" not in name for name in opened)


# ---- embeddings --------------------------------------------------------------------------------------

def test_embed_text_as_json_and_base64(plain, fake_bundle):
    expected = PersonSearch.from_bundle(fake_bundle, threads=1).embed_texts(["red", "blue coat"])
    with serving(plain) as client:
        as_json = client.post("/embed/text", json={"texts": ["red", "blue coat"]}).json()
        as_b64 = client.post("/embed/text", json={"texts": ["red", "blue coat"], "encoding": "base64"}).json()
        error_of(client.post("/embed/text", json={"texts": []}), 400, "bad_request", "1 to 64")
        error_of(client.post("/embed/text", json={"texts": ["red"], "encoding": "npy"}), 400, "bad_request",
                 "encoding")
    assert as_json["shape"] == [2, 3, 4] and as_json["dtype"] == "float32"
    np.testing.assert_allclose(np.array(as_json["embeddings"], np.float32), expected, atol=1e-6)
    decoded = np.frombuffer(base64.b64decode(as_b64["embeddings"]), "<f4").reshape(as_b64["shape"])
    np.testing.assert_array_equal(decoded, np.array(as_json["embeddings"], np.float32))


def test_embed_image_matches_indexing_and_refuses_bad_images(plain, fake_bundle, tmp_path):
    red = solid_image(tmp_path / "red.png", "red")
    expected = PersonSearch.from_bundle(fake_bundle, threads=1).embed_images([red])
    with serving(plain) as client:
        response = client.post("/embed/image", json={"images": [base64.b64encode(red.read_bytes()).decode()]})
        assert response.status_code == 200 and response.json()["shape"] == [1, 3, 4]
        np.testing.assert_allclose(np.array(response.json()["embeddings"], np.float32), expected, atol=1e-6)
        assert client.post("/embed/image", json={"images": [b64_png("blue", fmt="JPEG")]}).status_code == 200
        error_of(client.post("/embed/image", json={"images": [b64_png("red"), "not base64!"]}), 400,
                 "bad_request", "images[1]", "base64")
        error_of(client.post("/embed/image", json={"images": [b64_png("red", fmt="GIF")]}), 400, "bad_request",
                 "images[0]", "GIF")
        error_of(client.post("/embed/image", json={"images": [b64_png("red", size=(1, 4097))]}), 400,
                 "bad_request", "images[0]", "4097x1", "4096x4096")
        truncated = base64.b64encode(base64.b64decode(b64_png("red", size=(300, 200), fmt="JPEG"))[:400]).decode()
        error_of(client.post("/embed/image", json={"images": [truncated]}), 400, "bad_request", "images[0]")
        error_of(client.post("/embed/image", json={"images": [b64_png("red")] * 65}), 400, "bad_request", "1 to 64")


# ---- explain -----------------------------------------------------------------------------------------

def test_explain_without_explain_graphs_is_a_409(plain):
    with serving(plain) as client:
        message = error_of(client.post("/explain", json={"query": "red", "rows": [0]}), 409, "conflict",
                           "no explain graphs")
    assert "--" not in message


def test_explain_with_explain_graphs(exported_bundle, synth_root, tmp_path):
    crops = sorted((Path(synth_root) / "imgs").rglob("*.png"))[:3]
    gallery = tmp_path / "g.npy"
    index(exported_bundle, _list_file(tmp_path, crops), gallery)
    manifest = json.loads((Path(exported_bundle) / "manifest.json").read_text())
    with serving(gallery) as client:
        assert client.get("/readyz").json()["explain"] is True
        response = client.post("/explain", json={"query": "a man in a red shirt", "rows": [2, 0]})
        error_of(client.post("/explain", json={"query": "red", "rows": [5]}), 404, "not_found", "no row 5")
        error_of(client.post("/explain", json={"query": "red", "rows": list(range(11))}), 400, "bad_request",
                 "1 to 10")
    body = response.json()
    assert response.status_code == 200 and set(body) == {"tokens", "token_weights", "heatmaps"}
    weights = np.array(body["token_weights"])
    assert weights.shape == (manifest["num_coarse"] + manifest["num_fine"], len(body["tokens"]))
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-4)
    assert "red" in body["tokens"] and len(body["heatmaps"]) == 2
    picture = Image.open(io.BytesIO(base64.b64decode(body["heatmaps"][0])))
    assert picture.format == "PNG" and picture.size == (96, 240)


def _list_file(tmp_path, paths):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


# ---- a store -----------------------------------------------------------------------------------------

def test_store_search_with_filters_equals_person_search_rank(store, fake_bundle):
    from tbps_runtime.store.open import open_store
    from tbps_runtime.store.rows import RowFilter

    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    opened = open_store(store)
    expected = search.rank(["red", "blue"], opened, k=5, row_filter=RowFilter(cameras=("cam2",)))
    per_track = search.rank(["red"], opened, k=3, per_track=True)
    with serving(store) as client:
        ready = client.get("/readyz").json()
        body = client.post("/search", json={"queries": ["red", "blue"], "k": 5,
                                            "filters": {"cameras": ["cam2"]}}).json()
        tracks = client.post("/search", json={"query": "red", "k": 3, "per_track": True}).json()
        error_of(client.post("/search", json={"query": "red", "filters": {"since": "yesterday"}}), 400,
                 "bad_request", "filters.since", "ISO-8601")
        error_of(client.post("/search", json={"query": "red", "filters": {"tracks": [-1]}}), 400, "bad_request",
                 "track")
        window = client.post("/search", json={"query": "red", "k": 50, "filters": {
            "since": "2026-03-02T14:00:01Z", "until": "2026-03-02T14:00:02Z"}}).json()
    assert ready["store"] is True and ready["cameras"] == ["cam1", "cam2"] and ready["rows"] == len(opened)
    assert body["search"] == f"exact Eq. 14 over {len(opened)} row(s) of the store; camera in cam2"
    for hits, matches in zip(body["results"], expected, strict=True):
        assert [h["row"] for h in hits] == [m.row for m in matches]
        assert [h["score"] for h in hits] == pytest.approx([m.score for m in matches], abs=1e-5)
        assert all(h["camera"] == "cam2" and "crop" not in h and h["crop_url"] == f"/crops/{h['row']}" for h in hits)
        assert {"camera", "source", "time", "time_iso", "offset", "frame", "box", "detector_score",
                "track"} <= set(hits[0])
    assert [h["row"] for h in tracks["results"][0]] == [m.row for m in per_track[0]]
    assert all(h["track_rows"] >= 1 for h in tracks["results"][0])
    assert window["results"][0] and all(h["time_iso"].startswith("2026-03-02T14:00:01") for h in window["results"][0])


def test_store_crops_come_from_the_store(store):
    from tbps_runtime.store.open import open_store

    opened = open_store(store)
    row = 3
    record = opened.records([row])[row]
    with serving(store) as client:
        response = client.get(f"/crops/{row}")
        error_of(client.get("/crops/100000"), 404, "not_found", "no row 100000")
    assert response.status_code == 200 and response.content == opened.crop_path(record.crop).read_bytes()


def test_gallery_info_hides_server_paths(store):
    with serving(store) as client:
        info = client.get("/gallery/info").json()
    assert "store" not in info and "bundle" not in info and str(store) not in json.dumps(info)
    assert info["rows"] > 0 and [c["camera"] for c in info["cameras"]] == ["cam1", "cam2"]


def test_ingest_then_search_then_delete(store):
    crops = [{"image": b64_png("red", size=(40, 20)), "camera": "door", "time": "2026-03-03T10:00:00Z",
              "track": 900, "box": [1, 2, 21, 42]},
             {"image": b64_png("blue", fmt="JPEG"), "camera": "door", "source": "gate-feed"}]
    with serving(store) as client:
        before = client.get("/readyz").json()["rows"]
        response = client.post("/gallery/ingest", json={"crops": crops})
        assert response.status_code == 200, response.text
        rows = response.json()["rows"]
        assert len(rows) == 2 and rows[0] >= before
        hits = client.post("/search", json={"query": "red", "filters": {"cameras": ["door"]}}).json()["results"][0]
        assert hits[0]["row"] == rows[0] and hits[0]["camera"] == "door" and hits[0]["source"] == "api"
        assert hits[0]["time_iso"] == "2026-03-03T10:00:00.000Z" and hits[0]["box"] == [1, 2, 21, 42]
        assert hits[0]["track"] == 900 and hits[0]["score"] == pytest.approx(3.0, abs=1e-3)
        crop = Image.open(io.BytesIO(client.get(f"/crops/{rows[0]}").content))
        assert crop.format == "JPEG" and crop.size == (20, 40)
        assert client.get("/readyz").json()["cameras"] == ["cam1", "cam2", "door"]
        dry = client.request("DELETE", "/gallery/rows", json={"filters": {"cameras": ["door"]}, "dry_run": True})
        assert dry.json() == {"dry_run": True, "rows": 2, "segments": 0, "crops": 0, "bytes": 0, "cameras": {"door": 2}}
        done = client.request("DELETE", "/gallery/rows", json={"filters": {"cameras": ["door"]}}).json()
        assert done["rows"] == 2 and done["segments"] == 1 and done["crops"] == 2 and done["cameras"] == {"door": 2}
        assert client.get("/readyz").json()["rows"] == before
        error_of(client.request("DELETE", "/gallery/rows", json={}), 400, "bad_request", "say what to delete")
        error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "0s"}), 400, "bad_request",
                 "everything")
        error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "soon"}), 400, "bad_request",
                 "not an age")
        error_of(client.post("/gallery/ingest", json={"crops": [{**crops[0], "time": "noon"}]}), 400,
                 "bad_request", "crops[0].time")
        error_of(client.post("/gallery/ingest", json={"crops": [crops[0], {**crops[1], "image": "AAAA"}]}), 400,
                 "bad_request", "crops[1].image")
        error_of(client.post("/gallery/ingest", json={"crops": [{**crops[0], "camera": ""}]}), 400,
                 "bad_request", "camera")
        error_of(client.post("/gallery/ingest", json={"crops": []}), 400, "bad_request", "1 to 64")
        assert client.get("/readyz").json()["rows"] == before  # nothing of the refused requests was kept


def test_removing_every_row_names_the_request_field_and_a_dry_run_counts_them(store):
    with serving(store) as client:
        total = client.get("/readyz").json()["rows"]
        dry = client.request("DELETE", "/gallery/rows", json={"older_than": "0s", "dry_run": True})
        assert dry.status_code == 200 and dry.json()["rows"] == total  # counted without "everything"
        message = error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "0s"}), 400,
                           "bad_request", f"all {total} rows of the store", 'send "everything": true')
        assert "--" not in message and str(store) not in message
        error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "soon"}), 400, "bad_request",
                 "older_than 'soon' is not an age")
        assert client.get("/readyz").json()["rows"] == total


def test_store_endpoints_on_a_plain_gallery_are_409(plain):
    with serving(plain) as client:
        error_of(client.post("/gallery/ingest", json={"crops": [{"image": b64_png("red"), "camera": "c"}]}), 409,
                 "conflict", "store")
        error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "1d"}), 409, "conflict", "store")
        error_of(client.get("/gallery/info"), 409, "conflict", "store")


# ---- errors nobody planned -----------------------------------------------------------------------------

def test_an_unexpected_exception_is_a_500_with_only_a_request_id(plain, caplog):
    with serving(plain) as client:
        service = client.app.state.service

        def broken(row):
            raise RuntimeError("secret detail /etc/shadow")

        service.crop_jpeg = broken
        with caplog.at_level(logging.ERROR, logger="tbps_runtime.serve.app"):
            response = client.get("/crops/0")
        message = error_of(response, 500, "internal")
    assert message == "internal error" and "secret" not in response.text and "shadow" not in response.text
    request_id = response.json()["request_id"]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info and "secret detail" in str(logged[0].exc_info[1])


def test_a_store_that_does_not_answer_is_a_503_that_hides_its_address(plain, monkeypatch, caplog):
    from tbps_runtime.errors import StoreError

    with serving(plain) as client:
        def unavailable(*args, **kwargs):
            raise StoreError("milvus://db.internal:19530/people: searching failed: deadline exceeded")

        monkeypatch.setattr(client.app.state.service.search, "rank", unavailable)
        with caplog.at_level(logging.ERROR, logger="tbps_runtime.serve.app"):
            response = client.post("/search", json={"query": "red"})
        error_of(response, 503, "unavailable", "not answering")
    assert response.headers["Retry-After"] and "db.internal" not in response.text
    assert any("deadline exceeded" in r.getMessage() for r in caplog.records)


def test_unknown_endpoints_and_methods(plain):
    with serving(plain) as client:
        error_of(client.get("/nope"), 404, "not_found", "no such endpoint")
        error_of(client.get("/search"), 405, "bad_request", "not allowed")
        response = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
        assert response.headers["X-Request-ID"] == "trace-42"
        assert client.get("/healthz", headers={"X-Request-ID": "bad id!"}).headers["X-Request-ID"] != "bad id!"


# ---- dynamic batching ----------------------------------------------------------------------------------

def test_32_concurrent_requests_each_get_their_own_answer(plain, fake_bundle):
    words = list(COLOURS)
    queries = [f"{words[i % 6]} {words[(i // 6) % 6]} " + "coat " * (i % 3) for i in range(32)]
    expected = PersonSearch.from_bundle(fake_bundle, threads=1).rank(queries, plain, k=6)
    with serving(plain, batch_window_ms=100, max_batch=32) as client:
        service = client.app.state.service
        slow = service._embed_texts
        service.batcher._embed = lambda texts: (time.sleep(0.05), slow(texts))[1]  # requests pile up meanwhile
        answers, barrier = [None] * 32, threading.Barrier(32)

        def ask(i):
            barrier.wait()
            answers[i] = client.post("/search", json={"query": queries[i], "k": 6}).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        text = client.get("/metrics").text
    for answer, matches in zip(answers, expected, strict=True):
        assert [h["row"] for h in answer["results"][0]] == [m.row for m in matches]
        assert [h["score"] for h in answer["results"][0]] == pytest.approx([m.score for m in matches], abs=1e-5)
    calls = float(re.search(r"^tbps_batch_queries_count (\S+)", text, re.M).group(1)) - 1  # less the warm-up's
    assert calls < 16, text  # 32 queries in far fewer text-tower calls


def test_batcher_groups_equal_keys_into_one_ranking_call_and_isolates_failures():
    embedded, ranked = [], []
    started, gate = threading.Event(), threading.Event()

    def embed(texts):
        if texts == ["blocker"]:
            started.set()
            gate.wait(5)
        embedded.append(list(texts))
        if "boom" in texts:
            raise ValueError("boom")
        return np.array([[[float(len(t))]] for t in texts], np.float32)  # (Q, 1, 1)

    def rank(embeddings):
        ranked.append(embeddings[:, 0, 0].tolist())
        return [f"rank:{int(v)}" for v in embeddings[:, 0, 0]]

    batcher = QueryBatcher(embed, window_s=0.2, max_batch=8)
    blocker = batcher.submit(["blocker"])  # holds the tower while the next requests queue up
    assert started.wait(5)
    futures = [batcher.submit(["a"], rank, key="k1"), batcher.submit(["bb", "ccc"], rank, key="k1"),
               batcher.submit(["dddd"], rank, key="k2"), batcher.submit(["eeeee"])]
    gate.set()
    blocker.result(5)
    assert [f.result(5) for f in futures[:3]] == [["rank:1"], ["rank:2", "rank:3"], ["rank:4"]]
    np.testing.assert_array_equal(futures[3].result(5), [[[5.0]]])
    assert embedded == [["blocker"], ["a", "bb", "ccc", "dddd", "eeeee"]]  # one tower call for the four
    assert sorted(ranked) == [[1.0, 2.0, 3.0], [4.0]]  # one ranking per key
    # a failing embedding is retried request by request: only its own request fails
    embedded.clear()
    good, bad = batcher.submit(["ok"]), batcher.submit(["boom"])
    assert good.result(5).shape == (1, 1, 1)
    with pytest.raises(ValueError, match="boom"):
        bad.result(5)
    batcher.close()


def test_a_lone_request_does_not_wait_for_the_window():
    """No other request open: the batcher embeds at once (a 60 s window would otherwise time this out)."""
    batcher = QueryBatcher(lambda texts: np.zeros((len(texts), 1, 1), np.float32), window_s=60.0, max_batch=8)
    for _ in range(3):
        assert batcher.submit(["alone"]).result(10).shape == (1, 1, 1)
    batcher.close()


def test_batcher_respects_max_batch_and_a_larger_request_goes_alone():
    sizes = []
    started, gate = threading.Event(), threading.Event()

    def embed(texts):
        started.set()
        gate.wait(5)
        sizes.append(len(texts))
        return np.zeros((len(texts), 1, 1), np.float32)

    batcher = QueryBatcher(embed, window_s=0.05, max_batch=4)
    first = batcher.submit(["x"])  # the worker takes it and waits at the gate
    assert started.wait(5)
    futures = [batcher.submit(["x"] * n) for n in (3, 2, 6, 1)]
    gate.set()
    for future in [first, *futures]:
        future.result(5)
    batcher.close()
    assert sizes == [1, 3, 2, 6, 1]  # in order, never more than 4 together; the 6 alone


def test_a_cancelled_request_is_skipped():
    started, gate = threading.Event(), threading.Event()
    calls = []

    def embed(texts):
        started.set()
        gate.wait(5)
        calls.append(list(texts))
        return np.zeros((len(texts), 1, 1), np.float32)

    batcher = QueryBatcher(embed, window_s=0.0, max_batch=8)
    first = batcher.submit(["a"])  # the worker takes it and waits at the gate: "a" cannot be cancelled now
    assert started.wait(5)
    abandoned, kept = batcher.submit(["b"]), batcher.submit(["c"])
    assert abandoned.cancel()
    gate.set()
    first.result(5)
    kept.result(5)
    batcher.close()
    assert calls == [["a"], ["c"]]


# ---- the page, CORS, OpenAPI -------------------------------------------------------------------------

def test_the_page_and_its_static_files(plain, tmp_path):
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<!doctype html><title>tbps</title>")
    (page / "app.js").write_text("console.log('tbps')")
    (tmp_path / "secret.txt").write_text("not served")
    with serving(plain, page_dir=page, api_key=KEY) as client:
        response = client.get("/")
        assert response.status_code == 200 and "<title>tbps</title>" in response.text
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        script = client.get("/static/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        for trick in ("/static/..%2Fsecret.txt", "/static/../secret.txt", "/static/secret.txt", "/static/"):
            response = client.get(trick)
            assert response.status_code in (401, 404) and "not served" not in response.text, trick
    with serving(plain, page_dir=tmp_path / "none") as client:
        error_of(client.get("/"), 404, "not_found", "page is not installed")


def test_cors_is_off_unless_origins_are_given(plain):
    preflight = {"Origin": "https://ops.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with serving(plain) as client:
        response = client.post("/search", json={"query": "red"}, headers={"Origin": "https://ops.example.org"})
        assert "access-control-allow-origin" not in response.headers
    with serving(plain, cors_origins=("https://ops.example.org",), api_key=KEY) as client:
        allowed = client.options("/search", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["X-Request-ID"]
        assert allowed.headers["access-control-allow-origin"] == "https://ops.example.org"
        other = client.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        refused = client.post("/search", json={"query": "red"}, headers={"Origin": "https://ops.example.org"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://ops.example.org"


def test_openapi_describes_every_body(plain):
    with serving(plain) as client:
        schema = client.get("/openapi.json").json()
    assert {"/search", "/embed/text", "/embed/image", "/explain", "/crops/{row}", "/gallery/ingest", "/gallery/rows",
            "/gallery/info", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    assert {"SearchRequest", "Filters", "EmbedTextRequest", "EmbedImageRequest", "ExplainRequest", "IngestRequest",
            "DeleteRequest", "ErrorResponse"} <= set(components)
    assert set(components["SearchRequest"]["properties"]) == {"query", "queries", "k", "filters", "min_score",
                                                              "per_track", "like_row"}
    assert schema["paths"]["/search"]["post"]["security"]


def test_openapi_states_the_bounds_of_every_request(plain):
    with serving(plain) as client:
        components = client.get("/openapi.json").json()["components"]["schemas"]

    def field(model, name):
        schema = components[model]["properties"][name]
        return next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)

    queries, k, rows = field("SearchRequest", "queries"), field("SearchRequest", "k"), field("ExplainRequest", "rows")
    assert (queries["minItems"], queries["maxItems"], queries["items"]["maxLength"]) == (1, 64, 1000)
    assert field("SearchRequest", "query")["maxLength"] == 1000 and (k["minimum"], k["maximum"]) == (1, 100)
    assert field("EmbedTextRequest", "texts")["maxItems"] == field("EmbedImageRequest", "images")["maxItems"] == 64
    assert rows["maxItems"] == 10 and rows["items"]["minimum"] == 0
    assert field("IngestRequest", "crops")["maxItems"] == 64 and field("IngestCropBody", "box")["maxItems"] == 4
    assert field("Filters", "tracks")["items"]["minimum"] == 0
    assert field("Filters", "cameras")["items"]["minLength"] == 1


def test_limits_above_the_request_bounds_are_refused(plain):
    with pytest.raises(ConfigError, match="max_queries is 65, above 64"):
        create_app(settings_for(plain, limits=Limits(max_queries=65)))


# ---- workers and the command ---------------------------------------------------------------------------

def test_settings_travel_to_workers_through_the_environment(plain, fake_bundle, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    settings = ServeSettings(gallery=str(plain), bundle=str(fake_bundle), port=0, workers=3,
                             api_key_file=str(key_file), cors_origins=("https://a.org", "http://b:1"),
                             batch_window_ms=2.5, max_batch=7, threads=1, quiet=True)
    environment = settings.to_environment()
    assert KEY not in json.dumps(environment)
    assert settings_from_environment(environment) == settings.with_key(KEY)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with ReadyClient(app_from_environment()) as client:
        assert client.post("/search", json={"query": "red"}, headers=AUTH).status_code == 200
        assert client.post("/search", json={"query": "red"}).status_code == 401
    with pytest.raises(ConfigError, match="TBPS_SERVE_GALLERY"):
        settings_from_environment({})


@pytest.fixture()
def no_uvicorn(monkeypatch):
    """uvicorn that records what it was asked to run instead of running it."""
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(("run", a, k)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(("server", self, sockets)))
    monkeypatch.delenv("TBPS_API_KEY", raising=False)
    return started


def test_serving_beyond_loopback_without_a_key_exits_2_before_anything_starts(plain, no_uvicorn, monkeypatch):
    from tbps_runtime.cli.serve import serve_command

    loads = []
    monkeypatch.setattr(Service, "load", classmethod(lambda cls, settings: loads.append(settings)))
    result = CliRunner().invoke(serve_command, ["--gallery", str(plain), "--host", "0.0.0.0"])
    assert_user_error(result, "--host 0.0.0.0", "API key")
    assert not no_uvicorn and not loads


@pytest.mark.parametrize("args, fragment", [
    (["--gallery", "nope.npy"], "gallery not found"),
    (["--cors-origin", "*"], "not an origin"),
    (["--api-key-file", "missing-key.txt"], "missing-key.txt"),
])
def test_the_command_refuses_bad_inputs_before_binding(plain, no_uvicorn, args, fragment):
    from tbps_runtime.cli.serve import serve_command

    gallery = [] if "--gallery" in args else ["--gallery", str(plain)]
    assert_user_error(run(serve_command, [*gallery, *args]), fragment)
    assert not no_uvicorn


def test_the_command_runs_uvicorn_on_a_loopback_socket(plain, fake_bundle, no_uvicorn):
    from tbps_runtime.cli.serve import serve_command

    result = run(serve_command, ["--gallery", plain, "--port", 0, "--threads", 1])
    assert result.exit_code == 0, result.output
    ((kind, server, sockets),) = no_uvicorn
    assert kind == "server" and sockets[0].getsockname()[0] == "127.0.0.1"
    port = sockets[0].getsockname()[1]
    sockets[0].close()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"http://127.0.0.1:{port}" in lines[0] and "6 rows" in lines[0]
    with ReadyClient(server.config.app) as client:
        assert client.post("/search", json={"query": "red"}).json()["results"][0][0]["identity"] == "red"


# ---- the load benchmark --------------------------------------------------------------------------------

def test_serve_benchmark_quick(plain, fake_bundle, tmp_path):
    from benchmarks import serve

    serve.main(["--quick", "--out", str(tmp_path), "--bundle", str(fake_bundle), "--gallery", str(plain)])
    data = json.loads((tmp_path / "serve.json").read_text())
    assert {"benchmark", "command", "machine", "rows", "levels", "ratio", "ratio_clients", "goal_ratio",
            "goal_met"} <= set(data)
    assert [level["clients"] for level in data["levels"]] == [1, 4] and data["rows"] == 6
    for level in data["levels"]:
        assert {"requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "mean_batch_queries"} <= set(level)
        assert level["errors"] == 0 and level["requests"] == 16
    text = (tmp_path / "serve.md").read_text()
    assert text.startswith("### ") and data["machine"]["cpu"] in text.splitlines()[0]
    assert "python -m benchmarks.serve --quick" in text
