"""``--dataset csv``: your own captions in a CSV or JSON Lines file, on fixtures in the real format; splits made
by identity and recorded; every bad input; fuzzed text; and tbps train / eval / ablate end to end."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError, OutputError, UnsafePathError
from tbps_train.data import DATASETS, ImageRecord, dataset_splits, read_split
from tbps_train.data import readers
from tbps_train.data.readers import (
    CsvDataset, csv_splits_path, make_csv_splits, make_identity_splits, read_csv_dataset,
)

FIXTURE = Path(__file__).parent / "fixtures" / "csv"
HEADER = "image,person_id,caption,split,camera\n"


def _copy(tmp_path: Path) -> Path:
    """The fixture folder in ``tmp_path`` (reading a file without a split column writes its splits file)."""
    root = tmp_path / "csv"
    shutil.copytree(FIXTURE, root)
    return root


def _names(records: list[ImageRecord]) -> list[str]:
    return [r.image_path.name for r in records]


def _csv(root: Path, text: str, name: str = "a.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def _raises(kind, match, root, split="train", **kwargs):
    with pytest.raises(kind, match=match) as info:
        read_split("csv", root, split, **kwargs)
    return info.value


# ---------------------------------------------------------------- good input
def test_csv_is_a_dataset_with_three_splits():
    assert DATASETS[-1] == "csv" and DATASETS[:3] == ("cuhk-pedes", "icfg-pedes", "rstpreid")
    assert dataset_splits("csv") == ("train", "val", "test")


def test_directory_fixture_every_split():
    """annotations.csv: mixed-case header, an extra column, quoted commas, a quoted line break, doubled quotes."""
    train = read_split("csv", FIXTURE, "train")
    assert _names(train) == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    assert train[0] == ImageRecord(FIXTURE.absolute() / "imgs/cam1/0001.jpg", 0,
                                   ("a man in a red jacket, black jeans", "a man wearing a red coat"), "cam1")
    assert train[1].captions == ("a man in red,\nwalking to the left",)
    assert train[2].captions == ('a woman with a "white" bag',)
    assert [r.person_id for r in train] == [0, 0, 1, 1]  # '17' and 'alice'
    val, test = read_split("csv", FIXTURE, "val"), read_split("csv", FIXTURE, "test")
    assert _names(val) == ["0005.jpg", "0006.jpg"] and {r.person_id for r in val} == {2}
    assert _names(test) == ["0007.jpg", "0008.jpg"] and [r.person_id for r in test] == [3, 4]
    # the camera of 0008 is empty on its first row and given on its second
    assert test[1].camera == "cam2" and len(test[1].captions) == 2
    assert not list(FIXTURE.glob("*.splits.json"))  # a split column: nothing written


def test_file_or_folder_give_the_same_records():
    assert read_csv_dataset(FIXTURE) == read_csv_dataset(FIXTURE / "annotations.csv")
    data = read_csv_dataset(str(FIXTURE))
    assert isinstance(data, CsvDataset) and data.path == FIXTURE.absolute() / "annotations.csv"
    assert data.split_source == "column" and data.splits_file is None
    assert list(data.splits) == ["train", "val", "test"]


def test_identities_are_sorted_strings_numbered():
    data = read_csv_dataset(FIXTURE)
    assert data.person_ids == {"17": 0, "alice": 1, "bob": 2, "carol": 3, "dave": 4}


def test_identity_numbers_sort_as_strings(tmp_path):
    rows = [f"{i}.png,{pid},a person,train,\n" for i, pid in enumerate(["10", "9", "Bob", "alice", "  9 "])]
    data = read_csv_dataset(_csv(tmp_path, HEADER + "".join(rows)))
    assert data.person_ids == {"10": 0, "9": 1, "Bob": 2, "alice": 3}  # code-point order; ' 9 ' is '9'
    assert [r.person_id for r in data.splits["train"]] == [0, 1, 2, 3, 1]


def test_jsonl_fixture(tmp_path):
    """Integer and string ids of one person agree, keys in any case, nulls, a blank line, an empty caption dropped."""
    root = _copy(tmp_path)
    data = read_csv_dataset(root / "captions.jsonl")
    assert data.person_ids == {"17": 0, "alice": 1, "bob": 2, "carol": 3, "dave": 4}
    records = {r.image_path.name: r for split in data.splits.values() for r in split}
    assert records["0001.jpg"].captions == ("a man in a red jacket, black jeans", "a man wearing a red coat")
    assert records["0001.jpg"].camera == "cam1" and records["0003.jpg"].camera == "1"
    assert records["0002.jpg"].captions == ("a man in red,\nwalking to the left",)
    assert records["0008.jpg"].captions == ("an old man with a cane", "a grey-haired man holding a walking stick")
    assert data.split_source == "made"


def test_spreadsheet_export_with_bom_and_crlf(tmp_path):
    root = _copy(tmp_path)
    data = read_csv_dataset(root / "excel.csv")
    assert data.person_ids == {"Mr. Émile": 0, "Zoë": 1, "bob": 2, "carol": 3}
    records = [r for split in data.splits.values() for r in split]
    by_name = {r.image_path.name: r for r in records}
    assert by_name["0002.jpg"].captions == ("a man in red,\nwalking to the left",)  # CRLF in the cell: \n
    assert by_name["0001.jpg"].captions == ("a man in a red jacket, black jeans",)
    assert all(r.camera is None for r in records)


def test_jsonl_folder_root(tmp_path):
    root = tmp_path / "team"
    root.mkdir()
    shutil.copy(FIXTURE / "captions.jsonl", root / "annotations.jsonl")
    shutil.copytree(FIXTURE / "imgs", root / "imgs")
    assert read_csv_dataset(root).path == root / "annotations.jsonl"
    assert csv_splits_path(root / "annotations.jsonl").is_file()


def test_empty_captions_dropped_with_a_count(tmp_path, caplog):
    text = HEADER + 'a.png,1,"  a man ",,\na.png,1,,,\na.png,1,"  \n ",,\nb.png,2,\u200b,,\nb.png,2,x,,\n'
    with caplog.at_level(logging.WARNING, logger="tbps_train.data.readers"):
        data = read_csv_dataset(_csv(tmp_path, text))
    assert [r.captions for r in data.splits["train"]] == [("a man",), ("x",)]
    assert "dropped 3 empty captions" in caplog.text


def test_windows_separators_and_dot_segments_group_one_image(tmp_path):
    text = HEADER + "crops\\a.png,1,one,,\n./crops//a.png,1,two,,\ncrops/a.png,1,three,,\n"
    (record,) = read_csv_dataset(_csv(tmp_path, text)).splits["train"]
    assert record.captions == ("one", "two", "three") and record.image_path == tmp_path / "crops" / "a.png"


def test_check_images(tmp_path):
    root = _copy(tmp_path)
    (root / "imgs/cam1/0001.jpg").unlink()
    err = _raises(DataError, r"1 of 4 images are missing under .*csv: imgs/cam1/0001\.jpg; check the image column "
                             r"of annotations\.csv", root)
    assert "imgs/cam1/0003.jpg" not in str(err)
    assert len(read_split("csv", root, "train", check_images=False)) == 4
    assert len(read_split("csv", root, "test")) == 2  # other splits are unaffected


# ---------------------------------------------------------------- splits made by identity
@pytest.mark.parametrize("n, counts", [(0, (0, 0, 0)), (1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)),
                                       (5, (3, 1, 1)), (10, (8, 1, 1)), (25, (19, 3, 3)), (40, (32, 4, 4))])
def test_identity_split_counts(n, counts):
    splits = make_identity_splits([f"p{i}" for i in range(n)])
    assert set(splits) == {f"p{i}" for i in range(n)}
    assert tuple(sum(1 for s in splits.values() if s == name) for name in ("train", "val", "test")) == counts


def test_identity_splits_are_deterministic_and_seeded():
    names = [f"person {i}" for i in range(40)]
    first = make_identity_splits(names)
    assert make_identity_splits(reversed(names + names)) == first  # input order and repeats do not matter
    assert make_identity_splits(names, seed=1) != first
    # sha256("0:<name>") order, computed once by hand with hashlib for these five names
    assert make_identity_splits(["17", "alice", "bob", "carol", "dave"]) == {
        "17": "train", "alice": "train", "bob": "val", "carol": "test", "dave": "train"}


def test_identity_split_fractions():
    splits = make_identity_splits([str(i) for i in range(10)], fractions=(0.5, 0.0, 0.5))
    assert sorted(splits.values()).count("val") == 0 and list(splits.values()).count("test") == 5
    tight = make_identity_splits(["a", "b", "c"], fractions=(0.01, 0.5, 0.49))
    assert sorted(tight.values()) == ["test", "train", "val"]  # one is always left to train on
    for bad in [(0.5, 0.5), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), "0.8,0.1,0.1", (True, 0, 0)]:
        with pytest.raises(ConfigError, match="split fractions"):
            make_identity_splits(["a"], fractions=bad)


def _many(tmp_path: Path, people: int = 12, name: str = "a.csv") -> Path:
    rows = [f"img/{p}_{k}.png,person{p},person {p} view {k},,\n" for p in range(people) for k in range(2)]
    return _csv(tmp_path, HEADER + "".join(rows), name)


def test_splits_made_by_identity_and_recorded(tmp_path):
    path = _many(tmp_path)
    data = read_csv_dataset(path)
    assert data.split_source == "made" and data.splits_file == tmp_path / "a.csv.splits.json"
    by_split = {s: {r.person_id for r in records} for s, records in data.splits.items()}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [10, 1, 1]  # 12 identities: 10/1/1
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    recorded = json.loads(data.splits_file.read_text())
    assert recorded["format"] == "tbps-csv-splits" and recorded["version"] == 1
    assert recorded["annotations"] == "a.csv" and recorded["seed"] == 0
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded["fractions"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert recorded["identities"] == {"train": 10, "val": 1, "test": 1}
    assert recorded["person_ids"] == data.person_ids
    assert recorded["splits"] == make_identity_splits(data.person_ids)
    assert all(data.person_ids[p] in by_split[s] for p, s in recorded["splits"].items())


def test_recorded_splits_are_reused(tmp_path):
    path = _many(tmp_path)
    splits_file = read_csv_dataset(path).splits_file
    recorded = json.loads(splits_file.read_text())
    moved = next(p for p, s in recorded["splits"].items() if s == "train")
    recorded["splits"][moved] = "test"  # an edit by hand is honoured while the annotations are unchanged
    splits_file.write_text(json.dumps(recorded))
    before = splits_file.stat()
    data = read_csv_dataset(path)
    assert data.split_source == "recorded"
    assert data.person_ids[moved] in {r.person_id for r in data.splits["test"]}
    assert len({r.person_id for r in read_split("csv", path, "test", check_images=False)}) == 2
    after = splits_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again


def test_splits_made_again_when_the_annotations_change(tmp_path, caplog):
    path = _many(tmp_path)
    make_csv_splits(path, seed=5, fractions=(0.5, 0.25, 0.25))
    with path.open("a") as stream:
        stream.write("img/new.png,newcomer,a new person,,\n")
    with caplog.at_level(logging.WARNING, logger="tbps_train.data.readers"):
        data = read_csv_dataset(path)
    assert "changed since its splits were made" in caplog.text and data.split_source == "made"
    recorded = json.loads(data.splits_file.read_text())
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recorded["seed"] == 5 and recorded["fractions"] == {"train": 0.5, "val": 0.25, "test": 0.25}
    assert recorded["splits"] == make_identity_splits(data.person_ids, 5, (0.5, 0.25, 0.25))
    assert "newcomer" in recorded["splits"] and recorded["identities"] == {"train": 7, "val": 3, "test": 3}


def test_make_csv_splits_replaces_and_refuses_a_split_column(tmp_path):
    path = _many(tmp_path)
    read_csv_dataset(path)
    assert make_csv_splits(path, seed=3) == csv_splits_path(path)
    assert json.loads(csv_splits_path(path).read_text())["splits"] == make_identity_splits(
        read_csv_dataset(path).person_ids, seed=3)
    with pytest.raises(DataError, match=r"annotations\.csv has a split column \(line 2\)"):
        make_csv_splits(FIXTURE)
    with pytest.raises(ConfigError):
        make_csv_splits(path, fractions=(1, 1, 1))


def test_unwritable_splits_file_warns_and_reads(tmp_path, monkeypatch, caplog):
    path = _many(tmp_path)

    def refuse(*args):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(readers, "write_json_atomic", refuse)
    with caplog.at_level(logging.WARNING, logger="tbps_train.data.readers"):
        first = read_csv_dataset(path)
    assert "cannot record the splits" in caplog.text and not csv_splits_path(path).exists()
    assert read_csv_dataset(path).splits == first.splits  # made again, identically
    with pytest.raises(OutputError, match=r"cannot write .*a\.csv\.splits\.json"):
        make_csv_splits(path)


@pytest.mark.parametrize("content, match", [
    ("{", r"is not readable JSON"),
    ('{"format": "other", "version": 1}', r"is not a version-1 tbps-csv-splits file"),
    ('{"format": "tbps-csv-splits", "version": 1, "sha256": 3, "seed": 0, '
     '"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "splits": {}}', r"'sha256' malformed"),
    ('{"format": "tbps-csv-splits", "version": 1, "sha256": "x", "seed": 0, '
     '"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "splits": {"a": "dev"}}', r"'splits' malformed"),
    ('{"format": "tbps-csv-splits", "version": 1, "sha256": "x", "seed": 0, '
     '"fractions": {"train": 2, "val": 0.1, "test": 0.1}, "splits": {}}', r"'fractions' malformed"),
])
def test_malformed_splits_file(tmp_path, content, match):
    path = _many(tmp_path)
    csv_splits_path(path).write_text(content)
    err = _raises(DataError, match, path, check_images=False)
    assert "a.csv.splits.json" in str(err) and "delete it" in str(err)


def test_splits_file_disagreeing_on_identities(tmp_path):
    path = _many(tmp_path)
    splits_file = read_csv_dataset(path).splits_file
    recorded = json.loads(splits_file.read_text())
    del recorded["splits"]["person3"]
    splits_file.write_text(json.dumps(recorded))
    _raises(DataError, r"a\.csv\.splits\.json and a\.csv disagree on identity 'person3': delete", path)


def test_empty_splits_say_why(tmp_path):
    two = _csv(tmp_path, HEADER + "a.png,1,x,,\nb.png,2,y,,\n")
    _raises(DataError, r"split 'val' of .*a\.csv has no images \(a\.csv holds splits: 'train'\); splits are made "
                       r"by identity: val and test need at least 3 identities", two, "val")
    column = _csv(tmp_path, HEADER + "a.png,1,x,train,\nb.png,2,y,test,\n", "b.csv")
    _raises(DataError, r"split 'val' of .*b\.csv has no images \(b\.csv holds splits: 'train', 'test'\); "
                       r"give some rows the split 'val'", column, "val")
    _raises(DataError, r"unknown split 'dev' for csv: it has 'train', 'val', 'test'", column, "dev")


def test_split_values_any_case_and_identities_shared_between_splits_warn(tmp_path, caplog):
    path = _csv(tmp_path, HEADER + "a.png,1,x, Train ,\nb.png,1,y,TEST,\nc.png,2,z,test,\n")
    with caplog.at_level(logging.WARNING, logger="tbps_train.data.readers"):
        data = read_csv_dataset(path)
    assert [len(data.splits[s]) for s in ("train", "test")] == [1, 2]
    assert "1 identity is in more than one split (e.g. '1')" in caplog.text


# ---------------------------------------------------------------- bad input
def test_missing_root_and_annotation_file(tmp_path):
    _raises(InputFileNotFoundError, r"dataset root .*nowhere does not exist: pass your \.csv or \.jsonl",
            tmp_path / "nowhere")
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "captions.csv").write_text(HEADER)
    _raises(InputFileNotFoundError, r"no annotations\.csv or annotations\.jsonl under .*team; it holds captions\.csv: "
                                    r"pass that file itself", tmp_path / "team")
    (tmp_path / "team" / "annotations.csv").write_text(HEADER)
    (tmp_path / "team" / "annotations.jsonl").write_text("")
    _raises(DataError, r"team holds both annotations\.csv and annotations\.jsonl: keep one", tmp_path / "team")
    (tmp_path / "a.json").write_text("[]")
    _raises(DataError, r"a\.json is not a \.csv or \.jsonl file", tmp_path / "a.json")


@pytest.mark.parametrize("text, match", [
    ("", r"a\.csv is empty: it needs a header line \(image,person_id,caption,split,camera\)"),
    ("\n  \n", r"a\.csv is empty"),
    (HEADER, r"a\.csv has no rows: add one row per \(image, person_id, caption\)"),
    ("image,id,caption\na.png,1,x\n", r"a\.csv: the header \(line 1\) has no 'person_id' column \(it has \['image', "
                                      r"'id', 'caption'\]\)"),
    ("image;person_id;caption\na.png;1;x\n", r"has no 'image', 'person_id', 'caption' column .*separated by ';'"),
    ("a.png,1,a man\n", r"the header \(line 1\) has no .*looks like data: add a header line"),
    ("image,Image,person_id,caption\n", r"the header \(line 1\) has two 'image' columns"),
    (HEADER + "a.png,1,a man in red, tall,train,cam1\n",
     r"a\.csv: line 2 has 6 fields, the header has 5: quote a caption that holds a comma"),
    (HEADER + "a.png,1\n", r"a\.csv: line 2 has no 'caption' value \(2 fields, the header has 5\)"),
    (HEADER + "a.png,1,x\nb.png,2,y,train\n", r"line 2 has none: give every row a split"),
    (HEADER + ",1,a man,,\n", r"a\.csv: line 2: column 'image' is '', expected an image path"),
    (HEADER + "a.png, ,a man,,\n", r"a\.csv: line 2: column 'person_id' is ' ', expected an integer or a name"),
    (HEADER + "a.png,1,a man,dev,\n", r"line 2: column 'split' is 'dev', expected one of 'train', 'val', 'test'"),
    (HEADER + "a.png,1,x,,\nb.png,1,y,,\na.png,2,z,,\n",
     r"lines 2 and 4 give image 'a\.png' two person_id values \('1' and '2'\)"),
    (HEADER + "a.png,1,x,train,\na.png,1,z,test,\n", r"lines 2 and 3 give image 'a\.png' two split values"),
    (HEADER + "a.png,1,x,,cam1\na.png,1,z,,cam2\n",
     r"lines 2 and 3 give image 'a\.png' two cameras \('cam1' and 'cam2'\)"),
    (HEADER + "b.png,1,fine,,\na.png,1, ,,\na.png,1,,,\n", r"line 3: image 'a\.png' has no non-empty caption"),
    (HEADER + 'a.png,1,"a man\n', r"a\.csv: line 2 is not valid CSV \(unexpected end of data\); quote fields"),
    (HEADER + 'a.png,1,"a" man,,\n', r"line 2 is not valid CSV .*doubling quotes"),
    (HEADER + "a.png,1,x,,\n\nb.png,2,y\r,,\n", r"line 4 is not valid CSV"),
])
def test_bad_csv_names_file_line_and_column(tmp_path, text, match):
    _raises(DataError, match, _csv(tmp_path, text))


@pytest.mark.parametrize("image", ["/etc/passwd", "../outside.png", "crops/../../x.png", "C:\\crops\\a.png",
                                   "a\x00.png"])
def test_image_paths_outside_the_folder_are_refused(tmp_path, image):
    path = _csv(tmp_path, HEADER + "ok.png,1,fine,,\n" + f'"{image}",2,a man,,\n')
    _raises(UnsafePathError, r"a\.csv: line 3: column 'image' is .*no absolute path, no '\.\.'", path)


@pytest.mark.parametrize("line, match", [
    ('{"image": "a.png", "person_id": 1,', r"line 2 is not valid JSON \(Expecting property name .* at column 35\)"),
    ('["a.png", 1, "x"]', r"line 2 is a JSON list, expected an object with image, person_id, caption"),
    ('{"image": "a.png", "person_id": 1}', r"line 2 has no 'caption' key \(it has 'image', 'person_id'\)"),
    ('{"image": "a.png", "Image": "b.png", "person_id": 1, "caption": "x"}', r"line 2 has two 'image' keys"),
    ('{"image": "a.png", "person_id": 1.5, "caption": "x"}',
     r"line 2: column 'person_id' is 1\.5, expected an integer"),
    ('{"image": "a.png", "person_id": true, "caption": "x"}', r"line 2: column 'person_id' is True"),
    ('{"image": "a.png", "person_id": null, "caption": "x"}', r"line 2: column 'person_id' is None"),
    ('{"image": "a.png", "person_id": [1], "caption": "x"}', r"line 2: column 'person_id' is \[1\]"),
    ('{"image": 3, "person_id": 1, "caption": "x"}', r"line 2: column 'image' is 3, expected an image path"),
    ('{"image": "a.png", "person_id": 1, "caption": ["x"]}', r"line 2: column 'caption' is \['x'\], expected text"),
    ('{"image": "a.png", "person_id": 1, "caption": "x", "split": 1}', r"line 2: column 'split' is 1, expected text"),
    ('{"image": "a.png", "person_id": 1, "caption": "x", "camera": {}}',
     r"line 2: column 'camera' is \{\}, expected text"),
    ("[" * 100_000, r"line 2 is not valid JSON"),
], ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_bad_jsonl_names_file_line_and_key(tmp_path, line, match):
    first = '{"image": "ok.png", "person_id": "ok", "caption": "fine"}\n'
    _raises(DataError, r"a\.jsonl: " + match, _csv(tmp_path, first + line + "\n", "a.jsonl"))


def test_not_utf8(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(HEADER.encode() + b"a.png,1,caf\xe9,,\n")
    _raises(DataError, r"a\.csv: line 2 is not UTF-8 \(byte 0xe9, the line's byte 12\): save the file as UTF-8", path)
    path.write_bytes("\ufeff".encode("utf-16-le") + HEADER.encode("utf-16-le"))
    _raises(DataError, r"a\.csv is UTF-16 text: save it as UTF-8", path)


def test_too_many_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_CSV_ROWS", 3)
    rows = "".join(f"{i}.png,{i},x,,\n" for i in range(3))
    read_csv_dataset(_csv(tmp_path, HEADER + "\n" + rows))  # 3 rows (a blank line is not one)
    _raises(DataError, r"a\.csv: more than 3 rows \(line 5\): split the data",
            _csv(tmp_path, HEADER + rows + "9.png,9,x,,\n"))
    jsonl = "".join(json.dumps({"image": f"{i}.png", "person_id": i, "caption": "x"}) + "\n" for i in range(4))
    _raises(DataError, r"a\.jsonl: more than 3 rows \(line 4\)", _csv(tmp_path, jsonl, "a.jsonl"))


def test_field_too_large(tmp_path):
    path = _csv(tmp_path, HEADER + f'a.png,1,"{"x" * 200_000}",,\n')
    _raises(DataError, r"a\.csv: line 2 is not valid CSV \(field larger than field limit", path)


# ---------------------------------------------------------------- fuzzing
_COLUMNS = ("image", "person_id", "caption", "split", "camera")
_cell = st.sampled_from(["a.png", "sub/b.jpg", "missing.png", "/abs.png", "../out.png", "sub\\b.jpg", "1", "alice",
                         "train", "val", "test", "Train", "dev", "", " ", "cam1", "a man, tall", "\u200b"]) \
    | st.text(max_size=6)
_quote = st.sampled_from(['"', "'", ",", "\n", "\r\n", "\r", ";", "\t", '""', "\x00", "\ufeff"])
_line = st.lists(_cell | _quote, max_size=7).map(",".join)


def _csv_line(fields) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


def _valid_row(width: int):
    return st.tuples(
        st.sampled_from(["a.png", "sub/b.jpg", "./a.png", "sub\\b.jpg", "missing.png"]),
        st.sampled_from(["1", "alice", "2", "bob", " 3 ", "4", "carol"]),
        st.sampled_from(["a man, tall", "two\nlines", 'a "red" coat', "", " ", "a woman"]) | st.text(max_size=8),
        st.sampled_from(["train", "val", "test", "TEST", ""]),
        st.sampled_from(["cam1", "cam2", ""]),
    ).map(lambda fields: _csv_line(fields[:width]))


@st.composite
def _csv_text(draw) -> str:
    """A header of 3-5 known columns (any case, maybe an extra one), rows mostly well-formed, some broken."""
    width = draw(st.sampled_from([3, 4, 5]))
    names = [draw(st.sampled_from([n, n.upper(), f" {n.title()} "])) for n in _COLUMNS[:width]]
    header = ",".join(names + (["notes"] if draw(st.booleans()) else []))
    header = draw(st.sampled_from([header] * 4 + ["image,caption", ""]))
    rows = draw(st.lists(_valid_row(width) | _valid_row(width) | _line, max_size=8))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return draw(st.sampled_from(["", "\ufeff"])) + end.join([header, *rows]) + draw(st.sampled_from(["", end]))


def _fuzz_root(tmp_path: Path) -> Path:
    root = tmp_path / "fuzz"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.png").write_bytes(b"png")
    (root / "sub" / "b.jpg").write_bytes(b"jpg")
    return root


def _records_or_data_error(path: Path, split: str, check_images: bool) -> str | None:
    """Read ``split``: either a DataError (None), or records that keep every promise (where the splits came from)."""
    csv_splits_path(path).unlink(missing_ok=True)
    try:
        data = read_csv_dataset(path)
        records = read_split("csv", path, split, check_images=check_images)
    except DataError:
        return None
    assert records and all(isinstance(r, ImageRecord) for r in records)
    assert all(r.captions and all(c and c == c.strip() for c in r.captions) for r in records)
    assert len({r.image_path for r in records}) == len(records)  # one record per image
    assert all(path.parent in r.image_path.parents for r in records)
    assert {r.person_id for r in records} <= set(range(len(data.person_ids)))
    if check_images:
        assert all(r.image_path.is_file() for r in records)
    if data.split_source != "column":  # splits made by identity: nobody in two of them
        people = [{r.person_id for r in group} for group in data.splits.values()]
        assert sum(map(len, people)) == len(set().union(*people))
    return data.split_source


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_csv_text(), split=st.sampled_from(["train", "val", "test"]), check_images=st.booleans())
def test_fuzzed_csv_text_gives_records_or_data_error(tmp_path, text, split, check_images):
    path = _fuzz_root(tmp_path) / "a.csv"
    path.write_text(text, encoding="utf-8")
    _records_or_data_error(path, split, check_images)


def test_fuzzed_csv_text_often_gives_records(tmp_path):
    """The generator above reaches the reader's good paths, not only its errors."""
    from random import Random

    from hypothesis import Phase, find

    path = _fuzz_root(tmp_path) / "a.csv"

    def reads(source: str):
        def condition(text: str) -> bool:
            path.write_text(text, encoding="utf-8")
            return _records_or_data_error(path, "train", False) == source
        return condition
    for source in ("made", "column"):
        # Seeded: an unseeded search missed now and then (NoSuchExample in 1 of ~20 runs).
        find(_csv_text(), reads(source), settings=settings(max_examples=500, database=None, phases=[Phase.generate]),
             random=Random(0))


_json_value = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _cell
               | st.lists(_cell, max_size=2))
_object = st.dictionaries(st.sampled_from(["image", "IMAGE", "person_id", "caption", "split", "camera", "x"]),
                          _json_value, max_size=6)
_good_object = st.fixed_dictionaries(
    {"image": st.sampled_from(["a.png", "sub/b.jpg"]), "person_id": st.sampled_from([1, "1", "alice", 2, 3]),
     "caption": st.text(max_size=8)},
    optional={"camera": st.sampled_from(["cam1", 3, None]), "split": st.sampled_from(["train", "test", None])})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists((_object | _good_object | _good_object).map(json.dumps) | _line, max_size=6),
       split=st.sampled_from(["train", "val", "test"]))
def test_fuzzed_jsonl_gives_records_or_data_error(tmp_path, lines, split):
    path = _fuzz_root(tmp_path) / "a.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    _records_or_data_error(path, split, False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=60) | _csv_text().map(lambda t: t.encode("utf-8")))
def test_fuzzed_bytes_give_records_or_data_error(tmp_path, content):
    path = _fuzz_root(tmp_path) / "a.csv"
    path.write_bytes(content)
    _records_or_data_error(path, "train", True)


# ---------------------------------------------------------------- tbps train / eval / ablate
def _run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, synth_root):
    """``synth_root`` as a team's CSV: names for ids, images through a link to its imgs/; one file with a split
    column (synth's own splits) and one without."""
    root = tmp_path_factory.mktemp("own")
    (root / "imgs").symlink_to(Path(synth_root) / "imgs", target_is_directory=True)
    rows = [(r.image_path.relative_to(synth_root).as_posix(), f"person {r.person_id}", caption, split)
            for split in ("train", "val", "test") for r in read_split("cuhk-pedes", synth_root, split)
            for caption in r.captions]
    for name, with_split in (("with_split.csv", True), ("no_split.csv", False)):
        with open(root / name, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["image", "person_id", "caption"] + (["split"] if with_split else []))
            writer.writerows(row if with_split else row[:3] for row in rows)
    return root


def test_own_csv_matches_the_benchmark_reader(own_data, synth_root):
    for split in ("train", "val", "test"):
        ours = read_split("csv", own_data / "with_split.csv", split)
        theirs = read_split("cuhk-pedes", synth_root, split)
        assert [r.captions for r in ours] == [r.captions for r in theirs]
        assert [r.image_path.name for r in ours] == [r.image_path.name for r in theirs]
        assert len({r.person_id for r in ours}) == len({r.person_id for r in theirs})


def test_train_and_eval_on_own_csv(own_data, tmp_path):
    from tbps_train.checkpoint import load_checkpoint
    from tbps_train.cli import eval_command, train_command

    data = own_data / "no_split.csv"
    checkpoint = tmp_path / "m.pt"
    result = _run(train_command, ["--dataset", "csv", "--root", data, "-o", checkpoint, "--preset", "tiny",
                                  "--epochs", 1, "--threads", 1, "--quiet"])
    assert result.exit_code == 0, result.output
    splits_file = csv_splits_path(data)
    made = splits_file.stat()
    recorded = json.loads(splits_file.read_text())
    assert recorded["identities"] == {"train": 32, "val": 4, "test": 4}  # 40 identities
    assert load_checkpoint(checkpoint)["num_identities"] == 32  # trained on the made train split
    result = _run(eval_command, ["--ckpt", checkpoint, "--dataset", "csv", "--root", data, "--json", "--threads", 1])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"r1", "r5", "r10", "map", "minp"} and all(0 <= v <= 100 for v in metrics.values())
    assert (splits_file.stat().st_ino, splits_file.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)  # reused
    assert read_csv_dataset(data).split_source == "recorded"
    result = _run(eval_command, ["--ckpt", checkpoint, "--dataset", "csv", "--root", own_data / "with_split.csv",
                                 "--split", "val", "--threads", 1])
    assert result.exit_code == 0 and "csv val: R@1" in result.stdout, result.output
    assert not csv_splits_path(own_data / "with_split.csv").exists()


def test_commands_take_csv_and_report_its_errors(tmp_path):
    from cli_assertions import assert_user_error
    from tbps_train.cli import ablate_command, eval_command, train_command

    nowhere = tmp_path / "nowhere.csv"
    assert_user_error(_run(ablate_command, ["--dataset", "csv", "--root", nowhere, "--preset", "tiny",
                                            "--out-dir", tmp_path / "abl", "--quiet"]), "does not exist")
    bad = _csv(tmp_path, HEADER + "a.png,1,a man, tall,train,\n")
    assert_user_error(_run(train_command, ["--dataset", "csv", "--root", bad, "-o", tmp_path / "m.pt", "--preset",
                                           "tiny", "--quiet"]), "line 2 has 6 fields")
    assert not (tmp_path / "m.pt").exists()
    assert_user_error(_run(eval_command, ["--ckpt", tmp_path / "m.pt", "--dataset", "csv", "--root", bad]),
                      "not found")
    assert "your own captions" in _run(train_command, ["--help"]).output


def test_a_csv_without_val_rows_trains_without_validation(tmp_path):
    """A split column with only train and test rows: has_split says so, and training skips validation."""
    from tbps_train.data.readers import has_split

    (tmp_path / "a.csv").write_text("image,person_id,caption,split\nx.jpg,1,a man,train\ny.jpg,2,a woman,test\n")
    assert has_split("csv", tmp_path / "a.csv", "train") and not has_split("csv", tmp_path / "a.csv", "val")
    assert has_split("cuhk-pedes", tmp_path, "val") and not has_split("icfg-pedes", tmp_path, "val")
