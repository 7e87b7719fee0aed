"""The loss ablation as a `Table`: rows are discrepancies (MAE, MSE, KLD), columns datasets, best accuracy.

A suite is an ablation when it runs two or more DFAD variants that differ in `loss`
(benchmarks/ablation-loss.yaml: dfad_mae, dfad_mse, dfad_kld with `method: dfad`).
"""
from __future__ import annotations

from pathlib import Path

from harness.config import Suite, method_of

from .collect import LOSS_LABELS, aggregate, runs_frame, value_label
from .table import EVAL_WORD, Table, column_names, spread_text, with_paper

LOSS_ORDER = ["mae", "mse", "kld"]


def loss_variants(suite: Suite) -> dict[str, str]:
    """DFAD-class method -> its loss, for the suite's methods."""
    out = {}
    for m in suite.method_names():
        if method_of(m, suite.methods.get(m)) == "dfad":
            out[m] = suite.method_params(m).loss
    return out


def is_ablation(suite: Suite) -> bool:
    return len(set(loss_variants(suite).values())) >= 2


def ablation_rows(suites: list[Suite]) -> dict[str, tuple[str, dict[str, str]]]:
    """Row key -> (label, suite name -> method). One row per loss; where a suite runs two variants with the
    same loss (e.g. `dfad` and `dfad_wide`, both MAE), one row per variant, labelled "MAE (dfad_wide)"."""
    variants = {s.name: loss_variants(s) for s in suites}
    losses = sorted({v for vs in variants.values() for v in vs.values()},
                    key=lambda x: (LOSS_ORDER.index(x) if x in LOSS_ORDER else 99, x))
    rows: dict[str, tuple[str, dict[str, str]]] = {}
    for loss in losses:
        shown = LOSS_LABELS.get(loss, loss)
        if all(list(vs.values()).count(loss) <= 1 for vs in variants.values()):
            rows[loss] = (shown, {name: m for name, vs in variants.items() for m, v in vs.items() if v == loss})
        else:
            for m in dict.fromkeys(m for vs in variants.values() for m, v in vs.items() if v == loss):
                rows[f"{loss}/{m}"] = (f"{shown} ({m})", {name: m for name, vs in variants.items() if vs.get(m) == loss})
    return rows


def ablation_table(suites: list[Suite], runs_dir: str | Path, metric: str = "best") -> Table:
    rows = ablation_rows(suites)
    columns = column_names(suites, [s.dataset for s in suites])
    cells = {}
    for s, col in zip(suites, columns):
        runs = runs_frame(runs_dir, s.name)
        for key, (_, by_suite) in rows.items():
            m = by_suite.get(s.name)
            cell = aggregate(runs[runs["method"] == m] if m else runs.iloc[0:0], metric)
            cells[(key, col)] = with_paper(cell, s, m) if m else cell  # the suite's paper value for that variant
    values = {col: value_label(s.dataset) for s, col in zip(suites, columns)}
    t = Table(list(rows), columns, cells, {x: "free" for x in rows}, flops=False,
              row_labels={k: lab for k, (lab, _) in rows.items()}, row_title="Loss", value_names=values)
    what = {"Acc.": "test accuracy", "mIoU": "mIoU"}
    measured = " / ".join(what[v] for v in dict.fromkeys(values.values())) or "test accuracy"
    t.caption = (f"DFAD with each discrepancy as the loss: {measured}, the {EVAL_WORD[metric]} of each run's "
                 f"evaluations; {spread_text(t.seed_counts())}; bold: best loss per dataset.")
    return t
