"""tbps runtime: numpy + onnxruntime text-based person search, no PyTorch."""

from tbps_runtime.errors import TbpsError
from tbps_runtime.metrics import retrieval_metrics

__all__ = ["TbpsError", "retrieval_metrics"]
