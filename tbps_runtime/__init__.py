"""tbps runtime: numpy + onnxruntime text-based person search, no PyTorch.

The public names load on first use, so ``import tbps_runtime`` (and the
``tbps`` command's start-up) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Encoder": "tbps_runtime.model.encoder",
    "Gallery": "tbps_runtime.gallery.npy",
    "load_gallery": "tbps_runtime.gallery.open",
    "Match": "tbps_runtime.search",
    "PersonSearch": "tbps_runtime.search",
    "open_store": "tbps_runtime.store.open",
    "RowFilter": "tbps_runtime.store.rows",
    "Store": "tbps_runtime.store.base",
    "StoreHit": "tbps_runtime.store.rows",
    "TbpsError": "tbps_runtime.errors",
    "retrieval_metrics": "tbps_runtime.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tbps_runtime' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
