"""``tbps ablate``: the paper's ablation rows (Tables 2-4, the supplement's D) over several seeds,
and diagnostic rows (the full model with one non-paper setting changed).

Every (row, seed) run trains to the preset's last epoch; the model kept is
that last epoch's (no checkpoint is picked by a test figure). The validation
split's figures come from the training history; the test split is evaluated
once per run, at the end. Each run's result is written beside its
checkpoint as ``ROW-sSEED.json`` and ``ablation.json`` is rebuilt from all of
them, so several processes may share one output directory (one process per
core, disjoint seeds or rows) and an interrupted ablation resumes where it
stopped.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbps_runtime.atomic import atomic_write_text, read_json
from tbps_runtime.errors import ConfigError, DataError
from tbps_runtime.machine import cpu_model
from tbps_train.config import RunConfig, apply_overrides, not_in_paper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationRow:
    """One row: a slug for file names, the paper's table, and the config changes it makes."""

    slug: str
    name: str
    table: str
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    # The row this one trains another way (its Eq. 9/12 reduction); rows of one family are
    # compared on validation and the better one is kept (choose_variants).
    variant_of: str | None = None


# Eq. 9/12 summed as printed, with one warm-up epoch of hinges averaged over all negatives (not in the paper).
SUM_WARMUP = {"ranking_reduction": "sum", "ranking_warmup_epochs": 1}


ROWS = (
    AblationRow("baseline", "baseline (global only)", "2", {"use_coarse": False, "use_fine": False}),
    AblationRow("coarse", "+ coarse", "2", {"use_fine": False}),
    AblationRow("coarse-fine-ranking", "+ coarse + fine (ranking loss)", "2", {}, {"fine_loss": "ranking"}),
    AblationRow("full", "full model (CMR)", "2", {}, {"fine_loss": "cmr"}),
    AblationRow("cmr-coarse", "CMR on coarse and fine", "3", {}, {"cmr_on_coarse": True}),
    AblationRow("separate-decoders", "separate decoders", "4", {"shared_decoder": False}),
    AblationRow("d2", "D = 2", "supp.", {"num_coarse": 2}),
    AblationRow("d6", "D = 6", "supp.", {"num_coarse": 6}),
    # Table 2 again with Eq. 9/12 summed as printed, warmed up for one epoch.
    AblationRow("baseline-sum-warmup", "baseline (global only), summed + warm-up", "2", 
                {"use_coarse": False, "use_fine": False}, SUM_WARMUP, variant_of="baseline"),
    AblationRow("coarse-sum-warmup", "+ coarse, summed + warm-up", "2", {"use_fine": False}, SUM_WARMUP,
                variant_of="coarse"),
    AblationRow("coarse-fine-ranking-sum-warmup", "+ coarse + fine (ranking loss), summed + warm-up", "2", {},
                {**SUM_WARMUP, "fine_loss": "ranking"}, variant_of="coarse-fine-ranking"),
    AblationRow("full-sum-warmup", "full model (CMR), summed + warm-up", "2", {}, {**SUM_WARMUP, "fine_loss": "cmr"},
                variant_of="full"),
    # Diagnostics: the full model with one setting changed, each one a hypothesis of why parts may hurt.
    AblationRow("sum-reduction", "Eq. 9/12 summed, Eq. 7 averaged over the batch", "diag.", {},
                {"ranking_reduction": "sum"}),
    AblationRow("linear-id", "linear Eq. 7 classifier (as printed)", "diag.", {"id_classifier": "linear"}),
    AblationRow("token-std-1", "decoder tokens drawn from N(0, 1)", "diag.", {"token_init_std": 1.0}),
    AblationRow("scratch", "image backbone from scratch, full lr", "diag.", {}, {},
                {"image_weights": "none", "image_backbone_lr_scale": 1.0}),
    AblationRow("pretrained-full-lr", "pretrained backbone at the full lr", "diag.", {}, {},
                {"image_backbone_lr_scale": 1.0}),
    AblationRow("baseline-sum", "baseline (global only), Eq. 9 summed", "diag.",
                {"use_coarse": False, "use_fine": False}, {"ranking_reduction": "sum"}, variant_of="baseline"),
    AblationRow("warmup", "2 warm-up epochs", "diag.", {}, {}, {"warmup_epochs": 2}),
    AblationRow("lr-5e-4", "learning rate 5e-4 (the paper's; ½×)", "diag.", {}, {}, {"lr": 5e-4}),
    AblationRow("size-128x48", "input 128×48 (8×3 map)", "diag.", {"image_size": (128, 48)}),
    # What makes the decoder's tokens specialise (within the paper: its text leaves both open).
    AblationRow("orthogonal-tokens", "orthogonal initial tokens", "tokens", {"token_init": "orthogonal"}),
    AblationRow("no-query-bias", "no query bias in the decoder (as Eq. 4)", "tokens", {"decoder_query_bias": False}),
    AblationRow("orthogonal-no-query-bias", "orthogonal tokens, no query bias", "tokens",
                {"token_init": "orthogonal", "decoder_query_bias": False}),
    AblationRow("orthogonal-tokens-sum-warmup", "orthogonal initial tokens, summed + warm-up", "tokens",
                {"token_init": "orthogonal"}, SUM_WARMUP, variant_of="orthogonal-tokens"),
    AblationRow("no-query-bias-sum-warmup", "no query bias, summed + warm-up", "tokens",
                {"decoder_query_bias": False}, SUM_WARMUP, variant_of="no-query-bias"),
    AblationRow("orthogonal-no-query-bias-sum-warmup", "orthogonal tokens, no query bias, summed + warm-up",
                "tokens", {"token_init": "orthogonal", "decoder_query_bias": False}, SUM_WARMUP,
                variant_of="orthogonal-no-query-bias"),
    # Outside the paper, labelled diagnostics: does an explicit push apart make the tokens specialise?
    AblationRow("token-diversity", "token query diversity term, weight 1 (not in the paper)", "tokens",
                {"token_init": "orthogonal", "decoder_query_bias": False}, {"token_diversity_weight": 1.0}),
    AblationRow("token-lr-10", "decoder tokens at 10x the learning rate (not in the paper)", "tokens",
                {"token_init": "orthogonal", "decoder_query_bias": False}, {}, {"token_lr_scale": 10.0}),
    # Why the global slot falls when parts are added (diagnostic, not a proposal).
    AblationRow("full-detached-parts", "full model, part gradients stopped at the features", "global",
                {"detach_part_features": True}),
    AblationRow("full-detached-parts-sum-warmup", "full model, part gradients stopped, summed + warm-up",
                "global", {"detach_part_features": True}, SUM_WARMUP, variant_of="full-detached-parts"),
)
ROW_SETS = {"table2": ("baseline", "coarse", "coarse-fine-ranking", "full"),
            "table2-sum-warmup": ("baseline-sum-warmup", "coarse-sum-warmup", "coarse-fine-ranking-sum-warmup",
                                  "full-sum-warmup"),
            "tokens": tuple(row.slug for row in ROWS if row.table == "tokens"),
            "global": ("full-detached-parts", "full-detached-parts-sum-warmup"),
            "extra": ("cmr-coarse", "separate-decoders", "d2", "d6"),
            "diag": tuple(row.slug for row in ROWS if row.table == "diag.")}
ROW_SETS["all"] = (ROW_SETS["table2"] + ROW_SETS["table2-sum-warmup"] + ROW_SETS["extra"] + ROW_SETS["diag"]
                   + ROW_SETS["tokens"] + ROW_SETS["global"])


def _read_run(path: Path) -> dict[str, Any]:
    """A finished run's record; a damaged one is named, so that it can be deleted and run again."""
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the finished run {path} ({e}): delete it to run it again") from e
    if not isinstance(record, dict) or not isinstance(record.get("test"), dict) or "row" not in record:
        raise DataError(f"{path} is not an ablation run's record: delete it to run it again")
    return record


def select_rows(spec: str) -> list[AblationRow]:
    """``table2``, ``extra``, ``all`` or comma-separated slugs -> rows, in table order."""
    by_slug = {row.slug: row for row in ROWS}
    slugs: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        names = ROW_SETS.get(part, (part,))
        unknown = [n for n in names if n not in by_slug]
        if unknown:
            raise ConfigError(f"unknown ablation row {unknown[0]!r}; choose from "
                              f"{', '.join(list(ROW_SETS) + list(by_slug))}")
        slugs += [n for n in names if n not in slugs]
    if not slugs:
        raise ConfigError("no ablation rows selected")
    return [row for row in ROWS if row.slug in slugs]


def row_config(base: RunConfig, row: AblationRow, seed: int) -> RunConfig:
    config = apply_overrides(apply_overrides(base, "model", **row.model), "loss", **row.loss)
    return apply_overrides(config, "train", **{**row.train, "seed": seed})


def run_ablation(base: RunConfig, dataset: str, root: str | Path, out_dir: str | Path,
                 rows: list[AblationRow], seeds: list[int], progress: bool = True,
                 meta: dict[str, Any] | None = None, threads: int | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every (row, seed); finished runs are reused. Returns this call's run records.

    ``meta`` (the settings that hold for every run) goes into ablation.json, rebuilt after each run.
    ``threads`` pins PyTorch's threads (None: the load policy, see tbps_runtime.threads).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        for row in rows:
            result_path = out_dir / f"{row.slug}-s{seed}.json"
            if result_path.exists():
                records.append(_read_run(result_path))
                logger.info("ablation %s seed %d: done before", row.slug, seed)
                continue
            record = _run_one(row_config(base, row, seed), row, seed, dataset, root, out_dir, progress, threads)
            atomic_write_text(result_path, json.dumps(record, indent=2))
            records.append(record)
            write_summary(out_dir, meta)
    return records


def _run_one(config: RunConfig, row: AblationRow, seed: int, dataset: str, root: str | Path,
             out_dir: Path, progress: bool, threads: int | None) -> dict[str, Any]:
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.evaluate import evaluate
    from tbps_train.train import train

    checkpoint = out_dir / f"{row.slug}-s{seed}.pt"
    started = time.perf_counter()
    logger.info("ablation %s (%s) seed %d", row.slug, row.name, seed)
    train(config, dataset, root, checkpoint, resume=checkpoint.exists(), progress=progress, threads=threads)
    payload = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    from tbps_train.train import twin_subsets

    test_records = read_split(dataset, root, "test")
    test = evaluate(model, tokenizer, test_records, device=config.train.device, per_slot=True,
                    query_subsets=twin_subsets(dataset, Path(root), "test", test_records))
    history = payload.get("history", [])
    evaluated = [r for r in history if "val" in r]
    best = max(evaluated, key=lambda r: r["val"]["r1"], default=None)
    logger.info("  %s seed %d: test R@1 %.2f R@5 %.2f R@10 %.2f", row.slug, seed, test["r1"], test["r5"], test["r10"])
    return {
        "row": row.slug, "name": row.name, "table": row.table, "seed": seed, "K": config.model.num_slots,
        "selection": "last epoch", "epochs": config.train.epochs,
        "val": evaluated[-1]["val"] if evaluated else None,
        "best_val_epoch": best["epoch"] if best else None,
        "test": test, "seconds": round(time.perf_counter() - started, 1),
        "checkpoint": checkpoint.name, "config": config.to_dict(), "not_in_paper": not_in_paper(config),
        "history": history,
        "machine": cpu_model(),
    }


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row (table order): mean and sample std over seeds of the test and validation figures."""
    order = {row.slug: i for i, row in enumerate(ROWS)}
    by_row: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (order.get(r["row"], 99), r["seed"])):
        by_row.setdefault(record["row"], []).append(record)
    summary = []
    for slug, runs in by_row.items():
        entry = {"row": slug, "name": runs[0]["name"], "table": runs[0]["table"], "K": runs[0]["K"],
                 "reduction": reduction_label(runs[0].get("config", {})), "seeds": [r["seed"] for r in runs]}
        for split in ("test", "val"):
            for key in ("r1", "r5", "r10", "map", "minp"):
                values = [r[split][key] for r in runs if r.get(split)]
                if values:
                    entry[f"{split}_{key}"] = round(statistics.fmean(values), 2)
                    entry[f"{split}_{key}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        summary.append(entry)
    return summary


def choose_variants(summary: list[dict[str, Any]]) -> dict[str, str]:
    """Per row family (a row and the rows that train it another way, AblationRow.variant_of): the row
    kept, the one with the highest mean validation R@1. Test figures play no part in the choice."""
    variant_of = {row.slug: row.variant_of or row.slug for row in ROWS}
    best: dict[str, dict[str, Any]] = {}
    for entry in summary:
        family = variant_of.get(entry["row"], entry["row"])
        if "val_r1" in entry and (family not in best or entry["val_r1"] > best[family]["val_r1"]):
            best[family] = entry
    return {family: entry["row"] for family, entry in best.items()}


def reduction_label(config: dict[str, Any]) -> str:
    """How a run reduced Eq. 9/12: "mean", "sum" or "sum + N warm-up epoch(s)"."""
    loss = config.get("loss", {})
    label = loss.get("ranking_reduction", "mean")
    warmup = loss.get("ranking_warmup_epochs", 0)
    return f"{label} + {warmup} warm-up epoch{'s' if warmup > 1 else ''}" if warmup else label


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Test R@1/5/10, mAP (mean ± std over seeds) and validation R@1 per row."""
    lines = ["| table | row | K | Eq. 9/12 | seeds | test R@1 | test R@5 | test R@10 | test mAP | val R@1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [_mean_std(e, f"test_{k}") for k in ("r1", "r5", "r10", "map")] + [_mean_std(e, "val_r1")]
        lines.append(f"| {e['table']} | {e['name']} | {e['K']} | {e.get('reduction', 'mean')} | {len(e['seeds'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "–"
    std = entry.get(f"{key}_std")
    return f"{entry[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def write_summary(out_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild ablation.json (every run's record and the per-row summary) and ablation.md from the run files."""
    out_dir = Path(out_dir)
    runs = [_read_run(p) for p in sorted(out_dir.glob("*-s*.json"))]
    summary = summarize(runs)
    document = {"meta": meta or {}, "summary": summary, "kept": choose_variants(summary), "runs": runs}
    atomic_write_text(out_dir / "ablation.json", json.dumps(document, indent=2))
    atomic_write_text(out_dir / "ablation.md", markdown_table(summary) + "\n")
    return document
