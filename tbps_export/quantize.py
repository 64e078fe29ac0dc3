"""int8 towers for CPUs: a float32 bundle to a separate ``precision: "int8"`` bundle.

- Text tower: onnxruntime *dynamic* quantization of the MatMuls (int8 weights,
  activations quantized per batch at run time): no calibration data needed.
- Image tower: onnxruntime *static* quantization in QDQ format (int8 weights
  per channel, uint8 activations), calibrated on real crops passed through the
  bundle's own preprocessing. Without calibration images it stays float32
  (random pixels would calibrate the activation ranges wrongly), and the
  manifest says so.

int8 does not meet the float32 bundle's 1e-4 parity: the figures against the
float32 graphs are recorded in the manifest (``parity["int8"]``), and only a
loose check (:data:`INT8_MIN_COSINE` per slot) fails the quantization.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from tbps_export.bundle_writer import _place, _refuse_existing
from tbps_runtime.outputs import publish_permissions, staging_directory
from tbps_export.quiet import quiet_loggers
from tbps_export.validate import compare, text_cases
from tbps_runtime.atomic import sha256_file
from tbps_runtime.contract import IMAGE_TOWER, MANIFEST_FILE, TEXT_TOWER, TowerSpec
from tbps_runtime.errors import ExportError
from tbps_runtime.model.bundle import Manifest, load_manifest, verify_files, write_manifest
from tbps_runtime.model.images import normalize, read_image, resize_rgb
from tbps_runtime.model.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

INT8_MIN_COSINE = 0.9  # per slot, int8 vs float32: below this the quantized bundle is refused
CALIBRATION_BATCH = 8
NO_CALIBRATION = "no calibration images given (tbps export --int8 --calibration DIR)"


def int8_output(bundle: str | Path) -> Path:
    """``m.bundle`` -> ``m.int8.bundle`` beside it."""
    bundle = Path(bundle)
    stem = bundle.name.removesuffix(".bundle")
    return bundle.with_name(f"{stem}.int8.bundle")


def quantize_bundle(bundle: str | Path, output: str | Path | None = None, *,
                    calibration: Sequence[str | Path] = (), force: bool = False,
                    min_cosine: float = INT8_MIN_COSINE, threads: int | None = None) -> Path:
    """Write the int8 version of the float32 ``bundle`` to ``output`` (default: ``m.int8.bundle``).

    ``calibration``: crop image paths for the image tower's static quantization
    (a few dozen to a few hundred); empty keeps the image tower float32. ``threads``: intra-op
    threads of the onnxruntime sessions that check the int8 graphs (None: onnxruntime's default).
    """
    bundle = Path(bundle)
    output = Path(output) if output is not None else int8_output(bundle)
    manifest = load_manifest(bundle)
    verify_files(bundle, manifest)
    if manifest.precision != "float32":
        raise ExportError(f"{bundle} is a {manifest.precision} bundle: quantize the float32 one")
    _refuse_existing(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    with staging_directory(output) as staging:
        shutil.copy2(bundle / manifest.tokenizer, staging / manifest.tokenizer)
        towers = {TEXT_TOWER.name: quantize_text_tower(bundle / TEXT_TOWER.onnx_file, staging / TEXT_TOWER.onnx_file)}
        pixels = calibration_pixels(calibration, manifest)
        towers[IMAGE_TOWER.name] = quantize_image_tower(bundle / IMAGE_TOWER.onnx_file,
                                                        staging / IMAGE_TOWER.onnx_file, pixels)
        parity = int8_parity(bundle, staging, manifest, pixels, min_cosine, threads)
        write_manifest(staging, _int8_manifest(manifest, staging, towers, parity))
        publish_permissions(staging)
        _place(staging, output, force)
    logger.info("int8 bundle written to %s", output)
    return output


def quantize_text_tower(source: Path, target: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of the MatMuls (weights int8, activations at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_loggers(""):  # onnxruntime.quantization advises on the root logger
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True, extra_options={"MatMulConstBOnly": True})
    return {"method": "dynamic", "weights": "int8 per channel", "activations": "uint8, per batch at run time",
            "ops": ["MatMul"]}


def quantize_image_tower(source: Path, target: Path, pixels: np.ndarray | None) -> dict[str, Any]:
    """Static QDQ int8 quantization calibrated on ``pixels`` (N, 3, H, W); float32 copy when None."""
    if pixels is None:
        shutil.copy2(source, target)
        return {"method": "none", "weights": "float32",
                "why": NO_CALIBRATION}
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_loggers(""):  # onnxruntime.quantization advises on the root logger
        quantize_static(str(source), str(target), _Calibration(pixels), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax)
    return {"method": "static QDQ", "weights": "int8 per channel", "activations": "uint8",
            "ops": ["Conv", "MatMul", "Gemm"], "calibration_images": len(pixels), "calibration": "MinMax"}


class _Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed crops, in batches."""

    def __init__(self, pixels: np.ndarray):
        self._batches: Iterator[np.ndarray] = iter(np.array_split(pixels, max(1, len(pixels) // CALIBRATION_BATCH)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {IMAGE_TOWER.inputs[0].name: batch}


def calibration_pixels(paths: Sequence[str | Path], manifest: Manifest) -> np.ndarray | None:
    """Crops -> (N, 3, H, W) float32 exactly as the runtime preprocesses them; None if no paths."""
    if not paths:
        return None
    size = tuple(manifest.image_size)
    crops = np.stack([resize_rgb(read_image(p), size) for p in paths])  # (N, H, W, 3) uint8
    return normalize(crops, tuple(manifest.mean), tuple(manifest.std))


def int8_parity(float_dir: Path, int8_dir: Path, manifest: Manifest, pixels: np.ndarray | None,
                min_cosine: float, threads: int | None = None) -> dict[str, Any]:
    """int8 vs float32 graphs on the text validation captions and on the calibration crops ``pixels``.

    Without ``pixels`` the image tower was copied float32 (:func:`quantize_image_tower`): it is recorded
    and logged as such, not compared (a min cosine of 1 would read as a perfect int8 tower)."""
    from tbps_export.validate import onnx_runner

    tokenizer = load_tokenizer((float_dir / manifest.tokenizer).read_text(), manifest.max_text_length)
    cases: dict[TowerSpec, list[tuple[str, dict]]] = {
        TEXT_TOWER: [(c.label, c.inputs) for c in text_cases(tokenizer, manifest.max_text_length)]}
    parity: dict[str, Any] = {"reference": "float32 bundle (onnxruntime CPU)", "min_cosine_required": min_cosine}
    if pixels is None:
        parity[IMAGE_TOWER.name] = {"precision": "float32", "compared": False, "why": NO_CALIBRATION}
        logger.info("%s stayed float32 (not quantized, not compared): %s", IMAGE_TOWER.name, NO_CALIBRATION)
    else:
        image_inputs = {IMAGE_TOWER.inputs[0].name: pixels[:32]}
        cases[IMAGE_TOWER] = [(f"{len(image_inputs[IMAGE_TOWER.inputs[0].name])} crops", image_inputs)]
    failures = []
    for spec, inputs in cases.items():
        reference = onnx_runner(float_dir / spec.onnx_file, threads)
        candidate = onnx_runner(int8_dir / spec.onnx_file, threads)
        results = [compare(reference(x), candidate(x), label) for label, x in inputs]
        parity[spec.name] = {"max_abs_diff": max(r.max_abs_diff for r in results),
                             "min_cosine": min(r.min_cosine for r in results),
                             "cases": [dataclasses.asdict(r) for r in results]}
        failures += [f"{spec.name}, {r.input}: min cosine {r.min_cosine:.4f} < {min_cosine}"
                     for r in results if not r.min_cosine >= min_cosine]
        logger.info("%s int8 vs float32: max abs diff %.3g, min cosine %.5f", spec.name,
                    parity[spec.name]["max_abs_diff"], parity[spec.name]["min_cosine"])
    if failures:
        raise ExportError("the int8 towers differ too much from float32: " + "; ".join(failures))
    return parity


def _int8_manifest(manifest: Manifest, directory: Path, towers: dict[str, Any], parity: dict) -> Manifest:
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.name != MANIFEST_FILE}
    # Only the two towers are quantized and copied: other graphs (e.g. --explain's) stay in the float32 bundle.
    entries = {name: {k: v for k, v in entry.items() if k != "plan"} for name, entry in manifest.towers.items()
               if entry.get("file") in files}
    source = {**manifest.source, "quantization": towers}
    # A calibrated threshold belongs to the towers that measured it: the int8 towers score differently.
    return dataclasses.replace(manifest, precision="int8", files=files, towers=entries, tensorrt={},
                               parity={**manifest.parity, "int8": parity}, source=source, score_threshold={})


def calibration_paths(source: str | Path | None, count: int) -> list[Path]:
    """Up to ``count`` evenly spaced crops of a folder or list file (as ``tbps index --images`` reads them)."""
    if source is None:
        return []
    from tbps_runtime.model.images import collect_images

    paths, _ = collect_images(source)
    step = max(1, len(paths) // count)
    return list(paths[::step][:count])
