"""Each benchmark script in --quick mode on the tiny checkpoint and the session's bundles of it
(``exported_bundle``, ``int8_bundle``: tests/conftest.py; the benchmarks only read them): the JSON
it writes (keys, shapes, the machine block). No timing assertions: timings depend on the machine."""

from __future__ import annotations

import gc
import importlib.util
import json

import pytest

from benchmarks import faiss_search, parity, query_latency, ranking, towers
from tbps_train.data.readers import read_split

HAVE_FAISS = importlib.util.find_spec("faiss") is not None  # the [bench] extra


def _read(out, name):
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    m = data["machine"]
    assert {"cpu", "cores", "libraries", "load_average", "python"} <= set(m)
    assert m["cores"] >= 1 and m["libraries"]["numpy"] and m["libraries"]["onnxruntime"]
    assert len(m["load_average"]) == 3 and len(data["load_average_end"]) == 3
    assert (out / f"{name}.md").read_text().startswith("### ")
    return data


def _timing(t):
    assert {"median_ms", "p90_ms", "reps"} <= set(t) and t["median_ms"] > 0 and t["p90_ms"] >= t["median_ms"]


def test_towers_quick(tmp_path, tiny_checkpoint, exported_bundle, int8_bundle):
    towers.main(["--quick", "--out", str(tmp_path), "--ckpt", str(tiny_checkpoint), "--threads", "1",
                 "--bundle", str(exported_bundle), "--int8-bundle", str(int8_bundle)])
    data = _read(tmp_path, "towers")
    assert data["threads"] == [1] and isinstance(data["tensorrt"], str)
    rows = data["rows"]
    assert {(r["tower"], r["batch"]) for r in rows} == {(t, b) for t in ("image_tower", "text_tower") for b in (1, 2)}
    for r in rows:
        assert set(r["backends"]) == {"pytorch", "onnxruntime", "onnxruntime_int8"} and r["model"] == "demo"
        assert r["backends"]["onnxruntime"]["max_abs_diff_vs_pytorch"] < 1e-4
        assert r["output_shape"][0] == r["batch"] and len(r["output_shape"]) == 3
        for t in r["backends"].values():
            _timing(t)
            assert t["items_per_s"] > 0
        assert r["speedup_ort_vs_pytorch"] > 0 and r["speedup_int8_vs_float32"] > 0
        assert r["backends"]["onnxruntime_int8"]["max_abs_diff_vs_pytorch"] < 0.5  # int8: loose


def test_ranking_quick(tmp_path):
    ranking.main(["--quick", "--out", str(tmp_path), "--scratch", str(tmp_path)])
    data = _read(tmp_path, "ranking")
    assert data["copy_bandwidth"]["best_gb_s"] > 0
    assert [(r["rows"], r["queries"]) for r in data["rows"]] == [(2000, 1), (2000, 32), (5000, 1), (5000, 32)]
    for r in data["rows"]:
        assert set(r["timings"]) == {"top_k", "naive"} | ({"faiss_flat_ip"} if HAVE_FAISS else set())
        for t in r["timings"].values():
            _timing(t)
        assert r["gallery_bytes"] == r["rows"] * r["slots"] * r["dim"] * 4
        assert r["same_top_k_as_faiss"] is (True if HAVE_FAISS else None) and r["bandwidth_floor_ms"] > 0
    assert not list(tmp_path.glob("tbps-bench-ranking-*"))  # the memmaps are removed


def test_parity_quick(tmp_path, tiny_checkpoint, exported_bundle, int8_bundle, synth_root):
    parity.main(["--quick", "--out", str(tmp_path), "--ckpt", str(tiny_checkpoint), "--bundle", str(exported_bundle),
                 "--int8-bundle", str(int8_bundle), "--root", str(synth_root)])
    data = _read(tmp_path, "parity")
    names = [r["variant"] for r in data["rows"]]
    assert names[0].startswith("PyTorch") and names[1].startswith("ONNX float32") and "int8" in names[-1]
    assert "float16" in names[2]
    for r in data["rows"]:
        assert set(r["metrics"]) == {"r1", "r5", "r10", "map", "minp"}
    pytorch, onnx32 = data["rows"][0], data["rows"][1]
    assert pytorch["max_abs_diff_images"] == 0 and onnx32["max_abs_diff_images"] < 1e-4
    assert onnx32["metrics"] == pytorch["metrics"]  # ONNX float32 ranks the split exactly as PyTorch
    assert data["split"]["images"] == 30 and any("TensorRT" in n for n in data["notes"])


def test_query_latency_quick(tmp_path, exported_bundle):
    query_latency.main(["--quick", "--out", str(tmp_path), "--bundle", str(exported_bundle), "--rows", "500"])
    data = _read(tmp_path, "query_latency")
    assert data["gallery"]["rows"] == 500
    _timing(data["cold"])
    assert set(data["warm"]) == {"load_bundle_and_gallery", "embed_query", "rank_only", "end_to_end"}
    for name in ("embed_query", "rank_only", "end_to_end"):
        _timing(data["warm"][name])


@pytest.mark.skipif(not HAVE_FAISS, reason="FAISS comes with the [bench] extra")
def test_faiss_search_quick(tmp_path, exported_bundle, synth_root):
    from tbps_runtime.search import PersonSearch

    records = read_split("cuhk-pedes", synth_root, "test")
    gallery = tmp_path / "g.npy"  # the real rows, with identities, as the quickstart indexes them
    PersonSearch.from_bundle(exported_bundle).index([r.image_path for r in records], gallery,
                                               identities=[r.person_id for r in records])
    # The benchmark calls gc.collect() before each of its ~50 measured phases (a clean memory baseline);
    # in the test session's heap (torch, every module's fixtures) each takes ~0.5 s. Frozen objects are
    # left out of collections: the benchmark runs the same, on its own garbage only.
    gc.freeze()
    try:
        faiss_search.main(["--quick", "--out", str(tmp_path), "--bundle", str(exported_bundle), "--data", str(synth_root),
                           "--gallery", str(gallery), "--scratch", str(tmp_path), "--queries", "12"])
    finally:
        gc.unfreeze()
    data = _read(tmp_path, "faiss_search")
    assert data["data"]["real_rows"] == len(records) == 30 and data["data"]["queries"] == 12
    assert set(data["realism"]) == {"real", "synthetic"}
    assert [s["rows"] for s in data["sizes"]] == [2000, 5000]
    for size in data["sizes"]:
        specs = {s["spec"]: s for s in size["specs"]}
        assert set(specs) == {f.format(nlist=size["nlist"]) for f in faiss_search.QUICK_SPECS}
        # exact search: the exact top 10 up to near-ties (the tiny model's rows score within float
        # rounding of each other, and FAISS sums in another order than numpy)
        assert specs["Flat"]["settings"][0]["recall_at_10"] >= 0.95
        for spec in specs.values():
            assert spec["index_bytes"] > 0 and spec["build_s"] > 0
            _timing(spec["exact_latency_1"])
            for setting in spec["settings"]:
                assert 0 <= setting["recall_at_10"] <= 1 and setting["speedup_32"] > 0
                _timing(setting["latency_1"])
                _timing(setting["latency_32"])
    assert "synthetic perturbations of real embeddings" in (tmp_path / "faiss_search.md").read_text()
    assert not list(tmp_path.glob("tbps-bench-faiss-*"))  # the memmaps are removed
