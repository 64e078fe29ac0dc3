"""Each benchmark script in --quick mode on the tiny checkpoint and the session's bundles of it
(``exported_bundle``, ``int8_bundle``: tests/conftest.py; the benchmarks only read them): the JSON
it writes (keys, shapes, the machine block). No timing assertions: timings depend on the machine."""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os

import pytest

from benchmarks import contention, faiss_search, parity, query_latency, ranking, towers
from tbps_train.data.readers import read_split

HAVE_FAISS = importlib.util.find_spec("faiss") is not None  # the [bench] extra
HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None  # ranking's fixed BLAS threads


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
        assert set(r["backends"]) == {"pytorch", "onnxruntime", "onnxruntime_int8", "onnxruntime_unfused"}
        assert r["model"] == "demo"
        assert r["backends"]["onnxruntime"]["max_abs_diff_vs_pytorch"] < 1e-4
        assert r["backends"]["onnxruntime_unfused"]["max_abs_diff_vs_pytorch"] < 1e-4
        ratio = r["backends"]["onnxruntime_unfused"]["median_ms"] / r["backends"]["onnxruntime"]["median_ms"]
        assert r["speedup_fused_vs_unfused"] == pytest.approx(ratio)
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
    assert set(data["warm"]) == {"load_bundle_and_gallery", "embed_query", "rank_only", "end_to_end",
                                 "end_to_end_spinning", "copy_gallery"}
    for name in ("embed_query", "rank_only", "end_to_end", "end_to_end_spinning", "copy_gallery"):
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


def test_contention_quick(tmp_path, monkeypatch):
    """Idle and one competitor, every fixed count and the policy: the figures, the policy's choices and
    the ratios as the raw figures give them. The bundle is exported on the fly (the default path)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the policy decides, not a pinned count
    contention.main(["--quick", "--out", str(tmp_path)])
    data = _read(tmp_path, "contention")
    cores, settings = data["cores"], data["thread_settings"]
    assert 1 <= cores <= data["machine"]["cores"] and settings == list(range(1, cores + 1))
    assert data["competitor_counts"] == [0, 1] and data["setup"]["preset"] == "tiny"
    reps, warmup = data["setup"]["reps"], data["setup"]["warmup"]
    for condition, count in zip(data["conditions"], [0, 1], strict=True):
        assert condition["competitors"] == count and len(condition["competitor_pids"]) == count
        for pid in condition["competitor_pids"]:  # killed and reaped
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        training, runtime = condition["policy"]["training"], condition["policy"]["runtime"]
        assert training["source"] == runtime["source"] == "auto"
        assert all(1 <= n <= cores for n in (training["initial"], training["threads"], runtime["threads"]))
        assert sum(training["steps_by_threads"].values()) == reps + 2 * warmup  # two blocks
        assert condition["others_busy_cores"] >= 0
    ranked = settings if HAVE_THREADPOOLCTL else []
    expected = {(f, count, str(n)) for f in contention.FIGURES for count in (0, 1)
                for n in (ranked if f == "ranking" else settings)} | {
        (f, count, contention.POLICY) for f in contention.FIGURES for count in (0, 1)}
    rows = {(r["figure"], r["competitors"], r["setting"]): r for r in data["rows"]}
    assert set(rows) == expected and len(rows) == len(data["rows"])
    for (figure, count, setting), r in rows.items():
        _timing(r)
        assert r["reps"] == reps and math.isfinite(r["throughput"]) and r["throughput"] > 0
        items = contention.IMAGE_BATCH if figure == "image_tower" else 1
        assert r["throughput"] == pytest.approx(items / (r["median_ms"] / 1e3))
        if setting == contention.POLICY and figure == "ranking":  # numpy's BLAS threads, as the runtime leaves them
            assert r["threads"] is None if not HAVE_THREADPOOLCTL else 1 <= r["threads"] <= os.cpu_count()
        elif setting == contention.POLICY:
            assert 1 <= r["threads"] <= cores
        else:
            assert r["threads"] == int(setting)
        assert r["vs_idle"] == pytest.approx(r["throughput"] / rows[(figure, 0, setting)]["throughput"])
    assert [(q["figure"], q["competitors"]) for q in data["ratios"]] == [
        (f, count) for f in contention.FIGURES for count in (0, 1)]
    for q in data["ratios"]:
        key = (q["figure"], q["competitors"])
        fixed = [rows[(*key, str(n))] for n in settings if (*key, str(n)) in rows]
        policy = rows[(*key, contention.POLICY)]
        if not fixed:  # ranking without threadpoolctl
            assert q["policy_vs_best"] is None and q["goal_met"] is None
            continue
        best = max(fixed, key=lambda r: r["throughput"])
        assert q["best_fixed_threads"] == best["threads"] and q["policy_throughput"] == policy["throughput"]
        assert q["policy_vs_best"] == pytest.approx(policy["throughput"] / best["throughput"])
        assert q["goal_met"] == (q["policy_vs_best"] >= contention.GOAL if q["competitors"] == 1 else None)
    text = (tmp_path / "contention.md").read_text()
    assert data["machine"]["cpu"] in text.splitlines()[0] and "python -m benchmarks.contention --quick" in text
    assert text.count("**met**") + text.count("**missed**") == sum(q["goal_met"] is not None for q in data["ratios"])


def test_store_quick(tmp_path, exported_bundle):
    pytest.importorskip("av", reason="the footage benchmark needs PyAV: pip install 'tbps[footage]'")
    from benchmarks import store

    store.main(["--quick", "--out", str(tmp_path), "--bundle", str(exported_bundle)])
    data = _read(tmp_path, "store")
    assert {(r["threads"], r["detector"], r["fps"]) for r in data["ingestion"]} == {
        (1, "ground truth", 2.0), (1, "ground truth", None), (1, "hog", 2.0), (1, "hog", None)}
    for row in data["ingestion"]:
        assert row["frames"] > 0 and row["frames_per_s"] > 0 and row["crops"] >= 0
        assert (row["recall"] is None) == (row["detector"] == "ground truth")
    (block,) = data["queries"]
    assert block["rows"] == 2000
    filters = block["filters"]
    assert filters["no filter"]["rows_selected"] == 2000 and filters["1 camera of 16"]["rows_selected"] == 125
    assert filters["1 track"]["rows_selected"] == 20
    for figure in filters.values():
        _timing(figure["timing"])


def test_store_calibration_quick(tmp_path, exported_bundle):
    pytest.importorskip("av", reason="the footage benchmark needs PyAV: pip install 'tbps[footage]'")
    from benchmarks import store_calibration

    store_calibration.main(["--quick", "--out", str(tmp_path), "--bundle", str(exported_bundle), "--more-rates",
                            "0.2"])
    data = _read(tmp_path, "store_calibration")
    assert data["calibration"]["captions_from"] == "bundle" and data["footage"]["cameras"] == 2
    assert set(data["results"]) >= {"store", "store at 0.2", "store per query at 0.01"}
    for result in data["results"].values():
        assert set(result["cameras"]) == {"cam1", "cam2"}
        every = result["all"]
        assert every["present"] + every["absent_camera"] == 2 * data["footage"]["captions"]
        assert every["found"] <= every["present"] and every["absent_footage"] == 2 * data["footage"]["outside_captions"]
    lower, higher = data["results"]["store at 0.2"], data["results"]["store"]
    assert lower["threshold"] <= higher["threshold"] and lower["all"]["found"] >= higher["all"]["found"]
