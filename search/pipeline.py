"""One linearization from start to end: validate, load data, fetch the teacher, run the strategy,
evaluate the test set once, save. ``search.linearize`` and every study trial go through here.

Validation (:func:`prepare`) touches no data and trains nothing, so bad input fails in a moment.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from search.checkpoint import save_model
from search.data import Dataset, Loader, dataset_info, load_dataset
from search.errors import SearchError
from search.relu import relu_count
from search.spaces import build_model, check_model_options
from search.strategies import Context, Outcome, Strategy, get_strategy
from search.teacher import default_cache_dir, get_teacher
from search.train import TrainConfig, evaluate, pick_device, seed_everything, teacher_config


@dataclass
class Job:
    """A request for one linearization, as the command line or a study trial states it."""

    strategy: str
    dataset: str = "digits"
    model: str | None = None
    budget: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    teacher_epochs: int | None = None  # shorthand for teacher_options["epochs"]
    teacher_options: dict[str, Any] = field(default_factory=dict)  # typed TrainConfig fields (--set teacher.KEY)
    train_options: dict[str, Any] = field(default_factory=dict)  # the final training phase's (--set train.KEY)
    device: str = "auto"
    cache_dir: str | None = None
    out: str | None = None
    early_stop: bool = True  # a strategy training to a target may stop once it is out of reach


@dataclass
class Prepared:
    """A validated job: strategy instance, typed options, the model's full ReLU count."""

    job: Job
    strategy: Strategy
    options: Any
    model_name: str
    model_options: dict[str, Any]
    full_relus: int
    teacher_recipe: TrainConfig


@dataclass
class Result:
    outcome: Outcome
    test_acc: float
    teacher: dict[str, Any]
    seconds: float

    def summary_line(self) -> str:
        return f"relus={self.outcome.relus} val_acc={self.outcome.val_acc:.4f} test_acc={self.test_acc:.4f}"


def full_relu_count(model_name: str, model_options: Mapping[str, Any], dataset: str) -> int:
    info = dataset_info(dataset)
    model = build_model(model_name, num_classes=info.num_classes, input_size=info.input_shape, **model_options)
    return relu_count(model, info.input_shape)


def prepare(job: Job) -> Prepared:
    """Check every name, option and the budget, without loading data or training."""
    info = dataset_info(job.dataset)
    strategy = get_strategy(job.strategy)
    options = strategy.parse_options(job.strategy_options)
    model_name = job.model or info.default_model
    model_options = check_model_options(model_name, job.model_options)
    full = full_relu_count(model_name, model_options, job.dataset)
    if job.budget is not None and not 0 < job.budget <= full:
        raise SearchError(f"budget {job.budget} is out of range: expected 1..{full:,} (the model's full ReLU count)")
    recipe = teacher_config(job.dataset, job.teacher_epochs, job.teacher_options)  # bad values fail before data loads
    replace(TrainConfig(), **job.train_options)  # and so do bad train.KEY values
    pick_device(job.device)
    return Prepared(job, strategy, options, model_name, model_options, full, recipe)


def execute(
    prepared: Prepared, log: Callable[[str], None] = print, data: Dataset | None = None
) -> Result:
    """Run a prepared job; ``data`` may be passed in when the caller has it loaded already."""
    start = time.perf_counter()
    ctx, teacher_record = _context(prepared, log, data)
    outcome = prepared.strategy.run(ctx, prepared.options)
    return _finish(prepared, ctx, outcome, prepared.job.budget, prepared.job.out, teacher_record, start)


def execute_budgets(
    prepared: Prepared, budgets: list[int], log: Callable[[str], None] = print, data: Dataset | None = None,
    on_result: Callable[[int, Result | SearchError], None] | None = None,
) -> dict[int, Result | SearchError]:
    """Run a prepared job once for several budgets (``Strategy.run_budgets``: SNL shares one mask phase
    among them); each budget's result or the SearchError that stopped it, in the order of ``budgets``.
    Each result is finished (test accuracy; with ``job.out`` saved to :func:`budget_path`) and handed
    to ``on_result`` as soon as the strategy has it, before the next budget trains."""
    start = time.perf_counter()
    ctx, teacher_record = _context(prepared, log, data)
    results: dict[int, Result | SearchError] = {}

    def finish(budget: int, outcome: Outcome | SearchError) -> None:
        out = str(budget_path(prepared.job.out, budget)) if prepared.job.out else None
        results[budget] = outcome if isinstance(outcome, SearchError) else _finish(
            prepared, ctx, outcome, budget, out, teacher_record, start)
        if on_result is not None:
            on_result(budget, results[budget])

    prepared.strategy.run_budgets(ctx, prepared.options, budgets, on_outcome=finish)
    return {budget: results[budget] for budget in budgets}


def budget_path(out: str | Path, budget: int) -> Path:
    """Where the model of one of several budgets is saved: ``snl.pt`` -> ``snl-460.pt``."""
    path = Path(out)
    return path.with_name(f"{path.stem}-{budget}{path.suffix}")


def _context(prepared: Prepared, log: Callable[[str], None], data: Dataset | None) -> tuple[Context, dict[str, Any]]:
    """The strategy's Context (data loaded, the teacher fetched on first use and the same module after,
    however many of a strategy's helpers ask for it) and the teacher's record, filled once fetched."""
    job = prepared.job
    device = pick_device(job.device)
    seed_everything(job.seed)
    data = data or load_dataset(job.dataset, job.data_dir, job.download)
    cache_dir = Path(job.cache_dir) if job.cache_dir else default_cache_dir()
    recipe = prepared.teacher_recipe
    teacher_record: dict[str, Any] = {}

    @functools.cache
    def teacher() -> nn.Module:
        model, record = get_teacher(prepared.model_name, prepared.model_options, data, recipe, device, cache_dir, log)
        teacher_record.update(record)
        return model

    ctx = Context(prepared.model_name, prepared.model_options, data, job.budget, device, job.seed, teacher, cache_dir, log,
                  early_stop=job.early_stop, train_overrides=job.train_options)
    return ctx, teacher_record


def _finish(prepared: Prepared, ctx: Context, outcome: Outcome, budget: int | None, out: str | None,
            teacher_record: dict[str, Any], start: float) -> Result:
    """Check the outcome's count against the model and ``budget``, evaluate the test set once, save to ``out``."""
    job, data = prepared.job, ctx.data
    counted = relu_count(outcome.model, data.info.input_shape)
    if counted != outcome.relus:
        raise RuntimeError(f"strategy {job.strategy} reported {outcome.relus} ReLUs but the model has {counted}")
    if budget is not None and counted > budget:
        raise RuntimeError(f"strategy {job.strategy} returned {counted:,} ReLUs, over the budget of {budget:,}")
    test_acc = evaluate(outcome.model, Loader(data.test, data.info, 512, ctx.device))
    result = Result(outcome, test_acc, teacher_record, time.perf_counter() - start)
    if out:
        save_model(
            outcome.model,
            out,
            outcome.model_name,
            outcome.model_options,
            data.info.num_classes,
            data.info.input_shape,
            {
                "strategy": job.strategy,
                "dataset": job.dataset,
                "relus": counted,
                "val_acc": outcome.val_acc,
                "test_acc": test_acc,
                "budget": budget,
                "details": _plain(outcome.details),
            },
        )
        ctx.log(f"saved {out}")
    return result


def _plain(value: Any) -> Any:
    """Reduce ``value`` to what ``torch.load(weights_only=True)`` accepts: containers, str, numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
