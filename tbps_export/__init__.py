"""tbps exporter: a training checkpoint to a bundle of ONNX towers (and TensorRT engines).

``export_bundle(checkpoint, output)`` is the whole job; ``tbps-export`` is its
command line. See DESIGN.md, "Artifacts", for the bundle's layout.
"""

from tbps_export.bundle_writer import ExportOptions, export_bundle, fingerprint, slot_names
from tbps_export.tensorrt_build import TrtOptions, to_mixed_precision
from tbps_export.validate import ParityError

__all__ = ["ExportOptions", "ParityError", "TrtOptions", "export_bundle", "fingerprint", "slot_names",
           "to_mixed_precision"]
