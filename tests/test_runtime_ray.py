"""tbps-index --ray: the Ray Data actor pool builds the same gallery as the local indexer (local Ray,
2 CPUs, started once for the module), with the same unreadable-image rules; without ray, one message."""

import sys

import numpy as np
import pytest
from runtime_fakes import COLOURS, solid_image, write_bad

from cli_assertions import assert_user_error, run
from tbps_runtime.cli.search import index_command
from tbps_runtime.gallery.open import load_gallery

# Ray Data warns about its own deprecated settings when its context is created: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    for i, colour in enumerate(list(COLOURS) * 2):
        solid_image(folder / f"{i:02d}_{colour}.png", colour)
    for kind in ("corrupt", "truncated"):
        write_bad(folder, kind)  # (also leaves a readable good.jpg)
    return folder


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the module; tbps-index --ray joins it (and leaves it running)."""
    ray = pytest.importorskip("ray")
    # A small object store: CI containers often have a small /dev/shm.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    yield ray
    ray.shutdown()


def test_a_ray_built_gallery_equals_the_local_one(local_ray, fake_bundle, images, tmp_path):
    args = ["--bundle", fake_bundle, "--images", images, "--batch-size", 4, "--quiet"]
    assert run(index_command, args + ["-o", tmp_path / "local.npy"]).exit_code == 0
    result = run(index_command, args + ["-o", tmp_path / "ray.npy", "--ray", "--ray-actors", 2])
    assert result.exit_code == 0, result.output
    local, distributed = load_gallery(tmp_path / "local.npy"), load_gallery(tmp_path / "ray.npy")
    assert len(local) == 13 and [u["path"].rsplit("/", 1)[1] for u in local.unreadable] == ["corrupt.jpg",
                                                                                           "truncated.jpg"]
    assert distributed.entries == local.entries and distributed.unreadable == local.unreadable
    np.testing.assert_allclose(distributed.embeddings, local.embeddings, atol=1e-6)
    assert distributed.fingerprint == local.fingerprint and distributed.bundle == local.bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.json", "local.npy", "ray.json", "ray.npy"]
    # --strict: the first unreadable image is fatal and no gallery is written; as locally, the batches
    # before it stay in the partial index, to resume from.
    strict = run(index_command, args + ["-o", tmp_path / "strict.npy", "--ray", "--strict"])
    assert_user_error(strict, "corrupt.jpg", "--strict", "the 12 image(s) before its batch are kept")
    assert not list(tmp_path.glob("strict*"))
    for path in tmp_path.glob(".strict*"):
        path.unlink()
    # Combined with --shard: Ray embeds that shard's block.
    sharded = run(index_command, args + ["-o", f"{tmp_path}/shards/", "--ray", "--shard", "1/2"])
    assert sharded.exit_code == 0, sharded.output
    shard = load_gallery(tmp_path / "shards" / "shard-1-of-2.npy")
    assert shard.entries == local.entries[len(local) - len(shard):] and shard.shard.start == 8


def test_without_ray_one_message_names_the_extra(fake_bundle, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "g.npy", "--ray"])
    assert_user_error(result, "--ray needs Ray Data", "tbps[ray]")
    assert not list(tmp_path.iterdir())


def test_ray_runs_onnxruntime_only(fake_bundle, images, tmp_path):
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "g.npy", "--ray",
                                 "--backend", "tensorrt"])
    assert_user_error(result, "--ray", "onnxruntime")
