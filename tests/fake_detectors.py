"""Stand-in person detectors for the ingest tests: constant ONNX graphs in the YOLO export layouts, and
ground truth that is interrupted at a chosen frame.

``yolo_constant_graph`` is the end-to-end tests' detector: a graph whose output is a fixed prediction,
so a still scene's people are "detected" where the test put them.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tbps_runtime.ingest.detectors import FileDetections


def anchor_count(layout: str, input_size) -> int:
    """Rows of ultralytics' heads at ``input_size``: one per cell at strides 8/16/32 (v8), three (v5)."""
    height, width = input_size
    cells = sum((height // s) * (width // s) for s in (8, 16, 32))
    return {"v8": cells, "v5": 3 * cells, "e2e": 300}[layout]


def constant_graph(path, prediction, input_size=(640, 640), *, dtype=np.float32, input_shape=None,
                   output_shape=None, metadata=None, outputs=1):
    """An ONNX file 'images' (1, 3, h, w) -> 'output0' = ``prediction`` + 0 * mean(images)
    (``outputs=2``: a second output too). Shapes may be declared dynamic with strings."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    prediction = np.asarray(prediction, dtype)
    nodes = [
        helper.make_node("Constant", [], ["prediction"], value=numpy_helper.from_array(prediction)),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((), dtype))),
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["prediction", "nothing"], ["output0"]),
    ]
    graph_outputs = [helper.make_tensor_value_info("output0", elem, output_shape or list(prediction.shape))]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["prediction"], ["output1"]))
        graph_outputs.append(helper.make_tensor_value_info("output1", elem, list(prediction.shape)))
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", elem, input_shape or [1, 3, *input_size])], graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def yolo_constant_graph(path, boxes_xyxy_in_input_pixels, scores, layout="v8", input_size=(640, 640), *,
                        classes=None, nc=None, dtype=np.float32, **graph_options):
    """A YOLO export of ``layout`` ("v5", "v8" or "e2e") that always predicts the given boxes (x0, y0,
    x1, y1 in the letterboxed input's pixels) with ``scores`` and ``classes`` (default: all class 0,
    the person), padded to the head's row count with zero-score rows."""
    boxes = np.asarray(boxes_xyxy_in_input_pixels, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.zeros(len(boxes), int) if classes is None else np.asarray(classes, int)
    nc = nc or int(classes.max(initial=0)) + 1
    rows = np.zeros((anchor_count(layout, input_size), 6 if layout == "e2e" else 4 + nc + (layout == "v5")))
    n = len(boxes)
    if layout == "e2e":
        rows[:n, :4], rows[:n, 4], rows[:n, 5] = boxes, scores, classes
        return constant_graph(path, rows[None], input_size, dtype=dtype, **graph_options)
    rows[:n, :2] = (boxes[:, :2] + boxes[:, 2:]) / 2
    rows[:n, 2:4] = boxes[:, 2:] - boxes[:, :2]
    if layout == "v5":  # objectness carries the score, the class column is one-hot
        rows[:n, 4] = scores
        rows[np.arange(n), 5 + classes] = 1.0
        return constant_graph(path, rows[None], input_size, dtype=dtype, **graph_options)
    rows[np.arange(n), 4 + classes] = scores
    return constant_graph(path, rows.T[None], input_size, dtype=dtype, **graph_options)  # (1, 4 + nc, N)


class Interrupt:
    """A detector that reads ground truth and raises ``error`` at frame ``at`` (Ctrl-C, a crash)."""

    def __init__(self, path, at, error):
        self.inner, self.at, self.error, self.name = FileDetections(path), at, error, "file:cam1.gt.txt"

    def detect(self, frame, index):
        if index == self.at:
            raise self.error
        return self.inner.detect(frame, index)
