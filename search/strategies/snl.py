"""SNL (Cho et al., ICML 2022): selective network linearization by a Lasso on learned ReLU masks.

Starting from the trained full-ReLU teacher, every ReLU site gets a soft mask of ones (per pixel or
per channel). Adam trains weights and masks on CE + KD + lambda * sum |mask|; after each epoch the
ReLUs whose mask is above epsilon are counted with :func:`search.relu.relu_count`, and lambda grows by
kappa on every epoch (after a warm-up) that did not set a new low. Once the count is within the budget
the masks are made binary and frozen, and the network is finetuned with KD.

Beyond the released code: the mask phase ends at the first count within the budget, counted during
the epoch too (:class:`_MaskPhase`), one mask phase serves several budgets (a snapshot at
each), the budget is met exactly (the B highest mask values keep their
ReLU), the paper's channel variant is available, the finetuned checkpoint is selected on the
validation split (not the test set), and a run that has not reached the budget after ``max_epochs``
fails saying so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from search import progress
from search.data import DatasetInfo, Loader
from search.errors import SearchError
from search.relu import ReLUSite, active_relus, relu_count, sites, trace_shapes
from search.spaces import build_model
from search.strategies.base import Context, Outcome, Phase, Strategy, TargetOutOfReach, final_training
from search.train import EpochStats, TrainConfig, evaluate, fit

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class _Defaults:
    lam: float
    lr: float
    batch_size: int
    max_epochs: int
    finetune_epochs: int


# The released recipe (lambda 1e-5, Adam 1e-3, batch 128, 100 finetune epochs) for image datasets.
# Digits has 20 batches an epoch: Adam moves a mask by at most about lr per step, so at 1e-3 a mask
# needs ~50 epochs to fall from 1 to epsilon. A larger step and a Lasso that dominates the noise of
# the task gradient bring a 10% budget within ~6 epochs, so a whole run takes seconds.
DATASET_DEFAULTS: dict[str, _Defaults] = {
    "digits": _Defaults(lam=1e-2, lr=3e-2, batch_size=64, max_epochs=40, finetune_epochs=10),
}
RELEASED_DEFAULTS = _Defaults(lam=1e-5, lr=1e-3, batch_size=128, max_epochs=100, finetune_epochs=100)


@dataclass(frozen=True)
class SNLOptions:
    """``--set`` options of SNL. None means the per-dataset default (the released recipe, except a
    shorter, faster schedule on digits)."""

    lam: float | None = None
    kappa: float = 1.1
    epsilon: float = 1e-2
    granularity: Literal["pixel", "channel"] = "pixel"
    lr: float | None = None
    batch_size: int | None = None
    warmup: int = 5
    max_epochs: int | None = None
    finetune_epochs: int | None = None
    finetune_lr: float = 1e-3
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    exact_budget: bool = True
    count_every: int | None = None  # optimizer steps between ReLU counts in the mask phase (see _MaskPhase)

    def __post_init__(self) -> None:
        checks = [
            ("lam", self.lam, self.lam is None or self.lam >= 0, "a number >= 0"),
            ("kappa", self.kappa, self.kappa > 1, "a number > 1"),
            ("epsilon", self.epsilon, self.epsilon > 0, "a number > 0"),
            ("lr", self.lr, self.lr is None or self.lr > 0, "a number > 0"),
            ("batch_size", self.batch_size, self.batch_size is None or self.batch_size >= 1, "an integer >= 1"),
            ("warmup", self.warmup, self.warmup >= 0, "an integer >= 0"),
            ("max_epochs", self.max_epochs, self.max_epochs is None or self.max_epochs >= 1, "an integer >= 1"),
            ("finetune_epochs", self.finetune_epochs, self.finetune_epochs is None or self.finetune_epochs >= 0, "an integer >= 0"),
            ("finetune_lr", self.finetune_lr, self.finetune_lr > 0, "a number > 0"),
            ("kd_weight", self.kd_weight, self.kd_weight >= 0, "a number >= 0"),
            ("kd_temperature", self.kd_temperature, self.kd_temperature > 0, "a number > 0"),
            ("count_every", self.count_every, self.count_every is None or self.count_every >= 0,
             "an integer >= 0 (0: count at epoch ends only, as the released code)"),
        ]
        for key, value, ok, expected in checks:
            if not ok:
                raise SearchError(f"bad value {value} for {key}: expected {expected}")

    def resolved(self, dataset: str) -> SNLOptions:
        """These options with every None replaced by the default for ``dataset``. A ``max_epochs``
        shorter than the recipe's scales the default lam up by the square of the ratio
        (:func:`short_schedule_lam`)."""
        base = DATASET_DEFAULTS.get(dataset, RELEASED_DEFAULTS)
        return replace(
            self,
            lam=self.lam if self.lam is not None else short_schedule_lam(base.lam, base.max_epochs, self.max_epochs),
            lr=self.lr if self.lr is not None else base.lr,
            batch_size=self.batch_size if self.batch_size is not None else base.batch_size,
            max_epochs=self.max_epochs if self.max_epochs is not None else base.max_epochs,
            finetune_epochs=self.finetune_epochs if self.finetune_epochs is not None else base.finetune_epochs,
        )


def short_schedule_lam(lam: float, recipe_epochs: int, max_epochs: int | None) -> float:
    """The recipe's ``lam`` for a mask phase of ``max_epochs`` instead of ``recipe_epochs``: times
    (recipe_epochs / max_epochs) squared when shorter. Once for the fewer epochs the Lasso has to pull
    the count down, and once more because a long schedule also compounds lambda by kappa over its many
    epochs without a new low, which a short one never gets to. Scaling once was measured too weak: on
    the CIFAR-10 subset with 6 mask epochs (resnet18 width 0.25, a 3,500-ReLU target) the released
    1e-5 times 100/6 still left 104k of 139k ReLUs after 2 epochs, where times (100/6)^2 reaches the
    target in the second epoch (``benchmarks/bench_snl_short_schedule.py``, BENCHMARKS.md)."""
    if max_epochs is None or max_epochs >= recipe_epochs:
        return lam
    return lam * (recipe_epochs / max_epochs) ** 2


class _Lasso:
    """``lam * sum |mask|``, each mask entry weighted by the ReLUs it controls (1 per pixel, H*W per
    channel), so one lambda means the same pressure per ReLU at either granularity. ``lam`` is mutable:
    the kappa schedule raises it between epochs."""

    def __init__(self, masked: list[ReLUSite], lam: float) -> None:
        self.lam = lam
        self.terms = [(site, float(site.size // site.mask.numel())) for site in masked]  # type: ignore[union-attr]

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = sum(weight * site.mask.abs().sum() for site, weight in self.terms)  # type: ignore[union-attr]
        return self.lam * total  # type: ignore[return-value]


LAM_RANGE = 30.0  # SNL samples lam from the recipe's up to this many times it (SNL.suggest)


REACH_SPEEDUP = 2.0  # how much faster (in log terms) than its best epoch so far the count may still fall


def travel_epochs(lr: float, epsilon: float, steps_per_epoch: int) -> float:
    """The fewest epochs in which Adam can take a mask from 1 to ``epsilon``: it moves a parameter by
    about ``lr`` per step at most, so no count can fall before then."""
    return (1.0 - epsilon) / (lr * max(steps_per_epoch, 1))


def out_of_reach(counts: list[int], full: int, budget: int, epochs_left: int) -> bool:
    """SNL's early-stop rule, judged once the masks have had time to move (:func:`travel_epochs`,
    and the warm-up): True when even an optimistic projection misses the budget.

    The projection repeats, for every remaining epoch, the best fall of any epoch so far (as a ratio
    of counts, the first epoch measured from the full count), ``REACH_SPEEDUP`` times faster in log
    terms, allowing for lambda growing by kappa on stalled epochs. A count that has not fallen at all
    by then is out of reach.
    """
    if not counts or counts[-1] <= budget:
        return False
    ratios = [after / before for before, after in zip([full, *counts[:-1]], counts) if before > 0]
    best = min(min(ratios), 1.0)
    if best <= 0.0:
        return False
    projected = math.log(counts[-1]) + REACH_SPEEDUP * epochs_left * math.log(best)
    return projected > math.log(budget)


NEAR_BUDGET = 2.0  # within this factor of a budget, the mask phase counts after every optimizer step
CHECKS_PER_EPOCH = 20  # before that, how often per epoch it counts by default


@dataclass
class _Snapshot:
    """The model when the count was first within one budget: what a run to that budget alone stops with."""

    state: dict[str, torch.Tensor]  # weights and soft masks
    count: int  # ReLUs above epsilon then
    steps: int  # optimizer steps of the mask phase until then
    counts: list[int]  # the count at each epoch's end until then, the last one the count at the stop
    lambdas: list[float]


class _MaskPhase:
    """SNL's mask phase on its way down to one or several budgets: the hooks :func:`search.train.fit`
    calls after every optimizer step (:meth:`step_end`) and every epoch (:meth:`epoch_end`).

    Counting: the ReLUs above epsilon are counted every ``every`` optimizer steps, and after every
    step once the count is within ``NEAR_BUDGET`` times a budget (:func:`search.relu.active_relus`, a
    reduction over the masks, no forward pass), and at each epoch's end. The first count
    within a budget keeps a :class:`_Snapshot` for it. Counting only at epoch ends, as the released
    code does (``every`` 0), lets one epoch of a short schedule take a count from 139,264 to 305 for a
    budget of 6,963, after which ``exact_budget`` refills the budget from masks already below epsilon.
    Each budget is watched on the steps a run to it alone would count on, so its snapshot is that run's.

    Schedule, at each epoch's end: lambda grows by kappa on every epoch (after the warm-up) without a
    new low. With ``early_stop``, a budget still pending is dropped into :attr:`failures` once
    :func:`out_of_reach` says so (judged after the warm-up and the masks' travel time). The phase
    ends once no budget is pending.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        budgets: list[int],
        lasso: _Lasso,
        kappa: float,
        warmup: int,
        log: Callable[[str], None],
        full: int = 0,
        max_epochs: int = 0,
        early_stop: bool = False,
        travel: float = 0.0,
        every: int = 0,
    ) -> None:
        self.model, self.input_shape, self.lasso, self.log = model, input_shape, lasso, log
        self.kappa, self.warmup, self.every = kappa, warmup, every
        self.full, self.max_epochs, self.early_stop = full, max_epochs, early_stop
        self.judge_after = max(warmup, travel, 1.0)  # epochs before which no fall can be expected
        self.pending = sorted(set(budgets), reverse=True)
        self.near = dict.fromkeys(self.pending, False)
        self.snapshots: dict[int, _Snapshot] = {}
        self.failures: dict[int, str] = {}
        self.lowest: int | None = None
        self.counts: list[int] = []
        self.lambdas: list[float] = []
        self.steps = 0

    def step_end(self) -> bool:
        """After an optimizer step: count where a budget is due; True once no budget is pending."""
        self.steps += 1
        due = [b for b in self.pending if self.every and (self.near[b] or self.steps % self.every == 0)]
        if not due:
            return False
        count = active_relus(self.model)
        for budget in due:
            self.near[budget] = count <= NEAR_BUDGET * budget
        self._keep_within(count, due, mid_epoch=True)
        return not self.pending

    def epoch_end(self, stats: EpochStats) -> bool:
        """After an epoch: count, keep budgets reached, grow lambda, judge reach; True once none is pending."""
        count = relu_count(self.model, self.input_shape)
        self.counts.append(count)
        self.lambdas.append(self.lasso.lam)
        improved = self.lowest is None or count < self.lowest
        if improved:
            self.lowest = count
        elif stats.epoch > self.warmup:
            self.lasso.lam *= self.kappa
        shown = ", ".join(f"{b:,}" for b in self.pending) or "reached"
        self.log(f"snl epoch {stats.epoch}: relus {count:,} (budget {shown}), lambda {self.lambdas[-1]:.3g}")
        progress.note_relus(count)
        self._keep_within(count, list(self.pending), mid_epoch=False)
        if self.early_stop:
            for budget in list(self.pending):
                reason = self._out_of_reach(budget, stats.epoch, count)
                if reason:
                    self.failures[budget] = reason
                    self.pending.remove(budget)
        return not self.pending

    def _keep_within(self, count: int, budgets: list[int], mid_epoch: bool) -> None:
        """Snapshot each of ``budgets`` that ``count`` is within; a snapshot's record ends with this count
        (mid-epoch: after the epochs finished so far, as a run stopped here would record it)."""
        for budget in budgets:
            if budget in self.pending and count <= budget:
                counts = [*self.counts, count] if mid_epoch else list(self.counts)
                lambdas = [*self.lambdas, self.lasso.lam] if mid_epoch else list(self.lambdas)
                self.snapshots[budget] = _Snapshot(copy.deepcopy(self.model.state_dict()), count, self.steps, counts, lambdas)
                self.pending.remove(budget)

    def _out_of_reach(self, budget: int, epoch: int, count: int) -> str | None:
        """Why ``budget`` can no longer be reached within ``max_epochs`` (None while it can)."""
        if self.judge_after >= self.max_epochs:
            return (f"snl cannot reach {budget:,} ReLUs in max_epochs={self.max_epochs}: at this lr Adam needs about "
                    f"{self.judge_after:.0f} epochs to move a mask from 1 to epsilon; stopped early (raise lr or max_epochs, "
                    "or --no-early-stop)")
        if epoch > self.judge_after and out_of_reach(self.counts, self.full, budget, self.max_epochs - epoch):
            return (f"snl cannot reach {budget:,} ReLUs in max_epochs={self.max_epochs}: still {count:,} after epoch "
                    f"{epoch} (lambda {self.lasso.lam:.3g}), and even twice its best fall per epoch so far would not get "
                    "there; stopped early (raise lam, kappa or max_epochs, or --no-early-stop)")
        return None


def select_top(masked: list[ReLUSite], budget: int) -> int:
    """Replace the soft masks by frozen binary ones keeping the ``budget`` highest-scoring ReLUs.

    A mask entry covering k ReLUs (k = H*W for channel masks) is kept only if it still fits, so the
    count is <= budget and as close to it as the entry sizes allow. Returns the kept count.
    """
    scores = torch.cat([site.mask.detach().flatten().float().cpu() for site in masked])  # type: ignore[union-attr]
    weights = torch.cat(
        [torch.full((site.mask.numel(),), site.size // site.mask.numel(), dtype=torch.long) for site in masked]  # type: ignore[union-attr]
    )
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(len(scores), dtype=torch.bool)
    sorted_weights = weights[order]
    prefix = int((torch.cumsum(sorted_weights, 0) <= budget).sum())
    keep[order[:prefix]] = True
    room = budget - int(sorted_weights[:prefix].sum())
    if room > 0 and prefix < len(order) and int(sorted_weights[prefix:].min()) <= room:
        for index, weight in zip(order[prefix:].tolist(), sorted_weights[prefix:].tolist()):
            if weight <= room:
                keep[index] = True
                room -= weight
    start = 0
    for site in masked:
        mask = site.mask  # type: ignore[union-attr]
        site.set_mask(keep[start : start + mask.numel()].view(mask.shape).to(mask.device))
        site.count_threshold = 0.0
        start += mask.numel()
    return budget - room


def _mask_config(opts: SNLOptions, info: DatasetInfo, seed: int) -> TrainConfig:
    """The mask phase's recipe (``opts`` resolved): Adam on weights and masks, constant lr, no weight
    decay; ``max_epochs`` is a cap, the phase ends at its budget."""
    return _phase_config(opts, info, seed, epochs=opts.max_epochs, optimizer="adam", lr=opts.lr, weight_decay=0.0,
                         schedule="constant")


def _finetune_config(opts: SNLOptions, info: DatasetInfo, seed: int) -> TrainConfig:
    """The finetuning recipe (``opts`` resolved), before the user's ``train.KEY`` options: SGD with
    momentum 0.9, weight decay 5e-4, cosine, as released."""
    return _phase_config(opts, info, seed, epochs=opts.finetune_epochs, optimizer="sgd", lr=opts.finetune_lr, momentum=0.9,
                         weight_decay=5e-4, schedule="cosine")


def _phase_config(opts: SNLOptions, info: DatasetInfo, seed: int, **recipe: Any) -> TrainConfig:
    """What both phases share: the batch, the dataset's augmentation, KD from the teacher."""
    return TrainConfig(batch_size=opts.batch_size, augment=info.augment, kd_weight=opts.kd_weight,  # type: ignore[arg-type]
                       kd_temperature=opts.kd_temperature, seed=seed, **recipe)


def _require_budget(budget: int | None) -> int:
    if budget is None:
        raise SearchError("strategy snl needs a ReLU budget (--budget N or a percentage such as 10%)")
    return budget


class SNL(Strategy):
    name = "snl"
    Options = SNLOptions
    trains_to_budget = True
    shares_path = True
    uses_target = True
    uses_soft_masks = True
    summary = (
        "Selective Network Linearization (Cho et al. 2022): learn per-pixel or per-channel ReLU masks with "
        "a Lasso penalty (lambda grown by kappa on epochs without a new low) until the count is within the "
        "budget, binarize, finetune with KD. Beyond the released code: the budget is met exactly "
        "(exact_budget keeps the B highest-scoring ReLUs), the paper's channel variant "
        "(granularity=channel), the finetuned checkpoint is selected on the validation split, not the test "
        "set, and a run still over budget after max_epochs fails with that reason. lam, lr, batch_size, "
        "max_epochs and finetune_epochs default per dataset: the released 1e-5, 1e-3, 128 and 100 "
        "finetune epochs (max_epochs 100) on image datasets; 1e-2, 3e-2, 64, 10 (max_epochs 40) on digits. "
        "A max_epochs below the recipe's scales the default lam up by (recipe/max_epochs)^2. The mask phase ends at "
        "the first count within the budget: counted 20 times an epoch, and every step once within twice the "
        "budget (count_every=N: every N steps; 0: at epoch ends only, as the released code)."
    )

    def suggest(self, trial: optuna.Trial, budget: int | None, dataset: str | None = None,
                fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """lam from the recipe's up to 30 times it, lr from a third of the recipe's up to it: a
        smaller lam or lr than the recipe's moves the masks too slowly to reach a target within
        max_epochs (Adam moves a mask by about lr per step; the Lasso pull grows with lam), so such
        samples would only be stopped early. The recipe is the dataset's, given a fixed max_epochs
        (:func:`short_schedule_lam` scales lam for a shorter one)."""
        recipe = SNLOptions(max_epochs=(fixed or {}).get("max_epochs")).resolved(dataset or "")
        return {
            "lam": trial.suggest_float("snl/lam", recipe.lam, LAM_RANGE * recipe.lam, log=True),  # type: ignore[operator]
            "kappa": trial.suggest_float("snl/kappa", 1.05, 1.5),
            "epsilon": trial.suggest_float("snl/epsilon", 1e-3, 1e-1, log=True),
            "lr": trial.suggest_float("snl/lr", recipe.lr / 3, recipe.lr, log=True),  # type: ignore[operator]
            "granularity": trial.suggest_categorical("snl/granularity", ["pixel", "channel"]),
        }

    def preview(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budget: int | None,
                options: SNLOptions) -> str:
        budget = _require_budget(budget)
        opts = options.resolved(info.name)
        return (
            f"learn {opts.granularity} masks until at most {budget:,} ReLUs remain (lam {opts.lam:g}, kappa {opts.kappa:g}, "
            f"lr {opts.lr:g}, batch {opts.batch_size}, up to {opts.max_epochs} epochs), then finetune "
            f"{opts.finetune_epochs} epochs with KD from the teacher"
        )

    def run(self, ctx: Context, options: SNLOptions) -> Outcome:
        budget = _require_budget(ctx.budget)
        (result,) = self.run_budgets(ctx, options, [budget]).values()
        if isinstance(result, SearchError):
            raise result
        return result

    def run_budgets(self, ctx: Context, options: SNLOptions, budgets: list[int],
                    on_outcome: Callable[[int, Outcome | SearchError], None] | None = None) -> dict[int, Outcome | SearchError]:
        """One mask phase down to the smallest budget, a snapshot of the masks the first time the count
        is within each budget (the masks a run to that budget alone would end with, same seed), then
        each snapshot binarized and finetuned on its own, in the order of ``budgets``: the first is
        labelled ``snl-finetune``, the others ``snl-path`` (phase ``path``: points along the same mask
        path, which a study's rung rule does not judge as the trial's own result)."""
        opts = options.resolved(ctx.data.info.name)
        info = ctx.data.info
        model = build_model(ctx.model_name, num_classes=info.num_classes, input_size=info.input_shape, **ctx.model_options)
        teacher = ctx.teacher()
        model.load_state_dict(teacher.state_dict())
        model.to(ctx.device)
        trace_shapes(model, info.input_shape)
        full = relu_count(model, info.input_shape)
        for budget in budgets:
            if not 0 < budget <= full:
                raise SearchError(f"budget {budget} is out of range: expected 1..{full:,} (the model's full ReLU count)")
        masked = sites(model)
        for site in masked:
            site.set_mask(torch.ones(site.mask_shape(opts.granularity), device=ctx.device), trainable=True)
            site.count_threshold = opts.epsilon
        lasso = _Lasso(masked, opts.lam)
        steps_per_epoch = math.ceil(len(ctx.data.train) / opts.batch_size)  # type: ignore[operator]
        phase = _MaskPhase(model, info.input_shape, budgets, lasso, opts.kappa, opts.warmup, ctx.log, full=full,
                           max_epochs=opts.max_epochs, early_stop=ctx.early_stop,  # type: ignore[arg-type]
                           travel=travel_epochs(opts.lr, opts.epsilon, steps_per_epoch),  # type: ignore[arg-type]
                           every=opts.count_every if opts.count_every is not None else max(1, steps_per_epoch // CHECKS_PER_EPOCH))
        mask_config = _mask_config(opts, info, ctx.seed)
        fit(model, ctx.data, mask_config, ctx.device, teacher=teacher, extra_loss=lasso, on_epoch_end=phase.epoch_end,
            on_step_end=phase.step_end, select_best=False, log=ctx.log, label="snl-mask")
        results: dict[int, Outcome | SearchError] = {}
        reached = [b for b in budgets if b in phase.snapshots]
        for budget in budgets:
            if budget in phase.snapshots:  # the last one finetunes the model itself, the others a copy
                student = model if budget == reached[-1] else copy.deepcopy(model)
                label = "snl-finetune" if budget == budgets[0] else "snl-path"
                results[budget] = self._finetune(ctx, opts, student, budget, phase.snapshots[budget], teacher, full, label)
            elif budget in phase.failures:
                results[budget] = TargetOutOfReach(phase.failures[budget])
            else:
                last = phase.counts[-1] if phase.counts else full
                results[budget] = SearchError(
                    f"snl did not reach the budget of {budget:,} ReLUs in max_epochs={opts.max_epochs} epochs "
                    f"(still {last:,}, lambda {lasso.lam:.3g}); raise max_epochs, lam, kappa or lr"
                )
            if on_outcome is not None:
                on_outcome(budget, results[budget])
        return results

    def _finetune(self, ctx: Context, opts: SNLOptions, model: nn.Module, budget: int, snapshot: _Snapshot,
                  teacher: nn.Module, full: int, label: str) -> Outcome:
        """Binarize the masks of ``snapshot`` (exactly ``budget`` ReLUs, or those above epsilon) and finetune with KD."""
        info = ctx.data.info
        model.load_state_dict(snapshot.state)
        masked = sites(model)
        if opts.exact_budget:
            select_top(masked, budget)
        else:
            for site in masked:
                site.binarize()
        binary_count = relu_count(model, info.input_shape)
        added = binary_count - snapshot.count if opts.exact_budget else 0  # every mask above epsilon is among the kept
        progress.note_relus(binary_count)
        ctx.log(f"snl: budget {budget:,} reached after {snapshot.steps:,} mask steps; masks binarized and frozen: "
                f"{binary_count:,} ReLUs ({snapshot.count:,} above epsilon at the stop, {added:,} added below it by exact_budget)")
        finetune_config = ctx.final_training(_finetune_config(opts, info, ctx.seed))
        if finetune_config.epochs:
            result = fit(model, ctx.data, finetune_config, ctx.device, teacher=teacher, select_best=True,
                         log=ctx.log, label=label)
            val_acc = result.best_val_acc
        else:
            val_acc = evaluate(model, Loader(ctx.data.val, info, 512, ctx.device))
        relus = relu_count(model, info.input_shape)
        details = {
            "granularity": opts.granularity,
            "mask_epochs": len(snapshot.counts),
            "counts": snapshot.counts,
            "lambdas": snapshot.lambdas,
            "final_lambda": snapshot.lambdas[-1] if snapshot.lambdas else opts.lam,
            "count_above_epsilon": snapshot.count,
            "added_below_epsilon": added,
            "mask_steps": snapshot.steps,
            "finetune_epochs": finetune_config.epochs,
            "full_relus": full,
            "options": {k: v for k, v in vars(opts).items()},
        }
        return Outcome(model, ctx.model_name, dict(ctx.model_options), relus, val_acc, details)

    def phases(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budgets: Sequence[int],
               options: SNLOptions, train_overrides: Mapping[str, Any]) -> list[Phase]:
        """One mask phase down to the smallest budget (up to ``max_epochs``), then one finetuning per
        budget, each of a network with binary masks at the budget spread over every site, as learned
        masks are (the finetuned networks differ only in which ReLUs they keep)."""
        budget = _require_budget(min(budgets, default=None))
        opts = options.resolved(info.name)
        learning = build_model(model_name, num_classes=info.num_classes, input_size=info.input_shape, **model_options)
        full = relu_count(learning, info.input_shape)
        masked = sites(learning)
        for site in masked:
            site.set_mask(torch.ones(site.mask_shape(opts.granularity)), trainable=True)
        binary = build_model(model_name, num_classes=info.num_classes, input_size=info.input_shape, **model_options)
        trace_shapes(binary, info.input_shape)
        scores = torch.Generator().manual_seed(0)
        for site in sites(binary):
            site.set_mask(torch.rand(site.mask_shape(opts.granularity), generator=scores), trainable=True)
        select_top(sites(binary), budget)
        smallest = " (the smallest budget)" if len(budgets) > 1 else ""
        return [
            Phase("mask", learning, _mask_config(opts, info, 0), teacher=True, up_to=True, penalty=_Lasso(masked, opts.lam),
                  about=f"soft {opts.granularity} masks on all {full:,} ReLUs"),
            Phase("finetune", binary, final_training(_finetune_config(opts, info, 0), train_overrides), teacher=True,
                  runs=len(budgets), about=f"binary masks at {budget:,} ReLUs{smallest}"),
        ]
