"""Live cameras: the camera file's checks (one error line per problem, naming its entry), and
``tbps ingest --cameras --follow`` against a real HTTP server started here, serving a ``synth-footage``
clip progressively and throttled: killed and restarted mid-stream, the follow loop reconnects and the
store's rows equal an unbroken run's; a camera on a closed port keeps retrying while another ingests;
SIGTERM stops the command cleanly (a real subprocess). The towers are the fake bundle's and the detector
a constant YOLO export (tests/fake_detectors.py), so every run sees the same boxes."""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")

from cli_assertions import run  # noqa: E402
from fake_detectors import yolo_constant_graph  # noqa: E402
from runtime_fakes import make_fake_bundle  # noqa: E402

from tbps_runtime.cli.ingest import gallery_group, ingest_command  # noqa: E402
from tbps_runtime.ingest.cameras import Camera, load_cameras  # noqa: E402
from tbps_runtime.ingest.detectors import open_detector  # noqa: E402
from tbps_runtime.ingest.follow import FollowOptions, follow_cameras  # noqa: E402
from tbps_runtime.ingest.pipeline import IngestSettings, ingest_source  # noqa: E402
from tbps_runtime.model.encoder import Encoder  # noqa: E402
from tbps_runtime.store.local import LocalStore  # noqa: E402

FAST = FollowOptions(backoff=(0.1, 0.4), state_every=0.1, retention_every=0.5)
DEADLINE_S = 30.0  # no test waits longer than this for the follow loop


# -- the camera file -------------------------------------------------------------------------------------


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cameras.toml"
    path.write_text(text)
    return path


def test_a_good_camera_file_gives_its_cameras(tmp_path):
    (tmp_path / "hall.mp4").write_bytes(b"")
    cameras = load_cameras(write(tmp_path, """
[[camera]]
name = "gate"
url = "rtsp://user:secret@10.0.0.7/stream1"
fps = 2.5
retention = "30d"
timezone = "Europe/Berlin"

[[camera]]
name = "hall"
path = "hall.mp4"
fps = 0
detector = "hog"
timezone = "Europe/Berlin"
start = "2026-03-02T14:00"
stall = 5
"""))
    gate, hall = cameras
    assert (gate.name, gate.fps, gate.retention, gate.stream) == ("gate", 2.5, 30 * 86400.0, True)
    assert hall.source == str(tmp_path / "hall.mp4") and hall.fps is None and hall.detector == "hog"
    assert hall.start == 1772456400.0  # 14:00 in Berlin (UTC+1 in March) is 13:00 UTC
    assert hall.stall == 5.0 and not hall.stream


BAD_FILE = """
[[camera]]
name = "gate"
url = "rtsp://admin:hunter2@10.0.0.7/live"
fsp = 5

[[camera]]
name = "gate"
url = "rtsp://10.0.0.8/live"

[[camera]]
name = "ftp"
url = "ftp://admin:hunter2@10.0.0.9/clip.mp4"

[[camera]]
name = "missing"
path = "no/such.mp4"

[[camera]]
name = "fast"
url = "rtsp://10.0.0.10/live"
fps = 100000

[[camera]]
name = "forever"
url = "rtsp://10.0.0.11/live"
retention = "0d"

[[camera]]
name = "bad\\nname"
url = "rtsp://10.0.0.12/live"

[[camera]]
name = "zone"
url = "rtsp://10.0.0.13/live"
timezone = "Mars/Olympus"
"""


def test_each_bad_entry_is_one_error_line_naming_it_and_nothing_is_written(tmp_path):
    path = write(tmp_path, BAD_FILE)
    result = run(ingest_command, ["--cameras", path, "--gallery", tmp_path / "store", "--bundle", tmp_path])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"error: {path}: ") for line in lines), lines
    expected = [("camera 1 ('gate')", "unknown key 'fsp'"),
                ("camera 2 ('gate')", "used by an earlier camera"),
                ("camera 3 ('ftp')", "is not a stream"),
                ("camera 4 ('missing')", "does not exist"),
                ("camera 5 ('fast')", "fps 100000 is absurd"),
                ("camera 6 ('forever')", "retention '0d' is outside"),
                ("camera 7:", "control character"),
                ("camera 8 ('zone')", "not a time zone")]
    assert len(lines) == len(expected), lines
    for line, (entry, problem) in zip(lines, expected):
        assert entry in line and problem in line, (line, entry, problem)
    assert "hunter2" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "store").exists()


def test_a_file_that_is_not_toml_or_has_no_cameras_is_one_error(tmp_path):
    for text, words in (("[[camera]\n", "not a TOML file"), ("title = 'x'\n", "no [[camera]] tables")):
        result = run(ingest_command, ["--cameras", write(tmp_path, text), "--gallery", tmp_path / "s"])
        assert result.exit_code == 2 and words in result.stderr, result.output


def test_follow_without_a_camera_file_and_sources_with_one_are_refused(tmp_path):
    result = run(ingest_command, ["x.mp4", "--follow", "--gallery", tmp_path / "s"])
    assert result.exit_code == 2 and "--cameras FILE" in result.stderr
    result = run(ingest_command, ["x.mp4", "--cameras", tmp_path / "c.toml", "--gallery", tmp_path / "s"])
    assert result.exit_code == 2 and "give no SOURCE" in result.stderr
    result = run(ingest_command, ["--gallery", tmp_path / "s"])
    assert result.exit_code == 2 and "or --cameras FILE" in result.stderr


# -- a real HTTP server ------------------------------------------------------------------------------------


class ClipServer:
    """One file served progressively over HTTP (Range requests answered, as a camera recorder or a web
    server does), throttled to ``rate`` bytes/s; :meth:`kill` drops every connection mid-body. ``live``:
    served as a live camera's HTTP stream is, with no length and no ranges (read until the server closes)."""

    def __init__(self, path: Path, rate: float, port: int = 0, live: bool = False, hold_after: int | None = None):
        self.data, self.rate, self.port, self.live = path.read_bytes(), rate, port, live
        self.hold_after = hold_after  # the first answer sends this many bytes, then nothing (a stalled camera)
        self.sent = 0
        self.killed = threading.Event()
        self.start()

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the end of a body without a length: the connection's close

            def log_message(self, *args):
                pass

            def do_GET(self):
                data, start = owner.data, 0
                ranged = self.headers.get("Range", "")
                if owner.live:
                    self.send_response(200)
                elif ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if not owner.live:
                    self.send_header("Accept-Ranges", "bytes")
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                hold, owner.hold_after = owner.hold_after, None
                for at in range(start, len(data), 2048):
                    while hold is not None and at - start >= hold and not owner.killed.is_set():
                        time.sleep(0.05)  # the connection stays open, and no frame comes
                    if owner.killed.is_set():
                        return
                    try:
                        self.wfile.write(data[at:at + 2048])
                    except OSError:
                        return
                    owner.sent += min(2048, len(data) - at)
                    time.sleep(2048 / owner.rate)

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.killed.clear()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str = "cam1.mp4", credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}/{name}"

    def kill(self) -> None:
        self.killed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    from tbps_runtime.synth.footage import generate_footage

    return Path(generate_footage(tmp_path_factory.mktemp("footage") / "f", cameras=2, seconds=16.0, fps=10.0,
                                 size=(320, 180), people=3, seed=0, outfits="solid"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The fake bundle, its encoder, and a constant YOLO export: two people where the street is."""
    directory = tmp_path_factory.mktemp("parts")
    bundle = make_fake_bundle(directory / "fake.bundle")
    # 320x180 letterboxed into 640x640: x2, 140 px of padding above.
    graph = yolo_constant_graph(directory / "yolo.onnx", [[100, 200, 180, 460], [400, 220, 470, 480]], [0.9, 0.8])
    return bundle, Encoder.from_bundle(bundle, threads=1), str(graph)


def settings_for(parts, camera: str) -> IngestSettings:
    return IngestSettings(open_detector(parts[2]).name, 5.0, camera, None, 2, 1.0, 8)


def new_store(path: Path, encoder) -> LocalStore:
    return LocalStore.create(path, fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                             embed_dim=encoder.slot_shape[1])


def rows_of(store) -> list[tuple]:
    """Every row as (frame, offset, box, score, time, the track's rank by first appearance): what an
    unbroken run and a reconnected one must share (track ids are numbered by whoever ran)."""
    records = [record for _, batch in store.iter_rows() for record in batch]
    tracks: dict[int, int] = {}
    for record in sorted(records, key=lambda r: (r.frame, r.box)):
        tracks.setdefault(record.track, len(tracks))
    return sorted((r.frame, round(r.offset, 4), tuple(round(v, 2) for v in r.box), round(r.score, 5),
                   r.time, tracks[r.track]) for r in records)


def clean_rows(tmp_path, parts, footage, camera: str) -> list[tuple]:
    with new_store(tmp_path / f"clean-{camera}", parts[1]) as store, store.writing():
        ingest_source(str(footage / f"{camera}.mp4"), store, parts[1], open_detector(parts[2]),
                      settings_for(parts, camera))
        return rows_of(store)


def following(cameras, store, parts, stop, options=FAST):
    """follow_cameras on a thread: (the thread, a dict that receives its states)."""
    result: dict = {}

    def work():
        with store.writing():
            result.update(follow_cameras(cameras, store, parts[1], {c.name: open_detector(parts[2]) for c in cameras},
                                         {c.name: settings_for(parts, c.name) for c in cameras}, stop, options))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, result


def wait_for(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def progress_frame(store, source: str) -> int:
    text = store.progress(source)
    return -1 if text is None else json.loads(text)["frame"]


def test_a_server_killed_and_restarted_mid_stream_loses_and_repeats_no_window(tmp_path, footage, parts, caplog):
    expected = clean_rows(tmp_path, parts, footage, "cam1")
    clean = new_store(tmp_path / "clean-progress", parts[1])
    with clean, clean.writing():
        ingest_source(str(footage / "cam1.mp4"), clean, parts[1], open_detector(parts[2]), settings_for(parts, "cam1"))
        last = progress_frame(clean, str((footage / "cam1.mp4").resolve()))
    server = ClipServer(footage / "cam1.mp4", rate=20_000)  # the 16 s clip takes about 5 s to serve
    url = server.url()
    stop = threading.Event()
    with new_store(tmp_path / "s", parts[1]) as store:
        thread, states = following([Camera("cam1", url, stall=5.0)], store, parts, stop)
        wait_for(lambda: len(store) > 0, "the first windows")  # FFmpeg's probe reads the first seconds
        server.kill()
        rows_at_kill = len(store)
        time.sleep(0.6)  # down long enough for a refused connection or two
        server.start()  # the same port, so the same source
        wait_for(lambda: progress_frame(store, url) == last, "the rest of the clip")
        stop.set()
        thread.join(timeout=DEADLINE_S)
        assert not thread.is_alive()
        assert 0 < rows_at_kill < len(expected), "the server must be killed between windows of rows"
        assert rows_of(store) == expected
        state = states["cam1"]
        assert state.reconnects >= 1 and state.status == "stopped"
        recorded = store.camera_states()["cam1"]
        assert recorded["status"] == "stopped" and recorded["reconnects"] == state.reconnects
    said = caplog.text
    assert "camera cam1: " in said and "next try in" in said
    assert "connect failed" in said or "read failed" in said


@pytest.fixture(scope="module")
def live_clip(footage, tmp_path_factory) -> Path:
    """cam1 remuxed (no re-encoding, PyAV) into MPEG-TS, the form of a live camera's HTTP stream: no length."""
    import av

    out = tmp_path_factory.mktemp("live") / "cam1.ts"
    with av.open(str(footage / "cam1.mp4")) as clip, av.open(str(out), "w", format="mpegts") as stream:
        video = clip.streams.video[0]
        copy = stream.add_stream_from_template(video)
        for packet in clip.demux(video):
            if packet.dts is not None:
                packet.stream = copy
                stream.mux(packet)
    return out


def test_a_live_stream_reconnects_into_a_new_timeline_keeping_the_rows_before(tmp_path, live_clip, parts, caplog):
    server = ClipServer(live_clip, rate=25_000, live=True)  # about 4 s per connection
    url = server.url("live.ts")
    stop = threading.Event()
    with new_store(tmp_path / "s", parts[1]) as store:
        thread, states = following([Camera("gate", url, stall=5.0)], store, parts, stop)
        wait_for(lambda: len(store) > 0, "the first windows")
        server.kill()
        killed_at = time.time()
        before = rows_of(store)
        time.sleep(0.6)
        server.start()
        wait_for(lambda: max(starts(rows_of(store))) >= killed_at, "rows of the second connection")
        stop.set()
        thread.join(timeout=DEADLINE_S)
        after = rows_of(store)
        assert states["gate"].reconnects >= 1 and states["gate"].status == "stopped"
    assert {r[:5] for r in before} <= {r[:5] for r in after}, "the rows of the first connection stay"
    # Each connection is a timeline of its own, dated from when it was opened (time - offset).
    timelines = sorted(starts(after))
    assert len(timelines) >= 2 and timelines[0] < killed_at <= timelines[-1]
    second = [r for r in after if round(r[4] - r[1], 2) == timelines[-1]]
    assert min(r[0] for r in second) <= 2  # its frames counted from the new connection's first
    assert "camera gate: read failed" in caplog.text


def test_a_stalled_stream_is_detected_and_reopened(tmp_path, live_clip, parts, caplog):
    server = ClipServer(live_clip, rate=50_000, live=True, hold_after=30_000)
    url = server.url("live.ts")
    stop = threading.Event()
    try:
        with new_store(tmp_path / "s", parts[1]) as store:
            thread, states = following([Camera("gate", url, stall=1.0)], store, parts, stop)
            wait_for(lambda: len(starts(rows_of(store))) >= 2, "rows of a second connection")
            stop.set()
            thread.join(timeout=DEADLINE_S)
    finally:
        server.kill()
    assert f"camera gate: stalled: {url} gave no frame for 1 s; next try in" in caplog.text
    assert states["gate"].reconnects >= 1


def starts(rows) -> set[float]:
    """The start of each connection's timeline among ``rows`` (rows_of's): time - offset."""
    return {round(time_ - offset, 2) for _, offset, _, _, time_, _ in rows}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_camera_that_never_connects_keeps_retrying_while_another_ingests(tmp_path, footage, parts, caplog):
    expected = clean_rows(tmp_path, parts, footage, "cam2")
    dead = f"http://viewer:topsecret@127.0.0.1:{free_port()}/live.ts"
    cameras = [Camera("dead", dead, stall=5.0), Camera("cam2", str(footage / "cam2.mp4"))]
    stop = threading.Event()
    with new_store(tmp_path / "s", parts[1]) as store:
        thread, states = following(cameras, store, parts, stop)
        wait_for(lambda: store.camera_states().get("cam2", {}).get("status") == "finished", "cam2 to finish")
        wait_for(lambda: store.camera_states().get("dead", {}).get("reconnects", 0) >= 3, "three retries")
        recorded = store.camera_states()["dead"]
        assert recorded["status"] == "reconnecting" and recorded["last_frame"] is None
        assert "connect failed" in recorded["error"] and "topsecret" not in json.dumps(recorded)
        stop.set()
        thread.join(timeout=DEADLINE_S)
        assert rows_of(store) == expected
        assert states["dead"].status == "stopped" and states["cam2"].status == "finished"
    assert "topsecret" not in caplog.text
    assert "camera dead: connect failed: cannot open http://127.0.0.1:" in caplog.text


def test_retention_from_the_camera_file_prunes_while_following(tmp_path, footage, parts, caplog):
    # The clip is dated 2026-03-02 by its creation_time: seen from now, older than the hour kept. A camera
    # on a closed port keeps the loop running after cam2 is finished, as a site's other cameras would.
    cameras = [Camera("cam2", str(footage / "cam2.mp4"), retention=3600.0),
               Camera("dead", f"http://127.0.0.1:{free_port()}/live", stall=5.0)]
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="tbps_runtime.ingest.follow")  # whatever ran before in this process
    with new_store(tmp_path / "s", parts[1]) as store:
        thread, _ = following(cameras, store, parts, stop)
        wait_for(lambda: store.camera_states().get("cam2", {}).get("status") == "finished", "cam2 to finish")
        wait_for(lambda: len(store) == 0, "the next retention pass")
        stop.set()
        thread.join(timeout=DEADLINE_S)
        assert store.progress(str((footage / "cam2.mp4").resolve())) is not None  # ingested, then pruned
    assert "camera cam2: retention removed" in caplog.text


def test_without_follow_each_camera_is_ingested_once(tmp_path, footage, parts):
    expected = clean_rows(tmp_path, parts, footage, "cam2")
    cameras = write(tmp_path, f"""
[[camera]]
name = "cam2"
path = "{footage / 'cam2.mp4'}"
""")
    args = ["--cameras", cameras, "--gallery", tmp_path / "s", "--bundle", parts[0], "--detector", parts[2],
            "--window", 1, "--json", "-q"]
    first = run(ingest_command, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["sources"][0]["camera"] == "cam2"
    again = run(ingest_command, args)  # ingested to its end: skipped
    assert again.exit_code == 0 and json.loads(again.stdout)["sources"][0]["skipped"]
    with LocalStore.open(tmp_path / "s") as store:
        assert rows_of(store) == expected


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_stops_the_command_cleanly(tmp_path, footage, parts, stop):
    server = ClipServer(footage / "cam1.mp4", rate=8_000)  # still streaming at SIGTERM
    store_dir = tmp_path / "s"
    cameras = write(tmp_path, f"""
[[camera]]
name = "street"
url = "{server.url(credentials='viewer:topsecret@')}"
retention = "30d"

[[camera]]
name = "dead"
url = "http://viewer:topsecret@127.0.0.1:{free_port()}/live"
""")
    command = [sys.executable, "-m", "tbps_runtime.cli", "ingest", "--cameras", str(cameras), "--follow",
               "--gallery", str(store_dir), "--bundle", str(parts[0]), "--detector", parts[2], "--window", "1",
               "--json"]
    tbps = shutil.which("tbps")
    if tbps:
        command = [tbps, *command[3:]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: (store_dir / "store.sqlite").exists() and _rows(store_dir) > 0, "the first window")
        process.send_signal(stop)
        out, err = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
        server.kill()
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["cameras"]["street"]["status"] == "stopped" and report["cameras"]["dead"]["status"] == "stopped"
    assert "topsecret" not in out + err and "stopped: every finished window" in err
    with LocalStore.open(store_dir) as store:
        progress = json.loads(store.progress(server.url()))
        frames = {record.frame for _, batch in store.iter_rows() for record in batch}
        assert frames and max(frames) <= progress["frame"]  # every row's window is committed with its progress
    info = run(gallery_group, ["info", store_dir])
    assert "followed   street: stopped" in info.stdout and "followed   dead: stopped" in info.stdout
    assert "topsecret" not in info.stdout
    as_json = json.loads(run(gallery_group, ["info", store_dir, "--json"]).stdout)
    assert as_json["followed"]["dead"]["reconnects"] >= 1


def _rows(directory: Path) -> int:
    try:
        with LocalStore.open(directory) as store:
            return len(store)
    except Exception:  # noqa: BLE001 - the catalog is being created
        return 0


def test_rtsp_against_a_real_server_needs_ffmpeg_and_an_rtsp_server():
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg): it publishes the clip to an RTSP server")
    if shutil.which("rtsp-streaming-server") is None and shutil.which("mediamtx") is None:
        pytest.skip("no RTSP server installed (npm install -g rtsp-streaming-server, or mediamtx)")
    pytest.skip("an RTSP server and ffmpeg are installed, but the RTSP variant is not written yet")


def followed_store(tmp_path, footage, parts) -> Path:
    """cam2's rows, and the states a follow loop records: gate live, yard reconnecting, old stale."""
    directory = tmp_path / "s"
    store = LocalStore.create(directory, fingerprint=parts[1].fingerprint, num_slots=parts[1].slot_shape[0],
                              embed_dim=parts[1].slot_shape[1], bundle=parts[0])
    with store, store.writing():
        ingest_source(str(footage / "cam2.mp4"), store, parts[1], open_detector(parts[2]), settings_for(parts, "cam2"))
        now = time.time()
        store.record_camera_states({
            "gate": {"status": "live", "last_frame": now - 1, "last_frame_iso": "2026-03-02T14:00:05.000Z",
                     "fps": 4.8, "reconnects": 2, "error": None, "updated": now},
            "yard": {"status": "reconnecting", "last_frame": None, "last_frame_iso": None, "fps": 0.0,
                     "reconnects": 7, "error": "connect failed: cannot open rtsp://10.0.0.7/live", "updated": now},
            "old": {"status": "live", "last_frame": now - 99, "last_frame_iso": None, "fps": 5.0, "reconnects": 0,
                    "error": None, "updated": now - 99}})  # its follow loop died 99 s ago
    return directory


def test_the_service_shows_each_followed_camera_in_readyz_and_metrics(tmp_path, footage, parts):
    pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
    from serve_clients import serving

    directory = followed_store(tmp_path, footage, parts)
    key = {"Authorization": "Bearer k" + "x" * 31}
    with serving(directory, api_key="k" + "x" * 31) as client:
        assert "followed" not in client.get("/readyz").json()  # without the key: the status only
        followed = client.get("/readyz", headers=key).json()["followed"]
        assert followed["gate"] == {"status": "live", "last_frame": "2026-03-02T14:00:05.000Z", "fps": 4.8,
                                    "reconnects": 2}
        assert followed["yard"]["status"] == "reconnecting" and "connect failed" in followed["yard"]["error"]
        assert followed["old"]["status"] == "stopped"
        metrics = client.get("/metrics").text
    assert 'tbps_camera_up{camera="gate"} 1.0' in metrics and 'tbps_camera_up{camera="yard"} 0.0' in metrics
    assert 'tbps_camera_up{camera="old"} 0.0' in metrics and 'tbps_camera_reconnects{camera="yard"} 7.0' in metrics
    assert 'tbps_camera_last_frame{camera="gate"} 1.772460005e+09' in metrics


def test_the_page_shows_each_followed_camera_and_one_that_stopped(tmp_path, footage, parts):
    pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
    from page_helpers import app_for, chromium, missing_browser, open_page, running

    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    directory = followed_store(tmp_path, footage, parts)
    with running(app_for(directory)) as base, chromium() as browser:
        page = browser.new_page()
        open_page(page, base)
        page.wait_for_function("() => document.getElementById('service').textContent.includes('gate')")
        line = page.text_content("#service")
        title = page.get_attribute("#service", "title")
    assert "gate live (2 reconnects)" in line and "yard reconnecting (7 reconnects)" in line, line
    assert "old stopped" in line, line
    assert "yard: reconnecting, connect failed: cannot open rtsp://10.0.0.7/live" in title, title
