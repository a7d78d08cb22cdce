"""Small real strategies for study tests, loaded by import path (``tests.strategies_for_tests:Quick``).

``Quick`` and ``Coarse`` really trade accuracy for ReLUs on digits in a second or two: they start from
the cached teacher, switch ReLU positions off and finetune briefly. ``Boom`` raises and ``NotANumber``
returns a NaN accuracy, so tests can watch the study record failures and go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from search.errors import SearchError
from search.relu import relu_count, sites
from search.spaces import build_model
from search.strategies import Context, Outcome, Strategy
from search.train import fit, teacher_config


def _from_teacher(ctx: Context) -> nn.Module:
    """A copy of the cached teacher (all ReLUs on), its sites traced."""
    info = ctx.data.info
    model = _build(ctx.model_name, ctx.model_options, info.input_shape, info.num_classes)
    model.load_state_dict(ctx.teacher().state_dict())
    return model


def _finetune(ctx: Context, model: nn.Module, epochs: int) -> float:
    """Finetune ``model`` (masks set) with KD from the teacher; the best validation accuracy."""
    teacher = ctx.teacher()
    config = replace(teacher_config(ctx.data.info.name), epochs=epochs, lr=0.01, kd_weight=1.0, seed=ctx.seed)
    return fit(model, ctx.data, config, ctx.device, teacher=teacher, log=ctx.log, label="finetune").best_val_acc


def _build(model_name: str, model_options: Mapping[str, Any], input_size: tuple[int, int, int], num_classes: int) -> nn.Module:
    model = build_model(model_name, num_classes=num_classes, input_size=input_size, **model_options)
    relu_count(model, input_size)  # traces every site's shape
    return model


@dataclass(frozen=True)
class QuickOptions:
    keep: float = 0.5
    epochs: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.keep <= 1.0:
            raise SearchError(f"bad value {self.keep} for keep: expected a fraction in [0, 1]")


class Quick(Strategy):
    """Keep a random fraction of ReLU positions (pixel masks), finetune from the teacher."""

    name = "quick"
    Options = QuickOptions
    summary = "keep a sampled fraction of ReLU positions, finetune briefly"

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {"keep": trial.suggest_float("quick/keep", 0.02, 1.0)}

    @staticmethod
    def _mask(model: nn.Module, options: QuickOptions) -> nn.Module:
        generator = torch.Generator().manual_seed(0)
        for site in sites(model):
            site.set_mask(torch.rand(site.mask_shape("pixel"), generator=generator) < options.keep)
        return model

    def plan(self, model_name, model_options, input_size, num_classes, options):  # type: ignore[no-untyped-def]
        return self._mask(_build(model_name, model_options, input_size, num_classes), options)

    def run(self, ctx: Context, options: QuickOptions) -> Outcome:
        info = ctx.data.info
        model = self._mask(_from_teacher(ctx), options)
        val_acc = _finetune(ctx, model, options.epochs)
        return Outcome(model, ctx.model_name, ctx.model_options, relu_count(model, info.input_shape), val_acc)


@dataclass(frozen=True)
class CoarseOptions:
    off: int = 0
    epochs: int = 1


class Coarse(Strategy):
    """Switch off whole sites, first ones first (a stage-level strategy in miniature)."""

    name = "coarse"
    Options = CoarseOptions
    summary = "switch off the first N ReLU sites, finetune briefly"

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {"off": trial.suggest_int("coarse/off", 0, 6)}

    @staticmethod
    def _cull(model: nn.Module, options: CoarseOptions) -> nn.Module:
        for site in sites(model)[: options.off]:
            site.switch_off()
        return model

    def plan(self, model_name, model_options, input_size, num_classes, options):  # type: ignore[no-untyped-def]
        return self._cull(_build(model_name, model_options, input_size, num_classes), options)

    def run(self, ctx: Context, options: CoarseOptions) -> Outcome:
        info = ctx.data.info
        model = self._cull(_from_teacher(ctx), options)
        val_acc = _finetune(ctx, model, options.epochs)
        return Outcome(model, ctx.model_name, ctx.model_options, relu_count(model, info.input_shape), val_acc)


@dataclass(frozen=True)
class NoOptions:
    pass


class Boom(Strategy):
    """Always raises: the study must record the trial FAILED with this reason and go on."""

    name = "boom"
    Options = NoOptions

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context, options: NoOptions) -> Outcome:
        raise RuntimeError("deliberate failure from the Boom test strategy")


class NotANumber(Strategy):
    """Returns a linear model (no ReLUs, within any budget) with a NaN accuracy: the study must record
    the trial FAILED."""

    name = "nan"
    Options = NoOptions

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context, options: NoOptions) -> Outcome:
        info = ctx.data.info
        model = _build(ctx.model_name, ctx.model_options, info.input_shape, info.num_classes)
        for site in sites(model):
            site.switch_off()
        return Outcome(model, ctx.model_name, ctx.model_options, relu_count(model, info.input_shape), float("nan"))
