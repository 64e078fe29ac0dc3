"""TensorRT engines: build, compare against onnxruntime, reload.

The exporter checks its engines with the runtime's own engine class: that
path runs everywhere against the stand-in tensorrt/cuda-python modules of
tests/runtime_fakes.py (whose "engines" are ONNX graphs run by onnxruntime).
The rest needs TensorRT and a CUDA GPU and is skipped with the reason wherever
either is missing (every CPU machine). The CPU-side preparation (FP16 graph,
profiles, the --trt failure path) is tested in tests/test_export.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tbps_export.tensorrt_build import (ENGINE_ATOL, EngineRunner, TrtOptions, build_checked_engine, device_facts,
                                        unavailable_reason)
from tbps_export.validate import onnx_runner, parity_cases
from tbps_runtime.contract import IMAGE_TOWER
from tbps_runtime.errors import ExportError
from tbps_runtime.model.bundle import load_manifest
from tbps_runtime.model.tensorrt import TensorRTEngine, check_engine_compatible
from tbps_runtime.model.tokenizer import load_tokenizer

REASON = unavailable_reason()


# ---- the exporter's check runs the runtime's engine class (stand-in TensorRT, any machine) -------------


def test_engine_runner_is_the_runtimes_engine_on_the_given_device(fake_bundle, fake_gpu):
    gpu = fake_gpu()
    runner = EngineRunner((fake_bundle / IMAGE_TOWER.onnx_file).read_bytes(), device=3)
    assert isinstance(runner.engine, TensorRTEngine) and gpu.devices == [3]
    (spec,) = IMAGE_TOWER.inputs
    inputs = {spec.name: np.random.default_rng(0).normal(size=(5, 3, 16, 8)).astype(np.float32)}
    got = runner(inputs)  # 5 rows through a profile of at most 2: split as the runtime splits
    assert got.dtype == np.float32 and set(gpu.devices) == {3}
    np.testing.assert_allclose(got, onnx_runner(fake_bundle / IMAGE_TOWER.onnx_file)(inputs), atol=1e-6)
    assert [run[spec.name][0] for run in gpu.engines[0].runs] == [2, 2, 1]
    with pytest.raises(ExportError, match="could not deserialize"):
        EngineRunner(b"incompatible")


def test_checked_engine_build_uses_the_options_device(fake_bundle, fake_gpu, monkeypatch, tmp_path):
    from tbps_export import tensorrt_build as trt_build

    gpu = fake_gpu()

    def build_engine(source, spec, shapes, options, plan_path):  # the "plan" is the ONNX graph itself
        plan_path.write_bytes(source.read_bytes())
        return {"file": plan_path.name, "precision": options.precision, **device_facts(options.device)}

    monkeypatch.setattr(trt_build, "build_engine", build_engine)
    manifest = load_manifest(fake_bundle)
    options = TrtOptions(batch=(1, 2, 4), sequence=(1, 8, None), device=1)
    profiles = options.resolve(manifest.max_text_length)
    tokenizer = load_tokenizer((fake_bundle / manifest.tokenizer).read_text(), manifest.max_text_length)
    cases = parity_cases(IMAGE_TOWER, tuple(manifest.image_size), tokenizer, manifest.max_text_length)
    entry = build_checked_engine(fake_bundle / IMAGE_TOWER.onnx_file, IMAGE_TOWER, manifest.sizes(), options, profiles,
                                 tmp_path / IMAGE_TOWER.plan_file, cases, tmp_path)
    assert set(gpu.devices) == {1}
    assert entry["parity"]["max_abs_diff"] < 1e-5 and entry["parity"]["cases"]
    assert gpu.engines[0].runs  # the reloaded plan ran the cases
    # The facts the exporter records are the ones the runtime's backend compares before loading.
    facts = device_facts(1)
    check_engine_compatible(entry, "x.plan", facts["tensorrt_version"], facts["gpu"], (9, 0))
    assert facts == {"tensorrt_version": "10.7.0.23", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert unavailable_reason(1) is None


# ---- real TensorRT engines: only where TensorRT and a CUDA GPU exist -------------------------------------


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def trt_bundle(request, tiny_checkpoint, tmp_path_factory):
    from tbps_export import export_bundle

    checkpoint = tmp_path_factory.mktemp(f"trt-{request.param}") / "m.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    cache = checkpoint.parent / "timing.cache"
    path = export_bundle(checkpoint, trt=True, fp16=request.param == "fp16", trt_batch=(1, 4, 8),
                         trt_seq=(1, 16, None), trt_workspace_gib=1.0, trt_timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    return path, request.param


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_engines_are_recorded_in_the_manifest(trt_bundle):
    from tbps_runtime.contract import TOWERS
    from tbps_runtime.model.bundle import verify_files

    path, precision = trt_bundle
    manifest = load_manifest(path)
    verify_files(path, manifest)
    for spec in TOWERS:
        entry = manifest.tensorrt[spec.name]
        assert entry["file"] == spec.plan_file and spec.plan_file in manifest.files
        assert entry["precision"] == precision
        assert entry["tensorrt_version"] and entry["gpu"] and "." in entry["compute_capability"]
        assert entry["parity"]["max_abs_diff"] <= ENGINE_ATOL[precision]
        for tensor in spec.inputs:
            profile = entry["profile"][tensor.name]
            assert profile["min"][0] == 1 and profile["opt"][0] == 4 and profile["max"][0] == 8


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_reloaded_engines_match_onnxruntime(trt_bundle):
    from tbps_runtime.contract import TOWERS

    path, precision = trt_bundle
    manifest = load_manifest(path)
    tokenizer = load_tokenizer((path / manifest.tokenizer).read_text(), manifest.max_text_length)
    for spec in TOWERS:
        engine = EngineRunner((path / spec.plan_file).read_bytes())  # a fresh deserialisation
        reference = onnx_runner(path / spec.onnx_file)
        for case in parity_cases(spec, tuple(manifest.image_size), tokenizer, manifest.max_text_length):
            if any(a.shape[0] > 8 for a in case.inputs.values()):
                continue
            got, want = engine(case.inputs), reference(case.inputs)
            assert got.shape == want.shape and got.dtype == np.float32, case.label
            np.testing.assert_allclose(got, want, atol=ENGINE_ATOL[precision], err_msg=case.label)
            np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=ENGINE_ATOL[precision])


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_selfcheck_runs(exported_bundle):
    from tbps_export.trt_selfcheck import selfcheck

    records = selfcheck(exported_bundle, ("fp32",), batch=(1, 2, 4), iterations=3)  # reads it, builds in a temp dir
    assert [r["tower"] for r in records] == ["image_tower", "text_tower"]
    assert all(r["ok"] and r["tensorrt_ms"] > 0 for r in records), records
