"""What a Milvus store's ``info()`` and ``cameras()`` read instead of its rows: one small summary per append
(its rows, undated rows, time span and distinct tracks per camera, and its sources), kept in the meta
collection as ``summary:<first row>:<part>`` records and rewritten when a deletion leaves the append with
fewer rows. Summaries combine into the store's :class:`~tbps_runtime.store.base.StoreSummary` exactly
as the local store's SQL aggregates would count the same rows. Plain data in, plain data out.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from tbps_runtime.store.base import CameraSummary, StoreSummary


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The rows (camera, source, time, track) of one append -> {"sources": [...], "cameras": {camera:
    {"rows", "undated", "first", "last", "tracks": [[low, high], ...] runs of its distinct track ids}}}."""
    sources, cameras = set(), {}
    for row in rows:
        sources.add(row["source"])
        entry = cameras.setdefault(row["camera"], {"rows": 0, "undated": 0, "times": [], "tracks": set()})
        entry["rows"] += 1
        if row["time"] is None:
            entry["undated"] += 1
        else:
            entry["times"].append(row["time"])
        if row["track"] is not None:
            entry["tracks"].add(int(row["track"]))
    return {"sources": sorted(sources), "cameras": {
        camera: {"rows": e["rows"], "undated": e["undated"], "first": min(e["times"], default=None),
                 "last": max(e["times"], default=None), "tracks": _runs(sorted(e["tracks"]))}
        for camera, e in cameras.items()}}


def combine(summaries: list[dict[str, Any]]) -> StoreSummary:
    """The appends' summaries -> the store's (segments and bytes left at 0)."""
    cameras: dict[str, dict[str, Any]] = {}
    sources = set()
    for summary in summaries:
        sources.update(summary["sources"])
        for camera, part in summary["cameras"].items():
            entry = cameras.setdefault(camera, {"rows": 0, "undated": 0, "times": [], "tracks": []})
            entry["rows"] += part["rows"]
            entry["undated"] += part["undated"]
            entry["times"] += [t for t in (part["first"], part["last"]) if t is not None]
            entry["tracks"] += part["tracks"]
    per_camera = [CameraSummary(camera, e["rows"], _union_size(e["tracks"]), min(e["times"], default=None),
                                max(e["times"], default=None)) for camera, e in sorted(cameras.items())]
    times = [t for c in per_camera for t in (c.first, c.last) if t is not None]
    return StoreSummary(rows=sum(c.rows for c in per_camera),
                        tracks=_union_size([run for e in cameras.values() for run in e["tracks"]]),
                        sources=len(sources), segments=0, first=min(times, default=None),
                        last=max(times, default=None), undated_rows=sum(e["undated"] for e in cameras.values()),
                        bytes=0, cameras=per_camera)


def _runs(values: list[int]) -> list[list[int]]:
    """Sorted distinct ints -> [[low, high], ...] runs of consecutive ones (a window's tracks mostly are)."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


def _union_size(runs: Iterable[Sequence[int]]) -> int:
    """How many distinct ints the [low, high] runs cover together."""
    total, end = 0, None
    for low, high in sorted(runs):
        if end is None or low > end:
            total, end = total + high - low + 1, high
        elif high > end:
            total, end = total + high - end, high
    return total


def summary_records(first: int, summary: dict[str, Any], part_size: int) -> dict[str, str]:
    """A summary as meta records ``summary:<first>:<part>`` of at most ``part_size`` characters each (to fit
    Milvus's VARCHAR)."""
    text = json.dumps(summary, separators=(",", ":"))  # ASCII (escaped): one byte per character
    return {f"summary:{first}:{part}": text[start:start + part_size]
            for part, start in enumerate(range(0, len(text), part_size))}


def parse_summary(parts: dict[int, str] | None) -> dict[str, Any] | None:
    """A summary from its parts; None when there is none or it does not read back (made from the rows then)."""
    if not parts:
        return None
    try:
        summary = json.loads("".join(parts[i] for i in sorted(parts)))
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and {"sources", "cameras"} <= set(summary) else None


__all__ = ["combine", "parse_summary", "summarise", "summary_records"]
