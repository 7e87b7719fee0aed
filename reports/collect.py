"""Reading the run store: one record per run, the teacher's summary, metric curves, aggregated cells.

Everything the renderers show comes from here, so the tables, plots and CSV agree on one reading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config import Suite, method_of
from harness.store import RunDir, Store, read_json

# The paper's row order; a rule separates data-driven rows from data-free rows, another the later methods.
PAPER_ORDER = ["teacher", "kd_ori", "kd_rel", "kd_unr", "random", "dafl", "dfad", "zskt", "dfq"]
DATA_DRIVEN = {"teacher", "kd_ori", "kd_rel", "kd_unr"}
PAPER_FREE = {"random", "dafl", "dfad"}
LABELS = {"teacher": "Teacher", "kd_ori": "KD-ORI", "kd_rel": "KD-REL", "kd_unr": "KD-UNR", "random": "RANDOM",
          "dafl": "DAFL", "dfad": "DFAD", "zskt": "ZSKT", "dfq": "DFQ-style"}
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "caltech101": "Caltech101",
                  "camvid": "CamVid", "nyuv2": "NYUv2", "usps": "USPS"}
SEG_DATASETS = {"camvid", "nyuv2", "cityscapes", "voc2012"}


def label(method: str) -> str:
    return LABELS.get(method, method)


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def group(method: str, suite: Suite | None = None, data_free: bool | None = None) -> str:
    """'driven', 'free' (the paper's data-free rows and variants of them) or 'later'."""
    cls = method_of(method, suite.methods.get(method)) if suite is not None else method
    if cls in DATA_DRIVEN or data_free is False:
        return "driven"
    return "free" if cls in PAPER_FREE else "later"


def runs_frame(runs_dir: str | Path, suite_name: str) -> pd.DataFrame:
    """One row per stored run that has a summary."""
    rows = []
    for rd in Store(runs_dir, suite_name).runs():
        s = rd.summary()
        if s:
            rows.append({"method": rd.method, "seed": rd.seed, "path": str(rd.path),
                         **{k: s.get(k) for k in ("status", "best_acc", "final_acc", "student_macs", "reason",
                                                  "unavailable", "data_free", "profile", "wall_time_s")}})
    cols = ["method", "seed", "path", "status", "best_acc", "final_acc", "student_macs", "reason", "unavailable",
            "data_free", "profile", "wall_time_s"]
    return pd.DataFrame(rows, columns=cols)


def teacher_summary(runs_dir: str | Path, suite_name: str) -> dict:
    return read_json(Store(runs_dir, suite_name).teacher_summary_path) or {}


def curves(runs_dir: str | Path, suite_name: str, method: str) -> pd.DataFrame:
    """metrics.csv of every finished run of a method, stacked with a seed column."""
    frames = []
    for rd in Store(runs_dir, suite_name).runs():
        if rd.method == method and rd.is_done() and rd.metrics.is_file():
            frames.append(pd.read_csv(rd.metrics).assign(seed=rd.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    paper: float | None = None


def aggregate(runs: pd.DataFrame, metric: str) -> Cell:
    """Seeds of one method -> a cell. Sample std (ddof=1), 0 for one seed."""
    col = f"{metric}_acc"
    done = runs[runs["status"] == "done"]
    failed = runs[runs["status"] == "failed"]
    missing = failed[failed["unavailable"].fillna(False).astype(bool)]
    broken = failed[~failed.index.isin(missing.index)]
    if len(done):
        vals = done[col].astype(float)
        std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        note = (f"{len(failed)} of {len(runs)} seeds did not finish: {_reason(failed)}" if len(failed) else None)
        return Cell(float(vals.mean()), 0.0 if math.isnan(std) else std, len(done), "ok", note)
    if len(broken):
        return Cell(status="failed", note=f"run failed: {_reason(broken)}")
    if len(missing):
        return Cell(status="na", note=f"could not run: {_reason(missing)}")
    return Cell(status="na", note="not run")


def _reason(runs: pd.DataFrame) -> str:
    r = runs.sort_values("seed").iloc[0]
    return str(r["reason"] or "no reason recorded").rstrip(".")
