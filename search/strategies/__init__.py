"""Strategy registry: a name -> lazy-import table plus the ``search.strategies`` entry-point group.

Built-in strategies are imported only when asked for; a third-party package adds one by declaring
``[project.entry-points."search.strategies"] name = "pkg.module:Class"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from importlib.metadata import entry_points

from search.errors import SearchError
from search.options import declared_options, option_lines
from search.strategies.base import (
    Context,
    Outcome,
    OverBudget,
    Phase,
    PhasesUnknown,
    PlanNeedsTraining,
    Strategy,
    TargetOutOfReach,
)

ENTRY_POINT_GROUP = "search.strategies"

_BUILTIN: dict[str, str] = {
    "snl": "search.strategies.snl:SNL",
    "deepreduce": "search.strategies.deepreduce:DeepReDuce",
    "cryptonas": "search.strategies.cryptonas:CryptoNAS",
}


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _importable(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def list_strategies() -> list[str]:
    """Names of every strategy available: built-in ones present in this install, then plug-ins."""
    table = {**{k: v for k, v in _BUILTIN.items() if _importable(v)}, **_plugins()}
    return sorted(table)


def get_strategy(name: str) -> Strategy:
    """An instance of strategy ``name``, importing its module on first use.

    ``name`` may also be an import path ``package.module:Class``, for a strategy not installed as a
    plug-in (a script's own, or a test's).
    """
    target = _BUILTIN.get(name) or _plugins().get(name) or (name if ":" in name else None)
    if target is None or (name in _BUILTIN and not _importable(target)):
        raise SearchError(f"unknown strategy {name!r}; accepted: {', '.join(list_strategies()) or 'none installed'}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SearchError(f"strategy {name!r} could not be loaded from {target}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise SearchError(f"strategy {name!r} at {target} is not a search.strategies.Strategy subclass")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise SearchError(f"strategy {name!r} at {target} is abstract: it does not implement {missing}")
    return cls()


def describe_strategies() -> str:
    """One block per installed strategy: its summary and ``--set`` options (name, values, default).
    A plug-in that does not load says why in its block instead of hiding the others."""
    parts = []
    for name in list_strategies():
        try:
            strategy = get_strategy(name)
        except SearchError as err:
            parts.append(f"strategy {name}: cannot be loaded: {err}")
            continue
        parts.append("\n".join([f"strategy {name}: {strategy.summary}".rstrip(": "), *option_lines(declared_options(strategy.Options))]))
    return "\n\n".join(parts)


__all__ = ["Context", "Outcome", "OverBudget", "Phase", "PhasesUnknown", "PlanNeedsTraining", "Strategy", "TargetOutOfReach",
           "describe_strategies", "get_strategy", "list_strategies", "ENTRY_POINT_GROUP"]
