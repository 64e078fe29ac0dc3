"""What tbps guarantees against silent corruption and data loss (issue 13, first section), case by case.

Every refusal is one ``error:`` line on stderr, exit status 2, no traceback, nothing
half-written and its victim byte-identical. The classes, and the one mechanism each:

- two runs writing the same output: an OS file lock held for the whole run (``tbps_runtime.outputs``);
- ``tbps synth --overwrite``: only a directory holding tbps synth's marker and nothing but its files;
- ``tbps index -o X.npy``: no X.json / X.npy / X.faiss replaced that is not a tbps gallery's (``--force``);
- outputs that are inputs of the same command (``--show`` onto the gallery): refused by one check;
- a full disk: the partial gallery's blocks are checked for and allocated before the memory map is used;
- FAISS searched from many threads: per-call search parameters, the shared index never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from runtime_fakes import COLOURS

from cli_assertions import assert_user_error, index, run
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.errors import OutputError
from tbps_runtime.gallery.npy import write_gallery
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.gallery.records import GalleryEntry
from tbps_runtime.outputs import lock_path, output_lock, reserve
from tbps_runtime.search import PersonSearch

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ----------------------------------------------------------------------------------------

def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) and its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def as_result(process: subprocess.CompletedProcess) -> SimpleNamespace:
    """A finished subprocess in the shape ``assert_user_error`` reads (a click result's)."""
    return SimpleNamespace(exit_code=process.returncode, stderr=process.stderr,
                           output=process.stdout + process.stderr)


def tbps_process(command: str, args: list, prelude: str = "") -> subprocess.CompletedProcess:
    """``tbps COMMAND ARGS`` in a process of its own (a crash there is a failed test, not a dead pytest),
    after running the Python ``prelude``."""
    code = f"{prelude}\nfrom tbps_runtime.cli.search import {command}_command as c; c.main(prog_name='tbps {command}')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def image_list(path: Path, images: list[Path]) -> Path:
    path.write_text("".join(f"{image}\n" for image in images))
    return path


# ---- 1. two runs, one output: the lock ------------------------------------------------------------------

_PAUSED_INDEX = """
import sys, time, pathlib
from tbps_runtime.gallery import npy
from tbps_runtime.cli.search import index_command
ready, go = map(pathlib.Path, sys.argv[1:3])
record = npy.PartialIndex.record
def paused(self, *args, **kwargs):  # after its first batch, the run waits for the test
    record(self, *args, **kwargs)
    if not ready.exists():
        ready.touch()
        deadline = time.time() + 120
        while not go.exists() and time.time() < deadline:
            time.sleep(0.05)
npy.PartialIndex.record = paused
index_command.main(sys.argv[3:], prog_name="tbps index")
"""


def _start_paused_index(tmp_path: Path, args: list) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _PAUSED_INDEX, ready, go, *map(str, args)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        if first.poll() is not None or time.time() > deadline:
            first.kill()
            pytest.fail(f"the first run did not reach its first batch: {first.communicate()}")
        time.sleep(0.05)
    return first, go


@pytest.mark.parametrize("second", ["same images", "other images", "with --faiss", "shard of the same list"])
def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(second, fake_bundle, images, tmp_path):
    crops = sorted(images.glob("*.png"))
    first_list = image_list(tmp_path / "first.txt", crops)
    other_list = image_list(tmp_path / "other.txt", crops[::-1][:4])
    sharded = second.startswith("shard")
    out = tmp_path / "out"
    out.mkdir()
    output = out / "shard-0-of-1.npy" if sharded else out / "g.npy"
    shard = ["--shard", "0/1"] if sharded else []
    first, go = _start_paused_index(tmp_path, ["--bundle", fake_bundle, "--images", first_list, "-o",
                                               f"{out}/" if sharded else output, "--batch-size", 2, "-q", *shard])
    try:
        before = snapshot(out)
        assert lock_path(output).name in before and any(".partial." in name for name in before)
        extra = {"same images": [], "other images": [], "with --faiss": ["--faiss", "Flat"],
                 "shard of the same list": ["--shard", "0/1"]}[second]
        images_arg = other_list if second == "other images" else first_list
        result = run(index_command, ["--bundle", fake_bundle, "--images", images_arg, "-o",
                                     f"{out}/" if sharded else output, "-q", *extra])
        assert_user_error(result, f"pid {first.pid}", "another tbps run", str(output))
        assert snapshot(out) == before  # the first run's partial state untouched
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    alone = tmp_path / "alone.npy"
    index(fake_bundle, first_list, alone)
    finished, reference = load_gallery(output), load_gallery(alone)
    assert [e.path for e in finished.entries] == [e.path for e in reference.entries]
    np.testing.assert_array_equal(np.asarray(finished.embeddings), np.asarray(reference.embeddings))
    assert sorted(p.name for p in out.iterdir()) == sorted([output.name, output.with_suffix(".json").name])


def test_a_lock_held_by_another_process_names_it_and_a_dead_holder_blocks_nothing(fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tbps_runtime.outputs import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()",
         output], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = tbps_process("index", ["--bundle", fake_bundle, "--images", images, "-o", output, "-q"])
        assert_user_error(as_result(refused), f"pid {holder.pid}")
        assert listing(tmp_path) == [lock_path(output).name]
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the lock
        holder.wait()
    assert lock_path(output).exists()  # a stale lock file, from a dead process
    index(fake_bundle, images, output)
    assert listing(tmp_path) == ["g.json", "g.npy"]


def test_the_lock_is_reentrant_in_a_thread_and_refused_to_another(tmp_path):
    output = tmp_path / "g.npy"
    errors = []
    with output_lock(output), output_lock(output):  # the command and the library it calls
        thread = threading.Thread(target=lambda: errors.append(_try_lock(output)))
        thread.start()
        thread.join()
    assert "another thread of this process" in str(errors[0])
    assert listing(tmp_path) == []


def _try_lock(output: Path) -> Exception | None:
    try:
        with output_lock(output):
            return None
    except OutputError as e:
        return e


# ---- 2. tbps synth --overwrite replaces only its own datasets --------------------------------------------

def _foreign_dataset(root: Path, case: str) -> Path:
    from tbps_runtime.synth.dataset import generate

    out = root / "ds"
    if case == "a thesis":
        (out / "src").mkdir(parents=True)
        (out / "src" / "thesis.tex").write_text("\\chapter{Introduction}\n")
        return out
    generate(out, ids=3, images_per_id=1, progress=False)
    if case == "a synth dataset with a note":
        (out / "notes.txt").write_text("mine")
    elif case == "a synth dataset with an extra image":
        (out / "imgs" / "SYNTH" / "holiday.jpg").write_bytes(b"\xff\xd8 not tbps's")
    elif case == "a synth dataset with a linked folder":
        (root / "elsewhere").mkdir()
        (root / "elsewhere" / "keep.txt").write_text("mine")
        (out / "imgs" / "mine").symlink_to(root / "elsewhere")
    elif case == "a forged marker":
        shutil.rmtree(out / "imgs")
        (out / "thesis.tex").write_text("\\chapter{Introduction}\n")
    return out


@pytest.mark.parametrize("case", ["a thesis", "a synth dataset with a note", "a synth dataset with an extra image",
                                  "a synth dataset with a linked folder", "a forged marker"])
def test_synth_overwrite_refuses_what_it_did_not_write(case, tmp_path):
    from tbps_train.cli import synth_command

    out = _foreign_dataset(tmp_path, case)
    before, parent = snapshot(tmp_path), listing(tmp_path)
    result = run(synth_command, ["-o", out, "--overwrite", "--ids", 3, "--images-per-id", 1, "-q"])
    assert_user_error(result, str(out), "not replacing it")
    assert snapshot(tmp_path) == before and listing(tmp_path) == parent  # no temp directory left either


def test_synth_overwrite_replaces_its_own_dataset(tmp_path):
    from tbps_train.cli import synth_command

    out = tmp_path / "ds"
    for seed in (0, 1):
        result = run(synth_command, ["-o", out, "--overwrite", "--ids", 3, "--images-per-id", 1, "--seed", seed, "-q"])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "synth.json").read_text())["seed"] == 1
    assert listing(tmp_path)[0] == "ds" and all(p.startswith("ds") for p in listing(tmp_path))


# ---- 3. the gallery's files replace only a gallery's ------------------------------------------------------

def _victim(tmp_path: Path, case: str, fake_bundle: Path, synth_root: Path) -> tuple[Path, list[str]]:
    """(the -o to give, extra options) for a victim beside it that is not tbps's."""
    if case == "a bundle's manifest.json":
        other = shutil.copytree(fake_bundle, tmp_path / "other.bundle")
        return other / "manifest.npy", []
    if case == "a dataset's reid_raw.json":
        (tmp_path / "data").mkdir()
        shutil.copy(synth_root / "reid_raw.json", tmp_path / "data" / "reid_raw.json")
        return tmp_path / "data" / "reid_raw.npy", []
    if case == "an array that is not a gallery":
        np.save(tmp_path / "features.npy", np.arange(12, dtype=np.float32))
        return tmp_path / "features.npy", []
    (tmp_path / "g.faiss").write_bytes(b"someone else's index")  # "a FAISS file tbps did not write"
    return tmp_path / "g.npy", ["--faiss", "Flat"]


VICTIMS = ["a bundle's manifest.json", "a dataset's reid_raw.json", "an array that is not a gallery",
           "a FAISS file tbps did not write"]


@pytest.mark.parametrize("case", VICTIMS)
def test_index_never_replaces_a_file_that_is_not_a_gallerys(case, fake_bundle, images, synth_root, tmp_path):
    if "FAISS" in case:
        pytest.importorskip("faiss")
    output, extra = _victim(tmp_path, case, fake_bundle, synth_root)
    before = snapshot(tmp_path)
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", output, "-q", *extra])
    assert_user_error(result, "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", VICTIMS)
def test_index_force_replaces_it(case, fake_bundle, images, synth_root, tmp_path):
    if "FAISS" in case:
        pytest.importorskip("faiss")
    output, extra = _victim(tmp_path, case, fake_bundle, synth_root)
    index(fake_bundle, images, output, "--force", *extra)
    assert len(load_gallery(output)) == len(COLOURS)


def test_index_replaces_its_own_gallery_without_force(fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    index(fake_bundle, images, output)
    index(fake_bundle, images, output)  # again: no --force needed
    assert listing(tmp_path) == ["g.json", "g.npy"]


# ---- 4. an output is never one of the command's inputs ----------------------------------------------------

RANK_CASES = {
    "--show onto the gallery": lambda g, b, i, q: ["--show", g],
    "--show onto its sidecar": lambda g, b, i, q: ["--show", g.with_suffix(".json")],
    "--html onto its sidecar": lambda g, b, i, q: ["--html", g.with_suffix(".json")],
    "--show through a link to the gallery": lambda g, b, i, q: ["--show", _link(q.parent / "link.png", g)],
    "--show onto the bundle's manifest": lambda g, b, i, q: ["--bundle", b, "--show", b / "manifest.json"],
    "--html onto the query file": lambda g, b, i, q: ["--queries", q, "--html", q],
    "--show onto a crop it draws": lambda g, b, i, q: ["--show", i / "0_red.png"],
    "--show and --html onto one file": lambda g, b, i, q: ["--show", q.parent / "r.out", "--html", q.parent / "r.out"],
}


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", list(RANK_CASES))
def test_rank_never_writes_over_its_inputs(case, fake_bundle, images, tmp_path_factory):
    work = tmp_path_factory.mktemp("rank")
    bundle = shutil.copytree(fake_bundle, work / "bundle")
    crops = shutil.copytree(images, work / "crops")
    output = work / "g.npy"
    index(bundle, crops, output)
    queries = work / "queries.txt"
    queries.write_text("red\nblue\n")
    args = RANK_CASES[case](output, bundle, crops, queries)
    before = snapshot(work)
    query = [] if "--queries" in args else ["--query", "red"]
    result = run(rank_command, ["--gallery", output, *query, "-k", 3, "-q", *args])
    assert_user_error(result, "write")
    assert snapshot(work) == before


def test_rank_writes_pictures_beside_its_inputs(fake_bundle, gallery, tmp_path):
    png, page = gallery.parent / "results.png", tmp_path / "results.html"
    result = run(rank_command, ["--gallery", gallery, "--query", "red", "-k", 2, "-q", "--show", png, "--html", page])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0 and page.stat().st_size > 0
    png.unlink()


def test_rank_never_writes_over_a_shard_or_a_faiss_index(fake_bundle, images, tmp_path):
    pytest.importorskip("faiss")
    shards = tmp_path / "shards"
    for i in range(2):
        index(fake_bundle, images, f"{shards}/", "--shard", f"{i}/2", "--faiss", "Flat")
    before = snapshot(tmp_path)
    for victim in ("shard-1-of-2.json", "shard-0-of-2.faiss", "shard-1-of-2.npy"):
        result = run(rank_command, ["--gallery", shards, "--query", "red", "--show", shards / victim, "-q"])
        assert_user_error(result, victim, "which this command reads")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["the image list", "the bundle's manifest"])
def test_index_never_writes_over_its_inputs(case, fake_bundle, images, tmp_path):
    bundle = shutil.copytree(fake_bundle, tmp_path / "bundle")
    if case == "the image list":
        source = image_list(tmp_path / "crops.json", sorted(images.glob("*.png")))
        output = tmp_path / "crops.npy"  # its description would be crops.json, the list
    else:
        source, output = images, bundle / "manifest.npy"
    before = snapshot(tmp_path)
    result = run(index_command, ["--bundle", bundle, "--images", source, "-o", output, "-q", "--force"])
    assert_user_error(result, "which this command reads")
    assert snapshot(tmp_path) == before


# ---- 5. a full disk is an error message, never a SIGBUS ---------------------------------------------------

def test_index_checks_free_space_before_mapping_the_rows(fake_bundle, images, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**6, used=10**6 - 100, free=100))
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "g.npy", "-q"])
    assert_user_error(result, "not enough free disk space", "free some space")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("lie_about_free_space", [False, True], ids=["checked", "allocated"])
def test_index_onto_a_full_disk_is_one_error_line(lie_about_free_space, small_disk, fake_bundle, images, tmp_path):
    """"checked": free space is checked before the map exists; "allocated": with the check fooled
    (another writer filled the disk since), allocating the map's blocks fails cleanly instead of
    writing into a hole that cannot be backed (SIGBUS, exit status 135)."""
    disk = small_disk(16384)  # room for the lock note and the .npy header, not for 800 rows of 48 bytes
    crops = image_list(tmp_path / "crops.txt", [images / "0_red.png"] * 800)
    args = ["--bundle", fake_bundle, "--images", crops, "-o", disk / "g.npy", "-q", "--batch-size", 400]
    lie = ("import shutil, types\n"
           "shutil.disk_usage = lambda path: types.SimpleNamespace(total=1 << 40, used=0, free=1 << 40)")
    done = tbps_process("index", args, prelude=lie if lie_about_free_space else "")
    assert_user_error(as_result(done), "free some space")
    assert listing(disk) == ["filler"]


def test_reserve_allocates_a_sparse_file_or_refuses(small_disk):
    disk = small_disk(64 * 1024)
    sparse = disk / "rows"
    with open(sparse, "wb") as stream:
        stream.truncate(1 << 20)  # 1 MiB of holes on a disk with 64 KiB free
    with pytest.raises(OutputError, match="not enough free disk space"):
        reserve(sparse, 1 << 20, "the test file")
    fits = disk / "fits"
    with open(fits, "wb") as stream:
        stream.truncate(16 * 1024)
    reserve(fits, 16 * 1024, "the test file")
    assert os.stat(fits).st_blocks * 512 >= 16 * 1024


# ---- 6. FAISS from many threads: per-call parameters ------------------------------------------------------

@pytest.fixture(scope="module")
def random_gallery(fake_bundle, tmp_path_factory):
    """2000 random (3, 4) rows under the fake bundle's fingerprint, and 20 queries."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2000, 3, 4)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    search = PersonSearch.from_bundle(fake_bundle, threads=1)
    path = tmp_path_factory.mktemp("random") / "g.npy"
    write_gallery(path, rows, [GalleryEntry(f"crop{i}.png") for i in range(len(rows))],
                  fingerprint=search.fingerprint, bundle=fake_bundle)
    return search, path, rng.standard_normal((20, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("spec,option,values", [("IVF32,Flat", "nprobe", (1, 3, 8, 32)),
                                                ("PCA8,IVF32,Flat", "nprobe", (1, 3, 8, 32)),
                                                ("HNSW8", "ef_search", (1, 4, 16, 64))])
def test_faiss_search_from_four_threads_matches_one_thread(spec, option, values, random_gallery, tmp_path):
    faiss = pytest.importorskip("faiss")
    from tbps_runtime.gallery.faiss_gallery import build_gallery_faiss
    from tbps_runtime.gallery.faiss_index import search_faiss

    search, source, queries = random_gallery
    path = tmp_path / "g.npy"
    for suffix in (".npy", ".json"):
        shutil.copy(source.with_suffix(suffix), path.with_suffix(suffix))
    gallery = build_gallery_faiss(load_gallery(path), spec)
    search.rank(queries[:1], gallery, k=1)  # opens the gallery's FAISS index once, shared from here on
    index = gallery._faiss_search.indexes[0]
    if option == "nprobe":
        def call(value):
            return search.rank(queries, gallery, k=10, nprobe=value)
        own = faiss.extract_index_ivf(index).nprobe
    else:
        def call(value):
            return [r.tolist() for r in search_faiss(index, queries, 10, ef_search=value)]
        own = faiss.downcast_index(index).hnsw.efSearch
    expected = {value: call(value) for value in values}
    assert expected[values[0]] != expected[values[-1]]  # the values do change the results
    wrong: list = []

    def worker(offset: int) -> None:
        for i in range(100):
            value = values[(i + offset) % len(values)]
            if call(value) != expected[value]:
                wrong.append((offset, i, value))
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    now = (faiss.extract_index_ivf(index).nprobe if option == "nprobe"
           else faiss.downcast_index(index).hnsw.efSearch)
    assert now == own  # the shared index's own setting never changed
