"""Captions of the default set: CUHK-PEDES-style descriptions that mention a random subset of the parts.

Each caption names an upper or a lower garment and a few other parts, so some
captions honestly match several people. The small phrase helpers
(:func:`with_article`, :func:`join_and`, :func:`tokens`) are shared with the
part-sensitive set's captions.
"""

from __future__ import annotations

import re

import numpy as np

from tbps_runtime.synth.people import Person, SynthConfig, pick

__all__ = ["caption", "join_and", "tokens", "with_article"]

_UNIT_WEIGHTS = {"hair": 1.0, "hat": 1.0, "upper_colour": 1.6, "sleeves": 0.8, "pattern": 0.9,
                 "lower": 1.6, "shoes": 1.0, "bag": 1.2}
_UPPER_NOUNS = {"short": ("shirt", "top", "t-shirt"), "long": ("shirt", "top", "jacket", "sweater")}
_SUBJECTS = {"man": ("man", "young man"), "woman": ("woman", "young woman", "lady"),
             None: ("person", "pedestrian")}
_PRONOUNS = {"man": ("He", "his"), "woman": ("She", "her"), None: ("The person", "their")}
_BAG_PLACE = {"backpack": "on {} back", "handbag": "in {} hand", "shoulder bag": "over {} shoulder"}


def with_article(phrase: str) -> str:
    """``phrase`` after "a" or "an" ("an orange bag")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join_and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
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
        chosen.discard(pick(rng, sorted(chosen)))
        chosen.add(pick(rng, ("upper_colour", "lower")))
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
            pre.insert(int(rng.integers(len(pre) + 1)), pick(rng, (f"{p.sleeves}-sleeved", f"{p.sleeves} sleeve")))
    phrase = with_article(" ".join(pre + [pick(rng, _UPPER_NOUNS[p.sleeves])]))
    return f"{phrase} with {' and '.join(post)}" if post else phrase


def _lower_phrase(rng, p: Person) -> str:
    colour = p.lower_colour if rng.random() < 0.85 else ""
    nouns = {"trousers": ("trousers", "pants") + ("jeans",) * (colour in ("blue", "navy", "black", "grey")),
             "shorts": ("shorts",), "skirt": ("skirt",)}[p.lower]
    phrase = f"{colour} {pick(rng, nouns)}".strip()
    if p.lower == "skirt":
        return with_article(phrase)
    return f"a pair of {phrase}" if rng.random() < 0.25 else phrase


def _parts(rng, p: Person, units: set[str]) -> dict[str, str]:
    """Noun phrases for the chosen units."""
    out = {}
    if "hair" in units:
        length = p.hair if p.hair == "long" or rng.random() < 0.7 else ""
        out["hair"] = "bald" if p.hair == "bald" else f"{length} {p.hair_colour} hair".strip()
    if "hat" in units:
        out["hat"] = with_article(f"{p.hat} {pick(rng, ('hat', 'cap'))}")
    if units & {"upper_colour", "sleeves", "pattern"}:
        out["upper"] = _upper_phrase(rng, p, units)
    if "lower" in units:
        out["lower"] = _lower_phrase(rng, p)
    if "shoes" in units:
        shoes = f"{p.shoes} {pick(rng, ('shoes', 'sneakers'))}"
        out["shoes"] = f"a pair of {shoes}" if rng.random() < 0.3 else shoes
    if "bag" in units:
        name = pick(rng, ("shoulder bag", "crossbody bag")) if p.bag == "shoulder bag" else p.bag
        out["bag"] = with_article(f"{p.bag_colour} {name}" if rng.random() < 0.85 else name)
    return out


def caption(rng: np.random.Generator, p: Person, cfg: SynthConfig) -> str:
    """One CUHK-PEDES-style description mentioning a random subset of ``p``'s parts."""
    parts = _parts(rng, p, _choose_units(rng, p, cfg))
    gender = p.gender if rng.random() < 0.85 else None
    noun, hair, bag = pick(rng, _SUBJECTS[gender]), parts.get("hair"), parts.get("bag")
    if hair == "bald" and rng.random() < 0.5:
        noun, hair = f"bald {noun}", None
    subject = pick(rng, ("A", "The", "This")) + " " + noun
    if hair and hair != "bald" and rng.random() < 0.4:
        subject, hair = f"{subject} with {hair}", None
    main = _main_sentence(rng, subject, parts)
    if bag and rng.random() < 0.35:
        main, bag = f"{main} and {pick(rng, ('carries', 'is carrying'))} {bag}", None
    extra = _other_sentences(rng, p, gender, hair, bag)
    return " ".join(s[0].upper() + s[1:] + "." for s in [main] + extra)


def _main_sentence(rng, subject: str, parts: dict[str, str]) -> str:
    """``subject`` wearing the clothes in ``parts`` (hat, garments in either order, shoes)."""
    garments = [parts[k] for k in ("upper", "lower") if k in parts]
    if rng.random() < 0.25:
        garments.reverse()
    hat, shoes = [parts[k] for k in ("hat",) if k in parts], [parts[k] for k in ("shoes",) if k in parts]
    wear = join_and(hat + garments + shoes)
    form = rng.random()
    if form < 0.45:
        return f"{subject} {pick(rng, ('wears', 'is wearing', 'is dressed in'))} {wear}"
    if form < 0.7:
        return f"{subject} in {wear} {pick(rng, ('is walking', 'walks', 'is standing'))}"
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
        out.append(pick(rng, (f"{pron} carries {bag}", f"{pron} is carrying {bag}", f"{pron} has {bag} {place}")))
    if len(out) == 2 and rng.random() < 0.5:
        out.reverse()
    return out



def tokens(text: str) -> list[str]:
    """The lower-case words of ``text``, as CUHK-PEDES' ``processed_tokens`` lists them."""
    return re.findall(r"[a-z0-9]+", text.lower())
