"""Colours and marks shared by the interactive and the static plot, so both read the same way."""

from __future__ import annotations

from collections.abc import Sequence

# The three built-in strategies keep their colour across reports; others take the next free one.
KNOWN = {"snl": "#1f77b4", "deepreduce": "#d62728", "cryptonas": "#2ca02c"}
PALETTE = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PUBLISHED_GREYS = ("#444444", "#6a6a6a", "#8f8f8f", "#555555", "#7d7d7d", "#5f5f5f", "#888888")
PUBLISHED_MARKERS = ("^", "s", "D", "v", "P", "X", "h", "*", "<", ">")  # matplotlib names
PLOTLY_MARKERS = {
    "^": "triangle-up-open", "s": "square-open", "D": "diamond-open", "v": "triangle-down-open", "P": "cross-open",
    "X": "x-open", "h": "hexagon-open", "*": "star-open", "<": "triangle-left-open", ">": "triangle-right-open",
}
DOMINATED_ALPHA = 0.35


def series_colors(names: Sequence[str], strategies: Sequence[str]) -> dict[str, str]:
    """A colour per series: the strategy's own where it has one and it is not taken yet."""
    colors: dict[str, str] = {}
    spare = iter(PALETTE * (len(names) // len(PALETTE) + 1))
    for name, strategy in zip(names, strategies):
        own = KNOWN.get(strategy)
        colors[name] = own if own and own not in colors.values() else next(spare)
    return colors


def published_marks(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(matplotlib marker, grey) per published method."""
    markers, greys = PUBLISHED_MARKERS, PUBLISHED_GREYS
    return {m: (markers[i % len(markers)], greys[i % len(greys)]) for i, m in enumerate(methods)}
