"""Sharded galleries: tbps-index --shard I/N, a directory of shards ranked as one gallery, the shard
checks (bundle, image list, missing/duplicate shards), and the merge of per-shard top k."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from runtime_fakes import COLOURS, make_fake_bundle, solid_image, write_bad

from cli_assertions import SAMPLE_QUERIES, assert_user_error, index, rank_json, run
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.contract import shard_bounds
from tbps_runtime.errors import ConfigError
from tbps_runtime.gallery.npy import sidecar_path
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.gallery.shards import ShardedGallery, parse_shard
from tbps_runtime.ranking import top_k, top_k_parts
from tbps_runtime.search import PersonSearch

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 images (11 readable): every colour, duplicates (exact ties), two shades, one corrupt file."""
    folder = tmp_path_factory.mktemp("imgs")
    for i, colour in enumerate(list(COLOURS) + ["red", "blue", "red"]):
        solid_image(folder / f"{i:02d}_{colour}.png", colour)
    Image.new("RGB", (10, 20), (200, 30, 30)).save(folder / "09_darkred.png")
    Image.new("RGB", (10, 20), (30, 30, 200)).save(folder / "10_darkblue.png")
    shutil.move(write_bad(folder, "corrupt"), folder / "05b_corrupt.jpg")
    (folder / "good.jpg").unlink()
    return folder


@pytest.fixture(scope="module")
def single(fake_bundle, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "g.npy"
    index(fake_bundle, images, output)
    return output


@pytest.fixture(scope="module")
def shards(fake_bundle, images, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sharded") / "gallery"
    for i in range(3):
        index(fake_bundle, images, f"{directory}/", "--shard", f"{i}/3", "--batch-size", 2)
    return directory


def test_shards_are_array_split_blocks_recorded_in_their_sidecars(shards, single):
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-{i}-of-3.{ext}" for i in range(3)
                                                       for ext in ("json", "npy")]
    whole = load_gallery(single)
    paths = [e.path for e in whole.entries] + [u["path"] for u in whole.unreadable]
    records = [json.loads((shards / f"shard-{i}-of-3.json").read_text())["shard"] for i in range(3)]
    assert [(r["index"], r["count"], r["total"], r["start"]) for r in records] == [(0, 3, 12, 0), (1, 3, 12, 4),
                                                                                  (2, 3, 12, 8)]
    assert len({r["list_hash"] for r in records}) == 1
    blocks = [load_gallery(shards / f"shard-{i}-of-3.npy") for i in range(3)]
    assert [len(b) + len(b.unreadable) for b in blocks] == [4, 4, 4]  # np.array_split of 12 into 3
    assert [u["path"].rsplit("/", 1)[1] for u in blocks[1].unreadable] == ["05b_corrupt.jpg"]
    assert [e.path for b in blocks for e in b.entries] == [e.path for e in whole.entries]  # in order
    assert len(paths) == 12


def test_a_shard_directory_is_the_unsharded_gallery(shards, single):
    whole, sharded = load_gallery(single), load_gallery(shards)
    assert isinstance(sharded, ShardedGallery) and len(sharded.shards) == 3
    assert all(isinstance(part, np.memmap) for part in sharded.parts if len(part))  # nothing concatenated
    assert sharded.entries == whole.entries and sharded.unreadable == whole.unreadable
    np.testing.assert_allclose(sharded.to_array(), whole.embeddings, atol=1e-6)
    for k in (1, 3, 100):
        expected, _ = rank_json(single, "-k", k)
        got, log = rank_json(shards, "-k", k)
        assert [[m["path"] for m in q] for q in got] == [[m["path"] for m in q] for q in expected]
        np.testing.assert_allclose([[m["score"] for m in q] for q in got],
                                   [[m["score"] for m in q] for q in expected], atol=1e-5)
    assert "exact Eq. 14 over 11 row(s) in 3 shards" in log
    # The API: the same global rows, and ties (the duplicate reds) in gallery order.
    search = PersonSearch.from_bundle(load_gallery(single).bundle, threads=1)
    for a, b in zip(search.rank(SAMPLE_QUERIES, whole, k=10), search.rank(SAMPLE_QUERIES, str(shards), k=10)):
        assert [(m.row, m.path) for m in a] == [(m.row, m.path) for m in b]
    reds = [m.row for m in search.rank("red", sharded, k=3)[0]]
    assert reds == sorted(reds)  # three identical red crops: lower global row first


def test_user_named_shard_files_and_an_empty_shard(fake_bundle, images, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for colour in ("red", "blue"):
        solid_image(small / f"{colour}.png", colour)
    (tmp_path / "parts").mkdir()
    index(fake_bundle, small, tmp_path / "parts" / "b.npy", "--shard", "1/3")
    index(fake_bundle, small, tmp_path / "parts" / "a.npy", "--shard", "0/3")
    index(fake_bundle, small, tmp_path / "parts" / "c.npy", "--shard", "2/3")  # 2 images in 3 shards: empty
    assert len(load_gallery(tmp_path / "parts" / "c.npy")) == 0
    sharded = load_gallery(tmp_path / "parts")
    assert [e.path.rsplit("/", 1)[1] for e in sharded.entries] == ["blue.png", "red.png"]
    got, _ = rank_json(tmp_path / "parts", "-k", 5)
    assert got[0][0]["path"].endswith("red.png") and len(got[0]) == 2


def test_a_shard_of_only_unreadable_images_is_still_written(fake_bundle, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.move(write_bad(tmp_path, "truncated"), folder / "a_truncated.jpg")
    solid_image(folder / "b_red.png", "red")
    index(fake_bundle, folder, f"{tmp_path}/out/", "--shard", "0/2")  # its one image is unreadable: 0 rows
    index(fake_bundle, folder, f"{tmp_path}/out/", "--shard", "1/2")
    empty = load_gallery(tmp_path / "out" / "shard-0-of-2.npy")
    assert len(empty) == 0 and [u["path"] for u in empty.unreadable] == [str(folder / "a_truncated.jpg")]
    whole = load_gallery(tmp_path / "out")
    assert [e.path for e in whole.entries] == [str(folder / "b_red.png")] and len(whole.unreadable) == 1
    strict = run(index_command, ["--bundle", fake_bundle, "--images", folder, "-o", f"{tmp_path}/strict/",
                                 "--shard", "0/2", "--strict", "--quiet"])
    assert_user_error(strict, "a_truncated.jpg", "--strict")
    assert not list((tmp_path / "strict").iterdir())


def test_an_interrupted_shard_resumes(fake_bundle, images, tmp_path, monkeypatch):
    from tbps_runtime.model.backends import OnnxRuntimeBackend

    real_run, calls = OnnxRuntimeBackend.run, []

    def interrupted_run(self, tower, feeds):
        calls.append(tower.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self, tower, feeds)

    args = ["--bundle", fake_bundle, "--images", images, "-o", f"{tmp_path}/", "--shard", "0/2", "--batch-size", 1]
    monkeypatch.setattr(OnnxRuntimeBackend, "run", interrupted_run)
    assert run(index_command, args).exit_code == 130
    assert not (tmp_path / "shard-0-of-2.npy").exists() and (tmp_path / ".shard-0-of-2.npy.partial.npy").exists()
    monkeypatch.setattr(OnnxRuntimeBackend, "run", real_run)
    resumed = run(index_command, args)
    assert resumed.exit_code == 0 and "2 of 6 images were already embedded" in resumed.stderr
    fresh = run(index_command, args[:5] + [tmp_path / "fresh.npy"] + args[6:])
    assert fresh.exit_code == 0, fresh.output
    np.testing.assert_array_equal(load_gallery(tmp_path / "shard-0-of-2.npy").embeddings,
                                  load_gallery(tmp_path / "fresh.npy").embeddings)


# --- bad shard arguments and directories: one line, status 2 ------------------------------------------


@pytest.mark.parametrize("spec, fragment", [
    ("1-3", "--shard takes I/N"), ("a/b", "--shard takes I/N"), ("3/3", "must be 0..2"), ("0/0", "at least 1"),
    ("-1/3", "--shard takes I/N"),
])
def test_bad_shard_specs(fake_bundle, images, tmp_path, spec, fragment):
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", f"{tmp_path}/", "--shard", spec])
    assert_user_error(result, fragment)
    assert not list(tmp_path.iterdir())


def test_parse_shard_and_bounds():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 2 / 5 ") == (2, 5)
    with pytest.raises(ConfigError, match="counted from 0"):
        parse_shard("5")
    for total in range(0, 12):
        for count in range(1, 6):
            expected = [(int(b[0]), int(b[-1]) + 1) if len(b) else None
                        for b in np.array_split(np.arange(total), count)]
            got = [shard_bounds(total, i, count) for i in range(count)]
            assert [g if g[0] < g[1] else None for g in got] == expected


def test_a_directory_output_needs_shard(fake_bundle, images, tmp_path):
    assert_user_error(run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path]),
                      "is a directory", "--shard")
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "gallery",
                                 "--shard", "0/2"])
    assert_user_error(result, "gallery/ (trailing slash)")
    assert not list(tmp_path.iterdir())


def copy_shards(shards, tmp_path, keep=(0, 1, 2)):
    target = tmp_path / "copy"
    target.mkdir()
    for i in keep:
        for ext in ("npy", "json"):
            shutil.copy(shards / f"shard-{i}-of-3.{ext}", target / f"shard-{i}-of-3.{ext}")
    return target


def rank_error(gallery, *extra):
    return run(rank_command, ["--gallery", gallery, "--query", "red", *extra])


def test_a_missing_shard_is_named(shards, tmp_path):
    assert_user_error(rank_error(copy_shards(shards, tmp_path, keep=(0, 2))), "lacks shard 1 of 3",
                      "has 0, 2", "--shard 1/3")


def test_a_duplicate_shard(shards, tmp_path):
    target = copy_shards(shards, tmp_path)
    shutil.copy(target / "shard-0-of-3.npy", target / "again.npy")
    shutil.copy(target / "shard-0-of-3.json", target / "again.json")
    assert_user_error(rank_error(target), "shard 0 of 3 appears twice", "again.npy")


def test_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(rank_error(tmp_path / "empty"), "holds no shard galleries")


def test_shards_of_another_bundle(fake_bundle, images, shards, tmp_path):
    other = make_fake_bundle(tmp_path / "other", seed=1)
    target = copy_shards(shards, tmp_path, keep=(0, 2))
    index(other, images, f"{target}/", "--shard", "1/3")
    assert_user_error(rank_error(target), "different bundles", "fingerprint")


def test_shards_of_another_image_list(fake_bundle, images, shards, tmp_path):
    fewer = tmp_path / "fewer"
    shutil.copytree(images, fewer)
    next(fewer.glob("*_white.png")).unlink()
    target = copy_shards(shards, tmp_path, keep=(0, 2))
    index(fake_bundle, fewer, f"{target}/", "--shard", "1/3")
    assert_user_error(rank_error(target), "different image lists", "list of 11 images", "list of 12 images")
    # The same images in another number of shards do not mix either.
    (tmp_path / "x").mkdir()
    target2 = copy_shards(shards, tmp_path / "x", keep=(0, 1))
    index(fake_bundle, images, target2 / "other.npy", "--shard", "2/4")
    assert_user_error(rank_error(target2), "different image lists", "shard 2 of 4")


def test_a_plain_gallery_among_shards(shards, single, tmp_path):
    target = copy_shards(shards, tmp_path)
    shutil.copy(single, target / "g.npy")
    shutil.copy(sidecar_path(single), target / "g.json")
    assert_user_error(rank_error(target), "g.npy", "is not a shard")


def test_a_sharded_gallery_with_another_bundle(shards, tmp_path):
    other = make_fake_bundle(tmp_path / "other", seed=1)
    assert_user_error(rank_error(shards, "--bundle", other), "sharded gallery", "fingerprint", "re-index")


# --- the merge itself: per-block top k == top k of the whole ------------------------------------------


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(0, 40), cuts=st.lists(st.integers(0, 40), max_size=5), queries=st.integers(1, 4),
       k=st.integers(1, 45), chunk=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_top_k_parts_equals_top_k_of_the_concatenation(rows, cuts, queries, k, chunk, seed):
    rng = np.random.default_rng(seed)
    # Small integers with ±1 query slots of d = 4 (normalised to ±0.5): every score is exact in float32,
    # whatever the summation order, so ties are real ties and must go to the lower global row.
    gallery = rng.integers(-1, 2, size=(rows, 2, 4)).astype(np.float32)
    if rows:
        gallery[rng.integers(0, rows, size=rows // 2)] = gallery[0]  # repeated rows: exact ties
    query = rng.choice([-1.0, 1.0], size=(queries, 2, 4)).astype(np.float32)
    bounds = sorted({min(c, rows) for c in cuts})
    parts = np.split(gallery, bounds)  # empty blocks included when cuts repeat 0 or rows
    expected = top_k(query, gallery, k, chunk_rows=chunk) if rows else None
    scores, indices = top_k_parts(query, parts, k, chunk_rows=chunk)
    if expected is None:
        assert scores.shape == indices.shape == (queries, 0)
        return
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(scores, expected[0])
    order = np.lexsort((indices, -scores), axis=1)  # already score desc, row asc
    np.testing.assert_array_equal(order, np.broadcast_to(np.arange(indices.shape[1]), order.shape))
