"""Synthetic people: the parts they are made of, how they are sampled, and how they are drawn.

A person is built from parts: hair or a hat, an upper garment (colour, sleeve
length, pattern), a lower garment (trousers, shorts or a skirt, coloured),
shoes and a bag. Colours come from one shared palette and are drawn per part,
so parts are shared by many identities (about a tenth of the people wear the
same shirt colour, many wear black or blue trousers) while every identity's
full attribute tuple is unique. That is the situation the paper's CMR loss is
about (Fig. 2, Sec. 3.3).

The drawing API is public because three generators share it: the default
dataset (:mod:`~tbps_runtime.synth.dataset`), the part-sensitive set
(:mod:`~tbps_runtime.synth.parts`, which adds its accents through
:func:`draw_person`'s ``accents``) and the footage
(:mod:`~tbps_runtime.synth.footage`, which places people with a :class:`Frame`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from tbps_runtime.errors import ConfigError

__all__ = ["HAIR_COLOURS", "PALETTE", "SKIN_TONES", "Accents", "Draw", "Frame", "Person", "SynthConfig",
           "draw_person", "pick", "pick_colour", "render", "sample_people", "sample_person"]

T = TypeVar("T")
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
def pick(rng: np.random.Generator, items: Iterable[T], weights: Sequence[float] | None = None) -> T:
    """One of ``items``: uniform, or in proportion to ``weights``."""
    items = list(items)
    if weights is None:
        return items[int(rng.integers(len(items)))]
    w = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def pick_colour(rng: np.random.Generator, part: str, cfg: SynthConfig, exclude: str | None = None) -> str:
    """A palette colour for ``part`` (``"upper"``, ``"shoes"``, ...), skewed as in the street by
    ``cfg.colour_bias``; never ``exclude`` (a colour it must show against)."""
    names = [n for n in list(PALETTE)[: cfg.palette_size] if n != exclude]
    bias = _COLOUR_BIAS.get(part, {})
    return pick(rng, names, [1 + cfg.colour_bias * (bias.get(n, 1.0) - 1) for n in names])


def sample_person(rng: np.random.Generator, cfg: SynthConfig) -> Person:
    """One person of the default set, every part drawn at random (may equal another's)."""
    gender = pick(rng, ("man", "woman"))
    woman = gender == "woman"
    hair = "long" if rng.random() < (0.65 if woman else 0.15) else "short"
    hair_colour = pick(rng, HAIR_COLOURS, (0.45, 0.3, 0.15, 0.1))
    hat = pick_colour(rng, "hat", cfg, exclude=hair_colour) if rng.random() < 0.25 else None  # visible on the hair
    if hat is None and not woman and rng.random() < 0.15:
        hair, hair_colour = "bald", None
    upper = pick_colour(rng, "upper", cfg)
    pattern = pick(rng, ("plain", "stripes", "two-tone"), (0.6, 0.2, 0.2))
    lower = pick(rng, ("trousers", "shorts", "skirt"), (0.55, 0.2, 0.25) if woman else (0.75, 0.25, 0))
    bag = pick(rng, ("none", "backpack", "handbag", "shoulder bag"), (0.34, 0.24, 0.2, 0.22))
    return Person(
        gender=gender, skin=pick(rng, SKIN_TONES), hair=hair,
        hair_colour=hair_colour, hat=hat,
        upper_colour=upper, sleeves=pick(rng, ("short", "long")), pattern=pattern,
        pattern_colour=None if pattern == "plain" else pick_colour(rng, "pattern", cfg, exclude=upper),
        lower=lower, lower_colour=pick_colour(rng, "lower", cfg), shoes=pick_colour(rng, "shoes", cfg),
        bag=bag, bag_colour=None if bag == "none" else pick_colour(rng, "bag", cfg),
    )


def sample_people(rng: np.random.Generator, n: int, cfg: SynthConfig) -> list[Person]:
    """``n`` people with pairwise distinct attribute tuples (resampled on collision)."""
    people, seen = [], set()
    for _ in range(200 * n + 1000):
        if len(people) == n:
            return people
        p = sample_person(rng, cfg)
        if p.key() not in seen:
            seen.add(p.key())
            people.append(p)
    raise ConfigError(f"cannot draw {n} distinct people from a palette of {cfg.palette_size}: raise palette_size")


# ---------------------------------------------------------------- drawing
@dataclass(frozen=True)
class Frame:
    """Where a person stands on the canvas: x/y map body fractions of the height to pixels."""

    cx: float
    top: float
    h: float
    wf: float  # width factor (build, pose)

    def x(self, f: float) -> float:
        """Pixel x of ``f`` heights right of the centre line."""
        return self.cx + f * self.h * self.wf

    def y(self, f: float) -> float:
        """Pixel y of ``f`` heights below the top of the head."""
        return self.top + f * self.h

    def poly(self, pts: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
        """Pixel points of body-fraction points (x, y)."""
        return [(self.x(a), self.y(b)) for a, b in pts]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        """Pixel box [x0, y0, x1, y1] of a body-fraction box."""
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
Accents = Callable[[ImageDraw.ImageDraw, Frame, float], None]
# Draws a person: draw_person's positional signature (draw, person, frame, side, spread) -> None.
Draw = Callable[[ImageDraw.ImageDraw, Person, Frame, int, float], None]


def draw_person(d: ImageDraw.ImageDraw, p: Person, f: Frame, side: int, spread: float, *,
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


def _draw_lower(d, p: Person, f: Frame, hip: float, skin: RGB) -> None:
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


def _draw_head(d, p: Person, f: Frame, woman: bool, skin: RGB) -> None:
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


def _draw_carried_bag(d, p: Person, f: Frame, side: int, sh, hip, aw, spread, strap: RGB | None = None) -> None:
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


def render(p: Person, rng: np.random.Generator, size: tuple[int, int], cfg: SynthConfig,
           distractor: Person, draw: Draw = draw_person) -> Image.Image:
    """One dataset image of ``p``, (height, width) = ``size``: background clutter, pose, mirroring,
    light and noise drawn from ``rng``; ``draw`` has :func:`draw_person`'s signature (the parts set
    passes one that adds its accents), the ``distractor`` at the edge is always drawn plainly."""
    height, width = size
    ss = cfg.supersample
    img = _background(rng, height * ss, width * ss, cfg.clutter)
    d = ImageDraw.Draw(img)
    if rng.random() < 0.3 * cfg.clutter:  # part of another pedestrian at the edge
        h = height * ss * rng.uniform(0.7, 1.0)
        cx = width * ss * (rng.uniform(-0.4, -0.2) if rng.random() < 0.5 else rng.uniform(1.2, 1.4))
        draw_person(d, distractor, Frame(cx, height * ss - h, h, 1.0), 1, 0.01)
    j = cfg.pose_jitter
    h = height * ss * float(np.clip(0.85 + j * rng.uniform(-0.1, 0.1), 0.5, 0.98))
    top = (0.5 + j * rng.uniform(-0.49, 0.49)) * (height * ss - h - 0.01 * height * ss)
    frame = Frame(width * ss * (0.5 + j * rng.uniform(-0.08, 0.08)), top, h, 1 + j * rng.uniform(-0.08, 0.08))
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

