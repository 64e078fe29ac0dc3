"""A hit with its context, through the service: find similar (like_row) checked against a hand computation
of Eq. 14, the full frame with its box, a clip served with byte ranges (and decoding to the asked span, at
keyframes), the audit log of every search, crop, frame and clip request (never the key), the offline API
browser, and the refusals (bad before/after, unknown rows, a source gone, a stream's row).

The store is built by hand: fake embeddings (K = 3, d = 4, the fake bundle's shape) with records pointing
at a 20 s video written here with a keyframe every second (10 frames), each frame's green level its index."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="tbps serve needs FastAPI: pip install 'tbps[serve]'")
av = pytest.importorskip("av", reason="frames and clips need PyAV: pip install 'tbps[footage]'")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from serve_clients import error_of, serving  # noqa: E402

from tbps_runtime.ingest.moments import BOX_COLOUR  # noqa: E402
from tbps_runtime.ranking import normalize_slots  # noqa: E402
from tbps_runtime.search import PersonSearch  # noqa: E402
from tbps_runtime.store.audit import AUDIT_FILE, read_audit  # noqa: E402
from tbps_runtime.store.local import LocalStore  # noqa: E402
from tbps_runtime.store.rows import CropRecord  # noqa: E402

KEY = "audit-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
FPS, SECONDS, GOP = 10, 20, 10
SIZE = (160, 96)  # width, height
VIDEO_ROWS = 6  # rows 0..5 come from the video; 6: a source gone; 7: a stream


def _write_video(path: Path) -> Path:
    """A 20 s, 10 fps video whose frame i is a flat (0, i, 0) green, a keyframe every GOP frames."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"} if codec == "libx264" else {}
        for i in range(FPS * SECONDS):
            pixels = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
            pixels[:, :, 1] = i
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def context_store(fake_bundle, tmp_path_factory):
    """(store directory, (n, K, d) embeddings): 8 rows, crops saved, records pointing into the video."""
    root = tmp_path_factory.mktemp("hit-context")
    video = _write_video(root / "cam1.mp4")
    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    slots, dim = search.manifest.num_slots, search.manifest.embed_dim
    embeddings = normalize_slots(np.random.default_rng(0).normal(size=(8, slots, dim)))  # (8, K, d)
    store = LocalStore.create(root / "store", fingerprint=search.fingerprint, num_slots=slots, embed_dim=dim,
                              bundle=fake_bundle)
    with store.writing():
        name, folder = store.new_batch()
        records = []
        for i in range(8):
            Image.new("RGB", (8, 16), (30 * i, 0, 0)).save(folder / f"{i}.jpg")
            source = str(video) if i < VIDEO_ROWS else str(root / "gone.mp4") if i == 6 else "rtsp://cam/live"
            offset = 2.0 + 3.0 * i if i < VIDEO_ROWS else 1.0
            records.append(CropRecord(source, "cam1" if i % 2 == 0 else "cam2", 1772460000.0 + offset, offset,
                                      round(offset * FPS), (20.0, 10.0, 60.0, 80.0), 0.9, i // 2, f"{name}/{i}.jpg"))
        store.append(embeddings, records, crops=name)
    store.close()
    return root / "store", embeddings


@pytest.fixture()
def store_dir(context_store, tmp_path):
    """A fresh copy of the store's files (its own audit log), its video where the records say."""
    import shutil

    directory, _ = context_store
    copy = Path(shutil.copytree(directory, tmp_path / "store"))
    return copy


def _eq14(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Eq. 14 by hand: per query and row, the sum over the K slots of the cosine (Q, N)."""
    q = queries / np.linalg.norm(queries, axis=-1, keepdims=True)
    g = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.einsum("qkd,nkd->qn", q.astype(np.float64), g.astype(np.float64))


# ---- find similar ------------------------------------------------------------------------------------

def test_like_row_ranks_by_eq14_of_the_rows_image_embedding(store_dir, context_store, fake_bundle):
    _, embeddings = context_store
    expected = _eq14(embeddings[3:4], embeddings)[0]  # (8,)
    order = sorted(range(8), key=lambda r: (-expected[r], r))
    with serving(store_dir) as client:
        body = client.post("/search", json={"like_row": 3, "k": 8}).json()
        cam2 = client.post("/search", json={"like_row": 3, "k": 8, "filters": {"cameras": ["cam2"]}}).json()
    hits = body["results"][0]
    assert [h["row"] for h in hits] == order and hits[0]["row"] == 3
    assert hits[0]["score"] == pytest.approx(embeddings.shape[1], abs=1e-5)  # itself: K cosines of 1
    assert [h["score"] for h in hits] == pytest.approx([expected[r] for r in order], abs=1e-5)
    assert body["search"].endswith("like row 3")
    assert [h["row"] for h in cam2["results"][0]] == [r for r in order if r % 2 == 1]


def test_like_row_with_text_uses_the_normalised_sum_of_the_slots(store_dir, context_store, fake_bundle):
    _, embeddings = context_store
    text = PersonSearch.from_bundle(fake_bundle, threads=1).embed_texts(["red"])  # (1, K, d)
    t = text / np.linalg.norm(text, axis=-1, keepdims=True)
    combined = _eq14(t + embeddings[5:6], embeddings)[0]
    with serving(store_dir) as client:
        body = client.post("/search", json={"like_row": 5, "query": "red", "k": 4}).json()
    order = sorted(range(8), key=lambda r: (-combined[r], r))[:4]
    assert [h["row"] for h in body["results"][0]] == order
    assert [h["score"] for h in body["results"][0]] == pytest.approx([combined[r] for r in order], abs=1e-5)


def test_like_row_refusals(store_dir, fake_bundle, tmp_path):
    with serving(store_dir) as client:
        error_of(client.post("/search", json={"like_row": 99}), 404, "not_found", "no row 99")
        error_of(client.post("/search", json={"like_row": 1, "queries": ["red"]}), 400, "bad_request", "like_row")
        error_of(client.post("/search", json={"like_row": -1}), 400, "bad_request")
        error_of(client.post("/search", json={"like_row": 1, "min_score": "auto"}), 400, "bad_request",
                 "calibrated for captions")


def test_rank_like_row_on_the_command_line(store_dir, context_store):
    from tbps_runtime.cli.search import rank_command

    _, embeddings = context_store
    expected = _eq14(embeddings[2:3], embeddings)[0]
    result = CliRunner().invoke(rank_command, ["--gallery", str(store_dir), "--like-row", "2", "-k", "3", "--json",
                                               "-q"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["row"] for h in hits] == sorted(range(8), key=lambda r: (-expected[r], r))[:3]
    missing = CliRunner().invoke(rank_command, ["--gallery", str(store_dir), "--like-row", "99", "-q"])
    assert missing.exit_code == 2 and "no row 99" in missing.output and "Traceback" not in missing.output


# ---- frames and clips --------------------------------------------------------------------------------

def test_frame_is_the_rows_full_frame_with_its_box(store_dir):
    with serving(store_dir) as client:
        response = client.get("/frames/2")  # offset 8.0 s: frame 80
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert image.size == SIZE
    assert abs(image.getpixel((120, 60))[1] - 80) <= 4  # the frame at the row's offset, not a neighbour
    edge = image.getpixel((40, 10))  # on the box's top edge
    assert all(abs(a - b) <= 40 for a, b in zip(edge, BOX_COLOUR))


def _decoded_span(data: bytes) -> tuple[float, float, int]:
    with av.open(io.BytesIO(data)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    return times[0], times[-1], len(times)


def test_clip_is_the_source_around_the_hit_cut_at_keyframes(store_dir):
    with serving(store_dir) as client:
        response = client.get("/clips/3?before=2.5&after=3")  # offset 11.0 s: 8.5 .. 14.0
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"
    start = float(response.headers["x-clip-start"])
    first, last, frames = _decoded_span(response.content)
    gop_s = GOP / FPS
    assert 8.5 - gop_s <= start <= 8.5 + 1e-6  # the keyframe at or before offset - before
    assert start + first == pytest.approx(8.0, abs=1 / FPS + 1e-6)  # the first frame shown is a keyframe
    assert 14.0 - 1 / FPS - 1e-6 <= start + last <= 14.0 + gop_s  # up to offset + after (and at most a GOP on)
    assert frames == pytest.approx((14.0 - 8.0) * FPS, abs=GOP + 1)


def test_clip_range_requests(store_dir):
    with serving(store_dir) as client:
        whole = client.get("/clips/1").content
        first = client.get("/clips/1", headers={"Range": "bytes=0-99"})
        rest = client.get("/clips/1", headers={"Range": "bytes=100-"})
        beyond = client.get("/clips/1", headers={"Range": f"bytes={len(whole) + 10}-"})
    assert first.status_code == 206 and first.headers["content-range"] == f"bytes 0-99/{len(whole)}"
    assert len(first.content) == 100 and first.content + rest.content == whole
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert beyond.status_code == 416


@pytest.mark.parametrize("query", ["before=-1", "after=31", "before=nan", "before=1e400", "after=soon"])
def test_clip_bounds_are_refused(store_dir, query):
    with serving(store_dir) as client:
        error_of(client.get(f"/clips/1?{query}"), 400, "bad_request")


def test_unknown_rows_gone_sources_and_streams(store_dir):
    with serving(store_dir) as client:
        for route in ("frames", "clips"):
            error_of(client.get(f"/{route}/100"), 404, "not_found", "no row 100")
            message = error_of(client.get(f"/{route}/6"), 404, "not_found", "not there any more")
            assert "gone.mp4" not in message and str(store_dir.parent) not in message
            error_of(client.get(f"/{route}/7"), 404, "not_found", "not kept")
        error_of(client.get("/frames/-1"), 404, "not_found")
        error_of(client.get(f"/frames/{2**60}"), 400, "bad_request")


def test_frames_and_clips_need_a_store(tmp_path, fake_bundle):
    from cli_assertions import index
    from runtime_fakes import solid_image

    solid_image(tmp_path / "red.png", "red")
    (tmp_path / "list.txt").write_text("red.png\n")
    index(fake_bundle, tmp_path / "list.txt", tmp_path / "g.npy")
    with serving(tmp_path / "g.npy") as client:
        error_of(client.get("/frames/0"), 409, "conflict", "store")
        error_of(client.get("/clips/0"), 409, "conflict", "store")
        error_of(client.post("/search", json={"like_row": 0}), 409, "conflict", "store")
        assert client.post("/search", json={"query": "red"}).status_code == 200  # no audit log, no refusal
    assert not (tmp_path / AUDIT_FILE).exists()


# ---- the audit log -----------------------------------------------------------------------------------

def test_every_search_crop_frame_and_clip_is_audited_without_the_key(store_dir):
    with serving(store_dir, api_key=KEY) as client:
        assert client.post("/search", json={"query": "red", "k": 2, "filters": {"cameras": ["cam1"]}},
                           headers=AUTH).status_code == 200
        assert client.post("/search", json={"like_row": 2}, headers=AUTH).status_code == 200
        assert client.get("/crops/1", headers=AUTH).status_code == 200
        assert client.get("/frames/1", headers=AUTH).status_code == 200
        assert client.get("/clips/1?before=1&after=2", headers=AUTH).status_code == 200
        assert client.get("/frames/1").status_code == 401  # refused before the route: nothing to audit
    entries = read_audit(store_dir)
    assert [e.route for e in entries] == ["search", "search", "crop", "frame", "clip"]
    assert {e.key_id for e in entries} == {hashlib.sha256(KEY.encode()).hexdigest()[:12]}
    assert {e.client for e in entries} == {"testclient"}
    search = entries[0]
    assert search.query == "red" and search.filters["filters"]["cameras"] == ["cam1"] and search.filters["k"] == 2
    assert entries[1].row == 2 and entries[1].query is None
    assert [e.row for e in entries[2:]] == [1, 1, 1] and entries[4].filters == {"before": 1.0, "after": 2.0}
    assert all(e.request for e in entries)
    for path in store_dir.glob(AUDIT_FILE + "*"):  # the file and its WAL: no trace of the key
        assert KEY.encode() not in path.read_bytes()
    with sqlite3.connect(store_dir / AUDIT_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_audit_log_that_cannot_be_written_refuses_the_request(store_dir):
    (store_dir / AUDIT_FILE).mkdir()  # a directory where the log's file should be
    with serving(store_dir) as client:
        error_of(client.post("/search", json={"query": "red"}), 503, "unavailable", "audit log")
        error_of(client.get("/frames/1"), 503, "unavailable", "audit log")
        assert client.get("/healthz").status_code == 200


def test_audit_retention_and_the_command(store_dir):
    from tbps_runtime.cli import main as tbps
    from tbps_runtime.store.audit import AuditEntry, AuditLog

    log = AuditLog(store_dir, retention_days=1)
    log.append(AuditEntry(1772000000.0, "-", "10.0.0.1", "search", None, "old", None, "a"))
    log.append(AuditEntry(1772460000.0, "-", "10.0.0.2", "frame", 3, None, None, "b"))  # 5 days later: prunes
    log.close()
    assert [e.request for e in read_audit(store_dir)] == ["b"]
    result = CliRunner().invoke(tbps, ["gallery", "audit", str(store_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert [e["route"] for e in json.loads(result.stdout)] == ["frame"]
    text = CliRunner().invoke(tbps, ["gallery", "audit", str(store_dir), "--since", "2026-03-03"])
    assert text.exit_code == 0 and text.stdout == ""
    missing = CliRunner().invoke(tbps, ["gallery", "audit", str(store_dir / "nothing")])
    assert missing.exit_code == 2 and "no audit log" in missing.output


# ---- the API browser, offline ------------------------------------------------------------------------

def test_docs_load_swagger_ui_from_this_service_only(store_dir):
    import re

    pytest.importorskip("swagger_ui", reason="the offline API browser needs swagger-ui-py")
    with serving(store_dir, api_key=KEY) as client:
        page = client.get("/docs")
        files = {name: client.get(f"/docs/{name}") for name in ("swagger-ui-bundle.js", "swagger-ui.css")}
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page.text), page.text  # no other host
    assert all(r.status_code == 200 and len(r.content) > 1000 for r in files.values())
