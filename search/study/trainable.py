"""The Ray Tune function trainable: one trial on a Ray worker, its files to the run directory.

It runs :func:`search.study.trial.run_one` (in a child process held to the limits when the spec has
any, see :mod:`search.study.limits`). Every finished epoch becomes a Ray Tune report with status
``running`` (the driver shows it, stores the validation accuracy as an Optuna intermediate value and
may stop the trial early) and its new log lines go to ``trials/<n>/log.txt`` as they come. At the end
the model, log and result go to the :class:`~search.study.artifacts.ArtifactStore` actor (so remote
nodes need no shared filesystem), then the final report.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import torch

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

        streaming = 0.0  # seconds this process spent handing progress on (recorded: its cost is measured)

        def forward(event: dict[str, Any], new_lines: list[str]) -> None:
            nonlocal streaming
            start = time.perf_counter()
            if new_lines:
                store.append_log.remote(number, "\n".join(new_lines) + "\n")  # ordered after earlier calls; not awaited
            if on_gpu:
                event = {**event, "compute_seconds": start - wall}
            tune.report({**running, **event})
            streaming += time.perf_counter() - start

        run = run_limited if spec.timeout_s or spec.memory_mb else run_one
        metrics, payload = run(spec, decided, lines, running["node_ip"], on_progress=forward)
        metrics["compute_seconds"] = time.perf_counter() - wall if on_gpu else _cpu_seconds() - cpu
        metrics["progress_seconds"] = streaming
        try:  # the result reaches the run directory before Tune hears of it: nothing finished is lost
            ray.get(store.save.remote(number, payload, "\n".join(lines) + "\n", metrics))
        except Exception as err:  # a full or read-only disk at the driver: the searcher stops the study
            cause = getattr(err, "cause", None) or err
            metrics.update(storage_error=str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__,
                           model_path="")
        tune.report(metrics)

    return trainable


