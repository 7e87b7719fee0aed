"""Reading the run store: one record per run, the teacher's summary, metric curves, aggregated cells.

Everything the renderers show comes from here, so the tables, plots and CSV agree on one reading.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import Suite, method_of
from harness.errors import first_line
from harness.runner import read_yaml_or_none, run_difference
from harness.store import METRIC_FIELDS, RunDir, Store, read_json

# The paper's row order; a rule separates data-driven rows from data-free rows, another the later methods.
PAPER_ORDER = ["teacher", "kd_ori", "kd_rel", "kd_unr", "random", "dafl", "dfad", "zskt", "dfq"]
DATA_DRIVEN = {"teacher", "kd_ori", "kd_rel", "kd_unr"}
PAPER_FREE = {"random", "dafl", "dfad"}
LABELS = {"teacher": "Teacher", "kd_ori": "KD-ORI", "kd_rel": "KD-REL", "kd_unr": "KD-UNR", "random": "RANDOM",
          "dafl": "DAFL", "dfad": "DFAD", "zskt": "ZSKT", "dfq": "DFQ-style"}
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "caltech101": "Caltech101",
                  "camvid": "CamVid", "nyuv2": "NYUv2", "usps": "USPS"}
SEG_DATASETS = {"camvid", "nyuv2", "cityscapes", "voc2012"}
LOSS_LABELS = {"mae": "MAE", "mse": "MSE", "kld": "KLD"}  # DFAD's discrepancies (the loss ablation)


def metric_name(dataset: str) -> str:
    """What a suite's curves measure: mIoU for dense tasks, accuracy otherwise."""
    from harness.data import DATASETS

    dense = DATASETS.get(dataset).metric == "miou" if dataset in DATASETS else dataset in SEG_DATASETS
    return "test mIoU" if dense else "test accuracy"


def label(method: str, suite: Suite | None = None) -> str:
    """The paper's name of a method; a suite's variant of one reads "DFAD (wide)" for `dfad_wide: {method: dfad}`,
    and "DFAD (MSE)" for `dfad_mse` when its loss is MSE (the loss ablation's variants)."""
    if method in LABELS or suite is None or method not in suite.methods:
        return LABELS.get(method, method)
    cls = method_of(method, suite.methods.get(method))
    if cls == method or cls not in LABELS:
        return method
    rest = method[len(cls) + 1:] if method.startswith(cls + "_") and len(method) > len(cls) + 1 else method
    if rest in LOSS_LABELS and getattr(suite.method_params(method), "loss", None) == rest:
        rest = LOSS_LABELS[rest]
    return f"{LABELS[cls]} ({rest})"


def value_label(dataset: str) -> str:
    """A table column's measure: mIoU for dense tasks, accuracy otherwise."""
    return "mIoU" if metric_name(dataset) == "test mIoU" else "Acc."


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def group(method: str, suite: Suite | None = None, data_free: bool | None = None) -> str:
    """'driven', 'free' (the paper's data-free rows and variants of them) or 'later'."""
    cls = method_of(method, suite.methods.get(method)) if suite is not None else method
    if cls in DATA_DRIVEN or data_free is False:
        return "driven"
    return "free" if cls in PAPER_FREE else "later"


def runs_frame(runs_dir: str | Path, suite_name: str) -> pd.DataFrame:
    """One row per stored run that has a summary (an unreadable one is a failed row that says so), with the
    config (`config`, from its config.yaml; None without one)."""
    rows = []
    for rd in Store(runs_dir, suite_name).runs():
        s = rd.summary()
        if s is None and rd.summary_path.exists():
            s = {"status": "failed", "reason": "summary.json unreadable (run the suite again to rebuild it)"}
        if s:
            if s.get("status") == "done" and (why := _disagrees_with_metrics(rd, s)):
                warn_once(f"warning: {rd.path}: {why}; the table shows summary.json's")
            rows.append({"method": rd.method, "seed": rd.seed, "path": str(rd.path),
                         **{k: s.get(k) for k in ("status", "best_acc", "final_acc", "student_macs", "reason",
                                                  "unavailable", "data_free", "profile", "wall_time_s", "teacher_acc",
                                                  "iterations")},
                         "config": read_yaml_or_none(rd.config)})
    cols = ["method", "seed", "path", "status", "best_acc", "final_acc", "student_macs", "reason", "unavailable",
            "data_free", "profile", "wall_time_s", "teacher_acc", "iterations", "config"]
    return pd.DataFrame(rows, columns=cols)


def _disagrees_with_metrics(rd: RunDir, s: dict) -> str | None:
    """Whether summary.json's best/final accuracy differs from the evaluations in metrics.csv (a hand edit, or a
    file copied from another run): the table would print a number no evaluation measured."""
    import csv

    try:
        with open(rd.metrics, newline="") as f:
            accs = [float(r["test_acc"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, TypeError, ValueError, csv.Error):
        return None  # a missing or damaged metrics.csv is said elsewhere (repair, curves)
    if not accs:
        return None
    for key, measured in (("best_acc", max(accs)), ("final_acc", accs[-1])):
        v = s.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isclose(v, measured, rel_tol=1e-6,
                                                                                          abs_tol=1e-9):
            return f"summary.json's {key} {v:.4f} is not what metrics.csv's evaluations give ({measured:.4f})"
    return None


def teacher_summary(runs_dir: str | Path, suite_name: str) -> dict:
    return read_json(Store(runs_dir, suite_name).teacher_summary_path) or {}


def curves(runs_dir: str | Path, suite_name: str, method: str) -> pd.DataFrame:
    """metrics.csv of every finished run of a method, stacked with a seed column (an unreadable file is skipped
    with a warning: a plot is not worth failing a report over). Seeds made with different configs are not
    averaged here either: none of them is drawn, with a warning (the table's cell says which key differs)."""
    done = done_runs(runs_dir, suite_name, method)
    mixed = mixed_configs(pd.DataFrame([{"seed": rd.seed, "config": read_yaml_or_none(rd.config)} for rd in done]))\
        if len(done) > 1 else None
    if mixed:
        warn_once(f"warning: {suite_name}/{method} not plotted: {mixed}")
        return pd.DataFrame()
    frames = []
    for rd in done:
        if rd.metrics.is_file():
            try:
                df = pd.read_csv(rd.metrics)
                for col in df.columns:  # the numbers the plots read; text columns (`metric`: miou) stay as they are
                    if col in METRIC_FIELDS or col.startswith(("loss", "lr")):
                        df[col] = pd.to_numeric(df[col], errors="raise")
            except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
                warn_once(f"warning: {rd.metrics} unreadable, left out of the curves ({first_line(e)[:120]})")
                continue
            frames.append(df.assign(seed=rd.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


_warned: set[str] = set()


def warn_once(msg: str) -> None:
    """A warning about the store, once per process (the figures read the same runs several times)."""
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr)


def done_runs(runs_dir: str | Path, suite_name: str, method: str) -> list[RunDir]:
    return [rd for rd in Store(runs_dir, suite_name).runs() if rd.method == method and rd.is_done()]


@dataclass
class Cell:
    """One method on one dataset: mean ± std over the finished seeds, or why there is no number."""

    mean: float | None = None
    std: float = 0.0
    n: int = 0
    status: str = "na"  # ok | failed | na
    note: str | None = None  # the footnote's text: why FAILED / n/a, or that some seeds failed
    flops: str = ""
    paper: float | str | None = None  # the paper's value, or its "FAILED"
    paper_std: float | None = None  # the paper's ± where it gives one
    paper_flops: str = ""  # the paper's MACs for the model this row's number comes from (its teacher or student)


def aggregate(runs: pd.DataFrame, metric: str) -> Cell:
    """Seeds of one method -> a cell. Sample std (ddof=1), 0 for one seed. Seeds made with different configs
    (a new seed run with other overrides or another profile into the same runs dir) are never averaged."""
    col = f"{metric}_acc"
    done = runs[runs["status"] == "done"]
    vals = pd.to_numeric(done[col], errors="coerce")
    unusable = done[vals.isna()]  # finished, but its summary has no number
    done, vals = done[vals.notna()], vals[vals.notna()]
    failed = pd.concat([runs[runs["status"] == "failed"],
                        unusable.assign(reason=f"summary.json has no {col}", unavailable=False)])
    unfinished = runs[~runs["status"].isin(["done", "failed"])]  # interrupted, or running now
    missing = failed[failed["unavailable"].fillna(False).astype(bool)]
    broken = failed[~failed.index.isin(missing.index)]
    if len(done) and (mixed := mixed_configs(done)):
        return Cell(status="na", note=mixed)
    if len(done):
        std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        short = pd.concat([failed, unfinished])
        notes = [f"{len(short)} of {len(runs)} seeds did not finish: {_reason(short)}" if len(short) else None,
                 uneven_iterations(done)]
        note = "; ".join(n for n in notes if n) or None
        return Cell(float(vals.mean()), 0.0 if math.isnan(std) else std, len(done), "ok", note)
    if len(broken):
        return Cell(status="failed", note=f"run failed: {_reason(broken)}")
    if len(missing):
        return Cell(status="na", note=f"could not run: {_reason(missing)}")
    if len(unfinished):
        return Cell(status="na", note=f"not finished: {_reason(unfinished)}")
    return Cell(status="na", note="not run")


def mixed_configs(done: pd.DataFrame) -> str | None:
    """Why the finished seeds of one method cannot share a cell, or None: the first key their configs differ in."""
    rows = done.sort_values("seed")
    first = rows.iloc[0]
    for _, r in rows.iloc[1:].iterrows():
        a, b = first["config"], r["config"]
        if a is None or b is None:  # no config.yaml to compare (written by hand, or lost): taken as it is
            continue
        # as runs: seed apart, and runtime switches apart from precision; keys only one records are not compared
        if key := run_difference(a, b, ("seed", "runtime"), missing_differs=False):
            return (f"not averaged: seed {first['seed']} and seed {r['seed']} were run with different configs "
                    f"({key} differs); give each config its own --runs-dir, or redo a seed with --seeds N --force")
    return None


def uneven_iterations(done: pd.DataFrame) -> str | None:
    """Seeds of one config that ran different numbers of iterations (budget.time_budget_s sizes each run to its
    machine and moment): averaged, since the config is one, with the range said."""
    if "iterations" not in done:  # a frame made elsewhere (not runs_frame)
        return None
    its = pd.to_numeric(done["iterations"], errors="coerce").dropna().astype(int)
    if its.nunique() < 2:
        return None
    return f"seeds ran {its.min():,}-{its.max():,} iterations (sized by budget.time_budget_s)"


def _reason(runs: pd.DataFrame) -> str:
    r = runs.sort_values("seed").iloc[0]
    if r["status"] not in ("done", "failed"):
        return f"seed {r['seed']} {r['status']} (run the suite again to resume it)"
    return str(r["reason"] or "no reason recorded").rstrip(".")
