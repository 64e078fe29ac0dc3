"""Shared pieces of the benchmarks: the machine description, timing, and the JSON/Markdown writers.

Every script writes ``<name>.json`` (raw numbers + :func:`machine`) and
``<name>.md`` (its table) into ``--out``. Timings are wall-clock
(``time.perf_counter``): warm-up calls first, then ``reps`` calls, reported as
median and p90 in milliseconds. Ratios are only compared within one run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from tbps_runtime.machine import cpu_model

_LIBRARIES = ("numpy", "torch", "onnx", "onnxruntime", "faiss-cpu", "transformers", "tokenizers", "tensorrt")


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (as ``uptime`` prints them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, memory, libraries, load average now."""
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "libraries": library_versions(), "load_average": load_average(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def time_call(fn: Callable[[], Any], reps: int, warmup: int = 2) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then ``reps`` timed times: median/p90/min/mean in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    times = sorted(times_ms)
    p90 = times[min(len(times) - 1, int(np.ceil(0.9 * len(times))) - 1)]
    return {"median_ms": statistics.median(times), "p90_ms": p90, "min_ms": times[0],
            "mean_ms": statistics.fmean(times), "reps": len(times)}


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Time several callables round-robin (a, b, c, a, b, c...) so that load changes on a
    shared machine hit them alike; returns :func:`summarize` per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: summarize(t) for name, t in times.items()}


def time_blocks(fns: dict[str, Callable[[], Any]], reps: int, warmup: int,
                enter: dict[str, Callable[[], ContextManager]] | None = None) -> dict[str, dict[str, float]]:
    """Each callable in blocks of back-to-back calls, in the order a, b, c, c, b, a (a linear drift in
    load hits all alike), each block ``warmup`` untimed calls then half the ``reps``; ``enter[name]``
    is entered around each of that name's blocks. Returns :func:`summarize` per name.

    Blocks, not one call each in turn: a setting's spin-waiting threads (OpenMP's, onnxruntime's)
    would slow the next setting's call, which no real run sees."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name in [*fns, *reversed(fns)]:
        with (enter or {}).get(name, nullcontext)():
            for _ in range(warmup):
                fns[name]()
            for _ in range(math.ceil(reps / 2)):
                start = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: summarize(t) for name, t in times.items()}


def wait_for_quiet(max_load: float = 1.5, max_wait_s: float = 0.0, poll_s: float = 10.0) -> list[float]:
    """Poll the 1-minute load average until it is below ``max_load`` or ``max_wait_s`` passed."""
    deadline = time.monotonic() + max_wait_s
    while load_average() and load_average()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
    return load_average()


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    libs = info["libraries"]
    versions = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
    return (f"{info['cpu']}, {info['cores']} cores, {versions}; load average (1/5/15 min) "
            f"{' / '.join(str(x) for x in info['load_average'])} at start")


def write_results(out: str | Path, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``<out>/<name>.json`` (results + machine) and ``<out>/<name>.md``; returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": name, **results}
    results.setdefault("machine", machine())
    results["load_average_end"] = load_average()
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    md_path.write_text(markdown.rstrip() + f"\n\nLoad average at the end: "
                       f"{' / '.join(str(x) for x in results['load_average_end'])}.\n")
    return json_path, md_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
