"""A procedural synthetic person dataset, written in the CUHK-PEDES layout.

None of the benchmarks can be downloaded here, so the demo, the tests and the
benchmarks train on people drawn from parts: hair or a hat, an upper garment
(colour, sleeve length, pattern), a lower garment (trousers, shorts or a
skirt, coloured), shoes and a bag. Colours come from one shared palette and
are drawn per part, so parts are shared by many identities (about a tenth of
the people wear the same shirt colour, many wear black or blue trousers) while
every identity's full attribute tuple is unique. That is the situation the
paper's CMR loss is about (Fig. 2, Sec. 3.3). Each image jitters pose, scale,
lighting and background; each caption mentions a random subset of the parts,
so some captions honestly match several people.

``generate(OUT)`` writes ``OUT/reid_raw.json`` and ``OUT/imgs/SYNTH/*.png``;
``read_split("cuhk-pedes", OUT, split)`` reads it back. Every JSON entry also
carries the identity's ``"attributes"`` (real readers ignore unknown fields).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from tbps_train.config import DEFAULT_IDS
from tbps_runtime.atomic import has_format
from tbps_runtime.errors import ConfigError, DataError
from tbps_runtime.outputs import ensure_space, replace_directory

__all__ = ["MARKER", "PALETTE", "SynthConfig", "generate"]
log = logging.getLogger(__name__)

# What generate() writes, and all that overwrite=True will delete: a directory holding anything else
# (or no marker) is refused.
MARKER = ".tbps-synth.json"
_MARKER_FORMAT = "tbps-synth"
_OWN_FILES = {MARKER, "reid_raw.json", "synth.json", "twins.json"}  # twins.json: the --parts set (synth_parts)
_OWN_DIRS = {"imgs", "imgs/SYNTH"}
_OWN_IMAGE = re.compile(r"imgs/SYNTH/\d{5,}_\d{2,}\.png")

RGB = tuple[int, int, int]
# The shared garment palette, most distinct first: palette_size keeps a prefix.
PALETTE: dict[str, RGB] = {
    "black": (28, 28, 30), "white": (236, 236, 230), "red": (205, 32, 38),
    "blue": (45, 100, 215), "green": (40, 145, 62), "yellow": (238, 208, 45),
    "grey": (128, 128, 132), "pink": (242, 145, 185), "purple": (122, 52, 158),
    "brown": (118, 72, 36), "orange": (242, 132, 28), "navy": (22, 34, 98),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (22, 20, 20), "brown": (96, 58, 30), "blonde": (220, 190, 112), "grey": (160, 160, 160),
}
SKIN_TONES: dict[str, RGB] = {
    "light": (243, 208, 182), "medium": (214, 164, 124), "tan": (176, 120, 82), "dark": (104, 68, 46),
}
# Relative frequency of colours per part at colour_bias=1 (absent: 1): black,
# blue and grey trousers and black or white shoes are common, as in the street.
_COLOUR_BIAS: dict[str, dict[str, float]] = {
    "upper": {"black": 1.6, "white": 1.6},
    "lower": {"black": 3.0, "blue": 3.0, "grey": 2.0, "navy": 2.0},
    "shoes": {"black": 3.5, "white": 3.0},
}


# The default dataset: big enough that the demo model generalises, small enough to
# generate in seconds and train on in minutes (README, "Results").


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs; the defaults give a moderately hard retrieval task."""

    palette_size: int = 12  # garment colours used, a prefix of PALETTE
    colour_bias: float = 1.0  # 0: uniform colours per part; 1: street-like skew
    parts_per_caption: tuple[int, int] = (3, 6)  # attribute mentions per caption
    clutter: float = 0.6  # 0: plain gradient background; 1: busy scenes
    pose_jitter: float = 1.0  # scales x offset, height range and width change
    light_jitter: float = 1.0  # scales brightness, contrast and colour cast
    noise: float = 5.0  # std of Gaussian pixel noise, 0-255 scale
    mirror_prob: float = 0.5
    supersample: int = 2  # draw at this multiple, then downscale (anti-aliasing)

    def __post_init__(self) -> None:
        lo, hi = self.parts_per_caption
        checks = [
            (4 <= self.palette_size <= len(PALETTE), f"palette_size must be 4..{len(PALETTE)}"),
            (1 <= lo <= hi, "parts_per_caption must be (lo, hi) with 1 <= lo <= hi"),
            (0 <= self.clutter <= 1 and 0 <= self.mirror_prob <= 1, "clutter and mirror_prob must be in [0, 1]"),
            (min(self.colour_bias, self.pose_jitter, self.light_jitter, self.noise) >= 0,
             "colour_bias, pose_jitter, light_jitter and noise must be >= 0"),
            (1 <= self.supersample <= 4, "supersample must be 1..4"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"SynthConfig: {message} (got {self})")


@dataclass(frozen=True)
class Person:
    """One identity's part values; ``None`` where a part is absent."""

    gender: str  # man | woman
    skin: str
    hair: str  # short | long | bald
    hair_colour: str | None
    hat: str | None  # colour
    upper_colour: str
    sleeves: str  # short | long
    pattern: str  # plain | stripes | two-tone
    pattern_colour: str | None
    lower: str  # trousers | shorts | skirt
    lower_colour: str
    shoes: str  # colour
    bag: str  # none | backpack | handbag | shoulder bag
    bag_colour: str | None

    def key(self) -> tuple:
        """What must differ between identities: every part, skin aside (never captioned)."""
        return tuple(v for k, v in dataclasses.asdict(self).items() if k != "skin")


# ---------------------------------------------------------------- identities
def _pick(rng: np.random.Generator, items, weights=None) -> str:
    items = list(items)
    if weights is None:
        return items[int(rng.integers(len(items)))]
    w = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _colour(rng, part: str, cfg: SynthConfig, exclude: str | None = None) -> str:
    names = [n for n in list(PALETTE)[: cfg.palette_size] if n != exclude]
    bias = _COLOUR_BIAS.get(part, {})
    return _pick(rng, names, [1 + cfg.colour_bias * (bias.get(n, 1.0) - 1) for n in names])


def _sample_person(rng: np.random.Generator, cfg: SynthConfig) -> Person:
    gender = _pick(rng, ("man", "woman"))
    woman = gender == "woman"
    hair = "long" if rng.random() < (0.65 if woman else 0.15) else "short"
    hair_colour = _pick(rng, HAIR_COLOURS, (0.45, 0.3, 0.15, 0.1))
    hat = _colour(rng, "hat", cfg, exclude=hair_colour) if rng.random() < 0.25 else None  # visible on the hair
    if hat is None and not woman and rng.random() < 0.15:
        hair, hair_colour = "bald", None
    upper = _colour(rng, "upper", cfg)
    pattern = _pick(rng, ("plain", "stripes", "two-tone"), (0.6, 0.2, 0.2))
    lower = _pick(rng, ("trousers", "shorts", "skirt"), (0.55, 0.2, 0.25) if woman else (0.75, 0.25, 0))
    bag = _pick(rng, ("none", "backpack", "handbag", "shoulder bag"), (0.34, 0.24, 0.2, 0.22))
    return Person(
        gender=gender, skin=_pick(rng, SKIN_TONES), hair=hair,
        hair_colour=hair_colour, hat=hat,
        upper_colour=upper, sleeves=_pick(rng, ("short", "long")), pattern=pattern,
        pattern_colour=None if pattern == "plain" else _colour(rng, "pattern", cfg, exclude=upper),
        lower=lower, lower_colour=_colour(rng, "lower", cfg), shoes=_colour(rng, "shoes", cfg),
        bag=bag, bag_colour=None if bag == "none" else _colour(rng, "bag", cfg),
    )


def _sample_people(rng: np.random.Generator, n: int, cfg: SynthConfig) -> list[Person]:
    """``n`` people with pairwise distinct attribute tuples (resampled on collision)."""
    people, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(people) == n:
            return people
        p = _sample_person(rng, cfg)
        if p.key() not in seen:
            seen.add(p.key())
            people.append(p)
    raise ConfigError(f"cannot draw {n} distinct people from a palette of {cfg.palette_size}: raise palette_size")


# ---------------------------------------------------------------- drawing
@dataclass(frozen=True)
class _Frame:
    """Where a person stands on the canvas: x/y map body fractions of the height to pixels."""

    cx: float
    top: float
    h: float
    wf: float  # width factor (build, pose)

    def x(self, f: float) -> float:
        return self.cx + f * self.h * self.wf

    def y(self, f: float) -> float:
        return self.top + f * self.h

    def poly(self, pts) -> list[tuple[float, float]]:
        return [(self.x(a), self.y(b)) for a, b in pts]

    def box(self, x0, y0, x1, y1) -> list[float]:
        return [self.x(x0), self.y(y0), self.x(x1), self.y(y1)]


def _quad_between(top, bottom, ya, yb):
    """The part of a quad strip (left/right x at two heights) between heights ya and yb."""
    (y0, l0, r0), (y1, l1, r1) = top, bottom

    def at(y):
        t = (y - y0) / (y1 - y0)
        return l0 + t * (l1 - l0), r0 + t * (r1 - r0)

    (la, ra), (lb, rb) = at(ya), at(yb)
    return [(la, ya), (ra, ya), (rb, yb), (lb, yb)]


# Draws small extras over a finished body, below a carried bag: (draw, frame, waist half-width) -> None.
Accents = Callable[[ImageDraw.ImageDraw, "_Frame", float], None]


def _draw_person(d: ImageDraw.ImageDraw, p: Person, f: _Frame, side: int, spread: float, *,
                 strap: RGB | None = None, accents: Accents | None = None) -> None:
    """Front view of ``p``; ``side`` (+1/-1) is where a bag hangs, ``spread`` how far the arms swing out.

    ``strap`` colours the bag's straps (default: the bag's colour); ``accents`` draws extras (the parts
    set's glasses and belt) after the head and before a carried bag.
    """
    woman = p.gender == "woman"
    skin, upper = SKIN_TONES[p.skin], PALETTE[p.upper_colour]
    second = PALETTE[p.pattern_colour] if p.pattern_colour else upper
    sh, waist, hip, aw = (0.084, 0.07, 0.086, 0.042) if woman else (0.096, 0.082, 0.08, 0.046)
    torso = ((0.155, -sh, sh), (0.50, -waist, waist))
    if p.bag == "backpack":  # a block behind one shoulder, showing above and past the arm
        x0, x1 = sorted((side * (sh - 0.035), side * (sh + aw + spread + 0.048)))
        d.rectangle(f.box(x0, 0.135, x1, 0.45), fill=PALETTE[p.bag_colour])
    for s in (-1, 1):  # arms: sleeve in the garment colour, the rest skin
        arm = ((0.16, s * sh, s * (sh + aw)), (0.47, s * (sh + spread), s * (sh + aw + spread)))
        cut = 0.27 if p.sleeves == "short" else 0.46
        d.polygon(f.poly(_quad_between(*arm, 0.16, cut)), fill=upper)
        d.polygon(f.poly(_quad_between(*arm, cut, 0.47)), fill=skin)
        hx = s * (sh + aw / 2 + spread)
        d.ellipse(f.box(hx - 0.024, 0.455, hx + 0.024, 0.51), fill=skin)
    d.polygon(f.poly(_quad_between(*torso, 0.155, 0.50)), fill=upper)
    if p.pattern == "two-tone":
        d.polygon(f.poly(_quad_between(*torso, 0.32, 0.50)), fill=second)
    elif p.pattern == "stripes":
        for y in np.arange(0.19, 0.47, 0.06):
            d.polygon(f.poly(_quad_between(*torso, y, y + 0.03)), fill=second)
    if p.bag == "backpack":  # straps over both shoulders
        for s in (-1, 1):
            d.line(f.poly([(s * 0.6 * sh, 0.155), (s * 0.62 * sh, 0.37)]), fill=strap or PALETTE[p.bag_colour],
                   width=max(1, round(0.014 * f.h)))
    _draw_lower(d, p, f, hip, skin)
    _draw_head(d, p, f, woman, skin)
    if accents is not None:
        accents(d, f, waist)
    if p.bag in ("handbag", "shoulder bag"):
        _draw_carried_bag(d, p, f, side, sh, hip, aw, spread, strap)


def _draw_lower(d, p: Person, f: _Frame, hip: float, skin: RGB) -> None:
    colour = PALETTE[p.lower_colour]
    d.polygon(f.poly([(-hip, 0.49), (hip, 0.49), (hip + 0.004, 0.61), (-hip - 0.004, 0.61)]), fill=colour)
    end = {"trousers": 0.93, "shorts": 0.70, "skirt": 0.0}[p.lower]
    for s in (-1, 1):
        leg = ((0.60, s * 0.008, s * (hip + 0.004)), (0.93, s * 0.018, s * 0.072))
        if end > 0.6:
            d.polygon(f.poly(_quad_between(*leg, 0.60, end)), fill=colour)
        c, y = s * 0.046, max(end, 0.6)  # bare leg below shorts/skirt, thinner than trousers
        if y < 0.93:
            d.polygon(f.poly([(c - 0.02, y), (c + 0.02, y), (c + 0.016, 0.93), (c - 0.016, 0.93)]), fill=skin)
        d.ellipse(f.box(s * 0.045 - 0.036, 0.915, s * 0.045 + 0.036, 0.995), fill=PALETTE[p.shoes])
    if p.lower == "skirt":
        d.polygon(f.poly([(-hip, 0.49), (hip, 0.49), (hip * 1.35, 0.73), (-hip * 1.35, 0.73)]), fill=colour)


def _draw_head(d, p: Person, f: _Frame, woman: bool, skin: RGB) -> None:
    hw = 0.05 if woman else 0.054
    hair = HAIR_COLOURS[p.hair_colour] if p.hair_colour else skin
    if p.hair == "long":  # falls behind the head onto the shoulders
        d.rectangle(f.box(-1.3 * hw, 0.05, 1.3 * hw, 0.25), fill=hair)
    d.rectangle(f.box(-0.022, 0.11, 0.022, 0.165), fill=skin)  # neck
    d.ellipse(f.box(-hw, 0.015, hw, 0.135), fill=skin)
    if p.hat:
        colour = PALETTE[p.hat]
        d.ellipse(f.box(-1.08 * hw, -0.005, 1.08 * hw, 0.09), fill=colour)
        d.rectangle(f.box(-1.5 * hw, 0.05, 1.5 * hw, 0.068), fill=colour)
    elif p.hair != "bald":
        d.chord(f.box(-1.12 * hw, 0.005, 1.12 * hw, 0.125), 180, 360, fill=hair)
        d.rectangle(f.box(-1.12 * hw, 0.06, -0.8 * hw, 0.085), fill=hair)  # sideburns
        d.rectangle(f.box(0.8 * hw, 0.06, 1.12 * hw, 0.085), fill=hair)


def _draw_carried_bag(d, p: Person, f: _Frame, side: int, sh, hip, aw, spread, strap: RGB | None = None) -> None:
    colour, s = PALETTE[p.bag_colour], side
    strap = strap or colour
    width = max(1, round(0.012 * f.h))
    if p.bag == "handbag":  # hangs from the hand
        hx = s * (sh + aw / 2 + spread)
        d.line(f.poly([(hx - 0.02, 0.52), (hx, 0.49), (hx + 0.02, 0.52)]), fill=strap, width=width)
        d.rectangle(f.box(hx - 0.036, 0.515, hx + 0.036, 0.60), fill=colour)
    else:  # shoulder bag: strap across the chest to a bag at the hip
        d.line(f.poly([(-s * sh * 0.7, 0.16), (s * hip, 0.45)]), fill=strap, width=width)
        x0, x1 = sorted((s * (hip - 0.01), s * (hip + 0.07)))
        d.rectangle(f.box(x0, 0.43, x1, 0.535), fill=colour)


def _random_rgb(rng) -> RGB:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _background(rng, height: int, width: int, clutter: float) -> Image.Image:
    a, b = rng.integers(20, 236, (2, 3)).astype(float)
    vertical = rng.random() < 0.7
    ramp = a + np.linspace(0, 1, height if vertical else width)[:, None] * (b - a)  # (n, 3)
    ramp = ramp[:, None, :] if vertical else ramp[None, :, :]
    img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (height, width, 3)), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # ground
        d.rectangle([0, height * rng.uniform(0.75, 0.9), width, height], fill=_random_rgb(rng))
    for _ in range(int(rng.poisson(7 * clutter))):  # walls, windows, signs
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2) * height)
        d.rectangle([x0, y0, x1, y1], fill=_random_rgb(rng))
    for _ in range(int(rng.poisson(4 * clutter))):
        pts = rng.uniform(0, 1, 4) * [width, height, width, height]
        d.line(list(pts), fill=_random_rgb(rng), width=int(rng.integers(1, 6)))
    return img


def _render(p: Person, rng: np.random.Generator, size: tuple[int, int], cfg: SynthConfig,
            distractor: Person, draw: Callable[..., None] = _draw_person) -> Image.Image:
    """One image of ``p``, (height, width) = ``size``; ``draw`` has :func:`_draw_person`'s signature
    (the parts set passes one that adds its accents), the distractor is always drawn plainly."""
    height, width = size
    ss = cfg.supersample
    img = _background(rng, height * ss, width * ss, cfg.clutter)
    d = ImageDraw.Draw(img)
    if rng.random() < 0.3 * cfg.clutter:  # part of another pedestrian at the edge
        h = height * ss * rng.uniform(0.7, 1.0)
        cx = width * ss * (rng.uniform(-0.4, -0.2) if rng.random() < 0.5 else rng.uniform(1.2, 1.4))
        _draw_person(d, distractor, _Frame(cx, height * ss - h, h, 1.0), 1, 0.01)
    j = cfg.pose_jitter
    h = height * ss * float(np.clip(0.85 + j * rng.uniform(-0.1, 0.1), 0.5, 0.98))
    top = (0.5 + j * rng.uniform(-0.49, 0.49)) * (height * ss - h - 0.01 * height * ss)
    frame = _Frame(width * ss * (0.5 + j * rng.uniform(-0.08, 0.08)), top, h, 1 + j * rng.uniform(-0.08, 0.08))
    draw(d, p, frame, int(rng.choice((-1, 1))), j * rng.uniform(0, 0.02))
    if rng.random() < 0.15 * cfg.clutter:  # a pole or passer-by cutting the edge
        w = width * ss * rng.uniform(0.04, 0.14)
        x0 = 0 if rng.random() < 0.5 else width * ss - w
        d.rectangle([x0, rng.uniform(-0.2, 0.5) * height * ss, x0 + w, height * ss], fill=_random_rgb(rng))
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    if rng.random() < cfg.mirror_prob:
        img = ImageOps.mirror(img)
    return Image.fromarray(_light(np.asarray(img, dtype=np.float32), rng, cfg))


def _light(arr: np.ndarray, rng, cfg: SynthConfig) -> np.ndarray:
    """Brightness, contrast, colour cast and noise on an (H, W, 3) float image."""
    j = cfg.light_jitter
    mean = arr.mean()
    arr = (arr - mean) * (1 + j * rng.uniform(-0.2, 0.15)) + mean * (1 + j * rng.uniform(-0.22, 0.18))
    arr = arr * (1 + j * rng.uniform(-0.07, 0.07, 3)) + rng.normal(0, cfg.noise, arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- captions
_UNIT_WEIGHTS = {"hair": 1.0, "hat": 1.0, "upper_colour": 1.6, "sleeves": 0.8, "pattern": 0.9,
                 "lower": 1.6, "shoes": 1.0, "bag": 1.2}
_UPPER_NOUNS = {"short": ("shirt", "top", "t-shirt"), "long": ("shirt", "top", "jacket", "sweater")}
_SUBJECTS = {"man": ("man", "young man"), "woman": ("woman", "young woman", "lady"),
             None: ("person", "pedestrian")}
_PRONOUNS = {"man": ("He", "his"), "woman": ("She", "her"), None: ("The person", "their")}
_BAG_PLACE = {"backpack": "on {} back", "handbag": "in {} hand", "shoulder bag": "over {} shoulder"}


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _choose_units(rng, p: Person, cfg: SynthConfig) -> set[str]:
    """Which attributes one caption mentions; always an upper or lower garment."""
    avail = ["upper_colour", "sleeves", "lower", "shoes"]
    avail += ["hat"] * bool(p.hat) + ["hair"] * (p.hat is None or p.hair == "long")
    avail += ["pattern"] * (p.pattern != "plain") + ["bag"] * (p.bag != "none")
    lo, hi = cfg.parts_per_caption
    k = min(int(rng.integers(lo, hi + 1)), len(avail))
    w = np.array([_UNIT_WEIGHTS[u] for u in avail])
    chosen = {avail[i] for i in rng.choice(len(avail), size=k, replace=False, p=w / w.sum())}
    if not chosen & {"upper_colour", "lower"}:
        chosen.discard(_pick(rng, sorted(chosen)))
        chosen.add(_pick(rng, ("upper_colour", "lower")))
    return chosen


def _upper_phrase(rng, p: Person, units: set[str]) -> str:
    pre, post = [], []
    pattern = "pattern" in units
    if "upper_colour" in units:
        if p.pattern == "two-tone":  # naming one colour of two would mislead
            pre.append(f"{p.upper_colour} and {p.pattern_colour}")
        elif pattern and rng.random() < 0.4:
            pre.append(f"{p.upper_colour} and {p.pattern_colour} striped")
        else:
            pre.append(p.upper_colour)
            post += [f"{p.pattern_colour} stripes"] * pattern
    elif pattern:
        pre.append("striped" if p.pattern == "stripes" else "two-tone")
    if "sleeves" in units:
        if rng.random() < 0.3:
            post.insert(0, f"{p.sleeves} sleeves")
        else:
            pre.insert(int(rng.integers(len(pre) + 1)), _pick(rng, (f"{p.sleeves}-sleeved", f"{p.sleeves} sleeve")))
    phrase = _a(" ".join(pre + [_pick(rng, _UPPER_NOUNS[p.sleeves])]))
    return f"{phrase} with {' and '.join(post)}" if post else phrase


def _lower_phrase(rng, p: Person) -> str:
    colour = p.lower_colour if rng.random() < 0.85 else ""
    nouns = {"trousers": ("trousers", "pants") + ("jeans",) * (colour in ("blue", "navy", "black", "grey")),
             "shorts": ("shorts",), "skirt": ("skirt",)}[p.lower]
    phrase = f"{colour} {_pick(rng, nouns)}".strip()
    if p.lower == "skirt":
        return _a(phrase)
    return f"a pair of {phrase}" if rng.random() < 0.25 else phrase


def _parts(rng, p: Person, units: set[str]) -> dict[str, str]:
    """Noun phrases for the chosen units."""
    out = {}
    if "hair" in units:
        length = p.hair if p.hair == "long" or rng.random() < 0.7 else ""
        out["hair"] = "bald" if p.hair == "bald" else f"{length} {p.hair_colour} hair".strip()
    if "hat" in units:
        out["hat"] = _a(f"{p.hat} {_pick(rng, ('hat', 'cap'))}")
    if units & {"upper_colour", "sleeves", "pattern"}:
        out["upper"] = _upper_phrase(rng, p, units)
    if "lower" in units:
        out["lower"] = _lower_phrase(rng, p)
    if "shoes" in units:
        shoes = f"{p.shoes} {_pick(rng, ('shoes', 'sneakers'))}"
        out["shoes"] = f"a pair of {shoes}" if rng.random() < 0.3 else shoes
    if "bag" in units:
        name = _pick(rng, ("shoulder bag", "crossbody bag")) if p.bag == "shoulder bag" else p.bag
        out["bag"] = _a(f"{p.bag_colour} {name}" if rng.random() < 0.85 else name)
    return out


def _caption(rng, p: Person, cfg: SynthConfig) -> str:
    """One CUHK-PEDES-style description mentioning a random subset of ``p``'s parts."""
    parts = _parts(rng, p, _choose_units(rng, p, cfg))
    gender = p.gender if rng.random() < 0.85 else None
    noun, hair, bag = _pick(rng, _SUBJECTS[gender]), parts.get("hair"), parts.get("bag")
    if hair == "bald" and rng.random() < 0.5:
        noun, hair = f"bald {noun}", None
    subject = _pick(rng, ("A", "The", "This")) + " " + noun
    if hair and hair != "bald" and rng.random() < 0.4:
        subject, hair = f"{subject} with {hair}", None
    main = _main_sentence(rng, subject, parts)
    if bag and rng.random() < 0.35:
        main, bag = f"{main} and {_pick(rng, ('carries', 'is carrying'))} {bag}", None
    extra = _other_sentences(rng, p, gender, hair, bag)
    return " ".join(s[0].upper() + s[1:] + "." for s in [main] + extra)


def _main_sentence(rng, subject: str, parts: dict[str, str]) -> str:
    """``subject`` wearing the clothes in ``parts`` (hat, garments in either order, shoes)."""
    garments = [parts[k] for k in ("upper", "lower") if k in parts]
    if rng.random() < 0.25:
        garments.reverse()
    wear = _join([parts[k] for k in ("hat",) if k in parts] + garments + [parts[k] for k in ("shoes",) if k in parts])
    form = rng.random()
    if form < 0.45:
        return f"{subject} {_pick(rng, ('wears', 'is wearing', 'is dressed in'))} {wear}"
    if form < 0.7:
        return f"{subject} in {wear} {_pick(rng, ('is walking', 'walks', 'is standing'))}"
    return f"{subject} is wearing {wear}"


def _other_sentences(rng, p: Person, gender: str | None, hair: str | None, bag: str | None) -> list[str]:
    """Sentences about the hair and the bag not yet said in the main sentence."""
    pron, poss = _PRONOUNS[gender]
    out = []
    if hair == "bald":
        out.append(f"{pron} is bald")
    elif hair and len(hair.split()) == 3 and rng.random() < 0.35:
        length, colour, _ = hair.split()
        out.append(f"{poss.capitalize()} hair is {length} and {colour}")
    elif hair:
        out.append(f"{pron} has {hair}")
    if bag:
        place = _BAG_PLACE[p.bag].format(poss)
        out.append(_pick(rng, (f"{pron} carries {bag}", f"{pron} is carrying {bag}", f"{pron} has {bag} {place}")))
    if len(out) == 2 and rng.random() < 0.5:
        out.reverse()
    return out


# ---------------------------------------------------------------- writing
def _split_sizes(ids: int, fractions: tuple[float, float, float]) -> list[int]:
    raw = np.asarray(fractions, dtype=float) * ids
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(sizes - raw, kind="stable")[: ids - sizes.sum()]:  # largest remainders
        sizes[i] += 1
    for i, f in enumerate(fractions):  # every split asked for gets an identity
        if f > 0 and sizes[i] == 0:
            sizes[int(np.argmax(sizes))] -= 1
            sizes[i] += 1
    return [int(n) for n in sizes]


def _check_args(ids, images_per_id, image_size, splits, seed) -> None:
    if not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed must be 0..2^63-1 (numpy's generators take no negative seed), got {seed}")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        raise ConfigError(f"splits must be three fractions (train, val, test) >= 0 summing to 1, got {splits}")
    if ids < sum(f > 0 for f in splits):
        raise ConfigError(f"ids={ids} is too few: every split with a fraction > 0 needs an identity")
    if images_per_id < 1:
        raise ConfigError(f"images_per_id must be >= 1, got {images_per_id}")
    if len(image_size) != 2 or image_size[0] < 32 or image_size[1] < 12:
        raise ConfigError(f"image_size is (height, width) with height >= 32 and width >= 12, got {image_size}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file: pass a directory path for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} exists and is not empty: pick a new directory or pass overwrite=True")
        _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace ``out`` unless it is a dataset this module wrote, holding only the files it writes.

    Raises:
        DataError: no marker, or a file (or link) it did not write, named.
    """
    if not has_format(out / MARKER, _MARKER_FORMAT):
        raise DataError(f"{out} is not a dataset written by tbps synth (no {MARKER} in it): not replacing it; "
                        "pick another directory, or remove it yourself")
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise DataError(f"{out} holds {foreign}, which tbps synth did not write: not replacing it; move it out, "
                        "or pick another directory")


def _foreign_entry(out: Path) -> str | None:
    """The first entry under ``out`` that :func:`generate` does not write (links count as foreign), or None."""
    for directory, dirs, files in os.walk(out):
        subdirectories = set(dirs)
        for name in sorted(dirs) + sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(out).as_posix()
            if name in subdirectories:
                own = relative in _OWN_DIRS
            else:
                own = path.is_file() and (relative in _OWN_FILES or _OWN_IMAGE.fullmatch(relative) is not None)
            if path.is_symlink() or not own:
                return relative + ("/" if name in subdirectories else "")
    return None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an old ``out`` only after it is complete
    (and only if it still holds nothing but a dataset this module wrote)."""
    if out.is_dir() and any(out.iterdir()):
        _check_replaceable(out)
    replace_directory(tmp, out)


def _begin(out: str | Path, ids: int, images_per_id: int, image_size: tuple[int, int],
           splits: tuple[float, float, float], seed: int, overwrite: bool) -> Path:
    """Check the arguments, the free space and ``out`` (refused unless empty or replaceable); absolute ``out``."""
    _check_args(ids, images_per_id, image_size, splits, seed)
    out = Path(out).expanduser().absolute()
    existing = next(p for p in out.parents if p.is_dir())
    # Before drawing people (or creating a directory): a count no disk can hold would otherwise run for hours.
    least = ids * images_per_id * image_size[0] * image_size[1] * 3 // 16  # PNG: ~1/8 of raw without noise, ~2/3 with
    ensure_space(existing, least, f"{ids} x {images_per_id} synthetic images")
    _prepare_out(out, overwrite)
    return out


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` in a fresh sibling ``tmp`` of ``out`` holding an empty ``imgs/SYNTH/``, add the
    marker and move ``tmp`` into place; ``tmp`` is removed on any failure, so ``out`` is all or nothing."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        (tmp / "imgs" / "SYNTH").mkdir(parents=True)
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"format": _MARKER_FORMAT, "version": 1}) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def generate(
    out: str | Path,
    ids: int = DEFAULT_IDS,
    images_per_id: int = 4,
    seed: int = 0,
    image_size: tuple[int, int] = (192, 64),
    splits: tuple[float, float, float] = (0.6, 0.15, 0.25),
    *,
    config: SynthConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic dataset in the CUHK-PEDES layout to ``out`` and return ``out``.

    ``ids`` identities with ``images_per_id`` PNG images of (height, width) =
    ``image_size`` and two captions each; identities are split into
    train/val/test by the ``splits`` fractions. The same arguments give
    byte-identical files. ``out`` is written atomically; an existing non-empty
    ``out`` is refused unless ``overwrite``, and even then unless it is a
    dataset written here (its ``.tbps-synth.json`` marker and only the files
    written here): nothing else is ever deleted.
    """
    cfg = config or SynthConfig()
    out = _begin(out, ids, images_per_id, image_size, splits, seed, overwrite)
    people = _sample_people(np.random.default_rng([seed, 0]), ids, cfg)
    split_names = [n for n, size in zip(("train", "val", "test"), _split_sizes(ids, splits)) for _ in range(size)]
    entries = []

    def write(tmp: Path) -> None:
        bar = tqdm(total=ids * images_per_id, desc="synth images", unit="img", disable=not progress)
        with bar:
            for pid, (person, split) in enumerate(zip(people, split_names), start=1):
                for k in range(images_per_id):
                    entries.append(_write_image(tmp, pid, k, person, split, seed, image_size, cfg))
                    bar.update()
        (tmp / "reid_raw.json").write_text(json.dumps(entries, indent=1) + "\n")
        settings = dict(ids=ids, images_per_id=images_per_id, seed=seed, image_size=list(image_size),
                        splits=list(splits), config=dataclasses.asdict(cfg))
        (tmp / "synth.json").write_text(json.dumps(settings, indent=2) + "\n")

    _write_atomically(out, write)
    counts = {s: split_names.count(s) for s in ("train", "val", "test")}
    log.info("wrote %d synthetic images of %d identities (train/val/test %d/%d/%d ids) to %s",
             len(entries), ids, counts["train"], counts["val"], counts["test"], out)
    return out


def _write_image(tmp: Path, pid: int, k: int, person: Person, split: str, seed: int,
                 image_size: tuple[int, int], cfg: SynthConfig) -> dict:
    """Render, save and describe image ``k`` of identity ``pid``; its own seed keeps runs reproducible."""
    rng = np.random.default_rng([seed, 1, pid, k])
    rel = f"SYNTH/{pid:05d}_{k:02d}.png"
    _render(person, rng, image_size, cfg, _sample_person(rng, cfg)).save(tmp / "imgs" / rel)
    captions = [_caption(rng, person, cfg) for _ in range(2)]
    return {"split": split, "captions": captions, "file_path": rel,
            "processed_tokens": [_tokens(c) for c in captions], "id": pid,
            "attributes": dataclasses.asdict(person)}
