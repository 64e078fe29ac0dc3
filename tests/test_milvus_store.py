"""The store on Milvus (milvus-lite files under tmp_path) against the local store: the same rows give the
same hits, ties, deletions, records and info; filters cannot be widened by hostile names; reopening and
the bundle check; the store addresses; and the recall benchmark's quick mode."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from tbps_runtime.errors import BundleError, ConfigError, InputFileNotFoundError, OutputError  # noqa: E402
from tbps_runtime.gallery import milvus_store  # noqa: E402
from tbps_runtime.gallery.milvus_store import (  # noqa: E402
    MilvusStore, check_collection_name, filter_expression, float_literal, parse_store_uri, store_uri,
    string_literal,
)
from tbps_runtime.gallery.rows import CropRecord, RowFilter  # noqa: E402
from tbps_runtime.gallery.store import LocalStore  # noqa: E402
from tbps_runtime.ranking import normalize_slots  # noqa: E402

K, D = 3, 8
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
HOSTILE = 'x" or camera != "'
CAMERAS = ["cam1", "cam2", "cam3", HOSTILE]
_names = (f"c{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One milvus-lite database for the module (it starts a server per file); each store is a collection."""
    return str(tmp_path_factory.mktemp("milvus") / "stores.db")


def random_rows(n: int, seed: int, now: float | None = None) -> tuple[np.ndarray, list[CropRecord]]:
    """(n, K, d) normalised rows and records with random cameras, sources, times (some missing) and tracks
    (some missing); with ``now``, times are 10 days or 1 hour before it."""
    rng = np.random.default_rng(seed)
    embeddings = normalize_slots(rng.normal(size=(n, K, D)))
    records = []
    for i in range(n):
        if now is None:
            when = None if i % 7 == 0 else T0 + float(rng.uniform(0, 3600))
        else:
            when = None if i % 7 == 0 else now - (864_000 if i % 2 else 3600)
        records.append(CropRecord(
            source=f"s{rng.integers(3)}", camera=CAMERAS[rng.integers(len(CAMERAS))], time=when, offset=i / 10,
            frame=i, box=(1.0, 2.0, 30.5, 60.0) if i % 3 else None, score=float(rng.uniform()),
            track=None if i % 5 == 0 else int(rng.integers(40)), identity="p7" if i % 11 == 0 else None))
    return embeddings, records


def make_pair(tmp_path, lite, embeddings, records, batches=3, crops=False):
    """The same rows appended to a LocalStore and a MilvusStore in the same ``batches`` appends; with
    ``crops`` each append gets a crop folder holding one small file per row."""
    local = LocalStore.create(tmp_path / "local", fingerprint="fp", num_slots=K, embed_dim=D)
    milvus = MilvusStore.create(lite, next(_names), tmp_path / "milvus", fingerprint="fp", num_slots=K, embed_dim=D)
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
    queries = np.random.default_rng(1).normal(size=(4, K, D))  # not normalised: both stores normalise
    for per_track, k in itertools.product((False, True), (1, 7, 60, 400)):
        want = local.search(queries, k, row_filter=FILTERS[name], per_track=per_track)
        assert_same(want, milvus.search(queries, k, row_filter=FILTERS[name], per_track=per_track))
    if name == "nothing":
        assert want == [[], [], [], []]
    threshold = 0.5
    want = local.search(queries, 20, row_filter=FILTERS[name], min_score=threshold)
    assert_same(want, milvus.search(queries, 20, row_filter=FILTERS[name], min_score=threshold))


def test_records_embeddings_info_and_progress_match(pair):
    local, milvus = pair
    rows = [0, 5, 17, 299, 1000]
    assert milvus.records(rows) == local.records(rows) and 1000 not in milvus.records(rows)
    np.testing.assert_array_equal(milvus.embeddings([299, 0, 17]), local.embeddings([299, 0, 17]))
    with pytest.raises(ConfigError, match="no row 1000"):
        milvus.embeddings([0, 1000])
    assert len(milvus) == len(local) == 300 and milvus.max_track() == local.max_track()
    skip = {"store", "bytes"}
    assert {k: v for k, v in milvus.info().items() if k not in skip} == \
           {k: v for k, v in local.info().items() if k not in skip}
    assert milvus.info()["store"] == milvus.location and milvus.info()["segments"] == 3
    assert milvus.progress("nothing saved") is None


def one_hot_rows() -> tuple[np.ndarray, list[CropRecord]]:
    """60 rows whose slots are one-hot (Eq. 14 against a one-hot query is an exact integer): rows
    1, 5, 9, ... (i % 4 == 1) match the query (0, 0, 0) in all 3 slots, the others in 2. Track i // 10,
    none for rows 9, 19, ..., 59."""
    hot = [(0, 0, 0) if i % 4 == 1 else (0, 0, 1 + i % 7) for i in range(60)]
    embeddings = np.zeros((60, K, D), np.float32)
    for i, positions in enumerate(hot):
        embeddings[i, range(K), positions] = 1.0
    records = [CropRecord(source="s", camera="cam", time=T0 + i, track=None if i % 10 == 9 else i // 10)
               for i in range(60)]
    return embeddings, records


def test_ties_go_to_the_lower_row_like_the_local_store(tmp_path, lite, monkeypatch):
    embeddings, records = one_hot_rows()
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=2)
    query = np.zeros((1, K, D), np.float32)
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
    monkeypatch.setattr(milvus_store, "_TRACK_FETCH", 0)
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
    monkeypatch.setattr(milvus_store, "TOPK_LIMIT", 12)
    for k, per_track in itertools.product((1, 5, 16, 70), (False, True)):
        for row_filter in (RowFilter(), RowFilter(tracks=(0, 2)), RowFilter(until=T0 + 30)):
            assert_same(local.search(query, k, row_filter=row_filter, per_track=per_track),
                        milvus.search(query, k, row_filter=row_filter, per_track=per_track))
    milvus.close()


def test_delete_matches_the_local_store(tmp_path, lite):
    now = time.time()
    embeddings, records = random_rows(240, seed=3, now=now)
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=4, crops=True)
    queries = np.random.default_rng(4).normal(size=(3, K, D))
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
    names = [HOSTILE, 'a\\b', "it's", 'tab\there', 'line\nbreak', '"', 'ünï "q" \\"', "cam"]
    embeddings = normalize_slots(np.random.default_rng(5).normal(size=(len(names) * 3, K, D)))
    records = [CropRecord(source=names[i % len(names)], camera=names[i % len(names)], time=T0 + i)
               for i in range(len(embeddings))]
    local, milvus = make_pair(tmp_path, lite, embeddings, records, batches=1)
    query = embeddings[:1]
    for name in names:
        for field in ("cameras", "sources"):
            hits = milvus.search(query, 50, row_filter=RowFilter(**{field: (name,)}))[0]
            assert sorted(h.row for h in hits) == [i for i in range(len(records)) if records[i].camera == name]
    with milvus.writing():
        assert milvus.delete(RowFilter(cameras=('cam" or camera != "',)), dry_run=True).rows == 0
        assert milvus.delete(RowFilter(cameras=("cam",)), dry_run=True).rows == 3
        assert milvus.delete(RowFilter(cameras=(HOSTILE,))).cameras == {HOSTILE: 3}
    assert len(milvus) == len(records) - 3
    # Without a row of that name, the hostile name selects nothing at all.
    assert milvus.search(query, 50, row_filter=RowFilter(cameras=(HOSTILE,))) == [[]]
    with milvus.writing():
        milvus.append(embeddings[:1], [records[0]], progress={'key "\' \\': "state 1"})
    assert milvus.progress('key "\' \\') == "state 1"
    milvus.close()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40))
def test_string_literals_parse_back_to_the_same_text(text):
    from milvus_lite.search.filter import parse_expr

    parsed = parse_expr(f"camera in [{string_literal(text)}, {string_literal(text + 'x')}]")
    assert [e.value for e in parsed.values.elements] == [text, text + "x"]


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_float_literals_round_trip(value):
    literal = float_literal(value)
    assert "e" not in literal.lower() and float(literal) == value


def test_filter_expressions():
    assert filter_expression(RowFilter()) == ""
    assert filter_expression(RowFilter(cameras=("a", 'b"'), tracks=(3, 4), since=1.5, until=10.0)) == \
        'camera in ["a", "b\\""] and track in [3, 4] and time >= 1.5 and time < 10.0'
    with pytest.raises(ConfigError):
        string_literal("a\x00b")


def test_append_interrupted_is_cleared_by_the_next_writer(tmp_path, lite, monkeypatch):
    embeddings, records = random_rows(40, seed=6)
    milvus = MilvusStore.create(lite, next(_names), tmp_path / "m", fingerprint="fp", num_slots=K, embed_dim=D)
    with milvus.writing():
        milvus.append(embeddings[:10], records[:10])
    monkeypatch.setattr(milvus_store, "_INSERT_BYTES", embeddings[0].nbytes * 10)  # 10 rows per insert
    inserts = []
    real_insert = milvus.client.insert

    def insert_then_die(*args, **kwargs):
        if inserts:
            raise KeyboardInterrupt  # the process dies between two inserts
        inserts.append(1)
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(milvus.client, "insert", insert_then_die)
    monkeypatch.setattr(MilvusStore, "_drop_batch", lambda self, first, crops: None)  # a dead process cleans nothing
    with milvus.writing():
        name, folder = milvus.new_batch()
        (folder / "0.jpg").write_bytes(b"j")
        with pytest.raises(KeyboardInterrupt):
            milvus.append(embeddings[10:], records[10:], crops=name, progress={"src": "done"})
    orphan, _ = milvus.new_batch()  # a crop folder no append names
    assert len(milvus) == 20 and milvus.progress("src") is None  # the first insert landed; progress did not
    monkeypatch.undo()
    with milvus.writing():
        pass
    assert len(milvus) == 10 and not folder.exists() and not (tmp_path / "m" / orphan).exists()
    with milvus.writing():
        rows = milvus.append(embeddings[10:], records[10:], progress={"src": "done"})
    assert rows.tolist() == list(range(40, 70)), "row ids are never reused"
    assert len(milvus) == 40 and milvus.progress("src") == "done"
    milvus.close()


def test_reopen_and_the_bundle_check(tmp_path, lite):
    name = next(_names)
    embeddings, records = random_rows(30, seed=7)
    store = MilvusStore.create(lite, name, tmp_path / "m", fingerprint="fp-A", num_slots=K, embed_dim=D,
                               bundle=tmp_path / "a.bundle")
    with store.writing():
        store.append(embeddings, records, progress={"s": "1"})
    store.close()
    with MilvusStore.open(lite, name, tmp_path / "m") as reopened:
        assert len(reopened) == 30 and reopened.fingerprint == "fp-A" and reopened.progress("s") == "1"
        assert reopened.bundle == str((tmp_path / "a.bundle").resolve()) and reopened.slot_shape == (K, D)
        np.testing.assert_array_equal(reopened.embeddings([3, 29]), embeddings[[3, 29]])
        reopened.check_bundle("fp-A")
        with pytest.raises(BundleError, match="fingerprint fp-A.*re-index"):
            reopened.check_bundle("fp-B", tmp_path / "b.bundle")
    with MilvusStore.create(lite, name, tmp_path / "m", fingerprint="fp-A", num_slots=K, embed_dim=D) as again:
        assert len(again) == 30  # create() opens an existing store
    with pytest.raises(BundleError, match="fp-A"):
        MilvusStore.create(lite, name, tmp_path / "m", fingerprint="fp-B", num_slots=K, embed_dim=D)
    with pytest.raises(InputFileNotFoundError, match="no tbps store"):
        MilvusStore.open(lite, "absent", tmp_path / "m")


def test_a_collection_that_is_not_a_store_is_refused(tmp_path, lite):
    from pymilvus import MilvusClient

    client = MilvusClient(lite)
    client.create_collection("foreign", dimension=4)
    client.close()
    with pytest.raises(BundleError, match="not a tbps store"):
        MilvusStore.open(lite, "foreign", tmp_path)
    with pytest.raises(OutputError, match="not a tbps store"):
        MilvusStore.create(lite, "foreign", tmp_path, fingerprint="fp", num_slots=K, embed_dim=D)
    with pytest.raises(OutputError, match="is a file"):
        (tmp_path / "file").write_text("x")
        MilvusStore.create(lite, "foreign", tmp_path / "file", fingerprint="fp", num_slots=K, embed_dim=D)


def test_unreachable_milvus_and_a_missing_pymilvus(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="cannot reach Milvus at http://127.0.0.1:1"):
        MilvusStore.open("http://127.0.0.1:1", "c", tmp_path)
    (tmp_path / "not-lite.db").write_text("not a milvus-lite directory")
    with pytest.raises(BundleError, match="not-lite.db"):
        MilvusStore.open(str(tmp_path / "not-lite.db"), "c", tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "pymilvus", None)
    with pytest.raises(ConfigError, match=r"pip install 'tbps\[milvus\]'"):
        MilvusStore.open(str(tmp_path / "x.db"), "c", tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("milvus://db.example:19531/gallery", ("http://db.example:19531", "gallery")),
    ("milvus://10.0.0.5/_g2", ("http://10.0.0.5:19530", "_g2")),
    ("milvus://[::1]:19530/g", ("http://[::1]:19530", "g")),
    ("milvus-lite:///srv/tbps/store.db/people", ("/srv/tbps/store.db", "people")),
    ("milvus-lite:data/store.db/people", ("data/store.db", "people")),
    ("milvus-lite:store.db/People_1", ("store.db", "People_1")),
])
def test_parse_store_uri(text, expected):
    assert parse_store_uri(text) == expected
    assert parse_store_uri(store_uri(*expected)) == expected


@pytest.mark.parametrize("text", [
    "milvus://host:19530", "milvus://host:19530/", "milvus://host:99999/g", "milvus://:19530/g",
    "milvus://host/a/b", "milvus://host/1abc", "milvus://host/with-dash", "milvus://user@host/g",
    "milvus-lite:///srv/store/people", "milvus-lite://relative.db/g", "milvus-lite:/srv/.db/g",
    "milvus-lite:store.db/", "http://host:19530/g", "store.db/g", "", "milvus://host/" + "g" * 250,
])
def test_parse_store_uri_refuses(text):
    with pytest.raises(ConfigError):
        parse_store_uri(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60),
                 st.builds("".join, st.lists(st.sampled_from(["milvus://", "milvus-lite:", "/", "//", ".db", ":",
                                                              "19530", "h", "_c", "1", "[::1]", "@", "-", "?"]),
                                             max_size=8))))
def test_parse_store_uri_takes_any_text(text):
    try:
        uri, collection = parse_store_uri(text)
    except ConfigError:
        return
    assert uri.startswith("http://") or uri.endswith(".db")
    check_collection_name(collection)
    assert parse_store_uri(store_uri(uri, collection)) == (uri, collection)


def test_the_benchmark_quick_mode(tmp_path):
    from benchmarks import milvus_recall

    milvus_recall.main(["--quick", "--out", str(tmp_path), "--scratch", str(tmp_path / "scratch")])
    data = json.loads((tmp_path / "milvus_recall.json").read_text())
    assert data["benchmark"] == "milvus_recall" and data["rows"] == 2000 and data["queries"] == 10
    assert {"cpu", "cores", "libraries"} <= set(data["machine"])
    assert set(data["exact"]) == {"numpy_top_k", "local_store", "milvus_store", "milvus_flat"}
    for exact in data["exact"].values():
        assert exact["recall"] == 1.0 and {"median_ms", "p90_ms", "reps"} <= set(exact)
    assert data["exact"]["milvus_store"]["same_as_local_store"] == 1.0
    assert {a["index"] for a in data["approximate"]} == {"IVF_FLAT", "HNSW"}
    for a in data["approximate"]:
        assert 0.0 <= a["recall"] <= 1.0 and a["build_s"] > 0 and {"build", "search", "median_ms"} <= set(a)
    full_probe = [a for a in data["approximate"] if a["search"] == {"nprobe": 16}]
    assert full_probe[0]["recall"] == 1.0  # nprobe = nlist: every list scanned, exact
    assert (tmp_path / "milvus_recall.md").read_text().startswith("### ")
    assert not (tmp_path / "scratch").exists()
