"""The Optuna side of a study, without Ray: samplers, storage, and the trial bookkeeping of resume.

Kept apart from :mod:`search.study.engine` so the command line can check names and storage URLs (and fail
in one line) without importing Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import SearchError
from search.objectives import Objective, pareto_front

SAMPLERS = ("tpe", "nsga2", "gp", "random")
INTERRUPTED = "interrupted before it finished (rerun by --resume)"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler; all four handle several objectives and ReLU-budget constraints."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB URL (``sqlite:///path``, ``postgresql://...``) or ``journal:PATH`` (Optuna's journal file)."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        if "://" not in url:
            raise ValueError("not a URL")
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    except Exception as err:  # bad URL, missing driver, unreachable server
        raise SearchError(
            f"cannot open study storage {url!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
            "expected an RDB URL such as sqlite:///study.db or postgresql://user@host/db, or journal:PATH"
        ) from None


def finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards the study's total (an interrupted one does not: it is rerun)."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_reason") != INTERRUPTED
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def settle_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING as FAIL (interrupted) and enqueue each interrupted trial once more
    with its parameters; returns how many were enqueued."""
    fail_running(study)
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    again = [t for t in trials if t.state == TrialState.FAIL and not finished(t) and t.number not in rerun]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number, "strategy": trial.user_attrs.get("strategy")})
    return len(again)


def fail_running(study: optuna.Study) -> None:
    """Mark every RUNNING trial FAIL (interrupted): nothing of this study is running any more."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def remaining_trials(study: optuna.Study, total: int) -> int:
    return max(0, total - sum(finished(t) for t in study.get_trials(deepcopy=False)))


def existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials the study already has (0 for a new one): offsets the sampler's seed on resume,
    so a resumed random sampler does not replay the first run's samples."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name))
    except KeyError:
        return 0


def pareto_trials(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrozenTrial]:
    """Completed, feasible trials on the Pareto front, best accuracy first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible", True)]
    front = [done[i] for i in pareto_front([t.values for t in done], [o.direction for o in objectives])]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1]))
