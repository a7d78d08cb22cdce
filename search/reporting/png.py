"""``pareto.png``: the static Pareto plot (matplotlib, Agg canvas, no pyplot state touched)."""

from __future__ import annotations

import io
import math

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from search.reporting import style, text
from search.reporting.intervals import METHOD
from search.reporting.model import MeasuredTrial, Report, TrialRow, faint_trials


def render(report: Report) -> bytes:
    """The plot as PNG bytes: one front per series, dominated trials faint, published marks grey."""
    fig = Figure(figsize=(10, 5.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = style.series_colors([s.name for s in report.series], [s.strategy for s in report.series])
    for series in report.series:
        color = colors[series.name]
        dominated, over = faint_trials(report, series)
        if dominated:
            ax.scatter(_x(dominated), _y(dominated), s=18, color=color, alpha=style.DOMINATED_ALPHA, linewidths=0)
        if over:
            ax.scatter(_x(over), _y(over), s=22, color=color, alpha=style.DOMINATED_ALPHA, marker="x")
        if series.front:
            bars = _error_bars(series.front)
            if bars is not None:
                ax.errorbar(_x(series.front), _y(series.front), yerr=bars, fmt="none", ecolor=color, elinewidth=0.8,
                            capsize=2, alpha=0.6, zorder=2)
            label = f"{series.name}: {len(series.front)} on front, HV {text.hypervolume(series.hypervolume)}"
            ax.plot(_x(series.front), _y(series.front), drawstyle="steps-post", color=color, linewidth=1.6, marker="o",
                    markersize=6, markeredgecolor="white", markeredgewidth=0.6, zorder=3, label=label)
    marks = style.published_marks(list(dict.fromkeys(p.method for p in report.published)))
    for method, (marker, grey) in marks.items():
        points = [p for p in report.published if p.method == method]
        ax.scatter(
            [p.relus for p in points],
            [p.accuracy * 100 for p in points],
            marker=marker,
            s=30,
            facecolors="none",
            edgecolors=grey,
            linewidths=1.0,
            label=f"{method} (published, test top-1)",
        )
    fronts = any(s.front for s in report.series)
    if fronts:
        for run in report.runs:
            if run.baseline.val_acc is not None:
                name = f" ({run.label})" if len(report.runs) > 1 else ""
                _hline(ax, run.baseline.val_acc * 100, f"teacher{name} {text.accuracy(run.baseline.val_acc)}")
        _vline(ax, report.full_relus, f"full model {report.full_relus:,}", ":")
        if report.budget:
            _vline(ax, report.budget, f"budget {report.budget:,}", "--")
    else:
        box = {"facecolor": "white", "edgecolor": "#e0b000", "boxstyle": "round,pad=0.5"}
        ax.text(0.5, 0.5, report.notes[0] if report.notes else "No finished trials", transform=ax.transAxes, ha="center",
                va="center", wrap=True, bbox=box, zorder=5)
    if fronts or report.published:
        ax.set_xscale("log")
        _relu_ticks(ax)
        handles, labels = ax.get_legend_handles_labels()
        if any(t.eligible and not t.on_front for t in report.trials):
            handles.append(_legend_mark("o", style.DOMINATED_ALPHA))
            labels.append("dominated trial (faint)")
        if any(t.over_budget and t.val_acc is not None for t in report.trials):
            handles.append(_legend_mark("x", style.DOMINATED_ALPHA + 0.2))
            labels.append("over budget (faint x)")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.5))  # accuracy lives in 0..100; matplotlib pads past it
    ax.set_xlabel("ReLU count (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    subtitle = " · ".join(x for x in (report.dataset, report.model) if x)
    ax.set_title(f"{report.title}\n{subtitle}" if subtitle else report.title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    conventions = {run.convention for run in report.runs}
    footer = "Fronts drawn as steps: best validation accuracy at <= x ReLUs."
    if len(conventions) == 1:
        footer += f" Counting: {conventions.pop()}."
    footer += f"\nError bars: {METHOD}. Dash-dot line: the full-ReLU teacher's validation accuracy (baseline)."
    fig.text(0.01, 0.0, footer, fontsize=7, color="#666666", va="top")  # below the axis label; bbox_inches="tight" keeps it
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _legend_mark(marker: str, alpha: float) -> Line2D:
    return Line2D([], [], linestyle="none", marker=marker, color="#888888", alpha=alpha, markersize=5)


def _relu_ticks(ax: Axes) -> None:
    """ReLU counts as 500, 2k, 1.2M rather than powers of ten; 2x and 5x ticks labelled on narrow ranges."""
    low, high = ax.get_xlim()
    narrow = math.log10(high / low) < 2

    def minor(v: float, _: int) -> str:
        return _short(v) if narrow and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def _short(v: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.3g}"


def _error_bars(trials: tuple[TrialRow, ...]) -> tuple[list[float], list[float]] | None:
    """Distances (in %) from each accuracy down and up to its interval's ends; None where a trial has none."""
    if any(t.val_interval is None for t in trials):
        return None
    low = [(t.val_acc - t.val_interval.low) * 100 for t in trials]  # type: ignore[operator,union-attr]
    high = [(t.val_interval.high - t.val_acc) * 100 for t in trials]  # type: ignore[operator,union-attr]
    return low, high


def _hline(ax: Axes, y: float, label: str) -> None:
    ax.axhline(y, color="#777777", linestyle="-.", linewidth=1)
    ax.annotate(label, (0, y), xycoords=("axes fraction", "data"), xytext=(3, 2), textcoords="offset points",
                ha="left", va="bottom", fontsize=7, color="#555555")


def _vline(ax: Axes, x: int, label: str, linestyle: str) -> None:
    ax.axvline(x, color="#777777", linestyle=linestyle, linewidth=1)
    ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(-3, -4), textcoords="offset points",
                rotation=90, ha="right", va="top", fontsize=7, color="#555555")


def _x(trials: tuple[TrialRow, ...] | list[TrialRow]) -> list[int]:
    return [t.relus for t in trials]  # type: ignore[misc]


def _y(trials: tuple[TrialRow, ...] | list[TrialRow]) -> list[float]:
    return [t.val_acc * 100 for t in trials]  # type: ignore[operator]


def render_measured(report: Report) -> bytes:
    """``pi.png``: measured communication per inference against the cost model's estimate, log-log, with the
    diagonal where they would agree; the ReLUs' own share drawn hollow below each total."""
    fig = Figure(figsize=(7, 5.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = style.series_colors([s.name for s in report.series], [s.strategy for s in report.series])
    shown: list[MeasuredTrial] = [m for m in report.measured if m.trial.communication_mb]
    for name in dict.fromkeys(m.trial.series for m in shown):
        mine = [m for m in shown if m.trial.series == name]
        estimates = [m.trial.communication_mb for m in mine]
        ax.scatter(estimates, [m.total_mb for m in mine], color=colors[name], s=36, label=f"{name}: whole inference", zorder=3)
        ax.scatter(estimates, [max(m.mb_by_kind.get("relu", 0.0), 1e-6) for m in mine], facecolors="none",
                   edgecolors=colors[name], s=36, label=f"{name}: ReLUs only", zorder=3)
    if shown:
        values = [v for m in shown for v in (m.trial.communication_mb or 0.0, m.total_mb, m.mb_by_kind.get("relu", 0.0)) if v > 0]
        low, high = min(values) / 2, max(values) * 2
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--", label="measured = estimated")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("estimated communication per inference (MB, the run's cost model x ReLU count)")
    ax.set_ylabel("measured communication per inference (MB, SPU)")
    ax.set_title("Measured vs estimated private-inference communication")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
