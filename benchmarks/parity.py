"""R@K parity: the same test split ranked by the PyTorch model, the ONNX float32 towers, the int8
towers and (where present) TensorRT engines, plus a float16-stored gallery (what-if).

    python -m benchmarks.parity [--quick] [--out DIR] [--ckpt m.pt] [--bundle m.bundle]
                                [--int8-bundle m.int8.bundle] [--root DATA] [--split test]

Every variant embeds the split's crops and captions itself and is scored with
Eq. 14 and ``tbps_runtime.metrics.retrieval_metrics``; the largest embedding
difference is against PyTorch's embeddings of the same crops/captions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import fmt, machine, machine_line, markdown_table, write_results
from tbps_runtime.metrics import retrieval_metrics

DEMO = {"ckpt": "tbps-quickstart/m.pt", "bundle": "runs/bench/m.bundle", "int8": "runs/bench/m.int8.bundle",
        "root": "tbps-quickstart/data"}
METRICS = ("r1", "r5", "r10", "map", "minp")


def load_split(root: str | Path, split: str, dataset: str = "cuhk-pedes"):
    """The split's records, its image paths and identities, and its captions with their identities."""
    from tbps_train.data.readers import read_split

    records = read_split(dataset, root, split)
    texts = [c for r in records for c in r.captions]
    text_ids = np.array([r.person_id for r in records for _ in r.captions])
    return records, [str(r.image_path) for r in records], np.array([r.person_id for r in records]), texts, text_ids


def pytorch_embeddings(checkpoint: str | Path, records, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.pipeline import ImageStore
    from tbps_train.evaluate import embed_images, embed_texts

    payload = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], model.config.max_text_length)
    store = ImageStore(records, model.config.image_size, progress=False)
    return (embed_images(model, store).numpy(), embed_texts(model, tokenizer, texts).numpy())


def runtime_embeddings(bundle: str | Path, paths: list[str], texts: list[str],
                       backend: str = "onnxruntime") -> tuple[np.ndarray, np.ndarray]:
    from tbps_runtime.search import PersonSearch

    search = PersonSearch.from_bundle(bundle, backend=backend)
    return search.embed_images(paths), search.embed_texts(texts)


def score(images: np.ndarray, texts: np.ndarray, text_ids: np.ndarray, image_ids: np.ndarray) -> dict[str, float]:
    similarity = texts.reshape(len(texts), -1).astype(np.float32) @ images.reshape(len(images), -1).astype(np.float32).T
    return retrieval_metrics(similarity, text_ids, image_ids)


def variant(name: str, images: np.ndarray, texts: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
            ids: tuple[np.ndarray, np.ndarray], seconds: float | None, note: str = "") -> dict[str, Any]:
    image_ids, text_ids = ids
    return {"variant": name, "metrics": score(images, texts, text_ids, image_ids),
            "max_abs_diff_images": float(np.abs(images.astype(np.float64) - reference[0]).max()),
            "max_abs_diff_texts": float(np.abs(texts.astype(np.float64) - reference[1]).max()),
            "embed_seconds": seconds, "note": note}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any], split: dict[str, Any], notes: list[str]) -> str:
    base = rows[0]["metrics"]
    table = []
    for r in rows:
        m = r["metrics"]
        table.append([r["variant"], *[fmt(m[k]) for k in METRICS],
                      f"{r['max_abs_diff_images']:.1e} / {r['max_abs_diff_texts']:.1e}",
                      f"{m['r1'] - base['r1']:+.2f}", fmt(r["embed_seconds"], 1)])
    header = ["variant", "R@1", "R@5", "R@10", "mAP", "mINP", "max \\|Δ\\| vs PyTorch (images / texts)",
              "ΔR@1 vs PyTorch", "embed s (split)"]
    return (f"### R@K parity ({split['images']} crops, {split['captions']} captions, {split['identities']} "
            f"identities)\n\n{markdown_table(header, table)}\n\n" + "".join(f"- {n}\n" for n in notes)
            + f"\nMachine: {machine_line(info)}.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; the split decides the size")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--ckpt", default=DEMO["ckpt"])
    parser.add_argument("--bundle", default=DEMO["bundle"], help="the float32 bundle of --ckpt")
    parser.add_argument("--int8-bundle", default=DEMO["int8"], help="its int8 bundle (tbps export --int8); skipped if missing")
    parser.add_argument("--root", default=DEMO["root"])
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 OpenMP threads on this shared 2-core machine stall on every op (see towers)
    info = machine()
    records, paths, image_ids, texts, text_ids = load_split(args.root, args.split)
    ids = (image_ids, text_ids)
    (ref_images, ref_texts), seconds = timed(pytorch_embeddings, args.ckpt, records, texts)
    reference = (ref_images.astype(np.float64), ref_texts.astype(np.float64))
    rows = [variant("PyTorch (float32, eager)", ref_images, ref_texts, reference, ids, seconds)]
    (images, queries), seconds = timed(runtime_embeddings, args.bundle, paths, texts)
    rows.append(variant("ONNX float32 (onnxruntime)", images, queries, reference, ids, seconds))
    rows.append(variant("ONNX float32, gallery stored float16 (numpy what-if)", images.astype(np.float16),
                        queries, reference, ids, None, "gallery rows rounded to float16, scored in float32"))
    notes = ["float16 gallery: the runtime stores and ranks float32 galleries only; the row is a numpy "
             "what-if (ONNX float32 embeddings rounded to float16 for storage, scored in float32)."]
    if args.int8_bundle and Path(args.int8_bundle, "manifest.json").is_file():
        (images8, queries8), seconds = timed(runtime_embeddings, args.int8_bundle, paths, texts)
        rows.append(variant("ONNX int8 (onnxruntime)", images8, queries8, reference, ids, seconds))
    else:
        notes.append(f"int8: no int8 bundle at {args.int8_bundle} (tbps export --int8): not measured.")
    notes.append(_tensorrt_row(args.bundle, paths, texts, reference, ids, rows))
    results = {"machine": info, "quick": args.quick, "checkpoint": str(args.ckpt), "bundle": str(args.bundle),
               "split": {"root": str(args.root), "name": args.split, "images": len(paths), "captions": len(texts),
                         "identities": len(set(image_ids.tolist()))}, "rows": rows, "notes": notes}
    _, md_path = write_results(args.out, "parity", results, to_markdown(rows, info, results["split"], notes))
    print(md_path.read_text())
    return results


def _tensorrt_row(bundle: str, paths: list[str], texts: list[str], reference, ids, rows: list) -> str:
    """Appends the TensorRT row when the bundle has engines and they run here; returns the note."""
    from tbps_runtime.model.bundle import load_manifest

    engines = load_manifest(bundle).tensorrt
    if not engines:
        return "TensorRT: not measured here (no GPU, and the bundle has no engines: tbps export --trt --fp16)."
    precision = next(iter(engines.values())).get("precision", "?")
    try:
        (images, queries), seconds = timed(runtime_embeddings, bundle, paths, texts, "tensorrt")
    except Exception as e:  # no TensorRT / GPU here: say so, the other rows stand
        return f"TensorRT: not measured ({type(e).__name__}: {e})."
    rows.append(variant(f"TensorRT {precision}", images, queries, reference, ids, seconds))
    return f"TensorRT: {precision} engines of {bundle}."


if __name__ == "__main__":
    main()
