"""TensorRT engines from the bundle's ONNX graphs, with TensorRT's Python API.

Written for TensorRT 10 and 11 alike. TensorRT 11 removed the FP16 builder
flag: every network is strongly typed and precision comes from the graph's
tensor types. So FP16 here means an FP16 *graph*: :func:`to_mixed_precision`
converts the float32 ONNX graph (float32 inputs and outputs kept; normalisation,
softmax, reductions and the final L2 normalisation kept in float32), and the
network is created with the STRONGLY_TYPED flag (required on 10.x, accepted and
ignored on 11.x). Each engine has one explicit optimisation profile (min/opt/max
batch, and sequence length for the text tower), uses a timing cache file and a
workspace limit, and is compared against onnxruntime before it is kept: reloaded
from disk and run by the runtime's own engine class
(:class:`tbps_runtime.model.tensorrt.TensorRTEngine`, what ``--backend tensorrt``
runs), on the CUDA device :attr:`TrtOptions.device`. The device facts recorded
in the manifest come from the same CUDA calls the runtime compares them with.

``tensorrt`` and cuda-python are imported lazily, so this module imports on any
machine; no PyTorch is involved.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tbps_export.validate import ParityCase, check_parity, onnx_runner
from tbps_runtime.atomic import atomic_write
from tbps_runtime.contract import TowerSpec
from tbps_runtime.errors import BundleError, ConfigError, ExportError

logger = logging.getLogger(__name__)

# Ops kept in float32 in the FP16 graph: normalisation, softmax, reductions,
# and the elementwise maths whose range or precision FP16 cannot hold
# (a sum of squares over d = 512 channels overflows FP16's 65504).
FP32_OPS = (
    "LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "Softmax", "LogSoftmax", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "Pow", "Sqrt", "Reciprocal", "Div", "Exp", "Log", "Erf",
    "Range", "CumSum", "TopK", "NonMaxSuppression", "Resize",
)
# What F.normalize exports to; walked back from the outputs by _normalisation_tail.
_NORMALISATION_OPS = ("Div", "Expand", "Clip", "Max", "ReduceL2", "Sqrt", "ReduceSum", "Pow", "Mul", "Cast")
# Engine vs onnxruntime tolerance by precision (absolute, on unit-norm embeddings).
ENGINE_ATOL = {"fp32": 1e-3, "fp16": 2e-2}


@dataclass
class TrtOptions:
    """Build settings. Each profile is (min, opt, max). A sequence max of None
    is the model's max text length (min and opt are then capped at it)."""

    batch: tuple[int, int, int] = (1, 8, 32)
    sequence: tuple[int, int, int | None] = (1, 32, None)
    fp16: bool = False
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default: default_timing_cache()
    device: int = 0  # the CUDA device that builds and checks the engines (and must run them)

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def resolve(self, max_text_length: int) -> dict[str, tuple[int, int, int]]:
        """The checked profile of every dynamic axis name (``batch``, ``sequence``)."""
        low, opt, high = self.sequence
        sequence = (low, opt, high) if high is not None else (
            min(low, max_text_length), min(opt, max_text_length), max_text_length)
        for axis, (low, opt, high) in (("batch", self.batch), ("sequence", sequence)):
            if not 1 <= low <= opt <= high:
                raise ConfigError(f"TensorRT {axis} profile {low},{opt},{high} must satisfy 1 <= min <= opt <= max")
        if sequence[2] > max_text_length:
            raise ConfigError(f"TensorRT sequence max {sequence[2]} exceeds the model's max text length "
                              f"{max_text_length}")
        if self.workspace_gib <= 0:
            raise ConfigError(f"TensorRT workspace must be positive, not {self.workspace_gib} GiB")
        if self.device < 0:
            raise ConfigError(f"a CUDA device index is 0 or more, not {self.device}")
        return {"batch": tuple(self.batch), "sequence": tuple(sequence)}


def default_timing_cache() -> Path:
    """``$XDG_CACHE_HOME/tbps/tensorrt.timing-cache``: reused across exports on one machine."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "tbps" / "tensorrt.timing-cache"


# ---- availability ----------------------------------------------------------

def unavailable_reason(device: int = 0) -> str | None:
    """Why engines cannot be built here (None when TensorRT, cuda-python and CUDA device ``device`` are present)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return f"TensorRT is not installed ({e}); install it with pip install 'tbps[trt]' on a machine with an NVIDIA GPU"
    from tbps_runtime.model.tensorrt import CudaRuntime, import_tensorrt

    try:
        _, cudart = import_tensorrt()
        CudaRuntime(cudart).device(device)
    except (ConfigError, RuntimeError, OSError) as e:  # no cuda-python, no driver, no such device
        return (f"TensorRT is installed but CUDA device {device} is not usable ({e}); TensorRT engines are "
                "built on the GPU that runs them")
    return None


def device_facts(device: int = 0) -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of CUDA device ``device``, read with the
    calls the runtime's TensorRT backend compares them with before it loads an engine."""
    from tbps_runtime.model.tensorrt import CudaRuntime, import_tensorrt

    trt, cudart = import_tensorrt()
    gpu, (major, minor) = CudaRuntime(cudart).device(device)
    return {"tensorrt_version": trt.__version__, "gpu": gpu, "compute_capability": f"{major}.{minor}"}


# ---- FP16 graph ------------------------------------------------------------

def to_mixed_precision(source: str | Path, destination: str | Path) -> Path:
    """Convert a float32 graph to FP16 with float32 I/O and :data:`FP32_OPS` kept in float32.

    Runs anywhere (no GPU): the result also runs in onnxruntime on the CPU.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise ConfigError("fp16 needs onnxconverter-common: pip install 'tbps[export]'",
                          code="fp16_converter_missing") from e
    model = onnx.load(str(source))
    originals = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    destination = Path(destination)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per weight clipped to FP16's range
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=list(FP32_OPS),
                node_block_list=_normalisation_tail(model))
        _restore_output_types(converted, originals)
        onnx.save(converted, str(destination))
        onnx.checker.check_model(str(destination), full_check=True)
    except (ValueError, KeyError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"cannot convert {Path(source).name} to FP16: {type(e).__name__}: {e}") from e
    return destination


def _normalisation_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the final per-slot L2 normalisation (Div <- Expand <- Clip
    <- ReduceL2, walking back from each graph output), kept in float32 so that the
    slots come out unit-norm to float32 precision."""
    producers = {out: node for node in model.graph.node for out in node.output}
    tail, frontier = [], [o.name for o in model.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.op_type not in _NORMALISATION_OPS or node.name in tail:
            continue
        tail.append(node.name)
        frontier.extend(node.input)
    return tail


def _restore_output_types(model: onnx.ModelProto, originals: dict[str, int]) -> None:
    """onnxconverter-common casts the output of a kept-float32 op that is a graph
    output back to FP16 even with ``keep_io_types``: make that last Cast float32 again."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        want = originals[output.name]
        if output.type.tensor_type.elem_type == want:
            continue
        node = producers.get(output.name)
        if node is None or node.op_type != "Cast":
            raise ExportError(f"FP16 conversion changed the type of output {output.name} and it cannot be restored")
        for attribute in node.attribute:
            if attribute.name == "to":
                attribute.i = want
        output.type.tensor_type.elem_type = want


# ---- engines ---------------------------------------------------------------

def profile_shapes(spec: TowerSpec, sizes: dict[str, int],
                   profiles: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """(min, opt, max) shapes of each input: dynamic axes from ``profiles``, fixed ones from ``sizes``."""
    shapes = {}
    for tensor in spec.inputs:
        per_level = []
        for level in range(3):
            per_level.append([a if isinstance(a, int) else profiles[a][level] if a in tensor.dynamic else sizes[a]
                              for a in tensor.axes])
        shapes[tensor.name] = per_level
    return shapes


def build_engine(onnx_path: Path, spec: TowerSpec, shapes: dict[str, list[list[int]]],
                 options: TrtOptions, plan_path: Path) -> dict[str, Any]:
    """Parse ``onnx_path``, build a serialized engine on CUDA device ``options.device`` into
    ``plan_path``; returns its manifest entry."""
    from tbps_runtime.model.tensorrt import CudaRuntime, import_tensorrt

    trt, cudart = import_tensorrt()
    CudaRuntime(cudart).set_device(options.device)  # the builder targets the thread's current device
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # float32 means float32: TF32 matmuls miss 1e-3 parity
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = options.timing_cache or default_timing_cache()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for the {spec.name} (see its log above)")
    plan_path.write_bytes(memoryview(serialized))
    _save_timing_cache(config, cache_path)
    seconds = time.perf_counter() - start
    logger.info("built %s (%s) in %.1f s", plan_path.name, options.precision, seconds)
    return {"file": plan_path.name, "precision": options.precision, **device_facts(options.device),
            "profile": {name: dict(zip(("min", "opt", "max"), levels)) for name, levels in shapes.items()},
            "workspace_bytes": int(options.workspace_gib * (1 << 30)), "build_seconds": round(seconds, 2)}


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = memoryview(config.get_timing_cache().serialize())
    atomic_write(path, lambda stream: stream.write(cache))


def build_checked_engine(onnx_path: Path, spec: TowerSpec, sizes: dict[str, int], options: TrtOptions,
                         profiles: dict[str, tuple[int, int, int]], plan_path: Path, cases: list[ParityCase],
                         scratch: Path) -> dict[str, Any]:
    """Build ``plan_path`` from the float32 graph ``onnx_path`` (converted to FP16 in
    ``scratch`` first when asked), reload it from disk and compare it against
    onnxruntime on the ``cases`` that fit its profile; returns its manifest entry."""
    source = to_mixed_precision(onnx_path, scratch / f"{spec.name}.fp16.onnx") if options.fp16 else onnx_path
    shapes = profile_shapes(spec, sizes, profiles)
    entry = build_engine(source, spec, shapes, options, plan_path)
    runner = EngineRunner(plan_path.read_bytes(), device=options.device)
    atol = ENGINE_ATOL[options.precision]
    fitting = [c for c in cases if within_profile(c.inputs, shapes)]
    figures, failures = check_parity(spec.name, onnx_runner(onnx_path), runner, fitting, atol)
    if failures:
        raise ExportError(f"the {options.precision} engine does not reproduce onnxruntime: " + "; ".join(failures))
    entry["parity"] = {"reference": "onnxruntime, float32 graph", "atol": atol, **figures}
    return entry


class EngineRunner:
    """Runs a serialized engine with the runtime's :class:`~tbps_runtime.model.tensorrt.TensorRTEngine`,
    the code ``--backend tensorrt`` runs, on CUDA device ``device``: named numpy inputs -> the
    first output as (B, ...) float32 numpy.

    Raises:
        ExportError: TensorRT cannot deserialize the engine.
        ConfigError: TensorRT or cuda-python missing, or no such CUDA device.
    """

    def __init__(self, plan: bytes, device: int = 0):
        from tbps_runtime.model.tensorrt import CudaRuntime, TensorRTEngine, import_tensorrt

        trt, cudart = import_tensorrt()
        self.cuda, self.device = CudaRuntime(cudart), device
        self.cuda.set_device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            self.engine = TensorRTEngine(trt, self.cuda, runtime, plan, "the engine")
        except BundleError as e:
            raise ExportError("TensorRT could not deserialize the engine (built by another TensorRT version "
                              "or GPU?)") from e

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.cuda.set_device(self.device)  # the current device is per thread
        return self.engine.run(inputs, self.engine.outputs[0]).astype(np.float32, copy=False)


def within_profile(inputs: dict[str, np.ndarray], shapes: dict[str, list[list[int]]]) -> bool:
    """Whether every input's shape lies inside the engine's (min, max) profile."""
    return all(all(lo <= n <= hi for lo, n, hi in zip(shapes[name][0], array.shape, shapes[name][2]))
               for name, array in inputs.items())
