"""The part-sensitive synthetic set: twins, captions that tell twins apart, twins.json, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tbps_runtime.errors import ConfigError, OutputError
from tbps_runtime.synth.dataset import generate
from tbps_runtime.synth.parts import (
    PartsConfig, PartsPerson, _draw_group, caption, facts, generate_parts, parse_caption, parse_spans,
    sample_identities,
)
from tbps_runtime.synth.people import PALETTE
from tbps_train.cli import synth_command
from tbps_train.data import read_split
from cli_assertions import assert_user_error

SMALL = dict(ids=40, images_per_id=2, progress=False)
# The colour-bearing fields, top to bottom (written out here rather than imported, to check the module's table).
COLOUR_FIELDS = ("hat", "glasses", "upper_colour", "pattern_colour", "belt", "lower_colour", "shoes", "bag_colour",
                 "strap")
SMALL_FIELDS = ("hat", "glasses", "belt", "shoes", "strap")
# Rank of each fact's part from head to feet; a caption's facts must come in non-decreasing rank.
RANK = {"gender": 0, "hat": 1, "glasses": 2, "hair": 3, "hair length": 3, "upper": 4, "sleeves": 4, "stripes": 4,
        "belt": 5, "lower": 6, "lower type": 6, "shoes": 7, "bag": 8, "bag type": 8, "strap": 8}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_parts(tmp_path_factory.mktemp("parts") / "ds", seed=0, **SMALL)


def _entries(root: Path) -> list[dict]:
    return json.loads((root / "reid_raw.json").read_text())


def _people(root: Path) -> dict[int, dict]:
    return {e["id"]: e for e in _entries(root)}


def _pairs(root: Path, kind: str) -> list[tuple[dict, dict]]:
    people = _people(root)
    return [(e, people[e["twin_id"]]) for e in people.values() if e.get("twin_kind") == kind and e["id"] < e["twin_id"]]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _person(attributes: dict) -> PartsPerson:
    return PartsPerson(**attributes)


# ---------------------------------------------------------------- layout and splits
def test_reads_back_as_cuhk_pedes_with_twins_inside_one_split(small):
    split_of = {}
    for split in ("train", "val", "test"):
        records = read_split("cuhk-pedes", small, split)
        assert records and all(len(r.captions) == 2 for r in records)
        split_of.update({r.person_id: split for r in records})
    assert sorted(split_of) == list(range(1, 41))
    assert Counter(split_of.values()) == {"train": 24, "val": 6, "test": 10}  # the default set's 0.6/0.15/0.25
    for e in _entries(small):
        assert set(e) >= {"split", "captions", "file_path", "processed_tokens", "id", "attributes"}
        if "twin_id" in e:
            assert split_of[e["twin_id"]] == e["split"] and e["twin_kind"] in ("swap", "one-part")
            assert _people(small)[e["twin_id"]]["twin_id"] == e["id"]  # mutual
    with Image.open(small / "imgs" / _entries(small)[0]["file_path"]) as im:
        assert im.size == (64, 192)


def test_all_identities_distinct(small):
    keys = {tuple((k, v) for k, v in sorted(e["attributes"].items()) if k != "skin") for e in _entries(small)}
    assert len(keys) == 40


# ---------------------------------------------------------------- twins
def test_swap_twins_same_colours_on_different_parts(small):
    pairs = _pairs(small, "swap")
    assert pairs
    for a, b in pairs:
        ca = [a["attributes"][f] for f in COLOUR_FIELDS]
        cb = [b["attributes"][f] for f in COLOUR_FIELDS]
        assert Counter(c for c in ca if c) == Counter(c for c in cb if c)  # the same multiset of colours
        assert ca != cb  # ... on different parts
        assert sum(x != y for x, y in zip(ca, cb)) == 2  # exactly two parts exchanged
        others = {k for k in a["attributes"] if k not in COLOUR_FIELDS}
        assert {k: a["attributes"][k] for k in others} == {k: b["attributes"][k] for k in others}


def test_one_part_twins_differ_in_exactly_one_part(small):
    pairs = _pairs(small, "one-part")
    assert pairs
    for a, b in pairs:
        differ = [k for k in a["attributes"] if a["attributes"][k] != b["attributes"][k]]
        assert len(differ) == 1 and differ[0] in COLOUR_FIELDS, differ


def test_one_part_twins_mostly_differ_in_a_small_part():
    people = sample_identities(600, seed=3)
    changed = [i.differs[0] for i in people if i.twin_kind == "one-part"]
    small = sum(part in ("hat", "glasses", "belt", "shoes", "strap") for part in changed)
    assert small / len(changed) > 0.5


@pytest.mark.parametrize("swap, one", [(0.3, 0.3), (0.2, 0.4), (0.0, 0.5)])
def test_twin_rates_are_honoured(swap, one):
    people = sample_identities(400, PartsConfig(twin_rate=swap, one_part_twin_rate=one), seed=1)
    kinds = Counter(i.twin_kind for i in people)
    assert kinds["swap"] / 400 == pytest.approx(swap, abs=0.02)
    assert kinds["one-part"] / 400 == pytest.approx(one, abs=0.02)
    for i in people:
        if i.twin_id is not None:
            twin = people[i.twin_id - 1]
            assert twin.twin_id == i.pid and twin.split == i.split and abs(twin.pid - i.pid) == 1


def test_small_parts_share_the_palette_with_big_parts():
    people = [i.person for i in sample_identities(400, seed=2)]
    small = {getattr(p, f) for p in people for f in SMALL_FIELDS} - {None}
    big = {getattr(p, f) for p in people for f in ("upper_colour", "lower_colour", "bag_colour")} - {None}
    assert small == big == set(PALETTE)


def test_config_rejects_bad_rates():
    with pytest.raises(ConfigError, match="<= 1"):
        PartsConfig(twin_rate=0.6, one_part_twin_rate=0.6)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PartsConfig(hat_rate=1.5)


# ---------------------------------------------------------------- captions
def test_captions_parse_to_own_facts_and_not_the_twins(small):
    people = _people(small)
    for e in people.values():
        mine = facts(_person(e["attributes"]))
        for text in e["captions"]:
            said = parse_caption(text)
            assert len(said) >= 4 and said <= mine, (text, said - mine)
            if "twin_id" in e:
                assert not said <= facts(_person(people[e["twin_id"]]["attributes"])), text


def test_captions_name_every_differing_part_with_its_colour(small):
    for a, b in _pairs(small, "swap") + _pairs(small, "one-part"):
        for e, other in ((a, b), (b, a)):
            differ = facts(_person(e["attributes"])) - facts(_person(other["attributes"]))
            for text in e["captions"]:
                assert differ <= parse_caption(text), (text, differ)


def test_captions_go_top_to_bottom(small):
    for e in _entries(small):
        for text in e["captions"]:
            ranks = [RANK[part] for _, part, _ in parse_spans(text)]
            assert ranks == sorted(ranks), text


def test_parser_binds_colours_to_parts():
    assert parse_caption("A man wears a red shirt and blue jeans.") == {
        ("gender", "man"), ("upper", "red"), ("lower", "blue"), ("lower type", "trousers")}
    assert parse_caption("The lady with no glasses and long blonde hair has a black belt and white sneakers.") == {
        ("gender", "woman"), ("glasses", "none"), ("hair", "blonde"), ("hair length", "long"), ("belt", "black"),
        ("shoes", "white")}
    assert parse_caption("She carries a grey crossbody bag on a pink strap.") == {
        ("bag", "grey"), ("bag type", "shoulder bag"), ("strap", "pink")}


def test_caption_length_and_summary(small):
    summary = json.loads((small / "synth.json").read_text())
    words = [len(c.split()) for e in _entries(small) for c in e["captions"]]
    assert summary["kind"] == "parts" and summary["captions"]["count"] == 160
    assert summary["captions"]["mean_words"] == pytest.approx(np.mean(words), abs=0.01)
    assert 20 <= summary["captions"]["mean_words"] <= 27  # CUHK-PEDES: ~23
    assert summary["config"]["twin_rate"] == 0.3 and set(summary["rates"]) == {"swap", "one-part"}
    pairs = {kind: sum(v.values()) for kind, v in summary["twin_pairs_by_parts"].items()}
    assert pairs == {kind: len(_pairs(small, kind)) for kind in ("swap", "one-part")}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), kind=st.sampled_from(["single", "swap", "one-part"]))
def test_parsed_caption_is_within_the_persons_facts(seed, kind):
    rng = np.random.default_rng(seed)
    group = _draw_group(rng, kind, PartsConfig(), set())
    for p, twin in zip(group, reversed(group)):  # a single person is their own "twin": nothing must differ
        said = parse_caption(caption(rng, p, _differs(p, twin)))
        assert said <= facts(p)
        if twin is not p:
            assert not said <= facts(twin)


def _differs(a: PartsPerson, b: PartsPerson) -> list[str]:
    """The parts whose colour differs, named as captions and facts name them."""
    parts = ("hat", "glasses", "upper", "stripes", "belt", "lower", "shoes", "bag", "strap")
    return [part for part, f in zip(parts, COLOUR_FIELDS) if getattr(a, f) != getattr(b, f)]


# ---------------------------------------------------------------- twins.json
def test_twins_json_lists_exactly_the_val_test_twin_captions(small):
    twins = json.loads((small / "twins.json").read_text())
    assert twins["format"] == "tbps-twins" and twins["version"] == 1
    by_path = {e["file_path"]: e for e in _entries(small)}
    expected = {(e["split"], e["file_path"], i, e["id"], e["twin_id"], e["twin_kind"])
                for e in by_path.values() if "twin_id" in e and e["split"] in ("val", "test")
                for i in range(len(e["captions"]))}
    listed = [(q["split"], q["file_path"], q["caption_index"], q["id"], q["twin_id"], q["kind"])
              for q in twins["queries"]]
    assert expected and len(listed) == len(set(listed)) and set(listed) == expected
    assert {q[0] for q in listed} == {"val", "test"}
    for split, path, index, pid, _, _ in listed:
        assert (small / "imgs" / path).is_file()
        assert by_path[path]["id"] == pid and by_path[path]["split"] == split
        assert 0 <= index < len(by_path[path]["captions"])
    assert json.loads((small / "synth.json").read_text())["twin_queries"] == len(listed)


# ---------------------------------------------------------------- determinism and the default set
def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    assert _files(generate_parts(tmp_path / "again", seed=0, **SMALL)) == _files(small)
    other = _files(generate_parts(tmp_path / "other", seed=1, **SMALL))
    assert other.keys() == _files(small).keys()
    assert other["reid_raw.json"] != _files(small)["reid_raw.json"]
    assert other["imgs/SYNTH/00001_00.png"] != _files(small)["imgs/SYNTH/00001_00.png"]


def test_default_set_is_unchanged(tmp_path):
    """Hashes taken with the default set's generator as it was before the parts set existed (then
    tbps_train/data/synth.py): its output must not move."""
    out = generate(tmp_path / "d", ids=12, images_per_id=2, seed=7, progress=False)
    raw = hashlib.sha256((out / "reid_raw.json").read_bytes()).hexdigest()
    assert raw == "05fb9c186dae99b63ccf70f55baedda819a072c82e9c4e245eb18a6d24e7295e"
    pixels = hashlib.sha256()
    for path in sorted((out / "imgs" / "SYNTH").iterdir()):  # decoded pixels: independent of the PNG encoder
        pixels.update(np.asarray(Image.open(path)).tobytes())
    assert pixels.hexdigest() == "4fdea0b119b10a81aa39e614de211f958845047051e869fcebb273720c69bcb5"


# ---------------------------------------------------------------- output handling and the command line
def _run(*args):
    return CliRunner().invoke(synth_command, [str(a) for a in args], catch_exceptions=False)


def test_cli_parts_and_overwrite_rules(tmp_path):
    out = tmp_path / "p"
    result = _run("--parts", "-o", out, "--ids", 30, "--images-per-id", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(_entries(out)) == 30 and (out / "twins.json").is_file()
    assert json.loads((out / "synth.json").read_text())["kind"] == "parts"
    assert_user_error(_run("--parts", "-o", out, "--ids", 30, "--images-per-id", 1, "--quiet"), "not empty")
    # A parts set and a default set may replace each other (both carry the marker) ...
    assert _run("-o", out, "--ids", 5, "--images-per-id", 1, "--overwrite", "--quiet").exit_code == 0
    assert not (out / "twins.json").exists() and len(_entries(out)) == 5
    assert _run("--parts", "-o", out, "--ids", 30, "--images-per-id", 1, "--overwrite", "--quiet").exit_code == 0
    assert (out / "twins.json").is_file()
    # ... but a directory holding anything tbps synth did not write is never replaced.
    (out / "notes.txt").write_text("mine")
    assert_user_error(_run("--parts", "-o", out, "--ids", 30, "--overwrite", "--quiet"), "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_directory_without_the_marker(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "reid_raw.json").write_text("[]")
    with pytest.raises(OutputError, match="not a dataset written by tbps synth"):
        generate_parts(tmp_path / "mine", ids=6, images_per_id=1, progress=False, overwrite=True)
    assert (tmp_path / "mine" / "reid_raw.json").read_text() == "[]"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary directory left behind
