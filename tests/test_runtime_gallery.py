"""The gallery files (g.npy + g.json): round trip, every malformed variant, resumable indexing."""

import json

import numpy as np
import pytest
from runtime_fakes import COLOURS, solid_image, write_bad

from tbps_runtime.climessages import in_flags
from tbps_runtime.contract import IMAGE_TOWER
from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.gallery.npy import Gallery, PartialIndex, sidecar_path, write_gallery
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.gallery.records import GalleryEntry
from tbps_runtime.ranking import normalize_slots
from tbps_runtime.search import PersonSearch


def rows(n, slots=3, dim=4, seed=0):
    return normalize_slots(np.random.default_rng(seed).normal(size=(n, slots, dim)))


def entries(n):
    return [GalleryEntry(f"/img/{i}.jpg", i % 3 if i % 2 else None) for i in range(n)]


@pytest.fixture()
def gallery_path(tmp_path):
    path = tmp_path / "g.npy"
    write_gallery(path, rows(6), entries(6), fingerprint="f" * 64, bundle=tmp_path / "b",
                  unreadable=[{"path": "/img/bad.jpg", "error": "cannot read"}])
    return path


def test_round_trip_is_memory_mapped(gallery_path, tmp_path):
    gallery = load_gallery(gallery_path)
    assert isinstance(gallery.embeddings, np.memmap) and not gallery.embeddings.flags.writeable
    np.testing.assert_array_equal(gallery.embeddings, rows(6))
    assert gallery.entries == entries(6)
    assert gallery.fingerprint == "f" * 64 and gallery.bundle == str((tmp_path / "b").resolve())
    assert gallery.unreadable == [{"path": "/img/bad.jpg", "error": "cannot read"}]
    meta = json.loads(sidecar_path(gallery_path).read_text())
    assert meta["format"] == "tbps-gallery" and meta["version"] == 2
    assert meta["entries"][0] == {"path": "/img/0.jpg"} and meta["entries"][1] == {"path": "/img/1.jpg", "identity": 1}
    assert not load_gallery(gallery_path, mmap=False).embeddings.__class__ is np.memmap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.npy"]  # no temp files left


def test_empty_gallery_loads(tmp_path):
    write_gallery(tmp_path / "g.npy", np.zeros((0, 3, 4), np.float32), [], fingerprint="x")
    assert load_gallery(tmp_path / "g.npy").embeddings.shape == (0, 3, 4)


def corrupt(path, how):
    meta_path = sidecar_path(path)
    meta = json.loads(meta_path.read_text())
    if how == "no-json":
        meta_path.unlink()
    elif how == "json-garbage":
        meta_path.write_text("{not json")
    elif how == "json-format":
        meta_path.write_text(json.dumps({**meta, "format": "something-else"}))
    elif how == "json-version":
        meta_path.write_text(json.dumps({**meta, "version": 99}))
    elif how == "json-fields":
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}))
    elif how == "float64":
        np.save(path, rows(6).astype(np.float64))
    elif how == "flat":
        np.save(path, rows(6).reshape(6, 12))
    elif how == "other-slots":
        np.save(path, rows(6, slots=4, dim=3))
    elif how == "row-count":
        np.save(path, rows(5))
    elif how == "not-npy":
        path.write_bytes(b"hello, not an array")
    elif how == "empty-file":
        path.write_bytes(b"")
    elif how == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("how, message", [
    ("no-json", "has no g.json beside it"), ("json-garbage", "not valid JSON"),
    ("json-format", "not a tbps gallery"), ("json-version", "upgrade tbps"), ("json-fields", "fingerprint"),
    ("float64", "holds float64; a gallery is float32"), ("flat", "has shape (6, 12)"),
    ("other-slots", "has shape (6, 4, 3)"), ("row-count", "has 5 rows but g.json lists 6"),
    ("not-npy", "not a .npy"), ("empty-file", "npy"), ("pickled", "npy"),
])
def test_malformed_galleries_are_refused(gallery_path, how, message):
    corrupt(gallery_path, how)
    with pytest.raises(BundleError) as error:
        load_gallery(gallery_path)
    assert message in str(error.value)
    assert "re-index" in str(error.value) or "upgrade" in str(error.value) or "move it back" in str(error.value)


def test_missing_gallery_and_json_path(tmp_path, gallery_path):
    with pytest.raises(InputFileNotFoundError, match="gallery not found"):
        load_gallery(tmp_path / "nothing.npy")
    with pytest.raises(ConfigError, match=r"\.npy file"):
        load_gallery(sidecar_path(gallery_path))


def test_fingerprint_mismatch_and_non_finite_rows(gallery_path):
    gallery = load_gallery(gallery_path)
    gallery.check_bundle("f" * 64)
    with pytest.raises(BundleError, match="re-index"):
        gallery.check_bundle("0" * 64, "/some/bundle")
    bad = rows(6)
    bad[4, 2, 1] = np.inf
    gallery = Gallery(bad, entries(6), "f" * 64, path=gallery_path)
    with pytest.raises(BundleError, match=r"row 4 \(/img/4.jpg\)"):
        gallery.check_finite(chunk_rows=3)


def test_partial_index_resumes_only_the_same_run(tmp_path):
    output = tmp_path / "g.npy"
    paths = [f"/img/{i}.jpg" for i in range(10)]
    partial = PartialIndex(output, paths, "fp", (3, 4))
    partial.record(4, [0, 1, 3], rows(3), {2: "cannot read"})
    del partial  # "interrupted"
    again = PartialIndex(output, paths, "fp", (3, 4))
    assert again.done == 4 and again.failures == {2: "cannot read"}
    np.testing.assert_array_equal(again.rows[[0, 1, 3]], rows(3))
    assert PartialIndex(output, paths[::-1], "fp", (3, 4)).done == 0  # other images: start over
    assert PartialIndex(output, paths, "fp", (3, 4)).done == 0  # the restart replaced the old progress
    partial = PartialIndex(output, paths, "fp", (3, 4))
    partial.record(10, range(10), rows(10), {})
    assert PartialIndex(output, paths, "other bundle", (3, 4)).done == 0


# --- indexing through the API, with the hand-made bundle -----------------------------------------


@pytest.fixture(scope="module")
def search(fake_bundle):
    return PersonSearch.from_bundle(fake_bundle, threads=1)


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    return [solid_image(folder / f"{i:02d}_{colour}.png", colour)
            for i, colour in enumerate(list(COLOURS) * 3)]  # 18 images


class CountingBackend:
    """Wraps a backend: counts image batches and can raise KeyboardInterrupt at batch ``stop_at``."""

    def __init__(self, inner, stop_at=None):
        self.inner, self.stop_at, self.image_batches = inner, stop_at, 0

    def run(self, tower, feeds):
        if tower is IMAGE_TOWER:
            self.image_batches += 1
            if self.image_batches == self.stop_at:
                raise KeyboardInterrupt
        return self.inner.run(tower, feeds)


def test_interrupted_index_resumes_without_redoing_finished_batches(fake_bundle, images, tmp_path):
    fresh = PersonSearch.from_bundle(fake_bundle, threads=1).index(images, tmp_path / "fresh.npy", batch_size=4)
    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    counting = CountingBackend(search.backend, stop_at=3)
    search.encoder.backend = counting
    output = tmp_path / "g.npy"
    with pytest.raises(KeyboardInterrupt):
        search.index(images, output, batch_size=4)
    assert not output.exists() and not sidecar_path(output).exists()  # nothing half-written
    assert (tmp_path / ".g.npy.partial.npy").exists()
    counting.stop_at, counting.image_batches = None, 0
    resumed = search.index(images, output, batch_size=4)
    assert counting.image_batches == 3  # 18 images in 5 batches of 4; 2 were done before the interruption
    np.testing.assert_array_equal(resumed.embeddings, fresh.embeddings)
    assert resumed.entries == fresh.entries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "fresh.npy", "g.json", "g.npy", "imgs"]


def test_unreadable_images_are_skipped_and_listed(search, images, tmp_path):

    bad = [write_bad(tmp_path, kind) for kind in ("corrupt", "empty", "truncated", "text")]
    missing = tmp_path / "gone.jpg"
    listed = images[:3] + bad[:2] + images[3:5] + bad[2:] + [missing]
    gallery = search.index(listed, tmp_path / "g.npy", identities=list(range(len(listed))), batch_size=3)
    assert [e.path for e in gallery.entries] == [str(p) for p in images[:5]]
    assert [e.identity for e in gallery.entries] == [0, 1, 2, 5, 6]
    assert [u["path"] for u in gallery.unreadable] == [str(p) for p in bad + [missing]]
    assert all(u["error"] for u in gallery.unreadable)
    np.testing.assert_allclose(gallery.embeddings, search.embed_images(images[:5]), atol=1e-6)


def test_strict_index_stops_and_writes_nothing(search, images, tmp_path):

    listed = images[:5] + [write_bad(tmp_path, "truncated")]
    with pytest.raises(DataError, match="truncated.jpg.*strict=True") as refused:
        search.index(listed, tmp_path / "g.npy", batch_size=2, strict=True)
    assert refused.value.code == "index_strict_unreadable" and "--strict" in in_flags(refused.value)
    assert not (tmp_path / "g.npy").exists() and not (tmp_path / "g.json").exists()


def test_index_refuses_bad_arguments(search, images, tmp_path):
    with pytest.raises(ConfigError, match=".npy"):
        search.index(images, tmp_path / "g.bin")
    with pytest.raises(ConfigError, match="does not exist"):
        search.index(images, tmp_path / "nowhere" / "g.npy")
    with pytest.raises(DataError, match="no images"):
        search.index([], tmp_path / "g.npy")
    with pytest.raises(DataError, match="none of the 1 images"):
        search.index([tmp_path / "gone.png"], tmp_path / "g.npy")
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*"))


def test_atomic_path_gives_umask_permissions_and_cleans_up(tmp_path):
    import os
    import stat

    from tbps_runtime.atomic import atomic_path

    target = tmp_path / "g.npy"
    with atomic_path(target, suffix=".tmp.npy") as temp:
        np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=(2, 3))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "other.npy"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy"]
