"""LaTeX through pandas' Styler: booktabs rules, one \\multicolumn per dataset, bold via CSS, footnotes.

`to_latex` gives a table fragment for \\input; `standalone` wraps it into a document pdflatex compiles
(packages: booktabs, geometry; both in Debian's texlive-latex-base/-recommended).
"""
from __future__ import annotations

import re

from .render import Markup, display, footnotes, group_starts
from .table import Table

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "<": r"\textless{}", ">": r"\textgreater{}"}


def escape(text: str) -> str:
    out = "".join(_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace("--", "-{}-").replace("--", "-{}-")  # `--runs-dir` stays two hyphens, not an en dash


MARKUP = Markup(pm=r"$\pm$", delta=r"$\Delta$", mark=lambda a: rf"\textsuperscript{{{a}}}", escape=escape,
                minus="$-$", paper_row=r"\textit{paper}")


def to_latex(t: Table, with_paper: str | None = None, label: str | None = None) -> str:
    df, bold, italic, rows = display(t, MARKUP, with_paper)
    css = bold.map(lambda b: "font-weight: bold;" if b else "") + italic.map(lambda i: "font-style: italic;" if i
                                                                             else "")
    st = (df.style.hide(axis="index", level=1).hide(axis="index", names=True)
          .apply(lambda _: css, axis=None))
    fmt = "l" + "".join("r" if k == "FLOPs" else "c" for _, k in df.columns)
    tex = st.to_latex(hrules=True, multicol_align="c", column_format=fmt, position="t",
                      position_float="centering", caption=escape(t.caption).replace("±", r"$\pm$"),
                      label=label, convert_css=True, sparse_index=False)
    tex = _rules(tex, group_starts(t, rows), len(df.columns.levels[0]))
    tex = _row_title(tex, t.row_title)
    notes = footnotes(t)
    if notes:  # inside the float, under the tabular, so the notes travel with the table
        text = r" \\ ".join(rf"\textsuperscript{{{a}}}\,{escape(n)}" for a, n in notes)
        tex = tex.replace("\\end{tabular}\n", "\\end{tabular}\n\\par\\smallskip\\footnotesize\n"
                          rf"\begin{{minipage}}{{0.95\linewidth}}{text}\end{{minipage}}" "\n")
    return tex


def _rules(tex: str, starts: list[int], ngroups: int) -> str:
    """Styler draws only top/mid/bottom rules: add the paper's rule between row groups, and cmidrules
    under each dataset's multicolumn header."""
    lines = tex.split("\n")
    head = lines.index("\\midrule")
    body = head + 1
    for k, i in enumerate(sorted(starts)):
        lines.insert(body + i + k, "\\midrule")
    top = next((i for i, ln in enumerate(lines[:head]) if "\\multicolumn" in ln), None)
    if top is None:  # one column per dataset (the ablation): no spanning header to underline
        return "\n".join(lines)
    spans, col = [], 2
    for m in re.finditer(r"\\multicolumn\{(\d+)\}", lines[top]):
        w = int(m.group(1))
        spans.append(rf"\cmidrule(lr){{{col}-{col + w - 1}}}")
        col += w
    lines.insert(top + 1, " ".join(spans))
    return "\n".join(lines)


def _row_title(tex: str, title: str) -> str:
    """The rows' heading ("Method", "Loss") in the first cell of the last header line, as in Markdown."""
    lines = tex.split("\n")
    last = lines.index("\\midrule") - 1
    if lines[last].startswith(" &"):
        lines[last] = escape(title) + lines[last]
    return "\n".join(lines)


def standalone(fragment: str) -> str:
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n"
            "\\usepackage[landscape,margin=1.5cm]{geometry}\n\\pagestyle{empty}\n"
            "\\begin{document}\n" + fragment + "\\end{document}\n")
