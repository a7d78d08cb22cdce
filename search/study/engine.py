"""The study: one multi-objective Optuna study over the chosen strategies, run by Ray Tune.

Optuna decides (define-by-run, in the driver), Ray Tune runs the trials (:mod:`search.study.trainable`) on this
machine or a cluster, and :class:`search.study.searcher.StudySearcher` records each result in the study's
persistent storage before its progress line is printed. Resuming needs nothing but that storage and
the run directory: a trial a killed driver left RUNNING is recorded from the result it saved
(``trials/<n>/result.json``) or, when it saved none, marked FAIL (interrupted) and enqueued again with
the same parameters; then the study runs until it has its number of finished trials.

How a study ends early: Ctrl-C stops the running trials (a second Ctrl-C stops at once), keeps every
trial that finished and raises :class:`~search.errors.RunInterrupted`; a storage or disk fault stops
the study the same way and raises a :class:`~search.errors.SearchError` naming the fault.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.errors import RunInterrupted, SearchError
from search.objectives import Objective
from search.strategies import Strategy
from search.study import cluster
from search.study.artifacts import start_store
from search.study.halving import Rungs, rung_scheduler
from search.study.samplers import make_sampler
from search.study.searcher import StudySearcher
from search.study.space import define_space, enqueue_defaults
from search.study.storage import (
    STORAGE_ERRORS,
    existing_trials,
    fault_reason,
    open_storage,
    remaining_trials,
    settle_interrupted,
    settle_running,
)
from search.study.timeshare import TimeShare
from search.study.trainable import make_trainable
from search.study.trial import TRIAL_KEY, TrialSpec


@dataclass(frozen=True)
class Execution:
    """How to run a study (may change between a run and its resume; results do not depend on it)."""

    resources: cluster.Resources  # per trial, checked against the cluster (cluster.fit_resources)
    concurrency: int | None = None
    verbose: bool = False
    retries: int = 0  # times Ray Tune reruns a trial whose worker or node died (0: record it FAILED)
    early_stop: bool = True  # the rung rule of search.study.halving (off: --no-early-stop)
    default_first: bool = True  # a new study's first trials run each strategy's default recipe (off: --no-default-first)


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
    on_progress: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has ``total`` finished trials or, with
    ``minutes_per_strategy``, every strategy has used that much compute time (whichever comes first;
    ``total`` None: no cap), on the Ray this process is connected to (:func:`search.study.cluster.connect`);
    returns the study. ``on_progress(number, strategy, event)`` hears every finished epoch of every
    running trial (see :mod:`search.progress`)."""
    from ray import tune

    storage = open_storage(storage_url)
    resources = execution.resources
    cap = spec.budget or full_relus  # the most ReLUs a trial's target may ask for
    share = None
    if minutes_per_strategy is not None:  # a running trial uses a GPU's wall time, or each CPU it holds
        share = TimeShare(list(strategies), minutes_per_strategy * 60, 1.0 if resources.gpus else resources.cpus)
    searcher = StudySearcher(
        define_space(strategies, cap, spec.dataset, spec.fixed_options, spec.model, spec.model_options),
        objectives,
        make_sampler(sampler, seed + existing_trials(storage, study_name)),
        study_name,
        storage,
        run_dir,
        spec.budget,
        on_recorded,
        share,
        log,
    )
    study = searcher.study
    names = [o.name for o in objectives]
    settle_interrupted(study, run_dir, names, spec.budget)
    interrupted = threading.Event()  # set by the first Ctrl-C (_first_ctrl_c_stops)
    remaining = remaining_trials(study, total) if total is not None else -1  # -1: until the time share ends it
    if execution.default_first and not study.get_trials(deepcopy=False):  # start from each strategy's default recipe
        first = list(strategies) if remaining < 0 else list(strategies)[:remaining]
        enqueue_defaults(study, {name: strategies[name] for name in first}, cap, spec.dataset, spec.fixed_options)
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
                search_alg=searcher, num_samples=remaining, max_concurrent_trials=concurrency, reuse_actors=True,
                scheduler=rung_scheduler(Rungs(), searcher.pruned) if execution.early_stop else None,
            ),
            run_config=tune.RunConfig(
                name=study_name,
                storage_path=str((run_dir / "tune").resolve()),
                verbose=1 if execution.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=execution.retries),
                stop=_stopper(lambda: bool(searcher.fault) or interrupted.is_set()),
                callbacks=[curve_writer(searcher), *([progress_callback(on_progress)] if on_progress else [])],
            ),
        )
        with _first_ctrl_c_stops(interrupted, log):
            tuner.fit()
        searcher.store_curves()
    try:
        settle_running(study, run_dir, names, spec.budget)
    except STORAGE_ERRORS as err:
        searcher.fault = searcher.fault or f"cannot write the study storage: {fault_reason(err)}"
    resume = f"python -m search.run --resume --run-dir {run_dir}"
    if searcher.fault:
        raise SearchError(f"{searcher.fault}; the study stopped. Finished trials are kept (in the storage, or in "
                          f"{run_dir}/trials/<n>/result.json for --resume to record); fix that, then resume: {resume}")
    if interrupted.is_set():
        raise RunInterrupted(f"interrupted: finished trials are kept in the study's storage; resume with: {resume}")
    return study


def progress_callback(on_progress: Callable[[int, str, dict[str, Any]], None]) -> Any:
    """A Tune callback handing each running trial's progress reports to ``on_progress``."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
            if result.get("status") == "running":
                decided = trial.config[TRIAL_KEY]
                on_progress(int(decided["number"]), str(decided["strategy"]), result)

        def __reduce__(self) -> tuple[Any, ...]:  # Tune pickles its run config; the display lives in this process
            return (Callback, ())

    return Progress()


def curve_writer(searcher: StudySearcher) -> Any:
    """A Tune callback storing the learning-curve points the trials reported in each step of Tune's
    loop, at the step's end: after Tune has let the reporting trials go on (see
    :meth:`~search.study.searcher.StudySearcher.on_trial_result`)."""
    from ray.tune import Callback

    class CurveWriter(Callback):
        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            searcher.store_curves()

        def __reduce__(self) -> tuple[Any, ...]:  # Tune pickles its run config; the searcher lives in this process
            return (Callback, ())

    return CurveWriter()


def _stopper(should_stop: Callable[[], bool]) -> Any:
    """A Tune stopper that ends every trial once ``should_stop()`` (Ctrl-C, a storage fault)."""
    from ray.tune.stopper import Stopper

    class StopAll(Stopper):
        def __init__(self) -> None:
            self.should_stop = should_stop

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.should_stop()

        def __reduce__(self) -> tuple[Any, ...]:  # Tune pickles its run config; the condition lives in this process
            return (_never_stop, ())

    return StopAll()


def _never_stop() -> None:
    """What a pickled copy of the stopper becomes: nothing (see :func:`_stopper`)."""


@contextmanager
def _first_ctrl_c_stops(interrupted: threading.Event, log: Callable[[str], None]) -> Iterator[None]:
    """While the study runs, the first Ctrl-C asks Tune to stop every trial (they are recorded as they
    stop), the second raises KeyboardInterrupt at once. Tune's own handler is turned off: it would end
    the run without telling us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        log("interrupted: stopping the running trials; finished trials are kept (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
