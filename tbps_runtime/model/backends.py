"""Where the towers run: onnxruntime (default, any machine) or TensorRT engines (NVIDIA GPUs).

Both honour one small interface, :class:`Backend`: feed a tower's inputs by
the contract's tensor names, get its (B, K, d) float32 ``embeddings`` back.
The TensorRT backend is :mod:`tbps_runtime.model.tensorrt`; tensorrt and
cuda-python are imported only when it is created.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from tbps_runtime.contract import BACKENDS, EMBEDDINGS, TOWERS, TowerSpec
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.model.bundle import Manifest
from tbps_runtime.model.tensorrt import TensorRTBackend, plan_entry
from tbps_runtime.threads import choose_threads, usable_cores

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"


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
                   providers: Sequence[str] | None = None, device: int = 0, spinning: bool | None = None) -> Backend:
    """A backend by name: ``"onnxruntime"`` (``threads``, ``providers``, ``spinning``) or ``"tensorrt"``
    (``device``)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(directory, manifest, threads=threads, providers=providers, spinning=spinning)
    if backend == "tensorrt":
        return TensorRTBackend(directory, manifest, device=device)
    raise ConfigError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}  # numpy dtype -> onnxruntime's name


def check_graph(path: Path, tower: TowerSpec, manifest: Manifest, inputs: Sequence[Any],
                outputs: Sequence[Any]) -> None:
    """A graph's declared inputs and outputs (onnxruntime ``NodeArg``s) against the contract, with the
    manifest's sizes (image size, K, d; an explain graph's too, :meth:`Manifest.tower_sizes`) for the fixed
    axes: names, dtypes, ranks and every fixed dim.
    A dim the graph fixes where the contract has a dynamic axis (batch fixed at 1) is refused too.

    Raises:
        BundleError: listing every difference.
    """
    problems, sizes = [], manifest.tower_sizes(tower)
    for kind, specs, args in (("input", tower.inputs, inputs), ("output", tower.outputs, outputs)):
        declared = {arg.name: arg for arg in args}
        expected = [spec.name for spec in specs]
        if kind == "input" and sorted(declared) != sorted(expected) or \
                kind == "output" and not set(expected) <= set(declared):
            verb = "takes" if kind == "input" else "gives"
            problems.append(f"{verb} {kind}s {sorted(declared)}, the contract says {expected}")
            continue
        for spec in specs:
            problems += _tensor_problems(f"{kind} {spec.name}", spec.dtype, spec.shape(sizes), declared[spec.name])
    if problems:
        raise BundleError(f"{path} does not match its manifest: {'; '.join(problems)}; re-export the bundle")


def open_session(path: Path, tower: TowerSpec, manifest: Manifest, options: Any = None,
                 providers: Sequence[str] = (CPU_PROVIDER,)) -> Any:
    """An onnxruntime session of one of a bundle's graphs (a tower or an explain graph), its declared
    inputs and outputs checked by :func:`check_graph`.

    Raises:
        BundleError: a file onnxruntime cannot load, or a graph that does not match the contract.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as e:  # onnxruntime's errors derive from Exception only
        raise BundleError(f"onnxruntime cannot load {path}: {e}; re-export the bundle") from e
    check_graph(path, tower, manifest, session.get_inputs(), session.get_outputs())
    return session


def _tensor_problems(what: str, dtype: str, shape: list[str | int], arg: Any) -> list[str]:
    if arg.type != _ORT_TYPES.get(dtype, dtype):
        return [f"{what} is {arg.type}, not {dtype}"]
    if arg.shape is None or len(arg.shape) != len(shape):
        return [f"{what} has shape {arg.shape}, expected rank {len(shape)} {shape}"]
    return [f"{what} has shape {arg.shape}, expected {shape}" for want, got in zip(shape, arg.shape)
            if isinstance(got, int) and got != want][:1]


class OnnxRuntimeBackend:
    """The towers' ONNX graphs in onnxruntime sessions (created at first use; sessions are thread-safe).

    Args:
        threads: intra-op threads per session (default: the cores other processes leave
            idle when the backend is created, see tbps_runtime.threads).
        providers: execution providers in priority order (default: the CPU). When a
            non-CPU provider is asked for, a session that silently fell back to the
            CPU (onnxruntime-gpu without a working CUDA does that) is refused.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, spinning: bool | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.directory = Path(directory)
        self.manifest = manifest
        self.providers = list(providers) if providers else [CPU_PROVIDER]
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ConfigError(f"onnxruntime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                              "for CUDA/TensorRT install onnxruntime-gpu (pip install 'tbps[gpu]')")
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.log_severity_level = 3  # errors only: warnings would clutter the commands' stderr
        self.threads = choose_threads(threads)
        self.options.intra_op_num_threads = self.threads.threads
        self.options.inter_op_num_threads = 1
        if spinning is False or spinning is None and self.threads.adaptive and self.threads.threads < usable_cores():
            # Others are busy (or, spinning=False, this process has other work, e.g. a decoding thread):
            # a thread that spin-waits between ops takes the core they need.
            self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def session(self, tower: TowerSpec) -> Any:
        """The tower's ``InferenceSession``, created once."""
        with self._lock:
            if tower.name not in self._sessions:
                self._sessions[tower.name] = self._create(tower)
            return self._sessions[tower.name]

    def _create(self, tower: TowerSpec) -> Any:
        session = open_session(self.directory / tower.onnx_file, tower, self.manifest, self.options, self.providers)
        active = session.get_providers()
        fell_back = [p for p in self.providers if p != CPU_PROVIDER and p not in active]
        if fell_back:
            raise ConfigError(f"onnxruntime fell back to {', '.join(active)} for {tower.name}: "
                              f"{', '.join(fell_back)} could not start (check the CUDA/cuDNN/TensorRT libraries "
                              "that onnxruntime-gpu needs), or drop the GPU providers to run on the CPU")
        return session

    def run(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        tower.check_feeds(feeds)
        session = self.session(tower)
        (embeddings,) = session.run([EMBEDDINGS.name], feeds)
        return np.asarray(embeddings, dtype=np.float32)  # (B, K, d)
