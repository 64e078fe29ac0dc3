"""Detections to tracks, and the few crops per track worth embedding.

Tracking is Roboflow's ByteTrack (the ``trackers`` package: numpy and scipy, no
PyTorch). Consecutive frames of one person are near-duplicates, so instead of
every frame's crop a track keeps its best ``keep`` crops per window of source
time, ranked by a quality that prefers confident, large, sharp and uncut boxes.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tbps_runtime.errors import ConfigError
from tbps_runtime.ingest.detectors import Detections

SPARSE_FPS = 4.0  # below this sampling rate, tracks match on buffered IoU
FULL_HEIGHT_PX = 128  # a box this tall or taller counts as full size (the towers see 384x128 or less)
_SHARP_HALF = 100.0  # Laplacian variance at which sharpness counts half


@dataclass(order=True)
class Candidate:
    """One crop of a track, comparable by ``quality``."""

    quality: float
    frame: int = field(compare=False)
    offset: float = field(compare=False)
    box: tuple[float, float, float, float] = field(compare=False)
    score: float = field(compare=False)
    track: int = field(compare=False)
    image: np.ndarray = field(compare=False, repr=False)  # (h, w, 3) uint8 RGB


def crop_quality(crop: np.ndarray, score: float, touches_edge: bool) -> float:
    """Detector score x size (height / 128 px, at most 1) x sharpness (Laplacian variance v / (v + 100)),
    halved for a box cut by the frame's edge. In [0, 1]."""
    height = crop.shape[0]
    grey = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if min(grey.shape) >= 3:
        laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
        variance = float(laplacian.var())
    else:
        variance = 0.0
    quality = float(score) * min(1.0, height / FULL_HEIGHT_PX) * variance / (variance + _SHARP_HALF)
    return quality * (0.5 if touches_edge else 1.0)


class TrackKeeper:
    """ByteTrack over one source, keeping each track's ``keep`` best crops until :meth:`take`.

    Track ids are ``first_track`` plus ByteTrack's own, so ids from several sources and runs
    never collide in one store.
    """

    def __init__(self, fps: float, first_track: int, keep: int = 2, min_box_height: int = 24,
                 numbering: Callable[[], int] | None = None):
        """``numbering``: where the store-wide number of each new track comes from, when several keepers
        (cameras) append to one store at once; default: ``first_track`` plus ByteTrack's id."""
        if keep < 1:
            raise ConfigError(f"keep must be at least 1, got {keep}", code="parameter_invalid", names=("keep",))
        try:
            from trackers import ByteTrackTracker
            from trackers.utils.iou import BIoU, IoU
        except ImportError:
            raise ConfigError("tracking needs the trackers package: pip install 'tbps[footage]'") from None
        # Sampled sparsely, a walker moves more than a body width between frames and plain IoU never
        # overlaps: match on boxes widened by 60% there (buffered IoU, as C-BIoU does for fast motion).
        overlap = IoU() if fps >= SPARSE_FPS else BIoU(buffer_ratio=0.6)
        self._tracker = ByteTrackTracker(lost_track_buffer=max(1, round(2 * fps)), frame_rate=fps,
                                         track_activation_threshold=0.3, minimum_consecutive_frames=2,
                                         high_conf_det_threshold=0.5, iou=overlap)
        self.first_track = first_track
        self.keep = keep
        self.min_box_height = min_box_height
        self._best: dict[int, list[Candidate]] = {}  # track -> min-heap of its best crops
        self._numbering = numbering
        self._numbers: dict[int, int] = {}  # ByteTrack's id -> the track's number, with numbering
        self.tracks_seen: set[int] = set()
        self.detections = 0

    def update(self, frame_index: int, offset: float, image: np.ndarray, detections: Detections) -> int:
        """Track one frame's detections and consider their crops; returns how many were tracked."""
        import supervision as sv

        self.detections += len(detections)
        boxes = detections.boxes.reshape(-1, 4).astype(np.float32)
        tracked = self._tracker.update(sv.Detections(xyxy=boxes, confidence=detections.scores.astype(np.float32),
                                                     class_id=np.zeros(len(boxes), int)))
        height, width = image.shape[:2]
        count = 0
        for box, score, track_id in zip(tracked.xyxy, tracked.confidence, tracked.tracker_id):
            if track_id is None or track_id < 0:
                continue  # not confirmed yet
            x0, y0, x1, y1 = (int(round(v)) for v in np.clip(box, 0, [width, height, width, height]))
            if y1 - y0 < self.min_box_height or x1 - x0 < 2:
                continue
            crop = np.ascontiguousarray(image[y0:y1, x0:x1])
            edge = x0 <= 1 or y0 <= 1 or x1 >= width - 1 or y1 >= height - 1
            track = self._number(int(track_id))
            candidate = Candidate(crop_quality(crop, float(score), edge), frame_index, offset,
                                  (float(x0), float(y0), float(x1), float(y1)), float(score), track, crop)
            heap = self._best.setdefault(track, [])
            if len(heap) < self.keep:
                heapq.heappush(heap, candidate)
            elif candidate.quality > heap[0].quality:
                heapq.heapreplace(heap, candidate)
            self.tracks_seen.add(track)
            count += 1
        return count

    def _number(self, track_id: int) -> int:
        if self._numbering is None:
            return self.first_track + track_id
        if track_id not in self._numbers:
            self._numbers[track_id] = self._numbering()
        return self._numbers[track_id]

    def snapshot(self) -> Any:
        """The tracking state (tracks and their numbers, not the kept crops), for :meth:`restore`."""
        return copy.deepcopy((self._tracker, self._numbers))

    def restore(self, snapshot: Any) -> None:
        """Go on tracking from a :meth:`snapshot` (of a keeper with the same settings)."""
        self._tracker, self._numbers = copy.deepcopy(snapshot)

    def take(self) -> list[Candidate]:
        """The kept crops of every track since the last call, in frame order; tracking goes on."""
        kept = sorted((c for heap in self._best.values() for c in heap), key=lambda c: (c.frame, c.track))
        self._best.clear()
        return kept

    def state(self) -> dict[str, Any]:
        return {"tracks": len(self.tracks_seen), "detections": self.detections}
