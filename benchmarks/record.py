"""Write a measured-results file for benchmarks/results/ from a run store: the exact command, commit,
machine, per-run numbers and times, n and spread. Numbers come from the store only, never by hand.

usage: python benchmarks/record.py SUITE --runs-dir runs --out benchmarks/results/NAME.md \
           --command "make benchmark-mnist SEEDS=0,1,2" [--time-log LOG] [--note TEXT] [--figures]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import statistics
from datetime import datetime, timezone
from pathlib import Path

from harness.config import load_suite, suite_path
from harness.store import Store, read_json


def wall_clock(log: Path) -> str | None:
    text = log.read_text(errors="replace")
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)  # /usr/bin/time -v
    if m:
        return m.group(1)
    m = re.search(r"^WALL ([0-9.]+) s$", text, re.M)  # /usr/bin/time -f "WALL %e s"
    if not m:
        return None
    s = round(float(m.group(1)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    cores = os.cpu_count()  # not nproc: it honours OMP_NUM_THREADS
    return f"{model}, {cores} cores ({', '.join(extras) or 'no AVX-512'}), {platform.system()} {platform.machine()}"


def fmt(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f} (n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--time-log")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--figures", action="store_true", help="copy the report's PNGs beside the results file")
    ap.add_argument("--curves", action="store_true",
                    help="accuracy at every evaluation, per run: iteration, wall time, test accuracy")
    ap.add_argument("--equal-time", metavar="M1,M2,...",
                    help="these methods' best accuracy within the shortest of their finished runs' wall time")
    a = ap.parse_args()

    name = suite_path(a.suite).stem
    store = Store(a.runs_dir, name)
    runs = [(rd, rd.summary()) for rd in store.runs()]
    runs = [(rd, s) for rd, s in runs if s]
    profile = next((s.get("profile") for _, s in runs if s.get("profile")), None)
    suite = load_suite(a.suite, profile)
    teacher = read_json(store.teacher_summary_path) or {}
    commits = sorted({s.get("git_commit", "?") for _, s in runs})
    devices = sorted({s.get("device", "?") for _, s in runs})
    out = Path(a.out)
    lines = [f"# {name}: {profile} profile", "",
             f"- Recorded: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- Command: `{a.command}`",
             f"- Commit(s) that ran: {', '.join(f'`{c}`' for c in commits)}",
             f"- Machine: {machine()}; runs report device: {'; '.join(devices)}",
             f"- Versions: {runs[0][1].get('versions') if runs else '?'}"]
    if a.time_log and Path(a.time_log).exists():
        lines.append(f"- Whole command, wall clock (`/usr/bin/time`): {wall_clock(Path(a.time_log))}")
    for n in a.note:
        lines.append(f"- Note: {n}")
    if suite.notes.get(profile or ""):
        lines.append(f"- What the profile scales: {suite.notes[profile]}")
    lines += ["", "## Table", ""]
    table = store.report_dir / "table.md"
    lines += [table.read_text().strip() if table.exists() else "(no report: run `dfad-bench report`)", ""]

    lines += ["## Per method (best = best test accuracy over evaluations; final = last evaluation)", "",
              "| method | best | final | wall time per run (s) | s/iteration |", "|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for rd, s in runs:
        by.setdefault(rd.method, []).append(s)
    for m in suite.method_names() + [m for m in by if m not in suite.methods]:
        ss = [s for s in by.get(m, []) if s.get("status") == "done"]
        failed = [s for s in by.get(m, []) if s.get("status") == "failed"]
        if not ss:
            why = ((("n/a: " if failed[0].get("unavailable") else "FAILED: ") + failed[0].get("reason", "")) if failed
                   else "not run")  # n/a: the method does not apply, or its data is not on this machine
            lines.append(f"| {m} | {why} | | | |")
            continue
        lines.append(f"| {m} | {fmt([s['best_acc'] for s in ss])} | {fmt([s['final_acc'] for s in ss])} | "
                     f"{fmt([s['wall_time_s'] for s in ss])} | "
                     f"{fmt([s['s_per_iter'] for s in ss if s.get('s_per_iter')])} |")
    lines += ["", f"Teacher: {teacher.get('model', {}).get('name', '?') if isinstance(teacher.get('model'), dict) else teacher.get('model', '?')}, "
              f"test acc {teacher.get('test_acc', float('nan')):.4f}, trained in {teacher.get('wall_time_s', '?')} s "
              f"({teacher.get('source', '?')}; recipe {teacher.get('recipe', '?')}"
              + (f"; {teacher['epochs_run']} epochs run" if teacher.get("epochs_run") else "") + ")", ""]
    sized = [(rd, s) for rd, s in runs if s.get("time_budget")]
    if sized:  # budget.time_budget_s: what each run's iteration count was chosen from
        lines += ["## Iterations chosen by the time budget", "", "| method | seed | budget s | probe s/iter | "
                  "probe evaluation s | probe wall s | iterations (at most) | stopped at |", "|" + "---|" * 8]
        for rd, s in sized:
            tb = s["time_budget"]
            stopped = f"{tb['stopped_at']}: {tb.get('stopped_because')}" if "stopped_at" in tb else "-"
            lines.append(f"| {rd.method} | {rd.seed} | {tb.get('budget_s')} | {tb.get('probe_s_per_iter')} | "
                         f"{tb.get('probe_eval_s')} | {tb.get('probe_wall_s')} | {tb.get('iterations')} "
                         f"({tb.get('max_iterations')}) | {stopped} |")
        lines.append("")

    lines += ["## Every run", "", "| method | seed | status | best | at iteration | final | iterations | wall s | "
              "s/iter | teacher images | precision | reason |", "|" + "---|" * 12]
    for rd, s in runs:
        lines.append(f"| {rd.method} | {rd.seed} | {s.get('status')} | {s.get('best_acc', '')} | "
                     f"{s.get('best_iteration', '')} | {s.get('final_acc', '')} | {s.get('iterations', '')} | "
                     f"{s.get('wall_time_s', '')} | {s.get('s_per_iter', '')} | {s.get('teacher_forward_images', '')} | "
                     f"{s.get('precision', '')} | {s.get('reason', '')} |")
    done = sorted(((rd, s) for rd, s in runs if s.get("status") == "done" and rd.metrics.is_file()),
                  key=lambda x: (x[0].method, x[0].seed))
    metrics = {(rd.method, rd.seed): list(csv.DictReader(rd.metrics.open())) for rd, _ in done} \
        if a.equal_time or a.curves else {}
    chosen = [(rd, s) for rd, s in done if a.equal_time and rd.method in a.equal_time.split(",")]
    if chosen:
        curves = {(rd.method, rd.seed): metrics[rd.method, rd.seed] for rd, _ in chosen}
        summaries = {(rd.method, rd.seed): s for rd, s in chosen}
        t = min(float(rows[-1]["elapsed_s"]) for rows in curves.values())
        lines += ["", f"## At equal wall time: best test accuracy within {t / 60:.1f} min (the shortest finished run)",
                  "", "| method | seed | best within the time | at iteration | its own budget: best | wall s |",
                  "|---|---|---|---|---|---|"]
        for (m, seed), rows in sorted(curves.items()):
            within = [r for r in rows if float(r["elapsed_s"]) <= t + 1e-6]
            b = max(within, key=lambda r: float(r["test_acc"])) if within else None
            s = summaries[(m, seed)]
            lines.append(f"| {m} | {seed} | {float(b['test_acc']):.4f} | {b['iteration']} | {s['best_acc']:.4f} | "
                         f"{s['wall_time_s']} |" if b else f"| {m} | {seed} | (no evaluation yet) | | | |")
    if a.curves and done:
        lines += ["", "## Accuracy against iterations and wall time (every evaluation)", ""]
        for (m, seed), rows in metrics.items():
            lines.append(f"- {m} seed {seed}: " + ", ".join(
                f"{r['iteration']} ({float(r['elapsed_s']) / 60:.1f} min) {float(r['test_acc']):.3f}" for r in rows))
    total = sum(s.get("wall_time_s") or 0 for _, s in runs) + (teacher.get("wall_time_s") or 0)
    lines += ["", f"Sum of run wall times (teacher included): {total / 60:.1f} min", ""]
    if a.figures and store.report_dir.is_dir():
        fig_dir = out.with_suffix("")
        fig_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(store.report_dir.iterdir()):
            if f.suffix in (".png", ".tex", ".pdf") or f.name == "report.md":
                shutil.copy(f, fig_dir / f.name)
        lines += ["## Figures", ""] + [f"![{p.stem}]({fig_dir.name}/{p.name})" for p in sorted(fig_dir.glob("*.png"))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
