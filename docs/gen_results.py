"""Regenerate the tables of docs/results.md (between ``<!-- gen:NAME -->`` and ``<!-- /gen -->``) and
docs/tokens.png from the ablation records committed beside them.

    python docs/gen_results.py

Inputs: ``docs/ablation.json`` (demo preset, both Eq. 9/12 reductions), ``docs/heads.json`` and
``docs/heads-parts.json`` (the heads preset: cached image features, the paper's 60-epoch schedule, on the
default and on the part-sensitive set). Each is the ``ablation.json`` that ``tbps ablate`` writes.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from tbps_train.ablate import choose_variants  # noqa: E402
from tbps_train.plots import plot_token_specialisation  # noqa: E402

TABLE2 = ("baseline", "coarse", "coarse-fine-ranking", "full")
BASELINES = ("baseline", "baseline-sum", "baseline-sum-warmup")


def load(name: str) -> dict | None:
    path = DOCS / name
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def runs_by_row(document: dict) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for run in sorted(document["runs"], key=lambda r: r["seed"]):
        rows.setdefault(run["row"], []).append(run)
    return rows


def split_value(run: dict, split: str, *keys: str) -> float | None:
    value = run.get(split) or {}
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def values(runs: list[dict], split: str, *keys: str) -> list[float]:
    return [v for v in (split_value(r, split, *keys) for r in runs) if v is not None]


def reduction_table(document: dict) -> str:
    """Each Table 2 row under both reductions; the kept one (higher mean validation R@1) in bold."""
    rows, kept = runs_by_row(document), choose_variants(document["summary"])
    lines = ["| row | Eq. 9/12 | seeds | val R@1 | test R@1 | test mAP | kept |", "|---|---|---|---|---|---|---|"]
    for family in TABLE2:
        for slug in (family, f"{family}-sum-warmup") + (("baseline-sum",) if family == "baseline" else ()):
            runs = rows.get(slug)
            if not runs:
                continue
            chosen = kept.get(family) == slug
            reduction = {"": "mean", "-sum-warmup": "sum + 1 warm-up epoch", "-sum": "sum"}[
                slug.removeprefix(family)]
            mark = "**kept**" if chosen else ""
            lines.append(f"| {runs[0]['name'].split(',')[0]} | {reduction} | {','.join(str(r['seed']) for r in runs)} | "
                         f"{fmt(values(runs, 'val', 'r1'))} | {fmt(values(runs, 'test', 'r1'))} | "
                         f"{fmt(values(runs, 'test', 'map'))} | {mark} |")
    return "\n".join(lines)


def goal_lines(document: dict) -> str:
    """The goal's comparison: the kept full model against the best (kept) global-only model."""
    rows, kept = runs_by_row(document), choose_variants(document["summary"])
    full, baseline = rows.get(kept.get("full", "")), rows.get(kept.get("baseline", ""))
    if not full or not baseline:
        return "(not yet measured)"
    full_r1, base_r1 = values(full, "test", "r1"), values(baseline, "test", "r1")
    cos = values(full, "test", "token_cosine", "coarse_image_attention_centred")
    cos_note = ""
    if not cos:  # runs from before the diagnostic: the same row's other variant says how its tokens end
        other = next((slug for slug, runs in rows.items() if slug != kept["full"]
                      and runs[0]["row"] in ("full", "full-sum-warmup")
                      and values(runs, "test", "token_cosine", "coarse_image_attention_centred")), None)
        if other:
            cos = values(rows[other], "test", "token_cosine", "coarse_image_attention_centred")
            cos_note = f" (in `{other}`: the kept runs predate the diagnostic)"
    gap = statistics.fmean(full_r1) - statistics.fmean(base_r1)
    return (f"- Kept full model: `{kept['full']}`, test R@1 {fmt(full_r1)} ({len(full)} seed(s)).\n"
            f"- Best global-only model: `{kept['baseline']}`, test R@1 {fmt(base_r1)} ({len(baseline)} seed(s)).\n"
            f"- Full − global-only: **{gap:+.2f}** test R@1 (goal: ≥ +3).\n"
            f"- Coarse tokens' centred image-attention cosine in the kept full model: "
            f"{_cos(cos) + cos_note if cos else '– (not recorded by these runs)'} (goal: < 0.9).")


def diagnostics_table(document: dict, split: str = "test", twins: bool = False) -> str:
    """Per row: R@1 of each slot group, the tokens' similarity, and (parts set) R@1 on the twin split."""
    header = ["row", "Eq. 9/12", "seeds", f"{split} R@1", "global", "coarse", "fine",
              "coarse img-att cos (centred)", "text-token att cos (centred)", "token query cos",
              "collapsed at the end"]
    if twins:
        header[4:4] = ["twin R@1", "twin: global", "twin: coarse", "twin: fine"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for slug, runs in runs_by_row(document).items():
        cells = [runs[0]["name"], _reduction(runs[0]), ",".join(str(r["seed"]) for r in runs),
                 fmt(values(runs, split, "r1"))]
        if twins:
            cells += [fmt(values(runs, split, "subsets", "twins", "r1"))]
            cells += [fmt(values(runs, split, "subsets", "twins", "per_slot", g)) for g in ("global", "coarse", "fine")]
        cells += [fmt(values(runs, split, "per_slot", g)) for g in ("global", "coarse", "fine")]
        cells += [_cos(values(runs, split, "token_cosine", "coarse_image_attention_centred")),
                  _cos(values(runs, split, "token_cosine", "fine_text_attention_centred")),
                  _cos(values(runs, split, "token_query_cosine", "shared_queries"))]
        last = [r["history"][-1].get("collapsed", []) for r in runs if r.get("history")]
        cells.append(", ".join(sorted({s for c in last for s in c})) or ("none" if last else "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reduction(run: dict) -> str:
    loss = run.get("config", {}).get("loss", {})
    warm = loss.get("ranking_warmup_epochs", 0)
    return loss.get("ranking_reduction", "mean") + (f" + {warm} warm-up" if warm else "")


def _cos(vals: list[float]) -> str:
    return f"{statistics.fmean(vals):.3f}" if vals else "–"


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- gen:{re.escape(name)} -->\n)(.*?)(<!-- /gen -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/results.md has no <!-- gen:{name} --> section")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text)


def token_picture(documents: dict[str, dict], out: Path) -> None:
    """Token similarity against training steps for every heads run that recorded its history."""
    runs = {}
    for label, document in documents.items():
        for run in document["runs"]:
            history = run.get("history")
            if history:
                # Runs recorded before epochs counted their steps: the default set's 3,840 captions / 32.
                runs[f"{run['row']} s{run['seed']} ({label})"] = (history, history[0].get("steps", 120))
    if runs:
        plot_token_specialisation(runs, out, title="Decoder tokens, heads preset (frozen cached MobileNetV2, "
                                                   "lr 5e-4, 60 epochs), validation every 5 epochs")


def main() -> None:
    results = DOCS / "results.md"
    text = results.read_text()
    demo, heads, parts = load("ablation.json"), load("heads.json"), load("heads-parts.json")
    if demo:
        text = replace_section(text, "reduction", reduction_table(demo))
        text = replace_section(text, "goal", goal_lines(demo))
        text = replace_section(text, "demo-diagnostics", diagnostics_table(demo))
    if heads:
        text = replace_section(text, "heads", diagnostics_table(heads, "val"))
        token_picture({"default set": heads, **({"parts set": parts} if parts else {})}, DOCS / "tokens.png")
    if parts:
        text = replace_section(text, "parts", diagnostics_table(parts, "val", twins=True))
    results.write_text(text)


if __name__ == "__main__":
    main()
