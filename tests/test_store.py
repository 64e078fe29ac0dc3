"""The store (tbps_runtime.gallery.store): appends, exact filtered Eq. 14 search, per-track results,
deletion and retention, concurrent readers, crash leftovers; and the row records (gallery.rows)."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError, UnsafePathError
from tbps_runtime.gallery.rows import CropRecord, RowFilter, format_time, parse_age, parse_time
from tbps_runtime.gallery.store import CATALOG, LocalStore
from tbps_runtime.ranking import naive_similarity, normalize_slots

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


def fill(store: LocalStore, rng, batches=((5, "cam1"), (4, "cam2"), (6, "cam1"))):
    """Append batches of rows; rows i get time T0 + i and track i // 2 (global numbering)."""
    embeddings, records, start = [], [], 0
    with store.writing():
        for count, camera in batches:
            e = rows(rng, count)
            r = [record(start + i, camera, track=(start + i) // 2) for i in range(count)]
            store.append(e, r)
            embeddings.append(e)
            records += r
            start += count
    return np.concatenate(embeddings), records


def expected_top(queries, embeddings, selected, k):
    """Rows ``selected`` ranked by naive Eq. 14, score desc then row asc."""
    scores = naive_similarity(queries, embeddings[selected])
    out = []
    for q in scores:
        order = sorted(range(len(selected)), key=lambda j: (-q[j], selected[j]))[:k]
        out.append([selected[j] for j in order])
    return out


def test_append_numbers_rows_and_search_equals_eq14_over_all_rows(store):
    rng = np.random.default_rng(0)
    embeddings, _ = fill(store, rng)
    assert len(store) == 15
    queries = rows(rng, 3)
    hits = store.search(queries, k=6)
    assert [[h.row for h in q] for q in hits] == expected_top(queries, embeddings, list(range(15)), 6)
    expected_scores = naive_similarity(queries, embeddings)
    for q, query_hits in enumerate(hits):
        for hit in query_hits:
            assert hit.score == pytest.approx(expected_scores[q, hit.row], abs=1e-5)
            assert hit.record.frame == hit.row and hit.record.box == (1.0, 2.0, 30.0, 90.0)


@pytest.mark.parametrize("row_filter, selected", [
    (RowFilter(cameras=("cam2",)), [5, 6, 7, 8]),
    (RowFilter(cameras=("cam1", "cam2")), list(range(15))),
    (RowFilter(since=T0 + 3, until=T0 + 7), [3, 4, 5, 6]),  # half-open
    (RowFilter(cameras=("cam1",), since=T0 + 3), [3, 4, 9, 10, 11, 12, 13, 14]),
    (RowFilter(tracks=(2, 6)), [4, 5, 12, 13]),
    (RowFilter(sources=("cam2.mp4",), tracks=(2,)), [5]),
    (RowFilter(cameras=("nowhere",)), []),
])
def test_filters_select_before_the_top_k(store, row_filter, selected):
    rng = np.random.default_rng(1)
    embeddings, _ = fill(store, rng)
    queries = rows(rng, 2)
    hits = store.search(queries, k=3, row_filter=row_filter)
    assert [[h.row for h in q] for q in hits] == (expected_top(queries, embeddings, selected, 3) if selected
                                                   else [[], []])


def test_per_track_returns_each_track_once_by_its_best_row(store):
    rng = np.random.default_rng(2)
    embeddings, records = fill(store, rng)
    queries = rows(rng, 2)
    scores = naive_similarity(queries, embeddings)
    hits = store.search(queries, k=4, per_track=True)
    for q, query_hits in enumerate(hits):
        best = {}  # track -> best row (score desc, then the lower row)
        for row, rec in enumerate(records):
            if rec.track not in best or (scores[q, row], -row) > (scores[q, best[rec.track]], -best[rec.track]):
                best[rec.track] = row
        ranked = sorted(best.values(), key=lambda r: (-scores[q, r], r))[:4]
        assert [h.row for h in query_hits] == ranked
        assert [h.track_rows for h in query_hits] == [sum(r.track == records[h.row].track for r in records)
                                                     for h in query_hits]


def test_rows_without_a_track_are_their_own_track(store):
    rng = np.random.default_rng(3)
    with store.writing():
        store.append(rows(rng, 3), [record(i, track=None) for i in range(3)])
    hits = store.search(rows(rng, 1), k=5, per_track=True)[0]
    assert sorted(h.row for h in hits) == [0, 1, 2] and all(h.track_rows == 1 for h in hits)


def test_min_score_drops_weak_hits(store):
    rng = np.random.default_rng(4)
    embeddings, _ = fill(store, rng)
    queries = embeddings[:1]  # row 0 scores K against itself
    hits = store.search(queries, k=15, min_score=K - 1e-4)[0]
    assert [h.row for h in hits] == [0] and hits[0].score == pytest.approx(K, abs=1e-5)


def test_delete_removes_rows_segments_and_crops_and_never_reuses_ids(store):
    rng = np.random.default_rng(5)
    with store.writing():
        batch, folder = store.new_batch()
        for i in range(2):
            (folder / f"{i}.jpg").write_bytes(b"x" * 10)
        store.append(rows(rng, 2), [CropRecord("a.mp4", "cam1", T0, 0.0, i, None, None, 7, f"{batch}/{i}.jpg")
                                    for i in range(2)], crops=batch)
        store.append(rows(rng, 2), [record(i, "cam2") for i in range(2)])
        removal = store.delete(RowFilter(cameras=("cam1",)))
        assert (removal.rows, removal.segments, removal.crops, removal.cameras) == (2, 1, 2, {"cam1": 2})
        assert not folder.exists()
        ids = store.append(rows(rng, 1), [record(9, "cam3")])
    assert ids.tolist() == [4] and len(store) == 3
    assert len(list((store.directory / "segments").iterdir())) == 2


def test_delete_part_of_a_segment_keeps_the_rest_searchable(store):
    rng = np.random.default_rng(6)
    embeddings, _ = fill(store, rng)
    with store.writing():
        assert store.delete(RowFilter(tracks=(0, 1))).rows == 4  # rows 0..3 of the first segment
    queries = rows(rng, 2)
    hits = store.search(queries, k=20)
    assert [[h.row for h in q] for q in hits] == expected_top(queries, embeddings, list(range(4, 15)), 20)


def test_prune_by_age_uses_the_time_seen_or_the_time_added(store):
    rng = np.random.default_rng(7)
    now = time.time()
    with store.writing():
        store.append(rows(rng, 3), [record(0, when=now - 40 * 86400), record(1, when=now - 10),
                                    CropRecord("x.mp4", "cam1", None, 0.0, 2)])
        removal = store.delete(older_than=parse_age("30d"))
    assert removal.rows == 1 and len(store) == 2  # the undated row was added just now: kept


def test_deleting_everything_needs_yes_and_nothing_is_refused(store):
    rng = np.random.default_rng(8)
    fill(store, rng)
    with store.writing():
        with pytest.raises(ConfigError, match="all 15 rows.*--yes"):
            store.delete(older_than=0.0)
        with pytest.raises(ConfigError, match="say what to delete"):
            store.delete(RowFilter())
        assert store.delete(older_than=0.0, dry_run=True, everything=True).rows == 15
        assert len(store) == 15
        assert store.delete(older_than=0.0, everything=True).rows == 15
    assert len(store) == 0 and store.search(rows(rng, 1), k=3) == [[]]


def test_a_reader_sees_whole_segments_while_a_writer_appends(store):
    """Searches running beside appends always see a multiple of the batch size: never half a segment."""
    rng = np.random.default_rng(9)
    batch, seen, errors = 7, [], []
    stop = threading.Event()

    def read() -> None:
        reader = LocalStore.open(store.directory)
        query = rows(np.random.default_rng(1), 1)
        while not stop.is_set():
            try:
                seen.append(len(reader.search(query, k=1000)[0]))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    with store.writing():
        for b in range(20):
            store.append(rows(rng, batch), [record(b * batch + i) for i in range(batch)])
    stop.set()
    thread.join()
    assert not errors and seen and all(n % batch == 0 for n in seen)


def test_one_writer_at_a_time(store):
    """A second writer (another thread here; another process alike: the lock is a file lock) is refused."""
    other, refused = LocalStore.open(store.directory), []

    def write() -> None:
        try:
            with other.writing():
                pass
        except OutputError as e:
            refused.append(str(e))

    with store.writing():
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    assert refused and "store.sqlite" in refused[0]


def test_a_crashed_writers_files_are_swept_by_the_next_writer(store):
    rng = np.random.default_rng(10)
    with store.writing():
        store.append(rows(rng, 2), [record(0), record(1)])
    stray_segment = store.directory / "segments" / "0123.npy"
    stray_segment.write_bytes(b"half")
    stray_crops = store.directory / "crops" / "abc"
    stray_crops.mkdir(parents=True)
    (stray_crops / "0.jpg").write_bytes(b"x")
    with store.writing():
        pass
    assert not stray_segment.exists() and not stray_crops.exists() and len(store) == 2


def test_a_failed_registration_leaves_no_segment_file(store, monkeypatch):
    rng = np.random.default_rng(11)
    with store.writing():
        with pytest.raises(ValueError):
            store.append(rows(rng, 2), [record(0)])  # one record for two rows
        with pytest.raises(sqlite3.IntegrityError):  # a NOT NULL column: the transaction fails
            store.append(rows(rng, 1), [CropRecord(None, "cam1")])  # type: ignore[arg-type]
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


def test_crop_names_from_the_catalog_stay_inside_the_store(store):
    for name in ("/etc/passwd", "../outside.jpg", "crops/../../x.jpg"):
        with pytest.raises(UnsafePathError):
            store.crop_path(name)


def test_info_summarises_cameras_and_time(store):
    rng = np.random.default_rng(12)
    fill(store, rng)
    info = store.info()
    assert (info["rows"], info["segments"], info["tracks"], info["sources"]) == (15, 3, 8, 2)
    assert info["first"] == format_time(T0) and info["last"] == format_time(T0 + 14)
    assert [(c["camera"], c["rows"]) for c in info["cameras"]] == [("cam1", 11), ("cam2", 4)]


def test_hostile_camera_names_are_data_not_sql(store):
    rng = np.random.default_rng(13)
    evil = "x' OR 1=1 --"
    with store.writing():
        store.append(rows(rng, 2), [record(0, camera=evil), record(1, camera="cam1")])
    assert [h.record.camera for h in store.search(rows(rng, 1), k=5, row_filter=RowFilter(cameras=(evil,)))[0]] \
        == [evil]
    assert store.search(rows(rng, 1), k=5, row_filter=RowFilter(cameras=("x",)))[0] == []


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


def test_a_hits_json_keeps_the_eq14_score_apart_from_the_detectors(store):
    rng = np.random.default_rng(14)
    with store.writing():
        store.append(rows(rng, 1), [record(0)])
    (hit,) = store.search(rows(rng, 1), k=1)[0]
    document = hit.to_json()
    assert document["score"] == round(hit.score, 6) and document["detector_score"] == 0.9
    assert document["time_iso"] == "2026-03-02T14:00:00.000Z" and document["camera"] == "cam1"


def test_deleting_a_source_forgets_its_ingest_progress(store):
    rng = np.random.default_rng(15)
    with store.writing():
        store.append(rows(rng, 1), [record(0)], progress={"cam1.mp4": '{"frame": 3}', "cam2.mp4": '{"frame": 5}'})
        store.delete(RowFilter(sources=("cam1.mp4",)), everything=True)
    assert store.progress("cam1.mp4") is None and store.progress("cam2.mp4") == '{"frame": 5}'


def test_cameras_lists_the_cameras_with_rows(store):
    rng = np.random.default_rng(16)
    fill(store, rng)
    assert store.cameras() == ["cam1", "cam2"]
    with store.writing():
        store.delete(RowFilter(cameras=("cam2",)))
    assert store.cameras() == ["cam1"]
