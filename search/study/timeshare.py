"""Equal compute time per strategy (``--minutes-per-strategy``): which strategy runs next, and when
the study is done.

Comparing strategies by trial count favours the cheap ones: a CryptoNAS trial trains one small
network, an SNL trial trains masks then finetunes. Under a time share every strategy gets the same
compute time instead. Each finished trial records its ``compute_seconds`` (:mod:`search.study.trial`: CPU
time of the trial's processes on a CPU, wall time on a GPU). A trial still running counts as the larger
of its elapsed wall time times the CPUs it holds and the average of its strategy's finished trials:
with several trials at once, counting only elapsed time would let a strategy just under its share
start trials it has no time left for. The next trial goes to the strategy that has used the least,
among those with time left; when none has any, the study starts no more trials, and the ones running
finish. Everything is read back from the study's storage, so a resumed study continues the same
accounting (an interrupted trial's time is not known and is not counted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import optuna

from search.errors import SearchError


def check_minutes(minutes: float) -> None:
    """A ``--minutes-per-strategy`` value, or a SearchError saying what is accepted."""
    if not minutes > 0:
        raise SearchError(f"bad value {minutes:g} for --minutes-per-strategy: expected minutes > 0")


class TimeShare:
    """The compute time each strategy of a study may use, and what it has used so far."""

    def __init__(self, strategies: Sequence[str], seconds_each: float, running_rate: float = 1.0) -> None:
        check_minutes(seconds_each / 60)
        self.strategies = list(strategies)
        self.seconds_each = seconds_each
        self.running_rate = running_rate  # compute seconds a running trial uses per wall second
        self._running: dict[str, tuple[str, float]] = {}  # Tune trial id -> (strategy, monotonic start)

    def used(self, study: optuna.Study) -> dict[str, float]:
        """Compute seconds per strategy: finished trials as recorded, running ones estimated."""
        used = dict.fromkeys(self.strategies, 0.0)
        finished = dict.fromkeys(self.strategies, 0)
        for trial in study.get_trials(deepcopy=False):
            name = trial.user_attrs.get("strategy")
            if name in used and trial.state.is_finished() and "compute_seconds" in trial.user_attrs:
                used[name] += float(trial.user_attrs["compute_seconds"])
                finished[name] += 1
        typical = {name: used[name] / finished[name] if finished[name] else 0.0 for name in self.strategies}
        now = time.monotonic()
        for name, started in self._running.values():
            used[name] += max((now - started) * self.running_rate, typical[name])
        return used

    def next_strategy(self, study: optuna.Study) -> str | None:
        """The strategy with time left that has used the least (ties: the order given), or None."""
        used = self.used(study)
        left = [name for name in self.strategies if used[name] < self.seconds_each]
        return min(left, key=lambda name: used[name]) if left else None

    def started(self, trial_id: str, strategy: str) -> None:
        self._running[trial_id] = (strategy, time.monotonic())

    def finished(self, trial_id: str) -> None:
        self._running.pop(trial_id, None)

    def summary(self, study: optuna.Study) -> str:
        """One progress line: minutes used of each strategy's share."""
        used = self.used(study)
        shares = ", ".join(f"{name} {used[name] / 60:.1f}" for name in self.strategies)
        return f"compute time used (of {self.seconds_each / 60:g} min each): {shares} min"
