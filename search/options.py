"""Typed ``--set key=value`` options.

Models are built by functions with keyword arguments and strategies take dataclasses; both declare
their options with type hints and defaults. This module reads those declarations, so a new model or
strategy option is validated (unknown key, wrong type, value outside a ``Literal``) without writing a
parser for it.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from search.errors import SearchError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _NotFinite(SearchError):
    """A float option given NaN or an infinity."""


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["k=v", ...]`` into a dict, rejecting malformed or repeated keys."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SearchError(f"--set expects key=value, got {pair!r}")
        if key in out:
            raise SearchError(f"--set {key} given twice")
        out[key] = value.strip()
    return out


def declared_options(target: Callable[..., Any] | type) -> dict[str, tuple[Any, Any]]:
    """Option name -> (type hint, default) for a dataclass or a function's keyword arguments."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        return {
            f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(target)
            if f.init
        }
    hints = typing.get_type_hints(target)
    options = {}
    for name, param in inspect.signature(target).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in ("num_classes", "input_size"):
            continue
        options[name] = (hints.get(name, type(param.default)), param.default)
    return options


def describe(hint: Any) -> str:
    """Human-readable description of the values a type hint accepts."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin in (tuple, list):
        inner = typing.get_args(hint)[0]
        return "a comma-separated list" + ("" if inner is str else " of " + describe(inner))
    if _is_enum(hint):
        return "one of " + ", ".join(hint.__members__)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    return "a string"


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (usually a string from the command line) to ``hint``, or raise SearchError."""
    origin = typing.get_origin(hint)
    bad = SearchError(f"bad value {value!r} for {key}: expected {describe(hint)}")
    if origin is Literal:
        for allowed in typing.get_args(hint):
            try:
                if coerce(key, value, type(allowed)) == allowed:
                    return allowed
            except SearchError:
                continue
        raise bad
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and (value is None or str(value).lower() in ("none", "")):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except _NotFinite as err:
                bad = err  # "1e400" is a number, just not a usable one: say that, not "expected a number"
            except SearchError:
                continue
        raise bad
    if origin in (tuple, list):
        (inner, *_rest) = typing.get_args(hint)
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        return origin(coerce(key, item.strip() if isinstance(item, str) else item, inner) for item in items)
    if _is_enum(hint):  # kept as the member's name: options stay plain data (checkpoints, run.json)
        name = value.name if isinstance(value, hint) else str(value)
        if name not in hint.__members__:
            raise bad
        return name
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad
    if hint is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise bad from None
        if not number.is_integer():
            raise bad
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):  # no option here means anything at NaN or infinity
            raise _NotFinite(f"bad value {value!r} for {key}: expected a finite number")
        return number
    if hint is str:
        return str(value)
    return value


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


def show_default(value: object, unset: str = "automatic") -> str:
    """A default as a user would type it; None is shown as ``unset``: for a strategy it means the
    strategy picks (per dataset or budget), for a model factory it is often just none."""
    if value is None:
        return unset
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def show_options(options: object) -> str:
    """Every option a strategy will use, as ``--set`` would spell it (dataclass options; else its repr)."""
    if not dataclasses.is_dataclass(options) or isinstance(options, type):
        return repr(options)
    return ", ".join(f"{k}={show_default(v)}" for k, v in dataclasses.asdict(options).items()) or "none"


def option_lines(declared: Mapping[str, tuple[Any, Any]], unset: str = "automatic") -> list[str]:
    """One ``--set`` line per declared option: its name, the values it accepts and its default."""
    return [f"  --set {key}=...  {describe(hint)} (default: {show_default(default, unset)})"
            for key, (hint, default) in declared.items()]


def validate(target: Callable[..., Any] | type, raw: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Check ``raw`` against the options ``target`` declares and return them typed.

    ``what`` names the owner in messages, e.g. ``"model resnet18"``.
    """
    declared = declared_options(target)
    typed = {}
    for key, value in raw.items():
        if key not in declared:
            accepted = ", ".join(sorted(declared)) or "none"
            raise SearchError(f"unknown option {key!r} for {what}; accepted: {accepted}")
        typed[key] = coerce(key, value, declared[key][0])
    return typed
