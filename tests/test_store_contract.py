"""The Store contract (tbps_runtime.store.base.Store), run against every implementation: LocalStore in
tmp_path and MilvusStore on milvus-lite (skipped, with the reason, when it cannot start). Appends, exact
filtered Eq. 14 search, per-track results, ties, deletion and retention, progress, cameras, iter_rows,
info, close; then one store against the other on random rows (the same hits, ties, deletions, records and
info). What only one implementation promises is tested beside it: tests/test_store.py (segments, SQLite,
concurrent readers) and tests/test_milvus_store.py (expressions, interrupted appends, addresses)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import store_rows
import pytest

from tbps_runtime.climessages import in_flags
from tbps_runtime.errors import BundleError, ConfigError, DataError, OutputError, UnsafePathError
from tbps_runtime.ranking import naive_similarity, normalize_slots, similarity
from tbps_runtime.store import milvus as milvus_module
from tbps_runtime.store.base import Store
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.milvus import MilvusStore
from tbps_runtime.store.rows import CropRecord, RowFilter, format_time, parse_age, parse_time

K, D = 3, 4
T0 = parse_time("2026-03-02T14:00:00Z")
LOCK_FILES = {"local": "store.sqlite", "milvus": ".milvus-writer"}  # what the second writer's refusal names
_collections = (f"c{n}" for n in itertools.count())


# ---- the stores ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One milvus-lite database for the module (it starts a server per file); each store is a collection."""
    try:
        import milvus_lite  # noqa: F401
        from pymilvus import MilvusClient
    except ImportError as e:
        pytest.skip(f"the Milvus store needs pymilvus and milvus-lite: {e}")
    path = str(tmp_path_factory.mktemp("milvus") / "stores.db")
    try:
        MilvusClient(path).close()
    except Exception as e:  # noqa: BLE001 - any failure to start is a reason to skip
        pytest.skip(f"milvus-lite cannot start here: {e}")
    return path


@pytest.fixture(params=["local", "milvus"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def new_store(kind, tmp_path, request):
    """A factory of empty stores of ``kind`` (closed, and a Milvus store's collections dropped, afterwards)."""
    made = []

    def make(fingerprint: str = "f" * 64, num_slots: int = K, embed_dim: int = D) -> Store:
        directory = tmp_path / f"store{len(made)}"
        if kind == "local":
            store = LocalStore.create(directory, fingerprint=fingerprint, num_slots=num_slots, embed_dim=embed_dim)
        else:
            store = MilvusStore.create(request.getfixturevalue("lite"), next(_collections), directory,
                                       fingerprint=fingerprint, num_slots=num_slots, embed_dim=embed_dim)
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, MilvusStore):
            for name in (store.collection, store.collection + "__meta"):
                store.client.drop_collection(name)
        store.close()


@pytest.fixture
def store(new_store) -> Store:
    return new_store()


def reopen(store: Store) -> Store:
    """Another handle of the same store, as another process would open it."""
    if isinstance(store, MilvusStore):
        return MilvusStore.open(store.uri, store.collection, store.directory)
    return LocalStore.open(store.directory)


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return normalize_slots(rng.normal(size=(n, K, D)))


def record(i: int, camera: str = "cam1", track: int | None = None, when: float | None = None) -> CropRecord:
    return CropRecord(source=f"{camera}.mp4", camera=camera, time=T0 + i if when is None else when, offset=float(i),
                      frame=i, box=(1.0, 2.0, 30.0, 90.0), score=0.9, track=track, crop=None)


def fill(store: Store, rng, batches=((5, "cam1"), (4, "cam2"), (6, "cam1"))):
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


# ---- the protocol -------------------------------------------------------------------------------------

def test_every_store_is_a_store(store):
    assert isinstance(store, Store) and store.slot_shape == (K, D) and len(store) == 0
    assert store.fingerprint == "f" * 64 and store.bundle is None and store.info()["store"] == store.location


def test_append_numbers_rows_and_search_equals_eq14_over_all_rows(store):
    rng = np.random.default_rng(0)
    embeddings, _ = fill(store, rng)
    assert len(store) == 15
    queries = rows(rng, 3)
    hits = store.search(queries, k=6)
    assert [[h.row for h in q] for q in hits] == expected_top(queries, embeddings, list(range(15)), 6)
    expected_scores = naive_similarity(queries, embeddings)
    for q, query_hits in enumerate(hits):
        assert [h.rank for h in query_hits] == list(range(1, 7))
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
    assert all(h.track_rows is None for h in store.search(queries, k=4)[0])


def test_rows_without_a_track_are_their_own_track(store):
    rng = np.random.default_rng(3)
    with store.writing():
        store.append(rows(rng, 3), [record(i, track=None) for i in range(3)])
    hits = store.search(rows(rng, 1), k=5, per_track=True)[0]
    assert sorted(h.row for h in hits) == [0, 1, 2] and all(h.track_rows == 1 for h in hits)


def test_ties_go_to_the_lower_row(store):
    """Rows 1, 5, 9, ... match the one-hot query in all 3 slots, the others in 2: equal scores by the dozen."""
    embeddings = np.zeros((40, K, D), np.float32)
    for i in range(40):
        embeddings[i, range(K), [0, 0, 0] if i % 4 == 1 else [0, 0, 1 + i % 3]] = 1.0
    with store.writing():
        store.append(embeddings[:25], [record(i, track=i // 10) for i in range(25)])
        store.append(embeddings[25:], [record(i, track=None if i % 2 else i // 10) for i in range(25, 40)])
    query = np.zeros((1, K, D), np.float32)
    query[0, :, 0] = 1.0
    threes = list(range(1, 40, 4))
    assert [h.row for h in store.search(query, 4)[0]] == threes[:4]
    assert [h.row for h in store.search(query, 12)[0]] == threes + [0, 2]
    per_track = store.search(query, 6, per_track=True)[0]
    assert [h.row for h in per_track] == [1, 13, 21, 25, 29, 33]
    assert [h.score for h in per_track] == pytest.approx([3.0] * 6)


def test_min_score_drops_weak_hits(store):
    rng = np.random.default_rng(4)
    embeddings, _ = fill(store, rng)
    queries = embeddings[:1]  # row 0 scores K against itself
    hits = store.search(queries, k=15, min_score=K - 1e-4)[0]
    assert [h.row for h in hits] == [0] and hits[0].score == pytest.approx(K, abs=1e-5)


def test_sources_lists_the_sources_with_rows(store):
    assert store.sources() == []
    fill(store, np.random.default_rng(3))
    assert store.sources() == ["cam1.mp4", "cam2.mp4"]
    with store.writing():
        store.delete(RowFilter(cameras=("cam2",)))
    assert reopen(store).sources() == ["cam1.mp4"]


def test_a_calibration_is_recorded_and_read_back_by_another_handle(store):
    """tbps calibrate --gallery: the record lives in the store's meta, for every reader (both stores)."""
    from tbps_runtime.store.calibration import calibrate_store

    rng = np.random.default_rng(9)
    fill(store, rng)
    assert store.calibration() is None
    captions = rows(rng, 7)  # (7, K, d): 7 x 15 impostor scores
    made = calibrate_store(store, captions, store.fingerprint, "test", 0.1)
    again = reopen(store)
    assert again.calibration() == made and made.rows_at_calibration == 15 and made.rows == 15
    scores = similarity(captions, store.embeddings(np.arange(15))).reshape(-1)
    assert (scores >= np.float32(made.value)).sum() == 10  # 10 % of 105 pairs: 10 may pass, not 11
    with pytest.raises(BundleError, match="malformed calibration"):
        with store.writing():
            store.record_calibration('{"value": 1}')
    assert reopen(store).calibration() == made  # a refused record leaves the old one


def test_search_checks_its_arguments(store):
    rng = np.random.default_rng(5)
    fill(store, rng)
    with pytest.raises(ConfigError, match="k must be at least 1"):
        store.search(rows(rng, 1), k=0)
    with pytest.raises(BundleError, match="query with the bundle"):
        store.search(np.zeros((1, K, D + 1), np.float32))
    bad = rows(rng, 1)
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        store.search(bad)
    assert store.search(np.zeros((0, K, D), np.float32)) == []
    assert store.search(rows(rng, 2) * 7.0, k=2)[0][0].score <= K + 1e-4  # queries are normalised here


def test_append_checks_its_arguments(store):
    rng = np.random.default_rng(6)
    with store.writing():
        with pytest.raises(ValueError, match="one record per row"):
            store.append(rows(rng, 2), [record(0)])
        with pytest.raises(ValueError, match="one record per row"):
            store.append(np.zeros((1, K + 1, D), np.float32), [record(0)])
        bad = rows(rng, 1)
        bad[0, 1, 2] = np.inf
        with pytest.raises(ValueError, match="NaN or inf"):
            store.append(bad, [record(0)])
        assert store.append(np.zeros((0, K, D), np.float32), []).tolist() == []
        assert store.append(rows(rng, 2), [record(0), record(1)]).tolist() == [0, 1]
    assert len(store) == 2 and store.info()["segments"] == 1


def test_records_embeddings_and_max_track(store):
    rng = np.random.default_rng(7)
    embeddings, records = fill(store, rng)
    found = store.records([14, 0, 7, 99])
    assert found == {0: records[0], 7: records[7], 14: records[14]}
    np.testing.assert_allclose(store.embeddings([14, 0, 7]), embeddings[[14, 0, 7]], atol=1e-7)
    assert store.embeddings([]).shape == (0, K, D)
    with pytest.raises(ConfigError, match="no row 99"):
        store.embeddings([0, 99])
    assert store.max_track() == 7
    with store.writing():
        store.delete(RowFilter(tracks=(7,)))
    assert store.max_track() == 6


def test_iter_rows_gives_every_row_in_id_order(store):
    rng = np.random.default_rng(8)
    _, records = fill(store, rng)
    chunks = list(store.iter_rows(batch=4))
    assert [len(ids) for ids, _ in chunks] == [4, 4, 4, 3]
    assert np.concatenate([ids for ids, _ in chunks]).tolist() == list(range(15))
    assert [r for _, chunk in chunks for r in chunk] == records
    with store.writing():
        store.delete(RowFilter(cameras=("cam2",)))  # rows 5..8: the middle append
    ids = np.concatenate([ids for ids, _ in store.iter_rows(batch=100)])
    assert ids.tolist() == [0, 1, 2, 3, 4, *range(9, 15)] and ids.dtype == np.int64


def test_iter_rows_of_an_empty_store(store):
    assert list(store.iter_rows()) == []


def test_progress_is_saved_with_rows_or_alone(store):
    rng = np.random.default_rng(9)
    assert store.progress("cam1.mp4") is None and store.all_progress() == {}
    with store.writing():
        store.append(rows(rng, 2), [record(0), record(1)], progress={"cam1.mp4": '{"frame": 3}'})
        store.save_progress({"cam2.mp4": '{"frame": 0}', 'odd "key" \\': "state"})
        store.save_progress({"cam1.mp4": '{"frame": 9}'})  # replaces
        store.append(np.zeros((0, K, D), np.float32), [], progress={"cam3.mp4": "x"})  # no rows: progress only
    assert store.all_progress() == {"cam1.mp4": '{"frame": 9}', "cam2.mp4": '{"frame": 0}', 'odd "key" \\': "state",
                                    "cam3.mp4": "x"}
    assert store.progress('odd "key" \\') == "state"
    assert len(store) == 2 and store.info()["segments"] == 1  # saving progress adds no rows and no append


def test_delete_removes_rows_batches_and_crops_and_never_reuses_ids(store):
    rng = np.random.default_rng(10)
    with store.writing():
        batch, folder = store.new_batch()
        for i in range(2):
            (folder / f"{i}.jpg").write_bytes(b"x" * 10)
        store.append(rows(rng, 2), [CropRecord("a.mp4", "cam1", T0, 0.0, i, None, None, 7, f"{batch}/{i}.jpg")
                                    for i in range(2)], crops=batch)
        store.append(rows(rng, 2), [record(i, "cam2") for i in range(2)])
        removal = store.delete(RowFilter(cameras=("cam1",)))
        assert (removal.rows, removal.segments, removal.crops, removal.cameras) == (2, 1, 2, {"cam1": 2})
        assert removal.bytes >= 20 and not folder.exists()
        ids = store.append(rows(rng, 1), [record(9, "cam3")])
    assert ids.tolist() == [4] and len(store) == 3 and store.info()["segments"] == 2


def test_deleting_part_of_a_batch_removes_only_those_crops(store):
    rng = np.random.default_rng(11)
    with store.writing():
        batch, folder = store.new_batch()
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"x" * 10)
        store.append(rows(rng, 3), [CropRecord("a.mp4", "cam1", T0, 0.0, i, None, None, i, f"{batch}/{i}.jpg")
                                    for i in range(3)], crops=batch)
        removal = store.delete(RowFilter(tracks=(1,)))
    assert (removal.rows, removal.segments, removal.crops, removal.bytes) == (1, 0, 1, 10)
    assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "2.jpg"]
    assert store.crop_path(store.records([2])[2].crop) == folder / "2.jpg"


def test_delete_part_of_a_batch_keeps_the_rest_searchable(store):
    rng = np.random.default_rng(12)
    embeddings, _ = fill(store, rng)
    with store.writing():
        assert store.delete(RowFilter(tracks=(0, 1))).rows == 4  # rows 0..3 of the first append
    queries = rows(rng, 2)
    hits = store.search(queries, k=20)
    assert [[h.row for h in q] for q in hits] == expected_top(queries, embeddings, list(range(4, 15)), 20)


def test_prune_by_age_uses_the_time_seen_or_the_time_added(store):
    rng = np.random.default_rng(13)
    now = time.time()
    with store.writing():
        store.append(rows(rng, 3), [record(0, when=now - 40 * 86400), record(1, when=now - 10),
                                    CropRecord("x.mp4", "cam1", None, 0.0, 2)])
        removal = store.delete(older_than=parse_age("30d"))
    assert removal.rows == 1 and len(store) == 2  # the undated row was added just now: kept


def test_deleting_everything_needs_everything_and_nothing_is_refused(store):
    rng = np.random.default_rng(14)
    fill(store, rng)
    with store.writing():
        with pytest.raises(ConfigError, match="all 15 rows of .*: removing every row needs everything=True") \
                as refused:
            store.delete(older_than=0.0)
        assert refused.value.code == "delete_everything_unconfirmed" and refused.value.facts["rows"] == 15
        assert "--" not in str(refused.value) and "all 15 rows" in in_flags(refused.value)
        assert in_flags(refused.value).endswith("add --yes to do it")
        for unsaid in (RowFilter(), None):
            with pytest.raises(ConfigError, match="say what to delete") as refused:
                store.delete(unsaid)
            assert refused.value.code == "delete_without_condition" and "--" not in str(refused.value)
        assert store.delete(older_than=0.0, dry_run=True).rows == 15  # a dry run counts every row, unconfirmed
        assert store.delete(older_than=0.0, dry_run=True, everything=True).rows == 15
        assert len(store) == 15
        assert store.delete(older_than=0.0, everything=True).rows == 15
    assert len(store) == 0 and store.search(rows(rng, 1), k=3) == [[]]
    assert store.info()["segments"] == 0 and store.cameras() == []


def test_deleting_a_source_forgets_its_ingest_progress(store):
    rng = np.random.default_rng(15)
    with store.writing():
        store.append(rows(rng, 1), [record(0)], progress={"cam1.mp4": '{"frame": 3}', "cam2.mp4": '{"frame": 5}'})
        store.delete(RowFilter(sources=("cam1.mp4",)), everything=True)
    assert store.progress("cam1.mp4") is None and store.progress("cam2.mp4") == '{"frame": 5}'


def test_one_writer_at_a_time(store, kind):
    """A second writer (another thread here; another process alike: the lock is a file lock) is refused."""
    other, refused = reopen(store), []

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
    other.close()
    assert refused and LOCK_FILES[kind] in refused[0]


def test_a_crop_folder_no_append_names_is_swept_by_the_next_writer(store):
    """Only a folder a writer made (new_batch) and never registered: a folder it did not make stays."""
    rng = np.random.default_rng(16)
    with store.writing():
        store.append(rows(rng, 2), [record(0), record(1)])
        _, stray = store.new_batch()
        (stray / "0.jpg").write_bytes(b"x")
    foreign = store.directory / "crops" / "abc"
    foreign.mkdir()
    with store.writing():
        pass
    assert not stray.exists() and foreign.is_dir() and len(store) == 2


def test_crop_names_from_the_catalog_stay_inside_the_store(store):
    for name in ("/etc/passwd", "../outside.jpg", "crops/../../x.jpg"):
        with pytest.raises(UnsafePathError):
            store.crop_path(name)


def test_info_summarises_cameras_and_time(store):
    rng = np.random.default_rng(17)
    fill(store, rng)
    info = store.info()
    assert list(info) == ["store", "fingerprint", "bundle", "rows", "tracks", "sources", "segments", "first", "last",
                          "undated_rows", "cameras", "bytes", "num_slots", "embed_dim"]
    assert (info["rows"], info["segments"], info["tracks"], info["sources"]) == (15, 3, 8, 2)
    assert info["first"] == format_time(T0) and info["last"] == format_time(T0 + 14)
    assert [(c["camera"], c["rows"]) for c in info["cameras"]] == [("cam1", 11), ("cam2", 4)]
    assert info["cameras"][1] == {"camera": "cam2", "rows": 4, "tracks": 3, "first": format_time(T0 + 5),
                                  "last": format_time(T0 + 8)}
    assert (info["store"], info["num_slots"], info["embed_dim"], info["undated_rows"]) == (store.location, K, D, 0)


def test_info_of_an_empty_store(store):
    info = store.info()
    assert (info["rows"], info["tracks"], info["sources"], info["segments"], info["first"], info["last"],
            info["undated_rows"], info["cameras"]) == (0, 0, 0, 0, None, None, 0, [])


def test_hostile_camera_names_are_data_not_queries(store):
    rng = np.random.default_rng(18)
    evil = "x' OR 1=1 --"
    with store.writing():
        store.append(rows(rng, 2), [record(0, camera=evil), record(1, camera="cam1")])
    assert [h.record.camera for h in store.search(rows(rng, 1), k=5, row_filter=RowFilter(cameras=(evil,)))[0]] \
        == [evil]
    assert store.search(rows(rng, 1), k=5, row_filter=RowFilter(cameras=("x",)))[0] == []


def test_a_hits_json_keeps_the_eq14_score_apart_from_the_detectors(store):
    rng = np.random.default_rng(19)
    with store.writing():
        store.append(rows(rng, 1), [record(0)])
    (hit,) = store.search(rows(rng, 1), k=1)[0]
    document = hit.to_json()
    assert document["score"] == round(hit.score, 6) and document["detector_score"] == 0.9
    assert document["time_iso"] == "2026-03-02T14:00:00.000Z" and document["camera"] == "cam1"
    assert document["row"] == hit.row == 0


def test_cameras_lists_the_cameras_with_rows(store):
    rng = np.random.default_rng(20)
    fill(store, rng)
    assert store.cameras() == ["cam1", "cam2"]
    with store.writing():
        store.delete(RowFilter(cameras=("cam2",)))
    assert store.cameras() == ["cam1"]


def test_the_bundle_check(new_store):
    store = new_store(fingerprint="a" * 64)
    store.check_bundle("a" * 64)
    with pytest.raises(BundleError, match="fingerprint"):
        store.check_bundle("b" * 64)


def test_a_store_is_a_context_manager_that_closes(store):
    rng = np.random.default_rng(21)
    fill(store, rng)
    reopened = reopen(store)
    with reopened as entered:
        assert entered is reopened and len(entered) == 15
    reopened.close()  # closing twice is harmless
    assert len(store) == 15  # another handle of the same store is untouched


# ---- one store against the other --------------------------------------------------------------------------

HOSTILE, CAMERAS = store_rows.HOSTILE, store_rows.CAMERAS
WIDE = 8  # d of the random rows below


def random_rows(n: int, seed: int, now: float | None = None) -> tuple[np.ndarray, list[CropRecord]]:
    """This module's rows: see store_rows.random_rows."""
    return store_rows.random_rows(n, seed, K, WIDE, T0, now)


def make_pair(tmp_path, lite, embeddings, records, batches=3, crops=False):
    """The same rows appended to a LocalStore and a MilvusStore in the same ``batches`` appends; with
    ``crops`` each append gets a crop folder holding one small file per row."""
    dim = embeddings.shape[2]
    local = LocalStore.create(tmp_path / "local", fingerprint="fp", num_slots=K, embed_dim=dim)
    milvus = MilvusStore.create(lite, next(_collections), tmp_path / "milvus", fingerprint="fp", num_slots=K,
                                embed_dim=dim)
    cuts = np.linspace(0, len(records), batches + 1).astype(int)
    for store in (local, milvus):
        with store.writing():
            for start, end in zip(cuts[:-1], cuts[1:]):
                part = records[start:end]
                name = None
                if crops:
                    name, folder = store.new_batch()
                    for i in range(start, end):
                        (folder / f"{i}.jpg").write_bytes(b"j" * (i + 1))
                    part = [CropRecord(**{**r.__dict__, "crop": f"{name}/{i}.jpg"}) for i, r in
                            zip(range(start, end), part)]
                store.append(embeddings[start:end], part, crops=name)
    return local, milvus


@pytest.fixture(scope="module")
def pair(tmp_path_factory, lite):
    embeddings, records = random_rows(300, seed=0)
    local, milvus = make_pair(tmp_path_factory.mktemp("pair"), lite, embeddings, records)
    yield local, milvus
    milvus.close()


def assert_same(expected, got):
    """The hits agree: ranks, rows, track counts and records exactly (crop files by name: each store
    names its own crop folders), scores to 1e-5."""
    def key(hit):
        crop = hit.record.crop and hit.record.crop.rsplit("/", 1)[-1]
        return hit.rank, hit.row, hit.track_rows, CropRecord(**{**hit.record.__dict__, "crop": crop})

    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        assert [key(h) for h in have] == [key(h) for h in want]
        np.testing.assert_allclose([h.score for h in have], [h.score for h in want], atol=1e-5)


def same_info(local, milvus):
    skip = {"store", "bytes"}
    return {k: v for k, v in milvus.info().items() if k not in skip} == \
        {k: v for k, v in local.info().items() if k not in skip}


FILTERS = {
    "none": RowFilter(),
    "camera": RowFilter(cameras=("cam1",)),
    "cameras": RowFilter(cameras=("cam1", "cam3")),
    "hostile camera": RowFilter(cameras=(HOSTILE,)),
    "source": RowFilter(sources=("s0",)),
    "since": RowFilter(since=T0 + 1200),
    "until": RowFilter(until=T0 + 1800),
    "since and until": RowFilter(since=T0 + 600, until=T0 + 2400),
    "tracks": RowFilter(tracks=(1, 2, 3, 5, 8)),
    "combined": RowFilter(cameras=("cam2", "cam3"), sources=("s1", "s2"), tracks=tuple(range(0, 40, 2)),
                          since=T0 + 300, until=T0 + 3000),
    "nothing": RowFilter(cameras=("nowhere",)),
}


@pytest.mark.parametrize("name", FILTERS)
def test_search_matches_the_local_store(pair, name):
    local, milvus = pair
    queries = np.random.default_rng(1).normal(size=(4, K, WIDE))  # not normalised: both stores normalise
    for per_track, k in itertools.product((False, True), (1, 7, 60, 400)):
        want = local.search(queries, k, row_filter=FILTERS[name], per_track=per_track)
        assert_same(want, milvus.search(queries, k, row_filter=FILTERS[name], per_track=per_track))
    if name == "nothing":
        assert want == [[], [], [], []]
    threshold = 0.5
    want = local.search(queries, 20, row_filter=FILTERS[name], min_score=threshold)
    assert_same(want, milvus.search(queries, 20, row_filter=FILTERS[name], min_score=threshold))


def test_records_embeddings_info_progress_cameras_and_rows_match(pair):
    local, milvus = pair
    rows_ = [0, 5, 17, 299, 1000]
    assert milvus.records(rows_) == local.records(rows_) and 1000 not in milvus.records(rows_)
    np.testing.assert_array_equal(milvus.embeddings([299, 0, 17]), local.embeddings([299, 0, 17]))
    with pytest.raises(ConfigError, match="no row 1000"):
        milvus.embeddings([0, 1000])
    assert len(milvus) == len(local) == 300 and milvus.max_track() == local.max_track()
    assert same_info(local, milvus)
    assert milvus.info()["store"] == milvus.location and milvus.info()["segments"] == 3
    assert milvus.progress("nothing saved") is None and milvus.all_progress() == local.all_progress() == {}
    assert milvus.cameras() == local.cameras() == sorted(CAMERAS)
    for batch in (1, 64, 1000):
        mine, theirs = list(milvus.iter_rows(batch)), list(local.iter_rows(batch))
        assert [ids.tolist() for ids, _ in mine] == [ids.tolist() for ids, _ in theirs]
        assert [records for _, records in mine] == [records for _, records in theirs]


def one_hot_rows() -> tuple[np.ndarray, list[CropRecord]]:
    """60 rows whose slots are one-hot (Eq. 14 against a one-hot query is an exact integer): rows
    1, 5, 9, ... (i % 4 == 1) match the query (0, 0, 0) in all 3 slots, the others in 2. Track i // 10,
    none for rows 9, 19, ..., 59."""
    hot = [(0, 0, 0) if i % 4 == 1 else (0, 0, 1 + i % 7) for i in range(60)]
    embeddings = np.zeros((60, K, WIDE), np.float32)
    for i, positions in enumerate(hot):
        embeddings[i, range(K), positions] = 1.0
    records = [CropRecord(source="s", camera="cam", time=T0 + i, track=None if i % 10 == 9 else i // 10)
               for i in range(60)]
    return embeddings, records


def test_ties_go_to_the_lower_row_like_the_local_store(tmp_path, lite, monkeypatch):
    embeddings, records = one_hot_rows()
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=2)
    query = np.zeros((1, K, WIDE), np.float32)
    query[0, :, 0] = 1.0
    threes = list(range(1, 60, 4))  # 15 rows scoring 3: more than k=5 plus the fetch margin
    hits = milvus.search(query, 5)[0]
    assert [h.row for h in hits] == threes[:5] and [h.score for h in hits] == [3.0] * 5
    hits = milvus.search(query, 20)[0]
    assert [h.row for h in hits] == threes + [0, 2, 3, 4, 6]
    # Per track: the best row of each track (the lowest of its 3s), then rows without a track count alone.
    hits = milvus.search(query, 12, per_track=True)[0]
    assert [h.row for h in hits] == [1, 9, 13, 21, 29, 33, 41, 49, 53, 19, 39, 59]
    assert [h.track_rows for h in hits] == [9, 1, 9, 9, 1, 9, 9, 1, 9, 1, 1, 1]
    assert [h.score for h in hits] == [3.0] * 9 + [2.0] * 3
    for k, per_track in itertools.product((1, 5, 16, 70), (False, True)):
        assert_same(local.search(query, k, per_track=per_track), milvus.search(query, k, per_track=per_track))
    # Fetching 4k rows first, the 48 best rows hold only 11 tracks: the store must fetch more.
    monkeypatch.setattr(milvus_module, "_TRACK_FETCH", 0)
    hits = milvus.search(query, 12, per_track=True)[0]
    assert [h.row for h in hits] == [1, 9, 13, 21, 29, 33, 41, 49, 53, 19, 39, 59]
    # A server that returns the highest row ids among equal scores: re-sorting and fetching past the ties.
    real_search = milvus.client.search

    def search_ties_reversed(collection, *, data, limit, **kwargs):
        found = real_search(collection, data=data, limit=100, **kwargs)  # every row of this store
        return [sorted(hits, key=lambda h: (-h["distance"], -h["id"]))[:limit] for hits in found]

    monkeypatch.setattr(milvus.client, "search", search_ties_reversed)
    for k, per_track in itertools.product((1, 5, 10, 16, 70), (False, True)):
        assert_same(local.search(query, k, per_track=per_track), milvus.search(query, k, per_track=per_track))
    # Past Milvus's topk limit the store scores the selected rows in numpy: the same answers.
    monkeypatch.setattr(milvus_module, "TOPK_LIMIT", 12)
    for k, per_track in itertools.product((1, 5, 16, 70), (False, True)):
        for row_filter in (RowFilter(), RowFilter(tracks=(0, 2)), RowFilter(until=T0 + 30)):
            assert_same(local.search(query, k, row_filter=row_filter, per_track=per_track),
                        milvus.search(query, k, row_filter=row_filter, per_track=per_track))
    milvus.close()


def test_delete_matches_the_local_store(tmp_path, lite):
    now = time.time()
    embeddings, records = random_rows(240, seed=3, now=now)
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=4, crops=True)
    queries = np.random.default_rng(4).normal(size=(3, K, WIDE))
    steps = [dict(row_filter=RowFilter(cameras=("cam2",))),
             dict(older_than=86_400.0),  # 10 days old goes, 1 hour and undated (added now) stay
             dict(row_filter=RowFilter(tracks=tuple(range(0, 40, 3)), sources=("s1",))),
             dict(row_filter=RowFilter(cameras=("cam1", HOSTILE), since=now - 7200), older_than=60.0)]
    for step in steps:
        dry = milvus.delete(dry_run=True, **step)
        with local.writing(), milvus.writing():
            want, got = local.delete(**step), milvus.delete(**step)
        assert got.rows > 0 and (got.rows, got.cameras) == (want.rows, want.cameras) == (dry.rows, dry.cameras)
        assert (got.segments, got.crops) == (want.segments, want.crops)
        assert len(milvus) == len(local)
        assert same_info(local, milvus), "each append's summary follows its deletions"
        assert milvus.cameras() == local.cameras()
        for per_track in (False, True):
            assert_same(local.search(queries, 15, per_track=per_track),
                        milvus.search(queries, 15, per_track=per_track))
    with milvus.writing():
        with pytest.raises(ConfigError, match="would remove all"):
            milvus.delete(older_than=-1e6)  # a cutoff in the future: every row
        assert milvus.delete(older_than=-1e6, everything=True, dry_run=True).rows == len(milvus)
        with pytest.raises(ConfigError, match="say what to delete"):
            milvus.delete()
    assert len(milvus) == len(local) > 0
    with local.writing(), milvus.writing():
        want, got = local.delete(older_than=-1e6, everything=True), milvus.delete(older_than=-1e6, everything=True)
    assert (got.rows, got.cameras, got.segments, got.crops) == (want.rows, want.cameras, want.segments, want.crops)
    assert len(milvus) == 0 and milvus.search(queries, 5) == [[], [], []] and milvus.info()["segments"] == 0
    assert not any((tmp_path / "milvus" / "crops").iterdir()), "emptied appends take their crop folders along"
    milvus.close()


def test_hostile_names_select_only_themselves(tmp_path, lite):
    names = [HOSTILE, 'a\\b', "it's", 'two  spaces', '"', 'ünï "q" \\"', "cam"]  # no control character: a name
    embeddings = normalize_slots(np.random.default_rng(5).normal(size=(len(names) * 3, K, WIDE)))
    records = [CropRecord(source=names[i % len(names)], camera=names[i % len(names)], time=T0 + i)
               for i in range(len(embeddings))]
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=1)
    query = embeddings[:1]
    for name in names:
        for field in ("cameras", "sources"):
            hits = milvus.search(query, 50, row_filter=RowFilter(**{field: (name,)}))[0]
            assert sorted(h.row for h in hits) == [i for i in range(len(records)) if records[i].camera == name]
    assert milvus.cameras() == local.cameras() == sorted(names) and same_info(local, milvus)
    with milvus.writing():
        with pytest.raises(ConfigError, match="is not in the store"):  # a name no row has is refused
            milvus.delete(RowFilter(cameras=('cam" or camera != "',)), dry_run=True)
        # ...and in a filter expression it stays one string: it selects nothing
        assert milvus.search(query, 50, row_filter=RowFilter(cameras=('cam" or camera != "',))) == [[]]
        assert milvus.delete(RowFilter(cameras=("cam",)), dry_run=True).rows == 3
        assert milvus.delete(RowFilter(cameras=(HOSTILE,))).cameras == {HOSTILE: 3}
    assert len(milvus) == len(records) - 3
    # Without a row of that name, the hostile name selects nothing at all.
    assert milvus.search(query, 50, row_filter=RowFilter(cameras=(HOSTILE,))) == [[]]
    with milvus.writing():
        milvus.append(embeddings[:1], [records[0]], progress={'key "\' \\': "state 1"})
    assert milvus.progress('key "\' \\') == "state 1"
    milvus.close()


def test_camera_states_are_recorded_and_read_back(new_store):
    """What tbps ingest --follow records of each camera (tbps_runtime.ingest.follow), in either store."""
    store = new_store()
    assert store.camera_states() == {}
    states = {"gate": {"status": "live", "fps": 4.5, "reconnects": 1, "error": None},
              "yard": {"status": "reconnecting", "reconnects": 3, "error": "connect failed"}}
    with store.writing():
        store.record_camera_states(states)
        assert store.camera_states() == states
        store.record_camera_states({"gate": {"status": "stopped"}})  # replaced as a whole
    assert store.camera_states() == {"gate": {"status": "stopped"}}
