"""Whole reports: a suite's report dir (tables, figures, report.md), and tables across several suites."""
from __future__ import annotations

from pathlib import Path

from harness.config import Suite
from harness.store import atomic_write

from . import plots
from .ablation import ablation_table, is_ablation
from .collect import metric_name
from .markdown import report_md
from .table import Table, build_table, write_report, write_tables


def suite_report(suite: Suite, runs_dir, metric: str = "best", with_paper: str | None = None,
                 figures_too: bool = True) -> Path:
    """Everything for one suite under <runs-dir>/<suite>/report/; returns report.md's path. figures_too=False:
    tables and a report.md without figures (those already there are left as they are, and not linked)."""
    out, _ = write_report(suite, runs_dir, metric, with_paper)
    figures = []
    what = metric_name(suite.dataset).replace("test", "Test")
    for cap, fn in ((f"{what} during training", plots.accuracy),
                    (f"{what} against wall time", plots.accuracy_time), ("DFAD losses", plots.losses),
                    ("Generated samples (final generators)", plots.samples)) if figures_too else ():
        png = fn(suite, runs_dir, out)
        if png:
            figures.append((cap, png.name))
    extra = []
    if is_ablation(suite):
        t = ablation_table([suite], runs_dir, metric)
        write_tables(t, out, "ablation")
        extra = ["## Loss ablation", "", (out / "ablation.md").read_text()]
        png = plots.ablation([suite], runs_dir, out) if figures_too else None
        if png:
            figures.append((f"Loss ablation: {metric_name(suite.dataset)} per discrepancy", png.name))
    md = report_md(f"{suite.name} ({suite.profile} profile)", (out / "table.md").read_text(), figures, extra)
    atomic_write(out / "report.md", md)
    return out / "report.md"


def multi_table(suites: list[Suite | None], names: list[str], runs_dir, metric: str = "best",
                paper_rows: bool = False, ablation: bool = False) -> Table:
    if ablation:
        return ablation_table([s for s in suites if s is not None], runs_dir, metric)
    return build_table(suites, names, runs_dir, metric, paper_rows)


def write_multi(t: Table, runs_dir, stem: str, with_paper: str | None = None,
                suites: list[Suite] = (), ablation: bool = False) -> Path:
    """Tables across suites go to <runs-dir>/report/<stem>.*; an ablation also gets its curves."""
    out = Path(runs_dir) / "report"
    write_tables(t, out, stem, with_paper)
    if ablation and suites:
        plots.ablation(list(suites), runs_dir, out, name=f"{stem}-curves")
    return out

