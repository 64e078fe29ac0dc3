"""Footage into a store: ``sources`` (video files and streams through PyAV, frame folders; decoded
on a worker thread), ``detectors`` (YOLO ONNX exports, OpenCV's HOG, or boxes from a MOT-challenge
file), ``tracking`` (ByteTrack and the best crops per track), ``pipeline`` (window by window into
a store, resumable), ``reindex`` (a store's crops embedded again by another bundle), ``cameras`` (the
camera file, checked) and ``follow`` (every camera on its own thread, reconnecting, with its state
recorded in the store)."""
