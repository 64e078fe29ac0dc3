"""The three benchmark readers on tiny fixtures in the real formats, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tbps_runtime.errors import DataError, InputFileNotFoundError, TbpsError, UnsafePathError
from tbps_train.data import DATASETS, ImageRecord, dataset_splits, read_split
from tbps_train.data.formats import LAYOUTS, Entry, EntryProblem, parse_entry

FIXTURES = Path(__file__).parent / "fixtures"
ANNOTATION = {"cuhk-pedes": "reid_raw.json", "icfg-pedes": "ICFG-PEDES.json", "rstpreid": "data_captions.json"}
# dataset -> split -> (records, identities)
EXPECTED = {
    "csv": {"train": (4, {0, 1}), "val": (2, {2}), "test": (2, {3, 4})},
    "cuhk-pedes": {"train": (6, {1, 2, 3}), "val": (2, {11004}), "test": (4, {12004, 12005})},
    "icfg-pedes": {"train": (6, {1, 2, 3}), "test": (6, {27, 28, 29})},
    "rstpreid": {"train": (6, {0, 1, 2}), "val": (2, {3}), "test": (4, {4, 5})},
}


def _copy(dataset: str, tmp_path: Path) -> Path:
    root = tmp_path / dataset
    shutil.copytree(FIXTURES / dataset, root)
    return root


def _entries(root: Path, dataset: str) -> list[dict]:
    return json.loads((root / ANNOTATION[dataset]).read_text())


def _write(root: Path, dataset: str, entries) -> None:
    (root / ANNOTATION[dataset]).write_text(json.dumps(entries))


# ---------------------------------------------------------------- good input
def test_datasets_and_splits():
    assert DATASETS == ("cuhk-pedes", "icfg-pedes", "rstpreid", "csv")
    assert dataset_splits("cuhk-pedes") == ("train", "val", "test")
    assert dataset_splits("icfg-pedes") == ("train", "test")
    assert dataset_splits("rstpreid") == ("train", "val", "test")


@pytest.mark.parametrize("dataset", DATASETS)
def test_reads_every_split_of_fixture(dataset):
    for split in dataset_splits(dataset):
        records = read_split(dataset, FIXTURES / dataset, split)
        count, ids = EXPECTED[dataset][split]
        assert len(records) == count
        assert {r.person_id for r in records} == ids
        for r in records:
            assert isinstance(r, ImageRecord)
            assert r.image_path.is_absolute() and r.image_path.is_file()
            assert (FIXTURES / dataset / "imgs").resolve() in r.image_path.resolve().parents
            assert r.captions and all(c == c.strip() and c for c in r.captions)


def test_cuhk_records_in_file_order_with_stripped_captions():
    records = read_split("cuhk-pedes", FIXTURES / "cuhk-pedes", "train")
    assert records[0].image_path.parts[-3:] == ("imgs", "CUHK01", "0363004.png")
    assert records[0].captions[1].endswith("left shoulder.")  # trailing space stripped
    assert records[1].captions[1].endswith("white shoes.")  # trailing newline stripped
    assert len(records[3].captions) == 3
    assert [r.image_path.name for r in records[:2]] == ["0363004.png", "0363003.png"]


def test_icfg_and_rstpreid_paths():
    icfg = read_split("icfg-pedes", FIXTURES / "icfg-pedes", "test")
    assert icfg[0].image_path.parts[-4:] == ("imgs", "test", "0027", "0027_010_05_0303morning_1067_0.jpg")
    assert len(icfg[0].captions) == 1
    rstp = read_split("rstpreid", str(FIXTURES / "rstpreid"), "train")
    assert rstp[0].image_path.parts[-2:] == ("imgs", "0000_c14_0031.jpg")
    assert rstp[0].person_id == 0 and len(rstp[0].captions) == 2


def test_check_images_false_skips_missing_images(tmp_path):
    root = _copy("rstpreid", tmp_path)
    shutil.rmtree(root / "imgs")
    assert len(read_split("rstpreid", root, "test", check_images=False)) == 4


def test_captions_stripped_and_empty_dropped(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    entries = _entries(root, "cuhk-pedes")
    entries[0]["captions"] = ["  A man in red.  ", "", "   ", "\tA man.\n"]
    _write(root, "cuhk-pedes", entries)
    assert read_split("cuhk-pedes", root, "train")[0].captions == ("A man in red.", "A man.")


# ---------------------------------------------------------------- bad input
def _raises(kind, match, *args, **kwargs):
    with pytest.raises(kind, match=match) as info:
        read_split(*args, **kwargs)
    assert isinstance(info.value, TbpsError)
    return info.value


def test_unknown_dataset_lists_valid_ones():
    _raises(DataError, r"unknown dataset 'cuhk'.*'cuhk-pedes', 'icfg-pedes', 'rstpreid'", "cuhk", FIXTURES, "train")
    with pytest.raises(DataError, match="choose one of"):
        dataset_splits("market")


def test_unknown_split_lists_that_datasets_splits():
    _raises(DataError, r"unknown split 'val' for icfg-pedes: it has 'train', 'test'",
            "icfg-pedes", FIXTURES / "icfg-pedes", "val")
    _raises(DataError, r"unknown split 'dev'.*'train', 'val', 'test'", "rstpreid", FIXTURES / "rstpreid", "dev")


def test_missing_root(tmp_path):
    _raises(InputFileNotFoundError, r"dataset root .*nowhere does not exist", "cuhk-pedes", tmp_path / "nowhere", "train")


def test_root_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    _raises(DataError, r"is a file", "cuhk-pedes", tmp_path / "f", "train")


@pytest.mark.parametrize("dataset,expected", [
    ("cuhk-pedes", r"no reid_raw\.json under .*: is this a CUHK-PEDES root\?"),
    ("icfg-pedes", r"no ICFG-PEDES\.json under .*: is this an ICFG-PEDES root\?"),
    ("rstpreid", r"no data_captions\.json under .*: is this a RSTPReid root\?"),
])
def test_missing_annotation_file_names_the_expected_file(dataset, expected):
    other = "rstpreid" if dataset != "rstpreid" else "cuhk-pedes"  # a root of another dataset
    _raises(InputFileNotFoundError, expected, dataset, FIXTURES / other, "train")


def test_misnamed_annotation_file_is_listed(tmp_path):
    root = _copy("icfg-pedes", tmp_path)
    (root / "ICFG-PEDES.json").rename(root / "ICFG_PEDES.json")
    _raises(InputFileNotFoundError, r"no ICFG-PEDES\.json under .*; it holds ICFG_PEDES\.json", "icfg-pedes", root, "test")


def test_malformed_json_names_file_line_and_column(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    (root / "reid_raw.json").write_text('[\n  {"split": "train",\n   "id": 1,,\n')
    err = _raises(DataError, r"reid_raw\.json is not valid JSON: .* at line 3, column 12", "cuhk-pedes", root, "train")
    assert isinstance(err.__cause__, json.JSONDecodeError)


def test_non_utf8_file(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    (root / "reid_raw.json").write_bytes(b'["\xff\xfe\xfa"]')
    _raises(DataError, r"reid_raw\.json", "cuhk-pedes", root, "train")


@pytest.mark.parametrize("document,kind", [({"split": "train"}, "dict"), ("train", "str"), (3, "int"), (None, "NoneType")])
def test_top_level_must_be_a_list(tmp_path, document, kind):
    root = _copy("rstpreid", tmp_path)
    _write(root, "rstpreid", document)
    _raises(DataError, rf"data_captions\.json holds a JSON {kind}, expected a list", "rstpreid", root, "train")


@pytest.mark.parametrize("field,value,expected", [
    ("split", 3, r"entry 2: 'split' is 3, expected a string"),
    ("id", "7", r"entry 2: 'id' is '7', expected an integer"),
    ("id", True, r"entry 2: 'id' is True, expected an integer"),
    ("id", 1.5, r"entry 2: 'id' is 1.5"),
    ("file_path", 5, r"entry 2: 'file_path' is 5, expected an image path"),
    ("file_path", "", r"entry 2: 'file_path' is '', expected an image path"),
    ("file_path", "/abs/x.png", r"entry 2: 'file_path' is '/abs/x.png', expected a path relative to imgs/"),
    ("captions", "a man", r"entry 2: 'captions' is 'a man', expected a list of strings"),
    ("captions", ["ok", 3], r"entry 2: 'captions' is \['ok', 3\], expected a list of strings"),
    ("captions", [], r"entry 2 \(CUHK03/108_2\.png\) has no non-empty caption"),
    ("captions", ["", "  \n"], r"entry 2 \(CUHK03/108_2\.png\) has no non-empty caption"),
])
def test_wrong_field_names_entry_and_field(tmp_path, field, value, expected):
    root = _copy("cuhk-pedes", tmp_path)
    entries = _entries(root, "cuhk-pedes")
    entries[2][field] = value
    _write(root, "cuhk-pedes", entries)
    _raises(DataError, r"reid_raw\.json: " + expected, "cuhk-pedes", root, "train")


@pytest.mark.parametrize("dataset,field", [
    ("cuhk-pedes", "split"), ("cuhk-pedes", "id"), ("cuhk-pedes", "file_path"), ("cuhk-pedes", "captions"),
    ("icfg-pedes", "file_path"), ("rstpreid", "img_path"), ("rstpreid", "captions"),
])
def test_missing_field_names_entry_and_field(tmp_path, dataset, field):
    root = _copy(dataset, tmp_path)
    entries = _entries(root, dataset)
    del entries[4][field]
    _write(root, dataset, entries)
    _raises(DataError, rf"entry 4 has no '{field}' field", dataset, root, "train")


def test_rstpreid_wants_img_path_not_file_path(tmp_path):
    root = _copy("rstpreid", tmp_path)
    entries = _entries(root, "rstpreid")
    for e in entries:
        e["file_path"] = e.pop("img_path")
    _write(root, "rstpreid", entries)
    _raises(DataError, r"entry 0 has no 'img_path' field \(it has .*'file_path'", "rstpreid", root, "train")


def test_entry_not_an_object(tmp_path):
    root = _copy("icfg-pedes", tmp_path)
    entries = _entries(root, "icfg-pedes")
    entries[1] = ["train", 1]
    _write(root, "icfg-pedes", entries)
    _raises(DataError, r"ICFG-PEDES\.json: entry 1 is a JSON list, expected an object", "icfg-pedes", root, "test")


def test_a_path_out_of_imgs_is_an_unsafe_path_error(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    entries = _entries(root, "cuhk-pedes")
    entries[1]["file_path"] = "../reid_raw.json"
    _write(root, "cuhk-pedes", entries)
    _raises(UnsafePathError, r"entry 1: 'file_path' is '\.\./reid_raw\.json'", "cuhk-pedes", root, "test")


def test_one_parser_says_a_problem_for_one_entry_or_for_many():
    """The reader raises ``str(problem)``, the doctor lists ``sentence``, the converter groups by ``fact``."""
    layout = LAYOUTS["rstpreid"]
    problem = parse_entry({"split": "train", "img_path": "a.jpg"}, "entry 4", layout)
    assert isinstance(problem, EntryProblem)
    assert (problem.where, problem.fact, problem.sentence) == ("entry 4", "no 'id', 'captions' field",
                                                               "entry 4 has no 'id', 'captions' field")
    assert str(problem) == "entry 4 has no 'id', 'captions' field (it has 'split', 'img_path')"
    item = {"split": "test", "id": 3, "img_path": "a.jpg", "captions": [" a man ", ""]}
    entry = parse_entry(item, "entry 5", layout)
    assert entry == Entry("test", 3, "a.jpg", (" a man ", "")) and entry.where == "entry 5"  # captions as written
    unsafe = {**item, "img_path": "/a.jpg", "captions": [" "]}
    assert parse_entry(unsafe, "entry 6", layout).error is UnsafePathError
    # the doctor reports paths and captions in their own sections
    assert parse_entry(unsafe, "entry 6", layout, content=False) == Entry("test", 3, "/a.jpg", (" ",))


def test_missing_images_names_first_five_and_count(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    records = read_split("cuhk-pedes", root, "train")
    for r in records:
        r.image_path.unlink()
    err = _raises(DataError, r"6 of 6 images are missing under .*imgs", "cuhk-pedes", root, "train")
    message = str(err)
    assert "CUHK01/0363004.png" in message and "Market/0002_c1s1_000451_03.jpg" in message
    assert "Market/0002_c2s1_000301_01.jpg" not in message  # the sixth is only counted
    assert "and 1 more" in message and "unpack the dataset" in message
    assert len(read_split("cuhk-pedes", root, "test")) == 4  # other splits are unaffected


def test_missing_image_dir_is_mentioned(tmp_path):
    root = _copy("rstpreid", tmp_path)
    shutil.rmtree(root / "imgs")
    _raises(DataError, r"4 of 4 images are missing .*imgs does not exist", "rstpreid", root, "test")


def test_empty_split_names_the_splits_present(tmp_path):
    root = _copy("cuhk-pedes", tmp_path)
    _write(root, "cuhk-pedes", [e for e in _entries(root, "cuhk-pedes") if e["split"] != "val"])
    _raises(DataError, r"split 'val' of .*cuhk-pedes has no entries \(reid_raw\.json holds splits: 'test', 'train'\)",
            "cuhk-pedes", root, "val")


def test_empty_list(tmp_path):
    root = _copy("rstpreid", tmp_path)
    _write(root, "rstpreid", [])
    _raises(DataError, r"split 'train' of .* has no entries \(data_captions\.json holds splits: none\)",
            "rstpreid", root, "train")


# ---------------------------------------------------------------- fuzzing
_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)
_entry = st.fixed_dictionaries({}, optional={
    "split": st.sampled_from(["train", "val", "test", "Train"]) | _json,
    "id": st.integers() | _json,
    "file_path": st.sampled_from(["a.png", "sub/b.jpg", "missing.png", "/abs.png", "../out.png", "sub/../../x.png",
                                  "sub", "x\x00y"]) | _json,
    "captions": st.lists(st.text(max_size=12), max_size=3) | _json,
    "processed_tokens": _json,
})
_valid = st.fixed_dictionaries({
    "split": st.sampled_from(["train", "val", "test"]),
    "id": st.integers(),
    "file_path": st.sampled_from(["a.png", "sub/b.jpg", "missing.png"]),
    "captions": st.lists(st.text(max_size=12), min_size=1, max_size=3),
}, optional={"processed_tokens": _json, "extra": _json})
_document = st.lists(_valid, min_size=1, max_size=4) | st.lists(_valid | _entry | _json, max_size=5) | _json


def _fuzz_root(tmp_path: Path) -> Path:
    root = tmp_path / "fuzz"
    (root / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "imgs" / "a.png").write_bytes(b"png")
    (root / "imgs" / "sub" / "b.jpg").write_bytes(b"jpg")
    return root


def _read_or_data_error(root: Path, split: str, check_images: bool) -> None:
    try:
        records = read_split("cuhk-pedes", root, split, check_images=check_images)
    except DataError:
        return
    assert records and all(isinstance(r, ImageRecord) for r in records)
    assert all(r.captions and all(c and c == c.strip() for c in r.captions) for r in records)
    if check_images:
        assert all(r.image_path.is_file() for r in records)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_document, split=st.sampled_from(["train", "val", "test"]), check_images=st.booleans())
def test_fuzzed_entries_give_records_or_data_error(tmp_path, document, split, check_images):
    root = _fuzz_root(tmp_path)
    (root / "reid_raw.json").write_text(json.dumps(document))
    _read_or_data_error(root, split, check_images)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_fuzzed_file_bytes_give_records_or_data_error(tmp_path, content):
    root = _fuzz_root(tmp_path)
    (root / "reid_raw.json").write_bytes(content)
    _read_or_data_error(root, "train", True)
