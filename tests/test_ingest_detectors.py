"""Person detectors for tbps ingest: NMS and letterbox by hand, the YOLO export layouts on constant
ONNX graphs (tests/fake_detectors.py; decoded boxes checked against hand-computed frame boxes), HOG's
contract, and MOT files.
"""

import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from fake_detectors import anchor_count, constant_graph, yolo_constant_graph
from tbps_runtime.errors import BundleError, ConfigError, DataError, InputFileNotFoundError
from tbps_runtime.ingest import detectors
from tbps_runtime.ingest.detectors import (
    Detections,
    FileDetections,
    HogDetector,
    YoloOnnxDetector,
    auto_upscale,
    letterbox,
    nms,
    open_detector,
    read_mot_detections,
    yolo_layout,
)

try:
    import cv2
except ImportError:
    cv2 = None
needs_hog = pytest.mark.skipif(cv2 is None or not hasattr(cv2, "HOGDescriptor"),
                               reason="needs OpenCV 4.x (OpenCV 5 has no HOGDescriptor; pip install 'opencv-python<5')")


# A 200x100 frame letterboxed to 64x64: scale 0.32, pad (0, 16). Input boxes = frame boxes * 0.32 + (0, 16).
FRAME = np.full((100, 200, 3), 90, np.uint8)
SIZE = (64, 64)
PERSON_A = [6.4, 19.2, 19.2, 44.8]  # frame [20, 10, 60, 90], score 0.9
PERSON_A_AGAIN = [7.04, 19.2, 19.84, 44.8]  # frame [22, 10, 62, 90], IoU 0.905 with A, score 0.6: NMS drops it
PERSON_B = [38.4, 22.4, 48.0, 41.6]  # frame [120, 20, 150, 80], score 0.7
PERSON_AT_EDGE = [50.0, 10.0, 70.0, 40.0]  # frame [156.25, -18.75, 218.75, 75] -> clipped [156.25, 0, 200, 75]
IN_PADDING = [10.0, 2.0, 20.0, 10.0]  # entirely in the top padding: empty once clipped
FAINT = [25.6, 25.6, 32.0, 38.4]  # frame [80, 30, 100, 70], score 0.2 < min_score 0.25
CAR = [48.0, 32.0, 60.8, 44.8]  # frame [150, 50, 190, 90], class 1, score 0.95

SCENE = [PERSON_A, PERSON_A_AGAIN, PERSON_B, PERSON_AT_EDGE, IN_PADDING, FAINT]
SCENE_SCORES = [0.9, 0.6, 0.7, 0.5, 0.8, 0.2]
EXPECTED_BOXES = [[20, 10, 60, 90], [120, 20, 150, 80], [156.25, 0, 200, 75]]
EXPECTED_SCORES = [0.9, 0.7, 0.5]


def assert_detections(found: Detections, boxes, scores, atol=1e-3, score_atol=1e-6):
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
    assert found.boxes.shape == (len(boxes), 4) and len(found) == len(scores)
    np.testing.assert_allclose(found.boxes, np.asarray(boxes, float).reshape(-1, 4), atol=atol)
    np.testing.assert_allclose(found.scores, scores, atol=score_atol)


# ---------------------------------------------------------------- nms, letterbox
def test_nms_keeps_the_best_of_two_overlapping_boxes():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10]]  # IoU 90 / 110 = 0.82
    assert nms(boxes, [0.8, 0.9], 0.45).tolist() == [1]
    assert nms(boxes, [0.8, 0.9], 0.9).tolist() == [1, 0]


def test_nms_keeps_disjoint_boxes_best_first():
    assert nms([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.3, 0.9, 0.5], 0.1).tolist() == [1, 2, 0]


def test_nms_keeps_a_box_whose_iou_equals_the_threshold():
    boxes = [[0, 0, 2, 1], [1, 0, 3, 1]]  # overlap 1, union 3
    assert nms(boxes, [0.9, 0.8], 1 / 3).tolist() == [0, 1]
    assert nms(boxes, [0.9, 0.8], 0.33).tolist() == [0]


def test_nms_of_nothing_and_equal_scores():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).dtype == np.int64
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert nms([[0, 0, 4, 4], [0, 0, 4, 4]], [0.5, 0.5], 0.5).tolist() == [0]  # ties: index order


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30),
                          st.integers(0, 20)), max_size=25),
       st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_properties(rows, threshold):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], float).reshape(-1, 4)
    scores = np.array([s / 20 for *_, s in rows], float)
    kept = nms(boxes, scores, threshold).tolist()
    assert len(set(kept)) == len(kept) and set(kept) <= set(range(len(rows)))
    assert all(scores[a] >= scores[b] for a, b in zip(kept, kept[1:]))
    assert all(_iou(boxes[a], boxes[b]) <= threshold + 1e-12 for i, a in enumerate(kept) for b in kept[i + 1:])
    for dropped in set(range(len(rows))) - set(kept):  # each dropped box overlaps a kept one at least as good
        assert any(_iou(boxes[k], boxes[dropped]) > threshold - 1e-12 and scores[k] >= scores[dropped]
                   for k in kept)


def test_letterbox_a_wide_frame():
    image, scale, pad = letterbox(np.full((50, 100, 3), 200, np.uint8), (64, 64))  # 100 wide, 50 high
    assert (scale, pad) == (0.64, (0.0, 16.0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[:16] == 114).all() and (image[48:] == 114).all() and (image[16:48] == 200).all()


def test_letterbox_a_tall_frame_and_an_odd_padding():
    image, scale, pad = letterbox(np.full((100, 50, 3), 7, np.uint8), (64, 64))
    assert (scale, pad) == (0.64, (16.0, 0.0))
    assert (image[:, :16] == 114).all() and (image[:, 16:48] == 7).all() and (image[:, 48:] == 114).all()
    # 640x480 into 640 wide, 320 high: 427 columns, 213 of padding split 106 left, 107 right.
    image, scale, pad = letterbox(np.full((480, 640, 3), 7, np.uint8), (320, 640))
    assert scale == pytest.approx(2 / 3) and pad == (106.0, 0.0)
    assert (image[:, :106] == 114).all() and (image[:, 106:533] == 7).all() and (image[:, 533:] == 114).all()


def test_letterbox_same_size_and_upscaled():
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image, scale, pad = letterbox(frame, (64, 64))
    assert (scale, pad) == (1.0, (0.0, 0.0)) and np.array_equal(image, frame)
    image, scale, pad = letterbox(np.full((16, 32, 3), 50, np.uint8), (64, 64))
    assert (scale, pad) == (2.0, (0.0, 16.0)) and (image[16:48] == 50).all()


# ---------------------------------------------------------------- YOLO layouts
@pytest.mark.parametrize("shape, size, metadata, layout", [
    ((1, 84, 8400), (640, 640), None, "v8"),
    ((1, 8400, 85), (640, 640), None, "v5"),
    ((1, 5, 8400), (640, 640), None, "v8"),  # one class
    ((1, 25200, 6), (640, 640), None, "v5"),  # one class: N is YOLOv5's anchor count at 640x640
    ((1, 6300, 6), (320, 320), None, "v5"),
    ((1, 102000, 6), (1280, 1280), None, "v5"),  # a P6 model
    ((1, 300, 6), (640, 640), None, "e2e"),
    ((1, 25200, 6), (640, 640), {"end2end": "True"}, "e2e"),
    ((1, 300, 6), (640, 640), {"args": "{'batch': 1, 'nms': True}"}, "e2e"),
    (("batch", 84, "anchors"), (640, 640), None, "v8"),  # ultralytics' dynamic=True
    (("batch", "anchors", 85), (640, 640), None, "v5"),  # YOLOv5's --dynamic
    (("batch", "anchors", 6), (640, 640), None, "v5"),
    ((None, 300, 6), (640, 640), None, "e2e"),
    ((1, 7, 5, 3), (640, 640), None, None),
    ((1, 8400), (640, 640), None, None),
    ((1, 4, 8400), (640, 640), None, None),  # no class column
    ((1, 8400, 5), (640, 640), None, None),
    ((1, 100, 100), (640, 640), None, None),
    (("batch", "a", "b"), (640, 640), None, None),
])
def test_yolo_layout_rule(shape, size, metadata, layout):
    assert yolo_layout(shape, size, metadata) == layout


@pytest.mark.parametrize("layout", ["v5", "v8", "e2e"])
def test_yolo_layouts_decode_to_frame_boxes(tmp_path, layout):
    path = yolo_constant_graph(tmp_path / f"{layout}.onnx", SCENE, SCENE_SCORES, layout, SIZE)
    detector = YoloOnnxDetector(path, threads=1)
    assert (detector.layout, detector.input_size, detector.name) == (layout, SIZE, f"yolo:{layout}.onnx")
    found = detector.detect(FRAME, 0)
    if layout == "e2e":  # NMS was the graph's job: the duplicate stays
        assert_detections(found, [EXPECTED_BOXES[0], EXPECTED_BOXES[1], [22, 10, 62, 90], EXPECTED_BOXES[2]],
                          [0.9, 0.7, 0.6, 0.5])
    else:
        assert_detections(found, EXPECTED_BOXES, EXPECTED_SCORES)


@pytest.mark.parametrize("layout", ["v5", "v8", "e2e"])
def test_yolo_keeps_people_only(tmp_path, layout):
    path = yolo_constant_graph(tmp_path / "cars.onnx", [PERSON_A, CAR, PERSON_B], [0.9, 0.95, 0.7], layout, SIZE,
                               classes=[0, 1, 0], nc=3)
    assert_detections(YoloOnnxDetector(path, threads=1).detect(FRAME, 0), [[20, 10, 60, 90], [120, 20, 150, 80]],
                      [0.9, 0.7])


def test_yolo_v5_scores_are_objectness_times_class(tmp_path):
    rows = np.zeros((anchor_count("v5", SIZE), 7))
    rows[0] = [12.8, 32.0, 12.8, 25.6, 0.8, 0.5, 0.1]  # A as cx, cy, w, h; 0.8 x 0.5 = 0.4
    rows[1] = [43.2, 32.0, 9.6, 19.2, 0.9, 0.5, 0.6]  # B, but a better class 1: not a person
    found = YoloOnnxDetector(constant_graph(tmp_path / "v5.onnx", rows[None], SIZE), threads=1).detect(FRAME, 3)
    assert_detections(found, [[20, 10, 60, 90]], [0.4])


def test_yolo_min_score_and_iou(tmp_path):
    path = yolo_constant_graph(tmp_path / "v8.onnx", SCENE, SCENE_SCORES, "v8", SIZE)
    assert_detections(YoloOnnxDetector(path, min_score=0.6, threads=1).detect(FRAME, 0), EXPECTED_BOXES[:2],
                      [0.9, 0.7])
    everything = YoloOnnxDetector(path, min_score=0.0, iou=1.0, threads=1).detect(FRAME, 0)
    assert_detections(everything, [[20, 10, 60, 90], [120, 20, 150, 80], [22, 10, 62, 90], [156.25, 0, 200, 75],
                                   [80, 30, 100, 70]], [0.9, 0.7, 0.6, 0.5, 0.2])


def test_yolo_float16_graph(tmp_path):
    path = yolo_constant_graph(tmp_path / "half.onnx", SCENE, SCENE_SCORES, "v8", SIZE, dtype=np.float16)
    found = YoloOnnxDetector(path, threads=1).detect(FRAME, 0)  # float16 holds 3 significant digits
    assert_detections(found, EXPECTED_BOXES, EXPECTED_SCORES, atol=0.1, score_atol=1e-3)


def test_yolo_dynamic_graph_takes_640_or_the_size_asked(tmp_path):
    path = yolo_constant_graph(tmp_path / "dynamic.onnx", SCENE, SCENE_SCORES, "v8", SIZE,
                               input_shape=["batch", 3, "height", "width"], output_shape=["batch", 5, "anchors"])
    assert YoloOnnxDetector(path, threads=1).input_size == (640, 640)
    detector = YoloOnnxDetector(path, threads=1, input_size=SIZE)
    assert_detections(detector.detect(FRAME, 0), EXPECTED_BOXES, EXPECTED_SCORES)


def test_yolo_fixed_batch_is_padded(tmp_path):
    rows = np.zeros((2, 5, anchor_count("v8", SIZE)))
    rows[0, :, 0] = [12.8, 32.0, 12.8, 25.6, 0.9]  # A; the second image's rows are ignored
    rows[1, :, 0] = [43.2, 32.0, 9.6, 19.2, 0.9]
    path = constant_graph(tmp_path / "batch2.onnx", rows, SIZE, input_shape=[2, 3, *SIZE])
    assert_detections(YoloOnnxDetector(path, threads=1).detect(FRAME, 0), [[20, 10, 60, 90]], [0.9])


def test_yolo_fixed_size_refuses_another(tmp_path):
    path = yolo_constant_graph(tmp_path / "v8.onnx", SCENE, SCENE_SCORES, "v8", SIZE)
    with pytest.raises(ConfigError, match="64x64"):
        YoloOnnxDetector(path, input_size=(320, 320))


def test_yolo_warns_when_class_0_is_not_a_person(tmp_path, caplog):
    path = yolo_constant_graph(tmp_path / "v8.onnx", SCENE, SCENE_SCORES, "v8", SIZE,
                               metadata={"names": "{0: 'car', 1: 'person'}"})
    YoloOnnxDetector(path, threads=1)
    assert "class 0 is 'car'" in caplog.text


@pytest.mark.parametrize("make, match", [
    (lambda p: yolo_constant_graph(p, SCENE, SCENE_SCORES, "v8", SIZE, outputs=2), "output1"),
    (lambda p: constant_graph(p, np.zeros((1, 7, 5, 3)), SIZE), r"\[1, 7, 5, 3\]"),
    (lambda p: constant_graph(p, np.zeros((1, 100, 100)), SIZE), "layouts"),
    (lambda p: constant_graph(p, np.zeros((1, 5, 84)), SIZE, input_shape=[1, *SIZE, 3]), "one input"),
    (lambda p: p.write_text("not a graph"), "onnxruntime cannot load"),
])
def test_yolo_refuses_other_graphs(tmp_path, make, match):
    path = tmp_path / "model.onnx"
    make(path)
    with pytest.raises(BundleError, match=match) as error:
        YoloOnnxDetector(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_yolo_missing_file_and_bad_options(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="nope.onnx"):
        YoloOnnxDetector(tmp_path / "nope.onnx")
    path = yolo_constant_graph(tmp_path / "v8.onnx", SCENE, SCENE_SCORES, "v8", SIZE)
    for options in ({"min_score": 1.5}, {"iou": -0.1}, {"threads": 0}, {"input_size": (64,)},
                    {"input_size": (100, 64)}):
        with pytest.raises(ConfigError):
            YoloOnnxDetector(path, **options)


@pytest.mark.parametrize("frame", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                   np.zeros((0, 10, 3), np.uint8), [[1, 2, 3]]])
def test_detectors_refuse_what_is_not_a_frame(tmp_path, frame):
    detector = YoloOnnxDetector(yolo_constant_graph(tmp_path / "v8.onnx", SCENE, SCENE_SCORES, "v8", SIZE))
    with pytest.raises(DataError, match=r"\(H, W, 3\) uint8"):
        detector.detect(frame, 0)


# ---------------------------------------------------------------- HOG
def fake_opencv(rects, margins, seen: list):
    """A stand-in cv2 whose HOG reports the given windows (x, y, w, h) on whatever image it is given."""
    class FakeHog:
        def setSVMDetector(self, detector):
            pass

        def detectMultiScale(self, image, **options):
            seen.append((image.shape, options))
            return np.asarray(rects, np.int32).reshape(-1, 4), np.asarray(margins, np.float64).reshape(-1, 1)

    return types.SimpleNamespace(
        __version__="4.99", HOGDescriptor=FakeHog, HOGDescriptor_getDefaultPeopleDetector=lambda: None,
        INTER_LINEAR=1, resize=lambda image, size, interpolation: np.zeros((size[1], size[0], 3), np.uint8),
        setNumThreads=lambda n: seen.append(("threads", n)))


def test_auto_upscale():
    assert auto_upscale(240) == pytest.approx(400 / 240)  # 40% of 240 px = 96 px -> 160 px
    assert auto_upscale(100) == 2.0 and auto_upscale(1080) == 1.0


def test_hog_maps_windows_back_and_scores_margins(monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "cv2", fake_opencv([[40, 20, 64, 128], [300, 100, 64, 128]], [0.0, 2.0], seen))
    detector = HogDetector(threads=1)  # a 100 px high frame is upscaled 2x
    assert seen.pop(0) == ("threads", 1)  # OpenCV's pool follows --threads / the thread policy
    found = detector.detect(np.zeros((100, 200, 3), np.uint8), 0)
    assert seen[0][0] == (200, 400, 3)
    assert seen[0][1] == {"winStride": (8, 8), "padding": (8, 8), "scale": 1.05}
    # Windows /2: [150, 50, 32, 64] and [20, 10, 32, 64], less 15% of the width and 5% of the height
    # on each side (4.8 and 3.2 px); the first clipped at the frame's bottom. Scores: logistic(2), logistic(0).
    assert_detections(found, [[154.8, 53.2, 177.2, 100], [24.8, 13.2, 47.2, 70.8]], [0.880797, 0.5])
    assert len(HogDetector(min_score=0.5).detect(np.zeros((100, 200, 3), np.uint8), 0)) == 1  # above, not at


def test_hog_upscale_option_and_small_frames(monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "cv2", fake_opencv([[8, 8, 64, 128]], [1.0], seen))
    found = HogDetector(upscale=1.0).detect(np.zeros((300, 200, 3), np.uint8), 0)
    assert seen[-1][0] == (300, 200, 3) and seen[0][0] == "threads"
    assert_detections(found, [[17.6, 14.4, 62.4, 129.6]], [1 / (1 + np.exp(-1.0))])
    assert len(HogDetector(upscale=0.5).detect(np.zeros((200, 200, 3), np.uint8), 0)) == 0  # 100 px < 128
    for upscale in (0, -1, 5.0, True):
        with pytest.raises(ConfigError, match="upscale"):
            HogDetector(upscale=upscale)


def test_hog_without_opencv_or_without_hog(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ConfigError, match=r"pip install 'tbps\[footage\]'"):
        HogDetector()
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.0.0"))
    with pytest.raises(ConfigError, match="opencv-python>=4.8,<5"):
        HogDetector()


def person_scene(seed: int, heights, size=(240, 320), background=(128, 128, 128)):
    """Synthetic people (tbps_runtime.synth's drawing) standing side by side: the (H, W, 3) frame, their boxes."""
    from tbps_runtime.synth.people import Frame, SynthConfig, draw_person, sample_person

    rng = np.random.default_rng(seed)
    height, width = size
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    boxes = []
    for k, person_height in enumerate(heights):
        cx, top = width * (k + 1) / (len(heights) + 1), (height - person_height) / 2
        draw_person(draw, sample_person(rng, SynthConfig()), Frame(cx, top, person_height, 1.0), 1, 0.01)
        boxes.append([cx - 0.15 * person_height, top, cx + 0.15 * person_height, top + person_height])
    return np.asarray(image), np.asarray(boxes)


@needs_hog
def test_hog_on_drawn_people_keeps_the_contract():
    detector = HogDetector()
    hits = 0
    for seed in range(4):
        frame, people = person_scene(seed, [150])
        found = detector.detect(frame, seed)
        assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
        assert ((found.scores >= 0) & (found.scores <= 1)).all()
        assert (found.boxes[:, 2] > found.boxes[:, 0]).all() and (found.boxes[:, 3] > found.boxes[:, 1]).all()
        assert (found.boxes >= 0).all() and (found.boxes[:, 0::2] <= 320).all() and (found.boxes[:, 1::2] <= 240).all()
        hits += any(_iou(box, people[0]) > 0.3 for box in found.boxes)
    assert hits >= 1  # HOG is weak on drawings: at least one of four found where the person stands
    assert len(detector.detect(np.full((240, 320, 3), 128, np.uint8), 0)) <= 1


# ---------------------------------------------------------------- MOT-challenge files
DET_TXT = """\
# MOT17 det.txt: frame,id,left,top,width,height,conf,x,y,z
1,-1,10,20,30,40,0.9,-1,-1,-1
1,-1,100.5,50,20,60,0.4,-1,-1,-1

3,-1,-5,10,20,30,1.7,-1,-1,-1
 2 , -1 , 1 , 2 , 3 , 4 , 0 , -1 , -1 , -1
3,-1,310,230,30,40,-0.3,-1,-1,-1  # DPM-like negative score, partly outside a 320x240 frame
"""

GT_TXT = """\
1,1,10,20,30,40,1,1,1.0
1,2,50,20,30,40,0,7,0.5
2,1,12,20,30,40,1,1,0.8
4,1,12,20,30,40,0.5,1,0.8
"""


def write(tmp_path, text, name="det.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_mot_det_file(tmp_path):
    frames, boxes, scores = read_mot_detections(write(tmp_path, DET_TXT))
    assert frames.tolist() == [0, 0, 2, 1, 2]
    np.testing.assert_allclose(boxes, [[10, 20, 40, 60], [100.5, 50, 120.5, 110], [-5, 10, 15, 40], [1, 2, 4, 6],
                                       [310, 230, 340, 270]])
    np.testing.assert_allclose(scores, [0.9, 0.4, 1.0, 0.0, 0.0])  # clipped to [0, 1]

    detector = FileDetections(tmp_path / "det.txt")
    assert detector.name == "file:det.txt" and detector.frames == {0, 1, 2}
    frame = np.zeros((240, 320, 3), np.uint8)
    assert_detections(detector.detect(frame, 0), [[10, 20, 40, 60], [100.5, 50, 120.5, 110]], [0.9, 0.4])
    assert_detections(detector.detect(frame, 2), [[0, 10, 15, 40]], [1.0])  # the zero score drops out
    assert len(detector.detect(frame, 1)) == 0 and len(detector.detect(frame, 7)) == 0
    assert_detections(FileDetections(tmp_path / "det.txt", min_score=0.5).detect(frame, 0), [[10, 20, 40, 60]], [0.9])


def test_mot_gt_and_six_column_files(tmp_path):
    frames, boxes, scores = read_mot_detections(write(tmp_path, GT_TXT, "gt.txt"))
    assert frames.tolist() == [0, 0, 1, 3] and scores.tolist() == [1.0, 0.0, 1.0, 1.0]  # a flag, not a score
    frame = np.zeros((100, 100, 3), np.uint8)
    assert_detections(FileDetections(tmp_path / "gt.txt").detect(frame, 0), [[10, 20, 40, 60]], [1.0])
    frames, boxes, scores = read_mot_detections(write(tmp_path, "5,3,1,2,3,4\n5,3,1,2,3,4,0.5\n", "mixed.txt"))
    assert frames.tolist() == [4, 4] and scores.tolist() == [1.0, 0.5]
    np.testing.assert_allclose(boxes, [[1, 2, 4, 6]] * 2)


def test_mot_empty_file(tmp_path):
    detector = FileDetections(write(tmp_path, "# nothing yet\n\n"))
    assert detector.frames == set() and len(detector.detect(np.zeros((8, 8, 3), np.uint8), 0)) == 0


@pytest.mark.parametrize("line, reason", [
    ("1,2,3", "3 columns"),
    ("a,b,c,d,e,f", "not a number"),
    ("1,-1,10,20,nan,40", "NaN"),
    ("1,-1,10,20,inf,40,1", "NaN or infinity"),
    ("1,-1,10,20,-0.5,40,1", "negative width"),
    ("0,-1,10,20,30,40,1", "whole number"),
    ("1.5,-1,10,20,30,40,1", "whole number"),
    ("1,-1,1e300,20,30,40,1", "beyond"),
    ("1,-1,10,20,30,40,", "not a number"),
])
def test_mot_bad_line_names_its_number(tmp_path, line, reason):
    path = write(tmp_path, f"# header\n1,-1,1,2,3,4,0.5,-1,-1,-1\n{line}\n2,-1,1,2,3,4,0.5,-1,-1,-1\n")
    with pytest.raises(DataError, match=reason) as error:
        read_mot_detections(path)
    assert f"{path}: line 3 " in str(error.value) and repr(line) in str(error.value)


def test_mot_refuses_huge_files(tmp_path, monkeypatch):
    path = write(tmp_path, "1,-1,1,2,3,4\n" * 5)
    monkeypatch.setattr(detectors, "MAX_FILE_LINES", 4)
    with pytest.raises(DataError, match="more than 4 lines"):
        read_mot_detections(path)
    monkeypatch.setattr(detectors, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataError, match="GiB"):
        read_mot_detections(path)
    with pytest.raises(InputFileNotFoundError):
        FileDetections(tmp_path / "missing.txt")


_FUZZ_DIR = tempfile.TemporaryDirectory()


def _read_text(text: str):
    path = Path(_FUZZ_DIR.name) / "fuzz.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        return read_mot_detections(path)
    except DataError as e:
        assert "\n" not in str(e)
        return None


def _check_parsed(parsed):
    if parsed is not None:
        frames, boxes, scores = parsed
        assert frames.dtype == np.int64 and (frames >= 0).all()
        assert np.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert ((scores >= 0) & (scores <= 1)).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_mot_fuzz_any_text(text):
    _check_parsed(_read_text(text))


_FIELD = st.one_of(st.integers(-5, 2**32).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["", " 1 ", "x", "-0", "1e400", "#", "1_0", "\t2\t", "0x10"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_FIELD, min_size=4, max_size=11).map(",".join), max_size=6).map("\n".join))
def test_mot_fuzz_rows_of_numbers(text):
    _check_parsed(_read_text(text))


_ROW = st.tuples(st.integers(1, 50), st.integers(-1, 9), st.integers(-100, 2000), st.integers(-100, 2000),
                 st.integers(0, 500), st.integers(0, 500), st.floats(-2, 2, allow_nan=False))


@settings(max_examples=50, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=20), st.sampled_from([6, 7, 9, 10]))
def test_mot_fast_and_careful_readers_agree(rows, columns):
    lines = [",".join(map(str, (*row, -1, -1, -1)[:columns])) for row in rows]
    fast = _read_text("\n".join(lines))
    careful = _read_text("\n".join(["   ", *lines]))  # a blank line with spaces: numpy's reader gives up
    for a, b in zip(fast, careful):
        np.testing.assert_array_equal(a, b)
    assert fast[0].tolist() == [row[0] - 1 for row in rows]


# ---------------------------------------------------------------- open_detector
def test_open_detector(tmp_path, monkeypatch):
    det = write(tmp_path, DET_TXT)
    assert isinstance(open_detector(detections=det), FileDetections)
    assert open_detector(detections=det, min_score=0.5).min_score == 0.5
    onnx_path = yolo_constant_graph(tmp_path / "person.onnx", SCENE, SCENE_SCORES, "v8", SIZE)
    yolo = open_detector(str(onnx_path), threads=1)
    assert isinstance(yolo, YoloOnnxDetector) and yolo.min_score == 0.25 and yolo.threads.threads == 1
    assert open_detector(onnx_path, min_score=0.6).min_score == 0.6
    monkeypatch.setitem(sys.modules, "cv2", fake_opencv([], [], []))
    assert isinstance(open_detector(), HogDetector) and open_detector("HOG").min_score == 0.0
    assert open_detector().name == "hog"
    for spec in ("hog", str(onnx_path)):
        with pytest.raises(ConfigError, match="not both"):
            open_detector(spec, detections=det)
    with pytest.raises(ConfigError, match="unknown detector 'model.pt'"):
        open_detector("model.pt")


def test_empty_detections():
    empty = Detections.empty()
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)
    assert empty.boxes.dtype == np.float32
