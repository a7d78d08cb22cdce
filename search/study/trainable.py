"""The Ray Tune function trainable: one trial on a Ray worker, its files to the run directory.

It runs :func:`search.study.trial.run_one` (in a child process held to the limits when the spec has
any, see :mod:`search.study.limits`). Finished epochs reach the driver as Ray Tune reports with
status ``running`` (:class:`ProgressRelay`: at every rung, else at most every few seconds; the driver
shows them, stores every epoch's validation accuracy as an Optuna intermediate value and may stop the
trial early) and its new log lines go to ``trials/<n>/log.txt`` as they come. At the end
the model, log and result go to the :class:`~search.study.artifacts.ArtifactStore` actor (so remote
nodes need no shared filesystem), then the final report.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

from search.study.halving import FINAL_PHASES, rung_of
from search.study.limits import run_limited
from search.study.trial import TRIAL_KEY, TrialSpec, blank_metrics, run_one


def _node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its waited-for children (the trial's own
    process under search.study.limits)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


REPORT_EVERY_S = 5.0  # a running trial's progress reaches the driver at most this often, besides rungs


class ProgressRelay:
    """Hands a running trial's finished epochs on: log lines at once (to ``append_log``, not awaited),
    and ``report`` (a Ray Tune report, which waits for a round trip to the driver: 3-15 ms here)
    at every rung of the early-stopping rule, where the driver must decide before the trial goes on,
    and otherwise at most every ``REPORT_EVERY_S`` seconds. Each report carries the learning-curve
    points since the previous one (``curve``: JSON [[step, val_acc], ...]), so every epoch still
    becomes an intermediate value while short epochs cost no round trip each."""

    def __init__(self, report: Callable[[dict[str, Any]], None], append_log: Callable[[str], Any], rungs: bool) -> None:
        self._report, self._append_log, self._rungs = report, append_log, rungs
        self._points: list[tuple[int, float]] = []
        self._last = time.perf_counter()
        self.seconds = 0.0  # spent handing progress on: recorded per trial, so its cost is measured

    def __call__(self, event: dict[str, Any], new_lines: list[str]) -> None:
        start = time.perf_counter()
        if new_lines:
            self._append_log("\n".join(new_lines) + "\n")
        self._points.append((int(event["step"]), float(event["val_acc"])))
        at_rung = self._rungs and event["phase"] in FINAL_PHASES and rung_of(int(event["epoch"]), int(event["epochs"])) is not None
        if at_rung or start - self._last >= REPORT_EVERY_S:
            self._report({**event, "curve": self.unreported()})
            self._points.clear()
            self._last = time.perf_counter()
        self.seconds += time.perf_counter() - start

    def unreported(self) -> str:
        """The curve points no report has carried yet, as the ``curve`` metric."""
        return json.dumps(self._points)


def make_trainable(spec: TrialSpec, store: Any):  # type: ignore[no-untyped-def]
    """The Tune function trainable: run the trial (in a child process held to the limits when the
    spec has any, see :mod:`search.study.limits`), hand its files to ``store``, report once."""

    def trainable(config: dict[str, Any]) -> None:
        import ray
        from ray import tune

        decided = config[TRIAL_KEY]
        lines: list[str] = []
        # As many torch threads as CPUs reserved: more oversubscribes the node, which on a small CPU
        # machine slows every kernel launch far more than the extra thread gains.
        assigned = ray.get_runtime_context().get_assigned_resources()
        threads = max(1, int(assigned.get("CPU", 1)))
        os.environ["OMP_NUM_THREADS"] = str(threads)  # children (search.study.limits) inherit it
        torch.set_num_threads(threads)
        on_gpu = assigned.get("GPU", 0) > 0  # a trial holding a GPU is charged its wall time (search.study.timeshare)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        number = int(decided["number"])
        running = {**blank_metrics(spec), "status": "running", "strategy": decided["strategy"], "node_ip": _node_ip()}

        def report(event: dict[str, Any]) -> None:
            if on_gpu:
                event = {**event, "compute_seconds": time.perf_counter() - wall}
            tune.report({**running, **event})

        def spent() -> float:
            return time.perf_counter() - wall if on_gpu else _cpu_seconds() - cpu

        def save_partial(partial: dict[str, Any], models: dict[str, bytes]) -> None:
            """A result finished while the trial goes on (its mask path): on disk before the next trains."""
            try:
                ray.get(store.save.remote(number, models, "\n".join(lines) + "\n",
                                          {**partial, "compute_seconds": spent(), "progress_seconds": relay.seconds}))
            except ray.exceptions.RayError as err:  # a full or read-only disk: the final save reports it to the searcher
                lines.append(f"could not save the finished result before the rest of the trial: {err}")

        relay = ProgressRelay(report, lambda text: store.append_log.remote(number, text), spec.early_stop)
        run = run_limited if spec.timeout_s or spec.memory_mb else run_one
        metrics, models = run(spec, decided, lines, running["node_ip"], on_progress=relay, on_partial=save_partial)
        metrics["compute_seconds"] = spent()
        metrics["progress_seconds"] = relay.seconds
        metrics["curve"] = relay.unreported()
        try:  # the result reaches the run directory before Tune hears of it: nothing finished is lost
            ray.get(store.save.remote(number, models, "\n".join(lines) + "\n", metrics))
        except Exception as err:  # a full or read-only disk at the driver: the searcher stops the study
            cause = getattr(err, "cause", None) or err
            metrics.update(storage_error=str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__,
                           model_path="")
        tune.report(metrics)

    return trainable


