"""Random ReLU dropping: the baseline every ReLU-reduction method should beat.

Keeps a uniformly random set of exactly ``budget`` ReLU positions of the full-ReLU teacher (the rest
become the identity), then finetunes with distillation from that teacher. It shows the whole plug-in
surface: an options dataclass (the ``--set`` keys), ``suggest`` for studies, ``run`` returning an
:class:`~search.strategies.Outcome` whose ReLU count ``search`` checks with its own counter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from search.errors import SearchError
from search.relu import relu_count, sites
from search.spaces import build_model
from search.strategies import Context, Outcome, PlanNeedsTraining, Strategy
from search.train import fit, teacher_config


@dataclass(frozen=True)
class RandomDropOptions:
    """``--set`` options of strategy random_drop."""

    epochs: int = 5  # finetuning epochs
    lr: float = 0.01
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise SearchError(f"bad value {self.epochs} for epochs: expected an integer >= 0")
        if self.lr <= 0:
            raise SearchError(f"bad value {self.lr} for lr: expected a number > 0")


def keep_random(model: nn.Module, budget: int, seed: int) -> int:
    """Switch every ReLU position off except ``budget`` of them drawn uniformly; returns the kept count."""
    masked = sites(model)
    sizes = [site.size for site in masked]
    generator = torch.Generator().manual_seed(seed)
    keep = torch.zeros(sum(sizes), dtype=torch.bool)
    keep[torch.randperm(len(keep), generator=generator)[:budget]] = True
    for site, part in zip(masked, torch.split(keep, sizes)):
        site.set_mask(part.view(site.mask_shape("pixel")))
    return int(keep.sum())


class RandomDrop(Strategy):
    """Keep ``budget`` uniformly random ReLUs, finetune with KD."""

    name = "random_drop"
    Options = RandomDropOptions
    trains_to_budget = True  # its count is its budget: a study gives each trial a sampled target
    summary = "keep a uniformly random set of ReLUs within the budget, then finetune with KD (an example plug-in)"

    def suggest(self, trial: Any, budget: int | None) -> dict[str, Any]:
        return {"lr": trial.suggest_float("random_drop/lr", 1e-3, 1e-1, log=True)}

    def plan(self, model_name, model_options, input_size, num_classes, options):  # type: ignore[no-untyped-def]
        raise PlanNeedsTraining("its count is the run's budget")

    def run(self, ctx: Context, options: RandomDropOptions) -> Outcome:
        if ctx.budget is None:
            raise SearchError("strategy random_drop needs a ReLU budget (--budget)")
        info = ctx.data.info
        model = build_model(ctx.model_name, num_classes=info.num_classes, input_size=info.input_shape, **ctx.model_options)
        teacher = ctx.teacher()
        model.load_state_dict(teacher.state_dict())
        relu_count(model, info.input_shape)  # traces every site's shape
        kept = keep_random(model, ctx.budget, ctx.seed)
        ctx.log(f"random_drop: kept {kept:,} random ReLU positions")
        config = ctx.final_training(replace(teacher_config(info.name), epochs=options.epochs, lr=options.lr,
                                            kd_weight=options.kd_weight, seed=ctx.seed))
        result = fit(model, ctx.data, config, ctx.device, teacher=teacher, log=ctx.log, label="random_drop-finetune")
        return Outcome(model, ctx.model_name, dict(ctx.model_options), relu_count(model, info.input_shape),
                       result.best_val_acc, {"kept": kept, "epochs": config.epochs})
