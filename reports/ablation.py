"""The loss ablation as a `Table`: rows are discrepancies (MAE, MSE, KLD), columns datasets, best accuracy.

A suite is an ablation when it runs two or more DFAD variants that differ in `loss`
(benchmarks/ablation-loss.yaml: dfad_mae, dfad_mse, dfad_kld with `method: dfad`).
"""
from __future__ import annotations

from pathlib import Path

from harness.config import Suite, method_of

from .collect import LOSS_LABELS, aggregate, dataset_label, runs_frame, value_label
from .table import Table

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


def ablation_table(suites: list[Suite], runs_dir: str | Path, metric: str = "best") -> Table:
    losses = sorted({v for s in suites for v in loss_variants(s).values()},
                    key=lambda x: (LOSS_ORDER.index(x) if x in LOSS_ORDER else 99, x))
    columns = [dataset_label(s.dataset) for s in suites]
    cells = {}
    for s, col in zip(suites, columns):
        runs = runs_frame(runs_dir, s.name)
        by_loss = {v: m for m, v in loss_variants(s).items()}
        for loss in losses:
            m = by_loss.get(loss)
            cells[(loss, col)] = aggregate(runs[runs["method"] == m], metric) if m else aggregate(
                runs.iloc[0:0], metric)
    values = {col: value_label(s.dataset) for s, col in zip(suites, columns)}
    t = Table(losses, columns, cells, {x: "free" for x in losses}, flops=False,
              row_labels={x: LOSS_LABELS.get(x, x) for x in losses}, row_title="Loss", value_names=values,
              value_name="mIoU" if set(values.values()) == {"mIoU"} else "Acc.")
    ns = t.seed_counts() or [0]
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
    what = {"Acc.": "test accuracy", "mIoU": "mIoU"}
    measured = " / ".join(what[v] for v in dict.fromkeys(values.values())) or "test accuracy"
    t.caption = (f"DFAD with each discrepancy as the loss: {measured} ({metric} over evaluations), "
                 f"mean ± std over {n} seeds; bold: best loss per dataset.")
    return t
