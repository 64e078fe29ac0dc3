"""tbps runtime: numpy + onnxruntime text-based person search, no PyTorch."""

from tbps_runtime.errors import TbpsError
from tbps_runtime.gallery import Gallery, load_gallery
from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.search import Match, PersonSearch

__all__ = ["Gallery", "Match", "PersonSearch", "TbpsError", "load_gallery", "retrieval_metrics"]
