"""int8 bundles (tbps_export.quantize, tbps-export --int8): made, loadable, close to float32, labelled.

``exported_bundle`` (float32) and ``int8_bundle`` (quantized from it, calibrated on the 24
``calibration_crops``) are the session's, from tests/conftest.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tbps_export.cli import export_command
from tbps_export.quantize import INT8_MIN_COSINE, calibration_paths, int8_output, quantize_bundle
from tbps_runtime.errors import ExportError
from tbps_runtime.search import PersonSearch

CAPTIONS = ["a man in a black jacket and blue jeans", "a woman with a red bag", "white shoes"]


def _slot_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_int8_bundle_is_written_beside_and_labelled(exported_bundle, int8_bundle):
    assert int8_bundle == exported_bundle.with_name("m.int8.bundle") == int8_output(exported_bundle)
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert json.loads((exported_bundle / "manifest.json").read_text())["precision"] == "float32"
    quantization = manifest["source"]["quantization"]
    assert quantization["text_tower"]["method"] == "dynamic"
    assert quantization["image_tower"]["method"] == "static QDQ"
    assert quantization["image_tower"]["calibration_images"] == 24
    int8 = manifest["parity"]["int8"]
    for tower in ("image_tower", "text_tower"):
        assert INT8_MIN_COSINE <= int8[tower]["min_cosine"] <= 1.0 + 1e-6
        assert int8[tower]["max_abs_diff"] > 0  # recorded, not required to meet the float32 1e-4
    assert "image_tower" in manifest["parity"] and manifest["tensorrt"] == {}


def test_int8_bundle_runs_in_onnxruntime_close_to_float32(exported_bundle, int8_bundle, calibration_crops):
    reference, quantized = PersonSearch.from_bundle(exported_bundle), PersonSearch.from_bundle(int8_bundle)
    assert quantized.fingerprint == reference.fingerprint  # same weights, another precision
    for embed in (lambda s: s.embed_texts(CAPTIONS), lambda s: s.embed_images(calibration_crops[:6])):
        a, b = embed(reference), embed(quantized)  # (N, K, d) each
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=-1), 1.0, atol=1e-4)
        assert _slot_cosines(a, b).min() > 0.8  # loose: int8 is not float32
    assert quantized.embed_texts([]).shape == (0, *reference.embed_texts(CAPTIONS).shape[1:])


def test_without_calibration_the_image_tower_stays_float32(exported_bundle, tmp_path):
    out = quantize_bundle(exported_bundle, tmp_path / "t.bundle")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["quantization"]["image_tower"]["method"] == "none"
    assert "calibration" in manifest["source"]["quantization"]["image_tower"]["why"]
    assert (out / "image_tower.onnx").read_bytes() == (exported_bundle / "image_tower.onnx").read_bytes()


def test_refuses_existing_output_and_int8_input(exported_bundle, int8_bundle):
    with pytest.raises(Exception, match="already exists"):  # int8_bundle is there
        quantize_bundle(exported_bundle)
    with pytest.raises(ExportError, match="int8 bundle"):
        quantize_bundle(int8_bundle, int8_bundle.with_name("again.bundle"))


def test_calibration_paths_spread_over_a_folder(synth_root):
    paths = calibration_paths(synth_root / "imgs", 5)
    assert len(paths) == 5 and len(set(paths)) == 5
    assert calibration_paths(None, 5) == []


def test_cli_int8(tiny_checkpoint, synth_root, tmp_path):
    out = tmp_path / "c.bundle"
    result = CliRunner().invoke(export_command, ["--ckpt", str(tiny_checkpoint), "-o", str(out), "--int8",
                                                 "--calibration", str(synth_root / "imgs"),
                                                 "--calibration-count", "8", "--no-progress", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(out), str(tmp_path / "c.int8.bundle")]
    manifest = json.loads((tmp_path / "c.int8.bundle" / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["source"]["quantization"]["image_tower"]["calibration_images"] == 8
