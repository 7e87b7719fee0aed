"""The paper-layout results table as data: methods (rows, paper order) x datasets (FLOPs, accuracy).

Builds a `Table` from one or several suites' run stores; latex.py, markdown.py and html.py render it.
`write_report` keeps writing `<runs-dir>/<suite>/report/table.{md,tex,csv}` (the run command uses it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.config import Suite
from harness.errors import HarnessError
from harness.models import human_macs
from harness.store import Store, atomic_write, is_number

from .collect import PAPER_ORDER, Cell, aggregate, dataset_label, group, label, runs_frame, teacher_summary, \
    value_label

EVAL_WORD = {"best": "best", "final": "last"}  # --metric, as captions say it
PAPER_TABLES = {"cls": ["mnist", "cifar10", "cifar100", "caltech101"], "seg": ["camvid", "nyuv2"]}


@dataclass
class Table:
    rows: list[str]  # method keys
    columns: list[str]  # dataset labels
    cells: dict[tuple[str, str], Cell]
    groups: dict[str, str]  # method -> driven | free | later
    caption: str = ""
    value_name: str = "Acc."  # "mIoU" for segmentation
    value_names: dict[str, str] = field(default_factory=dict)  # per column, where columns measure different things
    flops: bool = True
    row_labels: dict[str, str] = field(default_factory=dict)
    row_title: str = "Method"

    def __post_init__(self):
        if self.value_names:  # the table's measure: mIoU only where every column is one
            self.value_name = "mIoU" if set(self.value_names.values()) == {"mIoU"} else "Acc."

    def value(self, column: str) -> str:
        """What a column's cells measure (its header): Acc. or mIoU."""
        return self.value_names.get(column, self.value_name)

    def label(self, row: str) -> str:
        return self.row_labels.get(row, label(row))

    def bold(self) -> set[tuple[str, str]]:
        """Best data-free cell of each dataset (ties at the shown precision all bold)."""
        out = set()
        for col in self.columns:
            cand = [(round(c.mean, 3), r) for r in self.rows if self.groups[r] != "driven"
                    and (c := self.cells[(r, col)]).status == "ok"]
            if cand:
                top = max(v for v, _ in cand)
                out |= {(r, col) for v, r in cand if v == top}
        return out

    def notes(self) -> dict[str, str]:
        """Footnote text -> mark (a, b, ...), in reading order."""
        marks: dict[str, str] = {}
        for r in self.rows:
            for col in self.columns:
                note = self.cells[(r, col)].note
                if note and note not in marks:
                    marks[note] = chr(ord("a") + len(marks)) if len(marks) < 26 else str(len(marks))
        return marks

    def seed_counts(self) -> list[int]:
        return sorted({c.n for (r, _), c in self.cells.items() if c.status == "ok" and r != "teacher"})


def fmt(cell: Cell, pm: str = "±", n_max: int | None = None) -> str:
    """"0.983 ± 0.002"; a lone seed shows no ± (its spread is unknown); n shown where it is not the usual."""
    if cell.status == "failed":
        return "FAILED"
    if cell.status != "ok":
        return "n/a"
    text = f"{cell.mean:.3f} {pm} {cell.std:.3f}" if cell.n > 1 else f"{cell.mean:.3f}"
    return text + (f" (n={cell.n})" if n_max and cell.n and cell.n < n_max else "")


def with_paper(cell: Cell, suite: Suite, key: str) -> Cell:
    """The cell, given the suite's paper value for `key` (its mean, and its spread where the suite gives one) and,
    where the paper has that row, the paper's FLOPs for its model (the teacher's in the teacher row, else the
    student's)."""
    p = suite.paper.get(key)
    cell.paper, cell.paper_std = p if isinstance(p, tuple) else (p, None)
    macs = suite.paper_flops.teacher if key == "teacher" else suite.paper_flops.student
    cell.paper_flops = human_macs(macs) if p is not None and macs else ""
    return cell


def suite_cells(suite: Suite | None, runs_dir: str | Path, metric: str, rows: list[str],
                runs: pd.DataFrame | None = None) -> dict[str, Cell]:
    """Cells of one dataset column (runs: the suite's runs_frame, read here if not given); a missing suite gives
    n/a everywhere."""
    if suite is None:
        return {r: Cell(note="no suite file for this dataset yet") for r in rows}
    runs = runs_frame(runs_dir, suite.name) if runs is None else runs
    macs = runs["student_macs"].dropna()
    student_flops = human_macs(float(macs.iloc[0])) if len(macs) else ""
    out = {}
    for r in rows:
        if r == "teacher":
            t = teacher_summary(runs_dir, suite.name)
            acc = t.get("test_acc")
            cell = (Cell(float(acc), 0.0, 1, "ok") if is_number(acc) else Cell(note="no teacher trained" if not t else "the teacher's summary.json has no test_acc"))
            used = pd.to_numeric(runs[runs["status"] == "done"]["teacher_acc"], errors="coerce").dropna()
            # 0.001: a checkpoint's accuracy is measured again by every process, which may round differently
            if cell.status == "ok" and (others := {round(a, 3) for a in used if abs(a - cell.mean) > 1e-3}):
                cell.note = (f"the suite's last teacher; runs in this table were distilled from another "
                             f"(test acc {', '.join(f'{a:.3f}' for a in sorted(others))})")
            cell.flops = teacher_flops(suite, t)
        else:
            cell = aggregate(runs[runs["method"] == r], metric)
            if cell.note == "not run" and r in suite.unavailable and r not in suite.methods:
                cell.note = f"not run: {suite.unavailable[r]}"
            own = runs[runs["method"] == r]["student_macs"].dropna()
            cell.flops = human_macs(float(own.iloc[0])) if len(own) else student_flops
        out[r] = with_paper(cell, suite, r)
    return out


def teacher_flops(suite: Suite, summary: dict) -> str:
    """The teacher's MACs: recorded, else counted on a freshly built (untrained) copy of the teacher the record
    names (its model and kwargs, which another profile than the loaded one may have set); none for a suite without
    a teacher yet (the loaded profile's models need not be those its runs will use)."""
    if summary.get("macs"):
        return human_macs(float(summary["macs"]))
    if not summary:
        return ""
    try:
        from harness.config import ModelCfg
        from harness.data import get_dataset
        from harness.models import count_macs
        from harness.teacher import build_teacher_model

        model = summary.get("model")
        if isinstance(model, dict):
            cfg = ModelCfg.model_validate(model)
        elif model in (None, suite.teacher.model.name) and summary.get("source") != "checkpoint":
            cfg = suite.teacher.model
        else:  # a checkpoint recorded by name only (before its kwargs were recorded): not known which
            return ""
        spec = get_dataset(summary.get("dataset") or suite.dataset)
        teacher = suite.teacher.model_copy(update={"model": cfg})
        return human_macs(count_macs(build_teacher_model(teacher, spec.input_shape, spec.num_classes),
                                     spec.input_shape))
    except Exception:  # a FLOPs figure is not worth failing a report over
        return ""


def row_order(suites: list[Suite | None], runs_dir, paper_rows: bool, frames: dict | None = None) -> list[str]:
    """The paper's rows (all of them for --paper-table), then each suite's other methods in suite order
    (frames: suite name -> its runs_frame, read here where not given)."""
    seen: list[str] = []
    for s in suites:
        if s is None:
            continue
        runs = (frames or {}).get(s.name)
        stored = list((runs_frame(runs_dir, s.name) if runs is None else runs)["method"].unique())
        seen = list(dict.fromkeys([*seen, *s.method_names(), *stored, *s.paper]))
    # --paper-table: the paper's own rows even where nothing ran; the later methods only where a suite has them
    base = [m for m in PAPER_ORDER if (paper_rows and group(m) != "later") or m in seen or m == "teacher"]
    rest = [m for m in seen if m not in base]
    key = {"driven": 0, "free": 1, "later": 2}
    return sorted(base + rest, key=lambda m: key[group(m, defining_suite(m, suites))])  # stable within groups


def defining_suite(method: str, suites: list[Suite | None]) -> Suite | None:
    """The first suite whose methods define `method` (a variant's `method:` says what it is), else the first."""
    present = [s for s in suites if s is not None]
    return next((s for s in present if method in s.methods), present[0] if present else None)


def column_names(suites: list[Suite | None], names: list[str]) -> list[str]:
    """Dataset labels; two suites on one dataset (e.g. mnist and ablation-loss) are told apart by suite name."""
    columns = [dataset_label(n) for n in names]
    if len(set(columns)) < len(columns):
        if len({(c, s.name if s else n) for c, s, n in zip(columns, suites, names)}) < len(columns):
            raise HarnessError(f"report: a suite is named twice ({', '.join(names)})")
        columns = [f"{c} ({s.name})" if columns.count(c) > 1 and s else c for c, s in zip(columns, suites)]
    return columns


def build_table(suites: list[Suite | None], names: list[str], runs_dir: str | Path, metric: str = "best",
                paper_rows: bool = False) -> Table:
    """names[i] is the dataset of suites[i] (a suite may be None when no suite file exists yet)."""
    frames = {s.name: runs_frame(runs_dir, s.name) for s in suites if s is not None}  # each store read once
    rows = row_order(suites, runs_dir, paper_rows, frames)
    columns = column_names(suites, names)
    cells = {}
    for s, col in zip(suites, columns):
        for r, c in suite_cells(s, runs_dir, metric, rows, frames.get(s.name) if s else None).items():
            cells[(r, col)] = c
    values = {col: value_label(n) for col, n in zip(columns, names)}
    defined = {r: defining_suite(r, suites) for r in rows}
    t = Table(rows, columns, cells, {r: group(r, defined[r]) for r in rows}, value_names=values,
              row_labels={r: label(r, defined[r]) for r in rows})
    # the profiles the stored runs were made with (the suite's loaded one where runs recorded none; a suite with
    # no runs names none, unless no suite has any)
    stored = [s for s in suites if s is not None and (Path(runs_dir) / s.name).is_dir()]
    profiles = set()
    for s in stored:
        profiles |= set(frames[s.name]["profile"].dropna()) or ({s.profile} if len(frames[s.name]) else set())
    profiles = profiles or {s.profile for s in stored}
    t.caption = caption(t, sorted(profiles), metric)
    return t


def caption(t: Table, profiles: list[str], metric: str) -> str:
    """profiles: those of the stored runs (a paper table's columns without runs have none to name)."""
    spread = spread_text(t.seed_counts())
    paper_flops = "; a paper row's, the paper's" if any(c.paper_flops for c in t.cells.values()) else ""
    measured = {t.value(c) for c in t.columns} or {t.value_name}
    what = ("mIoU" if measured == {"mIoU"} else "Test accuracy (mIoU for segmentation)" if "mIoU" in measured
            else "Test accuracy")
    return (f"{what}, the {EVAL_WORD[metric]} of each run's evaluations; {spread}; "
            f"FLOPs: MACs per image (the student's; the teacher's in its row{paper_flops}); "
            f"bold: best data-free result per dataset; "
            + (f"profiles: {', '.join(profiles)} (mixed: each run's summary.json says which)." if len(profiles) > 1
               else f"profile: {', '.join(profiles) or 'none'}."))


def spread_text(ns: list[int]) -> str:
    """What a caption says of the seeds behind its cells (ns: the cells' seed counts)."""
    return ("no cell has finished runs to show (see the notes)" if not ns
            else "one seed per cell (no spread shown)" if ns == [1]
            else f"mean ± std over n={ns[0]} seeds" if len(ns) == 1
            else f"mean ± std over n={ns[0]}-{ns[-1]} seeds (cells with fewer say so)")


def tidy(t: Table) -> pd.DataFrame:
    """Long-format CSV rows: one per method x dataset, numbers unformatted."""
    return pd.DataFrame([{"method": r, "label": t.label(r), "group": t.groups[r], "dataset": col,
                          "status": c.status, "mean": c.mean, "std": c.std if c.status == "ok" else None, "n": c.n,
                          "flops": c.flops, "paper": c.paper, "paper_std": c.paper_std, "paper_flops": c.paper_flops,
                          "note": c.note}
                         for r in t.rows for col in t.columns for c in [t.cells[(r, col)]]])


def render(t: Table, fmt: str, with_paper: str | None = None) -> str:
    from .latex import to_latex
    from .markdown import to_html, to_markdown

    if fmt == "csv":
        return tidy(t).to_csv(index=False)
    return {"latex": to_latex, "md": to_markdown, "html": to_html}[fmt](t, with_paper)


def write_tables(t: Table, out: Path, stem: str, with_paper: str | None = None) -> None:
    """<stem>.{md,tex,csv,html} and <stem>-standalone.tex (a document pdflatex compiles)."""
    from .latex import standalone

    for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv"), ("html", "html")):
        atomic_write(out / f"{stem}.{ext}", render(t, fmt, with_paper))
    atomic_write(out / f"{stem}-standalone.tex", standalone(render(t, "latex", with_paper)))


def write_report(suite: Suite, runs_dir: str | Path, metric: str = "best",
                 with_paper: str | None = None) -> tuple[Path, pd.DataFrame]:
    """The suite's table files under <runs-dir>/<suite>/report/; returns (report dir, tidy frame)."""
    t = build_table([suite], [suite.dataset], runs_dir, metric)
    out = Store(runs_dir, suite.name).report_dir
    write_tables(t, out, "table", with_paper)
    return out, tidy(t)
