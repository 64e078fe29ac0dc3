"""TensorRT engines: build, compare against onnxruntime, reload. Needs TensorRT and a CUDA GPU.

Skipped with the reason wherever either is missing (every CPU machine). The
CPU-side preparation (FP16 graph, profiles, the --trt failure path) is tested
in tests/test_export.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tbps_export.tensorrt_build import ENGINE_ATOL, EngineRunner, unavailable_reason

REASON = unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


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


def test_engines_are_recorded_in_the_manifest(trt_bundle):
    from tbps_runtime.bundle import load_manifest, verify_files
    from tbps_runtime.contract import TOWERS

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


def test_reloaded_engines_match_onnxruntime(trt_bundle):
    from tbps_export.validate import onnx_runner, parity_cases
    from tbps_runtime.bundle import load_manifest
    from tbps_runtime.contract import TOWERS
    from tbps_runtime.tokenizer import load_tokenizer

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


def test_selfcheck_runs(tiny_checkpoint, tmp_path):
    from tbps_export import export_bundle
    from tbps_export.trt_selfcheck import selfcheck

    bundle = export_bundle(tiny_checkpoint, tmp_path / "b")
    records = selfcheck(bundle, ("fp32",), batch=(1, 2, 4), iterations=3)
    assert [r["tower"] for r in records] == ["image_tower", "text_tower"]
    assert all(r["ok"] and r["tensorrt_ms"] > 0 for r in records), records
