"""Where the towers run: onnxruntime (default, any machine) or TensorRT engines (NVIDIA GPUs).

Both honour one small interface, :class:`Backend`: feed a tower's inputs by
the contract's tensor names, get its (B, K, d) float32 ``embeddings`` back.
tensorrt and cuda-python are imported only inside :class:`TensorRTBackend`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from tbps_runtime.bundle import Manifest
from tbps_runtime.contract import BACKENDS, EMBEDDINGS, TOWERS, TowerSpec
from tbps_runtime.errors import BundleError, ConfigError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
REBUILD_HINT = "rebuild the engines on this machine with `tbps-export --ckpt m.pt --trt`"


class Backend(Protocol):
    """Runs one tower: ``feeds`` maps each of ``tower.inputs``' names to an array; returns (B, K, d) float32."""

    def run(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


def files_for(backend: str, manifest: Manifest) -> list[str]:
    """The bundle files a backend loads (their checksums are verified before loading)."""
    if backend == "onnxruntime":
        return [tower.onnx_file for tower in TOWERS]
    if backend == "tensorrt":
        return [plan_entry(manifest, tower).get("file", tower.plan_file) for tower in TOWERS]
    raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def create_backend(backend: str, directory: str | Path, manifest: Manifest, *, threads: int | None = None,
                   providers: Sequence[str] | None = None, device: int = 0) -> Backend:
    """A backend by name: ``"onnxruntime"`` (``threads``, ``providers``) or ``"tensorrt"`` (``device``)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(directory, manifest, threads=threads, providers=providers)
    if backend == "tensorrt":
        return TensorRTBackend(directory, manifest, device=device)
    raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def _check_feeds(tower: TowerSpec, feeds: dict[str, np.ndarray]) -> None:
    expected = {spec.name for spec in tower.inputs}
    if set(feeds) != expected:
        raise ValueError(f"{tower.name} takes inputs {sorted(expected)}, got {sorted(feeds)}")


class OnnxRuntimeBackend:
    """The towers' ONNX graphs in onnxruntime sessions (created at first use; sessions are thread-safe).

    Args:
        threads: intra-op threads per session (default: onnxruntime's, all cores).
        providers: execution providers in priority order (default: the CPU). When a
            non-CPU provider is asked for, a session that silently fell back to the
            CPU (onnxruntime-gpu without a working CUDA does that) is refused.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, threads: int | None = None,
                 providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.directory = Path(directory)
        self.providers = list(providers) if providers else [CPU_PROVIDER]
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ConfigError(f"onnxruntime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                              "for CUDA/TensorRT install onnxruntime-gpu (pip install 'tbps[gpu]')")
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.log_severity_level = 3  # errors only: warnings would clutter the commands' stderr
        if threads is not None:
            self.options.intra_op_num_threads = threads
            self.options.inter_op_num_threads = 1
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def session(self, tower: TowerSpec) -> Any:
        """The tower's ``InferenceSession``, created once."""
        with self._lock:
            if tower.name not in self._sessions:
                self._sessions[tower.name] = self._create(tower)
            return self._sessions[tower.name]

    def _create(self, tower: TowerSpec) -> Any:
        path = self.directory / tower.onnx_file
        try:
            session = self._ort.InferenceSession(str(path), sess_options=self.options, providers=self.providers)
        except Exception as e:  # onnxruntime's errors derive from Exception only
            raise BundleError(f"onnxruntime cannot load {path}: {e}; re-export the bundle") from e
        active = session.get_providers()
        fell_back = [p for p in self.providers if p != CPU_PROVIDER and p not in active]
        if fell_back:
            raise ConfigError(f"onnxruntime fell back to {', '.join(active)} for {tower.name}: "
                              f"{', '.join(fell_back)} could not start (check the CUDA/cuDNN/TensorRT libraries "
                              "that onnxruntime-gpu needs), or drop the GPU providers to run on the CPU")
        names = {i.name for i in session.get_inputs()}
        if names != {spec.name for spec in tower.inputs}:
            raise BundleError(f"{path} takes inputs {sorted(names)}, the contract says "
                              f"{[s.name for s in tower.inputs]}: re-export the bundle")
        return session

    def run(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        _check_feeds(tower, feeds)
        session = self.session(tower)
        (embeddings,) = session.run([EMBEDDINGS.name], feeds)
        return np.asarray(embeddings, dtype=np.float32)  # (B, K, d)


# --- TensorRT -----------------------------------------------------------------------------------


def plan_entry(manifest: Manifest, tower: TowerSpec) -> dict[str, Any]:
    """The manifest's record of a tower's TensorRT engine (keyed by tower or plan file name)."""
    entry = manifest.tensorrt.get(tower.name) or manifest.tensorrt.get(tower.plan_file)
    if not entry:
        raise BundleError(f"the bundle has no TensorRT engine for {tower.name}: {REBUILD_HINT}, "
                          "or use --backend onnxruntime")
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
        raise BundleError(f"TensorRT engine {plan} was built for {'; '.join(problems)}: {REBUILD_HINT}")


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigError("the tensorrt backend needs TensorRT and cuda-python (pip install 'tbps[trt]'); "
                          "use --backend onnxruntime on machines without them") from e
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ConfigError("the tensorrt backend needs cuda-python (pip install 'tbps[trt]')") from e
    return trt, cudart


class _Cuda:
    """The few CUDA runtime calls the engines need, with errors raised instead of returned."""

    def __init__(self, cudart: Any):
        self.rt = cudart

    def __call__(self, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, name = self.rt.cudaGetErrorName(err)
            raise ConfigError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}: "
                              "is an NVIDIA GPU with a working driver present?")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def device(self, index: int) -> tuple[str, tuple[int, int]]:
        self(self.rt.cudaSetDevice(index))
        props = self(self.rt.cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.split("\x00", 1)[0].strip(), (int(props.major), int(props.minor))


_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class _Engine:
    """One deserialized engine with its execution context, CUDA stream and device buffers.
    Not thread-safe by itself: :class:`TensorRTBackend` runs it under a lock."""

    def __init__(self, trt: Any, cuda: _Cuda, runtime: Any, plan: Path):
        self.trt, self.cuda = trt, cuda
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT could not deserialize {plan} (see its log above): {REBUILD_HINT}")
        self.context = self.engine.create_execution_context()
        self.stream = cuda(cuda.rt.cudaStreamCreate())
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        # Profile 0's largest shape of the first input bounds the batch; larger batches are split.
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])

    def dtype(self, name: str) -> np.dtype:
        kind = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self.trt.nptype(kind))
        except (AttributeError, TypeError):  # a type nptype does not know: map by name
            return np.dtype(_TRT_DTYPES[kind.name])

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (0, 0))
        if size < nbytes:  # grow, never shrink
            if pointer:
                self.cuda(self.cuda.rt.cudaFree(pointer))
            pointer, size = int(self.cuda(self.cuda.rt.cudaMalloc(nbytes))), nbytes
            self.buffers[name] = (pointer, size)
        return pointer

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        rt, stream = self.cuda.rt, self.stream
        host_inputs = {name: np.ascontiguousarray(feeds[name], dtype=self.dtype(name)) for name in self.inputs}
        for name, array in host_inputs.items():
            if not self.context.set_input_shape(name, tuple(array.shape)):
                raise BundleError(f"input {name} of shape {array.shape} is outside the engine's optimisation "
                                  f"profile: {REBUILD_HINT} with a larger profile")
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
        for pointer, _ in self.buffers.values():
            self.cuda.rt.cudaFree(pointer)
        self.buffers.clear()
        if self.stream is not None:
            self.cuda.rt.cudaStreamDestroy(self.stream)
            self.stream = None


class TensorRTBackend:
    """The bundle's ``.plan`` engines through TensorRT's name-based tensor API (TensorRT 10 and 11).

    Before loading anything it refuses engines whose manifest entry records
    another TensorRT version, GPU or compute capability than this machine's.
    Engines are deserialized at first use; each runs under its own lock.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, device: int = 0):
        self.trt, cudart = _import_tensorrt()
        self.cuda = _Cuda(cudart)
        self.directory = Path(directory)
        self.device = device
        self.gpu, self.capability = self.cuda.device(device)
        self.plans: dict[str, Path] = {}
        for tower in TOWERS:
            entry = plan_entry(manifest, tower)
            plan = self.directory / entry.get("file", tower.plan_file)
            check_engine_compatible(entry, plan.name, self.trt.__version__, self.gpu, self.capability)
            self.plans[tower.name] = plan
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self._engines: dict[str, _Engine] = {}
        self._locks = {tower.name: threading.Lock() for tower in TOWERS}
        self._load_lock = threading.Lock()

    def _engine(self, tower: TowerSpec) -> _Engine:
        with self._load_lock:
            if tower.name not in self._engines:
                self._engines[tower.name] = _Engine(self.trt, self.cuda, self.runtime, self.plans[tower.name])
            return self._engines[tower.name]

    def run(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        _check_feeds(tower, feeds)
        engine = self._engine(tower)
        batch = len(next(iter(feeds.values())))
        step = max(1, engine.max_batch)
        with self._locks[tower.name]:
            self.cuda(self.cuda.rt.cudaSetDevice(self.device))  # the current device is per thread
            parts = [engine.run({k: v[i:i + step] for k, v in feeds.items()}, EMBEDDINGS.name)
                     for i in range(0, batch, step)]
        return np.concatenate(parts).astype(np.float32, copy=False)  # (B, K, d)

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
