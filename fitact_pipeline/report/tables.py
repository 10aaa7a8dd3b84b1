"""Tables of the report (Table I, resilience summary, paired differences) as Markdown, CSV and LaTeX.

A table is a list of columns and a list of row dicts holding raw numbers; formatting happens only when
writing Markdown / LaTeX, so the CSV keeps full precision and tests can compare it with the runs.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Sequence

Row = dict[str, Any]
Formatter = Callable[[Any], str]


def fmt_number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "never" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_percent(value: Any) -> str:
    """A ratio (0.05) written as a signed percentage (+5.00 %)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:+.2f} %"


def fmt_rate(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "never"
    return f"{value:.2e}"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Row]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            # repr keeps every digit of a float (str() would too in py3, but be explicit)
            writer.writerow({c: (repr(row.get(c)) if isinstance(row.get(c), float) else row.get(c, ""))
                             for c in columns})
    return path


def _cells(columns, rows, formats: dict[str, Formatter]) -> list[list[str]]:
    return [[formats.get(c, fmt_number)(row.get(c)) for c in columns] for row in rows]


def markdown(title: str, headers: Sequence[str], columns: Sequence[str], rows: Sequence[Row],
             formats: dict[str, Formatter], note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(columns, rows, formats)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, title: str, columns: Sequence[str], headers: Sequence[str],
                   rows: Sequence[Row], formats: dict[str, Formatter], note: str = "") -> Path:
    path.write_text(markdown(title, headers, columns, rows, formats, note))
    return path


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def write_latex(path: Path, caption: str, label: str, columns: Sequence[str], headers: Sequence[str],
                rows: Sequence[Row], formats: dict[str, Formatter]) -> Path:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{" + "l" * 2 + "r" * (len(columns) - 2) + "}", r"\hline",
             " & ".join(_latex_escape(h) for h in headers) + r" \\", r"\hline"]
    lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in _cells(columns, rows, formats)]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
