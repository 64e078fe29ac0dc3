"""``tbps data convert``: every layout read and written, round trips through the readers, the checks
on untrusted input, atomic and non-destructive output, and the command's one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_assertions import assert_user_error, run
from tbps_runtime.climessages import in_flags
from tbps_runtime.errors import DataError, InputFileNotFoundError, OutputError
from tbps_train.cli import convert_command
from tbps_train.data.convert import images as convert_images
from tbps_train.data.convert import (
    FORMATS, convert, convert_dataset, detect_format, read_layout, standard_cuhk_split,
)
from tbps_train.data.formats import has_visible_text
from tbps_train.data.readers import dataset_splits, read_csv_dataset, read_split

FIXTURES = Path(__file__).parent / "fixtures"
CONVERT = FIXTURES / "convert"
CUHK_IMAGES = FIXTURES / "cuhk-pedes" / "imgs"


def records(dataset: str, root: Path) -> dict:
    """split -> [(image path relative to imgs/, person id, captions)], as tbps's readers see them."""
    out = {}
    for split in dataset_splits(dataset):
        try:
            found = read_split(dataset, root, split, check_images=False)
        except DataError as e:
            assert "no entries" in str(e) or "has no images" in str(e), e
            continue
        base = (root / "imgs").absolute()
        out[split] = [(r.image_path.absolute().relative_to(base).as_posix(), r.person_id, r.captions) for r in found]
    return out


def csv_records(root: Path) -> dict:
    """:func:`records` of a csv dataset with the identities as written (the reader numbers them 0..n-1)."""
    data = read_csv_dataset(root)
    names = {number: name for name, number in data.person_ids.items()}
    base = (root / "imgs").absolute()
    return {split: [(r.image_path.relative_to(base).as_posix(), int(names[r.person_id]), r.captions) for r in rows]
            for split, rows in data.splits.items()}


def load(path: Path):
    return json.loads(path.read_text())


def write_reid_raw(root: Path, entries: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "reid_raw.json").write_text(json.dumps(entries))
    return root / "reid_raw.json"


def entry(i: int, **fields) -> dict:
    base = {"split": "train", "id": i, "file_path": f"cam_a/{i:03d}.png", "captions": [f"person {i} in red"]}
    return {**base, **fields}


# ---- the standard CUHK-PEDES split -------------------------------------------------------------------

@pytest.mark.parametrize("person_id, split", [(1, "train"), (11003, "train"), (11004, "val"), (12003, "val"),
                                              (12004, "test"), (13003, "test"), (0, None), (13004, None)])
def test_standard_cuhk_split_by_identity(person_id, split):
    assert standard_cuhk_split(person_id) == split


def test_cuhk_original_gets_the_standard_split(tmp_path):
    conversion = convert_dataset("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path / "out",
                                 images=CUHK_IMAGES)
    # the fixture is tests/fixtures/cuhk-pedes without its split fields: ids 1-3 train, 11004 val, 12004-5 test
    assert records("cuhk-pedes", tmp_path / "out") == records("cuhk-pedes", FIXTURES / "cuhk-pedes")
    assert {s: (c.entries, c.images, c.identities, c.captions) for s, c in conversion.splits.items()} == {
        "train": (6, 6, 3, 13), "val": (2, 2, 1, 4), "test": (4, 4, 2, 8)}
    assert any("train 1-11003, val 11004-12003, test 12004-13003" in n for n in conversion.notes)
    written = load(tmp_path / "out" / "reid_raw.json")
    assert written[0]["processed_tokens"] == load(CONVERT / "cuhk-original" / "caption_all.json")[0][
        "processed_tokens"]  # kept from the input, not recomputed
    assert conversion.images_found == 12


def test_cuhk_original_id_outside_the_standard_range_needs_a_split(tmp_path):
    bad = [{"id": 5, "file_path": "a.png", "captions": ["x"]}, {"id": 20000, "file_path": "b.png", "captions": ["y"]}]
    (tmp_path / "caption_all.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"entry 1: id 20000 is outside 1\.\.13003.*give it a 'split' field"):
        convert("cuhk-original", "cuhk-pedes", tmp_path, tmp_path / "out")
    bad[1]["split"] = "test"  # a copy that has the split keeps it
    (tmp_path / "caption_all.json").write_text(json.dumps(bad))
    convert("cuhk-original", "cuhk-pedes", tmp_path, tmp_path / "out")
    assert [(e["id"], e["split"]) for e in load(tmp_path / "out" / "reid_raw.json")] == [(5, "train"), (20000, "test")]


# ---- round trips on the fixtures of each real layout ---------------------------------------------------

def test_cuhk_original_to_cuhk_pedes_to_csv_to_cuhk_pedes(tmp_path):
    convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original" / "caption_all.json", tmp_path / "a")
    csv_file = convert("cuhk-pedes", "csv", tmp_path / "a", tmp_path / "b")
    assert csv_file == tmp_path / "b" / "annotations.csv"
    convert("csv", "cuhk-pedes", csv_file, tmp_path / "c")
    first = records("cuhk-pedes", tmp_path / "a")
    assert csv_records(tmp_path / "b") == first  # what --dataset csv reads
    assert records("cuhk-pedes", tmp_path / "c") == first
    assert sum(len(rows) for rows in first.values()) == 12


def test_rasa_and_cuhk_pedes(tmp_path):
    convert("rasa", "cuhk-pedes", CONVERT / "rasa", tmp_path / "cuhk")  # the dataset root: finds processed_data/
    assert records("cuhk-pedes", tmp_path / "cuhk") == records("cuhk-pedes", FIXTURES / "cuhk-pedes")
    folder = convert("cuhk-pedes", "rasa", FIXTURES / "cuhk-pedes", tmp_path / "rasa")
    assert folder == tmp_path / "rasa" / "processed_data"
    for split in ("train", "val", "test"):  # what RaSa's data_process.py makes of reid_raw.json, captions stripped
        expected = [{**e, "captions": [c.strip() for c in e["captions"]]}
                    for e in load(CONVERT / "rasa" / "processed_data" / f"{split}.json")]
        assert load(folder / f"{split}.json") == expected
    assert os.readlink(tmp_path / "rasa" / "imgs") == os.path.relpath(CUHK_IMAGES.resolve(), tmp_path / "rasa")


def test_aptm_and_cuhk_pedes(tmp_path):
    convert("aptm", "cuhk-pedes", CONVERT / "aptm" / "cuhk_train.json", tmp_path / "cuhk")
    assert records("cuhk-pedes", tmp_path / "cuhk") == records("cuhk-pedes", FIXTURES / "cuhk-pedes")
    convert("cuhk-pedes", "aptm", FIXTURES / "cuhk-pedes", tmp_path / "aptm")
    for split in ("train", "val", "test"):  # train: one object per caption; val, test: one per image
        expected = [{**e, "caption": e["caption"].strip() if split == "train" else [c.strip() for c in e["caption"]]}
                    for e in load(CONVERT / "aptm" / f"cuhk_{split}.json")]
        assert load(tmp_path / "aptm" / f"cuhk_{split}.json") == expected
    first = load(tmp_path / "aptm" / "cuhk_train.json")[0]
    assert first == {"image": "imgs/CUHK01/0363004.png", "image_id": 1, "caption": first["caption"]}


def test_tbps_clip_and_icfg_pedes(tmp_path):
    convert("tbps-clip", "icfg-pedes", CONVERT / "tbps-clip", tmp_path / "icfg")
    assert records("icfg-pedes", tmp_path / "icfg") == records("icfg-pedes", FIXTURES / "icfg-pedes")
    convert("icfg-pedes", "tbps-clip", FIXTURES / "icfg-pedes", tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").glob("*.json")) == ["test_reid.json", "train_reid.json"]
    assert load(tmp_path / "clip" / "test_reid.json")[0] == {
        "id": 27, "file_path": "test/0027/0027_010_05_0303morning_1067_0.jpg",
        "captions": [load(FIXTURES / "icfg-pedes" / "ICFG-PEDES.json")[6]["captions"][0]]}


@pytest.mark.parametrize("dataset", ["icfg-pedes", "rstpreid"])
def test_benchmark_to_csv_and_back(tmp_path, dataset):
    csv_file = convert(dataset, "csv", FIXTURES / dataset, tmp_path / "csv")
    convert("csv", dataset, csv_file, tmp_path / "back")
    original = records(dataset, FIXTURES / dataset)
    assert records(dataset, tmp_path / "back") == original
    assert csv_records(tmp_path / "csv") == original


def test_rstpreid_csv_rows_by_hand(tmp_path):
    csv_file = convert("rstpreid", "csv", FIXTURES / "rstpreid", tmp_path)
    lines = csv_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "image,person_id,caption,split,camera"
    assert lines[1] == ('imgs/0000_c14_0031.jpg,0,"A man with short black hair is wearing a dark blue jacket, black '
                        'trousers and a pair of black shoes. He is carrying a black bag in his right hand.",train,')
    assert len(lines) == 1 + 24  # 12 images x 2 captions


def test_csv_text_quotes_commas_newlines_and_non_ascii(tmp_path):
    captions = ['a "red" coat, black jeans', "two\nlines", "café — 穿蓝色夹克", "plain"]
    write_reid_raw(tmp_path / "in", [entry(7, captions=captions[:3]), entry(8, split="test", captions=captions[3:])])
    text = convert("cuhk-pedes", "csv", tmp_path / "in", tmp_path / "out").read_bytes().decode("utf-8")
    assert text == ("image,person_id,caption,split,camera\r\n"
                    'imgs/cam_a/007.png,7,"a ""red"" coat, black jeans",train,\r\n'
                    'imgs/cam_a/007.png,7,"two\nlines",train,\r\n'
                    "imgs/cam_a/007.png,7,café — 穿蓝色夹克,train,\r\n"
                    "imgs/cam_a/008.png,8,plain,test,\r\n")
    convert("csv", "cuhk-pedes", tmp_path / "out", tmp_path / "back")
    assert [e["captions"] for e in load(tmp_path / "back" / "reid_raw.json")] == [captions[:3], captions[3:]]


def test_team_csv_with_names_cameras_and_quoted_captions(tmp_path):
    conversion = convert_dataset("csv", "rstpreid", CONVERT / "csv", tmp_path)
    written = load(tmp_path / "data_captions.json")
    # alice, bob, carol, dave -> 0..3 (sorted names, as --dataset csv numbers them)
    assert [(e["id"], e["img_path"], e["split"]) for e in written] == [
        (0, "crops/cam1/0001.jpg", "train"), (0, "crops/cam2/0007.jpg", "train"), (1, "crops/cam1/0002.jpg", "train"),
        (1, "crops/cam2/0009.jpg", "train"), (2, "crops/cam1/0003.jpg", "val"), (2, "crops/cam2/0011.jpg", "val"),
        (3, "crops/cam1/0004.jpg", "test"), (3, "crops/cam2/0013.jpg", "test")]
    assert written[0]["captions"] == ["a woman in a red coat, black jeans and white shoes",
                                      'she carries a bag that reads "CITY" in white letters']
    assert written[1]["captions"] == ["a woman in a red coat\nwalking left, a white bag on her shoulder"]
    assert written[3]["captions"] == ["穿蓝色夹克和灰色裤子的男人"]
    assert any("'alice' -> 0, 'bob' -> 1, 'carol' -> 2, ..." in n for n in conversion.notes)
    assert "the cameras of 8 images are not kept: RSTPReid has no camera field" in conversion.notes
    assert any("images not linked" in n and "ln -s DIR" in n for n in conversion.notes)
    assert conversion.images_found is None and not (tmp_path / "imgs").exists()
    # csv -> csv keeps the cameras
    convert("csv", "csv", CONVERT / "csv", tmp_path / "again")
    again = (tmp_path / "again" / "annotations.csv").read_text(encoding="utf-8").splitlines()
    # imgs/ is the link to the input's folder: the same files
    assert again[1] == 'imgs/crops/cam1/0001.jpg,0,"a woman in a red coat, black jeans and white shoes",train,cam1'


def test_csv_without_split_column_uses_the_readers_recorded_identity_splits(tmp_path):
    rows = ["image,person_id,caption"] + [f"p{i}/{j}.jpg,p{i},person {i} view {j}" for i in range(10) for j in range(2)]
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "annotations.csv").write_text("\n".join(rows) + "\n")
    conversion = convert_dataset("csv", "cuhk-pedes", tmp_path / "own", tmp_path / "out")
    recorded = load(tmp_path / "own" / "annotations.csv.splits.json")["splits"]
    written = load(tmp_path / "out" / "reid_raw.json")
    assert {e["file_path"].split("/")[0]: e["split"] for e in written} == recorded
    assert any("splits made by identity and recorded in" in n for n in conversion.notes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(-2 ** 63, 2 ** 63 - 1), st.sampled_from(["train", "val", "test"]),
                          st.lists(st.text(st.characters(blacklist_categories=["Cs"]) | st.sampled_from("\r\n,\" "),
                                           min_size=1, max_size=30).filter(
                              has_visible_text), min_size=1, max_size=3)),
                min_size=1, max_size=6))
def test_random_entries_round_trip_through_csv(items):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        entries = [{"split": s, "id": i, "file_path": f"d{n}/im,g \"{n}\".jpg", "captions": c}
                   for n, (i, s, c) in enumerate(items)]
        write_reid_raw(root / "a", entries)
        convert("cuhk-pedes", "csv", root / "a", root / "b")
        convert("csv", "cuhk-pedes", root / "b", root / "c")
        # a line break inside a caption comes back as LF: --dataset csv reads a spreadsheet's CRLF as LF, and
        # the converter writes every layout that way (CRs before a LF dropped)
        expected = {split: [(p, i, tuple(re.sub("\r+\n", "\n", c) for c in captions)) for p, i, captions in rows]
                    for split, rows in records("cuhk-pedes", root / "a").items()}
        assert records("cuhk-pedes", root / "c") == expected
        assert csv_records(root / "b") == expected


# ---- the checks on the input ----------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_FIELD_VALUES = {"split": st.sampled_from(["train", "val", "test", "query", ""]) | _JSON,
                 "id": st.integers(-3, 13005) | _JSON, "image_id": st.integers(-3, 5) | st.text(max_size=4) | _JSON,
                 "file_path": st.sampled_from(["a.jpg", "b/c.png", "../x.jpg", "/abs.jpg", "imgs/d.jpg"]) | _JSON,
                 "image": st.sampled_from(["imgs/a.jpg", "imgs/b.jpg", "c.jpg", "../x.jpg"]) | _JSON,
                 "captions": st.lists(st.text(max_size=6), max_size=2) | _JSON, "caption": st.text(max_size=6) | _JSON}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([("cuhk-original", "caption_all.json"), ("cuhk-pedes", "reid_raw.json"),
                        ("aptm", "x_train.json"), ("tbps-clip", "test_reid.json")]),
       st.lists(st.fixed_dictionaries({}, optional=_FIELD_VALUES) | _JSON, max_size=4) | _JSON,
       st.sampled_from(["cuhk-pedes", "csv", "aptm"]))
def test_fuzzed_annotations_convert_or_raise_a_data_error(layout, document, target):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "in").mkdir()
        (root / "in" / layout[1]).write_text(json.dumps(document))
        try:
            conversion = convert_dataset(layout[0], target, root / "in", root / "out")
        except DataError:
            assert not (root / "out").exists()  # checked before anything is written
            return
        assert sum(c.images for c in conversion.splits.values()) >= 1



def test_problems_are_collected_up_to_twenty(tmp_path):
    bad = [entry(i, id=f"x{i}") for i in range(25)] + [entry(99, captions=[]), {"id": 1}]
    write_reid_raw(tmp_path, bad)
    with pytest.raises(DataError) as caught:
        convert("cuhk-pedes", "csv", tmp_path, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"27 problems in {tmp_path / 'reid_raw.json'}: entry 0: 'id' is 'x0', expected an")
    assert message.count("'id' is 'x") == 20 and "and 7 more" in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_same_problem_of_many_entries_is_listed_once(tmp_path):
    write_reid_raw(tmp_path, [entry(0, split="query")] + [entry(i, split="gallery") for i in range(1, 26)])
    with pytest.raises(DataError) as caught:
        convert("cuhk-pedes", "csv", tmp_path, tmp_path / "out")
    assert str(caught.value) == (
        f"26 problems in {tmp_path / 'reid_raw.json'}: entry 0: 'split' is 'query', expected one of train, val, "
        "test; entry 1, entry 2, entry 3 and 22 more: 'split' is 'gallery', expected one of train, val, test -- fix "
        "the input and run again")


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.jpg", "a/../../b.jpg", "C:\\x.jpg"])
def test_unsafe_image_paths_are_refused_naming_the_entry(tmp_path, path):
    write_reid_raw(tmp_path, [entry(1), entry(2, file_path=path)])
    with pytest.raises(DataError, match=r"reid_raw\.json: entry 1: 'file_path' is .*no absolute path, no '\.\.'"):
        convert("cuhk-pedes", "rstpreid", tmp_path, tmp_path / "out")


@pytest.mark.parametrize("change, expected", [
    ({"split": "query"}, "entry 0: 'split' is 'query', expected one of train, val, test"),
    ({"id": True}, "entry 0: 'id' is True, expected an integer identity"),
    ({"captions": "one caption"}, "entry 0: 'captions' is 'one caption', expected a list of strings"),
    ({"captions": [" ", "\u200b"]}, "entry 0: no non-empty caption"),
    ({"file_path": ""}, "entry 0: 'file_path' is ''"),
    ({"captions": ["ok", "\ud800"]}, "entry 0: a caption is not valid UTF-8 text"),
])
def test_bad_fields_name_entry_and_field(tmp_path, change, expected):
    write_reid_raw(tmp_path, [entry(1, **change)])
    with pytest.raises(DataError, match="1 problem in") as caught:
        convert("cuhk-pedes", "csv", tmp_path, tmp_path / "out")
    assert expected in str(caught.value)


def test_rasa_entry_in_the_wrong_file(tmp_path):
    shutil.copytree(CONVERT / "rasa", tmp_path / "rasa")
    train = tmp_path / "rasa" / "processed_data" / "train.json"
    train.write_text(json.dumps([{**load(train)[0], "split": "test"}]))
    with pytest.raises(DataError, match="train.json: entry 0: 'split' is 'test' but the entry is in the train file"):
        convert("rasa", "cuhk-pedes", tmp_path / "rasa", tmp_path / "out")


def test_aptm_folder_with_two_datasets_asks_for_one_file(tmp_path):
    shutil.copytree(CONVERT / "aptm", tmp_path / "finetune")
    shutil.copy(CONVERT / "aptm" / "cuhk_train.json", tmp_path / "finetune" / "rstp_train.json")
    with pytest.raises(DataError, match=r"APTM files of 2 datasets \(cuhk, rstp\).*as the input.*cuhk_train\.json") \
            as refused:
        convert("aptm", "cuhk-pedes", tmp_path / "finetune", tmp_path / "out")
    assert refused.value.code == "convert_input_ambiguous" and "--input" in in_flags(refused.value)
    convert("aptm", "cuhk-pedes", tmp_path / "finetune" / "rstp_train.json", tmp_path / "out")
    assert list(records("cuhk-pedes", tmp_path / "out")) == ["train"]


def test_aptm_image_with_two_identities(tmp_path):
    items = [{"image": "imgs/a.jpg", "caption": "x", "image_id": 1}, {"image": "imgs/a.jpg", "caption": "y",
                                                                      "image_id": 2}]
    (tmp_path / "d_train.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"d_train\.json: entry 1: image 'imgs/a\.jpg' has person id 2 but "
                                        r"d_train\.json: entry 0 gave it 1"):
        convert("aptm", "csv", tmp_path, tmp_path / "out")


def test_icfg_pedes_has_no_val_split(tmp_path):
    with pytest.raises(DataError, match="ICFG-PEDES has only the splits train, test, and 2 entries of the input are "
                                        "in val"):
        convert("cuhk-pedes", "icfg-pedes", FIXTURES / "cuhk-pedes", tmp_path)


def test_missing_input_names_what_is_there(tmp_path):
    with pytest.raises(InputFileNotFoundError, match=r"no reid_raw\.json in .*it holds caption_all\.json; it looks "
                                                     r"like --from cuhk-original"):
        convert("cuhk-pedes", "csv", CONVERT / "cuhk-original", tmp_path)
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        convert("cuhk-pedes", "csv", tmp_path / "nothing", tmp_path / "out")


def test_not_json(tmp_path):
    (tmp_path / "reid_raw.json").write_text('[{"id": 1,')
    with pytest.raises(DataError, match=r"reid_raw\.json is not valid JSON: .* line 1"):
        convert("cuhk-pedes", "csv", tmp_path, tmp_path / "out")


@pytest.mark.parametrize("name, expected", [("cuhk-original", "cuhk-original"), ("rasa", "rasa"), ("aptm", "aptm"),
                                            ("tbps-clip", "tbps-clip"), ("csv", "csv")])
def test_detect_format(name, expected):
    assert detect_format(CONVERT / name) == expected


def test_every_layout_reads_its_own_output(tmp_path):
    for fmt in FORMATS:
        if fmt == "icfg-pedes":
            continue  # no val split in the fixture's layout
        convert("cuhk-pedes", fmt, FIXTURES / "cuhk-pedes", tmp_path / fmt)
        source = read_layout(fmt, next(p for p in (tmp_path / fmt).rglob("*.*") if p.name != "imgs"))
        assert sorted((e.split, str(e.person_id), e.image) for e in source.entries) == sorted(
            (e["split"], str(e["id"]), e["file_path"]) for e in load(FIXTURES / "cuhk-pedes" / "reid_raw.json")), fmt


# ---- output: atomic, never over what exists, never outside the root, images linked -------------------

def test_in_place_beside_the_original_release(tmp_path):
    """The doctor's advice for a root holding caption_all.json: convert in place, the root's imgs/ kept."""
    shutil.copytree(CUHK_IMAGES, tmp_path / "imgs")
    shutil.copy(CONVERT / "cuhk-original" / "caption_all.json", tmp_path)
    conversion = convert_dataset("cuhk-original", "cuhk-pedes", tmp_path / "caption_all.json", tmp_path)
    assert conversion.images_found == 12 and not (tmp_path / "imgs").is_symlink()
    assert len(read_split("cuhk-pedes", tmp_path, "test", check_images=True)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caption_all.json", "imgs", "reid_raw.json"]


def test_refuses_to_overwrite_without_overwrite(tmp_path):
    (tmp_path / "reid_raw.json").write_text("mine")
    with pytest.raises(OutputError, match=r"reid_raw\.json exists: pass overwrite=True") as refused:
        convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path)
    assert refused.value.code == "convert_output_exists" and "pass --overwrite" in in_flags(refused.value)
    assert (tmp_path / "reid_raw.json").read_text() == "mine"
    convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path, overwrite=True)
    assert len(load(tmp_path / "reid_raw.json")) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reid_raw.json"]  # no temp file left, no imgs guessed


def test_writes_only_under_the_root(tmp_path):
    before = sorted(p.relative_to(CONVERT) for p in CONVERT.rglob("*"))
    convert("csv", "rasa", CONVERT / "csv", tmp_path / "root")
    assert sorted(p.relative_to(CONVERT) for p in CONVERT.rglob("*")) == before
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "root", "root/processed_data", "root/processed_data/test.json", "root/processed_data/train.json",
        "root/processed_data/val.json"]


def test_images_link_is_relative_and_replaced_only_when_asked(tmp_path):
    root = tmp_path / "root"
    convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", root, images=CUHK_IMAGES)
    assert not os.path.isabs(os.readlink(root / "imgs")) and (root / "imgs").resolve() == CUHK_IMAGES.resolve()
    other = tmp_path / "other"
    other.mkdir()
    (root / "reid_raw.json").unlink()
    with pytest.raises(OutputError, match="links to .*pass overwrite=True to relink it") as refused:
        convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", root, images=other, overwrite=False)
    assert "pass --overwrite to relink it" in in_flags(refused.value)
    conversion = convert_dataset("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", root, images=other,
                                 overwrite=True)
    assert (root / "imgs").resolve() == other.resolve() and conversion.images_found == 0


def test_a_real_imgs_folder_is_never_replaced(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "keep.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="imgs is a folder: images are linked, never copied or replaced"):
        convert("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path, images=CUHK_IMAGES,
                overwrite=True)
    assert (tmp_path / "imgs" / "keep.png").read_bytes() == b"x" and not (tmp_path / "reid_raw.json").exists()
    # without --images the root's own folder is used as it is
    conversion = convert_dataset("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path)
    assert conversion.images_found == 0 and conversion.images_dir == tmp_path / "imgs"


def test_no_symlinks_allowed_says_the_command_to_run(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(convert_images.os, "symlink", refuse)
    conversion = convert_dataset("cuhk-original", "cuhk-pedes", CONVERT / "cuhk-original", tmp_path,
                                 images=CUHK_IMAGES)
    relative = os.path.relpath(CUHK_IMAGES.resolve(), tmp_path.resolve())
    assert f"could not link {tmp_path / 'imgs'} (Operation not permitted): run  ln -s {relative} " \
           f"{tmp_path / 'imgs'}" in conversion.notes
    assert (tmp_path / "reid_raw.json").is_file() and not os.path.lexists(tmp_path / "imgs")


# ---- the command ------------------------------------------------------------------------------------

def test_command_prints_the_per_split_summary(tmp_path):
    result = run(convert_command, ["--from", "cuhk-original", "--to", "cuhk-pedes", "--input",
                                   CONVERT / "cuhk-original", "--root", tmp_path, "--images", CUHK_IMAGES])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1:5] == ["split    entries    images  identities  captions",
                          "train          6         6           3        13",
                          "val            2         2           1         4",
                          "test           4         4           2         8"]
    assert f"images: {tmp_path / 'imgs'} (all found)" in lines
    # the doctor ran on the result: the tiny fixture's counts differ from the paper's (warnings), nothing else
    assert lines[-1] == (f"data check: usable with 3 warnings (the full report: tbps data check --dataset "
                         f"cuhk-pedes --root {tmp_path})")


def test_command_checks_a_csv_result_and_waits_for_images_it_cannot_link(tmp_path):
    result = run(convert_command, ["--from", "rstpreid", "--to", "csv", "--input", FIXTURES / "rstpreid",
                                   "--root", tmp_path / "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("data check: clean (the full report: tbps data check "
                                                     "--dataset csv")
    result = run(convert_command, ["--from", "csv", "--to", "rstpreid", "--input", CONVERT / "csv",
                                   "--root", tmp_path / "team"])  # its crops are not under the input's folder
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("images not linked yet: then check it: tbps data check")


def test_command_json(tmp_path):
    result = run(convert_command, ["--from", "aptm", "--to", "tbps-clip", "--input", CONVERT / "aptm",
                                   "--root", tmp_path, "--json"])
    document = json.loads(result.stdout)
    assert document["splits"]["train"] == {"entries": 6, "images": 6, "identities": 3, "captions": 13}
    assert document["written"] == [str(tmp_path / f"{s}_reid.json") for s in ("train", "val", "test")]


@pytest.mark.parametrize("args, fragments", [
    (["--from", "coco", "--to", "csv"], ["'coco' is not one of"]),
    (["--from", "cuhk-pedes", "--to", "csv", "--input", "/nonexistent/reid_raw.json"], ["does not exist"]),
    (["--from", "cuhk-pedes", "--to", "icfg-pedes"], ["ICFG-PEDES has only the splits train, test"]),
])
def test_command_errors_are_one_line(tmp_path, args, fragments):
    args = args + (["--input", FIXTURES / "cuhk-pedes"] if "--input" not in args else [])
    assert_user_error(run(convert_command, args + ["--root", tmp_path / "out"]), *fragments)


def test_command_refuses_existing_output(tmp_path):
    (tmp_path / "data_captions.json").write_text("[]")
    result = run(convert_command, ["--from", "cuhk-pedes", "--to", "rstpreid", "--input", FIXTURES / "cuhk-pedes",
                                   "--root", tmp_path])
    assert_user_error(result, "data_captions.json exists: pass --overwrite")
