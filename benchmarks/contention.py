"""Throughput under contention: the default thread policy against every fixed thread count, idle
and with competing busy processes.

    python -m benchmarks.contention [--quick] [--out DIR] [--bundle m.bundle] [--reps N] [--threads 1,2]

Four figures: a training step of the demo model (forward, backward and Adam on a random batch of
the preset's size; random stand-ins for the cached text features, as the trainer feeds them), the
image tower (images/s, batch 32), one text query (latency), and Eq. 14 ranking of one query over a
random in-RAM gallery (queries/s). Each is measured at every fixed thread count (1 .. usable
cores) and with the default policy (``threads=None``, :mod:`tbps_runtime.threads`), idle and with
1 and 2 competing ``python -c "while True: pass"`` processes.

Per load condition the competitors run for a second first. Then the policy chooses under that
load (a fresh ``PersonSearch`` per setting and condition: sessions fix their threads when they are
created; in training ``AdaptiveThreads`` re-checks every ``--every`` steps inside the timed calls),
and each figure runs its settings in blocks of back-to-back calls, ordered policy, 1, 2, 2, 1,
policy (:func:`time_blocks`). Fixed counts: PyTorch ``set_num_threads``,
``PersonSearch.from_bundle(threads=n)``, whose ``rank`` holds numpy's BLAS to the same count. Ratios, all within this run: the policy's throughput over the best fixed count's per
condition, and every setting over itself idle.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from benchmarks.common import (
    fmt, load_average, machine, machine_line, markdown_table, time_blocks, write_results,
)
from benchmarks.query_latency import QUERY
from benchmarks.towers import TEXT_LENGTH
from tbps_runtime.threads import CpuLoad, pinned_threads, usable_cores

logger = logging.getLogger(__name__)

# A busy loop that also ends when its parent (argv[1]) does: a killed benchmark leaves no spinning orphans.
COMPETITOR = ("import os, sys\nparent = int(sys.argv[1])\n"
              "while os.getppid() == parent:\n    for _ in range(10**6): pass\n")
WARM_S = 1.0  # competitors run this long before a condition is measured
GOAL, GOAL_COMPETITORS = 0.9, 1  # issue 14: policy >= 0.9x the best fixed count under one competitor
NUM_IDENTITIES = 480  # the quickstart's training identities (60% of 800): the classifiers' width
IMAGE_BATCH = 32
TOP = 10
POLICY = "policy"
FIGURES = {  # name -> (label, unit of the throughput)
    "training_step": ("training step", "steps/s"),
    "image_tower": (f"image tower, batch {IMAGE_BATCH}", "img/s"),
    "text_query": ("text query", "queries/s"),
    "ranking": ("ranking, one query", "queries/s"),
}


@contextmanager
def competitors(count: int) -> Iterator[list[int]]:
    """``count`` busy processes, running for :data:`WARM_S` before the block; killed after it, also on
    KeyboardInterrupt. Yields their pids."""
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-c", COMPETITOR, str(os.getpid())]))
        if count:
            time.sleep(WARM_S)
        yield [p.pid for p in processes]
    finally:
        for p in processes:
            p.kill()
        for p in processes:
            p.wait()


def build_model(preset: str):
    """An untrained model of ``preset`` (speed does not depend on the weights), its config and tokenizer."""
    from tbps_train.config import load_preset
    from tbps_train.model import TextBasedPersonSearch
    from tbps_train.text import load_text_backbone

    config = load_preset(preset)
    torch.manual_seed(0)
    text, tokenizer_json = load_text_backbone(config.model.text_backbone, seed=0)
    return TextBasedPersonSearch(config.model, text, NUM_IDENTITIES), config, tokenizer_json


def export_untrained(model, config, tokenizer_json: str, directory: Path) -> Path:
    """``model`` as a checkpoint, exported to ``directory/m.bundle`` by the exporter (with its parity check)."""
    from tbps_export import export_bundle
    from tbps_train.checkpoint import checkpoint_payload, save_checkpoint

    save_checkpoint(directory / "m.pt", checkpoint_payload(model, config, tokenizer_json, NUM_IDENTITIES))
    return export_bundle(directory / "m.pt", directory / "m.bundle")


def training_step(model, config) -> Callable[[], None]:
    """One optimiser step as the trainer takes it, on a fixed random batch."""
    from tbps_train.train import TrainingPass, build_optimizer, train_step

    batch, (height, width) = config.train.batch_size, config.model.image_size
    length = min(TEXT_LENGTH, config.model.max_text_length)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, height, width, generator=generator).contiguous(memory_format=torch.channels_last)
    hidden = torch.randn(batch, length, model.text_backbone.config.hidden_size, generator=generator)  # (B, L, h)
    mask = torch.ones(batch, length, dtype=torch.int64)
    labels = torch.arange(batch) // 2  # two captions per identity
    model.train()
    model.image_backbone.to(memory_format=torch.channels_last)  # as the trainer does
    forward, (optimizer, _) = TrainingPass(model), build_optimizer(model, config)

    def step() -> None:
        terms = train_step(model, pixels, hidden, mask, labels, config, forward)
        loss = sum(v for k, v in terms.items() if k.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_training(step: Callable[[], None], settings: list[int], every: int, reps: int,
                  warmup: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """The policy's steps, as the trainer runs them (:func:`training_threads`, its
    :class:`AdaptiveThreads` stepped after every step: its re-checks are timed), and each fixed
    count's; and what the policy chose."""
    from tbps_train.train import training_threads

    choice, adaptive = training_threads(None, every)
    record: dict[str, Any] = {"initial": choice.threads, "source": choice.source}
    fns = {POLICY: (lambda: (step(), adaptive.step())) if adaptive else step, **{str(n): step for n in settings}}
    enter = {str(n): partial(torch_threads, n) for n in settings}
    enter[POLICY] = lambda: torch_threads(adaptive.threads if adaptive else choice.threads)  # OMP_NUM_THREADS: pinned
    timings = time_blocks(fns, reps, warmup, enter)
    counts = adaptive.steps_by_threads if adaptive else {}
    record.update(threads=max(counts, key=counts.get, default=choice.threads),
                  final=adaptive.threads if adaptive else choice.threads,
                  steps_by_threads={str(n): k for n, k in sorted(counts.items())})
    return timings, record


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` for the block (and left there: the next block sets its own)."""
    torch.set_num_threads(n)
    yield


def blas_threads() -> int | None:
    """numpy's BLAS threads outside a search (inside, ``PersonSearch.rank`` holds them to its count)."""
    from threadpoolctl import threadpool_info

    pools = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return max(pools) if pools else None


def session_threads(search) -> dict[str, Any]:
    """The threads a ``PersonSearch``'s onnxruntime backend chose (``backend.threads``, a ThreadChoice)
    and whether its sessions spin-wait (None: onnxruntime's default, on)."""
    backend = search.backend
    choice, options = getattr(backend, "threads", None), getattr(backend, "options", None)
    spinning = None
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning") if options else None
    except RuntimeError:  # not set
        pass
    threads = getattr(choice, "threads", None) or (options.intra_op_num_threads if options else None) or None
    return {"threads": threads, "source": getattr(choice, "source", None), "allow_spinning": spinning}


def time_runtime(bundle: Path, settings: list[int], gallery: np.ndarray, pixels: np.ndarray, reps: int,
                 warmup: int) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """Per runtime figure, the policy's and each fixed count's calls (:func:`time_blocks`), on a
    ``PersonSearch`` per setting created now (under this load); and what the policy chose."""
    from tbps_runtime.search import PersonSearch

    searches = {POLICY: PersonSearch.from_bundle(bundle, threads=None)}
    searches.update({str(n): PersonSearch.from_bundle(bundle, threads=n) for n in settings})
    for search in searches.values():  # sessions are created at first use: now, under this load
        search.embed_texts([QUERY])
        search.encoder.embed_pixels(pixels[:1])
    query = searches[POLICY].embed_texts([QUERY])  # (1, K, d)
    timings = {"image_tower": time_blocks({k: partial(s.encoder.embed_pixels, pixels) for k, s in searches.items()},
                                          reps, warmup),
               "text_query": time_blocks({k: partial(s.embed_texts, [QUERY]) for k, s in searches.items()},
                                         reps, warmup),
               # rank holds numpy's BLAS to each search's thread count (the policy's or the fixed one)
               "ranking": time_blocks({k: partial(s.rank, query, gallery, k=TOP) for k, s in searches.items()},
                                      reps, warmup)}
    return timings, {**session_threads(searches[POLICY]), "ranking_blas_threads": blas_threads()}


def random_gallery(rows: int, slots: int, dim: int, seed: int = 0) -> np.ndarray:
    """(rows, K, d) float32, every slot L2-normalised."""
    gallery = np.random.default_rng(seed).standard_normal((rows, slots, dim), dtype=np.float32)
    return gallery / np.linalg.norm(gallery, axis=-1, keepdims=True)


def measure_condition(count: int, step: Callable[[], None], bundle: Path, settings: list[int], every: int,
                      gallery: np.ndarray, pixels: np.ndarray, reps: int, warmup: int) -> tuple[dict, list]:
    """One load condition: ``count`` competitors; every figure at every setting. Returns the
    condition's record and its rows."""
    with competitors(count) as pids:
        start_load, others = load_average(), CpuLoad()
        timings, training = time_training(step, settings, every, reps, warmup)
        runtime_timings, runtime = time_runtime(bundle, settings, gallery, pixels, reps, warmup)
        others_busy = others.others_busy()
    picked = {"training_step": training["threads"], "image_tower": runtime["threads"],
              # PersonSearch.rank holds numpy's BLAS to the sessions' count while it ranks
              "text_query": runtime["threads"], "ranking": runtime["threads"]}
    timings = {"training_step": timings, **runtime_timings}
    rows = [_row(figure, count, setting, t, picked[figure], len(pixels))
            for figure, per_setting in timings.items() for setting, t in per_setting.items()]
    condition = {"competitors": count, "competitor_pids": pids, "load_average_start": start_load,
                 "others_busy_cores": others_busy, "policy": {"training": training, "runtime": runtime}}
    return condition, rows


def _row(figure: str, count: int, setting: str, timing: dict[str, float], policy_threads: int | None,
         image_batch: int) -> dict[str, Any]:
    items = image_batch if figure == "image_tower" else 1
    return {"figure": figure, "competitors": count, "setting": setting,
            "threads": policy_threads if setting == POLICY else int(setting), **timing,
            "throughput": items / (timing["median_ms"] / 1e3), "unit": FIGURES[figure][1]}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sets each row's ``vs_idle`` (its throughput over the same setting's idle one) and returns, per
    figure and condition, the policy's throughput over the best fixed count's."""
    by = {(r["figure"], r["competitors"], r["setting"]): r for r in rows}
    for r in rows:
        idle = by.get((r["figure"], 0, r["setting"]))
        r["vs_idle"] = r["throughput"] / idle["throughput"] if idle else None
    out = []
    for figure, count in sorted({(r["figure"], r["competitors"]) for r in rows}, key=_order):
        fixed = [r for r in rows if (r["figure"], r["competitors"]) == (figure, count) and r["setting"] != POLICY]
        policy = by[(figure, count, POLICY)]
        best = max(fixed, key=lambda r: r["throughput"]) if fixed else None
        ratio = policy["throughput"] / best["throughput"] if best else None
        out.append({"figure": figure, "competitors": count, "best_fixed_threads": best["threads"] if best else None,
                    "best_fixed_throughput": best["throughput"] if best else None,
                    "policy_throughput": policy["throughput"], "policy_vs_best": ratio,
                    "goal_met": ratio >= GOAL if ratio is not None and count == GOAL_COMPETITORS else None})
    return out


def _order(key: tuple[str, int]) -> tuple[int, int]:
    return list(FIGURES).index(key[0]), key[1]


def to_markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    settings, rows = results["thread_settings"], results["rows"]
    by = {(r["figure"], r["competitors"], r["setting"]): r for r in rows}
    header = ["figure", "competing processes", *[f"{n} thread{'s' * (n > 1)}" for n in settings],
              "default policy (at its threads)", "policy ÷ best fixed",
              f"goal: ≥ {GOAL}× best fixed under {GOAL_COMPETITORS} competitor"]
    table = []
    for ratio in results["ratios"]:
        figure, count = ratio["figure"], ratio["competitors"]
        best = (f"{ratio['policy_vs_best']:.2f}× (best: {ratio['best_fixed_threads']})"
                if ratio["policy_vs_best"] is not None else "–")
        table.append([f"{FIGURES[figure][0]} ({_unit(figure)})", count,
                      *[_cell(by.get((figure, count, str(n)))) for n in settings],
                      _cell(by[(figure, count, POLICY)], policy=True), best,
                      {True: "**met**", False: "**missed**", None: ""}[ratio["goal_met"]]])
    return (f"### Contention on {info['cpu']}, {results['cores']} usable cores: `{results['command']}`\n\n"
            f"{markdown_table(header, table)}\n\n{_notes(results)}\n\n{_conditions(results)}\n\n"
            f"Machine: {machine_line(info)}.")


def _notes(results: dict[str, Any]) -> str:
    s, goals = results["setup"], [r for r in results["ratios"] if r["goal_met"] is not None]
    goal = (f"met for {sum(r['goal_met'] for r in goals)} of {len(goals)} figures" if goals
            else f"not measured (no condition with {GOAL_COMPETITORS} competing process)")
    return (f"Goal (issue 14), the policy at ≥ {GOAL}× the best fixed count under {GOAL_COMPETITORS} competing "
            f"process: {goal}.\n\n"
            f"Cells: the median of {s['reps']} calls, in two blocks per setting ordered policy, 1, 2, …, 2, 1, "
            f"policy, each block after {s['warmup']} warm-up call(s); under load, also the speed relative to the "
            f"same setting idle. Ratios are of throughput (for the text query: 1 / latency). Training: the "
            f"{s['preset']} preset, batch {s['batch']}; ranking: {s['gallery_rows']:,} rows of K×d = "
            f"{s['slots']}×{s['dim']} in RAM, k = {TOP}. The policy: `from_bundle(threads=None)` for the towers, "
            f"the trainer's `AdaptiveThreads` (re-checked every {s['policy_every']} steps) for training, and for "
            f"ranking whatever `PersonSearch.rank` does (numpy's BLAS threads below).")


def _unit(figure: str) -> str:
    return "ms" if figure == "text_query" else FIGURES[figure][1]


def _cell(row: dict[str, Any] | None, policy: bool = False) -> str:
    if row is None:
        return "not measured"
    value = fmt(row["median_ms"], 2) if row["figure"] == "text_query" else fmt(row["throughput"], 1)
    if policy:
        value += f" at {row['threads'] if row['threads'] is not None else 'default'}"
    return value + (f" ({row['vs_idle']:.2f}× idle)" if row["competitors"] and row["vs_idle"] is not None else "")


def _conditions(results: dict[str, Any]) -> str:
    table = []
    for c in results["conditions"]:
        training, runtime = c["policy"]["training"], c["policy"]["runtime"]
        steps = ", ".join(f"{k} at {n}" for n, k in training["steps_by_threads"].items())
        spinning = {None: "default (on)", "0": "off", "1": "on"}.get(runtime["allow_spinning"],
                                                                     runtime["allow_spinning"])
        table.append([c["competitors"], " / ".join(str(x) for x in c["load_average_start"]),
                      fmt(c["others_busy_cores"], 2),
                      f"{training['initial']} ({training['source']})" + (f"; steps: {steps}" if steps else ""),
                      f"{runtime['threads']} ({runtime['source']})" if runtime["threads"] else "onnxruntime's default",
                      spinning, runtime["ranking_blas_threads"] or "–"])
    header = ["competing processes", "load average at start", "cores other processes kept busy",
              "training: threads chosen (steps run at each count)", "onnxruntime threads", "onnxruntime spin-waiting",
              "BLAS threads outside rank"]
    idle_busy = [c["others_busy_cores"] for c in results["conditions"] if c["competitors"] == 0]
    note = (f"\n\n**The idle condition was not idle**: other processes kept {idle_busy[0]:.2f} cores busy."
            if idle_busy and (idle_busy[0] or 0) > 0.5 else "")
    return "#### What the policy chose\n\n" + markdown_table(header, table) + note


def _count_list(minimum: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = sorted({int(x) for x in text.split(",")})
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
        if values[0] < minimum:
            raise argparse.ArgumentTypeError(f"each must be at least {minimum}: {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny preset and bundle, 2 reps and no warm-up, idle and 1 competitor")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--bundle", default=None,
                        help="the runtime's bundle [default: export an untrained demo (--quick: tiny) model]")
    parser.add_argument("--reps", type=_positive, default=None,
                        help="timed calls per setting, half in each of its two blocks [default: 20; --quick: 2]")
    parser.add_argument("--threads", type=_count_list(1), default=None,
                        help="comma list of fixed thread counts [default: 1 .. usable cores]")
    parser.add_argument("--competitors", type=_count_list(0), default=None,
                        help="comma list of competing busy processes per condition [default: 0,1,2; --quick: 0,1]")
    parser.add_argument("--rows", type=_positive, default=None,
                        help="ranking gallery rows [default: 100000; --quick: 2000]")
    parser.add_argument("--every", type=_positive, default=None,
                        help="training policy: steps between re-checks [default: the trainer's; --quick: 2]")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, model, config, bundle: Path) -> dict[str, Any]:
    """Every load condition of ``args``; the results without the machine."""
    from tbps_runtime.model.bundle import load_manifest
    from tbps_train.train import ADAPT_EVERY

    cores, manifest = usable_cores(), load_manifest(bundle)
    settings = args.threads or list(range(1, cores + 1))
    counts = args.competitors or ([0, 1] if args.quick else [0, 1, 2])
    reps, warmup = 2 * math.ceil((args.reps or (2 if args.quick else 20)) / 2), 0 if args.quick else 2
    rows_n, every = args.rows or (2_000 if args.quick else 100_000), args.every or (2 if args.quick else ADAPT_EVERY)
    gallery = random_gallery(rows_n, manifest.num_slots, manifest.embed_dim)
    height, width = manifest.image_size
    pixels = np.random.default_rng(1).integers(0, 256, (IMAGE_BATCH, height, width, 3), dtype=np.uint8)
    step, conditions, rows = training_step(model, config), [], []
    for count in counts:
        logger.info("%d competing process(es)", count)
        condition, condition_rows = measure_condition(count, step, bundle, settings, every, gallery, pixels,
                                                      reps, warmup)
        conditions.append(condition)
        rows += condition_rows
    summary = ratios(rows)  # also sets each row's vs_idle
    setup = {"batch": config.train.batch_size,
             "image_size": list(config.model.image_size), "reps": reps, "warmup": warmup, "policy_every": every,
             "text_length": min(TEXT_LENGTH, config.model.max_text_length), "image_batch": IMAGE_BATCH,
             "gallery_rows": rows_n, "slots": manifest.num_slots, "dim": manifest.embed_dim, "warm_s": WARM_S,
             "competitor": COMPETITOR, "num_identities": NUM_IDENTITIES}
    return {"cores": cores, "thread_settings": settings, "competitor_counts": counts, "setup": setup,
            "conditions": conditions, "rows": rows, "ratios": summary}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw)
    if pinned_threads() is not None:
        logger.warning("OMP_NUM_THREADS=%d pins the policy's threads: unset it to measure the policy", pinned_threads())
    preset = "tiny" if args.quick else "demo"
    info, threads_before = machine(), torch.get_num_threads()
    model, config, tokenizer_json = build_model(preset)
    try:
        with tempfile.TemporaryDirectory(prefix="tbps-bench-contention-") as scratch:
            bundle = Path(args.bundle) if args.bundle else export_untrained(model, config, tokenizer_json,
                                                                              Path(scratch))
            measured = measure(args, model, config, bundle)
    finally:
        torch.set_num_threads(threads_before)
    measured["setup"].update(preset=preset, bundle=args.bundle or f"exported from an untrained {preset} model")
    results = {"machine": info, "quick": args.quick, "command": " ".join(["python -m benchmarks.contention", *raw]),
               **measured}
    _, md_path = write_results(args.out, "contention", results, to_markdown(results, info))
    print(md_path.read_text())
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
