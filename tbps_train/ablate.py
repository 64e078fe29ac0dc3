"""``tbps-ablate``: the paper's ablation rows (Tables 2-4) trained and evaluated by one command."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tbps_train.config import RunConfig, apply_overrides

logger = logging.getLogger(__name__)

# (row name, model overrides, loss overrides), in the order of Table 2, then Tables 3 and 4.
TABLE2 = (
    ("baseline (global only)", {"use_coarse": False, "use_fine": False}, {}),
    ("+ coarse", {"use_fine": False}, {}),
    ("+ coarse + fine (ranking loss)", {}, {"fine_loss": "ranking"}),
    ("full model (CMR)", {}, {"fine_loss": "cmr"}),
)
EXTRA = (
    ("CMR on coarse and fine (Table 3)", {}, {"cmr_on_coarse": True}),
    ("separate decoders (Table 4)", {"shared_decoder": False}, {}),
)


def ablation_rows(include_extra: bool) -> tuple[tuple[str, dict, dict], ...]:
    return TABLE2 + EXTRA if include_extra else TABLE2


def run_ablation(base: RunConfig, dataset: str, root: str | Path, out_dir: str | Path, split: str = "test",
                 include_extra: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every row; checkpoints go to ``out_dir`` and finished rows are reused."""
    from tbps_runtime.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.evaluate import evaluate
    from tbps_train.train import train

    out_dir = Path(out_dir)
    records = read_split(dataset, root, split)
    results = []
    for index, (name, model_changes, loss_changes) in enumerate(ablation_rows(include_extra)):
        config = apply_overrides(apply_overrides(base, "model", **model_changes), "loss", **loss_changes)
        checkpoint = out_dir / f"row{index}.pt"
        started = time.perf_counter()
        logger.info("ablation row %d: %s", index, name)
        train(config, dataset, root, checkpoint, resume=checkpoint.exists(), progress=progress)
        payload = load_checkpoint(checkpoint)
        model, config = model_from_checkpoint(payload)
        tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
        metrics = evaluate(model, tokenizer, records, device=config.train.device)
        results.append({"row": name, "checkpoint": str(checkpoint), "K": config.model.num_slots,
                        "seconds": round(time.perf_counter() - started, 1), **metrics})
        logger.info("  %s: R@1 %.2f R@5 %.2f R@10 %.2f", name, metrics["r1"], metrics["r5"], metrics["r10"])
    return results


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = ["| row | K | R@1 | R@5 | R@10 | mAP | mINP |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['K']} | {r['r1']:.2f} | {r['r5']:.2f} | {r['r10']:.2f} | "
                     f"{r['map']:.2f} | {r['minp']:.2f} |")
    return "\n".join(lines)


def write_results(results: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> None:
    """ablation.json (raw figures and the run's settings) and ablation.md beside the checkpoints."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    (out_dir / "ablation.md").write_text(markdown_table(results) + "\n")
