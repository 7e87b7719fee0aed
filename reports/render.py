"""A `Table` as a grid of display strings for one output format, plus where the bold and italic cells are.

Each format (latex.py, markdown.py) supplies its markup; this module decides what every cell says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .table import Table, fmt


@dataclass
class Markup:
    pm: str  # the ± sign
    delta: str  # the Δ sign
    mark: Callable[[str], str]  # footnote mark (a letter) -> superscript
    escape: Callable[[str], str]  # plain text -> safe text
    minus: str = "-"  # the sign of a negative Δ
    paper_row: str = "paper"  # the label of a paper row (Markdown italicises its own)


def display(t: Table, m: Markup, with_paper: str | None = None):
    """(frame, bold, italic, rows): frame has a (label, key) row index and (dataset, column) header.

    with_paper: None, "under" (a paper row under each of ours that the paper has) or "delta" (a Δ column:
    ours - paper).
    rows[i] is the method key of frame row i, or "paper:<key>" for a paper row.
    """
    marks = t.notes()
    bold_cells = t.bold()
    n_max = max(t.seed_counts() or [0])
    cols = [(d, k) for d in t.columns for k in (["FLOPs"] if t.flops else []) + [t.value(d)]
            + ([f"{m.delta} paper"] if with_paper == "delta" else [])]
    data, bold, italic, index, rows = [], [], [], [], []
    for r in t.rows:
        line, b = [], []
        for d in t.columns:
            c = t.cells[(r, d)]
            text = fmt(c, m.pm, None if r == "teacher" else n_max)
            if c.note:
                text += m.mark(marks[c.note])
            line += ([c.flops] if t.flops else []) + [text]
            b += ([False] if t.flops else []) + [(r, d) in bold_cells]
            if with_paper == "delta":
                v = c.mean - c.paper if c.status == "ok" and isinstance(c.paper, (int, float)) else None
                line.append("" if v is None else f"{'+' if v >= 0 else m.minus}{abs(v):.3f}")
                b.append(False)
        data.append(line), bold.append(b), italic.append([False] * len(b))
        index.append((m.escape(t.label(r)), r)), rows.append(r)
        if with_paper == "under" and any(t.cells[(r, d)].paper is not None for d in t.columns):
            pl = []
            for d in t.columns:
                pl += ([t.cells[(r, d)].paper_flops] if t.flops else []) + [paper_text(t.cells[(r, d)], m.pm)]
            data.append(pl), bold.append([False] * len(pl)), italic.append([True] * len(pl))
            index.append((m.paper_row, f"paper:{r}")), rows.append(f"paper:{r}")
    idx = pd.MultiIndex.from_tuples(index)
    header = pd.MultiIndex.from_tuples([(m.escape(d), k) for d, k in cols])
    return (pd.DataFrame(data, index=idx, columns=header), pd.DataFrame(bold, index=idx, columns=header),
            pd.DataFrame(italic, index=idx, columns=header), rows)


def paper_text(c, pm: str) -> str:
    """The paper's value of a cell: "0.983 ± 0.002" where it gives a spread, its FAILED, or empty."""
    if not isinstance(c.paper, (int, float)):
        return c.paper or ""
    return f"{c.paper:.3f}" + (f" {pm} {c.paper_std:.3f}" if c.paper_std is not None else "")


def footnotes(t: Table) -> list[tuple[str, str]]:
    """(mark, text) pairs."""
    return [(mark, note) for note, mark in t.notes().items()]


def group_starts(t: Table, rows: list[str]) -> list[int]:
    """Frame row positions where a new group (data-free, later methods) begins: a rule goes above them."""
    out, prev = [], None
    for i, r in enumerate(rows):
        if r.startswith("paper:"):
            continue
        if prev is not None and t.groups[r] != prev:
            out.append(i)
        prev = t.groups[r]
    return out
