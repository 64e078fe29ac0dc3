"""Galleries that move with their folder, and what `tbps index` / `tbps rank` say about what they could not do:
crops a report cannot draw, unreadable images, an empty answer under --min-score, a folder of images given as
--gallery, a file name holding a newline, old command names in messages."""

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import COLOURS, solid_image, write_bad

from cli_assertions import assert_user_error, index, run
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.gallery.npy import sidecar_path
from tbps_runtime.gallery.open import load_gallery

RUNTIME = Path(__file__).resolve().parents[1] / "tbps_runtime"


def quickstart_folder(root: Path, fake_bundle: Path) -> Path:
    """A folder holding a bundle, a crops/ folder and the gallery indexed from them, as the quickstart makes."""
    folder = root / "qs"
    shutil.copytree(fake_bundle, folder / "m.bundle")
    (folder / "crops").mkdir()
    for i, colour in enumerate(COLOURS):
        solid_image(folder / "crops" / f"{i}_{colour}.png", colour)
    result = run(index_command, ["--bundle", folder / "m.bundle", "--images", folder / "crops", "-o",
                                 folder / "g.npy", "--quiet"])
    assert result.exit_code == 0, result.output
    return folder


def html_crops(page: Path) -> list[np.ndarray]:
    """The crops an HTML report embeds, as (H, W, 3) arrays."""
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page.read_text(encoding="utf-8"))
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")) for s in sources]


def test_a_moved_folder_ranks_and_draws_its_crops(fake_bundle, tmp_path):
    folder = quickstart_folder(tmp_path, fake_bundle)
    meta = json.loads(sidecar_path(folder / "g.npy").read_text())
    assert meta["bundle"] == "m.bundle" and meta["entries"][0] == {"path": "crops/0_red.png"}
    moved = tmp_path / "elsewhere" / "qs"
    moved.parent.mkdir()
    folder.rename(moved)
    page = tmp_path / "r.html"
    result = run(rank_command, ["--gallery", moved / "g.npy", "--query", "red", "-k", 2, "--html", page])  # no --bundle
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[2] == str(moved / "crops" / "0_red.png")
    first = html_crops(page)[0]
    assert np.abs(first.reshape(-1, 3).mean(axis=0) - (255, 0, 0)).max() < 2  # the red crop, not a grey box
    assert "report is incomplete" not in result.stderr
    assert load_gallery(moved / "g.npy").bundle == str((moved / "m.bundle").resolve())
    meta["bundle"] = str(moved / "m.bundle")  # a gallery written before: absolute paths, still read as they are
    meta["entries"] = [{"path": str(moved / e["path"])} for e in meta["entries"]]
    sidecar_path(moved / "g.npy").write_text(json.dumps(meta))
    old = load_gallery(moved / "g.npy")
    assert old.entries[0].path == str(moved / "crops" / "0_red.png") and old.bundle == str(moved / "m.bundle")


def test_a_moved_folder_of_shards_ranks_and_draws_its_crops(fake_bundle, tmp_path):
    folder = quickstart_folder(tmp_path, fake_bundle)
    for i in range(2):
        index(folder / "m.bundle", folder / "crops", f"{folder / 'shards'}/", "--shard", f"{i}/2")
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    page = tmp_path / "r.html"
    result = run(rank_command, ["--gallery", moved / "shards", "--query", "red", "-k", 1, "--html", page])
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[2] == str(moved / "crops" / "0_red.png")
    assert np.abs(html_crops(page)[0].reshape(-1, 3).mean(axis=0) - (255, 0, 0)).max() < 2


def test_a_missing_crop_is_one_warning_with_the_count(fake_bundle, tmp_path):
    folder = quickstart_folder(tmp_path, fake_bundle)
    (folder / "crops" / "0_red.png").unlink()
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    result = run(rank_command, ["--gallery", folder / "g.npy", "--query", "red", "--query", "red", "-k", 2,
                                "--show", png, "--html", page])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "report is incomplete" in line]
    assert len(warnings) == 1, result.stderr  # two pictures, two queries: one line
    assert "1 crop(s) could not be read" in warnings[0] and str(folder / "crops" / "0_red.png") in warnings[0]
    assert tuple(html_crops(page)[0][50, 50]) == (200, 200, 200)  # the grey box the warning is about


def test_a_folder_of_images_as_gallery_names_the_index_command(fake_bundle, tmp_path):
    (tmp_path / "crops").mkdir()
    for colour in ("red", "blue"):
        solid_image(tmp_path / "crops" / f"{colour}.png", colour)
    result = run(rank_command, ["--gallery", tmp_path / "crops", "--query", "red", "--bundle", fake_bundle])
    assert_user_error(result, "is a folder of images", f"tbps index --bundle {fake_bundle} --images "
                      f"{tmp_path / 'crops'} -o {tmp_path / 'g.npy'}")


def test_unreadable_images_are_named_with_why(fake_bundle, tmp_path):
    (tmp_path / "crops").mkdir()
    for i in range(7):
        write_bad(tmp_path / "crops", "text").rename(tmp_path / "crops" / f"bad{i}.jpg")
    solid_image(tmp_path / "crops" / "red.png", "red")
    (tmp_path / "crops" / "good.jpg").unlink()  # write_bad's readable sample
    result = run(index_command, ["--bundle", fake_bundle, "--images", tmp_path / "crops", "-o", tmp_path / "g.npy",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "7 of 8 images could not be read" in result.stderr
    named = [line.strip() for line in result.stderr.splitlines() if "bad" in line and ".jpg" in line]
    assert len(named) == 5 and all("cannot identify image file" in line for line in named), result.stderr
    assert str(tmp_path / "crops" / "bad0.jpg") in named[0]
    assert "and 2 more" in result.stderr


@pytest.fixture()
def gallery(fake_bundle, tmp_path):
    crops = tmp_path / "crops"
    crops.mkdir()
    for colour in ("red", "blue"):
        solid_image(crops / f"{colour}.png", colour)
    solid_image(crops / "a\nb.png", "green")
    result = run(index_command, ["--bundle", fake_bundle, "--images", crops, "-o", tmp_path / "g.npy", "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp_path / "g.npy"


def test_an_empty_answer_says_the_best_score_below_the_threshold(gallery, tmp_path):
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    result = run(rank_command, ["--gallery", gallery, "--query", "red", "--min-score", 9, "--show", png,
                                "--html", page])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    why = f"0 hits at >= 9 (given threshold); best score 3 (row 2, {gallery.parent / 'crops' / 'red.png'})"
    assert why in result.stderr
    assert html.escape(why) in page.read_text(encoding="utf-8")
    assert Image.open(png).width >= 12 + 300 + 12 + 420  # room for the note where the crops would be


def test_an_empty_json_answer_keeps_its_shape_and_says_why_on_stderr(gallery):
    result = run(rank_command, ["--gallery", gallery, "--query", "red", "--min-score", "9", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    documents = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert documents == [{"threshold": {"value": 9.0, "source": "given", "stale": False},
                          "empty": [documents[0]["empty"][0]]}]
    assert documents[0]["empty"][0].startswith("0 hits at >= 9 (given threshold); best score 3 (row 2, ")
    kept = run(rank_command, ["--gallery", gallery, "--query", "red", "--min-score", "2", "--json", "-q"])
    assert [m["path"].rsplit("/", 1)[1] for m in json.loads(kept.stdout)] == ["red.png"]


def test_a_newline_in_a_file_name_stays_on_one_line(gallery):
    result = run(rank_command, ["--gallery", gallery, "--query", "green", "-k", 3])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[2].endswith("crops/a\\nb.png")


def test_messages_name_the_subcommands_not_the_old_aliases():
    owned = [RUNTIME / "gallery" / name for name in ("npy.py", "shards.py", "open.py", "records.py", "faiss_index.py")]
    owned += [RUNTIME / "ranking.py", RUNTIME / "search.py", RUNTIME / "cli" / "search.py"]
    owned += sorted((RUNTIME / "report").glob("*.py"))
    old = {path.name: re.findall(r"tbps-(?:index|rank|export)\b", path.read_text()) for path in owned}
    assert not any(old.values()), old
