"""The store on Milvus (milvus-lite files under tmp_path) beyond the Store contract (tests/test_store_contract.py,
which also runs it against the local store): its expressions and literals, interrupted appends, reopening
and the bundle check, Milvus's failures as StoreErrors, info from the appends' summaries (never the rows),
the store addresses; and the recall benchmark's quick mode."""

from __future__ import annotations

import itertools
import json

import numpy as np
import store_rows
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from tbps_runtime.errors import (  # noqa: E402
    BundleError, ConfigError, InputFileNotFoundError, OutputError, StoreError,
)
from tbps_runtime.ranking import normalize_slots  # noqa: E402
from tbps_runtime.store import milvus as milvus_store  # noqa: E402
from tbps_runtime.store.local import LocalStore  # noqa: E402
from tbps_runtime.store.milvus import MilvusStore  # noqa: E402
from tbps_runtime.store.milvus_expr import (  # noqa: E402
    check_collection_name, filter_expression, float_literal, parse_store_uri, store_uri, string_literal,
)
from tbps_runtime.store.rows import CropRecord, RowFilter  # noqa: E402

K, D = 3, 8
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
HOSTILE, CAMERAS = store_rows.HOSTILE, store_rows.CAMERAS
_names = (f"c{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One milvus-lite database for the module (it starts a server per file); each store is a collection."""
    return str(tmp_path_factory.mktemp("milvus") / "stores.db")


def random_rows(n: int, seed: int, now: float | None = None) -> tuple[np.ndarray, list[CropRecord]]:
    """This module's rows: see store_rows.random_rows."""
    return store_rows.random_rows(n, seed, K, D, T0, now)


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
    with pytest.raises(StoreError, match="cannot reach Milvus at http://127.0.0.1:1"):
        MilvusStore.open("http://127.0.0.1:1", "c", tmp_path)
    (tmp_path / "not-lite.db").write_text("not a milvus-lite directory")
    with pytest.raises(BundleError, match="not-lite.db"):
        MilvusStore.open(str(tmp_path / "not-lite.db"), "c", tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "pymilvus", None)
    with pytest.raises(ConfigError, match=r"pip install 'tbps\[milvus\]'"):
        MilvusStore.open(str(tmp_path / "x.db"), "c", tmp_path)


def test_a_failing_milvus_is_a_store_error_not_a_bad_bundle(tmp_path, lite, monkeypatch):
    from pymilvus import MilvusException

    embeddings, records = random_rows(10, seed=8)
    milvus = MilvusStore.create(lite, next(_names), tmp_path / "m", fingerprint="fp", num_slots=K, embed_dim=D)
    with milvus.writing():
        milvus.append(embeddings, records)

    def timed_out(*args, **kwargs):
        raise MilvusException(message="deadline exceeded")

    for method in ("query", "search", "get"):
        monkeypatch.setattr(milvus.client, method, timed_out)
    for call in (lambda: len(milvus), lambda: milvus.search(embeddings[:1], 3), milvus.info, milvus.cameras,
                 lambda: milvus.records([0]), lambda: list(milvus.iter_rows()), milvus.all_progress):
        with pytest.raises(StoreError, match="deadline exceeded"):
            call()
    monkeypatch.undo()
    assert len(milvus) == 10
    milvus.close()


def pair_of(tmp_path, lite, embeddings, records, batches):
    """The rows in a LocalStore and a MilvusStore, appended in the same ``batches``."""
    local = LocalStore.create(tmp_path / "local", fingerprint="fp", num_slots=K, embed_dim=D)
    milvus = MilvusStore.create(lite, next(_names), tmp_path / "milvus", fingerprint="fp", num_slots=K, embed_dim=D)
    cuts = np.linspace(0, len(records), batches + 1).astype(int)
    for store in (local, milvus):
        with store.writing():
            for start, end in zip(cuts[:-1], cuts[1:]):
                store.append(embeddings[start:end], records[start:end])
    return local, milvus


def info_without_paths(store):
    return {k: v for k, v in store.info().items() if k not in ("store", "bytes")}


def test_info_and_cameras_read_the_appends_summaries_not_the_rows(tmp_path, lite, monkeypatch):
    embeddings, records = random_rows(120, seed=9)
    local, milvus = pair_of(tmp_path, lite, embeddings, records, batches=4)
    asked = []

    def recording(real):
        def call(collection, *args, **kwargs):
            asked.append(collection)
            return real(collection, *args, **kwargs)
        return call

    for method in ("query", "query_iterator", "search", "get"):
        monkeypatch.setattr(milvus.client, method, recording(getattr(milvus.client, method)))
    assert info_without_paths(milvus) == info_without_paths(local)
    assert milvus.cameras() == local.cameras()
    assert asked and milvus.collection not in asked, "info() and cameras() read the meta collection only"
    milvus.close()


def test_a_summary_longer_than_one_record_is_split_and_replaced(tmp_path, lite, monkeypatch):
    embeddings, records = random_rows(200, seed=10)
    records = [CropRecord(**{**r.__dict__, "track": 3 * i}) for i, r in enumerate(records)]  # no runs: long
    local, milvus = pair_of(tmp_path, lite, embeddings[:1], records[:1], batches=1)
    monkeypatch.setattr(milvus_store, "_META_BYTES", 300)  # parts of 300 characters
    for store in (local, milvus):
        with store.writing():
            store.append(embeddings[1:], records[1:])

    def parts():
        meta = milvus.collection + "__meta"
        return len(milvus.client.query(meta, filter='key like "summary:1:%"', output_fields=["key"]))

    before = parts()
    assert before > 3 and info_without_paths(milvus) == info_without_paths(local)
    for store in (local, milvus):
        with store.writing():
            store.delete(RowFilter(tracks=tuple(3 * i for i in range(1, 150))))
    assert 0 < parts() < before, "the shorter summary replaced every older part"
    assert info_without_paths(milvus) == info_without_paths(local) and len(milvus) == len(local) == 51
    milvus.close()


def test_appends_made_before_summaries_are_summarised_from_their_rows(tmp_path, lite):
    embeddings, records = random_rows(90, seed=11)
    local, milvus = pair_of(tmp_path, lite, embeddings, records, batches=3)
    milvus.client.delete(milvus.collection + "__meta", filter='key like "summary:%"')  # as an older tbps left it
    assert info_without_paths(milvus) == info_without_paths(local) and milvus.cameras() == local.cameras()
    for store in (local, milvus):
        with store.writing():
            store.delete(RowFilter(cameras=("cam1",)))
    assert info_without_paths(milvus) == info_without_paths(local)
    milvus.close()


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
