"""Ingest and store answers that say what happened: deleting by a camera or source the store lacks is an
error listing those it has (CLI, library, service); a source that fails gets FFmpeg's error translated into
what happened and what to try; milvus-lite leaves stderr clean; a live camera processed slower than it
plays is warned about once, a file's summary says how its processing compared to real time; the progress
bar counts sampled frames and ends at 100 %."""

from __future__ import annotations

import http.server
import importlib.util
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")

from cli_assertions import assert_user_error, run  # noqa: E402
from page_helpers import http_server  # noqa: E402
from runtime_fakes import make_fake_bundle  # noqa: E402

from tbps_runtime.cli.ingest import gallery_group, ingest_command  # noqa: E402
from tbps_runtime.errors import ConfigError  # noqa: E402
from tbps_runtime.ingest import pipeline  # noqa: E402
from tbps_runtime.ingest.cameras import Camera  # noqa: E402
from tbps_runtime.ingest.detectors import FileDetections  # noqa: E402
from tbps_runtime.ingest.follow import _retention, _Shared  # noqa: E402
from tbps_runtime.ingest.pipeline import Following, IngestSettings, ingest_source  # noqa: E402
from tbps_runtime.ingest.sources import SourceError, open_source  # noqa: E402
from tbps_runtime.model.encoder import Encoder  # noqa: E402
from tbps_runtime.store.local import LocalStore  # noqa: E402
from tbps_runtime.store.open import open_store  # noqa: E402
from tbps_runtime.store.rows import RowFilter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """One camera, 2 s at 10 fps (20 frames), two people, with ground-truth boxes."""
    from tbps_runtime.synth.footage import generate_footage

    return Path(generate_footage(tmp_path_factory.mktemp("footage") / "f", cameras=1, seconds=2.0, fps=10.0,
                                 size=(160, 96), people=2, seed=0, outfits="solid"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The fake bundle and its encoder."""
    bundle = make_fake_bundle(tmp_path_factory.mktemp("parts") / "fake.bundle")
    return bundle, Encoder.from_bundle(bundle, threads=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory, footage, parts):
    """cam1 ingested with ground-truth boxes (never changed: the tests below refuse or dry-run)."""
    path = tmp_path_factory.mktemp("store") / "s"
    result = run(ingest_command, [footage / "cam1.mp4", "--gallery", path, "--bundle", parts[0], "--detections",
                                  footage / "cam1.gt.txt", "--fps", 5, "--window", 1, "-q"])
    assert result.exit_code == 0, result.output
    return path


def new_store(path: Path, encoder) -> LocalStore:
    return LocalStore.create(path, fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                             embed_dim=encoder.slot_shape[1])


def row_count(path: Path) -> int:
    with open_store(path) as opened:
        return len(opened)


# ---- 1. deleting by a camera or source the store lacks ---------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["delete", "--source", "rtsp://cam7/live"], "rtsp://cam7/live"),
    (["delete", "--camera", "cam9"], "cam9"),
    (["delete", "--camera", "cam9", "--dry-run"], "cam9"),
    (["prune", "--older-than", "1d", "--camera", "cam9", "--yes"], "cam9"),
    (["prune", "--older-than", "0s", "--camera", "cam9", "--dry-run"], "cam9"),
])
def test_delete_and_prune_refuse_an_unknown_camera_or_source_listing_the_known_ones(args, named, store, footage):
    before = row_count(store)
    result = run(gallery_group, [args[0], store, *args[1:]])
    known = "cam1" if "--camera" in args else str((footage / "cam1.mp4").resolve())
    assert_user_error(result, named, "not in the store", known)
    assert "removed" not in result.output
    assert row_count(store) == before > 0
    # a known camera still works
    dry = json.loads(run(gallery_group, ["delete", store, "--camera", "cam1", "--dry-run", "--json"]).stdout)
    assert dry["rows"] == before and dry["cameras"] == {"cam1": before}


def test_the_library_refuses_too_and_retention_skips_a_camera_without_rows(tmp_path, store, caplog):
    with open_store(store) as opened, opened.writing():
        with pytest.raises(ConfigError, match="camera 'cam9' is not in the store: its cameras are cam1"):
            opened.delete(RowFilter(cameras=("cam9",)), older_than=0.0, everything=True)
        with pytest.raises(ConfigError, match="source 'gate.mp4' is not in the store"):
            opened.delete(RowFilter(sources=("gate.mp4",)), dry_run=True)
        assert len(opened) > 0
        # a followed camera that has no rows yet: nothing to prune, nothing to warn about
        caplog.set_level(logging.WARNING, logger="tbps_runtime")
        _retention([Camera("cam9", "rtsp://x/live", retention=1.0)], _Shared(opened, threading.Event()))
        assert "retention failed" not in caplog.text and len(opened) > 0


def test_the_service_refuses_an_unknown_camera_when_deleting(store, tmp_path):
    pytest.importorskip("fastapi", reason="the service needs fastapi: pip install 'tbps[serve]'")
    import shutil

    from serve_clients import error_of, serving

    copy = Path(shutil.copytree(store, tmp_path / "s"))
    with serving(copy) as client:
        error_of(client.request("DELETE", "/gallery/rows", json={"filters": {"cameras": ["cam9"]}, "dry_run": True}),
                 400, "bad_request", "cam9", "cam1")
        done = client.request("DELETE", "/gallery/rows", json={"filters": {"cameras": ["cam1"]}, "dry_run": True})
        assert done.status_code == 200 and done.json()["rows"] == row_count(copy) > 0


# ---- 2. FFmpeg's errors, translated ----------------------------------------------------------------------

def write_video(path: Path, seconds: float = 1.0, fps: int = 10, size=(160, 120)) -> Path:
    """A real MP4 written with PyAV (its index, the moov atom, at the end, as recorders write it)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(int(seconds * fps)):
            image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def failure(source: str) -> str:
    """The SourceError a source gives, opening it or reading its frames."""
    with pytest.raises(SourceError) as caught:
        for _ in open_source(source, 5.0).frames(5.0):
            pass
    return str(caught.value)


def test_a_text_file_named_mp4_is_not_a_video_and_its_path_is_said_once(tmp_path, monkeypatch, caplog, parts):
    monkeypatch.chdir(tmp_path)
    Path("notvideo.mp4").write_text("hello, this is not a video\n" * 20)
    name = str((tmp_path / "notvideo.mp4").resolve())
    caplog.set_level(logging.DEBUG, logger="tbps_runtime.ingest.sources")
    said = failure("notvideo.mp4")
    assert said.startswith(f"cannot open {name}: not a video") and "ffprobe" in said, said
    assert "Errno" not in said and said.count("notvideo.mp4") == 1
    # FFmpeg's own words stay at debug level, naming the file once (never '/tmp/x//tmp/x/notvideo.mp4')
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "FFmpeg said" in r.getMessage()]
    assert len(debug) == 1 and "Invalid data found" in debug[0], debug
    assert debug[0].count("notvideo.mp4") == 2 and f"'{name}'" in debug[0] and name + name[1:] not in debug[0]
    # the command line: one error line, exit status 2 (FFmpeg's words, at debug level, not shown)
    logging.getLogger("tbps_runtime.ingest.sources").setLevel(logging.NOTSET)
    # the command line: one error line, exit status 2
    result = run(ingest_command, ["notvideo.mp4", "--gallery", tmp_path / "s", "--bundle", parts[0], "-q"])
    assert_user_error(result, "not a video", name)
    assert "Errno" not in result.stderr


def test_a_truncated_video_is_said_to_be_truncated(tmp_path):
    whole = write_video(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(whole[:len(whole) // 2])
    said = failure(str(tmp_path / "half.mp4"))
    assert "the file is truncated" in said and f"ends at byte {len(whole) // 2}" in said, said
    assert "copy it again" in said and "Errno" not in said


def test_a_closed_port_is_a_refused_connection_without_credentials():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    said = failure(f"http://admin:Hunter2pw@127.0.0.1:{port}/live.mp4")
    assert said.startswith(f"cannot open http://127.0.0.1:{port}/live.mp4: connection refused"), said
    assert f"nothing accepts connections at 127.0.0.1:{port}" in said and "port is right" in said
    assert "Hunter2pw" not in said and "admin" not in said and "Errno" not in said


def test_a_refused_login_is_an_authentication_failure_without_credentials(tmp_path):
    class Locked(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Locked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        said = failure(f"http://admin:Hunter2pw@127.0.0.1:{server.server_address[1]}/live.mp4")
    finally:
        server.shutdown()
        thread.join()
    assert "authentication failed (the server answered 401 Unauthorized)" in said and "password" in said, said
    assert "Hunter2pw" not in said and "admin" not in said and "Errno" not in said


def test_an_mp4_with_its_index_at_the_end_over_http_without_ranges_says_so(tmp_path):
    write_video(tmp_path / "clip.mp4", seconds=2.0)
    with http_server(tmp_path) as address:
        said = failure(f"http://{address}/clip.mp4")
    assert "moov atom" in said and "range requests" in said and "+faststart" in said, said
    assert "Errno" not in said and "Input/output error" not in said


# ---- 3. milvus-lite leaves stderr clean ------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("milvus_lite") is None or importlib.util.find_spec("pymilvus") is None,
                    reason="milvus-lite is not installed (pip install 'tbps[milvus]')")
def test_milvus_lite_ingest_writes_no_traceback_on_stderr(tmp_path, footage, parts):
    gallery = tmp_path / "g"
    code = "from tbps_runtime.cli import main; main(prog_name='tbps')"
    done = subprocess.run([sys.executable, "-c", code, "-q", "ingest", str(footage / "cam1.mp4"), "--gallery",
                           str(gallery), "--bundle", str(parts[0]), "--detections", str(footage / "cam1.gt.txt"),
                           "--store", f"milvus-lite:{gallery}/rows.db/people"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "NotImplementedError" not in done.stderr, done.stderr
    assert done.stderr.strip() == "", done.stderr  # -q: nothing to say


def test_the_unimplemented_rpc_filter_keeps_other_server_errors():
    from tbps_runtime.store.milvus import _UnimplementedRpc

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            return logging.LogRecord("grpc._server", logging.ERROR, __file__, 1, "Exception calling application",
                                     None, sys.exc_info())

    kept = _UnimplementedRpc().filter
    assert not kept(record(NotImplementedError("Method not implemented!")))
    assert kept(record(NotImplementedError("something else"))) and kept(record(RuntimeError("disk full")))


# ---- 4. falling behind real time -------------------------------------------------------------------------

class Slow:
    """Ground-truth boxes, ``delay`` seconds a frame: a detector too slow for the source."""

    def __init__(self, path: Path, delay: float):
        self.inner, self.delay, self.name = FileDetections(path), delay, "file:cam1.gt.txt"

    def detect(self, frame, index):
        time.sleep(self.delay)
        return self.inner.detect(frame, index)


def behind_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "falls behind real time" in r.getMessage()]


def test_a_followed_camera_slower_than_real_time_is_warned_about_once(tmp_path, footage, parts, caplog,
                                                                       monkeypatch):
    monkeypatch.setattr(pipeline, "PACE_WINDOW", 0.3)  # several windows in a 2 s clip
    settings = IngestSettings("file:cam1.gt.txt", None, "gate", None, 2, 1.0, 8)  # every frame: 10 per second
    caplog.set_level(logging.WARNING, logger="tbps_runtime")
    # fast enough: nothing said
    with new_store(tmp_path / "fast", parts[1]) as store, store.writing():
        report = ingest_source(str(footage / "cam1.mp4"), store, parts[1], Slow(footage / "cam1.gt.txt", 0.0),
                               settings, following=Following())
    assert report.frames == 20 and behind_warnings(caplog) == []
    # every frame takes 0.15 s: under 7 frames/s processed, 10 needed
    following = Following()
    with new_store(tmp_path / "slow", parts[1]) as store, store.writing():
        report = ingest_source(str(footage / "cam1.mp4"), store, parts[1], Slow(footage / "cam1.gt.txt", 0.15),
                               settings, following=following)
    assert report.frames == 20 and report.error is None
    said = behind_warnings(caplog)
    assert len(said) == 1, said  # once per camera, not per frame or per window
    assert said[0].startswith("camera gate falls behind real time: ") and "needed (every frame)" in said[0]
    achieved, needed = (float(n) for n in re.findall(r"([\d.]+) (?:sampled frames/s processed|needed)", said[0]))
    assert 3.0 < achieved < 7.0 and needed == pytest.approx(10.0, rel=0.1), said[0]
    assert "lower its fps" in said[0] and "lighter detector" in said[0] and "--threads" in said[0]
    # another connection of the same camera says nothing again
    caplog.clear()
    with new_store(tmp_path / "again", parts[1]) as store, store.writing():
        ingest_source(str(footage / "cam1.mp4"), store, parts[1], Slow(footage / "cam1.gt.txt", 0.15), settings,
                      following=following)
    assert behind_warnings(caplog) == []


def test_a_files_summary_compares_its_processing_to_real_time(tmp_path, footage, parts, caplog):
    from tbps_runtime.cli.ingest import _log_report

    caplog.set_level(logging.INFO, logger="tbps_runtime")
    settings = IngestSettings("file:cam1.gt.txt", 5.0, "gate", None, 2, 1.0, 8)
    with new_store(tmp_path / "s", parts[1]) as store, store.writing():
        # 10 sampled frames of 2 s of video, 0.3 s each: about 3 s
        report = ingest_source(str(footage / "cam1.mp4"), store, parts[1], Slow(footage / "cam1.gt.txt", 0.3),
                               settings)
    assert report.video_seconds == pytest.approx(2.0) and report.seconds > 3.0
    assert behind_warnings(caplog) == []  # a file is not live: its summary says it
    _log_report(report)
    summary = caplog.records[-1].getMessage()
    speed = 2.0 / report.seconds
    assert f"2.0 s of video at {speed:.2g}x real time: slower than it plays" in summary, summary
    assert "lower --fps" in summary and "lighter detector" in summary


# ---- 5. the progress bar counts sampled frames and ends at 100 % -----------------------------------------

@pytest.fixture()
def bars(monkeypatch):
    """Every tqdm bar made while the test runs, with (n, total) when it closed and its total when made."""
    import tqdm

    made = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.first_total, self.closed_at = self.total, None
            made.append(self)

        def close(self):
            if self.closed_at is None:
                self.closed_at = (self.n, self.total)
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    return made


def test_the_progress_bar_counts_sampled_frames_and_ends_at_100_percent(tmp_path, footage, parts, bars):
    # 20 frames at 10 fps: every 2nd sampled at 5 fps, 6 slots at 3, each one at 30 or without --fps
    for fps, sampled in [(5.0, 10), (3.0, 6), (None, 20), (30.0, 20)]:
        settings = IngestSettings("file:cam1.gt.txt", fps, "gate", None, 2, 1.0, 8)
        with new_store(tmp_path / f"s{fps}", parts[1]) as store, store.writing():
            report = ingest_source(str(footage / "cam1.mp4"), store, parts[1],
                                   FileDetections(footage / "cam1.gt.txt"), settings, progress=True)
        bar = bars.pop()
        assert report.frames == sampled and not bars
        assert bar.first_total == sampled, fps  # the summary's unit from the start
        assert bar.closed_at == (sampled, sampled), fps  # 100 % at the source's end
