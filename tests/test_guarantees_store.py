"""What the store guarantees under hostile input, races and failing disks (issue 24, the store's part),
case by case. The classes, and the one mechanism each:

- a search beside deletions in other processes: selection, segments and records read in one snapshot, and
  read again in a newer one when a deletion removed a segment file that snapshot named;
- segment files are checked against their registration (row count, a checksum) and never read through a
  link out of the store; a crop's path alike;
- the catalog is input: its tables, segment registrations and row values are checked on open or where
  read, and ``tbps rank`` / ``tbps gallery info`` say what is wrong in one line;
- a writer's sweep removes only what an interrupted writer of the store marked pending, and reindex
  refuses an output inside its store;
- a read-only store is searched (its catalog opened read-only, never written), its writers say it is
  read-only;
- a full disk is one StoreError, and the store holds exactly the appends committed before;
- every value entering a store passes :func:`tbps_runtime.store.rows.check_record`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_assertions import assert_user_error, run
from tbps_runtime.cli.ingest import gallery_group
from tbps_runtime.cli.search import rank_command
from tbps_runtime.errors import BundleError, ConfigError, OutputError, StoreError, UnsafePathError
from tbps_runtime.model.encoder import Encoder
from tbps_runtime.ranking import normalize_slots
from tbps_runtime.store.local import CATALOG, LocalStore
from tbps_runtime.store.rows import CropRecord, RowFilter

ROOT = Path(__file__).resolve().parents[1]
K, D = 3, 4  # the fake bundle's (K, d)
T0 = 1772460000.0  # 2026-03-02T14:00:00Z


def rows(seed: int, n: int) -> np.ndarray:
    return normalize_slots(np.random.default_rng(seed).normal(size=(n, K, D)))


def record(i: int, camera: str = "cam1", when: float | None = None, crop: str | None = None) -> CropRecord:
    return CropRecord(source=f"{camera}.mp4", camera=camera, time=T0 + i if when is None else when, offset=i / 10,
                      frame=i, box=(1.0, 2.0, 30.0, 60.0), score=0.9, track=i, crop=crop)


def make_store(directory: Path, batches: int = 2, size: int = 3, fingerprint: str = "f" * 64,
               bundle: Path | None = None) -> LocalStore:
    """A store of ``batches`` appends of ``size`` rows each (rows i: time T0 + i, track i)."""
    store = LocalStore.create(directory, fingerprint=fingerprint, num_slots=K, embed_dim=D, bundle=bundle)
    with store.writing():
        for b in range(batches):
            store.append(rows(b, size), [record(b * size + i) for i in range(size)])
    return store


def catalog(store: LocalStore, sql: str, *params) -> list[tuple]:
    """Run ``sql`` on the store's catalog directly (as a tool or an attacker would), committed."""
    db = sqlite3.connect(store.directory / CATALOG, isolation_level=None)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def segment_files(store: LocalStore) -> list[Path]:
    return [store.directory / file for (file,) in catalog(store, "SELECT file FROM segments ORDER BY id")]


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


# ---- 1. a search beside deletions in other processes: one snapshot ---------------------------------------

_WRITER = """
import pathlib, sys, time
import numpy as np
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.rows import CropRecord, RowFilter
directory, query, ready, stop = sys.argv[1:5]
store, top = LocalStore.open(directory), np.load(query)
old = time.time() - 30 * 86400
cycles = 0
with store.writing():
    pathlib.Path(ready).touch()
    while not pathlib.Path(stop).exists() and cycles < 100000:
        # five rows equal to the query (the best possible score), 30 days old, one track
        store.append(np.repeat(top, 5, axis=0), [CropRecord("x.mp4", "x", old + i, track=10**6) for i in range(5)])
        if cycles % 2:
            store.delete(RowFilter(cameras=("x",)))
        else:
            store.delete(older_than=86400)  # retention: the x rows go, the others are new
        cycles += 1
print(cycles)
"""


def test_searches_beside_appends_and_deletions_in_another_process_answer_from_one_snapshot(tmp_path, caplog):
    """Every search is answered, and every answer is one snapshot's: k hits (every snapshot holds at least
    k rows), the x rows all five or none. Reading the records after ranking (a second snapshot) loses the
    x rows a deletion removed between the two; mapping a segment file its snapshot named after a deletion
    removed it fails. Searches run for 3 s and until both kinds of snapshot (with and without the x rows)
    were answered and a search met a segment deleted after its snapshot began (read again: logged)."""
    caplog.set_level(logging.DEBUG, logger="tbps_runtime.store.local")
    base = 40
    store = LocalStore.create(tmp_path / "s", fingerprint="f" * 64, num_slots=K, embed_dim=D)
    now = time.time()
    with store.writing():
        for b in range(base // 2):  # many small segments: a search maps and scores them one by one
            store.append(rows(b, 2), [record(2 * b + i, "cam1", now) for i in range(2)])
    query = rows(999, 1)
    np.save(tmp_path / "query.npy", query)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, store.directory, tmp_path / "query.npy", ready, stop],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers, errors = {"with x": 0, "without x": 0}, []

    def retries() -> int:
        return sum("reading again" in r.getMessage() for r in caplog.records)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()
            time.sleep(0.05)
        reader = LocalStore.open(store.directory)
        searches, start = 0, time.monotonic()
        while time.monotonic() < start + 3 or (min(answers.values()) < 5 or retries() < 1) and \
                time.monotonic() < start + 30:
            per_track = searches % 2 == 1
            searches += 1
            try:
                hits = reader.search(query, k=base, per_track=per_track)[0]
            except Exception as e:  # noqa: BLE001 - every search must be answered: reported below
                errors.append(repr(e))
                continue
            x = [h for h in hits if h.record.camera == "x"]
            whole = (len(x) == 1 and x[0].track_rows == 5) if per_track else \
                (len(x) == 5 and [h.row for h in x] == list(range(x[0].row, x[0].row + 5)))
            assert len(hits) == base and (not x or (whole and x[0].rank == 1)), (per_track, len(hits), len(x))
            answers["with x" if x else "without x"] += 1
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert errors == []
    assert min(answers.values()) >= 5 and retries() >= 1, (answers, retries())  # the interleavings happened


def test_a_segment_file_lost_under_a_registered_segment_is_named(tmp_path):
    """The retry in a newer snapshot is for deletions: a file still registered but gone is damage."""
    store = make_store(tmp_path / "s")
    segment_files(store)[1].unlink()
    with pytest.raises(BundleError, match="segment file .* is missing"):
        LocalStore.open(store.directory).search(rows(7, 1), k=3)


# ---- 2. segment files against their registration ---------------------------------------------------------

def test_two_segments_of_one_shape_swapped_on_disk_are_refused(tmp_path):
    store = make_store(tmp_path / "s")
    first, second = segment_files(store)
    first.rename(tmp_path / "swap")
    second.rename(first)
    (tmp_path / "swap").rename(second)
    with pytest.raises(BundleError, match="checksum"):
        LocalStore.open(store.directory).search(rows(7, 1), k=3)


def test_a_segment_shorter_than_its_registration_is_refused(tmp_path):
    """Without a checksum (a catalog from before them), the row count alone catches it."""
    store = make_store(tmp_path / "s")
    if "digest" in {row[1] for row in catalog(store, "PRAGMA table_info(segments)")}:
        catalog(store, "ALTER TABLE segments DROP COLUMN digest")
    shorter = segment_files(store)[0]
    np.save(shorter, np.load(shorter)[:2])
    with pytest.raises(BundleError, match="holds 2 rows, its registration 3"):
        LocalStore.open(store.directory).search(rows(7, 1), k=6)


def test_a_segment_linked_to_outside_the_store_is_not_read(tmp_path):
    store = make_store(tmp_path / "s")
    segment = segment_files(store)[0]
    outside = tmp_path / "outside.npy"
    shutil.move(segment, outside)
    segment.symlink_to(outside)  # the same bytes, but not the store's file
    with pytest.raises(UnsafePathError, match="outside the store"):
        LocalStore.open(store.directory).search(rows(7, 1), k=3)


def test_a_crop_path_never_resolves_outside_the_store(tmp_path):
    store = make_store(tmp_path / "s", batches=0)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "0.jpg").write_bytes(b"not the store's")
    name = "crops/" + "a" * 32
    folder = store.directory / name
    folder.mkdir(parents=True)
    (folder / "1.jpg").symlink_to(secret / "0.jpg")  # a crop file linked out of the store
    linked = store.directory / "crops" / "0123456789abcdef0123456789abcdef"
    linked.symlink_to(secret, target_is_directory=True)  # a crop folder linked out of the store
    (folder / "0.jpg").write_bytes(b"jpeg")
    assert store.crop_path(f"{name}/0.jpg") == folder / "0.jpg"
    for crop in (f"{name}/1.jpg", "crops/0123456789abcdef0123456789abcdef/0.jpg"):
        with pytest.raises(UnsafePathError, match="outside the store"):
            store.crop_path(crop)


def test_a_catalog_from_before_checksums_opens_and_its_next_segments_get_one(tmp_path):
    """Migration: the next writer adds the column; segments registered before stay unknown (unchecked)."""
    store = make_store(tmp_path / "s", batches=1)
    columns = {row[1] for row in catalog(store, "PRAGMA table_info(segments)")}
    if "digest" in columns:
        catalog(store, "ALTER TABLE segments DROP COLUMN digest")
    old = LocalStore.open(store.directory)
    assert len(old.search(rows(7, 1), k=5)[0]) == 3
    with old.writing():
        old.append(rows(8, 2), [record(10), record(11)])
    digests = [digest for (digest,) in catalog(store, "SELECT digest FROM segments ORDER BY id")]
    assert digests[0] is None and digests[1].startswith("sampled-sha256:")
    assert len(LocalStore.open(store.directory).search(rows(7, 1), k=9)[0]) == 5


# ---- 3. the catalog is input -----------------------------------------------------------------------------

# (what was done to a store of six rows in two segments, SQL; what `tbps rank --per-track` says; what
# `tbps gallery info` says): None where the command succeeds (it does not read what was damaged).
CRAFTED = {
    "a negative row count": ("UPDATE segments SET rows = -3 WHERE id = 1", "row count", "row count"),
    "a live count above the rows": ("UPDATE segments SET live = 9 WHERE id = 1", "live row count", "live row count"),
    "rows past the next row id": ("UPDATE meta SET value = '2' WHERE key = 'next_row'", "next row id",
                                  "next row id"),
    "an offset past its segment": ("UPDATE rows SET offset = 7 WHERE id = 1", "offset 7, past its 3 rows", None),
    "text for an offset": ("UPDATE rows SET offset = 'abc' WHERE id = 1", "offset", None),
    "text for a time": ("UPDATE rows SET time = 'noon' WHERE id = 1", "row 1: time 'noon'", "time 'noon'"),
    "text for a frame": ("UPDATE rows SET frame = 'first' WHERE id = 2", "row 2: frame 'first'", None),
    "a blob camera": ("UPDATE rows SET camera = X'00ff' WHERE id = 1", "camera b'\\x00\\xff'", "camera b'\\x00\\xff'"),
    "a negative track": ("UPDATE rows SET track = -4 WHERE id = 3", "track", None),
    "a row in no segment": ("UPDATE rows SET segment = 77 WHERE id = 4", "segment 77", None),
    "no rows table": ("DROP TABLE rows", "no table 'rows'", "no table 'rows'"),
    "a far-future time": ("UPDATE rows SET time = 1e12 WHERE id = 5", "1000000000000.0 is not a time",
                          "1000000000000.0 is not a time"),
    "a time before 1900": ("UPDATE rows SET time = -3e9 WHERE id = 5", "-3000000000.0 is not a time",
                           "-3000000000.0 is not a time"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_catalog_is_one_error_line_of_rank_and_info(case, fake_bundle, tmp_path):
    sql, rank_says, info_says = CRAFTED[case]
    fingerprint = Encoder.from_bundle(fake_bundle, threads=1).fingerprint
    store = make_store(tmp_path / "s", fingerprint=fingerprint, bundle=fake_bundle)
    catalog(store, sql)
    ranked = run(rank_command, ["--gallery", store.directory, "--query", "red", "-k", 10, "--per-track", "--json"])
    info = run(gallery_group, ["info", store.directory, "--json"])
    for result, says in ((ranked, rank_says), (info, info_says)):
        if says is None:
            assert result.exit_code == 0, result.output
        else:
            assert_user_error(result, str(store.directory), says)


def test_a_segment_with_fewer_rows_than_registered_is_one_error_line_of_rank(fake_bundle, tmp_path):
    fingerprint = Encoder.from_bundle(fake_bundle, threads=1).fingerprint
    store = make_store(tmp_path / "s", fingerprint=fingerprint, bundle=fake_bundle)
    shorter = segment_files(store)[1]
    np.save(shorter, np.load(shorter)[:1])
    assert_user_error(run(rank_command, ["--gallery", store.directory, "--query", "red"]), str(shorter),
                      "holds 1 rows, its registration 3")


# ---- 4. the sweep removes only its own leftovers; reindex writes beside its store ---------------------------

_CRASHING_WRITER = """
import os, sys
import numpy as np
from tbps_runtime.store import local
from tbps_runtime.store.rows import CropRecord
store = local.LocalStore.open(sys.argv[1])
with store.writing():
    name, folder = store.new_batch()
    (folder / "0.jpg").write_bytes(b"jpeg")
    def killed(self):  # the process dies after its segment file, before registering it
        os._exit(3)
    local.LocalStore._write = killed
    store.append(np.load(sys.argv[2]), [CropRecord("a.mp4", "cam1", crop=name + "/0.jpg")], crops=name)
"""


def test_the_next_writer_removes_what_a_killed_writer_made_and_nothing_else(tmp_path, caplog):
    store = make_store(tmp_path / "s", batches=1)
    np.save(tmp_path / "row.npy", rows(5, 1))
    before = set(listing(store.directory))
    killed = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, store.directory, tmp_path / "row.npy"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == 3, killed.stderr
    left = {name for name in set(listing(store.directory)) - before if name.startswith(("crops/", "segments/"))}
    assert len(left) == 3, left  # its crop folder, its crop and its segment file
    other = make_store(store.directory / "crops" / "other", batches=1)  # e.g. a reindex output from before
    (store.directory / "segments" / "notes.txt").write_text("mine")
    foreign = {name for name in set(listing(store.directory)) - before - left
               if name.startswith(("crops/", "segments/"))}
    with caplog.at_level(logging.INFO, logger="tbps_runtime.store"), store.writing():
        pass
    now = set(listing(store.directory))
    assert not left & now and foreign <= now  # the killed writer's files went, nothing else
    assert len(LocalStore.open(other.directory)) == 3 and len(store) == 3
    removals = [r for r in caplog.records if r.getMessage().startswith("removing")]
    assert len(removals) == 2 and all(r.levelno == logging.WARNING for r in removals)


def test_a_writer_session_inside_another_leaves_the_outer_ones_files_be(tmp_path):
    """The writer lock is re-entrant: a session opened inside another (a library call under a command's
    lock) must not sweep the crop folder the outer one is filling."""
    store = make_store(tmp_path / "s", batches=0)
    with store.writing():
        name, folder = store.new_batch()
        (folder / "0.jpg").write_bytes(b"jpeg")
        with LocalStore.open(store.directory).writing():
            pass
        assert (folder / "0.jpg").exists()
        store.append(rows(1, 1), [record(0, crop=f"{name}/0.jpg")], crops=name)
    assert store.crop_path(f"{name}/0.jpg").read_bytes() == b"jpeg" and len(store) == 1


def test_reindex_refuses_an_output_inside_its_store(fake_bundle, tmp_path):
    from runtime_fakes import solid_image

    fingerprint = Encoder.from_bundle(fake_bundle, threads=1).fingerprint
    store = make_store(tmp_path / "s", batches=0, fingerprint=fingerprint, bundle=fake_bundle)
    with store.writing():
        name, folder = store.new_batch()
        solid_image(folder / "0.png", "red")
        store.append(rows(1, 1), [record(0, crop=f"{name}/0.png")], crops=name)
    (tmp_path / "link").symlink_to(store.directory / "crops")
    before = listing(store.directory)
    for output in (store.directory / "crops" / "newstore", tmp_path / "link" / "newstore", store.directory):
        result = run(gallery_group, ["reindex", store.directory, "--bundle", fake_bundle, "-o", output, "-q"])
        assert_user_error(result, str(output), "inside the store", "elsewhere")
        assert listing(store.directory) == before


# ---- 5. a read-only store ------------------------------------------------------------------------------------

@pytest.fixture()
def read_only(tmp_path):
    """``read_only(directory)``: a read-only view of ``directory`` (a read-only bind mount; without root,
    the directory made unwritable); skipped where neither stops writes."""
    mounts, chmodded = [], []

    def view(directory: Path) -> Path:
        if os.geteuid() != 0:
            for path in [directory, *directory.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
                chmodded.append(path)
            return directory
        target = tmp_path / "read-only"
        target.mkdir()
        done = subprocess.run(["mount", "--bind", directory, target], capture_output=True, text=True)
        if done.returncode == 0:
            mounts.append(target)
            done = subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root, where chmod does not stop writes, and a read-only bind mount is not "
                        f"allowed here: {done.stderr.strip()}")
        return target
    try:
        yield view
    finally:
        for target in mounts:
            subprocess.run(["umount", "-l", target], check=False)
        for path in chmodded:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_read_only_store_is_searched_and_its_writers_say_it_is_read_only(read_only, fake_bundle, tmp_path):
    fingerprint = Encoder.from_bundle(fake_bundle, threads=1).fingerprint
    store = make_store(tmp_path / "s", fingerprint=fingerprint, bundle=fake_bundle)
    view = read_only(store.directory)
    before = listing(view)
    ranked = run(rank_command, ["--gallery", view, "--query", "red", "-k", 4, "--json"])
    assert ranked.exit_code == 0, ranked.output
    assert len(json.loads(ranked.stdout)) == 4
    info = run(gallery_group, ["info", view, "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["rows"] == 6, info.output
    for args in (["prune", view, "--older-than", "1d", "--yes"], ["delete", view, "--camera", "cam1", "--yes"]):
        assert_user_error(run(gallery_group, args), str(view), "read-only", "writable")
    with pytest.raises(OutputError, match="read-only") as refused:  # what tbps ingest opens a store with
        LocalStore.create(view, fingerprint=fingerprint, num_slots=K, embed_dim=D)
    assert refused.value.code == "store_read_only"  # what the service words as its own refusal
    assert listing(view) == before


def test_reading_a_store_never_writes_its_catalog(tmp_path):
    """A catalog in rollback-journal mode (an older SQLite's, or a copy): a reader leaves it byte for byte,
    and makes no log beside it; a directory that is no store stays empty."""
    store = make_store(tmp_path / "s")
    catalog(store, "PRAGMA journal_mode = DELETE")
    before = (store.directory / CATALOG).read_bytes(), listing(store.directory)
    reader = LocalStore.open(store.directory)
    for read in (lambda: reader.search(rows(7, 1), k=3, per_track=True), reader.info, lambda: reader.records([0, 1]),
                 lambda: reader.embeddings([2]), reader.cameras, lambda: list(reader.iter_rows())):
        read()
    assert ((store.directory / CATALOG).read_bytes(), listing(store.directory)) == before
    (tmp_path / "empty").mkdir()
    assert_user_error(run(gallery_group, ["info", tmp_path / "empty"]), "no tbps store")
    assert listing(tmp_path / "empty") == []


# ---- 6. a full disk ----------------------------------------------------------------------------------------------

def test_a_full_disk_during_an_append_is_one_store_error_and_keeps_the_committed_rows(small_disk):
    disk = small_disk(1 << 30)  # mounted, nothing filled yet
    make_store(disk / "s", batches=2, size=3)
    committed = {i: record(i) for i in range(6)}
    small_disk(48 * 1024)
    reopened = LocalStore.create(disk / "s", fingerprint="f" * 64, num_slots=K, embed_dim=D)  # as tbps ingest does
    text = "x" * 1000
    big = [CropRecord(f"{text}{i}.mp4", "cam1", T0, identity=text) for i in range(120)]  # ~240 KB of catalog
    with reopened.writing(), pytest.raises(StoreError, match="is full .*free some space"):
        reopened.append(rows(3, len(big)), big)
    after = LocalStore.open(disk / "s")
    assert {int(i): r for ids, found in after.iter_rows() for i, r in zip(ids, found)} == committed
    assert len(list((disk / "s" / "segments").iterdir())) == 2  # the failed append's file is gone
    (disk / "filler").unlink()
    with after.writing():
        assert after.append(rows(4, 1), [record(6)]).tolist() == [6]
    assert len(LocalStore.open(disk / "s")) == 7


def test_a_new_store_on_a_full_disk_is_one_store_error_and_leaves_nothing(small_disk):
    disk = small_disk(4096)
    with pytest.raises(StoreError, match="is full .*free some space"):
        LocalStore.create(disk / "new", fingerprint="f" * 64, num_slots=K, embed_dim=D)
    assert listing(disk) == ["filler"]
    (disk / "filler").unlink()
    assert len(LocalStore.create(disk / "new", fingerprint="f" * 64, num_slots=K, embed_dim=D)) == 0


# ---- 7. values entering a store ---------------------------------------------------------------------------

BAD_RECORDS = {
    "a time past 3000": CropRecord("a.mp4", "cam1", time=253402214400.0),  # 9999-12-31
    "a time before 1900": CropRecord("a.mp4", "cam1", time=-1e11),
    "an infinite time": CropRecord("a.mp4", "cam1", time=float("inf")),
    "a camera with a line break": CropRecord("a.mp4", "cam\n1"),
    "an empty source": CropRecord("", "cam1"),
    "a camera that is not text": CropRecord("a.mp4", 7),  # type: ignore[arg-type]
    "a negative track": CropRecord("a.mp4", "cam1", track=-1),
    "a box of three numbers": CropRecord("a.mp4", "cam1", box=(1.0, 2.0, 3.0)),  # type: ignore[arg-type]
    "a NaN detector score": CropRecord("a.mp4", "cam1", score=float("nan")),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_every_append_checks_its_records_and_info_never_fails(case, tmp_path):
    store = make_store(tmp_path / "s", batches=1)
    before = listing(store.directory)
    with store.writing(), pytest.raises(ConfigError, match="is not"):
        store.append(rows(1, 2), [record(9), BAD_RECORDS[case]])
    assert listing(store.directory) == before and len(store) == 3
    info = store.info()
    assert (info["rows"], info["first"], info["last"]) == (3, "2026-03-02T14:00:00.000Z", "2026-03-02T14:00:02.000Z")


def test_the_milvus_store_checks_its_records_in_the_shared_base(tmp_path):
    pytest.importorskip("milvus_lite", reason="the Milvus store needs pymilvus and milvus-lite")
    from tbps_runtime.store.milvus import MilvusStore

    try:
        store = MilvusStore.create(str(tmp_path / "m.db"), "rows", tmp_path / "m", fingerprint="f" * 64,
                                   num_slots=K, embed_dim=D)
    except Exception as e:  # noqa: BLE001 - any failure to start is a reason to skip
        pytest.skip(f"milvus-lite cannot start here: {e}")
    with store:
        with store.writing():
            for bad in BAD_RECORDS.values():
                with pytest.raises(ConfigError, match="is not"):
                    store.append(rows(1, 1), [bad])
            store.append(rows(1, 1), [record(0)])
        assert store.info()["rows"] == 1 and store.search(rows(2, 1), k=5, row_filter=RowFilter(cameras=("cam1",)))
