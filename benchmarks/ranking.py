"""Ranking speed: the runtime's Eq. 14 ``top_k`` vs the naive per-slot loop vs FAISS ``IndexFlatIP``,
against the memory-bandwidth floor measured in the same run.

    python -m benchmarks.ranking [--quick] [--out DIR] [--scratch DIR]

Galleries of random per-slot-normalised rows are written in chunks as ``.npy``
memory maps under ``--scratch`` and ranked memory-mapped (as ``tbps rank``
does). Sizes (full run): 10k and 100k rows at the paper model's K·d = 9×512,
and 1M rows at the demo model's K·d = 9×128 (1M × 9×512 is 18.4 GB: more than
this machine's free RAM, so neither the page cache nor FAISS could hold it).
One query and a batch of 32, k = 10. The floor is gallery bytes / the copy
bandwidth (numpy copy of a 1 GiB array, bytes read per second).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import fmt, machine, machine_line, markdown_table, time_interleaved, write_results
from tbps_runtime.ranking import naive_similarity, top_k

TOP = 10
FULL_SIZES = [(10_000, 9, 512), (100_000, 9, 512), (1_000_000, 9, 128)]
QUICK_SIZES = [(2_000, 9, 64), (5_000, 3, 32)]
NAIVE_MAX_ROWS = 10_000  # the per-slot float64 loop is only run up to here: it is slow


def write_gallery_memmap(path: Path, rows: int, slots: int, dim: int, seed: int = 0,
                         chunk: int = 20_000) -> np.ndarray:
    """Random per-slot-normalised (rows, K, d) float32 written chunk by chunk; returns a read-only memmap."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, slots, dim))
    for start in range(0, rows, chunk):
        block = rng.standard_normal((min(chunk, rows - start), slots, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=-1, keepdims=True)
        out[start:start + len(block)] = block
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 5) -> dict[str, float]:
    """Bytes read per second by a numpy copy of an ``nbytes`` array (best and median of ``reps``)."""
    source = np.ones(nbytes // 4, np.float32)
    target = np.empty_like(source)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {"bytes": nbytes, "best_gb_s": nbytes / times[0] / 1e9,
            "median_gb_s": nbytes / times[len(times) // 2] / 1e9}


def naive_top_k(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    scores = naive_similarity(queries, gallery)  # (Q, N) float64, per-slot loop
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def faiss_index(gallery: np.ndarray, threads: int | None):
    """An ``IndexFlatIP`` over the flattened rows (copied into RAM: FAISS flat indexes own their vectors)."""
    try:
        import faiss
    except ImportError:
        return None
    if threads:
        faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(gallery.shape[1] * gallery.shape[2])
    for start in range(0, len(gallery), 50_000):
        index.add(np.ascontiguousarray(gallery[start:start + 50_000]).reshape(-1, index.d))
    return index


def bench_size(gallery: np.ndarray, queries: dict[int, np.ndarray], reps: int,
               threads: int | None, floor_gb_s: float, use_faiss: bool = True) -> list[dict[str, Any]]:
    rows = []
    index = faiss_index(gallery, threads) if use_faiss else None
    for batch, q in queries.items():
        flat = (q / np.linalg.norm(q, axis=-1, keepdims=True)).reshape(len(q), -1)
        fns = {"top_k": lambda: top_k(q, gallery, TOP)}
        if len(gallery) <= NAIVE_MAX_ROWS:
            fns["naive"] = lambda: naive_top_k(q, gallery, TOP)
        if index is not None:
            fns["faiss_flat_ip"] = lambda: index.search(flat, TOP)
        timings = time_interleaved(fns, reps=reps, warmup=1)
        agree = None
        if index is not None:  # same top-10 rows as FAISS (ties aside, random data has none)
            agree = bool(np.array_equal(top_k(q, gallery, TOP)[1], index.search(flat, TOP)[1]))
        nbytes = gallery.nbytes
        floor_ms = nbytes / (floor_gb_s * 1e9) * 1e3
        rows.append({"rows": len(gallery), "slots": gallery.shape[1], "dim": gallery.shape[2],
                     "gallery_bytes": nbytes, "queries": batch, "k": TOP, "timings": timings,
                     "bandwidth_floor_ms": floor_ms,
                     "top_k_vs_floor": timings["top_k"]["median_ms"] / floor_ms,
                     "top_k_vs_faiss": (timings["top_k"]["median_ms"] / timings["faiss_flat_ip"]["median_ms"]
                                        if "faiss_flat_ip" in timings else None),
                     "same_top_k_as_faiss": agree})
    del index
    return rows


def to_markdown(rows: list[dict[str, Any]], bandwidth: dict[str, float], info: dict[str, Any]) -> str:
    table = []
    for r in rows:
        t = r["timings"]
        cell = lambda name: f"{fmt(t[name]['median_ms'], 1)} / {fmt(t[name]['p90_ms'], 1)}" if name in t else "–"
        table.append([f"{r['rows']:,}", f"{r['slots']}×{r['dim']}", f"{r['gallery_bytes'] / 1e9:.2f} GB",
                      r["queries"], cell("top_k"), cell("naive"), cell("faiss_flat_ip"),
                      fmt(r["bandwidth_floor_ms"], 1), f"{r['top_k_vs_floor']:.2f}×",
                      f"{r['top_k_vs_faiss']:.2f}×" if r["top_k_vs_faiss"] is not None else "–"])
    header = ["gallery rows", "K×d", "size", "queries", "tbps top_k ms (median / p90)", "naive per-slot loop ms",
              "FAISS IndexFlatIP ms", "bandwidth floor ms", "top_k ÷ floor", "top_k ÷ FAISS"]
    return (f"### Ranking (k = {TOP}, memory-mapped float32 gallery)\n\n{markdown_table(header, table)}\n\n"
            f"Copy bandwidth (numpy copy of a {bandwidth['bytes'] / 2**30:g} GiB array, bytes read per second): best {bandwidth['best_gb_s']:.1f} GB/s, "
            f"median {bandwidth['median_gb_s']:.1f} GB/s; the floor uses the best.\n\nMachine: {machine_line(info)}.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small galleries, 2 reps")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--scratch", default=None, help="where the gallery memmaps go [default: a temp dir]")
    parser.add_argument("--paper-1m", action="store_true",
                        help="also rank 1M rows at 9x512 (18.4 GB memory map; top_k only: FAISS would need it in RAM)")
    parser.add_argument("--sizes", default=None,
                        help="comma list of ROWSxKxD galleries instead of the defaults, e.g. 1000000x9x512")
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads [default: FAISS's]")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES + ([(1_000_000, 9, 512)] if args.paper_1m else [])
    if args.sizes:
        sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    info = machine()
    bandwidth = copy_bandwidth(64 << 20 if args.quick else 1 << 30)
    scratch = Path(tempfile.mkdtemp(prefix="tbps-bench-ranking-", dir=args.scratch))
    rows = []
    try:
        for n, slots, dim in sizes:
            needed = n * slots * dim * 4
            free = shutil.disk_usage(scratch).free
            if needed > free * 0.8:
                raise SystemExit(f"not enough disk under {scratch}: {needed / 1e9:.1f} GB needed, {free / 1e9:.1f} free")
            path = scratch / f"g{n}_{slots}x{dim}.npy"
            gallery = write_gallery_memmap(path, n, slots, dim)
            rng = np.random.default_rng(1)
            queries = {b: rng.standard_normal((b, slots, dim), dtype=np.float32) for b in (1, 32)}
            huge = n * slots * dim * 4 > 8e9  # larger than RAM can comfortably cache: disk-bound, top_k only
            reps = 2 if args.quick or huge else (10 if n <= 100_000 else 5)
            rows += bench_size(gallery, queries, reps, args.threads, bandwidth["best_gb_s"], use_faiss=not huge)
            del gallery
            path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {"machine": info, "quick": args.quick, "copy_bandwidth": bandwidth, "rows": rows,
               "not_measured": ("FAISS at 1M x 9x512 (its flat index would hold 18.4 GB in RAM)" if args.paper_1m
                                else "1M rows at the paper K·d 9×512 (18.4 GB): run with --paper-1m")}
    name = "ranking" if not args.sizes else "ranking_" + args.sizes.replace(",", "_")
    _, md_path = write_results(args.out, name, results, to_markdown(rows, bandwidth, info))
    print(md_path.read_text())
    return results


if __name__ == "__main__":
    main()
