"""``trials.csv``: every trial of every run, every objective, attribute and hyperparameter."""

from __future__ import annotations

import csv
import io
import json

from search.reporting.intervals import Interval
from search.reporting.model import Report

# Read from the trial (values first, attributes as fallback) or derived by the report.
DERIVED = (
    "relus",
    "val_acc",
    "test_acc",
    "latency_s",
    "communication_mb",
    "seconds",
    "model_path",
    "model_present",
    "feasible",
    "on_front",
    "on_overall_front",
    "fail_reason",
    "val_drop",
    "test_drop",
)
# Each accuracy's 95 % Wilson interval (search.reporting.intervals), as fractions.
INTERVALS = ("val_acc_low", "val_acc_high", "test_acc_low", "test_acc_high")


def render(report: Report) -> str:
    """One row per trial, in Optuna's naming: ``values_<objective>``, ``params_<name>``, ``user_attrs_<name>``.

    ``user_attrs_*`` holds every other attribute the study recorded (options, node, reruns, ...), so
    nothing in storage is left out.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    objectives = list(report.objectives)
    extra = sorted({k for t in report.trials for k in t.attrs} - set(DERIVED) - {"strategy"})
    writer.writerow(
        ["run", "number", "state", "strategy", "series"]
        + [f"values_{o}" for o in objectives]
        + list(DERIVED)
        + list(INTERVALS)
        + [f"params_{p}" for p in report.param_names]
        + [f"user_attrs_{k}" for k in extra]
    )
    for t in report.trials:
        writer.writerow(
            [t.run, t.number, t.state, t.strategy, t.series]
            + [_cell(t.values.get(o)) for o in objectives]
            + [_cell(getattr(t, a)) for a in DERIVED]
            + [_cell(end) for iv in (t.val_interval, t.test_interval) for end in _ends(iv)]
            + [_cell(t.params.get(p)) for p in report.param_names]
            + [_cell(t.attrs.get(k)) for k in extra]
        )
    return buffer.getvalue()


def _ends(iv: Interval | None) -> tuple[float | None, float | None]:
    return (None, None) if iv is None else (iv.low, iv.high)


def _cell(value: object) -> str:
    """Empty for missing; floats at full precision (``repr``) so the CSV round-trips; containers as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


