"""The synthetic person dataset: layout, splits, determinism and honest captions."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbps_runtime.errors import ConfigError, DataError, OutputError
from tbps_runtime.synth import dataset
from tbps_runtime.synth.captions import caption
from tbps_runtime.synth.dataset import generate
from tbps_runtime.synth.people import HAIR_COLOURS, PALETTE, SynthConfig, sample_people
from tbps_train.data import read_split

SMALL = dict(ids=12, images_per_id=2, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "ds", seed=0, **SMALL)


def _entries(root: Path) -> list[dict]:
    return json.loads((root / "reid_raw.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- layout and splits
def test_reads_back_as_cuhk_pedes_with_disjoint_splits(small):
    ids = {}
    for split in ("train", "val", "test"):
        records = read_split("cuhk-pedes", small, split)
        assert records and all(len(r.captions) == 2 for r in records)
        ids[split] = {r.person_id for r in records}
        assert len(records) == 2 * len(ids[split])
    assert [len(ids[s]) for s in ("train", "val", "test")] == [7, 2, 3]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert set().union(*ids.values()) == set(range(1, 13))


def test_entry_fields_and_image_size(small):
    entries = _entries(small)
    assert len(entries) == 24
    for e in entries:
        assert set(e) == {"split", "captions", "file_path", "processed_tokens", "id", "attributes"}
        assert re.fullmatch(r"SYNTH/\d{5}_\d{2}\.png", e["file_path"])
        with Image.open(small / "imgs" / e["file_path"]) as im:
            assert im.size == (64, 192) and im.mode == "RGB"
    assert not [p for p in small.parent.iterdir() if p.name != "ds"]  # no temporary folders left


def test_custom_image_size_and_splits(tmp_path):
    out = generate(tmp_path / "ds", ids=5, images_per_id=1, image_size=(128, 48), splits=(0.8, 0.0, 0.2),
                   progress=False)
    with Image.open(next((out / "imgs" / "SYNTH").iterdir())) as im:
        assert im.size == (48, 128)
    assert len(read_split("cuhk-pedes", out, "train")) == 4
    assert len(read_split("cuhk-pedes", out, "test")) == 1
    with pytest.raises(DataError, match="split 'val' .* has no entries"):
        read_split("cuhk-pedes", out, "val")


def test_unique_attribute_tuples(small):
    people = {e["id"]: tuple(sorted(e["attributes"].items())) for e in _entries(small)}
    keys = {tuple(v for k, v in p if k != "skin") for p in people.values()}
    assert len(keys) == 12


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes(small, tmp_path):
    again = generate(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small)


def test_other_seed_gives_other_dataset(small, tmp_path):
    other = _files(generate(tmp_path / "other", seed=1, **SMALL))
    base = _files(small)
    assert other["reid_raw.json"] != base["reid_raw.json"]
    pngs = [k for k in base if k.endswith(".png")]
    assert all(other[k] != base[k] for k in pngs)


# ---------------------------------------------------------------- output folder
def test_refuses_non_empty_out_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists and is not empty.*overwrite=True"):
        generate(out, ids=3, images_per_id=1, progress=False)
    with pytest.raises(OutputError, match="not a dataset written by tbps synth"):  # only its own datasets
        generate(out, ids=3, images_per_id=1, progress=False, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    generate(out, ids=3, images_per_id=1, progress=False)
    generate(out, ids=3, images_per_id=1, seed=1, progress=False, overwrite=True)
    assert json.loads((out / "synth.json").read_text())["seed"] == 1 and (out / dataset.MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_empty_out_is_fine_and_file_out_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", ids=3, images_per_id=1, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        generate(tmp_path / "file", ids=3, images_per_id=1, progress=False, overwrite=True)


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dataset, "_write_image", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "ds", ids=3, images_per_id=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [
    (dict(ids=2), "ids=2 is too few"),
    (dict(images_per_id=0), "images_per_id"),
    (dict(image_size=(16, 8)), "image_size"),
    (dict(splits=(0.5, 0.5, 0.5)), "splits"),
    (dict(splits=(1.2, -0.1, -0.1)), "splits"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(tmp_path / "ds", **{"ids": 6, "progress": False, **kwargs})


def test_bad_config():
    with pytest.raises(ConfigError, match="palette_size"):
        SynthConfig(palette_size=40)
    with pytest.raises(ConfigError, match="parts_per_caption"):
        SynthConfig(parts_per_caption=(4, 2))
    with pytest.raises(ConfigError, match="clutter"):
        SynthConfig(clutter=2.0)


def test_config_knobs_reach_the_dataset(tmp_path):
    cfg = SynthConfig(palette_size=4, parts_per_caption=(1, 2), clutter=0.0, pose_jitter=0.0, light_jitter=0.0,
                      noise=0.0, mirror_prob=0.0, supersample=1)
    out = generate(tmp_path / "ds", ids=6, images_per_id=2, config=cfg, progress=False)
    assert json.loads((out / "synth.json").read_text())["config"]["palette_size"] == 4
    for e in _entries(out):
        a = e["attributes"]
        assert {a["upper_colour"], a["lower_colour"], a["shoes"]} <= set(list(PALETTE)[:4])
        for c in e["captions"]:
            _check_caption(c, a)
        # Without jitter the person stands centred at 85% of the frame, lit as drawn.
        with Image.open(out / "imgs" / e["file_path"]) as im:
            h = 0.85 * 192
            top = 0.5 * (192 - h - 1.92)
            pixel = np.asarray(im)[int(top + 0.295 * h), 32].astype(int)
        assert np.abs(pixel - PALETTE[a["upper_colour"]]).max() <= 3, (pixel, a)


def test_logs_one_line_summary(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tbps_runtime.synth.dataset"):
        generate(tmp_path / "ds", ids=4, images_per_id=1, progress=False)
    assert [r.getMessage() for r in caplog.records if "wrote 4 synthetic images of 4 identities" in r.getMessage()]


# ---------------------------------------------------------------- a real retrieval task
def test_parts_are_shared_but_pairings_vary():
    cfg = SynthConfig()
    people = sample_people(np.random.default_rng(5), 2000, cfg)
    assert len({p.key() for p in people}) == 2000
    upper = Counter(p.upper_colour for p in people)
    assert len(upper) == 12 and max(upper.values()) / 2000 < 0.2 and min(upper.values()) / 2000 > 0.03
    pairs = {(p.upper_colour, p.lower_colour) for p in people}
    assert ("red", "blue") in pairs and ("blue", "red") in pairs
    assert sum((b, a) in pairs for a, b in pairs if a != b) > 50
    assert {p.lower for p in people} == {"trousers", "shorts", "skirt"}
    assert {p.bag for p in people} == {"none", "backpack", "handbag", "shoulder bag"}
    assert {p.hair for p in people} == {"short", "long", "bald"} and any(p.hat for p in people)


def test_smaller_palette_is_respected():
    people = sample_people(np.random.default_rng(0), 200, SynthConfig(palette_size=5))
    allowed = set(list(PALETTE)[:5])
    assert {p.upper_colour for p in people} | {p.shoes for p in people} <= allowed


# Nouns a caption may pair a colour with, and the attribute each one names.
_NOUN_PART = {
    "hair": "hair", "hat": "hat", "cap": "hat", "stripes": "stripes", "shoes": "shoes", "sneakers": "shoes",
    **dict.fromkeys(("shirt", "top", "t-shirt", "jacket", "sweater"), "upper"),
    **dict.fromkeys(("trousers", "pants", "jeans", "shorts", "skirt"), "lower"),
    **dict.fromkeys(("backpack", "handbag", "bag"), "bag"),
}
_COLOURS = set(PALETTE) | set(HAIR_COLOURS)


def _colour_claims(sentence: str) -> list[tuple[str, list[str]]]:
    """(part, colours said of it) for each part noun a colour is attached to."""
    words = re.findall(r"[a-z-]+", sentence.lower())
    claims: dict[int, list[str]] = {}
    for i, w in enumerate(words):
        if w not in _COLOURS:
            continue
        after = [j for j in range(i + 1, len(words)) if words[j] in _NOUN_PART]
        before = [j for j in range(i - 1, -1, -1) if words[j] in _NOUN_PART]  # "her hair is long and black"
        j = (after or before)[0]
        claims.setdefault(j, []).append(w)
    return [(_NOUN_PART[words[j]], colours) for j, colours in sorted(claims.items())]


def _check_caption(caption: str, a: dict) -> None:
    for sentence in caption.split("."):
        for part, colours in _colour_claims(sentence):
            if part == "upper":
                expected = [[a["upper_colour"], a["pattern_colour"]]]
                if a["pattern"] != "two-tone":
                    expected.append([a["upper_colour"]])
                assert colours in expected, (caption, part, colours)
            else:
                truth = {"hair": a["hair_colour"], "hat": a["hat"], "shoes": a["shoes"], "lower": a["lower_colour"],
                         "bag": a["bag_colour"], "stripes": a["pattern_colour"] if a["pattern"] == "stripes" else None}
                assert colours == [truth[part]], (caption, part, colours)
    text = caption.lower()
    words = set(re.findall(r"[a-z-]+", text))
    facts = [
        (words & {"man", "he", "his", "him"}, a["gender"] == "man"),
        (words & {"woman", "lady", "she", "her"}, a["gender"] == "woman"),
        (words & {"striped", "stripes"}, a["pattern"] == "stripes"),
        (words & {"two-tone"}, a["pattern"] == "two-tone"),
        (re.search(r"short[- ]sleeve", text), a["sleeves"] == "short"),
        (re.search(r"long[- ]sleeve", text), a["sleeves"] == "long"),
        (words & {"bald"}, a["hair"] == "bald"),
        (re.search(r"long (\w+ )?hair|hair is long", text), a["hair"] == "long"),
        (re.search(r"short (\w+ )?hair|hair is short", text), a["hair"] == "short"),
        (words & {"hat", "cap"}, a["hat"] is not None),
        (words & {"skirt"}, a["lower"] == "skirt"),
        (words & {"shorts"}, a["lower"] == "shorts"),
        (words & {"trousers", "pants", "jeans"}, a["lower"] == "trousers"),
        (words & {"backpack"}, a["bag"] == "backpack"),
        (words & {"handbag"}, a["bag"] == "handbag"),
        (re.search(r"(shoulder|crossbody) bag", text), a["bag"] == "shoulder bag"),
    ]
    for said, true in facts:
        assert not said or true, (caption, said, a)
    garments = words & set(k for k, v in _NOUN_PART.items() if v in ("upper", "lower"))
    assert garments, caption


def test_captions_only_state_true_attributes(small):
    for e in _entries(small):
        assert len(e["captions"]) == 2
        for c in e["captions"]:
            _check_caption(c, e["attributes"])


def test_many_captions_are_honest_and_partial():
    cfg = SynthConfig()
    rng = np.random.default_rng(3)
    people = sample_people(rng, 300, cfg)
    captions = [(caption(rng, p, cfg), p) for p in people for _ in range(4)]
    for c, p in captions:
        _check_caption(c, dataclasses.asdict(p))
    texts = [c for c, _ in captions]
    assert len(set(texts)) > 0.95 * len(texts)  # varied phrasing
    assert sum("shoes" in t or "sneakers" in t for t in texts) < 0.8 * len(texts)  # partial
