"""Synthetic footage (tbps synth-footage): decodable videos with their start time, MOT ground truth
that agrees with footage.json and with the drawn pixels, solid outfits, still people, determinism,
and the output and argument rules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from cli_assertions import assert_user_error
from tbps_runtime.errors import ConfigError, OutputError
from tbps_runtime.synth import footage
from tbps_runtime.synth.footage import generate_footage
from tbps_runtime.synth.people import PALETTE, Person
from tbps_train.cli import footage_command

TINY = dict(seconds=2.0, fps=5.0, size=(320, 180), progress=False)  # 10 frames per camera
W, H, FRAMES = 320, 180, 10
START = "2026-03-02T14:00:00.000000Z"


@pytest.fixture(scope="module")
def walking(tmp_path_factory) -> Path:
    return generate_footage(tmp_path_factory.mktemp("footage") / "walk", people=4, seed=0, **TINY)


@pytest.fixture(scope="module")
def solid(tmp_path_factory) -> Path:
    return generate_footage(tmp_path_factory.mktemp("footage") / "solid", people=4, seed=1, outfits="solid", **TINY)


def _manifest(root: Path) -> dict:
    return json.loads((root / "footage.json").read_text())


def _gt(path: Path) -> list[tuple]:
    """(frame, id, left, top, width, height, visibility) per line, each field checked."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split(",")
        assert len(fields) == 9 and fields[6:8] == ["1", "1"], line
        frame, pid, left, top, width, height = (int(f) for f in fields[:6])
        rows.append((frame, pid, left, top, width, height, float(fields[8])))
    return rows


def _decode(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# ---------------------------------------------------------------- videos and ground truth
def test_videos_decode_with_their_size_frame_count_and_start(walking):
    manifest = _manifest(walking)
    assert sorted(p.name for p in walking.iterdir()) == [
        "cam1.gt.txt", "cam1.mp4", "cam2.gt.txt", "cam2.mp4", "footage.json"]
    assert [c["name"] for c in manifest["cameras"]] == ["cam1", "cam2"]
    for camera in manifest["cameras"]:
        assert camera["frames"] == FRAMES and camera["start"] == START
        with av.open(str(walking / camera["video"])) as container:
            assert container.metadata["creation_time"] == START
            assert container.streams.video[0].codec_context.name == "h264"
        frames = _decode(walking / camera["video"])
        assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)
    assert not [p for p in walking.parent.iterdir() if p.name != "walk"]  # no temporary directory left


def test_ground_truth_lies_in_the_frame_and_matches_the_appearances(walking):
    manifest = _manifest(walking)
    assert (manifest["format"], manifest["version"], manifest["fps"], manifest["size"]) == ("tbps-footage", 1, 5.0,
                                                                                             [W, H])
    spans = {}
    for camera in manifest["cameras"]:
        rows = _gt(walking / camera["gt"])
        per_frame = defaultdict(list)
        for frame, pid, left, top, width, height, visibility in rows:
            assert 1 <= frame <= FRAMES and 1 <= pid <= 4
            assert 0 <= left and 0 <= top and width > 0 and height > 0 and left + width <= W and top + height <= H
            assert 0.1 <= visibility <= 1
            per_frame[frame].append(pid)
            first, last = spans.get((pid, camera["name"]), (frame - 1, frame - 1))
            spans[pid, camera["name"]] = (min(first, frame - 1), max(last, frame - 1))
        assert all(len(ids) == len(set(ids)) <= 4 for ids in per_frame.values())
    assert 1 not in {frame for frame, *_ in _gt(walking / "cam1.gt.txt")}  # the first camera opens empty
    start = datetime(2026, 3, 2, 14, tzinfo=timezone.utc)
    listed = {}
    for person in manifest["people"]:
        assert person["appearances"], person["id"]  # everyone is seen somewhere
        assert len(person["captions"]) == 2 and all(c.strip() for c in person["captions"])
        assert set(person["attributes"]) == set(Person.__dataclass_fields__)
        for a in person["appearances"]:
            listed[person["id"], a["camera"]] = (a["first_frame"], a["last_frame"])
            assert datetime.fromisoformat(a["first_time"]) == start + timedelta(seconds=a["first_frame"] / 5)
            assert datetime.fromisoformat(a["last_time"]) == start + timedelta(seconds=a["last_frame"] / 5)
    assert listed == spans


def test_people_nearer_the_camera_are_taller(walking):
    """The ground plane: a box's height follows its bottom (the feet) as 0.45 H at 0.78 H, 0.85 H at 0.98 H."""
    checked = 0
    for camera in ("cam1", "cam2"):
        for frame, pid, left, top, width, height, visibility in _gt(walking / f"{camera}.gt.txt"):
            if visibility == 1 and top > 0 and top + height < H:
                feet = (top + height) / H
                expected = H * (0.45 + 2 * (feet - 0.78))
                assert abs(height - expected) <= 0.04 * expected + 2, (camera, frame, pid)
                checked += 1
    assert checked >= 5


def test_solid_outfits_colour_the_torso(solid):
    """The middle third of a fully visible person's torso decodes to its palette colour (measured: within 5)."""
    manifest = _manifest(solid)
    colours = {p["id"]: p["attributes"]["upper_colour"] for p in manifest["people"]}
    assert [colours[i] for i in (1, 2, 3, 4)] == ["red", "green", "blue", "yellow"]
    assert manifest["people"][0]["captions"][0] == "A person in red."
    checked = set()
    for camera in manifest["cameras"]:
        frames = _decode(solid / camera["video"])
        for frame, pid, left, top, width, height, visibility in _gt(solid / camera["gt"]):
            if visibility < 1 or left == 0 or top == 0 or left + width == W or top + height == H:
                continue
            torso = frames[frame - 1][top + height // 3: top + height // 2, left + width // 3: left + 2 * width // 3]
            mean = torso.reshape(-1, 3).mean(axis=0)
            assert np.abs(mean - PALETTE[colours[pid]]).max() < 12, (camera["name"], frame, pid, mean)
            checked.add(pid)
    assert len(checked) >= 2


def test_still_people_keep_their_boxes(tmp_path):
    root = generate_footage(tmp_path / "still", people=5, still=True, seed=2, **TINY)
    manifest = _manifest(root)
    for camera in manifest["cameras"]:
        boxes = defaultdict(set)
        for frame, *box in _gt(root / camera["gt"]):
            boxes[frame].add(tuple(box))
        assert sorted(boxes) == list(range(1, FRAMES + 1))
        assert len({frozenset(b) for b in boxes.values()}) == 1 and 1 <= len(boxes[1]) <= 4
    for person in manifest["people"]:
        assert [(a["first_frame"], a["last_frame"]) for a in person["appearances"]] == [(0, FRAMES - 1)]


def test_same_seed_same_footage_other_seed_other(tmp_path, walking):
    again = generate_footage(tmp_path / "again", people=4, seed=0, **TINY)
    assert _manifest(again) == _manifest(walking)
    assert (again / "cam2.gt.txt").read_text() == (walking / "cam2.gt.txt").read_text()
    a, b = _decode(again / "cam1.mp4"), _decode(walking / "cam1.mp4")
    assert max(np.abs(x.astype(int) - y).mean() for x, y in zip(a, b)) < 1  # equal up to the encoder
    other = generate_footage(tmp_path / "other", people=4, seed=5, **TINY)
    assert (other / "cam1.gt.txt").read_text() != (walking / "cam1.gt.txt").read_text()


# ---------------------------------------------------------------- the drawing, without a codec
def test_box_is_the_extent_of_the_drawn_pixels():
    clip = footage._check_args(1, 1.0, 5.0, (W, H), 1, 0, START, "synthetic", True)
    rng = np.random.default_rng(0)
    cast = footage._cast(rng, 1, "synthetic")
    walks = footage._still_walks(rng, clip, 1)
    street = footage._street(rng, W, H, grey=False)
    pixels, truth = footage._render(clip, cast, walks, street, 0, {})
    changed = np.argwhere((pixels != np.asarray(street)).any(axis=2))  # (n, 2): y, x
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0) + 1
    assert truth == [(1, (x0, y0, x1 - x0, y1 - y0), 1.0)]


def test_the_nearer_person_is_drawn_in_front():
    """Two people standing at the same x: the one with lower feet (nearer) hides part of the other,
    whatever order the walks come in."""
    clip = footage._check_args(1, 1.0, 5.0, (W, H), 2, 0, START, "solid", True)
    cast = footage._cast(np.random.default_rng(0), 2, "solid")
    far = footage._Walk(0, 0, 0.80, W / 2, 0, 0.0, FRAMES, 0.0)
    near = footage._Walk(1, 0, 0.95, W / 2 + 10, 0, 0.0, FRAMES, 0.0)
    street = footage.Image.new("RGB", (W, H), (128, 128, 128))
    for walks in ([far, near], [near, far]):
        pixels, truth = footage._render(clip, cast, walks, street, 0, {})
        seen = {pid: visibility for pid, _, visibility in truth}
        assert seen[2] == 1.0 and 0.1 <= seen[1] < 0.9
        # Both torsos cover (x, y) = (165, 85): far, 88 px tall from y = 56, torso x 153..167;
        # near, 142 px tall from y = 30, torso x 159..181. The near one's green shows.
        assert tuple(pixels[85, 165]) == PALETTE["green"]


def test_visibility_counts_pixels_hidden_by_nearer_people_or_outside_the_frame():
    """Hand-made 10 x 10 layers on a 20 x 20 frame: B (drawn after A) covers A's right half; C hangs
    6 of its 10 columns past the left edge."""
    def layer(x, y):
        image = footage.Image.new("RGBA", (10, 10), (255, 0, 0, 255))
        return footage._Layer(image, x, y, np.ones((10, 10), bool), (x, y, x + 10, y + 10))

    street = footage.Image.new("RGB", (20, 20))
    pixels, visibility = footage._compose(street, [layer(0, 0), layer(5, 0), layer(-6, 10)])
    assert visibility == [0.5, 1.0, 0.4]
    painted = np.zeros((20, 20), bool)
    painted[:10, :15] = painted[10:, :4] = True
    assert (pixels[painted] == (255, 0, 0)).all() and (pixels[~painted] == 0).all()


# ---------------------------------------------------------------- the output directory
def test_refuses_a_foreign_directory_even_with_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not empty|not footage"):
            generate_footage(out, people=2, overwrite=overwrite, **TINY)
    assert (out / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_replaces_only_its_own_footage(tmp_path):
    out = generate_footage(tmp_path / "f", people=2, seed=0, **TINY)
    with pytest.raises(OutputError, match="not empty"):
        generate_footage(out, people=2, seed=1, **TINY)
    generate_footage(out, people=2, seed=1, overwrite=True, **TINY)
    assert _manifest(out)["seed"] == 1
    (out / "extra.mp4").write_bytes(b"")
    with pytest.raises(OutputError, match="extra.mp4"):
        generate_footage(out, people=2, seed=2, overwrite=True, **TINY)
    assert _manifest(out)["seed"] == 1


def test_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    root = generate_footage(tmp_path / "m", people=2, cameras=1, **TINY)
    assert _manifest(root)["cameras"][0]["codec"] == "mpeg4"
    assert len(_decode(root / "cam1.mp4")) == FRAMES


def test_missing_pyav_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ConfigError, match=r"pip install 'tbps\[footage\]'"):
        generate_footage(tmp_path / "x", **TINY)
    assert not (tmp_path / "x").exists()


def test_an_edge_install_draws_people_and_footage(tmp_path):
    """Without torch, transformers or the trainer (an edge install), every module of tbps_runtime.synth
    imports, and it writes a dataset and footage."""
    code = (
        "import importlib, pkgutil, sys\n"
        "for name in ('torch', 'transformers', 'tbps_train', 'tbps_export'):\n"
        "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
        "import tbps_runtime.synth\n"
        "for m in pkgutil.walk_packages(tbps_runtime.synth.__path__, 'tbps_runtime.synth.'):\n"
        "    importlib.import_module(m.name)\n"
        "from tbps_runtime.synth.dataset import generate\n"
        "from tbps_runtime.synth.footage import generate_footage\n"
        "generate(sys.argv[1] + '/d', ids=3, images_per_id=1, progress=False)\n"
        "generate_footage(sys.argv[1] + '/f', cameras=1, people=1, seconds=2.0, fps=5.0, size=(160, 96))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert len(json.loads((tmp_path / "d" / "reid_raw.json").read_text())) == 3
    assert _gt(tmp_path / "f" / "cam1.gt.txt") and len(_decode(tmp_path / "f" / "cam1.mp4")) == FRAMES


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize("change, fragment", [
    (dict(cameras=0), "cameras must be 1..16"), (dict(cameras=17), "cameras must be 1..16"),
    (dict(fps=0.0), "fps must be 0.01..240"), (dict(fps=float("nan")), "fps must be"), (dict(fps=500.0), "240"),
    (dict(seconds=-1.0), "seconds must be > 0"), (dict(seconds=1e6), "seconds must be > 0"),
    (dict(seconds=1.0), "too short"), (dict(seconds=10_000.0, fps=20.0), "1..100000"),
    (dict(size=(321, 180)), "even"), (dict(size=(7680, 4320)), "3840x2160"), (dict(size=(320,)), "width, height"),
    (dict(people=0), "people must be 1..200"), (dict(people=201), "people must be 1..200"),
    (dict(seed=-1), "seed"), (dict(outfits="plaid"), "plaid"),
    (dict(start="yesterday"), "not an ISO-8601 time"), (dict(start="2026-03-02T14:00:00"), "no time zone"),
    (dict(start="9999-12-31T23:59:59+00:00"), "year 9999"),
    (dict(people=40), "cannot show 40 people"), (dict(people=9, still=True), "at most 4 people per camera"),
])
def test_bad_settings_are_config_errors(tmp_path, change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        generate_footage(tmp_path / "x", **{**TINY, **change})
    assert not (tmp_path / "x").exists()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_start_parser_takes_any_text(text):
    """Any text either parses to an aware UTC time or is a ConfigError (never another exception)."""
    try:
        moment = footage._parse_start(text)
    except ConfigError:
        return
    assert moment.utcoffset() == timedelta(0)


@settings(max_examples=100, deadline=None)
@given(st.datetimes(timezones=st.timezones()))
def test_start_parser_reads_back_any_aware_time(moment):
    assert footage._parse_start(moment.isoformat()) == moment


# ---------------------------------------------------------------- the command
def _run(args):
    return CliRunner().invoke(footage_command, [str(a) for a in args], catch_exceptions=False)


def test_command_writes_footage_and_prints_its_directory(tmp_path):
    result = _run(["-o", tmp_path / "f", "--seconds", 2, "--fps", 5, "--size", 320, 180, "--people", 2,
                   "--cameras", 1, "--outfits", "solid", "--start", "2026-03-02T15:00:00+01:00", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "f")
    manifest = _manifest(tmp_path / "f")
    assert manifest["outfits"] == "solid" and manifest["cameras"][0]["start"] == START


@pytest.mark.parametrize("args, fragment", [
    (["--start", "2026-03-02 14:00"], "no time zone"),
    (["--start", "noon"], "not an ISO-8601 time"),
    (["--cameras", "0"], "cameras must be"),
])
def test_command_bad_values_are_one_error_line(tmp_path, args, fragment):
    assert_user_error(_run(["-o", tmp_path / "f", *args]), fragment)
    assert not (tmp_path / "f").exists()
