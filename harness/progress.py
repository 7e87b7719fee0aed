"""Progress for a suite (runs done of total) and its current run (iterations, ETA, last accuracy):
rich bars on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data import metric_word


class SuiteProgress:
    def __init__(self, total_runs: int, live: bool | None = None, stream=None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, force_terminal=self.live or None, highlight=False)
        self.total = total_runs
        self.done = 0
        self._bars = None
        self._run_label = ""
        self._run_started = 0.0

    def __enter__(self):
        if self.live:
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console)
            self._bars.__enter__()
            self._suite = self._bars.add_task("suite", total=self.total, info="")
            self._run = None
        return self

    def __exit__(self, *exc):
        if self._bars:
            self._bars.__exit__(*exc)

    def log(self, msg: str) -> None:
        if self._bars:
            self._bars.console.print(msg, markup=False)
        else:
            print(msg, file=self.stream, flush=True)

    def start_run(self, label: str, iterations: int, start: int = 0) -> None:
        self._run_label, self._run_started = label, time.perf_counter()
        if self._bars:
            if self._run is not None:
                self._bars.remove_task(self._run)
            self._run = self._bars.add_task(label, total=iterations, completed=start, info="")
        else:
            self.log(f"[{self.done + 1}/{self.total}] {label}: {iterations} iterations"
                     + (f", resuming at {start}" if start else ""))

    def update_run(self, it: int, total: int, acc: float | None) -> None:
        if self._bars and self._run is not None:
            self._bars.update(self._run, completed=it, total=total, info=f"acc {acc:.4f}" if acc is not None else "")

    def on_eval(self, row: dict) -> None:
        if not self._bars:
            losses = " ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("loss"))
            what = metric_word(row.get("metric", "acc"))
            self.log(f"  {self._run_label} it {row['iteration']}: test {what} {row['test_acc']:.4f} {losses} "
                     f"({row['elapsed_s']:.0f}s)")

    def end_run(self, status: str, detail: str = "", label: str | None = None) -> None:
        self._run_label = label or self._run_label
        self.done += 1
        if self._bars:
            self._bars.update(self._suite, completed=self.done)
        self.log(f"  {self._run_label}: {status}{(' - ' + detail) if detail else ''}")
