"""The strategy interface: what SNL, DeepReDuce, CryptoNAS and third-party strategies implement.

A strategy takes a model space entry, data, a cached full-ReLU teacher and a ReLU budget, and returns
a model whose ReLU sites carry masks (and, where the strategy changes the architecture, the model
name and options that rebuild it). Its options are a frozen dataclass: the field names are the
``--set`` keys, the type hints validate them, ``__post_init__`` checks ranges and raises SearchError.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from search.data import Dataset, DatasetInfo
from search.errors import SearchError
from search.options import validate
from search.relu import relu_count
from search.train import TrainConfig

if TYPE_CHECKING:
    import optuna


@dataclass
class Context:
    """What one linearization works with; built by ``search.linearize`` or by a study trial."""

    model_name: str
    model_options: dict[str, Any]
    data: Dataset
    budget: int | None
    device: torch.device
    seed: int
    teacher: Callable[[], nn.Module]
    cache_dir: Path
    log: Callable[[str], None] = print
    early_stop: bool = True  # stop (TargetOutOfReach) once the budget is clearly out of reach
    train_overrides: Mapping[str, Any] = field(default_factory=dict)  # --set train.KEY: TrainConfig fields, typed

    def final_training(self, config: TrainConfig) -> TrainConfig:
        """:func:`final_training` with this run's ``train.KEY`` options."""
        return final_training(config, self.train_overrides)


def final_training(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """``config`` of the strategy's last training phase (the one whose model is the result) with the
    user's ``train.KEY`` options (``overrides``, typed) applied over it: every knob of a paper's recipe
    is settable without each strategy declaring it again. ``run`` and ``phases`` both go through here."""
    return dataclasses.replace(config, **overrides)


@dataclass
class Phase:
    """One training phase of a run, as :meth:`Strategy.phases` declares it for ``--dry-run``'s
    estimate (:mod:`search.estimate`): the network in the state it trains in, and its recipe.

    ``teacher``: ``fit`` gets the full-ReLU teacher (it distils when ``config.kd_weight`` > 0 too).
    ``up_to``: the epochs are a cap the phase may stop before (SNL's mask phase ends at its budget).
    ``runs``: how many times it trains (SNL's finetuning, once per budget). ``penalty``: the
    ``extra_loss`` fit adds every step (SNL's Lasso). ``about``: the network, in a few words.
    """

    name: str
    network: nn.Module
    config: TrainConfig
    teacher: bool = False
    up_to: bool = False
    runs: int = 1
    penalty: Callable[[nn.Module], torch.Tensor] | None = None
    about: str = ""

    @property
    def distils(self) -> bool:
        """Whether every step also runs the teacher forward (as :class:`search.train.TrainStep`)."""
        return self.teacher and self.config.kd_weight > 0


@dataclass
class Outcome:
    """A linearized model and how to rebuild it. ``relus`` comes from ``search.relu.relu_count``."""

    model: nn.Module
    model_name: str
    model_options: dict[str, Any]
    relus: int
    val_acc: float
    details: dict[str, Any] = field(default_factory=dict)


class TargetOutOfReach(SearchError):
    """Raised by a strategy training down to a ReLU target once it can no longer reach it within its
    epochs (only with ``Context.early_stop``); a study records the trial PRUNED with this reason."""


class OverBudget(SearchError):
    """No plan within the budget: a fixed plan over it (checked by a study's trial before training), or
    none of the plans a strategy may choose itself (DeepReDuce, also after measuring criticality). A
    study records the trial infeasible, with ``relus`` the smallest such plan's count."""

    def __init__(self, message: str, relus: int) -> None:
        super().__init__(message)
        self.relus = relus


class PlanNeedsTraining(SearchError):
    """Raised by :meth:`Strategy.plan` when only training can tell the plan's ReLU count."""


class PhasesUnknown(SearchError):
    """Raised by :meth:`Strategy.phases` of a strategy that does not declare its training phases:
    ``--dry-run`` then says its compute estimate is unavailable."""


class Strategy(ABC):
    """Base class of a ReLU-reduction strategy. Subclasses set ``name`` and ``Options``.

    ``trains_to_budget`` marks strategies whose count is whatever budget they are given (SNL): a study
    hands each of their trials a sampled ReLU target as its budget, so trials spread along the front.
    """

    name: ClassVar[str]
    Options: ClassVar[type]
    summary: ClassVar[str] = ""
    trains_to_budget: ClassVar[bool] = False
    uses_target: ClassVar[bool] = False  # its suggest() sizes the trial to the study's sampled ``relu_target``
    shares_path: ClassVar[bool] = False  # run_budgets serves several budgets from one run (a study trial keeps its path)
    uses_soft_masks: ClassVar[bool] = False  # trains search.masked_relu's soft masks (a study readies their CPU kernel first)

    def default_params(self, dataset: str, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The documented default recipe, given the ``fixed`` options (typed, from ``--set``), as study
        parameters (``<name>/<option>``) of the options that are not fixed: a study's first trial of
        this strategy runs it, so the sampler starts from a known-good point. Options whose default is
        None and has no per-dataset value (``Options.resolved(dataset)``) are left to it."""
        fixed = fixed or {}
        options = self.Options(**fixed)
        if hasattr(options, "resolved"):
            options = options.resolved(dataset)
        return {f"{self.name}/{f.name}": getattr(options, f.name) for f in dataclasses.fields(options)
                if getattr(options, f.name) is not None and f.name not in fixed}

    def parse_options(self, raw: Mapping[str, Any]) -> Any:
        """Typed, range-checked options from ``--set`` strings or sampled values."""
        return self.Options(**validate(self.Options, raw, f"strategy {self.name}"))

    @abstractmethod
    def suggest(self, trial: optuna.Trial, budget: int | None) -> dict[str, Any]:
        """Sample this strategy's hyperparameters define-by-run, named ``<name>/<option>``;
        returns them keyed by option name (without the prefix). A strategy whose ranges depend on
        the dataset or on the options the user fixed may take keywords ``dataset`` and ``fixed`` (typed
        options by name) as well; the study passes them where accepted. A fixed option asked of
        ``trial`` comes back as its fixed value, unsampled."""

    def plan(self, model_name: str, model_options: Mapping[str, Any], input_size: tuple[int, int, int], num_classes: int, options: Any) -> nn.Module:
        """The model this strategy would train, masks set, built without training, so its ReLU count
        can be checked against a budget first. Raises PlanNeedsTraining, saying why, when only
        training can tell (SNL learns its masks)."""
        raise PlanNeedsTraining(f"strategy {self.name} learns its result by training; its ReLU count is known only afterwards")

    def preview(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budget: int | None, options: Any) -> str:
        """What :meth:`run` would do, for ``--dry-run``: the checks ``run`` makes before it trains
        (raising the same SearchError), and a short description. No data, no training.

        The default describes :meth:`plan` when one exists; override it when ``run`` refuses some
        inputs before training, so a dry run refuses them too."""
        try:
            model = self.plan(model_name, model_options, info.input_shape, info.num_classes, options)
        except PlanNeedsTraining as why:
            return f"ReLU count known after training ({why})"
        return f"{relu_count(model, info.input_shape):,} ReLUs (the strategy's plan for these options)"

    def phases(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budgets: Sequence[int],
               options: Any, train_overrides: Mapping[str, Any]) -> list[Phase]:
        """The training phases of one :meth:`run_budgets` over ``budgets`` (empty: no budget; one
        budget: what :meth:`run` trains), in order, without the full-ReLU teacher's (the pipeline's),
        for ``--dry-run``'s estimate. No data, no training; the same checks as :meth:`preview`.
        ``train_overrides`` are the ``train.KEY`` options, applied with :func:`final_training` to the
        last phase as ``run`` applies them. Build each config with the helper ``run`` uses, so the
        estimate cannot drift from the run.

        The default raises PhasesUnknown: a plug-in that does not declare its phases gets no estimate."""
        raise PhasesUnknown(f"strategy {self.name} does not declare its training phases (Strategy.phases)")

    def uses_teacher(self, options: Any) -> bool:
        """Whether :meth:`run` fetches the full-ReLU teacher (training it when it is not cached)."""
        return True

    @abstractmethod
    def run(self, ctx: Context, options: Any) -> Outcome:
        """Linearize: return the trained model with its final masks, at most ``ctx.budget`` ReLUs."""

    def run_budgets(self, ctx: Context, options: Any, budgets: list[int],
                    on_outcome: Callable[[int, Outcome | SearchError], None] | None = None) -> dict[int, Outcome | SearchError]:
        """Linearize for each of ``budgets``: each result, or the SearchError that stopped it, by budget,
        each handed to ``on_outcome`` as soon as it is known (so a caller saves it before the next one
        trains). This default runs :meth:`run` once per budget; a strategy whose one run passes every
        budget on its way down (SNL) overrides it to share that run (and sets ``shares_path``)."""
        results: dict[int, Outcome | SearchError] = {}
        for budget in budgets:
            try:
                results[budget] = self.run(dataclasses.replace(ctx, budget=budget), options)
            except SearchError as err:
                results[budget] = err
            if on_outcome is not None:
                on_outcome(budget, results[budget])
        return results
