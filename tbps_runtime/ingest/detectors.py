"""Person detectors for ``tbps ingest``: an (H, W, 3) uint8 RGB frame in, person boxes in its pixels out.

Three implementations of one :class:`Detector` protocol:

- :class:`YoloOnnxDetector`: a person detector the user exported with ultralytics (YOLOv5, YOLOv8,
  YOLO11, or an end-to-end export with NMS inside), run by onnxruntime; class 0 is the person.
- :class:`HogDetector`: OpenCV's HOG + linear SVM people detector (Dalal & Triggs). Needs no weights;
  weak, a baseline (``pip install 'tbps[footage]'``).
- :class:`FileDetections`: boxes an upstream pipeline wrote in the MOT-challenge text format.

Every detector returns :class:`Detections` clipped to the frame with scores in [0, 1]. A box is kept
when its score is *above* ``min_score`` (strictly, as ultralytics does), so at ``min_score=0`` an
end-to-end export's zero-score padding rows and a ground-truth file's flagged-off rows drop out.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.model.backends import CPU_PROVIDER
from tbps_runtime.model.images import resize_rgb
from tbps_runtime.threads import ThreadChoice, choose_threads, usable_cores

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (640, 640)  # (h, w) for a graph whose input size is dynamic: ultralytics' default
LETTERBOX_FILL = 114  # ultralytics' grey
MAX_CANDIDATES = 5000  # boxes entering NMS at most, the best scored (greedy NMS is quadratic)
MAX_DETECTIONS = 300  # boxes per frame at most (ultralytics' max_det)
PERSON_CLASS = 0

YOLO_LAYOUTS = {
    "v5": "(1, N, 5 + nc): cx, cy, w, h, objectness, class scores (YOLOv5)",
    "v8": "(1, 4 + nc, N): cx, cy, w, h, class scores (YOLOv8, YOLO11)",
    "e2e": "(1, N, 6): x0, y0, x1, y1, score, class (NMS inside: YOLOv10, YOLO26, exports with nms=True)",
}
_V5_HEAD_STRIDES = ((8, 16, 32), (8, 16, 32, 64))  # P5 and P6 models, 3 anchors per cell

HOG_WINDOW = (128, 64)  # (h, w) of OpenCV's default people detector window
HOG_MAX_UPSCALE = 4.0
# The 64x128 window has ~16 px of background around a 96 px person: this much of it is trimmed from
# each side, as OpenCV's peopledetect sample does. Boxes come out ~1.2x the person's height, the
# margin of the synthetic training crops (a person 0.85 of the crop's height).
HOG_TRIM = (0.15, 0.05)  # (of the width, of the height)

MAX_FILE_BYTES = 1 << 30
MAX_FILE_LINES = 10_000_000
MAX_FRAME = 2**31 - 1
MAX_COORDINATE = 1e7  # pixels; a larger position or size is garbage, not a box
MOT_FORMAT = "'frame,id,left,top,width,height[,conf,...]' (MOT challenge det.txt or gt.txt, 1-based frames)"


@dataclass(frozen=True, eq=False)  # eq=False: arrays compare element-wise, not to one bool
class Detections:
    """One frame's person boxes: ``boxes`` (N, 4) float32 x0, y0, x1, y1 in the frame's pixels, clipped
    to the frame, x1 > x0 and y1 > y0; ``scores`` (N,) float32 in [0, 1]."""

    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        """No detections: (0, 4) boxes and (0,) scores."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)


class Detector(Protocol):
    """Finds the people in a frame. ``name``: ``"yolo:<file name>"``, ``"hog"`` or ``"file:<file name>"``."""

    name: str

    def detect(self, frame: np.ndarray, frame_index: int) -> Detections:
        """``frame``: (H, W, 3) uint8 RGB; ``frame_index``: its 0-based index in its source."""
        ...


# ---------------------------------------------------------------- geometry
def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: the indices of the boxes kept, best score first ((M,) int64).

    ``boxes`` (N, 4) x0, y0, x1, y1 and ``scores`` (N,), finite. Going down the scores (equal scores:
    in index order), a box is dropped when its IoU with a box already kept is above ``iou_threshold``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])  # (n, 2)
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        overlap = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        union = areas[best] + areas[rest] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(kept, np.int64)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """A frame resized into ``size`` = (h, w) keeping its aspect, centred on grey 114, as ultralytics'
    ``LetterBox`` does (the padding split evenly, the odd pixel to the right/bottom).

    Returns the (h, w, 3) uint8 image, the scale and the (pad_x, pad_y) of its top-left corner: a point
    of the frame lands at ``x * scale + pad_x``, ``y * scale + pad_y``.
    """
    height, width = frame.shape[:2]
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = round((target_w - new_w) / 2 - 0.1), round((target_h - new_h) / 2 - 0.1)
    resized = frame if (new_h, new_w) == (height, width) else resize_rgb(frame, (new_h, new_w))
    image = np.full((target_h, target_w, 3), LETTERBOX_FILL, np.uint8)
    image[top:top + new_h, left:left + new_w] = resized
    return image, scale, (float(left), float(top))


def _check_frame(frame: Any) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 \
            or min(frame.shape[:2]) == 0:
        what = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise DataError(f"a frame must be an (H, W, 3) uint8 RGB array, got {what}")


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


def _kept(boxes: np.ndarray, scores: np.ndarray, frame_shape: tuple[int, ...], min_score: float,
          iou: float | None) -> Detections:
    """Boxes (N, 4) x0 y0 x1 y1 in frame pixels, scores (N,) in [0, 1]: clipped to the frame, degenerate,
    non-finite and low-scored boxes dropped, then NMS (``iou`` None: none) and at most MAX_DETECTIONS."""
    height, width = frame_shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    scores = np.asarray(scores, np.float64).reshape(-1)
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    boxes, scores = boxes[finite], scores[finite]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (scores > min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], scores[keep]
    if iou is not None:
        best = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
        order = best[nms(boxes[best], scores[best], iou)]
    else:
        order = np.argsort(-scores, kind="stable")
    order = order[:MAX_DETECTIONS]
    return Detections(boxes[order].astype(np.float32), scores[order].astype(np.float32))


# ---------------------------------------------------------------- YOLO (ultralytics ONNX exports)
def yolo_layout(shape: Sequence[Any], input_size: tuple[int, int],
                metadata: Mapping[str, str] | None = None) -> str | None:
    """Which of :data:`YOLO_LAYOUTS` a detector's declared output ``shape`` (batch, a, b) is in, None if none.

    A dim that is not an int is dynamic. The rule, in order:

    1. ultralytics' metadata says the graph ends in NMS (``end2end: True``, or ``nms: True`` in its
       export args) and b == 6: ``"e2e"``.
    2. b == 6 with a fixed: a YOLOv5 head with one class when a is the anchor count of a YOLOv5 head at
       ``input_size`` (3 per cell at strides 8, 16, 32, or 8 to 64 for P6 models: 25200 at 640x640),
       else ``"e2e"`` (a = max_det, 300 by default).
    3. the small axis second (a < b, or b dynamic): ``"v8"``, a = 4 + nc; the large axis second
       (a > b, or a dynamic): ``"v5"``, b = 5 + nc. ultralytics puts v8's channels on axis 1 and YOLOv5
       its boxes, so (1, 84, 8400) is v8 and (1, 8400, 85) is v5 whatever the class count.
    """
    if shape is None or len(shape) != 3:
        return None
    a, b = (dim if isinstance(dim, int) and dim > 0 else None for dim in shape[1:])
    metadata = metadata or {}
    ends_in_nms = metadata.get("end2end") == "True" or bool(re.search(r"'nms':\s*True", metadata.get("args", "")))
    if b == 6 and (ends_in_nms or a is not None):
        return "v5" if a in _v5_anchor_counts(input_size) and not ends_in_nms else "e2e"
    if a is not None and a >= 5 and (b is None or a < b):
        return "v8"
    if b is not None and b >= 6 and (a is None or a > b):
        return "v5"
    return None


def _v5_anchor_counts(input_size: tuple[int, int]) -> set[int]:
    height, width = input_size
    return {3 * sum((height // s) * (width // s) for s in strides) for strides in _V5_HEAD_STRIDES}


def _onnx_session(path: Path, threads: int | None) -> tuple[Any, ThreadChoice]:
    """A CPU onnxruntime session, threads set as the towers' (tbps_runtime.threads' policy)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    choice = choose_threads(threads)
    options.intra_op_num_threads = choice.threads
    options.inter_op_num_threads = 1
    if choice.adaptive and choice.threads < usable_cores():
        # Others are busy: a thread that spin-waits between ops takes the core they need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU_PROVIDER])
    except Exception as e:  # onnxruntime's errors derive from Exception only
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BundleError(f"onnxruntime cannot load {path} ({reason}): export the detector to ONNX again "
                          "with ultralytics (format=onnx)") from e
    return session, choice


class YoloOnnxDetector:
    """A person detector exported to ONNX by ultralytics, on onnxruntime (CPU).

    The layout (:data:`YOLO_LAYOUTS`) is read from the output's shape when the file is loaded
    (:func:`yolo_layout`). The input is one float32 or float16 NCHW RGB image scaled to [0, 1],
    letterboxed to ``input_size``. A box is a person when class 0 is its best class; boxes are mapped
    back to frame pixels, clipped, filtered by ``min_score``, then NMS at ``iou`` (skipped for an
    end-to-end export, which did its own).

    Args:
        threads: intra-op threads (None: tbps_runtime.threads' policy).
        input_size: (h, w); default the graph's fixed size, else 640x640. A graph with a fixed size
            takes that size only.

    Raises:
        InputFileNotFoundError: no such file.
        BundleError: not an ONNX file onnxruntime can load, or not one image in and one output in an
            ultralytics layout out.
    """

    def __init__(self, path: str | Path, *, min_score: float = 0.25, iou: float = 0.45, threads: int | None = None,
                 input_size: tuple[int, int] | None = None):
        path = Path(path)
        if not path.is_file():
            raise InputFileNotFoundError(f"detector model not found: {path}")
        _check_fraction("min_score", min_score)
        _check_fraction("iou", iou)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.name = f"yolo:{path.name}"
        self.path, self.min_score, self.iou = path, float(min_score), float(iou)
        self._session, self.threads = _onnx_session(path, threads)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        found = (f"inputs {[(arg.name, arg.shape, arg.type) for arg in inputs]}, "
                 f"outputs {[(arg.name, arg.shape) for arg in outputs]}")
        if len(inputs) != 1 or len(outputs) != 1 or not _is_image_input(inputs[0]):
            raise BundleError(f"{path} is not a YOLO detector export: it has {found}; expected one input "
                              "(batch, 3, H, W) float32/float16 and one output in a layout of ultralytics': "
                              f"{'; '.join(YOLO_LAYOUTS.values())}")
        self.input_size = _input_size(path, inputs[0].shape, input_size)
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.layout = yolo_layout(outputs[0].shape, self.input_size, metadata)
        if self.layout is None:
            raise BundleError(f"{path} gives an output of shape {outputs[0].shape} ({found}), in none of "
                              f"ultralytics' detection layouts: {'; '.join(YOLO_LAYOUTS.values())}")
        _warn_if_class_0_is_not_person(path, metadata.get("names", ""))
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        batch = inputs[0].shape[0]
        self._batch = batch if isinstance(batch, int) and batch > 1 else 1  # a fixed batch > 1: pad it

    def detect(self, frame: np.ndarray, frame_index: int) -> Detections:
        """The people in ``frame`` ((H, W, 3) uint8 RGB); ``frame_index`` is not used."""
        _check_frame(frame)
        image, scale, (pad_x, pad_y) = letterbox(frame, self.input_size)
        batch = np.zeros((self._batch, 3, *self.input_size), self._input_dtype)
        batch[0] = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)  # (3, h, w)
        (output,) = self._session.run([self._output_name], {self._input_name: batch})
        boxes, scores = self._decode(np.asarray(output, np.float32))  # in the input's pixels
        boxes = (boxes - [pad_x, pad_y, pad_x, pad_y]) / scale
        return _kept(boxes, scores, frame.shape, self.min_score, None if self.layout == "e2e" else self.iou)

    def _decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first image's class-0 boxes: (n, 4) x0 y0 x1 y1 in input pixels and (n,) scores."""
        rows = self._rows(output)  # (N, C)
        if self.layout == "e2e":
            person = np.rint(rows[:, 5]) == PERSON_CLASS
            return rows[person, :4], rows[person, 4]
        classes = rows[:, 5:] * rows[:, 4:5] if self.layout == "v5" else rows[:, 4:]  # (N, nc)
        person = classes.argmax(axis=1) == PERSON_CLASS
        centre, size = rows[person, :2], rows[person, 2:4]
        return np.concatenate([centre - size / 2, centre + size / 2], axis=1), classes[person, PERSON_CLASS]

    def _rows(self, output: np.ndarray) -> np.ndarray:
        minimum = {"v5": 6, "v8": 5, "e2e": 6}[self.layout]
        if output.ndim == 3 and self.layout == "v8":
            output = output.transpose(0, 2, 1)  # (B, 4 + nc, N) -> (B, N, 4 + nc)
        if output.ndim != 3 or output.shape[0] < 1 or output.shape[2] < minimum or \
                (self.layout == "e2e" and output.shape[2] != 6):
            raise BundleError(f"{self.path} gave an output of shape {output.shape} at run time, not "
                              f"{YOLO_LAYOUTS[self.layout]} as its declared shape says")
        return output[0]


def _is_image_input(arg: Any) -> bool:
    shape = arg.shape
    return arg.type in ("tensor(float)", "tensor(float16)") and shape is not None and len(shape) == 4 and \
        (not isinstance(shape[1], int) or shape[1] == 3)


def _input_size(path: Path, shape: Sequence[Any], wanted: tuple[int, int] | None) -> tuple[int, int]:
    fixed = tuple(shape[2:]) if all(isinstance(dim, int) and dim > 0 for dim in shape[2:]) else None
    if wanted is None:
        return fixed or DEFAULT_INPUT_SIZE
    if len(wanted) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 8192
                                   and v % 32 == 0 for v in wanted):
        raise ConfigError(f"input_size must be (h, w), two multiples of 32 (YOLO's largest stride) from 32 to "
                          f"8192, got {wanted!r}")
    if fixed and tuple(wanted) != fixed:
        raise ConfigError(f"{path} takes {fixed[0]}x{fixed[1]} images only (h x w), not {wanted[0]}x{wanted[1]}: "
                          "leave the input size out, or export with dynamic=True")
    return int(wanted[0]), int(wanted[1])


def _warn_if_class_0_is_not_person(path: Path, names: str) -> None:
    match = re.match(r"\{\s*0:\s*'([^']*)'", names)  # ultralytics writes str(model.names)
    if match and match.group(1).lower() != "person":
        logger.warning("%s: class 0 is %r, not 'person'; its boxes are taken as people", path, match.group(1))


# ---------------------------------------------------------------- HOG (OpenCV)
def auto_upscale(height: int) -> float:
    """The HOG upscale for frames ``height`` px tall: a person of 40% of the height reaches 160 px (the
    64x128 window misses shorter ones), never shrinking, at most 2x."""
    return min(2.0, max(1.0, 160 / (0.4 * height)))


def _opencv_with_hog() -> Any:
    try:
        import cv2
    except ImportError as e:
        raise ConfigError(f"the HOG detector needs OpenCV ({e}): pip install 'tbps[footage]'") from None
    if not hasattr(cv2, "HOGDescriptor"):
        raise ConfigError(f"OpenCV {cv2.__version__} has no HOG people detector (OpenCV 5 moved HOGDescriptor "
                          "out of the main package): pip install 'opencv-python>=4.8,<5', or detect with a "
                          "YOLO .onnx export")
    return cv2


class HogDetector:
    """OpenCV's built-in HOG people detector (``detectMultiScale``, window stride 8, padding 8, scale
    step 1.05), then NMS at ``iou``.

    Scores are the SVM margins m squashed by a logistic, 1 / (1 + exp(-m)): OpenCV reports windows with
    m >= 0, so scores are 0.5 and up, and ``min_score`` s keeps margins above log(s / (1 - s)).
    Boxes are the detection windows less :data:`HOG_TRIM` on each side.

    Args:
        upscale: resize factor applied before detecting (boxes are mapped back); default
            :func:`auto_upscale` of the frame's height. Below 1 shrinks large frames (faster).
        threads: OpenCV's threads (process-wide; default: the thread policy, :mod:`tbps_runtime.threads`).

    Raises:
        ConfigError: OpenCV missing, or without HOG (OpenCV 5).
    """

    name = "hog"

    def __init__(self, *, min_score: float = 0.0, iou: float = 0.45, upscale: float | None = None,
                 threads: int | None = None):
        _check_fraction("min_score", min_score)
        _check_fraction("iou", iou)
        if upscale is not None and (isinstance(upscale, bool) or not isinstance(upscale, (int, float))
                                    or not 0 < upscale <= HOG_MAX_UPSCALE):
            raise ConfigError(f"upscale must be a number in (0, {HOG_MAX_UPSCALE:g}], got {upscale!r}")
        self.min_score, self.iou, self.upscale = float(min_score), float(iou), upscale
        self._cv2 = _opencv_with_hog()
        # OpenCV's pool is process-wide and defaults to every core, busy or not: the same policy as the towers.
        self.threads = choose_threads(threads).threads
        self._cv2.setNumThreads(self.threads)
        self._hog = self._cv2.HOGDescriptor()
        self._hog.setSVMDetector(self._cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._lock = threading.Lock()  # one HOGDescriptor: not documented as safe to share between threads

    def detect(self, frame: np.ndarray, frame_index: int) -> Detections:
        """The people in ``frame`` ((H, W, 3) uint8 RGB); ``frame_index`` is not used."""
        _check_frame(frame)
        height, width = frame.shape[:2]
        factor = self.upscale if self.upscale is not None else auto_upscale(height)
        size_w, size_h = max(1, round(width * factor)), max(1, round(height * factor))
        if size_h < HOG_WINDOW[0] or size_w < HOG_WINDOW[1]:
            return Detections.empty()
        image = np.ascontiguousarray(frame) if (size_w, size_h) == (width, height) else \
            self._cv2.resize(np.ascontiguousarray(frame), (size_w, size_h), interpolation=self._cv2.INTER_LINEAR)
        with self._lock:
            rects, margins = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        scale_x, scale_y = size_w / width, size_h / height
        rects = np.asarray(rects, np.float64).reshape(-1, 4) / [scale_x, scale_y, scale_x, scale_y]  # x, y, w, h
        trim = rects[:, 2:] * HOG_TRIM
        boxes = np.concatenate([rects[:, :2] + trim, rects[:, :2] + rects[:, 2:] - trim], axis=1)
        scores = 1 / (1 + np.exp(-np.asarray(margins, np.float64).reshape(-1)))
        return _kept(boxes, scores, frame.shape, self.min_score, self.iou)


# ---------------------------------------------------------------- MOT-challenge files
def read_mot_detections(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A MOT-challenge detections file: (frames (N,) int64 0-based, boxes (N, 4) float32 x0 y0 x1 y1,
    scores (N,) float32 in [0, 1]), in the file's order.

    Rows are ``frame,id,left,top,width,height[,conf,...]``: 6 or more comma-separated numbers, spaces
    around them allowed; blank lines and ``#`` comments skipped. The score is column 7 clipped to [0, 1]
    (det.txt; a detector's raw score, e.g. DPM's, becomes 0 or 1 outside it), 1.0 without a column 7,
    and for 9-column rows (gt.txt: ``...,consider,class,visibility``) 1.0 when the consider flag is set,
    else 0.0.

    Raises:
        InputFileNotFoundError: no such file.
        DataError: a malformed row (naming its line), or a file over MAX_FILE_BYTES / MAX_FILE_LINES.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"detections file not found: {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path} is {size / 2**30:.1f} GiB, more than tbps reads as a detections file "
                        f"({MAX_FILE_BYTES / 2**30:.0f} GiB): split it per video")
    text = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    if text.count("\n") > MAX_FILE_LINES:
        raise DataError(f"{path} has more than {MAX_FILE_LINES} lines, more than tbps reads as a detections "
                        "file: split it per video")
    lines = text.split("\n")
    table = _fast_table(lines)  # (N, 7): frame, left, top, width, height, conf, columns
    if table is None or _first_bad_row(table) is not None:
        table = _careful_table(path, lines)  # raises DataError at the first bad line
    frames = table[:, 0].astype(np.int64) - 1
    boxes = np.concatenate([table[:, 1:3], table[:, 1:3] + table[:, 3:5]], axis=1).astype(np.float32)
    scores = np.where(table[:, 6] == 9, (table[:, 5] != 0).astype(np.float64), table[:, 5].clip(0, 1))
    return frames, boxes, scores.astype(np.float32)


def _fast_table(lines: list[str]) -> np.ndarray | None:
    """numpy's C reader for the usual file (one column count throughout); None when it cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            values = np.loadtxt(lines, delimiter=",", comments="#", ndmin=2, dtype=np.float64)
    except ValueError:
        return None
    if values.size == 0:
        return np.zeros((0, 7))
    if values.shape[1] < 6:
        return None
    conf = values[:, 6] if values.shape[1] > 6 else np.ones(len(values))
    return np.column_stack([values[:, [0, 2, 3, 4, 5]], conf, np.full(len(values), values.shape[1])])


def _careful_table(path: Path, lines: list[str]) -> np.ndarray:
    """Line by line, for mixed column counts and for errors that name their line."""
    rows, numbers = [], []
    for number, line in enumerate(lines, 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split(",")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise _bad_line(path, number, line, "a value that is not a number") from None
        if len(values) < 6:
            raise _bad_line(path, number, line, f"{len(values)} columns, at least 6 needed")
        rows.append([values[0], *values[2:6], values[6] if len(values) > 6 else 1.0, len(values)])
        numbers.append(number)
    table = np.asarray(rows, np.float64).reshape(-1, 7)
    bad = _first_bad_row(table)
    if bad is not None:
        row, reason = bad
        raise _bad_line(path, numbers[row], lines[numbers[row] - 1], reason)
    return table


def _first_bad_row(table: np.ndarray) -> tuple[int, str] | None:
    """The first row of a (N, 7) table that is not a detection, and why."""
    frames, sizes, positions = table[:, 0], table[:, 3:5], table[:, 1:5]
    checks = [
        (~np.isfinite(table[:, :6]).all(axis=1), "NaN or infinity"),
        ((frames < 1) | (frames > MAX_FRAME) | (frames != np.floor(frames)),
         f"a frame that is not a whole number from 1 to {MAX_FRAME}"),
        ((sizes < 0).any(axis=1), "a negative width or height"),
        ((np.abs(positions) > MAX_COORDINATE).any(axis=1), f"a position or size beyond {MAX_COORDINATE:g} px"),
    ]
    bad = np.logical_or.reduce([mask for mask, _ in checks])
    if not bad.any():
        return None
    row = int(np.argmax(bad))
    return row, next(reason for mask, reason in checks if mask[row])


def _bad_line(path: Path, number: int, line: str, reason: str) -> DataError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return DataError(f"{path}: line {number} has {reason}: {shown!r}; expected rows {MOT_FORMAT}")


class FileDetections:
    """Boxes from an upstream pipeline, read once from a MOT-challenge file (:func:`read_mot_detections`).

    ``frames`` holds the 0-based indices of the frames that have rows; any other frame has no
    detections. Boxes are clipped to the frame they are asked for; no NMS (the file's author chose).
    """

    def __init__(self, path: str | Path, *, min_score: float = 0.0):
        _check_fraction("min_score", min_score)
        path = Path(path)
        self.name = f"file:{path.name}"
        self.min_score = float(min_score)
        frames, boxes, scores = read_mot_detections(path)
        order = np.argsort(frames, kind="stable")
        self._frames, self._boxes, self._scores = frames[order], boxes[order], scores[order]
        self.frames: set[int] = set(np.unique(frames).tolist())

    def detect(self, frame: np.ndarray, frame_index: int) -> Detections:
        """The file's boxes for ``frame_index`` (0-based), clipped to ``frame`` ((H, W, 3) uint8 RGB)."""
        _check_frame(frame)
        start, stop = np.searchsorted(self._frames, [frame_index, frame_index + 1])
        if start == stop:
            return Detections.empty()
        return _kept(self._boxes[start:stop], self._scores[start:stop], frame.shape, self.min_score, None)


# ---------------------------------------------------------------- choosing one
def open_detector(spec: str | None = None, *, detections: str | Path | None = None, min_score: float | None = None,
                  threads: int | None = None) -> Detector:
    """The detector a command asked for.

    Args:
        spec: ``"hog"`` or the path of a YOLO ``.onnx`` export; None (with no ``detections``): ``"hog"``.
        detections: a MOT-challenge file of boxes instead of a detector (then ``spec`` must be None).
        min_score: None: the detector's own default (YOLO 0.25, HOG and files 0.0).
        threads: onnxruntime's intra-op threads for a YOLO detector (None: the thread policy).

    Raises:
        ConfigError: both a detector and a detections file, or a spec that is neither.
    """
    scored = {} if min_score is None else {"min_score": min_score}
    if detections is not None:
        if spec is not None:
            raise ConfigError(f"choose one source of boxes, the detector {spec!r} or the detections file "
                              f"{detections}, not both")
        return FileDetections(detections, **scored)
    spec = "hog" if spec is None else str(spec)
    if spec.strip().lower() == "hog":
        return HogDetector(threads=threads, **scored)
    if Path(spec).suffix.lower() == ".onnx":
        return YoloOnnxDetector(spec, threads=threads, **scored)
    raise ConfigError(f"unknown detector {spec!r}: use 'hog' or the path of a YOLO .onnx export")
