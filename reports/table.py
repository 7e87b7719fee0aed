"""Suite results table: seeds aggregated to mean ± std (n), the paper's value beside ours.

Reads only the run store (and the suite file for order and paper values); never trains.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.config import Suite
from harness.models import human_macs
from harness.store import Store, atomic_write, read_json

LABELS = {"teacher": "Teacher", "kd_ori": "KD-ORI", "kd_rel": "KD-REL", "kd_unr": "KD-UNR", "random": "RANDOM",
          "dafl": "DAFL", "dfad": "DFAD", "zskt": "ZSKT", "dfq": "DFQ-style"}


def label(method: str) -> str:
    return LABELS.get(method, method)


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def collect(suite: Suite, runs_dir: str | Path) -> pd.DataFrame:
    """One row per stored run of the suite."""
    store = Store(runs_dir, suite.name)
    rows = []
    for rd in store.runs():
        s = rd.summary()
        if s:
            rows.append({"method": rd.method, "seed": rd.seed, **{k: s.get(k) for k in (
                "status", "best_acc", "final_acc", "iterations", "wall_time_s", "student_macs", "profile",
                "reason", "device")}})
    return pd.DataFrame(rows)


def results_table(suite: Suite, runs_dir: str | Path, metric: str = "best") -> pd.DataFrame:
    runs = collect(suite, runs_dir)
    teacher = read_json(Store(runs_dir, suite.name).teacher_summary_path) or {}
    order = list(suite.method_names())
    if not runs.empty:
        order += [m for m in runs["method"].unique() if m not in order]
    out = [{"Method": "Teacher", "FLOPs": "", f"Accuracy ({metric})": f"{teacher['test_acc']:.3f}"
            if "test_acc" in teacher else "n/a", "n": 1 if teacher else 0, "Final": "",
            "Paper": _paper(suite, "teacher"), "Time/run (s)": f"{teacher.get('wall_time_s', float('nan')):.0f}"
            if teacher.get("wall_time_s") else ""}]
    for m in order:
        sub = runs[runs["method"] == m] if not runs.empty else runs
        done = sub[sub["status"] == "done"] if not sub.empty else sub
        failed = sub[sub["status"] == "failed"] if not sub.empty else sub
        col = f"{metric}_acc"
        if len(done):
            acc = fmt(done[col].mean(), done[col].std(ddof=1) if len(done) > 1 else 0.0, len(done))
            final = fmt(done["final_acc"].mean(), done["final_acc"].std(ddof=1) if len(done) > 1 else 0.0, len(done))
        elif len(failed):
            acc = final = "FAILED"
        else:
            acc = final = "n/a"
        macs = sub["student_macs"].dropna() if not sub.empty else []
        out.append({"Method": label(m), "FLOPs": human_macs(float(macs.iloc[0])) if len(macs) else "",
                    f"Accuracy ({metric})": acc, "n": len(done), "Final": final, "Paper": _paper(suite, m),
                    "Time/run (s)": f"{done['wall_time_s'].mean():.0f}" if len(done) else ""})
    return pd.DataFrame(out)


def _paper(suite: Suite, key: str) -> str:
    v = suite.paper.get(key)
    return f"{v:.3f}" if v is not None else ""


def failures(suite: Suite, runs_dir) -> list[str]:
    runs = collect(suite, runs_dir)
    if runs.empty:
        return []
    bad = runs[runs["status"] == "failed"]
    return [f"{label(r.method)} seed {r.seed}: {r.reason}" for r in bad.itertuples()]


def to_latex(df: pd.DataFrame, caption: str) -> str:
    body = df.style.hide(axis="index").to_latex(hrules=True, caption=caption, position="t", column_format="l" + "r" * (len(df.columns) - 1))
    return body.replace("±", r"$\pm$")


def write_report(suite: Suite, runs_dir: str | Path, metric: str = "best") -> tuple[Path, pd.DataFrame]:
    df = results_table(suite, runs_dir, metric)
    out = Store(runs_dir, suite.name).report_dir
    n = sorted({int(x) for x in df["n"][1:] if x}) or [0]
    caption = (f"{suite.name} ({suite.profile} profile): test accuracy, {metric} over evaluations, "
               f"mean ± std over n={'/'.join(map(str, n))} seeds; Paper: Fang et al. 2019, Table 2")
    notes = failures(suite, runs_dir)
    md = f"**{caption}**\n\n" + df.to_markdown(index=False, disable_numparse=True) + "\n"
    if notes:
        md += "\n" + "\n".join(f"- FAILED {x}" for x in notes) + "\n"
    atomic_write(out / "table.md", md)
    atomic_write(out / "table.tex", to_latex(df, caption.replace("±", r"$\pm$")))
    atomic_write(out / "table.csv", df.to_csv(index=False))
    return out, df
