"""Route ``--set`` options to the model, the strategy or the training recipe that declares them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from search.errors import SearchError
from search.options import declared_options, parse_assignments, validate
from search.spaces import check_model_options, model_options
from search.strategies import Strategy
from search.train import TrainConfig


class Routed(NamedTuple):
    """``--set`` options by owner: typed model options, raw strategy options, and typed overrides of
    the teacher's recipe (``teacher.KEY``) and of the strategy's final training phase (``train.KEY``)."""

    model: dict[str, Any]
    strategy: dict[str, str]
    teacher: dict[str, Any]
    train: dict[str, Any]


def split_settings(pairs: list[str], model_name: str, strategy: Strategy | None) -> Routed:
    """``--set`` pairs routed to their owners.

    A key goes where it is declared; ``model.key`` / ``strategy.key`` force the owner where both
    declare it; ``teacher.key`` and ``train.key`` are fields of :class:`search.train.TrainConfig`.
    Unknown keys are an error listing what is accepted.
    """
    raw = parse_assignments(pairs)
    model_keys = set(model_options(model_name))
    strategy_keys = set(declared_options(strategy.Options)) if strategy else set()
    to_model: dict[str, Any] = {}
    to_strategy: dict[str, str] = {}
    recipes: dict[str, dict[str, str]] = {owner: {} for owner in RECIPE_OWNERS}
    for key, value in raw.items():
        owner, dot, bare = key.partition(".")
        if dot and owner in RECIPE_OWNERS:
            recipes[owner][bare] = value
        elif dot and owner in ("model", "strategy"):
            (to_model if owner == "model" else to_strategy)[bare] = value
        elif key in model_keys and key in strategy_keys:
            raise SearchError(f"option {key!r} exists for both the model and the strategy; write model.{key} or strategy.{key}")
        elif key in strategy_keys:
            to_strategy[key] = value
        elif key in model_keys:
            to_model[key] = value
        else:
            accepted = sorted(model_keys | strategy_keys)
            owner_text = f"model {model_name}" + (f" or strategy {strategy.name}" if strategy else "")
            raise SearchError(f"unknown option {key!r} for {owner_text}; accepted: {', '.join(accepted) or 'none'} "
                              "(and teacher.KEY / train.KEY for the training recipes)")
    return Routed(check_model_options(model_name, to_model), to_strategy,
                  recipe_overrides(recipes["teacher"], "teacher"), recipe_overrides(recipes["train"], "train"))


RECIPE_OWNERS = ("teacher", "train")


def recipe_overrides(raw: Mapping[str, str], owner: str) -> dict[str, Any]:
    """``owner.KEY=VALUE`` options typed as fields of :class:`TrainConfig`, their ranges checked."""
    typed = validate(TrainConfig, raw, f"the {owner} recipe (--set {owner}.KEY)")
    TrainConfig(**typed)  # range checks, before anything is loaded or trained
    return typed


def parse_budget(text: str | int | None, full: int) -> int | None:
    """A ReLU budget: a count, or a percentage of the model's full count (``"10%"``).

    A count must be a whole number (``50000``, ``5e4``, ``50,000``); a percentage rounds down to a
    count. Non-finite numbers are refused here rather than overflowing in the conversion.
    """
    if text is None:
        return None
    raw = str(text).strip().replace(",", "").replace("_", "")
    percent = raw.endswith("%")
    try:
        number = float(raw[:-1] if percent else raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or (not percent and not number.is_integer()):
        raise SearchError(f"bad budget {text!r}: expected a whole ReLU count or a percentage such as 10%")
    budget = int(number / 100 * full) if percent else int(number)
    if budget <= 0 or budget > full:
        raise SearchError(f"budget {text} is out of range: expected 1..{full:,} (the model's full ReLU count) or 0-100%")
    return budget


def parse_budgets(text: str, full: int) -> list[int]:
    """One budget or a comma list of them (``5%,10%,25%`` or ``2000,5000``), each as :func:`parse_budget`
    reads it, without repeats, in the order given. A number written with thousands separators
    (``50,000``) is one count."""
    if re.fullmatch(r"\s*\d{1,3}(,\d{3})+\s*", text):
        parts = [text]
    else:
        parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise SearchError(f"bad budget {text!r}: expected a whole ReLU count, a percentage such as 10%, or a comma list of them")
    return list(dict.fromkeys(parse_budget(part, full) for part in parts))  # type: ignore[misc]


def describe_options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
