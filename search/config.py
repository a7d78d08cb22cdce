"""``--config FILE``: a command's options in a YAML file, keyed by their long names.

The file is read with ``yaml.safe_load`` (PyYAML: a well-kept parser; the safe loader builds plain
data only) and its values become the parser's defaults, so the command line still wins: a flag given
there replaces the file's value, and a ``--set KEY=VALUE`` replaces the file's ``set`` entry of the
same key (other entries are kept). A key ``about`` (a mapping, e.g. ``source`` and ``reproduces``)
describes the file, as the recipes under ``recipes/`` do; the command prints it and ignores it
otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from search.errors import SearchError

ABOUT = "about"


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s arguments over its ``--config`` file (when given); the file's ``about`` mapping is
    ``args.about`` (empty without a file)."""
    args = parser.parse_args(argv)
    args.about = {}
    if not args.config:
        return args
    given_sets = list(getattr(args, "sets", None) or [])
    values, about = read_config(args.config, parser)
    parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if "sets" in values:
        args.sets = merge_sets(values["sets"], given_sets)
    args.about = about
    return args


def merge_sets(from_file: Sequence[str], given: Sequence[str]) -> list[str]:
    """The file's ``set`` entries with those the command line gives for the same key replaced."""
    merged = {pair.partition("=")[0].strip(): pair for pair in from_file}
    merged.update({pair.partition("=")[0].strip(): pair for pair in given})
    return list(merged.values())


def _show(item: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in item.items()) if isinstance(item, dict) else str(item)


def describe_about(path: str, about: dict[str, Any]) -> str:
    """One line per ``about`` entry, for the top of a run's output."""
    lines = [f"config {path}"]
    for key, value in about.items():
        items = value if isinstance(value, list) else [value]
        lines.extend(f"  {key}: {_show(item)}" for item in items)
    return "\n".join(lines)


def read_config(path: str, parser: argparse.ArgumentParser) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--config`` FILE (YAML, safe-loaded) as argparse defaults, and its ``about`` mapping (empty
    when absent); unknown keys and values of the wrong type are errors naming them."""

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SearchError(f"cannot read --config {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise SearchError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise SearchError(f"--config {path} must hold a mapping of option: value, not {type(raw).__name__}")
    about = raw.pop(ABOUT, None) or {}
    if not isinstance(about, dict) or not all(isinstance(k, str) for k in about):
        raise SearchError(f"bad value for {ABOUT} in --config {path}: expected a mapping such as source: TEXT")
    actions = {a.option_strings[-1].removeprefix("--"): a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "version", "config", "resume")}
    unknown = [str(k) for k in raw if str(k).replace("_", "-") not in actions]
    if unknown:
        raise SearchError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in --config {path}; "
                          f"accepted: {', '.join(sorted([*actions, ABOUT]))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        action = actions[str(key).replace("_", "-")]
        values[action.dest] = _config_value(path, str(key), value, action)
    return values, about


def _config_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` as the command line would have given it for ``action``."""
    bad = f"bad value {value!r} for {key} in --config {path}: expected "
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SearchError(bad + "true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items):
            raise SearchError(bad + "a list of KEY=VALUE strings")
        return [str(i) for i in items]
    if isinstance(value, (dict, list, bool)):
        raise SearchError(bad + ("a number" if action.type in (int, float) else "a string"))
    if action.type in (int, float):
        try:
            number = action.type(value)
        except (TypeError, ValueError):
            raise SearchError(bad + ("an integer" if action.type is int else "a number")) from None
        if number != value and not isinstance(value, str):
            raise SearchError(bad + "an integer")
        return number
    return str(value)


