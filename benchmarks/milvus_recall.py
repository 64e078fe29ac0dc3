"""Milvus (milvus-lite) approximate indexes against exact Eq. 14: recall@10 and query latency, beside the
local store's exact search on the same rows.

    python -m benchmarks.milvus_recall [--rows 100000] [--queries 100] [--out DIR] [--quick]
                                       [--scratch DIR] [--keep]

Rows and queries are random Gaussian (K×d = 9×128, the demo model's shape), normalised per slot.
**Random rows have no neighbourhood structure**, so the approximate indexes' recall here is a
pessimistic floor, not what a real gallery (crops of people, several per person) would see; what the
table does show fairly is the exactness of FLAT and of :class:`MilvusStore`, and the cost of each knob.

Ground truth is :func:`tbps_runtime.ranking.top_k` over the rows. The rows go once into a
:class:`~tbps_runtime.store.milvus.MilvusStore` (a milvus-lite file in ``--scratch``, FLAT index,
metric IP) and into a :class:`~tbps_runtime.store.local.LocalStore`; then the collection's vector index
is swapped for each approximate index milvus-lite builds (IVF_FLAT, IVF_SQ8, HNSW, HNSW_SQ; IVF_PQ it
does not implement) and every query is sent on its own (limit 10), timed one by one: the median and
p90 are over the queries. milvus-lite builds one index per segment it flushed, so IVF's ``nlist`` is
per segment. Build time is drop + create + load of the index.

milvus-lite 3.2 reads an index's build parameters from a ``params`` JSON entry while pymilvus 3 sends
them flattened (``nlist=...``): both are sent (without the ``params`` entry milvus-lite silently builds
with its defaults).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import fmt, machine, machine_line, markdown_table, summarize, write_results
from tbps_runtime.store.local import LocalStore
from tbps_runtime.store.milvus import MilvusStore
from tbps_runtime.store.rows import CropRecord
from tbps_runtime.ranking import normalize_slots, top_k

TOP = 10
SLOTS, DIM = 9, 128
COLLECTION = "bench"
WARMUP = 2
# (index type, build parameters, the search parameter settings swept)
FULL_INDEXES = [
    ("IVF_FLAT", {"nlist": 256}, [{"nprobe": 8}, {"nprobe": 32}, {"nprobe": 128}]),
    ("IVF_FLAT", {"nlist": 1024}, [{"nprobe": 16}, {"nprobe": 64}]),
    ("IVF_SQ8", {"nlist": 256}, [{"nprobe": 32}]),
    ("HNSW", {"M": 16, "efConstruction": 128}, [{"ef": 32}, {"ef": 128}, {"ef": 512}]),
    ("HNSW_SQ", {"M": 16, "efConstruction": 128}, [{"ef": 128}]),
]
QUICK_INDEXES = [
    ("IVF_FLAT", {"nlist": 16}, [{"nprobe": 2}, {"nprobe": 16}]),
    ("HNSW", {"M": 8, "efConstruction": 32}, [{"ef": 16}]),
]


def make_data(rows: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, K, d) and (queries, K, d) float32, random, each slot L2-normalised."""
    rng = np.random.default_rng(seed)
    gallery = np.empty((rows, SLOTS, DIM), np.float32)
    for start in range(0, rows, 20_000):  # float64 draws in chunks keep the peak memory low
        count = min(20_000, rows - start)
        gallery[start:start + count] = normalize_slots(rng.standard_normal((count, SLOTS, DIM)))
    return gallery, normalize_slots(rng.standard_normal((queries, SLOTS, DIM)))


def per_query(queries: np.ndarray, fn: Callable[[np.ndarray], Any]) -> tuple[dict[str, float], list[Any]]:
    """Call ``fn`` on each query (1, K, d) after WARMUP calls: timing summary and the results."""
    for q in queries[:WARMUP]:
        fn(q[None])
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q[None]))
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times), results


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of each query's exact top 10 that ``found`` holds."""
    return float(np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def fill_stores(scratch: Path, rows: np.ndarray) -> tuple[LocalStore, MilvusStore, dict[str, float]]:
    """The rows in a LocalStore and a MilvusStore (milvus-lite), one append each; seconds per append."""
    records = [CropRecord(source="bench", camera=f"cam{i % 4}", time=float(i), track=i // 8) for i in range(len(rows))]
    local = LocalStore.create(scratch / "local", fingerprint="bench", num_slots=SLOTS, embed_dim=DIM)
    milvus = MilvusStore.create(str(scratch / "milvus.db"), COLLECTION, scratch / "milvus-crops",
                                fingerprint="bench", num_slots=SLOTS, embed_dim=DIM)
    seconds = {}
    for name, store in (("local", local), ("milvus", milvus)):
        start = time.perf_counter()
        with store.writing():
            store.append(rows, records)
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    milvus.client.flush(COLLECTION)  # sealed segments: what the indexes are built on
    seconds["milvus_flush"] = time.perf_counter() - start
    return local, milvus, seconds


def swap_index(client: Any, index_type: str, build: dict[str, Any]) -> float:
    """Replace the collection's vector index; seconds for drop + create + load."""
    start = time.perf_counter()
    client.release_collection(COLLECTION)
    client.drop_index(COLLECTION, "vector")
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params={"params": build, **build})
    client.create_index(COLLECTION, params)
    client.load_collection(COLLECTION)
    return time.perf_counter() - start


def raw_search(client: Any, search: dict[str, Any]) -> Callable[[np.ndarray], list[int]]:
    def run(query: np.ndarray) -> list[int]:
        hits = client.search(COLLECTION, data=[query.reshape(-1)], limit=TOP, output_fields=["id"],
                             anns_field="vector", search_params={"metric_type": "IP", "params": search})
        return [int(h["id"]) for h in hits[0]]
    return run


def run(rows: int, queries: int, indexes: list, scratch: Path) -> dict[str, Any]:
    gallery, query_rows = make_data(rows, queries)
    truth = top_k(query_rows, gallery, TOP)[1]  # (Q, 10) exact Eq. 14
    local, milvus, fill = fill_stores(scratch, gallery)
    exact: dict[str, Any] = {}
    timing, found = per_query(query_rows, lambda q: top_k(q, gallery, TOP)[1][0].tolist())
    exact["numpy_top_k"] = {**timing, "recall": recall(found, truth)}
    timing, local_hits = per_query(query_rows, lambda q: [h.row for h in local.search(q, TOP)[0]])
    exact["local_store"] = {**timing, "recall": recall(local_hits, truth)}
    timing, store_hits = per_query(query_rows, lambda q: [h.row for h in milvus.search(q, TOP)[0]])
    exact["milvus_store"] = {**timing, "recall": recall(store_hits, truth),
                             "same_as_local_store": float(np.mean([a == b for a, b in zip(store_hits, local_hits)]))}
    timing, found = per_query(query_rows, raw_search(milvus.client, {}))
    exact["milvus_flat"] = {**timing, "recall": recall(found, truth)}
    approximate = []
    for index_type, build, settings in indexes:
        build_s = swap_index(milvus.client, index_type, build)
        described = milvus.client.describe_index(COLLECTION, "vector")
        for search in settings:
            timing, found = per_query(query_rows, raw_search(milvus.client, search))
            approximate.append({"index": index_type, "build": build, "search": search, "build_s": build_s,
                                "indexed_rows": described.get("indexed_rows"), **timing,
                                "recall": recall(found, truth)})
    milvus.close()
    return {"rows": rows, "queries": queries, "slots": SLOTS, "dim": DIM, "top": TOP, "fill_s": fill,
            "exact": exact, "approximate": approximate}


def to_markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    labels = {"numpy_top_k": "numpy `top_k` (in memory)", "local_store": "LocalStore.search (exact)",
              "milvus_store": "MilvusStore.search (FLAT, exact)", "milvus_flat": "milvus-lite FLAT (raw search)"}
    rows = [[labels[name], "–", "–", fmt(e["recall"], 3), fmt(e["median_ms"]), fmt(e["p90_ms"]), "–"]
            for name, e in results["exact"].items()]
    rows += [[a["index"], ", ".join(f"{k}={v}" for k, v in a["build"].items()),
              ", ".join(f"{k}={v}" for k, v in a["search"].items()), fmt(a["recall"], 3), fmt(a["median_ms"]),
              fmt(a["p90_ms"]), fmt(a["build_s"], 1)] for a in results["approximate"]]
    table = markdown_table(["search", "build", "search params", f"recall@{TOP}", "median ms", "p90 ms", "build s"],
                           rows)
    same = results["exact"]["milvus_store"]["same_as_local_store"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    return "\n".join([
        f"### Milvus (milvus-lite) indexes vs exact Eq. 14: {results['rows']:,} random rows "
        f"(K×d = {SLOTS}×{DIM}), {results['queries']} queries\n",
        f"Command: `{results['command']}`\n",
        f"Machine: {machine_line(info)}; {versions}.\n",
        "Rows and queries are random, normalised per slot: no neighbourhood structure, so approximate recall is "
        "a pessimistic floor. One query per call; median and p90 over the queries. MilvusStore returned the same "
        f"top {TOP} as LocalStore for {same:.0%} of the queries. Appends: LocalStore "
        f"{results['fill_s']['local']:.1f} s, MilvusStore {results['fill_s']['milvus']:.1f} s "
        f"(+ {results['fill_s']['milvus_flush']:.1f} s flush).\n",
        table])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 10 queries, two small indexes")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--scratch", default=None, help="where the stores go [default: a temporary directory]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch stores")
    args = parser.parse_args(argv)
    rows, queries = (2_000, 10) if args.quick else (args.rows, args.queries)
    if rows < TOP or queries < 1:
        parser.error(f"--rows must be at least {TOP} and --queries at least 1")
    info = machine()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="milvus-recall-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        results = run(rows, queries, QUICK_INDEXES if args.quick else FULL_INDEXES, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    results["command"] = "python -m benchmarks.milvus_recall " + " ".join(argv if argv is not None else sys.argv[1:])
    results["versions"] = {name: _version(name) for name in ("pymilvus", "milvus-lite", "faiss-cpu")}
    results["machine"] = info
    _, md_path = write_results(args.out, "milvus_recall", results, to_markdown(results, info))
    print(md_path.read_text())
    return results


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
