"""Tower latency and throughput: PyTorch eager vs onnxruntime (CPU) vs TensorRT where present.

    python -m benchmarks.towers [--quick] [--out DIR] [--ckpt m.pt] [--bundle m.bundle] [--models demo,paper]

For each model (``demo``: the checkpoint; ``paper``: ResNet-50 at 384x128 + a
BERT-base-shaped random text tower, d = 512, K = 9), each tower and batch 1, 8,
32, the same inputs run through every backend in blocks of back-to-back calls
in the order a, b, b, a (a load drift hits all alike; one backend's spinning
threads never slow another's call): median and p90 latency, items/s. The ONNX
graphs are exported from the model into a temp dir with the exporter's tower
export (the bundle's own graphs with ``--bundle``; TensorRT engines only come
from a bundle built with ``tbps export --trt``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import fmt, machine, machine_line, markdown_table, time_blocks, write_results
from tbps_runtime.contract import IMAGE_TOWER, TEXT_TOWER, TowerSpec

DEMO_CKPT = "tbps-quickstart/m.pt"
TEXT_LENGTH = 32  # tokens per benchmark caption (CUHK-PEDES captions average ~23 words)


def demo_model(checkpoint: str | Path):
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(checkpoint))[0]


def paper_model():
    """The paper preset's model with random weights: ResNet-50 (384x128, last stride 1) and a
    frozen BERT-base-shaped text tower; speed does not depend on the values."""
    from transformers import AutoConfig, AutoModel

    from tbps_train.config import load_preset
    from tbps_train.model import TextBasedPersonSearch

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, vocab_size=30522)
    text = AutoModel.from_config(cfg, attn_implementation="eager").requires_grad_(False).eval()
    return TextBasedPersonSearch(load_preset("paper").model, text, num_identities=11003).eval()


def tower_inputs(spec: TowerSpec, model, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if spec == IMAGE_TOWER:
        height, width = model.config.image_size
        return {spec.inputs[0].name: rng.standard_normal((batch, 3, height, width), dtype=np.float32)}
    length = min(TEXT_LENGTH, model.config.max_text_length)
    vocab = model.text_backbone.config.vocab_size
    ids, mask = spec.inputs
    return {ids.name: rng.integers(1, vocab, (batch, length), dtype=np.int64),
            mask.name: np.ones((batch, length), np.int64)}


def torch_runner(spec: TowerSpec, model) -> Callable[[dict[str, np.ndarray]], Any]:
    from tbps_export.towers import build_tower

    tower = build_tower(spec, model)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return tower(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()

    return run


def ort_runner(path: Path, threads: int) -> Callable[[dict[str, np.ndarray]], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def trt_runners(bundle: Path | None) -> tuple[dict[str, Callable] | None, str]:
    """Runners over the bundle's TensorRT engines, or None and why not."""
    if bundle is None:
        return None, "no bundle with TensorRT engines given"
    from tbps_runtime.model.bundle import load_manifest

    manifest = load_manifest(bundle)
    if not manifest.tensorrt:
        return None, f"{bundle} has no TensorRT engines (tbps export --trt)"
    try:
        from tbps_runtime.model.tensorrt import TensorRTBackend

        backend = TensorRTBackend(bundle, manifest)
    except Exception as e:  # no TensorRT / no GPU / engine mismatch: report, do not fail
        return None, f"TensorRT unavailable: {type(e).__name__}: {e}"
    return {spec.name: (lambda feeds, s=spec: backend.run(s, feeds)) for spec in (IMAGE_TOWER, TEXT_TOWER)}, "ok"


def export_graphs(model, directory: Path, bundle: Path | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """Both towers as a bundle holds them (``bundle``'s own graphs, or exported then fused here) and
    as exported (unfused); no parity validation: that is the bundle's job."""
    from tbps_export.fuse import fuse_tower
    from tbps_export.onnx_export import export_tower

    (directory / "unfused").mkdir(parents=True, exist_ok=True)
    unfused = {spec.name: export_tower(spec, model, directory / "unfused" / spec.onnx_file)
               for spec in (IMAGE_TOWER, TEXT_TOWER)}
    if bundle is not None:
        return {spec.name: bundle / spec.onnx_file for spec in (IMAGE_TOWER, TEXT_TOWER)}, unfused
    fused = {name: directory / path.name for name, path in unfused.items()}
    for name, path in unfused.items():
        fuse_tower(path, fused[name])
    return fused, unfused


def bench_model(label: str, model, graphs: dict[str, Path], trt: dict | None, batches: list[int],
                reps: dict[int, int], threads: list[int], int8: dict[str, Path] | None = None,
                unfused: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    """One row per (tower, batch, thread count); PyTorch and onnxruntime run with the same
    number of intra-op threads, in blocks beside each other (and TensorRT, the unfused graph, int8)."""
    rows = []
    for spec in (IMAGE_TOWER, TEXT_TOWER):
        sessions = {n: ort_runner(graphs[spec.name], n) for n in threads}
        sessions8 = {n: ort_runner(int8[spec.name], n) for n in threads} if int8 else {}
        plain = {n: ort_runner(unfused[spec.name], n) for n in threads} if unfused else {}
        eager = torch_runner(spec, model)
        for batch in batches:
            feeds = tower_inputs(spec, model, batch)
            for n in threads:
                torch.set_num_threads(n)
                runners = {"pytorch": eager, "onnxruntime": sessions[n]}
                if n in sessions8:
                    runners["onnxruntime_int8"] = sessions8[n]
                if n in plain:
                    runners["onnxruntime_unfused"] = plain[n]
                if trt is not None:
                    runners["tensorrt"] = trt[spec.name]
                outputs = {name: np.asarray(run(feeds)) for name, run in runners.items()}
                # In blocks, not call by call: a backend's spinning threads would slow the next one's call.
                timings = time_blocks({k: (lambda r=r: r(feeds)) for k, r in runners.items()},
                                      reps=reps.get(batch, 3), warmup=1 if batch >= 32 else 2)
                for name, t in timings.items():
                    t["items_per_s"] = batch / (t["median_ms"] / 1e3)
                    t["max_abs_diff_vs_pytorch"] = float(np.abs(outputs[name] - outputs["pytorch"]).max())
                rows.append({"model": label, "tower": spec.name, "batch": batch, "threads": n,
                             "shape": {k: list(v.shape) for k, v in feeds.items()},
                             "output_shape": list(outputs["pytorch"].shape), "backends": timings,
                             "speedup_ort_vs_pytorch": timings["pytorch"]["median_ms"]
                             / timings["onnxruntime"]["median_ms"],
                             "speedup_int8_vs_float32": (timings["onnxruntime"]["median_ms"]
                                                         / timings["onnxruntime_int8"]["median_ms"]
                                                         if "onnxruntime_int8" in timings else None),
                             "speedup_fused_vs_unfused": (timings["onnxruntime_unfused"]["median_ms"]
                                                          / timings["onnxruntime"]["median_ms"]
                                                          if "onnxruntime_unfused" in timings else None)})
    return rows


def to_markdown(rows: list[dict[str, Any]], trt_reason: str, info: dict[str, Any]) -> str:
    table = []
    for r in rows:
        b = r["backends"]
        trt = b.get("tensorrt")
        unit = "img/s" if r["tower"] == IMAGE_TOWER.name else "q/s"
        table.append([r["model"], r["tower"].removesuffix("_tower"), r["batch"], r["threads"],
                      f"{fmt(b['pytorch']['median_ms'], 1)} / {fmt(b['pytorch']['p90_ms'], 1)}",
                      f"{fmt(b['onnxruntime']['median_ms'], 1)} / {fmt(b['onnxruntime']['p90_ms'], 1)}",
                      f"{fmt(trt['median_ms'], 2)} / {fmt(trt['p90_ms'], 2)}" if trt else "not measured",
                      f"{fmt(b['pytorch']['items_per_s'], 1)} → {fmt(b['onnxruntime']['items_per_s'], 1)} {unit}",
                      f"**{r['speedup_ort_vs_pytorch']:.2f}×**" + _goal(r["speedup_ort_vs_pytorch"], 2.0),
                      f"{fmt(b['onnxruntime_unfused']['median_ms'], 1)} ({r['speedup_fused_vs_unfused']:.2f}×)"
                      if r.get("speedup_fused_vs_unfused") else "not measured", b["pytorch"]["reps"]])
    header = ["model", "tower", "batch", "threads", "PyTorch ms (median / p90)", "onnxruntime ms (median / p90)",
              "TensorRT ms", "throughput PyTorch → ORT", "ORT ÷ PyTorch speed-up (goal ≥ 2×)",
              "unfused graph ms (fusion gain)", "reps"]
    text = f"### Tower latency (text: {TEXT_LENGTH} tokens)\n\n{markdown_table(header, table)}\n\n"
    int8_rows = [[r["model"], r["tower"].removesuffix("_tower"), r["batch"], r["threads"],
                  f"{fmt(r['backends']['onnxruntime']['median_ms'], 2)} / {fmt(r['backends']['onnxruntime']['p90_ms'], 2)}",
                  f"{fmt(r['backends']['onnxruntime_int8']['median_ms'], 2)} / "
                  f"{fmt(r['backends']['onnxruntime_int8']['p90_ms'], 2)}",
                  f"**{r['speedup_int8_vs_float32']:.2f}×**" + _goal(r["speedup_int8_vs_float32"], 1.5),
                  f"{r['backends']['onnxruntime_int8']['max_abs_diff_vs_pytorch']:.3f}"]
                 for r in rows if r.get("speedup_int8_vs_float32")]
    if int8_rows:
        text += ("### int8 vs float32 (onnxruntime CPU, same run)\n\n" + markdown_table(
            ["model", "tower", "batch", "threads", "float32 ms (median / p90)", "int8 ms (median / p90)",
             "int8 speed-up (goal ≥ 1.5×)", "int8 max \\|Δ\\| vs PyTorch"], int8_rows) + "\n\n")
    return text + f"TensorRT: {trt_reason}.\n\nMachine: {machine_line(info)}."


def _goal(value: float, goal: float) -> str:
    return "" if value >= goal else " (missed)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches 1 and 2, 2 reps, demo model only")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--ckpt", default=DEMO_CKPT, help="the demo model's checkpoint")
    parser.add_argument("--bundle", default=None, help="use this bundle's graphs (and TensorRT engines) for the demo model")
    parser.add_argument("--int8-bundle", default=None, help="also time this int8 bundle's graphs (demo model)")
    parser.add_argument("--paper-threads", default="1",
                        help="thread counts for the paper-sized model [default: 1; see the docs on 2 threads]")
    parser.add_argument("--models", default=None, help="comma list of demo,paper [default: both; --quick: demo]")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}",
                        help="comma list of intra-op thread counts, each backend run with each")
    args = parser.parse_args(argv)
    models = (args.models or ("demo" if args.quick else "demo,paper")).split(",")
    batches = [1, 2] if args.quick else [1, 8, 32]
    threads = sorted({int(n) for n in args.threads.split(",")})
    info = machine()
    trt, trt_reason = trt_runners(Path(args.bundle) if args.bundle else None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbps-bench-towers-") as scratch:
        for label in models:
            model = demo_model(args.ckpt) if label == "demo" else paper_model()
            bundle = Path(args.bundle) if label == "demo" and args.bundle else None
            graphs, unfused = export_graphs(model, Path(scratch) / label, bundle)
            reps = {b: 2 for b in batches} if args.quick else (
                {1: 20, 8: 10, 32: 5} if label == "demo" else {1: 5, 8: 3, 32: 2})
            int8 = ({s.name: Path(args.int8_bundle) / s.onnx_file for s in (IMAGE_TOWER, TEXT_TOWER)}
                    if args.int8_bundle and label == "demo" else None)
            counts = threads if label == "demo" else sorted({int(n) for n in args.paper_threads.split(",")})
            rows += bench_model(label, model, graphs, trt if label == "demo" else None, batches, reps, counts, int8,
                                unfused)
            del model
    results = {"machine": info, "threads": threads, "text_length": TEXT_LENGTH, "quick": args.quick,
               "tensorrt": trt_reason, "rows": rows}
    json_path, md_path = write_results(args.out, "towers", results, to_markdown(rows, trt_reason, info))
    print(md_path.read_text())
    return results


if __name__ == "__main__":
    main()
