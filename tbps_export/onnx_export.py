"""One tower to one single-file ONNX graph with ``torch.onnx.export(dynamo=True)``.

The legacy TorchScript exporter fails on nn.MultiheadAttention's fast path and
bakes the sequence length in (DESIGN.md); the dynamo exporter takes
``dynamic_shapes`` built from the contract (batch on both towers, sequence on
the text tower, capped at the model's max length).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import uses_external_data

from tbps_export.quiet import quiet_loggers
from tbps_export.towers import build_tower, dynamic_shapes, sample_inputs
from tbps_runtime.contract import OPSET, TowerSpec
from tbps_runtime.errors import ExportError
from tbps_train.model import TextBasedPersonSearch

logger = logging.getLogger(__name__)

# Loggers of the exporter's ONNX optimiser that print routine notes at INFO/WARNING.
_NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


def export_tower(spec: TowerSpec, model: TextBasedPersonSearch, path: str | Path) -> Path:
    """Write ``spec``'s graph of ``model`` to ``path`` (weights embedded, opset OPSET)."""
    path = Path(path)
    tower = build_tower(spec, model)
    inputs = sample_inputs(spec, model)  # batch 2, sequence 7: sizes 0/1 would be specialised
    try:
        with _quiet():
            torch.onnx.export(
                tower, (), str(path), kwargs=inputs, dynamo=True, opset_version=OPSET,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dynamic_shapes(spec, model), external_data=False, optimize=True, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean "this model did not export"
        raise ExportError(f"torch.onnx.export failed for the {spec.name}: {type(e).__name__}: {e}") from e
    _check_single_file(path, spec)
    logger.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
    return path


def _check_single_file(path: Path, spec: TowerSpec) -> None:
    """The graph must load from its one file: every initializer embedded."""
    if not path.is_file():
        raise ExportError(f"torch.onnx.export wrote no {path.name} for the {spec.name}")
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise ExportError(f"{path.name} keeps {len(external)} weight(s) in external data files "
                          f"(e.g. {external[0]}): the bundle needs single-file graphs under 2 GB")


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's routine log lines and warnings; errors still raise."""
    with quiet_loggers(*_NOISY_LOGGERS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
