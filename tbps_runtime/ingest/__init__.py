"""Footage into a store: decode video, detect and track people, keep the best crops per track
(``detectors``: YOLO ONNX exports, OpenCV's HOG, or boxes from a MOT-challenge file)."""
