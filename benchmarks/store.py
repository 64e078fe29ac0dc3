"""The footage store: ingestion throughput, and filtered-query latency at 100k and 1M rows.

    python -m benchmarks.store --bundle m.bundle [--quick] [--out DIR] [--rows 100000,1000000] [--threads 1,2]

Ingestion: synthetic footage (``tbps synth-footage``: 2 cameras, 60 s at 10 fps,
640x360, 16 people) ingested at 2 sampled frames/s and at every frame, with the
ground-truth boxes (the detector's cost left out: the pipeline's own) and with
OpenCV's HOG, at each thread count: frames/s and crops/s, plus the detector's
recall (IoU >= 0.5 against the ground truth, on the sampled frames).

Queries: a store of N random per-slot-normalised rows of the bundle's K x d (16
cameras, 24 h, a track per 20 rows, in segments of 50,000 rows), one random
query; the median of the calls for each filter, and the same rows ranked as a
plain in-memory gallery (``ranking.top_k``) in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import fmt, machine, machine_line, markdown_table, time_call, write_results
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.rows import CropRecord, RowFilter
from tbps_runtime.model.bundle import load_manifest
from tbps_runtime.ranking import normalize_slots, top_k

SEGMENT_ROWS = 50_000
CAMERAS = 16
DAY = 86_400.0
T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z


def build_store(directory: Path, rows: int, slots: int, dim: int, fingerprint: str, seed: int = 0) -> LocalStore:
    """A store of ``rows`` random rows with camera, time over 24 h and a track per 20 rows."""
    rng = np.random.default_rng(seed)
    store = LocalStore.create(directory, fingerprint=fingerprint, num_slots=slots, embed_dim=dim)
    with store.writing():
        for start in range(0, rows, SEGMENT_ROWS):
            n = min(SEGMENT_ROWS, rows - start)
            block = normalize_slots(rng.standard_normal((n, slots, dim), dtype=np.float32))
            ids = np.arange(start, start + n)
            records = [CropRecord("bench.mp4", f"cam{int(i) % CAMERAS}", T0 + float(i) * DAY / rows, float(i), int(i),
                                  (0.0, 0.0, 64.0, 128.0), 0.9, int(i) // 20) for i in ids]
            store.append(block, records)
    return store


def query_latency(rows: int, slots: int, dim: int, reps: int, work: Path) -> dict[str, Any]:
    store = build_store(work / f"store-{rows}", rows, slots, dim, "bench")
    query = normalize_slots(np.random.default_rng(1).standard_normal((1, slots, dim), dtype=np.float32))
    filters = {
        "no filter": RowFilter(),
        "1 camera of 16": RowFilter(cameras=("cam3",)),
        "1 hour of 24": RowFilter(since=T0 + 14 * 3600, until=T0 + 15 * 3600),
        "1 camera, 1 hour": RowFilter(cameras=("cam3",), since=T0 + 14 * 3600, until=T0 + 15 * 3600),
        "1 track": RowFilter(tracks=(rows // 40,)),
    }
    results = {}
    for name, row_filter in filters.items():
        selected = len(store.search(query, k=rows, row_filter=row_filter)[0]) if rows <= 2000 else None
        timing = time_call(lambda f=row_filter: store.search(query, k=10, row_filter=f), reps)
        results[name] = {"timing": timing, "rows_selected": selected}
    results["per track, 1 camera"] = {"timing": time_call(
        lambda: store.search(query, k=10, row_filter=RowFilter(cameras=("cam3",)), per_track=True), reps)}
    plain = np.concatenate([np.load(p, mmap_mode="r") for p in sorted((store.directory / "segments").iterdir(),
                                                                        key=lambda p: p.stat().st_mtime)])
    results["plain gallery in RAM (top_k)"] = {"timing": time_call(lambda: top_k(query, plain, 10), reps)}
    del plain
    shutil.rmtree(store.directory)
    return {"rows": rows, "filters": results}


def ingestion(bundle: Path, threads: list[int], quick: bool, work: Path) -> list[dict[str, Any]]:
    from tbps_runtime.ingest.detectors import FileDetections, HogDetector
    from tbps_runtime.ingest.pipeline import IngestSettings, ingest_source
    from tbps_runtime.model.encoder import Encoder
    from tbps_runtime.synth.footage import generate_footage

    seconds, size, people = (2.0, (320, 180), 3) if quick else (60.0, (640, 360), 16)
    footage = generate_footage(work / "footage", cameras=2, seconds=seconds, fps=10.0, size=size, people=people,
                               seed=0, outfits="synthetic")
    cameras = ["cam1", "cam2"]
    out = []
    for count in threads:
        encoder = Encoder.from_bundle(bundle, threads=count, spinning=False)  # as tbps ingest
        for detector_name in ("ground truth", "hog"):
            for fps in (2.0, None):
                frames = crops = 0
                recall_hits = recall_total = 0
                started = time.perf_counter()
                for camera in cameras:
                    truth = FileDetections(footage / f"{camera}.gt.txt")
                    detector = truth if detector_name == "ground truth" else HogDetector(threads=count)
                    if detector_name == "hog":
                        detector = _RecallCounter(detector, truth)
                    store = LocalStore.create(work / f"s-{count}-{detector_name}-{fps}-{camera}",
                                              fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                                              embed_dim=encoder.slot_shape[1])
                    with store.writing():
                        report = ingest_source(str(footage / f"{camera}.mp4"), store, encoder, detector,
                                               IngestSettings(detector_name, fps=fps, window=5.0))
                    frames += report.frames
                    crops += report.crops
                    if detector_name == "hog":
                        recall_hits += detector.hits
                        recall_total += detector.total
                    shutil.rmtree(store.directory)
                seconds_taken = time.perf_counter() - started
                out.append({"threads": count, "detector": detector_name, "fps": fps, "frames": frames,
                            "crops": crops, "seconds": seconds_taken, "frames_per_s": frames / seconds_taken,
                            "crops_per_s": crops / seconds_taken,
                            "recall": recall_hits / recall_total if recall_total else None})
    return out


class _RecallCounter:
    """Wraps a detector; counts ground-truth boxes matched at IoU >= 0.5 on the frames it sees."""

    def __init__(self, detector: Any, truth: Any):
        self.detector, self.truth, self.name = detector, truth, detector.name
        self.hits = self.total = 0

    def detect(self, frame: np.ndarray, index: int) -> Any:
        found = self.detector.detect(frame, index)
        expected = self.truth.detect(frame, index)
        self.total += len(expected)
        if len(found) and len(expected):
            self.hits += int((_iou(expected.boxes, found.boxes).max(axis=1) >= 0.5).sum())
        return found


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def to_markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    command = results["command"]
    lines = [f"### Ingestion on {info['cpu']}, {info['cores']} cores: `{command}`", ""]
    lines.append(markdown_table(
        ["threads", "boxes", "sampling", "frames", "crops kept", "frames/s", "crops/s", "detector recall (IoU ≥ 0.5)"],
        [[r["threads"], r["detector"], "every frame" if r["fps"] is None else f"{r['fps']:g} fps", r["frames"],
          r["crops"], fmt(r["frames_per_s"], 1), fmt(r["crops_per_s"], 1),
          "—" if r["recall"] is None else f"{100 * r['recall']:.1f}%"] for r in results["ingestion"]]))
    lines += ["", "Frames: sampled frames processed (decode, detect, track, crop); crops kept: the best 2 per track "
                  "per 5 s window, embedded and appended. Ground truth: the footage's own boxes as a detections "
                  "file (the pipeline without a detector's cost).", ""]
    for block in results["queries"]:
        lines += [f"#### Filtered query latency, {block['rows']:,} rows of K×d = {results['slots']}×{results['dim']}",
                  ""]
        plain = block["filters"]["plain gallery in RAM (top_k)"]["timing"]["median_ms"]
        lines.append(markdown_table(
            ["query", "median ms", "p90 ms", "÷ plain gallery"],
            [[name, fmt(v["timing"]["median_ms"]), fmt(v["timing"]["p90_ms"]),
              f"{v['timing']['median_ms'] / plain:.2f}×"] for name, v in block["filters"].items()]))
        lines.append("")
    lines.append("One random query, k = 10, exact Eq. 14 over the selected rows (filters in SQLite, then one "
                 "matrix product per segment); segments of 50,000 rows memory-mapped, in the page cache after "
                 "the warm-up calls.")
    lines += ["", f"Machine: {machine_line(info)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--rows", default=None, help="comma list [default: 100000,1000000; --quick: 2000]")
    parser.add_argument("--threads", default=None, help="comma list [default: 1,2; --quick: 1]")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    rows = [int(v) for v in (args.rows or ("2000" if args.quick else "100000,1000000")).split(",")]
    threads = [int(v) for v in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    reps = args.reps or (2 if args.quick else 10)
    manifest = load_manifest(Path(args.bundle))
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="tbps-store-bench-"))
    try:
        results = {"benchmark": "store", "command": "python -m benchmarks.store " + " ".join(argv or []),
                   "machine": info, "slots": manifest.num_slots, "dim": manifest.embed_dim,
                   "ingestion": ingestion(Path(args.bundle), threads, args.quick, work),
                   "queries": [query_latency(n, manifest.num_slots, manifest.embed_dim, reps, work) for n in rows]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, "store", results, to_markdown(results, info))
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
    sys.exit(0)

