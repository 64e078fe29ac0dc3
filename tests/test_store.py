"""The local store (tbps_runtime.store.local) beyond the Store contract (tests/test_store_contract.py):
segment files, readers beside a writer, crash leftovers, SQLite's refusals and failures; and the times
and ages of the row records (tbps_runtime.store.rows)."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cli_assertions import assert_user_error, run

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError, StoreError
from tbps_runtime.ranking import normalize_slots
from tbps_runtime.store import local
from tbps_runtime.store.local import CATALOG, LocalStore
from tbps_runtime.store.rows import CropRecord, RowFilter, format_time, parse_age, parse_time

K, D = 3, 4
T0 = parse_time("2026-03-02T14:00:00Z")


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return normalize_slots(rng.normal(size=(n, K, D)))


def record(i: int, camera: str = "cam1", track: int | None = None, when: float | None = None) -> CropRecord:
    return CropRecord(source=f"{camera}.mp4", camera=camera, time=T0 + i if when is None else when, offset=float(i),
                      frame=i, box=(1.0, 2.0, 30.0, 90.0), score=0.9, track=track, crop=None)


@pytest.fixture
def store(tmp_path):
    return LocalStore.create(tmp_path / "s", fingerprint="f" * 64, num_slots=K, embed_dim=D)


def test_a_reader_sees_whole_segments_while_a_writer_appends(store):
    """Searches running beside appends always see a multiple of the batch size: never half a segment.
    After some appends the writer waits for a read that started after it, so reads of a store part-way
    through the appends (0 < rows < all) certainly happen, and are checked like the others."""
    rng = np.random.default_rng(9)
    batch, appends, seen, errors = 7, 20, [], []
    stop, asked, answered = threading.Event(), threading.Event(), threading.Event()

    def read() -> None:
        reader = LocalStore.open(store.directory)
        query = rows(np.random.default_rng(1), 1)
        while not stop.is_set():
            wanted = asked.is_set()  # the writer waits for a read that starts after its append
            try:
                seen.append(len(reader.search(query, k=1000)[0]))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            if wanted:
                asked.clear()
                answered.set()

    thread = threading.Thread(target=read)
    thread.start()
    partial = []  # what the reads the writer waited for saw
    try:
        with store.writing():
            for b in range(appends):
                store.append(rows(rng, batch), [record(b * batch + i) for i in range(batch)])
                if b % 5 == 2:
                    answered.clear()
                    asked.set()
                    assert answered.wait(30), "the reader never read"
                    partial.append(seen[-1])  # the writer waits here: no append since that read
    finally:
        stop.set()
        thread.join()
    assert not errors and seen and all(n % batch == 0 for n in seen)
    assert partial == [3 * batch, 8 * batch, 13 * batch, 18 * batch]
    assert any(0 < n < appends * batch for n in seen), "no read saw the store part-way through the appends"


def test_deleting_a_segments_last_row_removes_its_file(store):
    rng = np.random.default_rng(5)
    with store.writing():
        store.append(rows(rng, 2), [record(i, "cam1") for i in range(2)])
        store.append(rows(rng, 2), [record(i, "cam2") for i in range(2)])
        removal = store.delete(RowFilter(cameras=("cam1",)))
        store.append(rows(rng, 1), [record(9, "cam3")])
    assert removal.segments == 1 and removal.bytes > 0
    assert len(list((store.directory / "segments").iterdir())) == 2


def test_a_crashed_writers_files_are_swept_by_the_next_writer(store):
    """What the writer marked pending and never registered goes; what it never made stays (see also
    tests/test_guarantees_store.py: a writer killed between its segment file and its registration)."""
    rng = np.random.default_rng(10)
    with store.writing():
        store.append(rows(rng, 2), [record(0), record(1)])
        _, unregistered = store.new_batch()  # a crop folder whose append never came
        (unregistered / "0.jpg").write_bytes(b"x")
    foreign = store.directory / "crops" / "abc"
    foreign.mkdir(parents=True)
    (foreign / "0.jpg").write_bytes(b"x")
    with store.writing():
        pass
    assert not unregistered.exists() and (foreign / "0.jpg").exists() and len(store) == 2


def test_a_failed_registration_leaves_no_segment_file(store, monkeypatch):
    rng = np.random.default_rng(11)
    monkeypatch.setattr(local, "_BUSY_MS", 50)
    with store.writing():
        with pytest.raises(ValueError):
            store.append(rows(rng, 2), [record(0)])  # one record for two rows
        with pytest.raises(ConfigError, match="source None"):  # checked before anything is written
            store.append(rows(rng, 1), [CropRecord(None, "cam1")])  # type: ignore[arg-type]
        holder = sqlite3.connect(store.directory / CATALOG, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the registration's transaction cannot start
        try:
            with pytest.raises(StoreError, match="database is locked"):
                store.append(rows(rng, 1), [record(0)])
        finally:
            holder.rollback()
            holder.close()
    assert len(store) == 0 and not any((store.directory / "segments").iterdir())


def test_open_and_create_refusals(tmp_path, store):
    with pytest.raises(InputFileNotFoundError, match="no tbps store"):
        LocalStore.open(tmp_path / "none")
    with pytest.raises(BundleError, match="fingerprint"):
        LocalStore.create(store.directory, fingerprint="e" * 64, num_slots=K, embed_dim=D)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty and not a tbps store"):
        LocalStore.create(foreign, fingerprint="f" * 64, num_slots=K, embed_dim=D)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CATALOG).write_bytes(b"not sqlite at all, but long enough to look like a header......")
    with pytest.raises(BundleError):
        LocalStore.open(bad)


def test_time_parsing():
    assert parse_time("2026-03-02T14:00:00Z") == parse_time("2026-03-02T14:00") == parse_time(
        "2026-03-02T15:00:00+01:00")
    assert parse_time("2026-03-02") == parse_time("2026-03-02T00:00:00Z")
    assert format_time(parse_time("2026-03-02T14:00:05.3Z")) == "2026-03-02T14:00:05.300Z"
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400 and parse_age("1.5h") == 5400
    for bad in ("yesterday", "", "14:00 tomorrow", "2026-13-02"):
        with pytest.raises(ConfigError, match="not a time"):
            parse_time(bad)
    for bad in ("30", "d", "-1d", "3y", "1e9d"):
        with pytest.raises(ConfigError, match="not an age"):
            parse_age(bad)
    with pytest.raises(ConfigError, match="must be after"):
        RowFilter(since=T0, until=T0)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_time_or_a_config_error(text):
    try:
        value = parse_time(text)
    except ConfigError:
        return
    assert np.isfinite(value)


def test_a_catalog_locked_past_the_busy_timeout_is_a_store_error(store, monkeypatch):
    """Another process holding the write transaction longer than the busy timeout: the store cannot answer
    now (a StoreError, which the CLI words as one error line), not a bad bundle."""
    from tbps_runtime.cli.ingest import gallery_group

    rng = np.random.default_rng(16)
    with store.writing():
        store.append(rows(rng, 2), [record(0), record(1, "cam2")])
    monkeypatch.setattr(local, "_BUSY_MS", 50)
    holder = sqlite3.connect(store.directory / CATALOG, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="database is locked"):
            with store.writing():
                store.save_progress({"cam1.mp4": "{}"})
        assert_user_error(run(gallery_group, ["delete", store.directory, "--camera", "cam2"]), "database is locked",
                          str(store.directory))
        assert len(store) == 2  # readers are not blocked by a writer
    finally:
        holder.rollback()
        holder.close()

