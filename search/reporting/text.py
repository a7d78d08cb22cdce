"""How numbers read in every rendering, so HTML, Markdown and the plot agree to the digit."""

from __future__ import annotations

from typing import Any

from search.reporting.intervals import Interval


def count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def accuracy(a: float | None) -> str:
    """Accuracies are fractions in the data and percent with two decimals on the page."""
    return "—" if a is None else f"{a * 100:.2f}%"


def interval(iv: Interval | None) -> str:
    """An accuracy's interval in percent, as many decimals as the accuracy itself: [82.56, 94.48]."""
    return "" if iv is None else f"[{iv.low * 100:.2f}, {iv.high * 100:.2f}]"


def accuracy_in(a: float | None, iv: Interval | None, mark: str = "") -> str:
    """An accuracy, an optional mark (★, ≈), then its interval where there is one: 90.00% ★ [82.56, 94.48]."""
    if a is None:
        return accuracy(a)
    return " ".join(part for part in (accuracy(a), mark, interval(iv)) if part)


def drop(d: float | None) -> str:
    """How far below the teacher an accuracy is, in percentage points (negative: above it)."""
    return "—" if d is None else f"{d * 100:.2f} pt"


def points(margin: float | None) -> str:
    """A difference of accuracies in percentage points."""
    return "—" if margin is None else f"+{margin * 100:.2f} pt"


def seconds(s: float | None) -> str:
    """A latency with a sensible unit: 250 ms, 1.5 s, 12 s."""
    if s is None:
        return "—"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def megabytes(mb: float | None) -> str:
    return "—" if mb is None else f"{mb:,.3g} MB"


def duration(s: float | None) -> str:
    """Compute time: 45 s, 3.2 min, 1 h 05 min."""
    if s is None:
        return "—"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def hypervolume(hv: float | None) -> str:
    return "—" if hv is None else f"{hv:.4f}"


def value(v: Any) -> str:
    """A hyperparameter value: floats to four significant digits, everything else as is."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return str(v)


def params(p: dict[str, Any]) -> str:
    """A trial's sampled hyperparameters, without the strategy choice (it has its own column)."""
    return ", ".join(f"{k}={value(v)}" for k, v in sorted(p.items()) if k != "strategy") or "—"


def options(o: Any) -> str:
    """The strategy options a trial ran with (its ``options`` attribute: sampled and fixed, as used)."""
    if not isinstance(o, dict) or not o:
        return "—"
    return ", ".join(f"{k}={value(v)}" for k, v in sorted(o.items()))
