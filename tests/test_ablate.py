"""The ablation's bookkeeping: each row family keeps the variant validation prefers."""

from tbps_train.ablate import ROWS, choose_variants, reduction_label, select_rows, summarize


def _run(row, seed, val, test):
    config = {"loss": {"ranking_reduction": "sum", "ranking_warmup_epochs": 1}} if "sum-warmup" in row else {}
    return {"row": row, "name": row, "table": "2", "seed": seed, "K": 9, "config": config,
            "val": {"r1": val, "r5": 0, "r10": 0, "map": 0, "minp": 0},
            "test": {"r1": test, "r5": 0, "r10": 0, "map": 0, "minp": 0}}


def test_each_family_keeps_the_variant_with_the_higher_mean_validation_r1():
    runs = [_run("full", 0, 50, 90), _run("full", 1, 52, 90),  # mean val 51, better test: not chosen
            _run("full-sum-warmup", 0, 60, 10), _run("full-sum-warmup", 1, 44, 10),  # mean val 52
            _run("baseline", 0, 45, 40), _run("baseline-sum", 0, 68, 58), _run("baseline-sum-warmup", 0, 66, 60)]
    summary = summarize(runs)
    assert choose_variants(summary) == {"full": "full-sum-warmup", "baseline": "baseline-sum"}
    by_row = {e["row"]: e for e in summary}
    assert by_row["full-sum-warmup"]["reduction"] == "sum + 1 warm-up epoch"
    assert by_row["full"]["reduction"] == "mean"


def test_every_variant_names_a_row_and_changes_only_the_loss_reduction():
    slugs = {row.slug: row for row in ROWS}
    for row in ROWS:
        if row.variant_of is None:
            continue
        base = slugs[row.variant_of]
        assert row.model == base.model and row.train == base.train, row.slug
        assert {k: v for k, v in row.loss.items() if not k.startswith("ranking_")} == \
               {k: v for k, v in base.loss.items() if not k.startswith("ranking_")}, row.slug


def test_row_sets_include_the_summed_table():
    assert [r.slug for r in select_rows("table2-sum-warmup")] == [
        "baseline-sum-warmup", "coarse-sum-warmup", "coarse-fine-ranking-sum-warmup", "full-sum-warmup"]
    assert reduction_label({}) == "mean"
    assert reduction_label({"loss": {"ranking_reduction": "sum", "ranking_warmup_epochs": 2}}) == \
        "sum + 2 warm-up epochs"
