"""Render the benchmark pages of the documentation site from ``docs/benchmarks/*.json``.

Run by the ``gen-files`` plugin of ``mkdocs build``: every ``<name>.json`` that
a ``benchmarks/<name>.py`` script wrote becomes the page ``benchmarks/<name>.md``
= what it measures and the command (written once, below) + the machine that
ran it + the tables, rendered by the script's own ``to_markdown`` from the
JSON. The committed ``docs/benchmarks/<name>.md`` files (the scripts' own
output) stay in git; in the site build the generated page replaces each.

``python docs/gen_benchmarks.py OUT_DIR`` writes the same pages without mkdocs.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "benchmarks"
if str(ROOT) not in sys.path:  # mkdocs runs this with its own sys.path; `benchmarks/` is not installed
    sys.path.insert(0, str(ROOT))

METHOD = (
    "Each benchmark is one script under `benchmarks/` that writes `<name>.json` (every raw number and the "
    "machine that ran it) and `<name>.md`; this page is rendered from the JSON. Timings are wall clock: "
    "warm-up calls, then N repetitions, reported as median and p90 in milliseconds. Backends compared in "
    "one row run interleaved (a, b, a, b, …) on the same inputs in the same process, so a change of load "
    "hits them alike: compare ratios within a table, not absolute times across tables. "
    "How to run them all: [Benchmarks](index.md)."
)


@dataclass(frozen=True)
class Page:
    title: str
    what: str
    command: str
    render: Callable[[dict[str, Any]], str]  # the JSON -> the script's Markdown tables


def _towers(r: dict[str, Any]) -> str:
    from benchmarks import towers
    return towers.to_markdown(r["rows"], r["tensorrt"], r["machine"])


def _ranking(r: dict[str, Any]) -> str:
    from benchmarks import ranking
    return ranking.to_markdown(r["rows"], r["copy_bandwidth"], r["machine"])


def _parity(r: dict[str, Any]) -> str:
    from benchmarks import parity
    return parity.to_markdown(r["rows"], r["machine"], r["split"], r["notes"])


def _query_latency(r: dict[str, Any]) -> str:
    from benchmarks import query_latency
    return query_latency.to_markdown(r, r["machine"])


def _faiss_search(r: dict[str, Any]) -> str:
    from benchmarks import faiss_search
    return faiss_search.to_markdown(r, r["machine"])


def _contention(r: dict[str, Any]) -> str:
    from benchmarks import contention
    return contention.to_markdown(r, r["machine"])


def _store(r: dict[str, Any]) -> str:
    from benchmarks import store
    return store.to_markdown(r, r["machine"])


def _milvus_recall(r: dict[str, Any]) -> str:
    from benchmarks import milvus_recall
    return milvus_recall.to_markdown(r, r["machine"])


def _serve(r: dict[str, Any]) -> str:
    from benchmarks import serve
    return serve.to_markdown(r, r["machine"])


def _store_calibration(r: dict[str, Any]) -> str:
    from benchmarks import store_calibration
    return store_calibration.to_markdown(r, r["machine"])


PAGES = {
    "store_calibration": Page(
        "Store calibration: the bundle's threshold against the store's own",
        "Synthetic footage with known people (`tbps synth-footage`: footage.json says who appears where) "
        "ingested into a store with the ground-truth boxes; the store calibrated without labels "
        "(`tbps calibrate --gallery`: the bundle's held-out captions against the store's crops). Per camera, "
        "at each threshold: the true-match rate (captions of people present on the camera whose person is "
        "among the hits) and the share of captions of people absent from the camera, or from the footage, "
        "that return anything. The bundle was exported from the demo ablation run "
        "(`tbps export --ckpt runs/ablation/full-sum-warmup-s0.pt -o m.bundle --calibrate-dataset cuhk-pedes "
        "--calibrate-root runs/data`).",
        "python -m benchmarks.store_calibration --bundle m.bundle --out docs/benchmarks",
        _store_calibration),
    "towers": Page(
        "Tower latency: PyTorch eager, onnxruntime, int8",
        "Each tower (image, text) of the demo bundle and of a paper-sized model (ResNet-50 at 384×128 and a "
        "BERT-base-shaped text tower, random weights, d = 512) at batch 1, 8 and 32, in PyTorch eager and in "
        "onnxruntime on the CPU, with 1 and 2 intra-op threads; the int8 bundle's graphs in the same "
        "interleaved run. The speed-up is the PyTorch median over the onnxruntime median.",
        "python -m benchmarks.towers --bundle runs/bench/m.bundle --int8-bundle runs/bench/m.int8.bundle",
        _towers),
    "ranking": Page(
        "Ranking: Eq. 14 top_k against the bandwidth floor and FAISS",
        "Random per-slot-normalised galleries written as `.npy` files and ranked memory-mapped by the "
        "runtime's `top_k`, against the naive per-slot float64 loop (small galleries only) and FAISS "
        "`IndexFlatIP`. The floor is the gallery's bytes over the best copy bandwidth measured in the same run.",
        "python -m benchmarks.ranking --scratch /tmp",
        _ranking),
    "parity": Page(
        "R@K parity: PyTorch, ONNX float32, int8",
        "The demo checkpoint's test split embedded by PyTorch, by the ONNX float32 bundle and by the int8 "
        "bundle; Eq. 14 and `retrieval_metrics` score each. max |Δ| is the largest absolute difference of any "
        "embedding value from PyTorch's; \"embed s\" the time to embed the whole split.",
        "python -m benchmarks.parity --bundle runs/bench/m.bundle --int8-bundle runs/bench/m.int8.bundle",
        _parity),
    "query_latency": Page(
        "Query latency end to end",
        "A gallery of random rows of the demo bundle's K×d, written with `write_gallery`, memory-mapped and in "
        "the page cache. Cold: the installed `tbps-rank` as a fresh process (interpreter start, imports, "
        "bundle checksums, onnxruntime session, query, rank, JSON output). Warm: one `PersonSearch` loaded once.",
        "python -m benchmarks.query_latency --bundle runs/bench/m.bundle",
        _query_latency),
    "faiss_search": Page(
        "FAISS approximate search: recall, speed, memory",
        "FAISS indexes (the builder behind `tbps-index --faiss`) over galleries of the demo model's "
        "embeddings, searched with real test captions: recall@10 against the exact `top_k`, latency, "
        "build time, index size and memory.",
        "python -m benchmarks.faiss_search --out docs/benchmarks --scratch /tmp/faissbench",
        _faiss_search),
    "contention": Page(
        "Contention: the default thread policy against fixed thread counts",
        "A training step of the demo model (forward, backward, Adam; batch 32), the image tower (images/s, "
        "batch 32), one text query (latency) and Eq. 14 ranking of one query over 100,000 rows, each at every "
        "fixed thread count and with the default policy (`threads=None`), idle and with 1 and 2 competing "
        "`python -c \"while True: pass\"` processes that the script starts and stops itself. Under each load "
        "the policy chooses its threads then and there; the ratios (policy over the best fixed count, each "
        "setting over itself idle) come from the same run. Unlike the other pages, the settings run in blocks "
        "of back-to-back calls (policy, 1, 2, …, 2, 1, policy), not one call each in turn: one setting's "
        "spin-waiting threads would slow the next one's call.",
        "python -m benchmarks.contention --out docs/benchmarks",
        _contention),
    "store": Page(
        "Footage store: ingestion throughput and filtered queries",
        "Ingestion: synthetic footage (`tbps synth-footage`, 2 cameras × 60 s at 10 fps, 640×360, 16 people) "
        "ingested into a store with the demo bundle, with the footage's ground-truth boxes (the pipeline "
        "without a detector's cost) and with OpenCV's HOG, sampling 2 frames per second and every frame, at "
        "1 and 2 threads: frames/s, crops/s and HOG's recall at IoU ≥ 0.5. Queries: stores of 100,000 and "
        "1,000,000 random rows of the demo bundle's K×d (16 cameras over 24 h, a track per 20 rows), one "
        "query, k = 10, for each filter; the same rows ranked as a plain gallery in the same run.",
        "python -m benchmarks.store --bundle runs/bench/m.bundle --out docs/benchmarks",
        _store),
    "milvus_recall": Page(
        "Milvus: exact and approximate search against the local store",
        "Random per-slot-normalised rows of the demo bundle's K×d in a milvus-lite collection (the store's "
        "Milvus layout: the flattened vector, inner product = Eq. 14): the exact FLAT search and each "
        "approximate index milvus-lite builds (IVF_FLAT, IVF_SQ8, HNSW, HNSW_SQ) at a few search settings, "
        "recall@10 against the exact top 10, one query per call; the local store and numpy on the same rows.",
        "python -m benchmarks.milvus_recall --rows 100000 --out docs/benchmarks",
        _milvus_recall),
    "serve": Page(
        "Search service under load",
        "`tbps serve` started as its own process on 127.0.0.1 over the quickstart's gallery (800 rows) with the "
        "demo bundle; 1, 8 and 32 concurrent clients (asyncio + httpx on the same machine) send a fixed count of "
        "`/search` requests, every one a different caption; throughput, p50/p99 latency and errors per level, "
        "and from the server's /metrics the queries per text-tower call. One more level: one client against a "
        "server with no batching window.",
        "python -m benchmarks.serve --bundle runs/bench/m.bundle --gallery runs/bench/g.npy --out docs/benchmarks",
        _serve),
}


def machine_line(results: dict[str, Any]) -> str:
    """CPU, cores, memory; library versions; load average at start and end; when."""
    info = results["machine"]
    parts = [f"{info['cpu']}, {info['cores']} cores"
             + (f", {info['memory_gib']} GiB RAM" if info.get("memory_gib") else "")]
    parts.append(", ".join(f"{name} {version}" for name, version in info.get("libraries", {}).items() if version))
    load = lambda values: " / ".join(str(x) for x in values)
    if info.get("load_average"):
        end = results.get("load_average_end")
        parts.append(f"load average (1/5/15 min) {load(info['load_average'])} at start"
                     + (f", {load(end)} at the end" if end else ""))
    if "faiss_threads" in results:
        parts.append(f"FAISS threads {results['faiss_threads']}")
    if info.get("time"):
        parts.append(f"run {info['time']}")
    return "; ".join(parts)


def render(name: str, results: dict[str, Any]) -> str:
    """The site page of one benchmark's JSON."""
    page = PAGES.get(name)
    if page is None:
        raise ValueError(f"docs/benchmarks/{name}.json has no page description: add '{name}' to PAGES in "
                         f"docs/gen_benchmarks.py")
    tables = re.sub(r"^Machine: .*\n?", "", page.render(results), flags=re.M)  # said once, above
    tables = re.sub(r"^Command: .*\n?", "", tables, flags=re.M)
    quick = " (a `--quick` run)" if results.get("quick") else ""
    return (f"# {page.title}\n\n{page.what}\n\n"
            f"```bash\n{results.get('command', page.command)}\n```\n\n"
            f"{METHOD}\n\n"
            f"**Machine{quick}:** {machine_line(results)}.\n\n"
            f"Raw figures: [`{name}.json`]({name}.json).\n\n"
            f"{tables.strip()}\n")


def pages() -> dict[str, str]:
    """``{"benchmarks/<name>.md": text}`` for every ``docs/benchmarks/*.json``."""
    out = {}
    for path in sorted(SOURCE.glob("*.json")):
        out[f"benchmarks/{path.stem}.md"] = render(path.stem, json.loads(path.read_text(encoding="utf-8")))
    return out


def write_pages(out: Path) -> None:
    """Write the pages under ``out`` (outside a site build)."""
    for target, text in pages().items():
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        (out / target).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/gen_benchmarks.py OUT_DIR")
    write_pages(Path(sys.argv[1]))
else:  # run by mkdocs-gen-files (runpy.run_path) during `mkdocs build`
    import mkdocs_gen_files

    for _target, _text in pages().items():
        with mkdocs_gen_files.open(_target, "w") as _file:
            _file.write(_text)
