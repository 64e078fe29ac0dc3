"""Approximate Eq. 14 search with FAISS: recall@10 against the exact ranking, query latency, build
time and memory, at 100k and 1M gallery rows of the demo model (K×d = 9×128).

    python -m benchmarks.faiss_search [--quick] [--out DIR] [--bundle B] [--data D] [--gallery G]
                                      [--sizes 100000,1000000] [--queries N] [--scratch DIR] [--keep]

**The gallery rows are synthetic perturbations of real embeddings, not real
crops.** Random Gaussian rows have no neighbourhood structure, so recall on
them says nothing; a real 1M-crop gallery for the demo model does not exist.
So the galleries are drawn from a model fitted to the real test gallery
(``--gallery``: the quickstart's ``g.npy``, the bundle's image tower on the
800 test crops of 200 identities):

* each synthetic *identity* gets a centre drawn from a Gaussian with the real
  identity centres' mean and covariance (the centre of a real identity is the
  mean of its rows; a new centre is ``mu + z @ (M - mu)`` with
  ``z ~ N(0, I / (P - 1))`` over the P real centres ``M``, which has exactly
  their empirical covariance, all K slots jointly);
* each of its ``images_per_id`` rows (4, as in the dataset) is that centre plus
  a real within-identity residual (a real row minus its identity's centre,
  scaled by sqrt(n / (n - 1)) to undo the shrinkage of a mean of n rows), picked
  at random from the real rows, then re-normalised per slot;
* rows 0..799 of every gallery are the real rows themselves.

This keeps the real rows' anisotropy, the correlation between slots and the
real spread between crops of one person, without near-duplicates (the simpler
scheme "real row + noise", 1,250 noisy copies of each of 800 rows at 1M, would
turn the top 10 into a lottery among copies of one crop). Its limit: the
centres span at most P - 1 = 199 directions and the residuals at most 800, so
the synthetic rows lie closer to a low-dimensional set than a real 1M gallery
would; the Markdown shows how the queries score synthetic rows against real
ones. The queries are real: the bundle's text tower on the test split's
captions (``--queries`` of them, evenly spaced).

Ground truth is ``tbps_runtime.ranking.top_k`` over the memory-mapped gallery
(exact Eq. 14). Per FAISS spec (built with ``tbps_runtime.gallery.faiss_index``): build
time (train + add), index size (the file ``write_faiss_index`` writes), peak
memory, recall@10 for every nprobe / efSearch, and latency for 1 query and a
batch of 32, timed interleaved with the exact ``top_k`` so the speed-up is
measured in the same run.

Memory: the increase of the process's *anonymous* resident memory (``RssAnon``
in /proc/self/status) over its value before the phase, sampled every 5 ms by a
thread: what the index and FAISS's work buffers hold (spikes shorter than 5 ms
can be missed). It leaves out the memory-mapped gallery's pages, which are the
kernel's page cache (``RssFile``), shared and reclaimable.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import fmt, machine, machine_line, markdown_table, time_interleaved, write_results
from tbps_runtime.gallery.faiss_index import (
    build_faiss_index, require_faiss, rescore_exactly, search_faiss, write_faiss_index,
)
from tbps_runtime.ranking import normalize_slots, top_k

TOP = 10
DEMO = {"bundle": "tbps-quickstart/m.bundle", "data": "tbps-quickstart/data"}
FULL_SIZES = [100_000, 1_000_000]
QUICK_SIZES = [2_000, 5_000]
# Spec templates ({nlist} filled per size) and which search knob each one sweeps.
FULL_SPECS = ["Flat", "IVF{nlist},Flat", "IVF{nlist},SQ8", "IVF{nlist},PQ64", "HNSW32"]
QUICK_SPECS = ["Flat", "IVF{nlist},Flat", "IVF{nlist},SQ8", "IVF{nlist},PQ8x4", "HNSW16"]
NPROBE = [1, 4, 16, 64]
EF_SEARCH = [16, 64, 256]
RESCORE = 100  # candidates a compressed (PQ) index hands to exact rescoring (tbps rank --rescore)
IMAGES_PER_ID = 4
CHUNK_ROWS = 20_000


def nlist_for(rows: int) -> int:
    """IVF lists: about sqrt(N) rounded to a power of two (256 at 100k, 1024 at 1M), at least 16."""
    return max(16, 1 << int(round(np.log2(np.sqrt(rows)))))


# -- data -------------------------------------------------------------------------------------

def load_real(gallery_path: Path, bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real gallery rows (R, K, d) and their identities, checked against the bundle."""
    from tbps_runtime.gallery.open import load_gallery
    from tbps_runtime.model.bundle import load_manifest

    gallery = load_gallery(gallery_path)
    gallery.check_bundle(load_manifest(bundle).fingerprint, bundle)
    ids = [e.identity for e in gallery.entries]
    if any(i is None for i in ids):
        raise SystemExit(f"{gallery_path}: the rows need identities (tbps index --identities, as the quickstart "
                         "indexes its test split)")
    _, ids = np.unique(np.asarray([str(i) for i in ids]), return_inverse=True)
    return np.array(gallery.embeddings, np.float32), ids.astype(np.int64)


def test_captions(data_root: Path, split: str = "test") -> list[str]:
    """The split's captions from a CUHK-PEDES-layout ``reid_raw.json`` (the synthetic dataset's layout)."""
    path = data_root / "reid_raw.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: pass --data, the dataset the gallery's bundle was trained on")
    return [c for entry in json.loads(path.read_text()) if entry.get("split") == split for c in entry["captions"]]


class SyntheticGallery:
    """Rows drawn around real identity centres (see the module docstring)."""

    def __init__(self, real: np.ndarray, ids: np.ndarray):
        self.real = real
        self.shape = real.shape[1:]
        flat = real.reshape(len(real), -1).astype(np.float64)
        labels, counts = np.unique(ids, return_counts=True)
        centres = np.stack([flat[ids == label].mean(axis=0) for label in labels])  # (P, K*d)
        self.mu = centres.mean(axis=0)
        self.spread = centres - self.mu  # (P, K*d); z @ spread has their covariance when z ~ N(0, 1/(P-1))
        count_of = dict(zip(labels.tolist(), counts.tolist()))
        keep = np.array([count_of[i] > 1 for i in ids.tolist()])  # a lone row has no residual
        if keep.sum() == 0 or len(labels) < 2:
            raise SystemExit("the real gallery needs at least 2 identities and one with 2+ rows")
        index_of = {label: j for j, label in enumerate(labels.tolist())}
        scale = np.sqrt(np.array([count_of[i] / (count_of[i] - 1) if count_of[i] > 1 else 0.0 for i in ids.tolist()]))
        residuals = (flat - centres[[index_of[i] for i in ids.tolist()]]) * scale[:, None]
        self.residuals = residuals[keep]
        self.identities = len(labels)
        self.images_per_id = int(np.median(counts))

    def rows(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` synthetic rows (count, K, d) float32, ``images_per_id`` consecutive rows per identity."""
        people = -(-count // self.images_per_id)
        z = rng.standard_normal((people, len(self.spread))) / np.sqrt(len(self.spread) - 1)
        centres = self.mu + z @ self.spread  # (people, K*d)
        rows = np.repeat(centres, self.images_per_id, axis=0)[:count]
        rows += self.residuals[rng.integers(0, len(self.residuals), count)]
        return normalize_slots(rows.reshape(count, *self.shape).astype(np.float32))

    def write(self, path: Path, total: int, seed: int = 0) -> np.ndarray:
        """The real rows, then synthetic ones up to ``total``, written chunk by chunk; a read-only memmap."""
        rng = np.random.default_rng(seed)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, *self.shape))
        real = min(len(self.real), total)
        out[:real] = self.real[:real]
        for start in range(real, total, CHUNK_ROWS):
            count = min(CHUNK_ROWS, total - start)
            out[start:start + count] = self.rows(count, rng)
        out.flush()
        del out
        return np.load(path, mmap_mode="r")


def realism(queries: np.ndarray, real: np.ndarray, real_ids: np.ndarray, synth: SyntheticGallery) -> dict[str, Any]:
    """How the queries (and the rows of one person) score real rows vs as many synthetic ones."""
    fake = synth.rows(len(real), np.random.default_rng(12345))
    fake_ids = np.arange(len(fake)) // synth.images_per_id
    out = {}
    for name, rows, ids in (("real", real, real_ids), ("synthetic", fake, fake_ids)):
        flat = rows.reshape(len(rows), -1)
        scores = normalize_slots(queries).reshape(len(queries), -1) @ flat.T  # (Q, R)
        ordered = -np.sort(-scores, axis=1)
        pair = flat @ flat.T
        same = (ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)
        out[name] = {"rows": len(rows), "query_score_mean": float(scores.mean()),
                     "query_score_std": float(scores.std()), "query_top1_mean": float(ordered[:, 0].mean()),
                     "query_top10_mean": float(ordered[:, TOP - 1].mean()),
                     "same_person_score_mean": float(pair[same].mean()) if same.any() else None,
                     "other_person_score_mean": float(pair[~same & ~np.eye(len(ids), dtype=bool)].mean())}
    return out


# -- measurement --------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class AnonPeak:
    """Peak increase of RssAnon over its value at entry, sampled every ``interval`` s by a thread.

    FAISS and numpy release the GIL in their long calls, so the sampler runs beside them."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_bytes: int | None = None

    def __enter__(self) -> AnonPeak:
        self._base = _status_kib("RssAnon")
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = _status_kib("RssAnon")
            if value is not None and self._max is not None:
                self._max = max(self._max, value)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = _status_kib("RssAnon")
        if self._base is not None and end is not None:
            self._max = max(self._max, end)
            self.peak_bytes = (self._max - self._base) * 1024


def _trim() -> None:
    """Hand memory freed by earlier phases back to the kernel (glibc keeps small freed blocks),
    so the next phase's increase is measured from a true baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """(result, seconds, peak anonymous-memory increase in bytes)."""
    _trim()
    with AnonPeak() as peak:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, peak.peak_bytes


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact top-k| / k."""
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(e.tolist())) / exact.shape[1]
                          for f, e in zip(found, exact)]))


def sweep(spec: str, nprobe: list[int], ef: list[int]) -> list[dict[str, int]]:
    """The search settings measured for ``spec`` (``search_faiss`` keywords, plus ``rescore``)."""
    if spec.startswith("HNSW"):
        return [{"ef_search": v} for v in ef]
    if "IVF" in spec:
        settings = [{"nprobe": v} for v in nprobe]
        if "PQ" in spec:  # PQ's approximate scores misorder close rows: rescoring its candidates fixes that
            settings += [{"nprobe": v, "rescore": RESCORE} for v in nprobe if v >= 16]
        return settings
    return [{}]


def search(index: Any, parts: list[np.ndarray], queries: np.ndarray, setting: dict[str, int]):
    """``tbps rank``'s FAISS search for one setting: (scores, rows) of the top TOP."""
    rescore = setting.get("rescore", 0)
    knobs = {k: v for k, v in setting.items() if k != "rescore"}
    scores, rows = search_faiss(index, queries, max(TOP, rescore), **knobs)
    return rescore_exactly(queries, parts, rows, TOP) if rescore else (scores, rows)


def bench_spec(spec: str, gallery: np.ndarray, queries: np.ndarray, exact: np.ndarray,
               batches: dict[int, np.ndarray], reps: int, scratch: Path, settings) -> dict[str, Any]:
    index, build_s, build_peak = timed(lambda: build_faiss_index(gallery, spec, seed=0))
    path = write_faiss_index(index, scratch / "index.faiss")
    size = path.stat().st_size
    path.unlink()
    out = {"spec": spec, "build_s": build_s, "build_peak_anon_bytes": build_peak, "index_bytes": size,
           "settings": []}
    fns_by_batch: dict[int, dict[str, Callable[[], Any]]] = {b: {"exact top_k": (lambda q=q: top_k(q, gallery, TOP))}
                                                             for b, q in batches.items()}
    for setting in settings:
        (_, rows), search_s, search_peak = timed(lambda: search(index, [gallery], queries, setting))
        label = ", ".join(f"{k}={v}" for k, v in setting.items()) or "default"
        out["settings"].append({"setting": setting, "label": label, "recall_at_10": recall_at(rows, exact),
                                "all_queries_s": search_s, "search_peak_anon_bytes": search_peak})
        for b, q in batches.items():
            fns_by_batch[b][label] = lambda q=q, setting=setting: search(index, [gallery], q, setting)
    for b, fns in fns_by_batch.items():  # interleaved with exact top_k: the speed-up is within one run
        timings = time_interleaved(fns, reps=reps, warmup=1)
        for setting in out["settings"]:
            t = timings[setting["label"]]
            setting[f"latency_{b}"] = t
            setting[f"speedup_{b}"] = timings["exact top_k"]["median_ms"] / t["median_ms"]
        out[f"exact_latency_{b}"] = timings["exact top_k"]
    index = None  # free it (the timing closures hold the same cell)
    gc.collect()
    return out


def bench_size(rows: int, synth: SyntheticGallery, queries: np.ndarray, specs: list[str], reps: int,
               scratch: Path, nprobe: list[int], ef: list[int], keep: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    path = scratch / f"g{rows}.npy"
    gallery, gen_s, _ = timed(lambda: synth.write(path, rows))
    (_, exact), exact_s, exact_peak = timed(lambda: top_k(queries, gallery, TOP))
    batches = {b: queries[np.linspace(0, len(queries) - 1, b).astype(int)] for b in (1, 32)}
    nlist = nlist_for(rows)
    result = {"rows": rows, "slots": gallery.shape[1], "dim": gallery.shape[2], "gallery_bytes": gallery.nbytes,
              "nlist": nlist, "reps": reps, "generate_s": gen_s, "exact_all_queries_s": exact_s,
              "exact_peak_anon_bytes": exact_peak, "specs": []}
    for template in specs:
        spec = template.format(nlist=nlist)
        print(f"[{rows:,} rows] {spec} ...", file=sys.stderr, flush=True)
        result["specs"].append(bench_spec(spec, gallery, queries, exact, batches, reps, scratch,
                                          sweep(spec, [p for p in nprobe if p <= nlist], ef)))
    gallery = None  # unmap before the file is removed
    if not keep:
        path.unlink()
    result["wall_s"] = time.perf_counter() - started
    return result


# -- output ------------------------------------------------------------------------------------

def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / 1e6:,.0f} MB" if value >= 1e6 else f"{value / 1e3:,.0f} kB"


def to_markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    parts = [f"### FAISS approximate search vs exact Eq. 14 ranking (k = {TOP}, K×d = "
             f"{results['sizes'][0]['slots']}×{results['sizes'][0]['dim']})\n",
             f"Command: `{results['command']}`\n",
             f"Machine: {machine_line(info)}; FAISS threads {results['faiss_threads']}.\n"]
    d = results["data"]
    parts.append(
        f"**Data: the gallery rows are synthetic perturbations of real embeddings, not real crops.** The first "
        f"{d['real_rows']} rows of each gallery are the real test gallery ({d['real_rows']} crops of "
        f"{d['identities']} identities embedded by the bundle's image tower); every other row belongs to a "
        f"synthetic identity ({d['images_per_id']} rows each) whose centre is drawn from a Gaussian with the real "
        f"identity centres' mean and covariance, plus a real within-identity residual (a real row minus its "
        f"identity's mean), re-normalised per slot. The {d['queries']} queries are real: the text tower on "
        f"{d['queries']} of the {d['captions']} test captions (evenly spaced). Recall@{TOP} = the share of the exact "
        f"top {TOP} (runtime `top_k` over the memory-mapped gallery) that FAISS returns, averaged over the queries. "
        f"The synthetic centres span at most {d['identities'] - 1} directions, so these galleries are likely easier "
        f"for approximate search than real ones of that size.\n")
    r = results["realism"]
    rows = [[name, v["rows"], fmt(v["query_score_mean"], 3), fmt(v["query_score_std"], 3),
             fmt(v["query_top1_mean"], 3), fmt(v["query_top10_mean"], 3), fmt(v["same_person_score_mean"], 3),
             fmt(v["other_person_score_mean"], 3)] for name, v in r.items()]
    parts.append("How real and synthetic rows score (Eq. 14, out of K = "
                 f"{results['sizes'][0]['slots']}), as many of each:\n\n"
                 + markdown_table(["rows", "n", "query score mean", "std", "query best (mean)",
                                   f"query {TOP}th best (mean)", "same person pairs", "other pairs"], rows) + "\n")
    for s in results["sizes"]:
        table = []
        for spec in s["specs"]:
            for i, st in enumerate(spec["settings"]):
                lat = lambda b: f"{fmt(st[f'latency_{b}']['median_ms'], 2)} / {fmt(st[f'latency_{b}']['p90_ms'], 2)}"
                first = i == 0
                table.append([f"`{spec['spec']}`" if first else "", st["label"], fmt(st["recall_at_10"], 3),
                              lat(1), f"{st['speedup_1']:.1f}×", lat(32), f"{st['speedup_32']:.1f}×",
                              fmt(spec["build_s"], 1) if first else "", _mb(spec["index_bytes"]) if first else "",
                              _mb(spec["build_peak_anon_bytes"]) if first else "",
                              _mb(st["search_peak_anon_bytes"])])
        exact1 = [sp["exact_latency_1"]["median_ms"] for sp in s["specs"]]
        exact32 = [sp["exact_latency_32"]["median_ms"] for sp in s["specs"]]
        parts.append(
            f"#### {s['rows']:,} rows ({s['gallery_bytes'] / 1e9:.2f} GB float32, nlist = {s['nlist']})\n\n"
            f"Exact runtime `top_k` (memory-mapped, page cache warm): 1 query {fmt(min(exact1), 2)}–"
            f"{fmt(max(exact1), 2)} ms, 32 queries {fmt(min(exact32), 2)}–{fmt(max(exact32), 2)} ms (median of "
            f"each spec's interleaved run; the range is across specs); all {results['data']['queries']} queries "
            f"{fmt(s['exact_all_queries_s'], 1)} s, +{_mb(s['exact_peak_anon_bytes'])} anonymous memory. "
            f"Generating the gallery took {fmt(s['generate_s'], 1)} s; the whole size {fmt(s['wall_s'] / 60, 1)} min.\n\n"
            + markdown_table(["spec", "search", f"recall@{TOP}", "1 query ms (median / p90)", "speed-up vs exact",
                              "32 queries ms", "speed-up vs exact", "build s (train + add)", "index file",
                              "build peak +anon RSS", f"search peak +anon RSS ({results['data']['queries']} q)"],
                             table) + "\n")
    parts.append(
        f"`rescore={RESCORE}`: FAISS's best {RESCORE} candidates scored again exactly (Eq. 14) from the memory-mapped "
        f"gallery rows, the best {TOP} kept (`tbps rank --rescore {RESCORE}`); its latency includes those row reads. "
        "Latency: each spec's settings are timed interleaved with the exact `top_k` on the same queries "
        f"({', '.join(str(s['reps']) for s in results['sizes'])} reps after a warm-up; median / p90 ms); "
        "the speed-up is the exact median over the setting's median in that same run. Build: `build_faiss_index` (seeded training sample of "
        "max(100k, 64 × nlist) rows capped at the gallery, then `add` in 64 MiB chunks from the memory map). "
        "Index file: the size `write_faiss_index` writes. Memory: the peak increase of the process's anonymous "
        "resident memory (RssAnon, sampled every 5 ms) over its value at the start of the phase (after `malloc_trim`), "
        "in the benchmark's own process; the memory-mapped gallery's pages are page cache (RssFile) and not counted.")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 5,000 rows, small indexes, 2 reps")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--bundle", default=DEMO["bundle"], help="the bundle whose towers embed the data")
    parser.add_argument("--data", default=DEMO["data"], help="the dataset (its test captions are the queries)")
    parser.add_argument("--gallery", default=None, help="the real gallery with identities [default: g.npy beside --bundle]")
    parser.add_argument("--sizes", default=None, help="comma list of gallery rows [default: 100000,1000000]")
    parser.add_argument("--specs", default=None,
                        help="';'-separated FAISS factory strings, {nlist} filled per size "
                             f"[default: {';'.join(FULL_SPECS)}]")
    parser.add_argument("--nprobe", default=",".join(map(str, NPROBE)), help="nprobe values for IVF specs")
    parser.add_argument("--ef", default=",".join(map(str, EF_SEARCH)), help="efSearch values for HNSW specs")
    parser.add_argument("--queries", type=int, default=None, help="test captions used as queries [default: 500]")
    parser.add_argument("--reps", type=int, default=None, help="timed reps [default: 20 up to 100k rows, else 10]")
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads [default: FAISS's]")
    parser.add_argument("--scratch", default=None, help="where the gallery memmaps go [default: a temp dir]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch galleries")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.faiss_search " + " ".join(shlex.quote(a) for a in
                                                              (sys.argv[1:] if argv is None else argv))
    faiss = require_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    specs = args.specs.split(";") if args.specs else (QUICK_SPECS if args.quick else FULL_SPECS)
    nprobe, ef = [int(x) for x in args.nprobe.split(",")], [int(x) for x in args.ef.split(",")]
    bundle = Path(args.bundle)
    gallery_path = Path(args.gallery) if args.gallery else bundle.parent / "g.npy"
    info = machine()

    from tbps_runtime.search import PersonSearch

    real, ids = load_real(gallery_path, bundle)
    captions = test_captions(Path(args.data))
    count = min(len(captions), args.queries or (50 if args.quick else 500))
    picked = [captions[i] for i in np.linspace(0, len(captions) - 1, count).astype(int)]
    queries = PersonSearch.from_bundle(bundle).embed_texts(picked)
    synth = SyntheticGallery(real, ids)
    scratch = Path(tempfile.mkdtemp(prefix="tbps-bench-faiss-", dir=args.scratch))
    results: dict[str, Any] = {
        "machine": info, "quick": args.quick, "command": command, "faiss_threads": faiss.omp_get_max_threads(),
        "bundle": str(bundle), "k": TOP,
        "data": {"real_gallery": str(gallery_path), "real_rows": len(real), "identities": synth.identities,
                 "images_per_id": synth.images_per_id, "captions": len(captions), "queries": count,
                 "scheme": "real rows first; synthetic identity centre ~ Gaussian(mean, covariance of the real "
                           "identity centres), each row = centre + a real within-identity residual, per-slot normalised"},
        "realism": realism(queries, real, ids, synth), "sizes": []}
    try:
        for rows in sizes:
            needed = rows * real.shape[1] * real.shape[2] * 4
            free = shutil.disk_usage(scratch).free
            if needed > free * 0.8:
                raise SystemExit(f"not enough disk under {scratch}: {needed / 1e9:.1f} GB needed, {free / 1e9:.1f} free")
            reps = args.reps or (2 if args.quick else 20 if rows <= 100_000 else 10)
            results["sizes"].append(bench_size(rows, synth, queries, specs, reps, scratch, nprobe, ef, args.keep))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    name = "faiss_search" if not args.sizes else "faiss_search_" + args.sizes.replace(",", "_")
    _, md_path = write_results(args.out, name, results, to_markdown(results, info))
    print(md_path.read_text())
    return results


if __name__ == "__main__":
    main()
