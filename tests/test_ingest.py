"""tbps ingest end to end: synthetic footage -> detections -> ByteTrack -> crops -> store -> filtered search;
resuming after Ctrl-C and after a hard kill; failing sources; the gallery commands (info, prune, delete,
reindex). The towers are the fake bundle's (tests/runtime_fakes.py: a crop's mean colour), so a person
dressed in one colour is found by that colour's word."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is needed for footage: pip install 'tbps[footage]'")
pytest.importorskip("trackers", reason="the trackers package is needed: pip install 'tbps[footage]'")

from cli_assertions import assert_user_error, run  # noqa: E402
from fake_detectors import Interrupt, constant_graph, yolo_constant_graph  # noqa: E402
from runtime_fakes import make_fake_bundle  # noqa: E402

from tbps_runtime.cli.ingest import gallery_group, ingest_command  # noqa: E402
from tbps_runtime.cli.search import rank_command  # noqa: E402
from tbps_runtime.ingest.detectors import Detections, FileDetections  # noqa: E402
from tbps_runtime.ingest.pipeline import IngestSettings, ingest_source  # noqa: E402
from tbps_runtime.model.encoder import Encoder  # noqa: E402
from tbps_runtime.store.local import LocalStore  # noqa: E402
from tbps_runtime.store.open import open_store  # noqa: E402
from tbps_runtime.store.rows import parse_time  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two cameras, 4 s at 10 fps, four people each dressed in one colour (ground truth in footage.json)."""
    from tbps_runtime.synth.footage import generate_footage

    out = generate_footage(tmp_path_factory.mktemp("footage") / "f", cameras=2, seconds=4.0, fps=10.0,
                           size=(320, 180), people=4, seed=0, outfits="solid")
    return Path(out), json.loads((Path(out) / "footage.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("fb") / "fake.bundle")


def ingest(store, footage_dir, camera, *extra):
    result = run(ingest_command, [footage_dir / f"{camera}.mp4", "--gallery", store, "--detections",
                                  footage_dir / f"{camera}.gt.txt", "--fps", 5, "--window", 1, "-q", *extra])
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory, footage, bundle):
    """Both cameras ingested with ground-truth boxes."""
    directory, _ = footage
    path = tmp_path_factory.mktemp("store") / "s"
    for camera in ("cam1", "cam2"):
        result = ingest(path, directory, camera, "--bundle", bundle)
        assert result.exit_code == 0, result.output
    return path


def colour_of(person) -> str:
    return person["captions"][0].split()[-1].rstrip(".")


def test_each_person_is_found_in_their_camera_and_time_window(footage, store):
    _, meta = footage
    for person in meta["people"]:
        result = run(rank_command, ["--gallery", store, "--query", f"a person in {colour_of(person)}",
                                    "--per-track", "-k", 1, "--json", "-q"])
        assert result.exit_code == 0, result.output
        (top,) = json.loads(result.stdout)
        seen = [a for a in person["appearances"] if a["camera"] == top["camera"]]
        assert seen, (person, top)
        first, last = parse_time(seen[0]["first_time"]), parse_time(seen[0]["last_time"])
        assert first - 1e-3 <= top["time"] <= last + 1e-3
        assert Path(top["path"]).is_file() and top["track_rows"] >= 1


def test_filters_apply_before_the_top_k(footage, store):
    _, meta = footage
    person = next(p for p in meta["people"] if len({a["camera"] for a in p["appearances"]}) == 1)
    (home,) = {a["camera"] for a in person["appearances"]}
    other = "cam2" if home == "cam1" else "cam1"
    query = f"a person in {colour_of(person)}"
    result = run(rank_command, ["--gallery", store, "--query", query, "-k", 50, "--json", "-q", "--camera", other])
    assert result.exit_code == 0 and all(hit["camera"] == other for hit in json.loads(result.stdout))
    last = max(parse_time(a["last_time"]) for a in person["appearances"])
    after = run(rank_command, ["--gallery", store, "--query", query, "-k", 1, "--json", "-q", "--since",
                               "2026-03-02T14:00:00Z", "--until", "2026-03-02T14:00:01Z"])
    hits = json.loads(after.stdout)
    assert all(parse_time("2026-03-02T14:00:00Z") <= h["time"] < parse_time("2026-03-02T14:00:01Z") for h in hits)
    assert last > parse_time("2026-03-02T14:00:00Z")


def test_rank_pictures_show_camera_time_and_link_the_video(footage, store, tmp_path):
    page = tmp_path / "r.html"
    result = run(rank_command, ["--gallery", store, "--query", "red", "--per-track", "-k", 2, "--html", page,
                                "--show", tmp_path / "r.png", "-q"])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "cam1" in text or "cam2" in text
    assert ".mp4#t=" in text and "file://" in text
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_ingesting_again_skips_finished_sources_and_refuses_other_settings(footage, store, bundle):
    directory, _ = footage
    before = LocalStore.open(store).info()["rows"]
    again = ingest(store, directory, "cam1")
    assert again.exit_code == 0 and LocalStore.open(store).info()["rows"] == before
    other = run(ingest_command, [directory / "cam1.mp4", "--gallery", store, "--detections",
                                 directory / "cam1.gt.txt", "--fps", 2, "-q"])
    assert_user_error(other, "other settings", "fps")


def test_ctrl_c_keeps_the_finished_windows_and_a_rerun_continues(footage, bundle, tmp_path):
    directory, _ = footage
    encoder = Encoder.from_bundle(bundle, threads=1)
    settings = IngestSettings("file:cam1.gt.txt", fps=5.0, window=1.0)
    store = LocalStore.create(tmp_path / "s", fingerprint=encoder.fingerprint, num_slots=3, embed_dim=4)
    source = str(directory / "cam1.mp4")
    with store.writing():
        with pytest.raises(KeyboardInterrupt):
            ingest_source(source, store, encoder, Interrupt(directory / "cam1.gt.txt", 26, KeyboardInterrupt()),
                          settings)
        saved = json.loads(store.progress(source))
        frames_before = {r.frame for _, records in store.iter_rows() for r in records}
        assert not saved["finished"] and 0 < saved["frame"] < 26 and max(frames_before) <= saved["frame"]
        report = ingest_source(source, store, encoder, FileDetections(directory / "cam1.gt.txt"), settings)
    assert report.resumed_after == saved["frame"] and not report.error
    frames_after = [r.frame for _, records in store.iter_rows() for r in records if r.frame not in frames_before]
    assert frames_after and min(frames_after) > saved["frame"]  # nothing before the saved frame twice
    assert json.loads(store.progress(source))["finished"]


def test_a_hard_kill_loses_at_most_the_current_window(footage, bundle, tmp_path):
    """SIGKILL mid-run (a real process): the store stays consistent and the CLI continues it."""
    directory, _ = footage
    gallery = tmp_path / "s"
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
from fake_detectors import Interrupt
from tbps_runtime.ingest.pipeline import IngestSettings, ingest_source
from tbps_runtime.model.encoder import Encoder
from tbps_runtime.store.local import LocalStore

class Kill(Interrupt):
    def detect(self, frame, index):
        if index == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.detect(frame, index)

encoder = Encoder.from_bundle({str(bundle)!r}, threads=1)
store = LocalStore.create({str(gallery)!r}, fingerprint=encoder.fingerprint, num_slots=3, embed_dim=4,
                          bundle={str(bundle)!r})
with store.writing():
    ingest_source({str(directory / 'cam1.mp4')!r}, store, encoder,
                  Kill({str(directory / "cam1.gt.txt")!r}, 30, None), IngestSettings("file:cam1.gt.txt", 5.0, window=1.0))
"""
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    store = LocalStore.open(gallery)
    saved = json.loads(store.progress(str(directory / "cam1.mp4")))
    assert 0 < saved["frame"] < 30 and not saved["finished"]
    result = run(ingest_command, [directory / "cam1.mp4", "--gallery", gallery, "--detections",
                                  directory / "cam1.gt.txt", "--fps", 5, "--window", 1, "-q"])
    assert result.exit_code == 0, result.output
    frames = [r.frame for _, records in store.iter_rows() for r in records]
    crops = [r.crop for _, records in store.iter_rows() for r in records]
    assert len(frames) == len(store) and all(store.crop_path(c).is_file() for c in crops)
    assert json.loads(store.progress(str(directory / "cam1.mp4")))["finished"]
    on_disk = {p.name for p in (gallery / "segments").iterdir()}
    assert len(on_disk) == store.info()["segments"]  # the killed run's unregistered file, if any, was swept


def test_a_source_failing_part_way_keeps_its_rows_and_exits_2(footage, bundle, tmp_path, monkeypatch):
    from tbps_runtime.ingest import pipeline
    from tbps_runtime.ingest.sources import SourceError, open_source

    directory, _ = footage

    class Dropping:
        def __init__(self, inner):
            self.inner = inner
            self.frame_count, self.frame_rate = inner.frame_count, inner.frame_rate

        def creation_time(self):
            return self.inner.creation_time()

        def frames(self, fps, after=-1):
            for frame in self.inner.frames(fps, after):
                if frame.index > 25:
                    raise SourceError("rtsp://cam/stream failed after frame 25: Connection reset by peer")
                yield frame

    monkeypatch.setattr(pipeline, "open_source", lambda source, fps: Dropping(open_source(source, fps)))
    result = run(ingest_command, [directory / "cam1.mp4", "--gallery", tmp_path / "s", "--bundle", bundle,
                                  "--detections", directory / "cam1.gt.txt", "--fps", 5, "--window", 1, "-q"])
    assert_user_error(result, "1 of 1 source(s) failed", "Connection reset")
    store = LocalStore.open(tmp_path / "s")
    assert len(store) > 0 and not json.loads(store.progress(str(directory / "cam1.mp4")))["finished"]


def test_bad_sources_and_options_are_one_error_line(footage, bundle, tmp_path):
    directory, _ = footage
    gallery = tmp_path / "s"
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    garbage = tmp_path / "det.txt"
    garbage.write_text("1,1,10,10,20,40,1\nhello world\n")
    cases = [
        (["missing.mp4", "--gallery", gallery, "--bundle", bundle], ["missing.mp4"]),
        ([not_video, "--gallery", gallery, "--bundle", bundle, "--detections", garbage], ["det.txt", "line 2"]),
        ([not_video, "--gallery", gallery, "--bundle", bundle], ["cannot open", "notes.mp4"]),
        ([not_video, not_video, "--gallery", gallery, "--bundle", bundle, "--camera", "c"], ["one source"]),
        ([directory / "cam1.mp4", "--gallery", gallery, "--bundle", bundle, "--start", "noon"], ["not a time"]),
        ([directory / "cam1.mp4", "--gallery", tmp_path / "fresh"], ["--bundle is needed"]),
        ([directory / "cam1.mp4", "--gallery", gallery, "--bundle", bundle, "--fps", -1], ["--fps"]),
    ]
    for args, fragments in cases:
        assert_user_error(run(ingest_command, [*args, "-q"]), *fragments)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    assert_user_error(run(ingest_command, [directory / "cam1.mp4", "--gallery", foreign, "--bundle", bundle,
                                           "--detections", directory / "cam1.gt.txt", "-q"]), "not empty")
    assert (foreign / "thesis.tex").read_text() == "keep"


def test_a_video_with_nobody_in_it_gives_no_rows_and_no_error(footage, bundle, tmp_path):
    directory, _ = footage
    empty = tmp_path / "none.txt"
    empty.write_text("")
    result = run(ingest_command, [directory / "cam1.mp4", "--gallery", tmp_path / "s", "--bundle", bundle,
                                  "--detections", empty, "--json", "-q"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["sources"]
    assert report["crops"] == 0 and report["frames"] > 0 and len(LocalStore.open(tmp_path / "s")) == 0


def test_prune_delete_info_and_reindex(footage, bundle, tmp_path):
    import shutil

    directory, _ = footage
    gallery = tmp_path / "s"
    for camera in ("cam1", "cam2"):
        assert ingest(gallery, directory, camera, "--bundle", bundle).exit_code == 0
    info = json.loads(run(gallery_group, ["info", gallery, "--json"]).stdout)
    assert {c["camera"] for c in info["cameras"]} == {"cam1", "cam2"} and info["rows"] > 0
    text = run(gallery_group, ["info", gallery]).stdout
    assert "cam1" in text and "2026-03-02T14:00" in text

    copy = tmp_path / "reindexed"
    result = run(gallery_group, ["reindex", gallery, "--bundle", bundle, "-o", copy, "-q"])
    assert result.exit_code == 0, result.output
    old, new = LocalStore.open(gallery), LocalStore.open(copy)
    assert len(new) == len(old)
    pick = lambda s: [(h.record.camera, h.record.frame, h.record.track) for h in s.search(
        Encoder.from_bundle(bundle, threads=1).embed_texts(["red"]), k=5)[0]]
    assert pick(new) == pick(old)  # the same crops, embedded again from their JPEGs

    dry = run(gallery_group, ["delete", gallery, "--camera", "cam2", "--dry-run", "--json"])
    assert json.loads(dry.stdout)["rows"] == info["cameras"][1]["rows"] and len(old) == info["rows"]
    gone = json.loads(run(gallery_group, ["delete", gallery, "--camera", "cam2", "--json"]).stdout)
    assert gone["cameras"] == {"cam2": info["cameras"][1]["rows"]} and gone["crops"] == gone["rows"]
    assert_user_error(run(gallery_group, ["prune", gallery, "--older-than", "1d"]), "all", "--yes")
    assert_user_error(run(gallery_group, ["prune", gallery, "--older-than", "soon"]), "not an age")
    assert_user_error(run(gallery_group, ["delete", gallery]), "say what to delete")
    pruned = run(gallery_group, ["prune", gallery, "--older-than", "1d", "--yes"])
    assert pruned.exit_code == 0 and "removed" in pruned.stdout
    assert len(LocalStore.open(gallery)) == 0 and not any((gallery / "crops").iterdir())
    shutil.rmtree(copy)


def test_plain_galleries_refuse_store_filters(gallery):
    assert_user_error(run(rank_command, ["--gallery", gallery, "--query", "red", "--camera", "cam1"]),
                      "need a store made by tbps ingest")


def test_a_yolo_export_finds_people_standing_still(bundle, tmp_path):
    """The detector path end to end: a still scene, and a graph in YOLOv8's output layout that predicts the
    people's boxes (letterboxed) plus a shifted duplicate of each (NMS must drop it) and a car (class 1)."""
    from tbps_runtime.synth.footage import generate_footage

    out = generate_footage(tmp_path / "still", cameras=1, seconds=1.0, fps=10.0, size=(320, 180), people=3, seed=2,
                           outfits="solid", still=True)
    meta = json.loads((out / "footage.json").read_text())
    first = {}
    for line in (out / "cam1.gt.txt").read_text().splitlines():
        frame, person, left, top, width, height = (float(v) for v in line.split(",")[:6])
        if frame == 1:
            first[int(person)] = (left, top, left + width, top + height)
    scale, pad_y = 640 / 320, (640 - 180 * 2) / 2  # 320x180 letterboxed into 640x640
    to_input = lambda b: [b[0] * scale, b[1] * scale + pad_y, b[2] * scale, b[3] * scale + pad_y]
    boxes, scores, classes = [], [], []
    for box in first.values():
        boxes += [to_input(box), [v + 3 for v in to_input(box)]]
        scores += [0.9, 0.5]
        classes += [0, 0]
    boxes.append([10, 150, 200, 250])  # a car in the frame's top-left
    scores.append(0.95)
    classes.append(1)
    graph = yolo_constant_graph(tmp_path / "yolo.onnx", boxes, scores, layout="v8", classes=classes, nc=2)
    result = run(ingest_command, [out / "cam1.mp4", "--gallery", tmp_path / "s", "--bundle", bundle,
                                  "--detector", graph, "--fps", 10, "--json", "-q", "--threads", 1])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["sources"]
    assert report["detections"] == len(first) * report["frames"]  # duplicates and the car are gone
    assert report["tracks"] == len(first)
    for person in meta["people"]:
        hits = json.loads(run(rank_command, ["--gallery", tmp_path / "s", "--query", f"a person in {colour_of(person)}",
                                             "-k", 1, "--json", "-q"]).stdout)
        expected = np.array(first[person["id"]])
        assert np.abs(np.array(hits[0]["box"]) - expected).max() <= 1.0


def test_min_score_auto_uses_the_bundles_calibrated_threshold(store, bundle, tmp_path):
    import dataclasses
    import shutil

    from tbps_runtime.model.bundle import load_manifest, write_manifest

    plain = run(rank_command, ["--gallery", store, "--query", "a person in red", "--min-score", "auto", "-q"])
    assert_user_error(plain, "no calibrated threshold", "tbps calibrate")
    everyone = json.loads(run(rank_command, ["--gallery", store, "--query", "a person in red", "-k", 100, "--json",
                                             "-q"]).stdout)
    scores = sorted(hit["score"] for hit in everyone)
    threshold = (scores[-1] + scores[len(scores) // 2]) / 2  # between the best and the median
    calibrated = tmp_path / "calibrated.bundle"
    shutil.copytree(bundle, calibrated)
    record = {"value": threshold, "false_match_rate": 0.01, "true_match_rate": 0.5, "found_rate": 0.5,
              "dataset": "cuhk-pedes", "split": "val", "captions": 2, "images": 3, "matching_pairs": 2,
              "non_matching_pairs": 4}
    write_manifest(calibrated, dataclasses.replace(load_manifest(calibrated), score_threshold=record))
    found = json.loads(run(rank_command, ["--gallery", store, "--query", "a person in red", "-k", 100, "--json",
                                          "-q", "--bundle", calibrated, "--min-score", "auto"]).stdout)
    assert all(hit.pop("threshold") == {"value": threshold, "source": "bundle", "stale": False} for hit in found)
    assert found == [hit for hit in everyone if hit["score"] >= threshold] and 0 < len(found) < len(everyone)
    nobody = json.loads(run(rank_command, ["--gallery", store, "--query", "a person in red", "--json", "-q",
                                           "--bundle", calibrated, "--min-score", "3.5"]).stdout)
    assert nobody == []  # above K = 3: nobody, rather than the least bad stranger
    assert_user_error(run(rank_command, ["--gallery", store, "--query", "red", "--min-score", "high"]),
                      "not a number or 'auto'")


def test_a_milvus_store_gives_the_local_stores_answers(footage, bundle, store, tmp_path):
    """--store milvus-lite:DIR/rows.db/NAME: the same ingest into Milvus, recorded in the directory, searched
    by directory like a local store, with the same hits."""
    pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus: pip install 'tbps[milvus]'")
    directory, _ = footage
    gallery = tmp_path / "m"
    for camera in ("cam1", "cam2"):
        result = ingest(gallery, directory, camera, "--bundle", bundle, "--store",
                        f"milvus-lite:{gallery / 'rows.db'}/people")
        assert result.exit_code == 0, result.output
    assert json.loads((gallery / "milvus.json").read_text())["uri"] == "rows.db"
    for query, extra in (("a person in red", []), ("a person in blue", ["--per-track"]),
                         ("green", ["--camera", "cam2", "--since", "2026-03-02T14:00:01"])):
        local, milvus = (json.loads(run(rank_command, ["--gallery", g, "--query", query, "-k", 5, "--json", "-q",
                                                       *extra]).stdout) for g in (store, gallery))
        key = lambda hits: [(h["camera"], h["frame"], h["box"], round(h["score"], 4)) for h in hits]
        assert key(milvus) == key(local)
    # Reindexing reads a Milvus store as it reads a local one, and writes either kind.
    again = tmp_path / "again"
    for source, output, extra in ((gallery, tmp_path / "from-milvus", []),
                                  (store, again, ["--store", f"milvus-lite:{again / 'rows.db'}/again"])):
        result = run(gallery_group, ["reindex", source, "--bundle", bundle, "-o", output, "-q", *extra])
        assert result.exit_code == 0, result.output
        with open_store(source) as old, open_store(output) as new:
            assert len(new) == len(old) > 0 and new.all_progress() == old.all_progress()
            assert new.cameras() == old.cameras() and [r for _, rs in new.iter_rows() for r in rs] != []
        ranked = (json.loads(run(rank_command, ["--gallery", g, "--query", "red", "-k", 5, "--json", "-q"]).stdout)
                  for g in (source, output))
        assert [[h["frame"], h["camera"]] for h in next(ranked)] == [[h["frame"], h["camera"]] for h in next(ranked)]
    outside = run(ingest_command, [directory / "cam1.mp4", "--gallery", tmp_path / "n", "--bundle", bundle,
                                   "--detections", directory / "cam1.gt.txt", "--store",
                                   f"milvus-lite:{tmp_path / 'elsewhere.db'}/people", "-q"])
    assert_user_error(outside, "must be inside the gallery directory")


def test_a_damaged_video_is_ingested_as_far_as_it_decodes(footage, bundle, tmp_path):
    """Bytes in the middle of the video overwritten (a corrupt stretch): the frames around it still give rows;
    a corrupt packet is skipped and counted, never a traceback."""
    directory, _ = footage
    damaged = tmp_path / "cam1.mp4"
    data = bytearray((directory / "cam1.mp4").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(range(256)) * 7 + bytes(208)
    damaged.write_bytes(bytes(data))
    result = run(ingest_command, [damaged, "--gallery", tmp_path / "s", "--bundle", bundle, "--detections",
                                  directory / "cam1.gt.txt", "--fps", 5, "--window", 1, "--json", "-q"])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    (report,) = json.loads(result.stdout)["sources"]
    assert report["frames"] > 0 and len(LocalStore.open(tmp_path / "s")) > 0


def test_a_detector_of_the_wrong_layout_is_one_error_line(footage, bundle, tmp_path):

    directory, _ = footage
    graph = constant_graph(tmp_path / "seg.onnx", np.zeros((1, 7, 5, 3)), (640, 640))
    result = run(ingest_command, [directory / "cam1.mp4", "--gallery", tmp_path / "s", "--bundle", bundle,
                                  "--detector", graph, "-q"])
    assert_user_error(result, "seg.onnx")
    assert not (tmp_path / "s").exists()  # refused before the store was made


def test_stream_credentials_never_reach_rows_progress_or_messages(bundle, tmp_path):
    from tbps_runtime.ingest.sources import camera_name, source_name

    assert source_name("rtsp://admin:hunter2@10.0.0.7:554/live?channel=1&token=abc") == \
        "rtsp://10.0.0.7:554/live?channel=1"
    assert source_name("foot/cam1.mp4") == str(Path("foot/cam1.mp4").resolve())  # one source, however spelt
    assert camera_name("rtsp://a:b@cam7/live") == "cam7/live"
    (tmp_path / "none.txt").write_text("")
    result = run(ingest_command, ["rtsp://admin:hunter2@127.0.0.1:9/live?token=s3cret", "--gallery", tmp_path / "s",
                                  "--bundle", bundle, "--detections", tmp_path / "none.txt", "-q"])  # port 9: refused
    assert_user_error(result, "cannot open rtsp://127.0.0.1:9/live")
    assert "hunter2" not in result.output and "s3cret" not in result.output
