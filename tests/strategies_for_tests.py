"""Small real strategies for study tests, loaded by import path (``tests.strategies_for_tests:Quick``).

``Quick`` and ``Coarse`` really trade accuracy for ReLUs on digits in a second or two: they start from
the cached teacher, switch ReLU positions off and finetune briefly. ``Boom`` raises and ``NotANumber``
returns a NaN accuracy, so tests can watch the study record failures and go on. ``Nap`` sleeps and
``Hog`` fills memory, for the per-trial time and memory limits and for killing a node mid-trial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.data import Loader
from search.errors import SearchError
from search.relu import relu_count, sites
from search.spaces import build_model
from search.strategies import Context, Outcome, Strategy
from search.train import evaluate, fit, teacher_config


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
        relus = relu_count(model, info.input_shape)
        return Outcome(model, ctx.model_name, ctx.model_options, relus, val_acc, {"kept": relus, "asked": options.keep})


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


@dataclass(frozen=True)
class NapOptions:
    seconds: float = 1.0
    marker: str = ""  # a folder: on starting, the trial creates <node ip>-<pid> in it


class Nap(Strategy):
    """Sleeps ``seconds`` (fixed with ``--set seconds=S``), then scores the untrained model on the
    validation split: a trial whose length the test decides (time limits, a node killed mid-trial).
    With ``marker``, it says on which Ray node it started, so a test knows when a node is mid-trial."""

    name = "nap"
    Options = NapOptions

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {}

    def plan(self, model_name, model_options, input_size, num_classes, options):  # type: ignore[no-untyped-def]
        return _build(model_name, model_options, input_size, num_classes)  # all ReLUs on: the count is known

    def run(self, ctx: Context, options: NapOptions) -> Outcome:
        if options.marker:
            import ray.util

            Path(options.marker, f"{ray.util.get_node_ip_address()}-{os.getpid()}").touch()
        time.sleep(options.seconds)
        info = ctx.data.info
        model = _build(ctx.model_name, ctx.model_options, info.input_shape, info.num_classes).to(ctx.device)
        val_acc = evaluate(model, Loader(ctx.data.val, info, batch_size=256, device=ctx.device))
        return Outcome(model, ctx.model_name, ctx.model_options, relu_count(model, info.input_shape), val_acc)


@dataclass(frozen=True)
class HogOptions:
    mb: int = 4096


class Hog(Strategy):
    """Touches memory 64 MB at a time up to ``mb``, then raises: a trial under a lower memory limit
    must be stopped before that (the error says when it was not)."""

    name = "hog"
    Options = HogOptions

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context, options: HogOptions) -> Outcome:
        held = []
        for _ in range(options.mb // 64):
            held.append(np.ones(64 * 1024 * 1024, dtype=np.uint8))  # written, so resident
            time.sleep(0.02)
        raise RuntimeError(f"Hog held {options.mb} MB and nothing stopped it")


@dataclass(frozen=True)
class CurveOptions:
    epochs: int = 8
    seconds: float = 0.3  # per epoch


# Trial n of a Curve study: (final validation accuracy, ReLU sites switched off). Trial 1 has trial 0's
# count and a far lower curve: dominated at the first rung. Trial 2 is as low but has fewer ReLUs: spared.
CURVES = ((0.95, 0), (0.50, 0), (0.50, 2), (0.90, 1))


class Curve(Strategy):
    """Announces a known learning curve (no training): accuracy ``final * epoch / epochs`` for the
    trial's row of ``CURVES``, slow enough (``seconds`` per epoch) to be watched and stopped. The
    model it returns is the untrained one with the row's first sites switched off."""

    name = "curve"
    Options = CurveOptions

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {}

    def run(self, ctx: Context, options: CurveOptions) -> Outcome:
        from search import progress

        final, off = CURVES[ctx.seed % len(CURVES)]  # the study seeds trial n with seed + n (seed 0 here)
        info = ctx.data.info
        model = _build(ctx.model_name, ctx.model_options, info.input_shape, info.num_classes).to(ctx.device)
        for site in sites(model)[:off]:
            site.switch_off()
        relus = relu_count(model, info.input_shape)
        progress.note_relus(relus)
        for epoch in range(1, options.epochs + 1):
            time.sleep(options.seconds)
            ctx.log(f"curve epoch {epoch}/{options.epochs}")
            progress.epoch_done("train", epoch, options.epochs, final * epoch / options.epochs, options.seconds)
        return Outcome(model, ctx.model_name, ctx.model_options, relus, final)
