"""Markdown and HTML renderings of a `Table`, and the suite's report.md that embeds table and figures."""
from __future__ import annotations

import html as _html

from .render import Markup, display, footnotes, group_starts
from .table import Table

MD = Markup(pm="±", delta="Δ", mark=lambda a: f"<sup>{a}</sup>", escape=lambda s: str(s).replace("|", "\\|"))
HTML = Markup(pm="±", delta="Δ", mark=lambda a: f"<sup>{a}</sup>", escape=_html.escape)
GROUP_TITLES = {"free": "*data-free*", "later": "*later data-free methods*"}


def to_markdown(t: Table, with_paper: str | None = None) -> str:
    df, bold, italic, rows = display(t, MD, with_paper)
    lines = []
    starts = set(group_starts(t, rows))
    for i, ((lab, _), vals) in enumerate(df.iterrows()):
        if i in starts:  # pipe tables have no rules: a titled empty row stands in for the paper's rule
            lines.append([GROUP_TITLES[t.groups[rows[i]]]] + [""] * len(vals))
        cells = [f"**{v}**" if b else f"*{v}*" if it and v else v
                 for v, b, it in zip(vals, bold.iloc[i], italic.iloc[i])]
        lines.append([f"*{lab}*" if rows[i].startswith("paper:") else lab] + cells)
    header = [t.row_title] + [f"{d} {k}" for d, k in df.columns]
    out = [f"**{t.caption}**", "", "| " + " | ".join(header) + " |",
           "|:--" + "|--:" * (len(header) - 1) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in lines]
    notes = footnotes(t)
    if notes:
        out += [""] + [f"<sup>{a}</sup> {n}  " for a, n in notes]
    return "\n".join(out) + "\n"


def to_html(t: Table, with_paper: str | None = None) -> str:
    df, bold, italic, rows = display(t, HTML, with_paper)
    starts = set(group_starts(t, rows))
    css = bold.map(lambda b: "font-weight: bold;" if b else "") + italic.map(lambda i: "font-style: italic;" if i
                                                                             else "")
    for i in starts:  # the paper's rule between row groups
        css.iloc[i] = css.iloc[i] + "border-top: 1px solid black;"
    st = df.style.hide(axis="index", level=1).apply(lambda _: css, axis=None).set_caption(_html.escape(t.caption))
    notes = "".join(f"<p><sup>{a}</sup> {_html.escape(n)}</p>\n" for a, n in footnotes(t))
    return st.to_html() + notes


def report_md(title: str, table_md: str, figures: list[tuple[str, str]], extra: list[str] = ()) -> str:
    """figures: (caption, file name relative to the report dir)."""
    parts = [f"# {title}", "", table_md, *extra]
    for cap, name in figures:
        parts += [f"## {cap}", "", f"![{cap}]({name})", ""]
    return "\n".join(parts) + "\n"
