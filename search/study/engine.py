"""The study: one multi-objective Optuna study over the chosen strategies, run by Ray Tune.

Optuna decides (define-by-run, in the driver), Ray Tune runs the trials (:mod:`search.study.trainable`) on this
machine or a cluster, and :class:`search.study.searcher.StudySearcher` records each result in the study's
persistent storage before its progress line is printed. Resuming needs nothing but that storage:
trials a killed driver left RUNNING are marked FAIL (interrupted) and enqueued again with the same
parameters, then the study runs until it has its number of finished trials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from search.objectives import Objective
from search.strategies import Strategy
from search.study import cluster
from search.study.artifacts import start_store
from search.study.searcher import StudySearcher, define_space
from search.study.storage import existing_trials, fail_running, make_sampler, open_storage, remaining_trials, settle_interrupted
from search.study.timeshare import TimeShare
from search.study.trainable import make_trainable
from search.study.trial import TrialSpec


@dataclass(frozen=True)
class Execution:
    """How to run a study (may change between a run and its resume; results do not depend on it)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    concurrency: int | None = None
    verbose: bool = False
    retries: int = 0  # times Ray Tune reruns a trial whose worker or node died (0: record it FAILED)


def run_study(
    run_dir: Path,
    study_name: str,
    storage_url: str,
    strategies: dict[str, Strategy],
    objectives: Sequence[Objective],
    spec: TrialSpec,
    sampler: str,
    seed: int,
    total: int | None,
    full_relus: int,
    execution: Execution,
    on_recorded: Callable[[FrozenTrial], None],
    log: Callable[[str], None] = print,
    minutes_per_strategy: float | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has ``total`` finished trials or, with
    ``minutes_per_strategy``, every strategy has used that much compute time (whichever comes first;
    ``total`` None: no cap), on the Ray this process is connected to (:func:`search.study.cluster.connect`);
    returns the study."""
    from ray import tune

    storage = open_storage(storage_url)
    resources = cluster.fit_resources(execution.cpus_per_trial, execution.gpus_per_trial, log)
    share = None
    if minutes_per_strategy is not None:  # a running trial uses a GPU's wall time, or each CPU it holds
        share = TimeShare(list(strategies), minutes_per_strategy * 60, 1.0 if resources.gpus else resources.cpus)
    searcher = StudySearcher(
        define_space(strategies, spec.budget or full_relus),
        objectives,
        make_sampler(sampler, seed + existing_trials(storage, study_name)),
        study_name,
        storage,
        spec.budget,
        on_recorded,
        share,
        log,
    )
    study = searcher.study
    settle_interrupted(study)
    remaining = remaining_trials(study, total) if total is not None else -1  # -1: until the time share ends it
    concurrency = execution.concurrency or max(1, int(_cluster_cpus() // resources.cpus))
    if share is not None and share.next_strategy(study) is None:
        log(f"every strategy has used its {minutes_per_strategy:g} min of compute time: no trial to run")
        remaining = 0
    if remaining:
        planned = f"{remaining} trial(s)" if remaining > 0 else "trials"
        if share is not None:
            planned += f" until each strategy has used {minutes_per_strategy:g} min of compute time"
        log(f"running {planned}, up to {concurrency} at a time")
        tuner = tune.Tuner(
            tune.with_resources(make_trainable(spec, start_store(run_dir)), {"cpu": resources.cpus, "gpu": resources.gpus}),
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=remaining, max_concurrent_trials=concurrency, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=study_name,
                storage_path=str((run_dir / "tune").resolve()),
                verbose=1 if execution.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=execution.retries),
            ),
        )
        tuner.fit()
    fail_running(study)
    return study


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
