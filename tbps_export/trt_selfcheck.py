"""TensorRT self-check, for a user with an NVIDIA GPU: build, compare, time.

    tbps trt-selfcheck BUNDLE [--precision fp32 --precision fp16] [--json]

For each precision and tower it builds an engine from the bundle's ONNX graph
(into a temp directory: the bundle is not modified), reloads it from disk,
compares it against onnxruntime on the export's parity inputs, and times both
at the profile's opt shape (numpy in, numpy out: host-device copies included).
Exit status 0 when every engine is within tolerance, 1 when one is not, 2 when
TensorRT or a GPU is missing or the bundle is bad.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tbps_runtime.contract import TOWERS, TowerSpec
from tbps_runtime.errors import ExportError
from tbps_runtime.model.bundle import Manifest, load_manifest, verify_files
from tbps_runtime.model.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from tbps_export.tensorrt_build import TrtOptions

logger = logging.getLogger(__name__)


def selfcheck(bundle: str | Path, precisions: tuple[str, ...] = ("fp32", "fp16"), batch=(1, 8, 32),
              iterations: int = 50, device: int = 0) -> list[dict[str, Any]]:
    """One record per (precision, tower) on CUDA device ``device``: build seconds, parity figures,
    median latencies (the engines run by the runtime's TensorRT engine class)."""
    from tbps_export import tensorrt_build as trt_build  # imported here: `tbps --help` stays light

    reason = trt_build.unavailable_reason(device)
    if reason is not None:
        raise ExportError(f"cannot run the TensorRT self-check: {reason}")
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    verify_files(bundle, manifest)
    tokenizer = load_tokenizer((bundle / manifest.tokenizer).read_text(), manifest.max_text_length)
    records = []
    with tempfile.TemporaryDirectory(prefix="tbps-selfcheck-") as scratch:
        for precision in precisions:
            options = trt_build.TrtOptions(batch=tuple(batch), fp16=precision == "fp16", device=device)
            profiles = options.resolve(manifest.max_text_length)
            for spec in TOWERS:
                records.append(_check_one(bundle, manifest, spec, options, profiles, tokenizer, Path(scratch),
                                          iterations))
    return records


def _check_one(bundle: Path, manifest: Manifest, spec: TowerSpec, options: TrtOptions,
               profiles: dict, tokenizer: Any, scratch: Path, iterations: int) -> dict[str, Any]:
    from tbps_export import tensorrt_build as trt_build
    from tbps_export.validate import onnx_runner, parity_cases

    plan = scratch / f"{spec.name}.{options.precision}.plan"
    cases = parity_cases(spec, tuple(manifest.image_size), tokenizer, manifest.max_text_length)
    record: dict[str, Any] = {"tower": spec.name, "precision": options.precision}
    try:
        entry = trt_build.build_checked_engine(bundle / spec.onnx_file, spec, manifest.sizes(), options, profiles,
                                               plan, cases, scratch)
    except ExportError as e:
        return {**record, "ok": False, "error": str(e)}
    shapes = trt_build.profile_shapes(spec, manifest.sizes(), profiles)
    inputs = _opt_inputs(spec, shapes, tokenizer)
    engine = trt_build.EngineRunner(plan.read_bytes(), device=options.device)
    return {**record, "ok": True, **{k: entry[k] for k in ("gpu", "compute_capability", "tensorrt_version")},
            "build_seconds": entry["build_seconds"], "max_abs_diff": entry["parity"]["max_abs_diff"],
            "min_cosine": entry["parity"]["min_cosine"], "opt_shape": {k: v[1] for k, v in shapes.items()},
            "tensorrt_ms": _median_ms(engine, inputs, iterations),
            "onnxruntime_cpu_ms": _median_ms(onnx_runner(bundle / spec.onnx_file), inputs, max(5, iterations // 5))}


def _opt_inputs(spec: TowerSpec, shapes: dict[str, list[list[int]]], tokenizer: Any) -> dict[str, np.ndarray]:
    """Inputs at the profile's opt shape: random pixels, or random tokens with a full mask."""
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in spec.inputs:
        shape = shapes[tensor.name][1]
        if tensor.dtype == "float32":
            inputs[tensor.name] = rng.standard_normal(shape, dtype=np.float32)
        elif tensor is spec.inputs[0]:  # token ids
            inputs[tensor.name] = rng.integers(1000, tokenizer.get_vocab_size(), shape, dtype=np.int64)
        else:
            inputs[tensor.name] = np.ones(shape, np.int64)
    return inputs


def _median_ms(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray],
               iterations: int) -> float:
    for _ in range(3):
        run(inputs)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 3)


def table(records: list[dict[str, Any]]) -> str:
    """The records as a Markdown table, with the GPU and TensorRT version under it."""
    lines = ["| tower | precision | build s | max abs diff vs ORT | min cosine | TensorRT ms | ORT CPU ms |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if not r["ok"]:
            lines.append(f"| {r['tower']} | {r['precision']} | FAILED: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['tower']} | {r['precision']} | {r['build_seconds']:.1f} | {r['max_abs_diff']:.2e} | "
                     f"{r['min_cosine']:.6f} | {r['tensorrt_ms']:.2f} | {r['onnxruntime_cpu_ms']:.2f} |")
    ok = next((r for r in records if r["ok"]), None)
    if ok:
        lines.append(f"\n{ok['gpu']} (compute capability {ok['compute_capability']}), "
                     f"TensorRT {ok['tensorrt_version']}; opt shapes: "
                     + "; ".join(f"{r['tower']} {r['opt_shape']}" for r in records if r["ok"]
                                 and r["precision"] == ok["precision"]))
    return "\n".join(lines)
