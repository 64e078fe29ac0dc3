"""Optional "explain" graphs: the towers, also emitting the decoder's cross-attention (paper Fig. 4).

``tbps export --explain`` writes ``image_tower.explain.onnx`` and
``text_tower.explain.onnx`` beside the default graphs (which stay as they
are); the manifest lists them with their checksums under ``towers``. The
runtime's ``PersonSearch.explain`` and ``tbps rank --explain`` read them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tbps_export.onnx_export import _check_single_file, _quiet
from tbps_export.towers import dynamic_shapes, sample_inputs
from tbps_export.validate import cpu_session
from tbps_runtime.contract import EXPLAIN_TOWERS, IMAGE_EXPLAIN_TOWER, OPSET, TEXT_EXPLAIN_TOWER, TowerSpec
from tbps_runtime.errors import ExportError
from tbps_train.model import TextBasedPersonSearch, normalize_slots

logger = logging.getLogger(__name__)


class ImageExplainTower(nn.Module):
    """(B, 3, H, W) -> (B, K, d) unit-norm embeddings and (B, D, h, w) decoder attention."""

    def __init__(self, model: TextBasedPersonSearch):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.encode_image(pixel_values)
        h, w = self.model.feature_hw
        attention = out.attention.reshape(out.attention.shape[0], out.attention.shape[1], h, w)  # (B, D, h, w)
        return normalize_slots(out.slots), attention


class TextExplainTower(nn.Module):
    """(B, L) ids and mask -> (B, K, d) unit-norm embeddings and (B, D + P, L) decoder attention."""

    def __init__(self, model: TextBasedPersonSearch):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.encode_text(input_ids, attention_mask)
        return normalize_slots(out.slots), out.attention


_MODULES = {IMAGE_EXPLAIN_TOWER.name: ImageExplainTower, TEXT_EXPLAIN_TOWER.name: TextExplainTower}


def export_explain_towers(directory: Path, model: TextBasedPersonSearch, atol: float,
                          threads: int | None = None) -> dict[str, Any]:
    """Write both explain graphs into ``directory``, check them against PyTorch (onnxruntime with ``threads``
    intra-op threads); returns parity figures."""
    parity = {}
    for spec in EXPLAIN_TOWERS:
        module = _MODULES[spec.name](model).eval()
        path = directory / spec.onnx_file
        try:
            with _quiet():
                torch.onnx.export(
                    module, (), str(path), kwargs=sample_inputs(spec, model), dynamo=True, opset_version=OPSET,
                    input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                    dynamic_shapes=dynamic_shapes(spec, model), external_data=False, optimize=True,
                    verbose=False,
                )
        except Exception as e:  # the exporter raises many types; all mean "this model did not export"
            raise ExportError(f"torch.onnx.export failed for the {spec.name}: {type(e).__name__}: {e}") from e
        _check_single_file(path, spec)
        parity[spec.name] = _parity(spec, module, path, model, atol, threads)
        logger.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
    return parity


def _parity(spec: TowerSpec, module: nn.Module, path: Path, model: TextBasedPersonSearch, atol: float,
            threads: int | None) -> dict:
    """onnxruntime vs PyTorch at batch 3 (not the export's 2), every output within ``atol``."""
    inputs = sample_inputs(spec, model, batch=3, sequence=5, seed=1)
    with torch.no_grad():
        expected = [t.numpy() for t in module(**inputs)]
    got = cpu_session(path, threads).run([t.name for t in spec.outputs], {k: v.numpy() for k, v in inputs.items()})
    figures = {}
    for tensor, want, have in zip(spec.outputs, expected, got):
        if want.shape != have.shape:
            raise ExportError(f"{path.name}: {tensor.name} is {have.shape} in ONNX, {want.shape} in PyTorch")
        figures[tensor.name] = float(np.abs(want - have).max())
    bad = {name: diff for name, diff in figures.items() if not diff <= atol}
    if bad:
        raise ExportError(f"{path.name} differs from PyTorch beyond {atol}: "
                          + ", ".join(f"{n} by {d:.2e}" for n, d in bad.items()))
    return figures


def tower_entries(model: TextBasedPersonSearch, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The manifest's ``towers`` records of the explain graphs (shapes resolved from the model)."""
    cfg = model.config
    sizes = {**sizes, "coarse": cfg.num_coarse, "decoder_tokens": cfg.num_coarse + cfg.num_fine,
             "feature_height": model.feature_hw[0], "feature_width": model.feature_hw[1]}
    io = lambda specs: [{"name": s.name, "dtype": s.dtype, "shape": s.shape(sizes)} for s in specs]
    return {spec.name: {"file": spec.onnx_file, "inputs": io(spec.inputs), "outputs": io(spec.outputs)}
            for spec in EXPLAIN_TOWERS}
