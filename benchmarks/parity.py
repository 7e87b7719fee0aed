"""Accuracy parity of two run stores of one suite and method: the default (fast) path against the plain eager
fp32 loop (#8: mean best accuracy within 1 point). Numbers come from the stores only.

usage: python benchmarks/parity.py mnist --default runs --plain runs-plain [--method dfad] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from harness.store import Store

SWITCHES = ("precision", "channels_last", "frozen_teacher", "fused_upsample", "teacher_bn_folded")


def seeds(runs_dir: str, suite: str, method: str) -> dict[int, dict]:
    """seed -> summary of every run of `method` in the store, with the last evaluated iteration of unfinished ones."""
    out = {}
    for rd in Store(runs_dir, suite).runs():
        if rd.method != method:
            continue
        s = dict(rd.summary() or {"status": "not started"})
        if s.get("status") != "done" and rd.metrics.is_file():
            rows = list(csv.DictReader(rd.metrics.open()))
            s["reached"] = int(float(rows[-1]["iteration"])) if rows else 0
        out[rd.seed] = s
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def parity(suite: str, default: str, plain: str, method: str = "dfad", tolerance: float = 0.01) -> str:
    paths = {"default": seeds(default, suite, method), "plain": seeds(plain, suite, method)}
    lines = [f"| path | seed | status | best acc | final acc | {' | '.join(SWITCHES)} | s/iteration | commit |",
             "|---|---|---|---|---|" + "---|" * len(SWITCHES) + "---|---|"]
    best: dict[str, list[float]] = {}
    for name, runs in paths.items():
        for seed, s in sorted(runs.items()):
            done = s.get("status") == "done"
            status = "done" if done else f"{s.get('status')}" + (f" (iteration {s['reached']})" if "reached" in s else "")
            sw = " | ".join(str(s.get(k, "-")) for k in SWITCHES)
            acc = (lambda k: f"{s[k]:.4f}" if done and s.get(k) is not None else "-")
            lines.append(f"| {name} | {seed} | {status} | {acc('best_acc')} | {acc('final_acc')} | {sw} | "
                         f"{s.get('s_per_iter') or '-'} | `{str(s.get('git_commit', '-'))[:7]}` |")
            if done:
                best.setdefault(name, []).append(s["best_acc"])
    lines.append("")
    for name in paths:
        xs = best.get(name, [])
        if xs:
            m, sd = mean_std(xs)
            spread = f" ± {sd:.4f}** (n = {len(xs)}, sample std)" if len(xs) > 1 else "** (n = 1)"
            lines.append(f"- {name}: mean best accuracy **{m:.4f}{spread}")
        else:
            lines.append(f"- {name}: no finished run")
    if best.get("default") and best.get("plain"):
        diff = statistics.fmean(best["default"]) - statistics.fmean(best["plain"])
        n = min(len(best["default"]), len(best["plain"]))
        verdict = "within" if abs(diff) <= tolerance else "NOT within"
        lines.append(f"- default - plain: **{diff * 100:+.2f} points**, {verdict} {tolerance * 100:g} point"
                     + ("" if n >= 3 else f" (n = {n} only: the issue asks for n = 3)"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("--default", required=True, help="runs dir of the default path")
    ap.add_argument("--plain", required=True, help="runs dir of the plain path")
    ap.add_argument("--method", default="dfad")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    text = parity(a.suite, a.default, a.plain, a.method)
    if a.out:
        a.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
