"""tbps-index --faiss / tbps-rank with a FAISS index: a Flat index ranks exactly as the exact path
(single and sharded galleries), the sidecar records it, --exact ignores it, and every misuse is one
`error:` line with status 2."""

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import COLOURS, solid_image

from cli_assertions import assert_user_error, index, rank_json, run
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.gallery.npy import sidecar_path

pytest.importorskip("faiss")

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Every colour in two shades (no near-ties: FAISS and numpy round scores differently)."""
    folder = tmp_path_factory.mktemp("imgs")
    for i, colour in enumerate(COLOURS):
        solid_image(folder / f"{i:02d}_{colour}.png", colour)
        shade = tuple(int(c * 0.6 + 40) for c in COLOURS[colour])
        Image.new("RGB", (10, 20), shade).save(folder / f"{i:02d}_{colour}_shade.png")
    return folder


@pytest.fixture(scope="module")
def with_faiss(fake_bundle, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("faiss") / "g.npy"
    index(fake_bundle, images, output, "--faiss", "Flat")
    return output


def same_ranking(got, expected):
    assert [[m["path"] for m in q] for q in got] == [[m["path"] for m in q] for q in expected]
    np.testing.assert_allclose([[m["score"] for m in q] for q in got], [[m["score"] for m in q] for q in expected],
                               atol=1e-4)


def test_flat_index_is_recorded_and_ranks_as_exact(with_faiss):
    assert with_faiss.with_suffix(".faiss").is_file()
    meta = json.loads(sidecar_path(with_faiss).read_text())
    assert meta["faiss"] == {"file": "g.faiss", "spec": "Flat"}
    for k in (1, 4, 100):
        approximate, log = rank_json(with_faiss, "-k", k)
        exact, exact_log = rank_json(with_faiss, "-k", k, "--exact")
        same_ranking(approximate, exact)
        assert "search: FAISS Flat (g.faiss)" in log and "search: exact Eq. 14" in exact_log
    assert len(approximate[0]) == 12


def test_sharded_galleries_have_one_index_per_shard(fake_bundle, images, with_faiss, tmp_path):
    for i in range(3):
        index(fake_bundle, images, f"{tmp_path}/", "--shard", f"{i}/3", "--faiss", "Flat")
    assert sorted(p.name for p in tmp_path.glob("*.faiss")) == [f"shard-{i}-of-3.faiss" for i in range(3)]
    expected, _ = rank_json(with_faiss, "-k", 5, "--exact")
    got, log = rank_json(tmp_path, "-k", 5)
    same_ranking(got, expected)
    assert "search: FAISS Flat (3 shard indexes)" in log
    # Only some shards with an index: exact, with a warning.
    index(fake_bundle, images, tmp_path / "shard-0-of-3.npy", "--shard", "0/3")  # re-indexed without --faiss
    got, log = rank_json(tmp_path, "-k", 5)
    same_ranking(got, expected)
    assert "only 2 of 3 shards have a FAISS index" in log and "search: exact" in log


def test_reindexing_without_faiss_drops_the_record(fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    index(fake_bundle, images, output, "--faiss", "Flat")
    index(fake_bundle, images, output)
    assert "faiss" not in json.loads(sidecar_path(output).read_text())
    assert "search: exact" in rank_json(output, "-k", 1)[1]


def test_ivf_index_and_nprobe(fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    index(fake_bundle, images, output, "--faiss", "IVF2,Flat")
    got, log = rank_json(output, "-k", 3, "--nprobe", 2)  # every list visited: exact
    same_ranking(got, rank_json(output, "-k", 3, "--exact")[0])
    assert "FAISS IVF2,Flat" in log


def test_rescore_ranks_as_exact(fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    index(fake_bundle, images, output, "--faiss", "IVF2,Flat")
    got, log = rank_json(output, "-k", 3, "--nprobe", 2, "--rescore", 24)
    same_ranking(got, rank_json(output, "-k", 3, "--exact")[0])
    assert "best 24 rescored exactly" in log


def test_faiss_misuse(fake_bundle, images, with_faiss, tmp_path, monkeypatch):
    plain = tmp_path / "plain.npy"
    index(fake_bundle, images, plain)
    assert_user_error(run(rank_command, ["--gallery", plain, "--query", "red", "--nprobe", 4]),
                      "nprobe applies to a FAISS index", "tbps index --faiss")
    assert_user_error(run(rank_command, ["--gallery", with_faiss, "--query", "red", "--exact", "--nprobe", 4]),
                      "drop --exact")
    assert_user_error(run(rank_command, ["--gallery", plain, "--query", "red", "--rescore", 50]),
                      "rescore applies to a FAISS index")
    assert_user_error(run(rank_command, ["--gallery", with_faiss, "--query", "red", "--nprobe", 4]),
                      "IVF")  # a Flat index has no lists
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(with_faiss, broken / "g.npy")
    shutil.copy(sidecar_path(with_faiss), broken / "g.json")
    assert_user_error(run(rank_command, ["--gallery", broken / "g.npy", "--query", "red"]),
                      "g.faiss, which is missing", "--exact")
    assert run(rank_command, ["--gallery", broken / "g.npy", "--query", "red", "--exact"]).exit_code == 0
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "x.npy", "--faiss",
                                 "NotAnIndex"])
    assert_user_error(result, "NotAnIndex")
    monkeypatch.setitem(sys.modules, "faiss", None)
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "y.npy", "--faiss",
                                 "Flat"])
    assert_user_error(result, "tbps[faiss]")
    assert not (tmp_path / "y.npy").exists()
