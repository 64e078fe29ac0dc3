"""A part-sensitive synthetic person set: twins that only colour-to-part binding tells apart.

In the default set (:mod:`~tbps_runtime.synth.dataset`), one max-pooled embedding of
"which colours are present" is enough: its captions name a few large flat parts,
and any two people differ in some colour. Here people are built from more parts,
top to bottom: hat, glasses, hair, upper garment (colour, sleeves, stripes),
belt, lower garment, shoes, and a bag with its strap. The small parts are drawn
small, and all the parts take their colours from one shared palette. Some
identities come in pairs:

* **swap twins** wear the same colours on different parts (red shirt and blue
  trousers vs blue shirt and red trousers; white shoes and a black belt vs black
  shoes and a white belt);
* **one-part twins** differ in exactly one part, often a small one (shoe colour,
  glasses, belt colour).

Twins share a split. Each caption names the parts that tell its person from the
twin, with each colour bound to its part. ``OUT/twins.json`` lists every
val/test caption of a twinned person, as a diagnostic query split.
:func:`facts` says what is true of a person and :func:`parse_caption` what a
caption claims; the second is always a subset of the first, and never of the
twin's facts.

``generate_parts(OUT)`` writes the CUHK-PEDES layout exactly as
:func:`~tbps_runtime.synth.dataset.generate` does, so
``read_split("cuhk-pedes", OUT, split)`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import ImageDraw
from tqdm import tqdm

from tbps_runtime.errors import ConfigError
from tbps_runtime.synth import DEFAULT_PARTS_IDS
from tbps_runtime.synth.captions import join_and, tokens, with_article
from tbps_runtime.synth.dataset import prepare_dataset, split_sizes, write_dataset
from tbps_runtime.synth.people import (
    HAIR_COLOURS, PALETTE, SKIN_TONES, Frame, Person, SynthConfig, draw_person, pick, pick_colour, render,
    sample_person,
)

__all__ = ["SLOTS", "Identity", "PartsConfig", "PartsPerson", "caption", "differing_parts", "facts",
           "generate_parts", "parse_caption", "parse_spans", "sample_identities", "twin_queries"]
log = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
# The colour-bearing parts, top to bottom, and the field that holds each one's colour: swap twins permute
# these values, and one-part twins change one of them.
SLOTS: dict[str, str] = {
    "hat": "hat", "glasses": "glasses", "upper": "upper_colour", "stripes": "pattern_colour", "belt": "belt",
    "lower": "lower_colour", "shoes": "shoes", "bag": "bag_colour", "strap": "strap",
}
_SMALL = frozenset({"hat", "glasses", "belt", "shoes", "strap"})
_BIG_SWAP_WEIGHT = {"upper": 3.0, "lower": 3.0}  # shirt<->trousers swaps are about 1 in 6, the rest involve small parts
_BAGS = ("backpack", "handbag", "shoulder bag")


@dataclass(frozen=True)
class PartsPerson(Person):
    """A :class:`~tbps_runtime.synth.people.Person` with the small extras; ``None`` where absent.

    ``pattern`` is ``plain`` or ``stripes`` (``pattern_colour`` is the stripes' colour); ``strap`` is set
    exactly when there is a bag.
    """

    glasses: str | None = None  # colour
    belt: str | None = None  # colour
    strap: str | None = None  # colour


@dataclass(frozen=True)
class PartsConfig:
    """Twin rates (fractions of all identities, in pairs) and part frequencies; ``render`` draws the images."""

    twin_rate: float = 0.3  # swap twins
    one_part_twin_rate: float = 0.3  # one-part twins
    hat_rate: float = 0.3
    glasses_rate: float = 0.35
    belt_rate: float = 0.5
    stripes_rate: float = 0.3
    bag_rate: float = 0.7
    small_part_weight: float = 2.0  # how much likelier a one-part twin changes a small part than a big one
    render: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        rates = {k: v for k, v in dataclasses.asdict(self).items() if k.endswith("_rate")}
        if not all(0 <= v <= 1 for v in rates.values()):
            raise ConfigError(f"PartsConfig: rates must be in [0, 1] (got {rates})")
        if self.twin_rate + self.one_part_twin_rate > 1:
            raise ConfigError(f"PartsConfig: twin_rate + one_part_twin_rate must be <= 1 "
                              f"(got {self.twin_rate} + {self.one_part_twin_rate})")
        if self.small_part_weight <= 0:
            raise ConfigError(f"PartsConfig: small_part_weight must be > 0 (got {self.small_part_weight})")


@dataclass(frozen=True)
class Identity:
    """One identity of the set: its parts, split and twin (``twin_kind``: ``swap`` | ``one-part``)."""

    pid: int
    person: PartsPerson
    split: str
    twin_id: int | None = None
    twin_kind: str | None = None
    differs: tuple[str, ...] = ()  # SLOTS keys that differ from the twin, top to bottom


# ---------------------------------------------------------------- people and twins
def _valid(p: PartsPerson) -> bool:
    """Every part shows against what it sits on: hat on hair, stripes on shirt, belt between garments, strap on bag."""
    return ((p.hat is None or p.hat != p.hair_colour) and p.pattern_colour != p.upper_colour
            and (p.belt is None or p.belt not in (p.upper_colour, p.lower_colour))
            and (p.strap is None or p.strap != p.bag_colour))


def _sample_base(rng: np.random.Generator, cfg: PartsConfig) -> PartsPerson:
    """One person, every part drawn independently (may be invalid: the caller resamples)."""
    r = cfg.render
    gender = pick(rng, ("man", "woman"))
    woman = gender == "woman"
    hair = "long" if rng.random() < (0.65 if woman else 0.15) else "short"
    hair_colour = pick(rng, HAIR_COLOURS, (0.45, 0.3, 0.15, 0.1))
    hat = pick_colour(rng, "hat", r) if rng.random() < cfg.hat_rate else None
    if hat is None and not woman and rng.random() < 0.15:
        hair, hair_colour = "bald", None
    upper = pick_colour(rng, "upper", r)
    stripes = pick_colour(rng, "pattern", r, exclude=upper) if rng.random() < cfg.stripes_rate else None
    bag = pick(rng, _BAGS) if rng.random() < cfg.bag_rate else "none"
    bag_colour = None if bag == "none" else pick_colour(rng, "bag", r)
    return PartsPerson(
        gender=gender, skin=pick(rng, SKIN_TONES), hair=hair, hair_colour=hair_colour, hat=hat,
        glasses=pick_colour(rng, "glasses", r) if rng.random() < cfg.glasses_rate else None,
        upper_colour=upper, sleeves=pick(rng, ("short", "long")), pattern="stripes" if stripes else "plain",
        pattern_colour=stripes, belt=pick_colour(rng, "belt", r) if rng.random() < cfg.belt_rate else None,
        lower=pick(rng, ("trousers", "shorts", "skirt"), (0.55, 0.2, 0.25) if woman else (0.75, 0.25, 0)),
        lower_colour=pick_colour(rng, "lower", r), shoes=pick_colour(rng, "shoes", r), bag=bag,
        bag_colour=bag_colour,
        strap=None if bag == "none" else pick_colour(rng, "strap", r, exclude=bag_colour),
    )


def _slot_colours(p: PartsPerson) -> dict[str, str]:
    """``{part: colour}`` for the colour parts ``p`` has, top to bottom."""
    values = dataclasses.asdict(p)
    return {part: values[name] for part, name in SLOTS.items() if values[name] is not None}


def _swap_twin(rng: np.random.Generator, p: PartsPerson, cfg: PartsConfig) -> PartsPerson | None:
    """``p`` with the colours of two of its parts exchanged; None when no exchange keeps every part visible."""
    colours = _slot_colours(p)
    options, weights = [], []
    for a, b in combinations(colours, 2):
        twin = dataclasses.replace(p, **{SLOTS[a]: colours[b], SLOTS[b]: colours[a]})
        if colours[a] != colours[b] and _valid(twin):
            options.append(twin)
            weights.append(_BIG_SWAP_WEIGHT.get(a, 1.0) * _BIG_SWAP_WEIGHT.get(b, 1.0))
    return options[int(rng.choice(len(options), p=np.divide(weights, sum(weights))))] if options else None


def _one_part_twin(rng: np.random.Generator, p: PartsPerson, cfg: PartsConfig) -> PartsPerson | None:
    """``p`` with exactly one part changed: recoloured, or (hat, glasses) put on or taken off."""
    colours = _slot_colours(p)
    parts = [s for s in SLOTS if s in colours or s in ("hat", "glasses")]
    weights = np.array([cfg.small_part_weight if s in _SMALL else 1.0 for s in parts])
    part = parts[int(rng.choice(len(parts), p=weights / weights.sum()))]
    current = colours.get(part)
    toggles = part in ("hat", "glasses") and (current is None or rng.random() < 0.3)
    new = (None if current else pick_colour(rng, part, cfg.render)) if toggles else \
        pick_colour(rng, part, cfg.render, exclude=current)
    twin = dataclasses.replace(p, **{SLOTS[part]: new})
    return twin if _valid(twin) else None


def differing_parts(a: PartsPerson, b: PartsPerson) -> tuple[str, ...]:
    """The SLOTS keys whose colour (or presence) differs between ``a`` and ``b``, top to bottom."""
    va, vb = dataclasses.asdict(a), dataclasses.asdict(b)
    return tuple(part for part, name in SLOTS.items() if va[name] != vb[name])


def _draw_group(rng: np.random.Generator, kind: str, cfg: PartsConfig, seen: set) -> list[PartsPerson]:
    """One person (``single``) or a twin pair (``swap``, ``one-part``) none of whom is in ``seen``."""
    make = {"swap": _swap_twin, "one-part": _one_part_twin}.get(kind)
    for _ in range(10_000):
        base = _sample_base(rng, cfg)
        if not _valid(base):
            continue
        group = [base] if make is None else [base, make(rng, base, cfg)]
        keys = {q.key() for q in group if q is not None}
        if None not in group and len(keys) == len(group) and not keys & seen:
            seen.update(keys)
            return group
    raise ConfigError(f"cannot draw distinct people from a palette of {cfg.render.palette_size}: "
                      "raise palette_size")


def _group_kinds(rng: np.random.Generator, n: int, cfg: PartsConfig) -> list[str]:
    """Shuffled group kinds filling ``n`` identities: the rates are met per split, up to rounding."""
    swaps = min(round(n * cfg.twin_rate / 2), n // 2)
    ones = min(round(n * cfg.one_part_twin_rate / 2), (n - 2 * swaps) // 2)
    kinds = ["swap"] * swaps + ["one-part"] * ones + ["single"] * (n - 2 * (swaps + ones))
    return [kinds[i] for i in rng.permutation(len(kinds))]


def sample_identities(ids: int, cfg: PartsConfig | None = None, seed: int = 0,
                      splits: tuple[float, float, float] = (0.6, 0.15, 0.25)) -> list[Identity]:
    """``ids`` identities with distinct attribute tuples and pids 1..ids, train first, then val, then test.

    The split sizes are the default set's; twins are consecutive pids inside one split.
    """
    cfg = cfg or PartsConfig()
    rng = np.random.default_rng([seed, 10])
    out: list[Identity] = []
    seen: set = set()
    for split, n in zip(_SPLITS, split_sizes(ids, splits)):
        for kind in _group_kinds(rng, n, cfg):
            group = _draw_group(rng, kind, cfg, seen)
            pid = len(out) + 1
            if kind == "single":
                out.append(Identity(pid, group[0], split))
                continue
            differs = differing_parts(*group)
            out.append(Identity(pid, group[0], split, pid + 1, kind, differs))
            out.append(Identity(pid + 1, group[1], split, pid, kind, differs))
    return out


# ---------------------------------------------------------------- facts and captions
def facts(p: PartsPerson) -> set[tuple[str, str]]:
    """Everything true of ``p`` that a caption can say, as ``(part, value)`` pairs (absent parts: ``"none"``)."""
    out = {("gender", p.gender), ("hat", p.hat or "none"), ("glasses", p.glasses or "none"),
           ("upper", p.upper_colour), ("sleeves", p.sleeves), ("stripes", p.pattern_colour or "none"),
           ("belt", p.belt or "none"), ("lower", p.lower_colour), ("lower type", p.lower), ("shoes", p.shoes),
           ("bag", p.bag_colour or "none")}
    out |= {("hair", "bald")} if p.hair == "bald" else {("hair", p.hair_colour), ("hair length", p.hair)}
    if p.bag != "none":
        out |= {("bag type", p.bag), ("strap", p.strap)}
    return out


# How often a caption mentions each optional unit when the person has it; upper and lower garments always,
# the parts that tell the person from the twin always. Tuned for CUHK-PEDES' ~23 words per caption.
_MENTION = {"hat": 0.75, "glasses": 0.6, "hair": 0.5, "sleeves": 0.35, "stripes": 0.7, "belt": 0.5,
            "shoes": 0.6, "bag": 0.65, "strap": 0.35}
_UPPER_NOUNS = {"short": ("shirt", "t-shirt", "top"), "long": ("shirt", "top", "jacket", "sweater")}
_SUBJECTS = {"man": ("man", "young man", "gentleman"), "woman": ("woman", "young woman", "lady"),
             None: ("person", "pedestrian")}
_PRONOUNS = {"man": ("He", "his"), "woman": ("She", "her"), None: ("The person", "their")}
_BAG_PLACE = {"backpack": " on {} back", "handbag": " in {} hand", "shoulder bag": " over {} shoulder"}


def _choose_units(rng: np.random.Generator, p: PartsPerson, must: set[str]) -> set[str]:
    """Which optional units one caption mentions; ``must`` (SLOTS keys) always, an absent hat as 'no hat'."""
    has = {"hat": p.hat is not None, "glasses": p.glasses is not None, "hair": p.hat is None or p.hair == "long",
           "sleeves": True, "stripes": p.pattern == "stripes", "belt": p.belt is not None, "shoes": True,
           "bag": p.bag != "none", "strap": p.bag != "none"}
    units = {u for u, prob in _MENTION.items() if rng.random() < prob and has[u]} | must
    return units | {"bag"} if "strap" in units else units


def _head(rng: np.random.Generator, p: PartsPerson, units: set[str]) -> list[str]:
    """Noun phrases for hat, glasses and hair, in that order."""
    out = []
    if "hat" in units:
        out.append(with_article(f"{p.hat} {pick(rng, ('hat', 'cap', 'beanie'))}") if p.hat else "no hat")
    if "glasses" in units:
        forms = (f"{p.glasses} glasses", f"a pair of {p.glasses} glasses", f"{p.glasses}-framed glasses")
        out.append(pick(rng, forms) if p.glasses else "no glasses")
    if "hair" in units:
        length = p.hair if p.hair == "long" or rng.random() < 0.7 else ""
        out.append("a bald head" if p.hair == "bald" else f"{length} {p.hair_colour} hair".strip())
    return out


def _upper(rng: np.random.Generator, p: PartsPerson, units: set[str]) -> str:
    pre = (["plain"] if p.pattern == "plain" and rng.random() < 0.15 else []) + [p.upper_colour]
    post = []
    if "sleeves" in units:
        if rng.random() < 0.4:
            post.append(f"{p.sleeves} sleeves")
        else:
            pre.insert(pick(rng, (0, len(pre))), f"{p.sleeves}-sleeved")
    if "stripes" in units:
        post.append(f"{p.pattern_colour} stripes")
    phrase = with_article(" ".join(pre + [pick(rng, _UPPER_NOUNS[p.sleeves])]))
    return f"{phrase} with {' and '.join(post)}" if post else phrase


def _body(rng: np.random.Generator, p: PartsPerson, units: set[str]) -> list[str]:
    """Noun phrases for upper garment, belt, lower garment and shoes, in that order."""
    jeans = ("jeans",) * (p.lower_colour in ("blue", "navy", "black", "grey"))
    lower = f"{p.lower_colour} {pick(rng, {'trousers': ('trousers', 'pants') + jeans}.get(p.lower, (p.lower,)))}"
    lower = with_article(lower) if p.lower == "skirt" else f"a pair of {lower}" if rng.random() < 0.25 else lower
    out = [_upper(rng, p, units)] + [with_article(f"{p.belt} belt")] * ("belt" in units) + [lower]
    if "shoes" in units:
        shoes = f"{p.shoes} {pick(rng, ('shoes', 'sneakers'))}"
        out.append(f"a pair of {shoes}" if rng.random() < 0.3 else shoes)
    return out


def _bag(rng: np.random.Generator, p: PartsPerson, units: set[str], poss: str) -> str:
    name = pick(rng, ("shoulder bag", "crossbody bag")) if p.bag == "shoulder bag" else p.bag
    phrase = with_article(f"{p.bag_colour} {name}")
    if "strap" in units:
        a_strap = with_article(f"{p.strap} strap")
        strap = {"backpack": (f"with {p.strap} straps",),
                 "handbag": (f"with {a_strap}", f"with {with_article(p.strap + ' handle')}"),
                 "shoulder bag": (f"on {a_strap}", f"with {a_strap}")}[p.bag]
        phrase += " " + pick(rng, strap)
    return phrase + (_BAG_PLACE[p.bag].format(poss) if rng.random() < 0.3 else "")


def caption(rng: np.random.Generator, p: PartsPerson, must: Iterable[str] = ()) -> str:
    """One CUHK-PEDES-style description of ``p``, parts top to bottom.

    ``must`` (SLOTS keys) are always mentioned with their colour (an absent hat or glasses as "no hat");
    upper and lower garments always are; the other parts each with probability ``_MENTION``.
    """
    units = _choose_units(rng, p, set(must))
    gender = p.gender if rng.random() < 0.9 else None
    pron, poss = _PRONOUNS[gender]
    subject = f"{pick(rng, ('A', 'The', 'This'))} {pick(rng, _SUBJECTS[gender])}"
    head, body = _head(rng, p, units), join_and(_body(rng, p, units))
    form = rng.random()
    wear = f"{pick(rng, ('is walking in', 'walks in'))} {body}" if form < 0.2 else \
        f"{pick(rng, ('wears', 'is wearing', 'is dressed in', 'has on'))} {body}"
    if not head:
        sentences = [f"{subject} {wear}"]
    elif form < 0.7:
        sentences = [f"{subject} with {join_and(head)} {wear}"]
    else:
        sentences = [f"{subject} has {join_and(head)}", f"{pron} {wear}"]
    if "bag" in units:
        verb = pick(rng, ("carries", "is carrying", "has"))
        bag = _bag(rng, p, units, poss)
        if rng.random() < 0.3:
            sentences[-1] += f", and {verb} {bag}"
        else:
            sentences.append(f"{pron} {verb} {bag}")
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


# ---------------------------------------------------------------- parsing captions back
_C = "|".join(PALETTE)
_HC = "|".join(HAIR_COLOURS)
# Each rule: a pattern and the facts a match states, as (part, group name) or (part, "=constant"). A colour is
# only ever read next to its part's noun, so a caption's facts bind colours to parts.
_RULES = tuple((re.compile(pattern), spec) for pattern, spec in (
    (r"\b(?P<v>man|woman|lady|gentleman)\b", (("gender", "v"),)),
    (rf"\b(?P<v>{_C}) (?:hat|cap|beanie)\b", (("hat", "v"),)),
    (r"\bno hat\b", (("hat", "=none"),)),
    (rf"\b(?P<v>{_C})(?:-framed)? glasses\b", (("glasses", "v"),)),
    (r"\bno glasses\b", (("glasses", "=none"),)),
    (rf"\b(?:(?P<len>short|long) )?(?P<v>{_HC}) hair\b", (("hair", "v"), ("hair length", "len"))),
    (r"\bbald\b", (("hair", "=bald"),)),
    (rf"\b(?P<v>{_C}) (?:(?:short|long)-sleeved )?(?:t-shirt|shirt|top|jacket|sweater)\b", (("upper", "v"),)),
    (r"\b(?P<v>short|long)(?:-sleeved| sleeves)\b", (("sleeves", "v"),)),
    (rf"\b(?P<v>{_C}) stripes\b", (("stripes", "v"),)),
    (r"\bplain\b", (("stripes", "=none"),)),
    (rf"\b(?P<v>{_C}) belt\b", (("belt", "v"),)),
    (rf"\b(?P<v>{_C}) (?P<t>trousers|pants|jeans|shorts|skirt)\b", (("lower", "v"), ("lower type", "t"))),
    (rf"\b(?P<v>{_C}) (?:shoes|sneakers)\b", (("shoes", "v"),)),
    (rf"\b(?P<v>{_C}) (?P<t>backpack|handbag|shoulder bag|crossbody bag)\b", (("bag", "v"), ("bag type", "t"))),
    (rf"\b(?P<v>{_C}) (?:straps?|handle)\b", (("strap", "v"),)),
))
_CANONICAL = {"lady": "woman", "gentleman": "man", "pants": "trousers", "jeans": "trousers",
              "crossbody bag": "shoulder bag"}


def parse_spans(text: str) -> list[tuple[int, str, str]]:
    """``(character offset, part, value)`` for every fact ``text`` states, in reading order."""
    out = []
    for pattern, spec in _RULES:
        for m in pattern.finditer(text.lower()):
            for part, ref in spec:
                value = ref[1:] if ref.startswith("=") else m.group(ref)
                if value is not None:
                    out.append((m.start(), part, _CANONICAL.get(value, value)))
    return sorted(out)


def parse_caption(text: str) -> set[tuple[str, str]]:
    """The ``(part, value)`` facts a caption states, in :func:`facts`' vocabulary."""
    return {(part, value) for _, part, value in parse_spans(text)}


# ---------------------------------------------------------------- drawing
def _draw_accents(p: PartsPerson, d: ImageDraw.ImageDraw, f: Frame, waist: float) -> None:
    """Glasses (two small lenses and a bridge) and a belt, small on purpose: at 192 px a few pixels each."""
    if p.glasses:
        colour = PALETTE[p.glasses]
        for x0, x1 in ((-0.04, -0.008), (0.008, 0.04)):
            d.rectangle(f.box(x0, 0.068, x1, 0.086), fill=colour)
        d.line(f.poly([(-0.008, 0.074), (0.008, 0.074)]), fill=colour, width=max(1, round(0.006 * f.h)))
    if p.belt:
        d.rectangle(f.box(-waist - 0.006, 0.478, waist + 0.006, 0.503), fill=PALETTE[p.belt])


def _draw_parts(d: ImageDraw.ImageDraw, p: PartsPerson, f: Frame, side: int, spread: float) -> None:
    """The default person drawing, with the strap in its own colour and the glasses and belt added."""
    draw_person(d, p, f, side, spread, strap=PALETTE[p.strap] if p.strap else None,
                 accents=partial(_draw_accents, p))


# ---------------------------------------------------------------- writing
def _entry(tmp: Path, ident: Identity, k: int, seed: int, image_size: tuple[int, int], cfg: PartsConfig) -> dict:
    """Render, save and describe image ``k`` of ``ident``; its own seed keeps runs reproducible."""
    rng = np.random.default_rng([seed, 11, ident.pid, k])
    rel = f"SYNTH/{ident.pid:05d}_{k:02d}.png"
    distractor = sample_person(rng, cfg.render)
    render(ident.person, rng, image_size, cfg.render, distractor, draw=_draw_parts).save(tmp / "imgs" / rel)
    captions = [caption(rng, ident.person, ident.differs) for _ in range(2)]
    entry = {"split": ident.split, "captions": captions, "file_path": rel,
             "processed_tokens": [tokens(c) for c in captions], "id": ident.pid,
             "attributes": dataclasses.asdict(ident.person)}
    if ident.twin_id is not None:
        entry.update(twin_id=ident.twin_id, twin_kind=ident.twin_kind)
    return entry


def twin_queries(entries: list[dict]) -> list[dict]:
    """Every caption of every val/test image of a twinned identity, as ``twins.json`` lists them."""
    return [{"split": e["split"], "file_path": e["file_path"], "caption_index": i, "id": e["id"],
             "twin_id": e["twin_id"], "kind": e["twin_kind"]}
            for e in entries if "twin_id" in e and e["split"] in ("val", "test") for i in range(len(e["captions"]))]


def _summary(people: list[Identity], entries: list[dict]) -> dict:
    """Actual twin rates, which parts the twins differ in, and caption length statistics for ``synth.json``."""
    kinds = Counter(i.twin_kind for i in people if i.twin_kind)
    differs = {kind: Counter("+".join(i.differs) for i in people if i.twin_kind == kind and i.pid < i.twin_id)
               for kind in ("swap", "one-part")}
    words = np.array([len(c.split()) for e in entries for c in e["captions"]])
    return {"rates": {"swap": kinds["swap"] / len(people), "one-part": kinds["one-part"] / len(people)},
            "twin_pairs_by_parts": {k: dict(sorted(v.items())) for k, v in differs.items()},
            "captions": {"count": int(words.size), "mean_words": round(float(words.mean()), 2),
                         "min_words": int(words.min()), "max_words": int(words.max())}}


def generate_parts(
    out: str | Path,
    ids: int = DEFAULT_PARTS_IDS,
    images_per_id: int = 4,
    seed: int = 0,
    twin_rate: float | None = None,
    one_part_twin_rate: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    config: PartsConfig | None = None,
    image_size: tuple[int, int] = (192, 64),
    splits: tuple[float, float, float] = (0.6, 0.15, 0.25),
) -> Path:
    """Write the part-sensitive set in the CUHK-PEDES layout to ``out`` and return ``out``.

    ``ids`` identities x ``images_per_id`` PNG images of (height, width) = ``image_size``, two captions
    each; ``twin_rate`` / ``one_part_twin_rate`` (fractions of identities; ``None``: ``config``'s, 0.3 each)
    come as swap / one-part twin pairs. Besides what ``generate`` writes, ``out/twins.json`` lists the
    twin queries. Same arguments, same bytes; output handling (atomic write, ``overwrite`` only over a
    dataset tbps synth wrote) is ``generate``'s.
    """
    rates = {k: v for k, v in (("twin_rate", twin_rate), ("one_part_twin_rate", one_part_twin_rate)) if v is not None}
    cfg = dataclasses.replace(config or PartsConfig(), **rates)
    out = prepare_dataset(out, ids, images_per_id, image_size, splits, seed, overwrite)
    people = sample_identities(ids, cfg, seed, splits)
    entries: list[dict] = []

    def write(tmp: Path) -> None:
        with tqdm(total=ids * images_per_id, desc="synth images", unit="img", disable=not progress) as bar:
            for ident in people:
                for k in range(images_per_id):
                    entries.append(_entry(tmp, ident, k, seed, image_size, cfg))
                    bar.update()
        queries = twin_queries(entries)
        (tmp / "reid_raw.json").write_text(json.dumps(entries, indent=1) + "\n")
        (tmp / "twins.json").write_text(json.dumps({"format": "tbps-twins", "version": 1, "queries": queries},
                                                   indent=1) + "\n")
        settings = dict(kind="parts", ids=ids, images_per_id=images_per_id, seed=seed, image_size=list(image_size),
                        splits=list(splits), config=dataclasses.asdict(cfg), twin_queries=len(queries),
                        **_summary(people, entries))
        (tmp / "synth.json").write_text(json.dumps(settings, indent=2) + "\n")

    write_dataset(out, write)
    log.info("wrote %d part-sensitive images of %d identities to %s", len(entries), ids, out)
    return out
