"""tbps exporter: a training checkpoint to a bundle of ONNX towers (and TensorRT engines).

``export_bundle(checkpoint, output)`` is the whole job; ``tbps export`` is its
command line. See DESIGN.md, "Artifacts", for the bundle's layout. The public
names load on first use (they pull in PyTorch).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ExportOptions": "tbps_export.bundle_writer",
    "export_bundle": "tbps_export.bundle_writer",
    "fingerprint": "tbps_export.bundle_writer",
    "slot_names": "tbps_export.bundle_writer",
    "TrtOptions": "tbps_export.tensorrt_build",
    "to_mixed_precision": "tbps_export.tensorrt_build",
    "ParityError": "tbps_export.validate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tbps_export' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
