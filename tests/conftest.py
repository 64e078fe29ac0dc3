"""Shared fixtures: a tiny model; a tiny trained checkpoint, its exported bundle and that bundle's
int8 version, each built once per session (once for all xdist workers: see ``built_once``); the
hand-built fake bundle of tests/runtime_fakes.py.

The session bundles are shared by every module that reads them: a test that writes into a
bundle directory copies it to its own ``tmp_path`` first (``shutil.copytree``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once for the whole test session, its returned path shared by every
    xdist worker: the first worker to ask builds under a lock, the others wait and reuse it.

    Each worker building its own copy doubled the suite's heaviest fixtures (training, export,
    quantization) on a 2-core machine. The folder lies in the session's base directory, so no
    build outlives its session."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / "built-once"
    shared.mkdir(exist_ok=True)
    done = shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            done.write_text(str(build(folder)))  # after the build: a failed build is retried, not reused
    return Path(done.read_text())


@pytest.fixture(scope="session")
def tiny_text_backbone():
    from tbps_train.text import load_text_backbone

    return load_text_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    """The hand-built bundle of tests/runtime_fakes.py (colour-coded towers), one per test module:
    not an export of any checkpoint (``exported_bundle`` is one)."""
    from runtime_fakes import make_fake_bundle

    return make_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


@pytest.fixture()
def fake_gpu(monkeypatch):
    """``fake_gpu(**machine)`` installs the stand-in tensorrt and cuda-python modules of
    tests/runtime_fakes.py for one test; returns their record (``engines``, ``devices``)."""
    from runtime_fakes import fake_gpu_modules

    def install(**machine):
        modules, record = fake_gpu_modules(**machine)
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        return record
    return install


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset: 40 identities x 3 images (train 24 / val 6 / test 10 ids)."""
    from tbps_runtime.synth.dataset import generate

    return built_once(tmp_path_factory, "synth",
                      lambda folder: generate(folder / "data", ids=40, images_per_id=3, seed=0, progress=False))


@pytest.fixture(scope="session")
def easy_root(tmp_path_factory):
    """An easier synthetic dataset (no clutter, long captions) with a large test split,
    for the test that training learns: 60 identities x 3 images, 24 test identities."""
    from tbps_runtime.synth.dataset import generate
    from tbps_runtime.synth.people import SynthConfig

    easy = SynthConfig(clutter=0.0, pose_jitter=0.3, light_jitter=0.3, noise=0.0, parts_per_caption=(5, 8))
    return built_once(tmp_path_factory, "easy",
                      lambda folder: generate(folder / "data", ids=60, images_per_id=3, seed=0,
                                              splits=(0.5, 0.1, 0.4), config=easy, progress=False))


@pytest.fixture(scope="session")
def tiny_config():
    from tbps_train.config import apply_overrides, load_preset

    return apply_overrides(load_preset("tiny"), "train", epochs=8)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synth_root, tiny_config):
    """A tiny model trained on ``synth_root``: the input of the export and runtime tests."""
    from tbps_train.train import train

    def build(folder: Path) -> Path:
        train(tiny_config, "cuhk-pedes", synth_root, folder / "m.pt", progress=False, threads=1)  # pinned: any load
        return folder / "m.pt"
    return built_once(tmp_path_factory, "ckpt", build)


@pytest.fixture(scope="session")
def learned_checkpoint(tmp_path_factory, easy_root, tiny_config):
    """The tiny model with the real (frozen) MiniLM text backbone, 30 short epochs on ``easy_root``:
    small, but trained enough that its test split ranks well above chance."""
    from tbps_train.config import apply_overrides
    from tbps_train.train import train

    config = apply_overrides(apply_overrides(tiny_config, "model", text_backbone="minilm"), "train", epochs=30)
    def build(folder: Path) -> Path:
        train(config, "cuhk-pedes", easy_root, folder / "m.pt", progress=False, threads=1)  # pinned: any load
        return folder / "m.pt"
    return built_once(tmp_path_factory, "learned", build)


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, tiny_checkpoint):
    """``tiny_checkpoint`` exported once, with the explain graphs (``explain=True``), to ``.../m.bundle``.
    Read-only: copy it before writing into it."""
    from tbps_export import export_bundle

    return built_once(tmp_path_factory, "export",
                      lambda folder: export_bundle(tiny_checkpoint, folder / "m.bundle", explain=True))


@pytest.fixture(scope="session")
def calibration_crops(synth_root):
    """24 training crops of ``synth_root``: the int8 image tower's calibration images."""
    from tbps_train.data.readers import read_split

    return [r.image_path for r in read_split("cuhk-pedes", synth_root, "train")][:24]


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, exported_bundle, calibration_crops):
    """``exported_bundle`` quantized (int8 text and image towers), beside it as ``m.int8.bundle``. Read-only."""
    from tbps_export.quantize import quantize_bundle

    return built_once(tmp_path_factory, "int8", lambda _: quantize_bundle(exported_bundle, calibration=calibration_crops))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One solid-colour crop per colour the fake bundle's towers recognise (modules may define their own)."""
    from runtime_fakes import COLOURS, solid_image

    folder = tmp_path_factory.mktemp("crops")
    for i, colour in enumerate(COLOURS):
        solid_image(folder / f"{i}_{colour}.png", colour)
    return folder


@pytest.fixture(scope="module")
def gallery(fake_bundle, images, tmp_path_factory):
    """Those crops indexed with the fake bundle: g.npy + g.json."""
    from cli_assertions import index

    output = tmp_path_factory.mktemp("gallery") / "g.npy"
    index(fake_bundle, images, output)
    return output


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs, filled but for ``room`` bytes by ``fill(room)``; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")

    def fill(room: int) -> Path:
        with open(mount / "filler", "wb") as stream:
            while shutil.disk_usage(mount).free > room:
                stream.write(b"\0" * 4096)
                stream.flush()
        return mount
    try:
        yield fill
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


# Session fixtures that take tens of seconds to build, by the chain each starts (see built_once).
_TINY_CHAIN = frozenset({"tiny_checkpoint", "exported_bundle", "int8_bundle"})
_LEARNED = frozenset({"learned_checkpoint"})


def pytest_collection_modifyitems(session, config, items):
    """Order whole modules so that two xdist workers build the two slow fixture chains at once, each
    while the other one runs its own tests, instead of one waiting on the other's lock.

    xdist's work-stealing scheduler gives each worker one contiguous half of the list to start with:
    the modules that need the tiny model's chain (training, export, int8) go first, those that need
    the learned model at the start of the second half, and the modules that need neither fill both
    halves. A module's tests stay together (its module fixtures are built once); the order within a
    module is pytest's."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def needs(name: str, fixtures: frozenset) -> bool:
        return any(fixtures & set(getattr(item, "fixturenames", ())) for item in modules[name])

    learned = [name for name in modules if needs(name, _LEARNED)]
    others = [name for name in modules if name not in learned]
    # the tiny chain's modules first (sorted is stable), then those that need neither
    others.sort(key=lambda name: not needs(name, _TINY_CHAIN))
    first_half, count = [], 0
    for name in others:  # the first worker's share: about half of all tests
        if count >= len(items) // 2 and not needs(name, _TINY_CHAIN):
            break
        first_half.append(name)
        count += len(modules[name])
    order = first_half + learned + others[len(first_half):]
    items[:] = [item for name in order for item in modules[name]]


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than this process may use cores. Much of the suite waits (servers,
    subprocesses, streams that stall on purpose); on 2 cores, 3 workers ran it in 381 s, 2 in 433 s
    and 4 in 409 s (docs/development.md)."""
    return len(os.sched_getaffinity(0)) + 1
