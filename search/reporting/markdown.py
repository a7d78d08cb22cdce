"""``report.md``: the report as Markdown, with ``pareto.png`` beside it as the plot."""

from __future__ import annotations

from search.reporting.model import Report
from search.reporting.sections import Cell, Table, sections, subtitle

def render(report: Report, plot_file: str) -> str:
    """The report; ``plot_file`` is the PNG beside it (relative), shown where the HTML has the interactive plot."""
    lines = [f"# {report.title}", "", subtitle(report), ""]
    lines += [f"> **Note:** {note}" for note in report.notes]
    if report.notes:
        lines.append("")
    lines += [f"![Pareto front: validation accuracy vs ReLU count]({plot_file})", ""]
    for section in sections(report):
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _table(block) if isinstance(block, Table) else [block, ""]
    return "\n".join(lines).rstrip() + "\n"


def _table(table: Table) -> list[str]:
    lines = [f"**{table.caption}**", ""] if table.caption else []
    lines.append("| " + " | ".join(_escape(h) or " " for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines + [""]


def _cell(cell: Cell) -> str:
    body = _escape(cell.text)
    return f"**{body}**" if cell.strong and body else body


def _escape(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")
