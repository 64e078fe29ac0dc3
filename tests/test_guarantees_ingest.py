"""Issue 24, ingest: ``tbps ingest`` and the gallery commands under hostile input and a failing disk.

1. A stream's credentials reach no output: not the names (:func:`source_name`, :func:`camera_name`), not
   stderr or the log, not ``--json``, not the store's files, whatever a password holds (``/``, ``?``,
   ``#``, ``@``, ``:``, ``;``, ``%`` unescaped) and wherever it sits (userinfo, ``password=`` in the query,
   ``;password=`` in the path).
2. One file is one source however its path is spelt (``foot/cam1.mp4``, ``./foot/cam1.mp4``, absolute);
   a store that keyed it by the path as typed still knows it.
3. Every time that enters a store lies in 1900..3000: ``--start``, ``--since``/``--until``, a
   container's ``creation_time``, and every row's start + offset.
4. Camera names are checked where they enter (``--camera``), made valid where ingest derives them (a
   file name); ``tbps gallery info`` prints one line per camera whatever the catalog holds.
5. A full disk during ``tbps ingest`` is one ``error:`` line; the store keeps its committed windows and
   a rerun after freeing space continues.

Real processes where what reaches the terminal matters (FFmpeg writes to the file descriptors); a
local HTTP server plays a stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import string
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")

from cli_assertions import assert_user_error, run  # noqa: E402
from page_helpers import http_server  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tbps_runtime.cli.ingest import gallery_group, ingest_command  # noqa: E402
from tbps_runtime.cli.search import rank_command  # noqa: E402
from tbps_runtime.ingest.sources import camera_name, source_name  # noqa: E402
from tbps_runtime.store.open import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIME_MAX = 32503680000.0  # 3000-01-01T00:00Z


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two cameras, 2 s at 10 fps, 160x90, two people each: small enough for a 256 KiB disk."""
    from tbps_runtime.synth.footage import generate_footage

    return Path(generate_footage(tmp_path_factory.mktemp("footage") / "f", cameras=2, seconds=2.0, fps=10.0,
                                 size=(160, 90), people=2, seed=0, outfits="solid"))


def ingest_args(video, gallery, detections, *extra):
    return [video, "--gallery", gallery, "--detections", detections, "--fps", 5, "--window", 0.5, *extra]


def ingest(footage, gallery, camera="cam1", *extra, video=None):
    return run(ingest_command, ingest_args(video or footage / f"{camera}.mp4", gallery,
                                           footage / f"{camera}.gt.txt", "-q", *extra))


def state(gallery):
    """Everything a store holds that a failed command must leave as it was: rows and progress."""
    with open_store(gallery) as store:
        rows = sorted((r.source, r.camera, r.time, r.frame, r.track, r.box, r.crop)
                      for _, records in store.iter_rows() for r in records)
        return rows, store.all_progress()


def assert_one_error(result, *words):
    """One ``error:`` line, status 2, holding one of ``words`` at least."""
    assert_user_error(result)
    assert any(word in result.stderr for word in words), result.stderr


def records(gallery):
    with open_store(gallery) as store:
        return [r for _, batch in store.iter_rows() for r in batch]


def tbps(*args, prelude=""):
    """``tbps ARGS`` in a process of its own: everything written to its stdout and stderr, FFmpeg's too."""
    code = f"{prelude}\nfrom tbps_runtime.cli import main; main(prog_name='tbps')"
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    stdout, stderr = (s.decode("utf-8", "replace") for s in (done.stdout, done.stderr))
    return SimpleNamespace(exit_code=done.returncode, stdout=stdout, stderr=stderr, output=stdout + stderr)


def files_text(directory: Path) -> bytes:
    """Every byte of every file under ``directory`` (catalog, its WAL, crops): where a secret could hide."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def remux(video: Path, output: Path, creation_time: str | None = None) -> Path:
    """``video``'s packets in a NUT container (it streams over HTTP, and keeps any ``creation_time`` text)."""
    import av

    with av.open(str(video)) as source, av.open(str(output), "w", format="nut") as target:
        if creation_time is not None:
            target.metadata["creation_time"] = creation_time
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return output


# ---- 1. credentials ------------------------------------------------------------------------------------

# A secret is made of words no output of tbps holds by chance (tbps writes lower-case paths, keys, hex
# names and numbers; 8 letters of 11 do not turn up in binary files either), joined by the characters
# users paste unescaped into passwords.
WORD = st.text(alphabet="CEGJKMPQUXZ", min_size=8, max_size=10)
GLUE = st.lists(st.sampled_from([c for c in string.printable if not c.isalnum()] + ["%2F", "%40", "%23"]),
                max_size=3).map("".join)


@st.composite
def secrets(draw):
    """A password: words and glue, maybe starting or ending with glue; (the text, its words)."""
    parts = draw(st.lists(st.tuples(GLUE, WORD), min_size=1, max_size=3))
    text = "".join(glue + word for glue, word in parts) + draw(GLUE)
    return text, [word for _, word in parts]


@st.composite
def stream_urls(draw, scheme=None, host=None, path=None):
    """A stream URL as users paste it: (url, the secret words in it, the parts of it its name must keep).

    An ``@`` after the host of a URL with a userinfo, a port or an IPv6 host, or before any ``/``, ``?``
    or ``#``, may end a userinfo: the name need not keep what precedes it; nor anything after a ``#``."""
    words = []
    scheme = scheme or draw(st.sampled_from(["rtsp", "rtsps", "rtmp", "http", "https", "srt"]))
    host = host or draw(st.sampled_from(["127.0.0.1", "cam7.example", "10.0.0.7", "[::1]"]))
    port = "" if ":" in host and not host.startswith("[") else draw(st.sampled_from(["", ":554", ":8554", ":1"]))
    segment = st.text(alphabet=string.ascii_lowercase + string.digits + "._-@", min_size=1, max_size=6)
    path = path if path is not None else "".join("/" + s for s in draw(st.lists(segment, max_size=3)))
    userinfo = ""
    if draw(st.booleans()):  # user:password@, or a user alone
        user = draw(WORD)
        words.append(user)
        if draw(st.booleans()):
            password, password_words = draw(secrets())
            words += password_words
            userinfo = f"{user}:{password}@"
        else:
            userinfo = f"{user}@"
    parameters, kept, fragment = [], [], False
    for _ in range(draw(st.integers(0, 3))):
        separator = draw(st.sampled_from(["?", "&", ";"]))
        if draw(st.booleans()):
            name = draw(st.sampled_from(["password", "pwd", "passwd", "token", "PassWord"]))
            value, value_words = draw(secrets())
            value = value.replace("&", "").replace(";", "").replace("=", "")  # what would end the value
            words += value_words
            parameters.append(f"{separator}{name}={value}")
            fragment = fragment or "#" in value
        else:
            name = draw(st.sampled_from(["channel", "subtype", "profile"]))
            value = draw(st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=4))
            parameters.append(f"{separator}{name}={value}")
            kept += [] if fragment else [f"{name}={value}"]
    url = f"{scheme}://{userinfo}{host}{port}{path}{''.join(parameters)}"
    after = path + "".join(parameters)
    head = after[:min((i for i in map(after.find, "/?#") if i >= 0), default=len(after))]
    plain = "@" not in head and ("@" not in after or not (userinfo or port or ":" in host))
    keeps = [host + port, *[s for s in path.split("/") if s], *kept] if plain else []
    return url, words, keeps


@settings(max_examples=400, deadline=None)
@given(stream_urls())
@example(("rtsp://admin:S3cretPW/x@127.0.0.1:1/live", ["S3cretPW"], ["127.0.0.1:1", "live"]))
@example(("rtsp://admin:pa?ss#S3cretPW@cam/live", ["S3cretPW"], ["cam", "live"]))
@example(("rtsp://cam/live;password=S3cretPW", ["S3cretPW"], ["cam", "live"]))
@example(("rtsp://cam/live?channel=1&pwd=S3cretPW", ["S3cretPW"], ["cam", "live", "channel=1"]))
@example(("rtsp://cam7/live@main", [], ["cam7", "live@main"]))
def test_a_streams_names_keep_none_of_its_credentials(case):
    url, words, keeps = case
    names = [source_name(url), camera_name(url)]
    for word in words:
        assert all(word not in name for name in names), (url, names)
    for part in keeps:
        assert part in names[0], (url, names[0])


def test_stream_credentials_reach_no_output_of_a_real_run(fake_bundle, footage, tmp_path):
    """The issue's command lines, run for real: an unreachable stream fails fast; no password on stderr,
    in --json or in the store, whatever characters it holds."""
    (tmp_path / "none.txt").write_text("")
    for url, secret in [("rtsp://admin:S3cretPW/x@127.0.0.1:1/live", "S3cretPW"),
                        ("rtsp://admin:S3cret?PW@127.0.0.1:1/live", "S3cret"),
                        ("rtsp://admin:S3cret#PW@127.0.0.1:1/live", "S3cret"),
                        ("rtsp://admin:XX@S3cret/P:W;@127.0.0.1:1/live", "S3cret"),
                        ("rtsp://127.0.0.1:1/live;password=S3cretPW", "S3cretPW"),
                        ("rtsp://127.0.0.1:1/live?channel=1&pwd=S3cretPW", "S3cretPW"),
                        ("rtsp://admin:S3cretPW@127.0.0.1:1/live?token=S3cretPW", "S3cretPW")]:
        gallery = tmp_path / "s"
        done = tbps("ingest", url, "--gallery", gallery, "--bundle", fake_bundle, "--detections",
                    tmp_path / "none.txt", "--json")
        assert done.exit_code == 2 and done.stderr.strip().splitlines()[-1].startswith("error: "), done.output
        assert "Traceback" not in done.output
        assert "127.0.0.1:1" in done.output  # it says which stream failed
        assert secret not in done.output and "admin" not in done.output, (url, done.output)
        assert secret.encode() not in files_text(gallery)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_stream_played_for_real_leaves_its_credentials_nowhere(data, fake_bundle, footage, tmp_path_factory):
    """A local HTTP server plays the stream: FFmpeg opens what it can parse (then rows are stored, named
    without credentials), fails on the rest; either way nothing shows or keeps a secret."""
    folder = tmp_path_factory.mktemp("served")
    remux(footage / "cam1.mp4", folder / "cam1.nut")
    gallery = folder / "s"
    with http_server(folder) as address:
        url, words, keeps = data.draw(stream_urls(scheme="http", host=address, path="/cam1.nut"), label="case")
        done = tbps("ingest", url, "--gallery", gallery, "--bundle", fake_bundle, "--detections",
                    footage / "cam1.gt.txt", "--fps", 5, "--window", 0.5, "--json")
    assert done.exit_code in (0, 2) and "Traceback" not in done.output, done.output
    outputs = [done.output]
    if gallery.is_dir():
        outputs.append(files_text(gallery).decode("utf-8", "replace"))
        outputs.append(run(gallery_group, ["info", gallery, "--json"]).output)
        outputs.append(run(rank_command, ["--gallery", gallery, "--query", "red", "-k", 50, "--json"]).output)
        # The address is kept unless an @ after it makes the URL ambiguous (redact_url drops it then).
        assert all(r.source == source_name(url) and all(k in r.source for k in keeps) for r in records(gallery))
    for word in words:
        assert all(word not in text for text in outputs), (url, word)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=stream_urls())
def test_any_streams_credentials_reach_no_log_line_row_or_json(case, fake_bundle, footage, tmp_path_factory,
                                                              monkeypatch, capfd):
    """Every scheme and host: the stream is played from a local file (its URL only names it), so each
    generated URL reaches the rows, the progress, the log lines (not --quiet) and --json."""
    from tbps_runtime.ingest import pipeline
    from tbps_runtime.ingest.sources import open_source

    url, words, _ = case
    monkeypatch.setattr(pipeline, "open_source", lambda source, fps: open_source(str(footage / "cam1.mp4"), fps))
    gallery = tmp_path_factory.mktemp("played") / "s"
    result = run(ingest_command, [url, "--gallery", gallery, "--bundle", fake_bundle, "--detections",
                                  footage / "cam1.gt.txt", "--fps", 5, "--window", 0.5, "--json"])
    captured = capfd.readouterr()
    assert result.exit_code == 0, result.output
    outputs = [result.output, captured.out, captured.err, files_text(gallery).decode("utf-8", "replace"),
               run(gallery_group, ["info", gallery]).output]
    rows = records(gallery)
    assert rows and {r.source for r in rows} == {source_name(url)}
    for word in words:
        assert all(word not in text for text in outputs), (url, word)


# ---- 2. one file, one source ---------------------------------------------------------------------------

def test_one_file_under_any_spelling_is_one_source(footage, fake_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(footage.parent)
    gallery = tmp_path / "s"
    relative = f"{footage.name}/cam1.mp4"
    assert ingest(footage, gallery, "cam1", "--bundle", fake_bundle, video=relative).exit_code == 0
    first = state(gallery)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cam1.mp4").symlink_to(footage / "cam1.mp4")
    for spelling in (f"./{relative}", footage / "cam1.mp4", f"{footage.name}/../{relative}",
                     tmp_path / "elsewhere" / "cam1.mp4"):
        result = ingest(footage, gallery, "cam1", video=spelling)
        assert result.exit_code == 0, result.output
        assert state(gallery) == first, spelling  # recognised as the finished source: skipped
    resolved = str((footage / "cam1.mp4").resolve())
    assert set(first[1]) == {resolved} and {r[0] for r in first[0]} == {resolved}
    # --source in any spelling selects its rows
    hits = json.loads(run(rank_command, ["--gallery", gallery, "--query", "red", "-k", 50, "--json", "-q",
                                         "--source", f"./{relative}"]).stdout)
    assert len(hits) == len(first[0])
    gone = json.loads(run(gallery_group, ["delete", gallery, "--source", relative, "--yes", "--json"]).stdout)
    assert gone["rows"] == len(first[0]) and state(gallery) == ([], {})


def test_a_store_that_keyed_a_file_by_its_path_as_typed_still_knows_it(footage, fake_bundle, tmp_path,
                                                                      monkeypatch):
    """Stores made before keyed a file by the path as typed (``foot/cam1.mp4``): given again under another
    spelling it is still the finished source, and --source in any spelling removes its rows."""
    monkeypatch.chdir(footage.parent)
    gallery = tmp_path / "s"
    assert ingest(footage, gallery, "cam1", "--bundle", fake_bundle).exit_code == 0
    typed = f"{footage.name}/cam1.mp4"
    with contextlib.closing(sqlite3.connect(gallery / "store.sqlite")) as db, db:  # as the old tbps keyed it
        db.execute("UPDATE sources SET key = ?", (typed,))
        db.execute("UPDATE rows SET source = ?", (typed,))
    before = state(gallery)
    result = ingest(footage, gallery, "cam1", video=f"./{typed}")
    assert result.exit_code == 0 and state(gallery) == before, result.output
    gone = json.loads(run(gallery_group, ["delete", gallery, "--source", f"./{typed}", "--yes", "--json"]).stdout)
    assert gone["rows"] == len(before[0]) > 0 and state(gallery) == ([], {})


# ---- 3. times ------------------------------------------------------------------------------------------

@pytest.fixture()
def store(footage, fake_bundle, tmp_path):
    """A store holding cam2, ingested to its end."""
    gallery = tmp_path / "s"
    result = ingest(footage, gallery, "cam2", "--bundle", fake_bundle)
    assert result.exit_code == 0, result.output
    return gallery


@pytest.mark.parametrize("start, fragment", [
    ("9999-12-31T00:00", "accepted range"),
    ("0001-01-01", "accepted range"),
    ("1899-12-31T23:59:59Z", "accepted range"),
    ("2999-12-31T23:59:59Z", "3000-01-01"),  # 2 s of video from here: its last rows past the end
])
def test_a_start_out_of_range_is_one_error_and_the_store_is_unchanged(start, fragment, footage, store):
    before = state(store)
    assert_user_error(ingest(footage, store, "cam1", "--start", start), "start", fragment)
    assert state(store) == before


@pytest.mark.parametrize("command", ["delete", "rank"])
@pytest.mark.parametrize("option, value", [("--since", "9999-12-31T00:00"), ("--until", "0001-01-01"),
                                           ("--since", "3000-01-01")])
def test_a_filter_time_out_of_range_is_one_error(command, option, value, store):
    before = state(store)
    if command == "delete":
        result = run(gallery_group, ["delete", store, option, value, "--yes"])
    else:
        result = run(rank_command, ["--gallery", store, "--query", "red", option, value])
    assert_user_error(result, option, "accepted range")
    assert state(store) == before


@pytest.mark.parametrize("stamp", ["9999-12-31T00:00:00.000000Z", "1899-12-31T23:59:59.000000Z",
                                   "2999-12-31T23:59:59.000000Z"])  # the last: 2 s of video run past 3000
def test_a_creation_time_out_of_range_is_ignored_with_a_warning(stamp, footage, fake_bundle, tmp_path):
    video = remux(footage / "cam1.mp4", tmp_path / "cam1.nut", stamp)
    result = ingest(footage, tmp_path / "s", "cam1", "--bundle", fake_bundle, video=video)
    assert result.exit_code == 0, result.output
    assert "creation" in result.stderr and "ignoring" in result.stderr
    rows = records(tmp_path / "s")
    assert rows and all(r.time is None for r in rows)


def test_a_creation_time_of_the_year_1_is_ignored_with_a_warning(footage, fake_bundle, tmp_path, monkeypatch):
    """FFmpeg's writers rewrite a year-1 creation_time as ``1-01-01...``; a file from elsewhere may hold
    ``0001-01-01...``, which ISO-8601 reads: the container's metadata says so here."""
    from tbps_runtime.ingest import pipeline
    from tbps_runtime.ingest.sources import open_source

    def year_one(source, fps):
        opened = open_source(source, fps)
        opened._container.metadata["creation_time"] = "0001-01-01T00:00:00.000000Z"
        return opened

    monkeypatch.setattr(pipeline, "open_source", year_one)
    result = ingest(footage, tmp_path / "s", "cam1", "--bundle", fake_bundle)
    assert result.exit_code == 0 and "creation" in result.stderr and "ignoring" in result.stderr, result.output
    rows = records(tmp_path / "s")
    assert rows and all(r.time is None for r in rows)


def test_a_stream_running_past_the_year_3000_stops_there(footage, fake_bundle, tmp_path):
    """A stream's length is unknown up front: the window that would date a row past the range is refused
    (one error line), the windows before it are kept, and no stored row lies outside the range."""
    remux(footage / "cam1.mp4", tmp_path / "cam1.nut")
    gallery = tmp_path / "s"
    with http_server(tmp_path) as address:
        result = run(ingest_command, ingest_args(f"http://{address}/cam1.nut", gallery, footage / "cam1.gt.txt",
                                                 "--bundle", fake_bundle, "--start", "2999-12-31T23:59:59Z",
                                                 "-q"))
    assert_user_error(result, "3000-01-01")
    rows = records(gallery)
    assert rows and all(r.time < TIME_MAX for r in rows)


# ---- 4. camera names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("camera", ["cam1\ncamera     forged: 999 row(s)", "cam\x1b[2J", "cam\u2028x", "c" * 1100,
                                    ""], ids=["newline", "escape", "line-separator", "1100-characters", "empty"])
def test_a_camera_that_is_not_a_name_is_refused_before_any_work(camera, footage, fake_bundle, tmp_path):
    gallery = tmp_path / "s"
    assert_user_error(ingest(footage, gallery, "cam1", "--bundle", fake_bundle, "--camera", camera), "--camera")
    assert not gallery.exists()


def test_a_file_name_that_is_not_a_name_gives_a_valid_camera_and_source(footage, fake_bundle, tmp_path):
    odd = tmp_path / "cam\n1.mp4"
    shutil.copy(footage / "cam1.mp4", odd)
    gallery = tmp_path / "s"
    result = ingest(footage, gallery, "cam1", "--bundle", fake_bundle, video=odd)
    assert result.exit_code == 0, result.output
    rows = records(gallery)
    assert rows and {(r.camera, r.source) for r in rows} == {("cam_1", str(tmp_path.resolve() / "cam\\n1.mp4"))}
    hits = json.loads(run(rank_command, ["--gallery", gallery, "--query", "red", "--camera", "cam_1", "--json",
                                         "-q"]).stdout)
    assert hits
    before = state(gallery)
    assert ingest(footage, gallery, "cam1", video=odd).exit_code == 0 and state(gallery) == before


def test_a_file_name_that_is_not_utf8_is_ingested_under_an_escaped_name(footage, fake_bundle, tmp_path):
    odd = os.fsencode(tmp_path) + b"/caf\xe9.mp4"
    shutil.copy(footage / "cam1.mp4", odd)
    gallery = tmp_path / "s"
    done = tbps("ingest", odd, "--gallery", gallery, "--bundle", fake_bundle, "--detections",
                footage / "cam1.gt.txt", "--fps", 5, "-q")
    assert done.exit_code == 0, done.output
    assert {(r.camera, r.source) for r in records(gallery)} == {("caf\\xe9", str(tmp_path.resolve()) + "/caf\\xe9.mp4")}


def test_gallery_info_prints_one_line_per_camera_whatever_the_catalog_holds(footage, store):
    """A catalog written by an older tbps (or by hand) may hold any name: info cannot be made to print a
    line of its own (it prints the name escaped, or refuses the catalog in one error line)."""
    forged = "cam2\ncamera     forged: 999 row(s), 1 track(s), - .. -\rbundle     \x1b[2Jelsewhere"
    with contextlib.closing(sqlite3.connect(store / "store.sqlite")) as db, db:
        db.execute("UPDATE rows SET camera = ?", (forged,))
    result = run(gallery_group, ["info", store])
    if result.exit_code != 0:
        assert_user_error(result)
    assert not any(c in result.output for c in "\r\x1b")
    lines = [line for line in result.stdout.split("\n") if line]
    assert [line.split()[0] for line in lines] in ([], ["store", "rows", "time", "size", "bundle", "camera"])


# ---- 5. a full disk ------------------------------------------------------------------------------------

@pytest.mark.parametrize("room", [0, 8, 16, 24], ids=lambda kib: f"{kib}KiB")
def test_a_full_disk_during_ingest_is_one_error_and_a_rerun_continues(room, small_disk, footage, fake_bundle):
    """cam2 ingested, then the disk filled but for ``room`` KiB, then cam1: wherever the disk runs out (on
    this footage: the store's pending list, a crop, the segment's space check, the catalog), one error
    line; what the store held stays; the rows of cam1 kept are whole windows (each crop on disk, none past
    its saved progress); after freeing space the same command finishes cam1 without a frame twice."""
    disk = small_disk(1 << 30)  # no filler yet
    gallery = disk / "s"
    assert ingest(footage, gallery, "cam2", "--bundle", fake_bundle).exit_code == 0
    cam2 = state(gallery)
    small_disk(room * 1024)
    result = ingest(footage, gallery, "cam1")
    (disk / "filler").unlink()
    assert_one_error(result, "space", "full")
    rows, progress = state(gallery)
    assert [r for r in rows if r[1] == "cam2"] == cam2[0]
    kept = [r for r in rows if r[1] == "cam1"]
    key = str((footage / "cam1.mp4").resolve())
    saved = json.loads(progress[key])["frame"] if key in progress else -1
    assert all(frame <= saved for _, _, _, frame, *_ in kept)
    with open_store(gallery) as store:
        assert all(store.crop_path(r[6]).is_file() for r in rows)
    again = ingest(footage, gallery, "cam1")
    assert again.exit_code == 0, again.output
    rows, progress = state(gallery)
    assert json.loads(progress[key])["finished"]
    frames = [r[3] for r in rows if r[1] == "cam1"]
    assert len(set(zip(frames, [r[5] for r in rows if r[1] == "cam1"]))) == len(frames) > 0
    assert [r for r in rows if r[1] == "cam2"] == cam2[0]


@pytest.mark.parametrize("room", [8, 24, 64, 96], ids=lambda kib: f"{kib}KiB")
def test_a_full_disk_making_a_new_store_is_one_error_and_a_rerun_works(room, small_disk, footage, fake_bundle):
    disk = small_disk(room * 1024)
    gallery = disk / "s"
    assert_one_error(ingest(footage, gallery, "cam1", "--bundle", fake_bundle), "space", "full")
    (disk / "filler").unlink()
    result = ingest(footage, gallery, "cam1", "--bundle", fake_bundle)
    assert result.exit_code == 0, result.output
    assert records(gallery)
