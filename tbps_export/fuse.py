"""Transformer fusions for onnxruntime, applied offline when a bundle is exported.

The dynamo exporter writes BERT's self-attention as MatMul/Softmax/Transpose
chains that neither onnxruntime's session optimiser nor its older
``onnxruntime.transformers`` optimiser recognise (those match the TorchScript
exporter's patterns). onnxscript's ``ort_fusions`` match the dynamo
exporter's graphs: each self-attention block becomes one ``Attention`` node,
residual + LayerNorm ``SkipLayerNormalization``, bias + erf-GELU ``BiasGelu``,
and the shared decoder's cross-attention ``MultiHeadAttention``. These are
onnxruntime contrib ops, hardware-independent, so the bundle stays portable
across CPUs; TensorRT engines are built from the unfused graph.

onnxscript's ``optimize_for_ort`` also rewrites MatMuls into ``FusedMatMul``
and (0.7) folds a Transpose into ``transBatchA`` of a 3-D x 2-D product,
which onnxruntime rejects at run time; :func:`fuse_tower` therefore runs the
transformer fusions and the clean-up passes without that rule set.
onnxruntime fuses MatMul with Transpose itself when a session is created.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from tbps_export.quiet import quiet_loggers
from tbps_runtime.errors import ExportError

logger = logging.getLogger(__name__)

# Fused node types a bundle's manifest records (the list plus the decoder's MHA).
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
             "EmbedLayerNormalization")

_FOLD_LIMIT = 1 << 26  # elements: every weight of a BERT-base layer


def fuse_tower(source: Path, target: Path) -> dict[str, int]:
    """Write ``source`` with onnxruntime's transformer fusions to ``target``; returns the fused node counts."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions._core import fuse_xformers
    from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

    try:
        with quiet_loggers("onnxscript", "onnx_ir"):
            model = ir.load(str(source))
            rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])  # exposes the attention projections
            model, _ = fuse_xformers(model)
            # Fold the packed QKV weights (a Concat of three initializers) into one initializer:
            # the int8 quantizer only quantizes an Attention whose weight is a constant.
            optimize(model, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT)
            ir.passes.Sequential(
                common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                common_passes.RemoveInitializersFromInputsPass(),
                common_passes.ShapeInferencePass(),
            )(model)
            ir.save(model, str(target))
    except Exception as e:  # onnxscript raises many types; all mean "this graph did not fuse"
        raise ExportError(f"fusing {source.name} failed: {type(e).__name__}: {e}") from e
    counts = fused_op_counts(target)
    logger.info("fused %s: %s", target.name, ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing")
    return counts


def fused_op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each :data:`FUSED_OPS` type ``path``'s graph holds (absent types omitted)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = collections.Counter(node.op_type for node in graph.node if node.op_type in FUSED_OPS)
    return {op: found[op] for op in FUSED_OPS if found[op]}


def load_time_fusions(path: Path) -> dict[str, int]:
    """How onnxruntime's CPU session (ORT_ENABLE_ALL, this CPU) changes ``path``'s graph at load: the
    change in node count per ``domain.op`` (e.g. ``com.microsoft.nchwc.Conv`` +53 with ``Clip`` -36:
    convolutions in the blocked layout with ReLU6 fused in). CPU-specific, so done at load, not saved."""
    import tempfile

    import onnx
    import onnxruntime as ort

    def census(graph: onnx.GraphProto) -> collections.Counter:
        return collections.Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node)

    with tempfile.TemporaryDirectory(prefix="tbps-fuse-") as scratch:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        after = census(onnx.load(options.optimized_model_filepath, load_external_data=False).graph)
    before = census(onnx.load(str(path), load_external_data=False).graph)
    return {op: after[op] - before[op] for op in sorted(set(after) | set(before)) if after[op] != before[op]}
