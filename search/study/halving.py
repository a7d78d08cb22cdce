"""Multi-objective successive halving: stop a trial another trial already beats on both objectives.

Optuna's pruners and Ray Tune's ASHA rank trials by one number; here a trial has two (accuracy up,
ReLUs down), and a trial with fewer ReLUs is allowed a lower accuracy. The rule, written once:

    At each rung (the epoch at 25 % and at 50 % of a trial's final training phase), a trial whose
    validation accuracy is lower, by more than ``MARGIN``, than that of another trial of the same
    strategy at the same rung of the same phase, with no more ReLUs, is stopped and recorded PRUNED
    with the reason (``prune_reason``); its learning curve up to the rung stays in the storage.

Only the phase that ends a trial counts (``finetune`` or ``train``): a teacher, a criticality profile
or SNL's mask phase are not the trial's result, and their accuracies are not comparable. A trial is
compared only once its count is known (its plan's, or the count its masks were frozen at). The rule
is deterministic given the order in which trials reach their rungs, which with one trial at a time
is the order of the trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RUNGS = (0.25, 0.5)
MARGIN = 0.01  # accuracy, as a fraction: one point
FINAL_PHASES = ("finetune", "train")


def rung_of(epoch: int, epochs: int) -> float | None:
    """The rung ``epoch`` of ``epochs`` is (None for none): the first epoch at or past each fraction,
    never the last epoch (the trial is done then)."""
    for fraction in RUNGS:
        if epoch == max(1, math.ceil(fraction * epochs)) and epoch < epochs:
            return fraction
    return None


@dataclass(frozen=True)
class RungValue:
    trial: int  # Optuna trial number
    val_acc: float
    relus: int


@dataclass
class Rungs:
    """Every trial's values at every rung so far, and the decision for a new one."""

    margin: float = MARGIN
    seen: dict[tuple[str, str, int, float], list[RungValue]] = field(default_factory=dict)

    def judge(self, strategy: str, phase: str, epoch: int, epochs: int, value: RungValue) -> str | None:
        """Record ``value`` if this epoch is a rung of a final phase; the reason to stop it, or None."""
        rung = rung_of(epoch, epochs)
        if phase not in FINAL_PHASES or rung is None:
            return None
        key = (strategy, phase, epochs, rung)
        others = self.seen.setdefault(key, [])
        better = [o for o in others if o.relus <= value.relus and o.val_acc > value.val_acc + self.margin]
        others.append(value)
        if not better:
            return None
        best = max(better, key=lambda o: o.val_acc)
        return (f"dominated at {rung:.0%} of {phase} (epoch {epoch}/{epochs}): val_acc {value.val_acc:.4f} with "
                f"{value.relus:,} ReLUs, trial {best.trial} had {best.val_acc:.4f} with {best.relus:,} "
                f"(margin {self.margin:g})")


def rung_scheduler(rungs: Rungs, pruned: dict[str, str]) -> Any:
    """A Ray Tune scheduler applying :class:`Rungs` to every running trial's reports; the reason for
    each trial it stops goes to ``pruned`` (Tune trial id -> reason), which the searcher records."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from search.study.trial import TRIAL_KEY

    class RungScheduler(FIFOScheduler):
        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            relus = result.get("relus")
            if result.get("status") != "running" or not isinstance(relus, (int, float)) or not math.isfinite(relus):
                return TrialScheduler.CONTINUE
            decided = trial.config[TRIAL_KEY]
            value = RungValue(int(decided["number"]), float(result["val_acc"]), int(relus))
            reason = rungs.judge(str(decided["strategy"]), str(result["phase"]), int(result["epoch"]), int(result["epochs"]), value)
            if reason is None:
                return TrialScheduler.CONTINUE
            pruned[trial.trial_id] = reason
            return TrialScheduler.STOP

        def __reduce__(self) -> tuple[Any, ...]:  # Tune pickles its config; the rungs live in this process
            return (FIFOScheduler, ())

    return RungScheduler()
