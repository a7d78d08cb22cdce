"""A minimal strategy for testing the pipeline itself, loaded by import path ``tests.strategies_core:KeepAll``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from search.relu import relu_count
from search.spaces import build_model
from search.strategies import Context, Outcome, Strategy
from search.train import evaluate
from search.data import Loader


class KeepAll(Strategy):
    """Returns the cached teacher as it is: every ReLU kept."""

    name = "keepall"
    summary = "the full-ReLU teacher, unchanged"

    @dataclass(frozen=True)
    class Options:
        note: str = ""

    def suggest(self, trial: optuna.Trial, budget: int | None) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context, options: Any) -> Outcome:
        teacher = ctx.teacher()
        shape = ctx.data.info.input_shape
        model = build_model(ctx.model_name, num_classes=ctx.data.info.num_classes, input_size=shape, **ctx.model_options)
        model.load_state_dict(teacher.state_dict())
        model.to(ctx.device)
        val = evaluate(model, Loader(ctx.data.val, ctx.data.info, 512, ctx.device))
        return Outcome(model, ctx.model_name, dict(ctx.model_options), relu_count(model, shape), val)
