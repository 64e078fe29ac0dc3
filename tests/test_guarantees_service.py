"""tbps serve under hostile input, races and failing disks (issue 24, the service's part): nothing leaks,
nothing 500s, nothing is lost.

- /readyz tells a caller without the key whether the service is ready, never what it serves;
- no error answer names a file of the server's (the log does);
- the OpenAPI description states every bound the request models hold: a fuzzer working from it finds no
  5xx, no answer outside the description, and no schema-valid request refused by request validation;
- a store moved, deleted, replaced or damaged under the running service is a 503 that says so;
- refusals name the request's fields, never command-line options; a dry-run delete needs no confirmation;
- a damaged upload (a PNG whose pixel data stops early, a JPEG whose scan does) is a 400, never embedded;
- a time out of 1900..3000 in any request field is a 400 naming the field.

The towers are the fake bundle's (tests/runtime_fakes.py); the store is six crops, one colour each, on two
cameras, appended through the service itself (no footage needed)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="tbps serve needs FastAPI: pip install 'tbps[serve]'")

from PIL import Image  # noqa: E402

from runtime_fakes import COLOURS  # noqa: E402
from serve_clients import error_of, serving  # noqa: E402

from tbps_runtime.errors import BundleError, ConfigError, DataError  # noqa: E402
from tbps_runtime.search import PersonSearch  # noqa: E402
from tbps_runtime.serve import ServeSettings  # noqa: E402
from tbps_runtime.serve.app import create_app  # noqa: E402

KEY = "guarantees-service-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
OPTION = re.compile(r"(?<![\w/.-])--[a-z][\w-]*")  # a command-line option, as tests/test_messages.py spots them


# ---- fixtures and helpers --------------------------------------------------------------------------------







def b64_image(pixels: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def solid(colour: str, size=(40, 20)) -> str:
    return b64_image(np.full((*size, 3), COLOURS[colour], np.uint8))


@pytest.fixture(scope="module")
def store_template(fake_bundle, tmp_path_factory):
    from tbps_runtime.store.open import create_store

    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    _, slots, dim = search.embed_texts(["red"]).shape
    path = tmp_path_factory.mktemp("guarantees-service") / "s"
    create_store(path, fingerprint=search.fingerprint, num_slots=slots, embed_dim=dim, bundle=fake_bundle).close()
    crops = [{"image": solid(colour), "camera": f"cam{1 + i % 2}", "time": f"2026-03-02T14:00:0{i}Z", "track": i}
             for i, colour in enumerate(COLOURS)]
    with serving(path) as client:
        response = client.post("/gallery/ingest", json={"crops": crops})
        assert response.status_code == 200 and response.json()["rows"] == list(range(6)), response.text
    return path


@pytest.fixture()
def store(store_template, tmp_path):
    """A copy of the store for one test."""
    return Path(shutil.copytree(store_template, tmp_path / "s"))


def server_paths(*paths) -> list[str]:
    """What no answer may hold: the given paths, resolved too, and the temporary directory they are under."""
    return sorted({str(p) for path in paths for p in (Path(path), Path(path).resolve())} | {tempfile.gettempdir()})


# ---- 1. /readyz: the status for everyone, the detail for the key ----------------------------------------

def test_readyz_tells_a_caller_without_the_key_only_whether_it_is_ready(store):
    with serving(store, api_key=KEY) as client:
        for headers in ({}, {"X-API-Key": KEY + "x"}, {"Authorization": "Bearer nope"}):
            response = client.get("/readyz", headers=headers)
            assert response.status_code == 200 and response.json() == {"status": "ready"}, response.text
        full = client.get("/readyz", headers=AUTH).json()
        assert full["cameras"] == ["cam1", "cam2"] and full["rows"] == 6 and full["store"] is True
        assert set(full) == {"status", "rows", "bundle", "store", "explain", "cameras"}
    with serving(store) as client:  # a service without a key shows its detail to everyone (loopback)
        assert client.get("/readyz").json()["cameras"] == ["cam1", "cam2"]


# ---- 2. no server path in any error answer --------------------------------------------------------------

def _raising(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


def test_no_error_answer_names_a_server_path_and_the_log_does(store, monkeypatch, caplog):
    from tbps_runtime.store.open import open_store

    crop = {"image": solid("red"), "camera": "door"}
    answers = []
    with serving(store) as client, caplog.at_level(logging.WARNING, logger="tbps_runtime"):
        held, release = threading.Event(), threading.Event()

        def writer():  # another writer of the store (here a thread; tbps ingest in a process alike)
            with open_store(store).writing("testing"):
                held.set()
                release.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert held.wait(10)
            answers.append(error_of(client.post("/gallery/ingest", json={"crops": [crop]}), 409, "conflict",
                                    "being written by another process"))
            answers.append(error_of(client.request("DELETE", "/gallery/rows", json={"older_than": "1d"}), 409,
                                    "conflict", "being written by another process"))
        finally:
            release.set()
            thread.join(10)
        service = client.app.state.service
        # the library's errors about the server's own files, whatever their kind
        monkeypatch.setattr(service.search, "rank", _raising(DataError(f"cannot read image {store}/crops/a.jpg")))
        answers.append(error_of(client.post("/search", json={"query": "red"}), 503, "unavailable", "cannot be read"))
        monkeypatch.setattr(service.search, "rank", _raising(BundleError(f"{store}/catalog.sqlite is damaged")))
        answers.append(error_of(client.post("/search", json={"query": "red"}), 503, "unavailable", "cannot be read"))
        monkeypatch.setattr(service.gallery.target, "records", _raising(ConfigError(f"no row 5 in {store}")))
        answers.append(error_of(client.get("/crops/5"), 400, "bad_request", "no row 5 in [server path]"))
        monkeypatch.setattr(service.gallery.target, "records", _raising(RuntimeError(f"{store} exploded")))
        answers.append(error_of(client.get("/crops/5"), 500, "internal", "internal error"))
    for answer in answers:
        assert not [p for p in server_paths(store) if p in answer], answer
        assert "lock" not in answer, answer
    assert str(store) in caplog.text  # the operator reads the paths in the log


def test_a_crop_linked_out_of_the_store_is_not_served(store, tmp_path):
    from tbps_runtime.store.open import open_store

    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    crop = store / open_store(store).records([0])[0].crop
    crop.unlink()
    crop.symlink_to(secret)
    with serving(store) as client:
        response = client.get("/crops/0")
        error_of(response, 404, "not_found", "row 0")
        assert client.get("/crops/1").status_code == 200
    assert "not for clients" not in response.text
    assert not [p for p in server_paths(store, secret) if p in response.text]


# ---- 3. the OpenAPI description states every bound: fuzzed from it ---------------------------------------

def _import_schemathesis():
    """schemathesis and all its modules, imported now, at collection. pytest rewrites the asserts of an
    installed plugin's modules as they are imported, and CPython 3.11's parser can fail on that
    ("AST constructor recursion depth mismatch") deep in a Hypothesis call stack, where schemathesis
    imports some modules lazily. None without schemathesis."""
    import importlib
    import pkgutil

    try:
        import schemathesis
    except ImportError:
        return None
    for module in pkgutil.walk_packages(schemathesis.__path__, "schemathesis."):
        try:
            importlib.import_module(module.name)
        except Exception:  # noqa: BLE001 - a module for an optional extra (GraphQL, ...) we do not use
            pass
    return schemathesis


SCHEMATHESIS = _import_schemathesis()


def test_fuzzing_from_the_openapi_description_finds_no_5xx_no_stray_answer_and_no_unstated_bound(store):
    """Positive cases (valid by the description) and negative ones for every operation, with the key: no 5xx,
    every answer as the description says (status, content type, body), no 422; and no positive case refused
    by request validation (the request models): each bound they hold is one the description states."""
    if SCHEMATHESIS is None:
        pytest.skip("the fuzzing test needs schemathesis>=4 (pip install -e '.[dev]')")
    schemathesis = SCHEMATHESIS
    from fastapi.exceptions import RequestValidationError
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    app = create_app(ServeSettings(gallery=str(store), threads=1, api_key=KEY))
    refused, handle = set(), app.exception_handlers[RequestValidationError]

    async def recording(request, error):  # which requests request validation refused, by request id
        refused.add(request.state.request_id)
        return await handle(request, error)

    app.exception_handlers[RequestValidationError] = recording
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict[str, set[int]] = {}
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def fuzz(case):
                    response = case.call(headers=AUTH)
                    case.validate_response(response, checks=checks)
                    assert response.status_code != 422, (case.body, response.text)
                    if mode is schemathesis.GenerationMode.POSITIVE:
                        assert response.headers["x-request-id"][0] not in refused, (case.body, response.text)
                    seen.setdefault(operation.label, set()).add(response.status_code)

                try:
                    fuzz()
                except Unsatisfiable:  # no negative case exists for an operation without parameters
                    assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    finally:
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()  # the service's batcher thread stops with the application
    # it ran where it matters: every operation answered, searches and store reads succeeded
    assert {"POST /search", "POST /embed/text", "POST /embed/image", "DELETE /gallery/rows", "POST /gallery/ingest",
            "GET /crops/{row}", "GET /gallery/info", "GET /readyz"} <= set(seen)
    assert 200 in seen["POST /search"] and 200 in seen["GET /gallery/info"] and 200 in seen["POST /embed/text"]


def test_the_description_refuses_what_the_models_refuse(store):
    """The requests the first fuzzing found refused by the service though the description let them through."""
    jsonschema = pytest.importorskip("jsonschema")
    with serving(store) as client:
        document = client.get("/openapi.json").json()
    components = {"components": document["components"]}

    def valid(model, body):
        schema = {**document["components"]["schemas"][model], **components}
        return jsonschema.Draft202012Validator(schema).is_valid(body)

    assert not valid("SearchRequest", {}) and not valid("SearchRequest", {"query": "red", "queries": ["blue"]})
    assert valid("SearchRequest", {"query": "red", "queries": None}) and valid("SearchRequest", {"queries": ["a"]})
    assert not valid("EmbedTextRequest", {"texts": [""]}) and not valid("EmbedTextRequest", {"texts": []})
    assert not valid("DeleteRequest", {}) and valid("DeleteRequest", {"older_than": "30d"})
    assert not valid("DeleteRequest", {"older_than": "soon"}) and valid("DeleteRequest", {"filters": {}})
    assert not valid("ExplainRequest", {"query": "red", "rows": [2**53]})
    assert not valid("Filters", {"cameras": ["a\u0007b"]}) and valid("Filters", {"cameras": ["cam 1 é"]})


# ---- 4. a store moved, deleted, replaced or damaged under the service ------------------------------------

def _every_gallery_route(client):
    crop = {"image": solid("red"), "camera": "door"}
    return {"search": client.post("/search", json={"query": "red"}, headers=AUTH),
            "crop": client.get("/crops/0", headers=AUTH),
            "info": client.get("/gallery/info", headers=AUTH),
            "dry run": client.request("DELETE", "/gallery/rows", json={"older_than": "0s", "dry_run": True},
                                      headers=AUTH),
            "ingest": client.post("/gallery/ingest", json={"crops": [crop]}, headers=AUTH),
            "readyz": client.get("/readyz"), "readyz with the key": client.get("/readyz", headers=AUTH)}


@pytest.mark.parametrize("how", ["moved", "deleted", "replaced"])
def test_a_store_gone_under_the_service_is_a_503_that_says_so(store, tmp_path, how):
    away = tmp_path / "away"
    with serving(store, api_key=KEY) as client:
        assert client.post("/search", json={"query": "red"}, headers=AUTH).status_code == 200
        if how == "moved":
            store.rename(away)
        elif how == "deleted":
            shutil.rmtree(store)
        else:
            store.rename(away)
            shutil.copytree(away, store)
        for name, response in _every_gallery_route(client).items():
            message = error_of(response, 503, "unavailable", "gone")
            assert not [p for p in server_paths(store, away) if p in message], (name, message)
        assert client.get("/metrics").status_code == 200 and client.get("/healthz").status_code == 200
        assert client.post("/embed/text", json={"texts": ["red"]}, headers=AUTH).status_code == 200
        if how == "moved":  # put back: served again, nothing lost
            away.rename(store)
            assert client.get("/readyz", headers=AUTH).json()["rows"] == 6
            assert client.post("/search", json={"query": "red"}, headers=AUTH).json()["results"][0][0]["row"] == 0


def test_a_store_catalog_damaged_under_the_service_is_a_503_never_a_500(store):
    from tbps_runtime.store.local import CATALOG

    with serving(store, api_key=KEY) as client:
        assert client.post("/search", json={"query": "red"}, headers=AUTH).status_code == 200
        for log in store.glob(f"{CATALOG}-*"):
            log.unlink()
        (store / CATALOG).write_bytes(b"this is no catalog\n" * 512)
        answers = _every_gallery_route(client)
    for name, response in answers.items():
        assert response.status_code == 503, (name, response.text)
        assert not [p for p in server_paths(store) if p in response.text], (name, response.text)


# ---- 5. refusals in request fields; a dry run needs no confirmation --------------------------------------

def test_refusals_name_request_fields_never_options_and_a_dry_run_needs_no_confirmation(store):
    cases = [
        ("POST", "/search", {"query": "red", "filters": {"since": "2026-03-02T15:00", "until": "2026-03-02T14:00"}},
         400, "filters.until (2026-03-02T14:00:00.000Z) must be after filters.since"),
        ("POST", "/search", {"query": "red", "filters": {"since": "yesterday"}}, 400, "filters.since 'yesterday'"),
        ("POST", "/search", {"query": "red", "min_score": "auto"}, 400, "min_score 'auto'"),
        ("POST", "/search", {"queries": ["red", "   "]}, 400, "queries[1] is empty"),
        ("POST", "/search", {"query": "\u200b"}, 400, "query is empty"),
        ("POST", "/search", {"query": "red", "filters": {"cameras": ["a\nb"]}}, 400, "filters.cameras[0]"),
        ("POST", "/embed/text", {"texts": ["red", "\u200b\u200b"]}, 400, "texts[1] is empty"),
        ("POST", "/explain", {"query": "red", "rows": [0]}, 409, "no explain graphs"),
        ("DELETE", "/gallery/rows", {"older_than": "soon"}, 400, "older_than 'soon' is not an age"),
        ("DELETE", "/gallery/rows", {"older_than": "0s"}, 400, 'send "everything": true'),
        ("DELETE", "/gallery/rows", {"dry_run": True}, 400, "say what to delete: filters"),
        ("POST", "/gallery/ingest", {"crops": [{"image": solid("red"), "camera": "door", "time": "noon"}]}, 400,
         "crops[0].time 'noon'"),
        ("POST", "/gallery/ingest", {"crops": [{"image": solid("red"), "camera": "a\u0007b"}]}, 400,
         "crops[0].camera"),
    ]
    with serving(store) as client:
        for method, path, body, status, fragment in cases:
            message = error_of(client.request(method, path, json=body), status, "bad_request" if status == 400
                               else "conflict", fragment)
            assert not OPTION.search(message) and "tbps export" not in message, message
        total = client.get("/readyz").json()["rows"]
        everything = {"rows": total, "segments": 0, "crops": 0, "bytes": 0, "cameras": {"cam1": 3, "cam2": 3}}
        for body in ({"older_than": "0s"}, {"filters": {"cameras": ["cam1", "cam2"]}},
                     {"older_than": "0s", "everything": True}):
            dry = client.request("DELETE", "/gallery/rows", json={**body, "dry_run": True})
            assert dry.status_code == 200 and dry.json() == {"dry_run": True, **everything}, (body, dry.text)
        assert client.get("/readyz").json()["rows"] == total  # nothing removed


# ---- 6. a damaged upload is a 400 ------------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_cut_in_idat(pixels: np.ndarray) -> bytes:
    """A PNG of ``pixels`` whose IDAT stops halfway through the rows (its zlib stream closed, its CRCs and
    IEND in place): what a writer that stopped early leaves."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height // 2))  # filter 0, then the samples
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def jpeg_cut_in_scan(pixels: np.ndarray) -> bytes:
    """A JPEG of ``pixels`` cut halfway through its scan and closed with an end marker (what Pillow's own
    LOAD_TRUNCATED_IMAGES does to a cut file)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    scan = data.index(b"\xff\xda")
    return data[:scan + (len(data) - scan) // 2] + b"\xff\xd9"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_damaged_upload_is_a_400_and_never_embedded(store, fmt):
    from PIL import ImageFile

    pixels = np.random.default_rng(0).integers(0, 255, (120, 60, 3), dtype=np.uint8)
    whole = base64.b64decode(b64_image(pixels, fmt))
    damaged = {"closed early": png_cut_in_idat(pixels) if fmt == "PNG" else jpeg_cut_in_scan(pixels),
               "cut": whole[:len(whole) * 2 // 3]}
    with serving(store) as client:
        rows = client.get("/readyz").json()["rows"]
        assert client.post("/embed/image", json={"images": [b64_image(pixels, fmt)]}).status_code == 200
        for how, data in damaged.items():
            text = base64.b64encode(data).decode("ascii")
            error_of(client.post("/embed/image", json={"images": [text]}), 400, "bad_request", "images[0]",
                     f"damaged or truncated {fmt}")
            error_of(client.post("/gallery/ingest", json={"crops": [{"image": text, "camera": "door"}]}), 400,
                     "bad_request", "crops[0].image", f"damaged or truncated {fmt}")
        assert client.get("/readyz").json()["rows"] == rows  # nothing of them was kept
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # refused without touching Pillow's global setting


# ---- 7. times out of range in every HTTP time field ------------------------------------------------------

@pytest.mark.parametrize("text", ["0001-01-01T00:00+14:00", "9999-12-31T23:59:59-14:00", "1899-12-31T23:59:59Z",
                                  "3000-01-01T00:00Z"])
def test_a_time_out_of_range_is_a_400_naming_its_field(store, text):
    with serving(store) as client:
        for field in ("since", "until"):
            for method, path, extra in (("POST", "/search", {"query": "red"}),
                                        ("DELETE", "/gallery/rows", {"dry_run": True})):
                response = client.request(method, path, json={**extra, "filters": {field: text}})
                error_of(response, 400, "bad_request", f"filters.{field} '{text}'", "1900-01-01")
        crop = {"image": solid("red"), "camera": "door", "time": text}
        error_of(client.post("/gallery/ingest", json={"crops": [crop]}), 400, "bad_request",
                 f"crops[0].time '{text}'", "1900-01-01")
        edge = {"query": "red", "filters": {"since": "1900-01-01T00:00Z", "until": "2999-12-31T23:59:59Z"}}
        assert len(client.post("/search", json=edge).json()["results"][0]) == 6
        assert json.loads(client.get("/readyz").text)["rows"] == 6


# ---- a full disk ---------------------------------------------------------------------------------------

def test_an_ingest_on_a_full_disk_is_a_503_and_the_store_keeps_what_it_held(store_template, small_disk, tmp_path):
    store = Path(shutil.copytree(store_template, tmp_path / "disk" / "s"))  # small_disk mounts tmp_path/disk
    crops = [{"image": solid(colour), "camera": "door"} for colour in COLOURS]
    with serving(store) as client:
        disk = small_disk(0)
        message = error_of(client.post("/gallery/ingest", json={"crops": crops}), 503, "unavailable",
                           "none of the crops was added")
        assert not [p for p in server_paths(store) if p in message], message
        assert client.get("/readyz").json()["rows"] == 6  # still readable while the disk is full
        # but not searched: a search the audit log cannot record is refused (docs/guides/serve.md#the-audit-log)
        message = error_of(client.post("/search", json={"query": "red"}), 503, "unavailable", "audit log")
        assert not [p for p in server_paths(store) if p in message], message
        (disk / "filler").unlink()
        assert client.post("/search", json={"query": "red"}).json()["results"][0][0]["row"] == 0
        assert client.post("/gallery/ingest", json={"crops": crops[:1]}).json()["rows"] == [6]
        assert client.get("/readyz").json()["rows"] == 7
