"""The TensorRT backend: the bundle's ``.plan`` engines through TensorRT's name-based tensor API
(TensorRT 10 and 11), with device memory and streams from cuda-python. No PyTorch.

:class:`TensorRTEngine` runs one serialized engine; :class:`TensorRTBackend`
runs the bundle's two, after refusing engines built for another TensorRT
version or GPU. The exporter checks the engines it builds with the same
:class:`TensorRTEngine` (``tbps_export.tensorrt_build.EngineRunner``), so export
measures parity with the code that users run.

tensorrt and cuda-python are imported only by :func:`import_tensorrt`, so this
module imports on any machine.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from tbps_runtime.contract import EMBEDDINGS, TOWERS, TowerSpec
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.model.bundle import Manifest
from tbps_runtime.paths import resolve_inside

REBUILD_HINT = "build the engines again on this machine (export the checkpoint with TensorRT here)"


def _unusable(reason: str, extra: str = "") -> BundleError:
    """A TensorRT engine that cannot run here (``reason``): it must be built again on this machine."""
    return BundleError(f"{reason}: {REBUILD_HINT}{extra}", code="tensorrt_engine_unusable", reason=reason,
                       extra=extra)


def plan_entry(manifest: Manifest, tower: TowerSpec) -> dict[str, Any]:
    """The manifest's record of a tower's TensorRT engine (keyed by tower or plan file name)."""
    entry = manifest.tensorrt.get(tower.name) or manifest.tensorrt.get(tower.plan_file)
    if not isinstance(entry, dict) or not entry:
        raise BundleError(f"the bundle has no TensorRT engine for {tower.name}: {REBUILD_HINT}, or use the "
                          "onnxruntime backend", code="tensorrt_engine_missing", tower=tower.name)
    return entry


def compute_capability(value: Any) -> tuple[int, int]:
    """``"8.6"``, ``[8, 6]``, ``"sm_86"`` or ``86`` -> (8, 6)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    return int(text[:-1]), int(text[-1])


def check_engine_compatible(entry: dict[str, Any], plan: str, tensorrt_version: str, gpu_name: str,
                            capability: tuple[int, int]) -> None:
    """A serialized engine loads only on the TensorRT version and GPU that built it: refuse any other."""
    problems = []
    built_version = str(entry.get("tensorrt_version", "unknown"))
    if built_version != tensorrt_version:
        problems.append(f"TensorRT {built_version}, this machine has {tensorrt_version}")
    built_capability = entry.get("compute_capability")
    if built_capability is None or compute_capability(built_capability) != tuple(capability):
        shown = "unknown" if built_capability is None else "%d.%d" % compute_capability(built_capability)
        problems.append(f"compute capability {shown}, this GPU has {capability[0]}.{capability[1]}")
    built_gpu = str(entry.get("gpu", "unknown")).strip()
    if built_gpu != gpu_name.strip():
        problems.append(f"GPU {built_gpu!r}, this one is {gpu_name.strip()!r}")
    if problems:
        raise _unusable(f"TensorRT engine {plan} was built for {'; '.join(problems)}")


def import_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, cudart)``: TensorRT and cuda-python's CUDA runtime module.

    Raises:
        ConfigError: either is not installed (naming the extra that installs them).
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigError("the tensorrt backend needs TensorRT and cuda-python (pip install 'tbps[trt]'); "
                          "use the onnxruntime backend on machines without them", code="tensorrt_missing") from e
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ConfigError("the tensorrt backend needs cuda-python (pip install 'tbps[trt]')") from e
    return trt, cudart


class CudaRuntime:
    """The few CUDA runtime calls the engines need, with errors raised (:class:`ConfigError`) instead of returned."""

    def __init__(self, cudart: Any):
        self.rt = cudart

    def __call__(self, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            raise ConfigError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}: "
                              "is an NVIDIA GPU with a working driver present?")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def set_device(self, index: int) -> None:
        """Make ``index`` this thread's current CUDA device."""
        self(self.rt.cudaSetDevice(index))

    def device(self, index: int) -> tuple[str, tuple[int, int]]:
        """Select device ``index``; returns its name and compute capability (major, minor)."""
        self.set_device(index)
        props = self(self.rt.cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.split("\x00", 1)[0].strip(), (int(props.major), int(props.minor))


_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTEngine:
    """One deserialized engine with its execution context, CUDA stream and device buffers,
    on the current CUDA device of the thread that creates it.

    Not thread-safe by itself: :class:`TensorRTBackend` runs it under a lock.

    Args:
        plan: the serialized engine.
        source: what to call it in errors (its file name).
    """

    def __init__(self, trt: Any, cuda: CudaRuntime, runtime: Any, plan: bytes, source: str):
        self.trt, self.cuda, self.runtime = trt, cuda, runtime  # the runtime outlives its engine
        self.stream = None
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise _unusable(f"TensorRT could not deserialize {source} (see its log above)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda(cuda.rt.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        # Profile 0's largest shape of the first input bounds the batch; larger batches are split.
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])

    def dtype(self, name: str) -> np.dtype:
        kind = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self.trt.nptype(kind))
        except (AttributeError, TypeError):  # a type nptype does not know: map by name
            return np.dtype(_TRT_DTYPES[kind.name])

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Named (B, ...) inputs -> the ``output`` tensor (B, ...), run in pieces of at most
        the optimisation profile's largest batch."""
        batch = len(next(iter(feeds.values())))
        step = max(1, self.max_batch)
        return np.concatenate([self._run_once({k: v[i:i + step] for k, v in feeds.items()}, output)
                               for i in range(0, batch, step)])

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (0, 0))
        if size < nbytes:  # grow, never shrink
            if pointer:
                self.cuda(self.cuda.rt.cudaFree(pointer))
            pointer, size = int(self.cuda(self.cuda.rt.cudaMalloc(nbytes))), nbytes
            self.buffers[name] = (pointer, size)
        return pointer

    def _run_once(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        rt, stream = self.cuda.rt, self.stream
        host_inputs = {name: np.ascontiguousarray(feeds[name], dtype=self.dtype(name)) for name in self.inputs}
        for name, array in host_inputs.items():
            if not self.context.set_input_shape(name, tuple(array.shape)):
                raise _unusable(f"input {name} of shape {array.shape} is outside the engine's optimisation profile",
                                " with a larger profile")
        result = np.empty(tuple(self.context.get_tensor_shape(output)), dtype=self.dtype(output))
        for name, array in host_inputs.items():
            pointer = self._buffer(name, max(array.nbytes, 1))
            self.context.set_tensor_address(name, pointer)
            self.cuda(rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                         rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        out_pointer = self._buffer(output, max(result.nbytes, 1))
        self.context.set_tensor_address(output, out_pointer)
        if not self.context.execute_async_v3(int(stream)):
            raise BundleError(f"TensorRT failed to run the engine for {output} (see its log above)")
        self.cuda(rt.cudaMemcpyAsync(result.ctypes.data, out_pointer, result.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        self.cuda(rt.cudaStreamSynchronize(stream))
        return result

    def close(self) -> None:
        """Free the device buffers and the stream (again: a no-op)."""
        for pointer, _ in self.buffers.values():
            self.cuda.rt.cudaFree(pointer)
        self.buffers.clear()
        if self.stream is not None:
            self.cuda.rt.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may be gone already
            pass


class TensorRTBackend:
    """The bundle's ``.plan`` engines on CUDA device ``device``.

    Before loading anything it refuses engines whose manifest entry records
    another TensorRT version, GPU or compute capability than this machine's.
    Engines are deserialized at first use; each runs under its own lock.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, device: int = 0):
        self.trt, cudart = import_tensorrt()
        self.cuda = CudaRuntime(cudart)
        self.directory = Path(directory)
        self.device = device
        self.gpu, self.capability = self.cuda.device(device)
        self.plans: dict[str, Path] = {}
        for tower in TOWERS:
            entry = plan_entry(manifest, tower)
            plan = resolve_inside(self.directory, entry.get("file", tower.plan_file),
                                  f"{self.directory}/manifest.json: tensorrt {tower.name} 'file'")
            check_engine_compatible(entry, plan.name, self.trt.__version__, self.gpu, self.capability)
            self.plans[tower.name] = plan
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self._engines: dict[str, TensorRTEngine] = {}
        self._locks = {tower.name: threading.Lock() for tower in TOWERS}
        self._load_lock = threading.Lock()

    def _engine(self, tower: TowerSpec) -> TensorRTEngine:
        with self._load_lock:
            if tower.name not in self._engines:
                plan = self.plans[tower.name]
                self.cuda.set_device(self.device)  # the engine's memory goes to this backend's device
                self._engines[tower.name] = TensorRTEngine(self.trt, self.cuda, self.runtime, plan.read_bytes(),
                                                           str(plan))
            return self._engines[tower.name]

    def run(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        tower.check_feeds(feeds)
        engine = self._engine(tower)
        with self._locks[tower.name]:
            self.cuda.set_device(self.device)  # the current device is per thread
            return engine.run(feeds, EMBEDDINGS.name).astype(np.float32, copy=False)  # (B, K, d)

    def close(self) -> None:
        """Free the engines' device memory and streams."""
        with self._load_lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may be gone already
            pass
