"""``report.html``: one self-contained page, the interactive plot with plotly.js inlined (opens offline).

After Plotly has drawn the plot, a small script records on ``<body>`` what was rendered:
``data-front-traces`` (how many strategy fronts), ``data-front-names`` (their names, JSON),
``data-rendered-traces`` (trace groups present in the SVG) and ``data-plot-ready="1"``, so a headless
browser can check the page without a screenshot.
"""

from __future__ import annotations

import math
from html import escape

import plotly.graph_objects as go

from search.reporting import style, text
from search.reporting.model import Report, TrialRow, faint_trials
from search.reporting.sections import Cell, Table, sections, subtitle

PLOT_ID = "pareto-plot"
RENDERED_PROBE = """
var gd = document.getElementById('{plot_id}');
var fronts = gd._fullData.filter(function (t) { return t.meta && t.meta.role === 'front'; });
document.body.setAttribute('data-front-traces', String(fronts.length));
document.body.setAttribute('data-front-names', JSON.stringify(fronts.map(function (t) { return t.name; })));
document.body.setAttribute('data-rendered-traces', String(gd.querySelectorAll('.scatterlayer .trace').length));
document.body.setAttribute('data-plot-ready', '1');
"""
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.subtitle { color: #555; margin-top: 0; } .note { background: #fff6db; border-left: 4px solid #e0b000; padding: 0.4rem 0.8rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td:first-child { white-space: nowrap; } td.strong { font-weight: 600; background: #eaf6ea; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; } p.block { color: #444; font-size: 0.9rem; }
"""


def render(report: Report) -> str:
    """The whole page as a string."""
    parts = [f"<h1>{escape(report.title)}</h1>", f'<p class="subtitle">{escape(subtitle(report))}</p>']
    parts += [f'<p class="note">{escape(note)}</p>' for note in report.notes]
    parts.append(
        figure(report).to_html(
            full_html=False,
            include_plotlyjs=True,
            div_id=PLOT_ID,
            config={"displaylogo": False, "responsive": True},
            post_script=RENDERED_PROBE,
        )
    )
    for section in sections(report):
        parts.append(f"<h2>{escape(section.title)}</h2>")
        for block in section.blocks:
            parts.append(_table(block) if isinstance(block, Table) else f'<p class="block">{escape(block)}</p>')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(report.title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def figure(report: Report) -> go.Figure:
    """The interactive plot: a front per series (legend entry), its dominated and over-budget trials faint."""
    fig = go.Figure()
    colors = style.series_colors([s.name for s in report.series], [s.strategy for s in report.series])
    for series in report.series:
        color = colors[series.name]
        dominated, over = faint_trials(report, series)
        if series.front:
            front = _trials_trace(list(series.front), series.name, color, "front", mode="lines+markers", showlegend=True)
            if all(t.val_interval is not None for t in series.front):
                front.update(error_y={
                    "type": "data", "symmetric": False, "color": color, "thickness": 1, "width": 3,
                    "array": [(t.val_interval.high - t.val_acc) * 100 for t in series.front],  # type: ignore[union-attr,operator]
                    "arrayminus": [(t.val_acc - t.val_interval.low) * 100 for t in series.front],  # type: ignore[union-attr,operator]
                })
            fig.add_trace(front)
        if dominated:
            fig.add_trace(_trials_trace(dominated, series.name, color, "dominated", opacity=style.DOMINATED_ALPHA))
        if over:
            fig.add_trace(_trials_trace(over, series.name, color, "over budget", opacity=style.DOMINATED_ALPHA, symbol="x"))
    marks = style.published_marks(list(dict.fromkeys(p.method for p in report.published)))
    for method, (marker, grey) in marks.items():
        points = [p for p in report.published if p.method == method]
        fig.add_trace(
            go.Scatter(
                x=[p.relus for p in points],
                y=[p.accuracy * 100 for p in points],
                mode="markers",
                name=f"{method} (published, test top-1)",
                legendgroup="published",
                meta={"role": "published", "series": method},
                marker={"symbol": style.PLOTLY_MARKERS[marker], "color": grey, "size": 8},
                text=[
                    f"{p.method} · {p.model}<br>ReLUs {p.relus:,} · top-1 {text.accuracy(p.accuracy)}<br>{escape(p.source)}"
                    for p in points
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    shapes, annotations = [], []
    if any(s.front for s in report.series):
        for run in report.runs:
            if run.baseline.val_acc is not None:
                name = f" ({run.label})" if len(report.runs) > 1 else ""
                shapes.append(_hline(run.baseline.val_acc * 100))
                annotations.append(_hlabel(run.baseline.val_acc * 100, f"teacher{name} {text.accuracy(run.baseline.val_acc)}"))
        shapes.append(_vline(report.full_relus, "dot", "#999999"))
        annotations.append(_vlabel(report.full_relus, "full model"))
        if report.budget:
            shapes.append(_vline(report.budget, "dash", "#555555"))
            annotations.append(_vlabel(report.budget, f"budget {report.budget:,}"))
    elif report.notes:
        annotations.append(
            {"text": escape(report.notes[0]), "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False}
        )
    fig.update_layout(
        template="plotly_white",
        height=560,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        xaxis={"type": "log", "title": {"text": "ReLU count (log scale)"}},
        yaxis={"title": {"text": "validation accuracy (%)"}},
        legend={"title": {"text": "fronts (click to hide)"}},
        hovermode="closest",
        shapes=shapes,
        annotations=annotations,
    )
    return fig


def _trials_trace(trials: list[TrialRow], series: str, color: str, role: str, mode: str = "markers",
                  showlegend: bool = False, opacity: float = 1.0, symbol: str = "circle") -> go.Scatter:
    """Trials of one series in one role: the front (a step line: best accuracy at <= x ReLUs) or faint marks."""
    return go.Scatter(
        x=[t.relus for t in trials],
        y=[t.val_acc * 100 for t in trials],  # type: ignore[operator]
        mode=mode,
        name=series if role == "front" else f"{series} ({role})",
        legendgroup=series,
        showlegend=showlegend,
        opacity=opacity,
        meta={"role": role, "series": series},
        line={"shape": "hv", "color": color, "width": 2},
        marker={"color": color, "size": 9 if role == "front" else 7, "symbol": symbol},
        text=[_hover(t) for t in trials],
        hovertemplate="%{text}<extra></extra>",
    )


def _hover(t: TrialRow) -> str:
    lines = [
        f"<b>{escape(t.series)}</b> · {escape(t.run)} #{t.number}",
        f"ReLUs {text.count(t.relus)} · val {text.accuracy_in(t.val_acc, t.val_interval)}",
        f"test {text.accuracy_in(t.test_acc, t.test_interval)}",
        f"drop from teacher: val {text.drop(t.val_drop)} · test {text.drop(t.test_drop)}",
        f"latency {text.seconds(t.latency_s)} · {text.megabytes(t.communication_mb)}",
        escape(text.params(t.params)),
    ]
    return "<br>".join(lines)


def _vline(x: int, dash: str, color: str) -> dict:
    return {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
            "line": {"dash": dash, "color": color, "width": 1}}


def _hline(y: float) -> dict:
    """A run's teacher accuracy across the whole plot."""
    return {"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": y, "y1": y,
            "line": {"dash": "dashdot", "color": "#777777", "width": 1}}


def _hlabel(y: float, label: str) -> dict:
    return {"text": escape(label), "xref": "paper", "yref": "y", "x": 0.0, "y": y, "showarrow": False, "xanchor": "left",
            "yanchor": "bottom", "font": {"size": 10, "color": "#666"}}


def _vlabel(x: int, label: str) -> dict:
    """Annotations on a log axis take the exponent, while shapes take the value (Plotly's rule)."""
    return {"text": label, "xref": "x", "yref": "paper", "x": math.log10(x), "y": 1.0, "showarrow": False, "xanchor": "right",
            "font": {"size": 10, "color": "#666"}}


def _table(table: Table) -> str:
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows)
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(cell: Cell) -> str:
    return f'<td class="strong">{escape(cell.text)}</td>' if cell.strong else f"<td>{escape(cell.text)}</td>"
