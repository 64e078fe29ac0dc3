"""Export validation: the graph against the contract, onnxruntime against PyTorch.

In the spirit of Hugging Face's exporters, validation collects every failure
(names, dtypes, fixed and dynamic axes, the largest difference per input) and
raises one typed error that says what differed and by how much. Parity runs on
inputs of other shapes than the export sample (batch 1 and 3; captions of
several lengths, one token, the max length, and padded batches).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from tbps_export.quiet import quiet_loggers
from tbps_export.towers import axis_sizes, build_tower
from tbps_runtime.contract import IMAGE_TOWER, PARITY_ATOL, TEXT_TOWER, TOWERS, TowerSpec
from tbps_runtime.errors import ExportError
from tbps_runtime.model.tokenizer import tokenize
from tbps_train.model import TextBasedPersonSearch

logger = logging.getLogger(__name__)

# Realistic captions of several lengths, in the style of CUHK-PEDES.
CAPTIONS = (
    "a woman in a red coat and black boots, carrying a white bag",
    "man",
    "The man wears a blue short-sleeved shirt, grey shorts and white sneakers. He has a black backpack.",
    "a girl with long dark hair",
    "She is wearing a long yellow dress with a brown belt and sandals, and holds a phone in her left hand.",
)
# ~700 tokens, truncated to the max length: the longest input the towers accept.
LONG_CAPTION = " ".join(["a tall person in a dark green jacket, light blue jeans and red running shoes"] * 40)


class ParityError(ExportError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


@dataclass
class CaseResult:
    """One input batch: the worst element difference and the worst per-slot cosine."""

    input: str
    max_abs_diff: float
    min_cosine: float
    max_norm_error: float  # |‖slot‖ − 1|, largest over slots


@dataclass
class ParityCase:
    """A labelled batch of named numpy inputs."""

    label: str
    inputs: dict[str, np.ndarray]


# ---- the graph against the contract ---------------------------------------

def check_graph(path: str | Path, spec: TowerSpec, sizes: dict[str, int]) -> list[str]:
    """onnx.checker with full check, then I/O names, dtypes and axes against ``spec``;
    returns every failure (empty when the graph is as declared)."""
    failures = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        failures.append(f"onnx.checker rejects {Path(path).name}: {' '.join(str(e).split())}")
    graph = onnx.load(str(path), load_external_data=False).graph
    failures += _check_values(spec.name, "input", list(graph.input), spec.inputs, sizes)
    return failures + _check_values(spec.name, "output", list(graph.output), spec.outputs, sizes)


def _check_values(tower: str, kind: str, values: list, specs: tuple, sizes: dict[str, int]) -> list[str]:
    failures = []
    if [v.name for v in values] != [s.name for s in specs]:
        return [f"{tower} {kind}s are {[v.name for v in values]}, the contract says {[s.name for s in specs]}"]
    for value, spec in zip(values, specs):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)):
            dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
            failures.append(f"{tower} {kind} {value.name} is {dtype}, the contract says {spec.dtype}")
        dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
        expected = spec.shape(sizes)
        if len(dims) != len(expected):
            failures.append(f"{tower} {kind} {value.name} has shape {dims}, the contract says {expected}")
            continue
        for axis, got, want in zip(spec.axes, dims, expected):
            if axis in spec.dynamic and not isinstance(got, str):
                failures.append(f"{tower} {kind} {value.name} axis '{axis}' is fixed at {got}: it must be dynamic")
            elif axis not in spec.dynamic and got != want:
                failures.append(f"{tower} {kind} {value.name} axis '{axis}' is {got}, expected {want}")
    return failures


# ---- parity inputs ---------------------------------------------------------

def image_cases(image_size: tuple[int, int], batches: tuple[int, ...] = (1, 3),
                seed: int = 1234) -> list[ParityCase]:
    """Fresh random normalised (B, 3, H, W) images at each batch size."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    (pixels,) = IMAGE_TOWER.inputs
    return [ParityCase(f"random images, batch {b}",
                       {pixels.name: rng.standard_normal((b, 3, height, width), dtype=np.float32)})
            for b in batches]


def text_cases(tokenizer: Tokenizer, max_length: int) -> list[ParityCase]:
    """Captions at batch 1 and in padded batches, a one-token input, and the max length
    (``tokenizer`` truncates to ``max_length``)."""
    ids, mask = TEXT_TOWER.inputs

    def case(label: str, texts: list[str]) -> ParityCase:
        with quiet_loggers(tokenize.__module__):  # the max-length case truncates on purpose
            input_ids, attention_mask = tokenize(tokenizer, texts)
        return ParityCase(label, {ids.name: input_ids, mask.name: attention_mask})

    first, _ = tokenize(tokenizer, [CAPTIONS[0]])
    one_token = first[:, :1]  # the [CLS] token alone: sequence length 1
    cases = [
        case("caption, batch 1", [CAPTIONS[0]]),
        case("short caption, batch 1", [CAPTIONS[1]]),
        ParityCase("one token, batch 1", {ids.name: one_token, mask.name: np.ones_like(one_token)}),
        case(f"max-length caption ({max_length} tokens), batch 1", [LONG_CAPTION]),
        case(f"padded batch of {len(CAPTIONS)} captions", list(CAPTIONS)),
        case(f"padded batch of {len(CAPTIONS) + 1} captions with a max-length one", [*CAPTIONS, LONG_CAPTION]),
    ]
    return cases


# ---- parity ----------------------------------------------------------------

def compare(reference: np.ndarray, candidate: np.ndarray, label: str) -> CaseResult:
    """Two (B, K, d) outputs: max |a − b|, min cosine per slot, worst slot-norm error of ``candidate``."""
    if reference.shape != candidate.shape:
        return CaseResult(label, float("inf"), -1.0, float("inf"))
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    norms = np.linalg.norm(candidate, axis=-1)
    cosine = (reference * candidate).sum(-1) / np.maximum(np.linalg.norm(reference, axis=-1) * norms, 1e-12)
    return CaseResult(label, float(np.abs(reference - candidate).max()), float(cosine.min()),
                      float(np.abs(norms - 1.0).max()))


def torch_runner(spec: TowerSpec, model: TextBasedPersonSearch) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The PyTorch reference: named numpy inputs -> (B, K, d) float32."""
    tower = build_tower(spec, model)

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return tower(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()

    return run


def cpu_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (None: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: str | Path, threads: int | None = None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """onnxruntime on the CPU: named numpy inputs -> the first output."""
    session = cpu_session(path, threads)
    return lambda inputs: session.run(None, inputs)[0]


def check_parity(tower: str, reference: Callable, candidate: Callable, cases: list[ParityCase],
                 atol: float = PARITY_ATOL) -> tuple[dict, list[str]]:
    """Run every case through both. Returns the figures the manifest records (the
    worst difference and cosine over all cases, and each case's own figures) and
    one failure line per case over ``atol``."""
    results = [compare(reference(c.inputs), candidate(c.inputs), c.label) for c in cases]
    failures = [f"{tower}, {r.input}: max abs difference {r.max_abs_diff:.3g} > {atol:g}"
                f" (min cosine {r.min_cosine:.6f})" for r in results if not r.max_abs_diff <= atol]
    failures += [f"{tower}, {r.input}: a slot's L2 norm is off 1 by {r.max_norm_error:.3g} > {atol:g}"
                 for r in results if not r.max_norm_error <= atol]
    summary = {"max_abs_diff": max(r.max_abs_diff for r in results),
               "min_cosine": min(r.min_cosine for r in results),
               "cases": [asdict(r) for r in results]}
    logger.info("%s parity: max abs diff %.2e, min cosine %.7f over %d inputs",
                tower, summary["max_abs_diff"], summary["min_cosine"], len(results))
    return summary, failures


def parity_cases(spec: TowerSpec, image_size: tuple[int, int], tokenizer: Tokenizer,
                 max_length: int) -> list[ParityCase]:
    """The validation inputs of one tower."""
    return image_cases(image_size) if spec == IMAGE_TOWER else text_cases(tokenizer, max_length)


def validate_towers(paths: dict[str, Path], model: TextBasedPersonSearch, tokenizer: Tokenizer,
                    atol: float = PARITY_ATOL, threads: int | None = None) -> dict:
    """Graph checks and onnxruntime-vs-PyTorch parity for every exported tower.

    ``paths`` maps tower names (the contract's) to their ``.onnx`` files; ``threads`` are the
    onnxruntime sessions' intra-op threads (None: onnxruntime's default). Returns
    the manifest's ``parity`` record; raises one :class:`ExportError` (a
    :class:`ParityError` when only numbers differ) listing every failure.
    """
    contract_failures, parity_failures, parity = [], [], {"atol": atol, "reference": "PyTorch (CPU, float32)"}
    for spec in TOWERS:
        path = paths[spec.name]
        failures = check_graph(path, spec, axis_sizes(model))
        if failures:
            contract_failures += failures
            continue
        cases = parity_cases(spec, model.config.image_size, tokenizer, model.config.max_text_length)
        parity[spec.name], failures = check_parity(spec.name, torch_runner(spec, model), onnx_runner(path, threads),
                                                   cases, atol)
        parity_failures += failures
    if contract_failures:
        raise ExportError("the exported graphs do not match the export contract: " + "; ".join(contract_failures))
    if parity_failures:
        raise ParityError("onnxruntime does not reproduce PyTorch within tolerance: " + "; ".join(parity_failures))
    return parity
