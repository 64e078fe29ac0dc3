"""Synthetic camera footage with ground truth, for ``tbps ingest``'s tests, benchmarks and docs.

``generate_footage(OUT)`` films the people of the synthetic dataset (:mod:`~tbps_runtime.synth.people`)
walking across static street scenes, one H.264 video per camera, and writes what a detector and a
tracker should find:

- ``cam1.mp4``, ``cam2.mp4``, ...: the videos; their ``creation_time`` tag is the camera's start
  (``2026-03-02T14:00:00.000000Z``), so an ingester can date every frame.
- ``cam1.gt.txt``, ...: MOT-challenge ground truth, ``frame,id,left,top,width,height,1,1,visibility``
  with 1-based frames, 1-based person ids, the drawn pixels' box clipped to the frame, and the
  fraction of the person neither behind nearer people nor outside the frame (lines under 0.1 left out).
- ``footage.json``: the settings, the cameras, and per person two captions, the attributes and
  the appearances (camera, first/last frame, 0-based, and their UTC times).

The scene has a ground plane: a person's feet height decides their size (0.45 to 0.85 of the
frame height, larger lower in the frame) and people are drawn back to front, so the nearer one
occludes. Each person walks through one camera, often two, at most four people are in view at once,
and the first camera starts empty. ``still=True`` plants people for the whole clip instead
(boxes constant over time); ``outfits="solid"`` dresses person i all in one of six pure colours
on a grey street, so a crop's mean colour names the person.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from tbps_runtime.atomic import atomic_write_text
from tbps_runtime.errors import ConfigError
from tbps_runtime.synth.captions import caption
from tbps_runtime.synth.output import OutputKind, prepare_output, write_output
from tbps_runtime.synth.people import SKIN_TONES, Frame, Person, SynthConfig, draw_person, pick, sample_people

__all__ = ["FOOTAGE", "FORMAT", "MANIFEST", "SOLID_COLOURS", "generate_footage"]
log = logging.getLogger(__name__)

FORMAT, VERSION = "tbps-footage", 1
MANIFEST = "footage.json"  # also the marker: only a directory holding ours (and our files only) is replaced
FOOTAGE = OutputKind(
    marker=MANIFEST, format=FORMAT, version=VERSION,
    own_files=re.compile(r"footage\.json|cam\d+\.mp4|cam\d+\.gt\.txt"), own_dirs=frozenset(),
    noun="footage", described="footage", writer="tbps synth-footage",
)
SOLID_COLOURS = ("red", "green", "blue", "yellow", "white", "black")  # PALETTE names, cycled over people

MAX_CAMERAS, MAX_PEOPLE, MAX_IN_VIEW = 16, 200, 4
MAX_FRAMES = 100_000  # per camera
MAX_SECONDS, MIN_FPS, MAX_FPS = 86_400.0, 0.01, 240.0
MAX_PIXELS = 3840 * 2160
_FEET = (0.78, 0.98)  # feet height range, fractions of the frame height (the pavement)
_SCALE = (0.45, 0.85)  # person height at those feet heights, fractions of the frame height
_SPEED = (0.55, 0.95)  # walking speed, person heights per second (1.4 m/s is ~0.8 heights)
_MIN_VISIBILITY = 0.1
_SUPERSAMPLE = 2  # people are drawn at twice the size and box-filtered down: smooth edges, exact extent


@dataclass(frozen=True)
class _Clip:
    """The validated settings every camera shares."""

    cameras: int
    frames: int
    rate: Fraction  # frames per second
    width: int
    height: int
    start: datetime  # UTC
    still: bool

    @property
    def fps(self) -> float:
        return float(self.rate)


@dataclass(frozen=True)
class _Actor:
    """A person with what stays fixed across cameras: build and the side a bag hangs on."""

    person: Person
    captions: tuple[str, str]
    width_factor: float
    side: int


@dataclass(frozen=True)
class _Walk:
    """One pass of actor ``index`` through ``camera``: at frame ``enter`` the body's centre is at ``x0``,
    then it moves ``speed`` px per frame in ``direction`` for ``frames`` frames (speed 0: standing)."""

    index: int  # into the cast, 0-based
    camera: int
    feet: float  # feet height, a fraction of the frame height
    x0: float
    direction: int
    speed: float
    frames: int
    phase: float  # of the gait's bob and arm swing
    enter: int = 0


@dataclass(frozen=True)
class _Layer:
    """A person drawn alone: an RGBA image placed at (x, y) of the frame."""

    image: Image.Image
    x: int
    y: int
    mask: np.ndarray  # (h, w) bool: pixels at least half covered, what occludes and what can be occluded
    box: tuple[int, int, int, int]  # drawn pixels (alpha > 0), frame coordinates, unclipped: x0, y0, x1, y1


# ---------------------------------------------------------------- the public function
def generate_footage(out: str | Path, *, cameras: int = 2, seconds: float = 8.0, fps: float = 10.0,
                     size: tuple[int, int] = (640, 360), people: int = 6, seed: int = 0,
                     start: str = "2026-03-02T14:00:00+00:00", outfits: str = "synthetic",
                     still: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Write synthetic footage with ground truth to ``out`` and return ``out`` (absolute).

    ``cameras`` videos of ``size`` = (width, height) pixels, ``round(seconds * fps)`` frames each,
    all starting at ``start`` (ISO-8601 with a time zone). The same arguments give the same ground
    truth and the same frames (the videos equal up to the encoder). ``out`` appears whole or not at
    all; a non-empty ``out`` is refused unless ``overwrite``, and even then unless it is footage
    written here holding only the files written here.

    Raises:
        ConfigError: a setting out of range, or more people than the clip can show; PyAV missing.
        OutputError: ``out`` is a file, not empty, or not ours to replace; its disk lacks room.
    """
    clip = _check_args(cameras, seconds, fps, size, people, seed, start, outfits, still)
    av = _import_av()
    out = prepare_output(out, FOOTAGE, overwrite, clip.cameras * clip.frames * clip.width * clip.height // 100,
                         "the footage")
    rng = np.random.default_rng(seed)
    cast = _cast(rng, people, outfits)
    walks = _still_walks(rng, clip, people) if still else _schedule(rng, clip, people)
    streets = [_street(rng, clip.width, clip.height, grey=outfits == "solid") for _ in range(clip.cameras)]
    settings = dict(fps=clip.fps, size=[clip.width, clip.height], seed=int(seed), outfits=outfits, still=clip.still)
    boxes = 0

    def write(tmp: Path) -> dict[str, Any]:
        nonlocal boxes
        spans, codecs, boxes = _film_cameras(av, tmp, clip, cast, walks, streets, progress)
        return _manifest(clip, cast, spans, codecs, settings)

    write_output(out, FOOTAGE, write)
    log.info("wrote %d camera(s) x %d frames, %d people, %d ground-truth boxes to %s",
             clip.cameras, clip.frames, people, boxes, out)
    return out


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ConfigError("writing footage needs PyAV: pip install 'tbps[footage]'") from e
    return av


# ---------------------------------------------------------------- arguments
def _check_args(cameras, seconds, fps, size, people, seed, start, outfits, still) -> _Clip:
    """Validate the settings; the clip they describe. Raises ConfigError naming the bad value."""
    width, height = _check_size(size)
    integer = (int, np.integer)
    checks = [
        (isinstance(cameras, integer) and 1 <= cameras <= MAX_CAMERAS,
         f"cameras must be 1..{MAX_CAMERAS}, got {cameras}"),
        (MIN_FPS <= fps <= MAX_FPS, f"fps must be {MIN_FPS:g}..{MAX_FPS:g}, got {fps}"),
        (0 < seconds <= MAX_SECONDS, f"seconds must be > 0 and <= {MAX_SECONDS:g} (a day), got {seconds}"),
        (isinstance(people, integer) and 1 <= people <= MAX_PEOPLE, f"people must be 1..{MAX_PEOPLE}, got {people}"),
        (isinstance(seed, integer) and 0 <= seed < 2 ** 63, f"seed must be 0..2^63-1, got {seed}"),
        (outfits in ("synthetic", "solid"), f"outfits must be 'synthetic' or 'solid', got {outfits!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    frames = round(seconds * fps)
    if not 1 <= frames <= MAX_FRAMES:
        raise ConfigError(f"seconds x fps = {seconds * fps:g} frames per camera: it must be 1..{MAX_FRAMES}; "
                          "change seconds or fps", code="footage_frames_invalid", frames=f"{seconds * fps:g}",
                          most=MAX_FRAMES)
    if not still and seconds < 2:
        raise ConfigError(f"seconds={seconds:g} is too short for people to walk into view: use >= 2, or still=True",
                          code="footage_too_short", seconds=f"{seconds:g}")
    moment = _parse_start(start)
    try:
        moment + timedelta(seconds=seconds)
    except OverflowError:
        raise ConfigError(f"start {start!r} + {seconds:g} s is past the year 9999: pick an earlier start") from None
    # The rate the videos are written at (29.97 -> 2997/100); frame times follow it exactly.
    rate = Fraction(fps).limit_denominator(1001)
    return _Clip(int(cameras), frames, rate, width, height, moment, bool(still))


def _check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (width, height) in pixels, got {size!r}") from None
    # yuv420p halves the chroma planes: H.264 wants even sides.
    if width % 2 or height % 2 or min(width, height) < 64 or width * height > MAX_PIXELS:
        raise ConfigError(f"size {width}x{height}: width and height must be even, >= 64, "
                          f"and at most 3840x2160 pixels in all")
    return width, height


def _parse_start(start: str) -> datetime:
    """An ISO-8601 time with a zone -> an aware UTC datetime; anything else is a ConfigError."""
    try:
        text = start.strip()
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except (AttributeError, ValueError):
        raise ConfigError(f"start {start!r} is not an ISO-8601 time: use e.g. 2026-03-02T14:00:00+00:00") from None
    if moment.tzinfo is None:
        raise ConfigError(f"start {start!r} has no time zone: add one, e.g. 2026-03-02T14:00:00+00:00 "
                          "(or Z for UTC)")
    return moment.astimezone(timezone.utc)


def _iso_utc(moment: datetime) -> str:
    """``2026-03-02T14:00:00.000000Z``: the form FFmpeg writes for ``creation_time``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- people
def _cast(rng: np.random.Generator, people: int, outfits: str) -> list[_Actor]:
    """The people, with captions: the dataset's (``synthetic``) or one colour each (``solid``)."""
    cfg = SynthConfig()
    if outfits == "synthetic":
        persons = sample_people(rng, people, cfg)
        captions = [(caption(rng, p, cfg), caption(rng, p, cfg)) for p in persons]
    else:
        colours = [SOLID_COLOURS[i % len(SOLID_COLOURS)] for i in range(people)]
        persons = [_solid_person(rng, c) for c in colours]
        captions = [(f"A person in {c}.", f"A {p.gender} dressed all in {c}, from the hat to the shoes.")
                    for p, c in zip(persons, colours)]
    return [_Actor(p, c, float(1 + rng.uniform(-0.06, 0.06)), int(rng.choice((-1, 1))))
            for p, c in zip(persons, captions)]


def _solid_person(rng: np.random.Generator, colour: str) -> Person:
    """Hat, long-sleeved top, trousers, shoes and any bag all ``colour``; only skin and hands differ."""
    bag = pick(rng, ("none", "backpack", "handbag", "shoulder bag"))
    return Person(gender=pick(rng, ("man", "woman")), skin=pick(rng, SKIN_TONES), hair="short",
                  hair_colour=None, hat=colour, upper_colour=colour, sleeves="long", pattern="plain",
                  pattern_colour=None, lower="trousers", lower_colour=colour, shoes=colour, bag=bag,
                  bag_colour=None if bag == "none" else colour)


def _person_height(clip: _Clip, feet: float) -> float:
    """The ground plane: feet lower in the frame (nearer the camera) mean a taller person, in pixels."""
    t = (feet - _FEET[0]) / (_FEET[1] - _FEET[0])
    return clip.height * (_SCALE[0] + t * (_SCALE[1] - _SCALE[0]))


# ---------------------------------------------------------------- who walks where, when
def _new_walk(rng: np.random.Generator, clip: _Clip, index: int, camera: int) -> _Walk:
    """A pass from just outside one side to just outside the other, at a fixed feet height."""
    feet = float(rng.uniform(*_FEET))
    h = _person_height(clip, feet)
    speed = float(rng.uniform(*_SPEED)) * h / clip.fps
    margin = 0.3 * h  # wider than half a person: the pass starts and ends out of view
    direction = int(rng.choice((-1, 1)))
    x0 = -margin if direction > 0 else clip.width + margin
    frames = math.ceil((clip.width + 2 * margin) / speed) + 1
    return _Walk(index, camera, feet, x0, direction, speed, frames, float(rng.uniform(0, 2)))


def _visits(rng: np.random.Generator, cameras: int, people: int) -> list[list[int]]:
    """Per person, the cameras it walks through in order: two for 40% of the people, three for 5%,
    one for the rest. First visits go to the camera with the fewest so far, so every camera fills
    from its start."""
    extra = np.zeros(people, int)
    extra[:round(0.45 * people)] = 1
    extra[:round(0.05 * people)] = 2
    extra = np.minimum(rng.permutation(extra), cameras - 1)
    firsts, load = np.zeros(cameras), np.zeros(cameras)
    plans = []
    for k in extra:
        first = int(np.argmin(firsts + rng.uniform(0, 0.5, cameras)))
        others = [c for c in range(cameras) if c != first]
        weights = 1 / (1 + load[others])
        later = rng.choice(others, size=k, replace=False, p=weights / weights.sum()) if k else []
        plans.append([first] + [int(c) for c in later])
        firsts[first] += 1
        load[plans[-1]] += 1
    return plans


def _schedule(rng: np.random.Generator, clip: _Clip, people: int) -> list[_Walk]:
    """Entry frames for every walk: first visits spread over each camera's clip (people who visit
    several cameras first), later visits after the previous one ended plus a walk between cameras;
    a later visit that no longer fits is dropped. At most MAX_IN_VIEW walks overlap in a camera.

    Raises:
        ConfigError: some person's first visit does not fit.
    """
    plans = _visits(rng, clip.cameras, people)
    order = sorted(range(people), key=lambda i: (-len(plans[i]), rng.random()))
    # The first camera opens on an empty street (for a tenth of a short clip at most).
    lead = max(1, round(min(rng.uniform(0.3, 0.7) * clip.fps, 0.1 * clip.frames)))
    occupancy, entries, walks = [], [], []
    for camera in range(clip.cameras):
        drawn = [_new_walk(rng, clip, i, camera) for i in order if plans[i][0] == camera]
        # The other cameras' first walker is already on its way at frame 0.
        openings = [lead if camera == 0 else -round(rng.uniform(0.1, 0.5) * w.frames) for w in drawn]
        jitter = rng.uniform(0, 0.6, len(drawn))
        booked = _first_visits(clip, drawn, openings, jitter) or _first_visits(clip, drawn, openings, None)
        if booked is None:
            raise ConfigError(f"cannot show {people} people in {clip.cameras} camera(s) x "
                              f"{clip.frames / clip.fps:g} s with at most {MAX_IN_VIEW} in view at a time: "
                              "raise seconds or cameras, or lower people", code="footage_too_crowded",
                              people=people, cameras=clip.cameras, seconds=f"{clip.frames / clip.fps:g}",
                              most=MAX_IN_VIEW)
        occupancy.append(booked[0])
        entries.append(booked[1])
        walks += booked[2]
    placed = {w.index: w for w in walks}
    for index in order:
        for camera in plans[index][1:]:
            before = placed[index]
            ready = before.enter + before.frames + round(rng.uniform(0.2, 1.0) * clip.fps)
            walk = _new_walk(rng, clip, index, camera)
            enter = _first_fit(clip, walk, occupancy[camera], entries[camera], ready)
            if enter is None:
                break
            placed[index] = _book(walk, enter, occupancy[camera], entries[camera])
            walks.append(placed[index])
    return walks


def _first_visits(clip: _Clip, drawn: list[_Walk], openings: list[int],
                  jitter: np.ndarray | None) -> tuple[np.ndarray, list[int], list[_Walk]] | None:
    """Book one camera's first visits, in order: walk k wanted at k/n of the way from its opening to
    its latest entry (plus ``jitter``), or as early as possible when ``jitter`` is None (the packing
    that fits most). Returns the camera's occupancy (frames,), entries and booked walks, or None
    if one does not fit."""
    occupancy, entries, booked = np.zeros(clip.frames, np.int32), [], []
    for k, (walk, opening) in enumerate(zip(drawn, openings)):
        wanted = opening
        if jitter is not None:
            span = max(1, _latest_entry(clip, walk) - opening)
            wanted = opening + (k + jitter[k] * (k > 0)) * span / len(drawn)
        enter = _first_fit(clip, walk, occupancy, entries, wanted)
        if enter is None:
            enter = _first_fit(clip, walk, occupancy, entries, opening)
        if enter is None:
            return None
        booked.append(_book(walk, enter, occupancy, entries))
    return occupancy, entries, booked


def _latest_entry(clip: _Clip, walk: _Walk) -> int:
    """The last entry frame from which the whole body is in view before the clip ends."""
    return clip.frames - 1 - math.ceil(0.55 * _person_height(clip, walk.feet) / walk.speed)


def _first_fit(clip: _Clip, walk: _Walk, occupancy: np.ndarray, entries: list[int], earliest: float) -> int | None:
    """The first entry frame >= ``earliest`` at which the camera never holds more than MAX_IN_VIEW
    walks during this one, and no other walk enters within 0.4 s (no two people born on top of
    each other); None if there is none before :func:`_latest_entry`. An entry before frame 0 (down
    to half the walk) is a walk already under way when the clip starts."""
    latest = _latest_entry(clip, walk)
    first = max(-(walk.frames // 2), math.ceil(earliest))
    if first > latest:
        return None
    full = np.concatenate([[0], np.cumsum(occupancy >= MAX_IN_VIEW)])  # full[t]: full frames before t
    starts = np.arange(first, latest + 1)
    ends = np.minimum(starts + walk.frames, clip.frames)
    ok = full[ends] - full[np.maximum(starts, 0)] == 0
    gap = max(1, round(0.4 * clip.fps))
    for entry in entries:
        ok &= np.abs(starts - entry) >= gap
    hits = np.flatnonzero(ok)
    return int(starts[hits[0]]) if hits.size else None


def _book(walk: _Walk, enter: int, occupancy: np.ndarray, entries: list[int]) -> _Walk:
    occupancy[max(enter, 0):enter + walk.frames] += 1
    entries.append(enter)
    return dataclasses.replace(walk, enter=enter)


def _still_walks(rng: np.random.Generator, clip: _Clip, people: int) -> list[_Walk]:
    """People standing for the whole clip, spread across each camera's width: every camera shows
    one to four (people are dealt round the cameras; with fewer people than cameras, some repeat).

    Raises:
        ConfigError: more than MAX_IN_VIEW people per camera.
    """
    if people > MAX_IN_VIEW * clip.cameras:
        raise ConfigError(f"still footage shows at most {MAX_IN_VIEW} people per camera: {people} people need "
                          f"{math.ceil(people / MAX_IN_VIEW)} cameras, or lower people",
                          code="still_footage_too_crowded", people=people, most=MAX_IN_VIEW,
                          cameras=math.ceil(people / MAX_IN_VIEW))
    dealt = rng.permutation(people).tolist()
    per_camera = [[dealt[k] for k in range(c, people, clip.cameras)] or [dealt[c % people]]
                  for c in range(clip.cameras)]
    walks = []
    for camera, indices in enumerate(per_camera):
        slot = clip.width / len(indices)
        for k, index in enumerate(indices):
            x = (k + 0.5 + rng.uniform(-0.1, 0.1)) * slot
            walks.append(_Walk(index, camera, float(rng.uniform(*_FEET)), x, 0, 0.0, clip.frames, 0.0))
    return walks


# ---------------------------------------------------------------- drawing
def _street(rng: np.random.Generator, width: int, height: int, grey: bool) -> Image.Image:
    """A static street, (width, height): sky, facades with windows down to the pavement line at
    0.55-0.68 of the height, paving joints, a few poles. ``grey``: desaturated and mid-toned."""
    ss = _SUPERSAMPLE
    w, h = width * ss, height * ss
    base = h * rng.uniform(0.55, 0.68)
    sky = np.linspace(rng.integers(150, 220, 3), rng.integers(190, 250, 3), h)  # (h, 3)
    img = Image.fromarray(np.repeat(sky[:, None, :], w, axis=1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    x = -rng.uniform(0, 0.2) * w
    while x < w:
        x = _facade(d, rng, x, base, w, h)
    pavement = tuple(int(v) for v in rng.integers(105, 165) + rng.integers(-12, 12, 3))
    d.rectangle([0, base, w, h], fill=pavement)
    d.rectangle([0, base, w, base + 0.012 * h], fill=tuple(v - 35 for v in pavement))  # kerb shadow
    y = base + 0.03 * h
    while y < h:  # joints spread out towards the camera
        d.line([0, y, w, y], fill=tuple(v - 18 for v in pavement), width=ss)
        y += (y - base) * 0.35 + 0.02 * h
    for _ in range(int(rng.integers(0, 3))):
        px = rng.uniform(0, w)
        d.rectangle([px, h * rng.uniform(0.05, 0.3), px + 0.012 * w, base + 0.04 * h], fill=_muted(rng, 0.3))
    img = img.resize((width, height), Image.Resampling.BOX)
    if grey:  # a crop's mean colour then comes from the outfit, not the street
        level = np.asarray(img.convert("L"), dtype=np.float32) * 0.45 + 75
        img = Image.fromarray(np.repeat(level[..., None], 3, axis=2).astype(np.uint8))
    return img


def _muted(rng: np.random.Generator, saturation: float = 0.5) -> tuple[int, int, int]:
    colour = rng.integers(60, 210, 3).astype(float)
    return tuple(int(v) for v in colour.mean() + saturation * (colour - colour.mean()))


def _facade(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, base: float, w: int, h: int) -> float:
    """One building from ``x`` with a grid of windows; returns where the next one starts."""
    width, roof = rng.uniform(0.15, 0.4) * w, h * rng.uniform(0.0, 0.35)
    wall = _muted(rng)
    d.rectangle([x, roof, x + width, base], fill=wall)
    glass = tuple(int(v * 0.5) for v in wall) if rng.random() < 0.7 else (230, 220, 160)
    cols, rows = int(rng.integers(2, 6)), max(1, int((base - roof) / (0.12 * h)))
    cell_w, cell_h = width / cols, (base - roof) / (rows + 0.5)
    for r in range(rows):
        for c in range(cols):
            x0, y0 = x + (c + 0.25) * cell_w, roof + (r + 0.3) * cell_h
            d.rectangle([x0, y0, x0 + 0.5 * cell_w, y0 + 0.55 * cell_h], fill=glass)
    return x + width


def _pose(clip: _Clip, actor: _Actor, walk: _Walk, t: int) -> tuple[Frame, float]:
    """Where ``walk``'s person is at frame ``t``: its frame (centre, top, height, width) and arm spread.
    Walkers bob and swing their arms about twice a second; standing people do not move."""
    h = _person_height(clip, walk.feet)
    swing = abs(math.sin(math.pi * (1.8 * t / clip.fps + walk.phase))) if walk.speed else 0.0
    top = walk.feet * clip.height - 0.995 * h - 0.012 * h * swing  # shoes end at 0.995 of the height
    cx = walk.x0 + walk.direction * walk.speed * (t - walk.enter)
    return Frame(cx, top, h, actor.width_factor), 0.008 + 0.016 * swing


def _layer(actor: _Actor, frame: Frame, spread: float) -> _Layer:
    """Draw the person alone on a transparent layer (supersampled), so its extent and its pixels are exact."""
    ss, half = _SUPERSAMPLE, 0.27 * frame.h * frame.wf + 2  # widest: a backpack past a swung arm, ~0.23 h
    x, y = math.floor(frame.cx - half), math.floor(frame.top - 0.02 * frame.h - 2)
    w, h = math.ceil(frame.cx + half) - x, math.ceil(frame.top + frame.h + 2) - y
    image = Image.new("RGBA", (w * ss, h * ss), (0, 0, 0, 0))
    local = Frame((frame.cx - x) * ss, (frame.top - y) * ss, frame.h * ss, frame.wf)
    draw_person(ImageDraw.Draw(image), actor.person, local, actor.side, spread)
    image = image.resize((w, h), Image.Resampling.BOX)  # area average: no ringing outside the drawn pixels
    alpha = np.asarray(image.getchannel("A"))
    cols, rows = np.flatnonzero(alpha.any(axis=0)), np.flatnonzero(alpha.any(axis=1))
    box = (x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)
    return _Layer(image, x, y, alpha >= 128, box)


def _compose(street: Image.Image, layers: list[_Layer]) -> tuple[np.ndarray, list[float]]:
    """Paste ``layers`` back to front onto a copy of ``street``: the (H, W, 3) uint8 frame and each
    layer's visibility (its mask pixels inside the frame and not under a later layer, over all of them)."""
    image = street.copy()
    width, height = image.size
    owner = np.full((height, width), -1, np.int32)  # (H, W): index of the front-most layer per pixel
    for k, layer in enumerate(layers):
        image.paste(layer.image, (layer.x, layer.y), layer.image)
        x0, y0 = max(layer.x, 0), max(layer.y, 0)
        x1 = min(layer.x + layer.mask.shape[1], width)
        y1 = min(layer.y + layer.mask.shape[0], height)
        if x0 < x1 and y0 < y1:
            owner[y0:y1, x0:x1][layer.mask[y0 - layer.y:y1 - layer.y, x0 - layer.x:x1 - layer.x]] = k
    shown = np.bincount(owner.ravel() + 1, minlength=len(layers) + 1)[1:]
    return np.asarray(image), [float(s) / max(1, int(layer.mask.sum())) for s, layer in zip(shown, layers)]


def _render(clip: _Clip, cast: list[_Actor], walks: list[_Walk], street: Image.Image, t: int,
            cache: dict) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], float]]]:
    """Frame ``t`` of one camera, (H, W, 3) uint8, and its ground truth: (person id, clipped box
    left/top/width/height, visibility) per person shown with visibility >= 0.1."""
    here = [w for w in walks if w.enter <= t < w.enter + w.frames]
    here.sort(key=lambda w: w.feet)  # back to front: the nearer person occludes
    layers, fresh = [], {}
    for walk in here:
        frame, spread = _pose(clip, cast[walk.index], walk, t)
        key = (walk, frame, spread)  # standing people are drawn once
        fresh[key] = cache.get(key) or _layer(cast[walk.index], frame, spread)
        layers.append(fresh[key])
    cache.clear()
    cache.update(fresh)
    pixels, visibility = _compose(street, layers)
    truth = []
    for walk, layer, seen in zip(here, layers, visibility):
        x0, y0 = max(layer.box[0], 0), max(layer.box[1], 0)
        x1, y1 = min(layer.box[2], clip.width), min(layer.box[3], clip.height)
        if seen >= _MIN_VISIBILITY and x0 < x1 and y0 < y1:
            truth.append((walk.index + 1, (x0, y0, x1 - x0, y1 - y0), seen))
    return pixels, sorted(truth)


# ---------------------------------------------------------------- writing
def _film_cameras(av, tmp: Path, clip: _Clip, cast: list[_Actor], walks: list[_Walk], streets: list[Image.Image],
                  progress: bool) -> tuple[dict[tuple[int, int], list[int]], list[str], int]:
    """Film every camera into ``tmp``: (person id, camera) -> [first, last] frame shown, the codec per
    camera, and the number of ground-truth lines in all."""
    spans: dict[tuple[int, int], list[int]] = {}
    codecs, boxes = [], 0
    bar = tqdm(total=clip.cameras * clip.frames, desc="footage frames", unit="frame", disable=not progress)
    with bar:
        for camera in range(clip.cameras):
            mine = [w for w in walks if w.camera == camera]
            codec, lines = _film(av, tmp, camera, clip, cast, mine, streets[camera], spans, bar)
            codecs.append(codec)
            boxes += lines
    return spans, codecs, boxes


def _film(av, tmp: Path, camera: int, clip: _Clip, cast: list[_Actor], walks: list[_Walk],
          street: Image.Image, spans: dict[tuple[int, int], list[int]], bar: tqdm) -> tuple[str, int]:
    """Encode camera ``camera``'s video and write its ground truth; widens ``spans`` (person id, camera)
    -> [first, last] frame shown; returns the codec used and the number of ground-truth lines."""
    name = f"cam{camera + 1}"
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = clip.rate
    lines, cache = [], {}
    with av.open(str(tmp / f"{name}.mp4"), mode="w", format="mp4") as container:
        container.metadata["creation_time"] = _iso_utc(clip.start)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate.numerator)  # pts = frame x rate.denominator
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:  # mpeg4 has no crf: a generous bit rate for flat synthetic scenes
            stream.bit_rate = int(clip.width * clip.height * clip.fps * 0.5)
        for t in range(clip.frames):
            pixels, truth = _render(clip, cast, walks, street, t, cache)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = t * rate.denominator
            container.mux(stream.encode(frame))
            for pid, (left, top, w, h), seen in truth:
                lines.append(f"{t + 1},{pid},{left},{top},{w},{h},1,1,{seen:.3f}\n")
                spans.setdefault((pid, camera), [t, t])[1] = t
            bar.update()
        container.mux(stream.encode(None))
    atomic_write_text(tmp / f"{name}.gt.txt", "".join(lines))
    return codec, len(lines)


def _manifest(clip: _Clip, cast: list[_Actor], spans: dict[tuple[int, int], list[int]], codecs: list[str],
              settings: dict[str, Any]) -> dict[str, Any]:
    """footage.json after its format and version: settings, cameras, and per person its captions,
    attributes and appearances (the first and last frame, 0-based, with a ground-truth line per camera,
    and their times)."""
    cameras = [{"name": f"cam{c + 1}", "video": f"cam{c + 1}.mp4", "gt": f"cam{c + 1}.gt.txt",
                "frames": clip.frames, "start": _iso_utc(clip.start), "codec": codecs[c]}
               for c in range(clip.cameras)]
    people = []
    for pid, actor in enumerate(cast, start=1):
        mine = sorted((first, last, camera) for (p, camera), (first, last) in spans.items() if p == pid)
        appearances = [{"camera": f"cam{camera + 1}", "first_frame": first, "last_frame": last,
                        "first_time": _frame_time(clip, first), "last_time": _frame_time(clip, last)}
                       for first, last, camera in mine]
        people.append({"id": pid, "captions": list(actor.captions),
                       "attributes": dataclasses.asdict(actor.person), "appearances": appearances})
    return {**settings, "cameras": cameras, "people": people}


def _frame_time(clip: _Clip, frame: int) -> str:
    return _iso_utc(clip.start + timedelta(microseconds=round(frame * 1_000_000 / clip.rate)))
