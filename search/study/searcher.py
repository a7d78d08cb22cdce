"""The study's Ray Tune searcher: Ray's OptunaSearch, plus what a trustworthy study needs.

Ray's ``OptunaSearch`` asks Optuna for a trial and tells it the result. On its own it leaves a trial
RUNNING forever when a value is NaN or missing, knows nothing of why a trial failed, and cannot tell
a trial which Optuna trial it is. This subclass (checked against Ray 2.60's source):

- passes each trial its Optuna trial number, strategy and options (``config["_trial"]``);
- records every finished trial itself (:func:`search.study.storage.record`), and the points of an SNL
  trial's mask path as trials of their own: COMPLETE with values,
  PRUNED when the plan was over the ReLU budget (never in the Pareto front), FAIL with
  ``fail_reason``, and the user attributes of ``search.study.rundir.TRIAL_ATTRS``; a constraint
  ``relus - budget`` (Optuna's ``set_constraint``) lets the sampler learn where the budget lies; a
  trial Tune stopped after it saved its result (``trials/<n>/result.json``) is recorded from that;
- on a storage fault (read-only, disk full, server gone) records nothing more, asks for no more
  trials and sets :attr:`StudySearcher.fault`, which stops the study (:mod:`search.study.engine`);
- stores a running trial's learning curve (Optuna intermediate values) once Tune has let the trial go
  on, so the storage writes are not part of the trial's wait for the driver;
- calls ``on_recorded`` with the stored trial only after storage has it, so a progress line never
  runs ahead of the storage;
- under a :class:`~search.study.timeshare.TimeShare`, fixes each new trial's strategy to the one that has
  used the least compute time (an enqueued ``strategy`` parameter, so the sampler still samples the
  rest) and tells Tune the search is finished once every strategy has had its time;
- does not pickle itself into Tune's experiment checkpoints: the Optuna storage is the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.objectives import Objective
from search.study.artifacts import append_log, read_result
from search.study.storage import INTERRUPTED, STORAGE_ERRORS, fail, fault_reason, record, store_curve
from search.study.timeshare import TimeShare

CRASHED = "the trial's Ray worker died (see the Ray logs of the run)"


class StudySearcher(OptunaSearch):
    """OptunaSearch that records trials completely and reports each one once it is stored."""

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict[str, Any]],
        objectives: Sequence[Objective],
        sampler: optuna.samplers.BaseSampler,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        run_dir: Path,
        budget: int | None,
        on_recorded: Callable[[FrozenTrial], None],
        share: TimeShare | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self._objectives = list(objectives)
        self._run_dir = run_dir
        self._budget = budget
        self.fault = ""  # set when the storage or the run directory cannot be written: the study stops
        self.pruned: dict[str, str] = {}  # Tune trial id -> why the rung rule stopped it
        self._unstored: dict[str, list[str]] = {}  # Tune trial id -> curves reported, not stored yet (store_curves)
        self._on_recorded = on_recorded
        self._share = share
        self._log = log
        super().__init__(
            space=space,
            metric=[o.name for o in objectives],
            mode=["max" if o.direction == "maximize" else "min" for o in objectives],
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.fault:
            return Searcher.FINISHED
        try:
            return self._suggest(trial_id)
        except STORAGE_ERRORS as err:
            self._storage_fault(err)
            return Searcher.FINISHED

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._share is None or trial_id in self._ot_trials:
            return super().suggest(trial_id)
        study = self._ot_study
        strategy = self._share.next_strategy(study)
        if strategy is None:
            return Searcher.FINISHED
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if len(self._share.strategies) > 1 and not waiting:  # a rerun waiting keeps its own strategy
            study.enqueue_trial({"strategy": strategy})
        config = super().suggest(trial_id)
        self._share.started(trial_id, self._ot_trials[trial_id].user_attrs.get("strategy", strategy))
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Progress of a running trial: the validation accuracies of the epochs it carries become the
        trial's intermediate values (its learning curve) at the next :meth:`store_curves`. Not here:
        Tune lets the trial go on only after this returns, and a storage write per epoch (a few ms
        each in SQLite) would hold a trial waiting at a rung for most of its round trip."""
        if trial_id not in self._ot_trials or self.fault or result.get("status") != "running" or trial_id in self._completed_trials:
            return
        self._unstored.setdefault(trial_id, []).append(result.get("curve") or "[]")

    def store_curves(self, trial_ids: Sequence[str] | None = None) -> None:
        """Store the learning-curve points reported since the last call (of ``trial_ids``, or of every
        trial): called once Tune has let the reporting trials go on (:func:`search.study.engine.curve_writer`)
        and before a trial is recorded, since a finished trial takes no more intermediate values."""
        for trial_id in list(self._unstored) if trial_ids is None else trial_ids:
            curves = self._unstored.pop(trial_id, [])
            if self.fault:
                continue
            try:
                for curve in curves:
                    store_curve(self._ot_study, self._ot_trials[trial_id]._trial_id, curve)
            except STORAGE_ERRORS as err:
                self._storage_fault(err)

    def _prune_at_rung(self, trial_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """A trial the rung rule stopped: Tune hands its rung report here, not to :meth:`on_trial_result`
        (its curve points are stored with it, by ``record``)."""
        return {**result, "status": "pruned", "reason": self.pruned[trial_id], "seconds": result.get("elapsed_s")}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or self.fault:
            return
        self.store_curves([trial_id])
        if self._share is not None:
            self._share.finished(trial_id)
        trial = self._ot_trials[trial_id]
        status = (result or {}).get("status")
        at_rung = status == "running" and trial_id in self.pruned  # stopped by the rung rule (search.study.halving)
        if at_rung:
            result = self._prune_at_rung(trial_id, result or {})
        elif status in (None, "running"):  # Tune stopped it, or its worker died: did it save a result?
            result = read_result(self._run_dir, trial.number)
        try:
            path: list[FrozenTrial] = []
            if result is None:
                fail(self._ot_study, trial, CRASHED if error else INTERRUPTED)
            else:
                path = record(self._ot_study, trial, result, [o.name for o in self._objectives], self._budget)
            stored = self._ot_study._storage.get_trial(trial._trial_id)
        except STORAGE_ERRORS as err:
            self._storage_fault(err)
            return
        self._completed_trials.add(trial_id)
        if result is not None and result.get("storage_error"):
            self.fault = f"cannot write trial {trial.number}'s files in {self._run_dir}: {result['storage_error']}"
        if at_rung:  # the trial's own log ends at its last epoch: say why it went no further
            try:
                append_log(self._run_dir, trial.number, f"stopped early by the rung rule: {self.pruned[trial_id]}\n")
            except OSError as err:
                self.fault = f"cannot write trial {trial.number}'s log in {self._run_dir}: {fault_reason(err)}"
        self._on_recorded(stored)
        for point in path:
            self._on_recorded(point)
        if self._share is not None:
            self._log(self._share.summary(self._ot_study))

    def _storage_fault(self, err: BaseException) -> None:
        """Stop the study: the storage cannot be written (read-only, disk full, server gone)."""
        self.fault = f"cannot write the study storage: {fault_reason(err)}"

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: every trial is in the Optuna storage, which ``--resume`` reads."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see :meth:`save`."""
