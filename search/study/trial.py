"""What runs inside one Ray Tune trial: one linearization through ``search.pipeline``.

The trial never raises for a strategy's failure: it reports a ``status`` (``ok``, ``infeasible``,
``failed``) and a one-line ``reason`` with every metric present (NaN where unknown), because Ray Tune
aborts the whole run on a report that lacks a metric, and the searcher needs the reason to record it.
A strategy whose plan fixes the ReLU count is held to the study's budget before any training (a plan
over it is ``infeasible``, and so is one whose strategy finds no plan within it after training, as
DeepReDuce may once criticality orders the stages); one whose count only training decides (SNL) trains to
the trial's sampled ``relu_target``. Nothing here imports Ray: :mod:`search.study.trainable` wraps :func:`run_one` for Ray
Tune, and :mod:`search.study.limits` runs it in a child process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search import progress
from search.data import Dataset, dataset_info, load_dataset
from search.errors import SearchError
from search.objectives import MEASURED_COMMUNICATION, cost_model, objectives
from search.pi.measure import measure_checkpoint
from search.pipeline import Job, Prepared, Result, budget_path, execute, execute_budgets, prepare
from search.relu import relu_count
from search.strategies import OverBudget, PlanNeedsTraining, TargetOutOfReach
from search.study.rundir import trial_model_path

TRIAL_KEY = "_trial"  # config key holding what the searcher decided for this trial
TARGET_PARAM = "relu_target"  # the study parameter a budget-driven strategy's trial trains down to
MODEL_FILE = "model.pt"
MEASURED_IMAGES = 3  # under --objectives measured_communication: the setup, then two for a steady state robust to one refill
# With --path-sharing an SNL trial keeps its masks at 2x and 4x its target too (within the cap) and
# finetunes each: its one mask phase passes them on its way down, so they cost a finetune each, not a trial.
PATH_RUNGS = (2, 4)


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides its sampled options; the same for every trial of a run."""

    dataset: str
    model: str
    model_options: dict[str, Any]
    budget: int | None
    objectives: tuple[str, ...]
    cost_model: str
    seed: int = 0
    teacher_epochs: int | None = None
    teacher_options: dict[str, Any] = field(default_factory=dict)  # --set teacher.KEY, typed
    train_options: dict[str, Any] = field(default_factory=dict)  # --set train.KEY, typed
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    fixed_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeout_s: float | None = None  # wall-clock limit of one trial (search.study.limits)
    memory_mb: int | None = None  # peak resident memory limit of one trial (search.study.limits)
    early_stop: bool = True  # a strategy training to a target may stop once it is out of reach (PRUNED)
    path_rungs: tuple[int, ...] = ()  # PATH_RUNGS with --path-sharing


@functools.lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None) -> Dataset:
    """Loaded once per worker process: Tune reuses trial actors, so later trials skip the load."""
    return load_dataset(name, data_dir)


def blank_metrics(spec: TrialSpec) -> dict[str, Any]:
    """Every key a trial reports, unknown values NaN (Tune requires all of them in every report)."""
    nan = float("nan")
    metrics: dict[str, Any] = {name: nan for name in spec.objectives}
    metrics.update(
        status="failed", reason="", strategy="", options="{}", details="{}", relus=nan, val_acc=nan, test_acc=nan,
        latency_s=nan, communication_mb=nan, seconds=nan, compute_seconds=nan, progress_seconds=nan, feasible=False, model_path="", node_ip="",
        storage_error="", path="[]", phase="", epoch=0, epochs=0, elapsed_s=nan, eta_s=nan, step=0, open_ended=False, curve="[]",
        teacher_val_acc=nan, teacher_test_acc=nan, val_images=nan, test_images=nan,
    )
    return metrics


ProgressSink = Callable[[dict[str, Any], list[str]], None]  # (a progress event's fields, log lines since the last call)
PartialSink = Callable[[dict[str, Any], dict[str, bytes]], None]  # (metrics so far, models so far by file name)


def run_one(spec: TrialSpec, decided: dict[str, Any], log_lines: list[str], node_ip: str = "",
            on_progress: ProgressSink | None = None, on_partial: PartialSink | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run the trial the searcher ``decided`` on the node ``node_ip``; returns (metrics, the saved
    models' bytes by file name: ``model.pt``, and ``model-<B>.pt`` per path budget). ``on_progress``
    hears every finished epoch (with the CPU time of this process so far as ``compute_seconds``), with
    the log lines written since the previous one; ``on_partial`` hears (metrics, models) each time a
    result is finished while more of the trial remains (its path budgets), so it can be saved first.

    Never raises: a failure is a ``failed`` status with its reason.
    """
    if on_progress is None:
        return _run_one(spec, decided, log_lines, node_ip, on_partial)
    sent, cpu = 0, time.process_time()

    def forward(event: progress.Progress) -> None:
        nonlocal sent
        new, sent = log_lines[sent:], len(log_lines)
        # CPU time so far: a trial stopped at a rung is charged what it used (search.study.timeshare)
        on_progress({**dataclasses.asdict(event), "compute_seconds": time.process_time() - cpu}, new)

    with progress.listening(forward):
        return _run_one(spec, decided, log_lines, node_ip, on_partial)


def _run_one(spec: TrialSpec, decided: dict[str, Any], log_lines: list[str], node_ip: str,
             on_partial: PartialSink | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    strategy, number = decided["strategy"], int(decided["number"])
    metrics = blank_metrics(spec)
    used = {**decided["options"], **spec.fixed_options.get(strategy, {})}
    metrics.update(strategy=strategy, options=json.dumps(used, sort_keys=True, default=str), node_ip=node_ip)
    start = time.perf_counter()
    log = log_lines.append
    if decided.get("error"):
        metrics.update(reason=decided["error"], seconds=0.0)
        return metrics, {}
    try:
        job = Job(
            strategy=strategy, dataset=spec.dataset, model=spec.model, budget=spec.budget,
            model_options=spec.model_options, strategy_options=used, data_dir=spec.data_dir,
            seed=spec.seed + number, teacher_epochs=spec.teacher_epochs, teacher_options=spec.teacher_options,
            train_options=spec.train_options, device=spec.device, cache_dir=spec.cache_dir, early_stop=spec.early_stop,
        )
        prepared = prepare(job)
        info = dataset_info(spec.dataset)
        if prepared.strategy.trains_to_budget:  # its count is its budget (SNL): train down to the trial's target
            job.budget = decided["target"]
        try:
            planned = prepared.strategy.plan(prepared.model_name, prepared.model_options, info.input_shape, info.num_classes, prepared.options)
        except PlanNeedsTraining:  # only training can count it: the strategy itself holds it to job.budget
            planned = None
        if planned is not None and spec.budget is not None:  # the plan fixes the count: check it, untrained
            count = relu_count(planned, info.input_shape)
            if count > spec.budget:
                raise OverBudget(f"plan has {count:,} ReLUs, over the budget of {spec.budget:,}", count)
        data = _dataset(spec.dataset, spec.data_dir)
        shared = prepared.strategy.shares_path and job.budget is not None
        rungs = path_budgets(job.budget, spec.budget or prepared.full_relus, spec.path_rungs) if shared else []  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="search-trial-") as tmp:
            job.out = str(Path(tmp) / MODEL_FILE)
            home = trial_model_path("", number)  # trials/<n>/model.pt, relative to the run directory
            renames = {str(budget_path(job.out, job.budget)): str(home)} if rungs else {}  # the target's model: model.pt
            log = _naming_the_run_dir(log, {**renames, tmp: str(home.parent)})
            if rungs:
                return _run_path(spec, prepared, data, [job.budget, *rungs], metrics, number, start, log, on_partial)  # type: ignore[list-item]
            result = execute(prepared, log=log, data=data)
            models = {MODEL_FILE: Path(job.out).read_bytes()}
            metrics.update(_result_fields(result, spec, data, number, MODEL_FILE, Path(job.out), log))
        metrics.update(seconds=time.perf_counter() - start)
        if metrics["status"] != "ok":
            log(metrics["reason"])
            return metrics, models if metrics.get("model_path") else {}
        return metrics, models
    except OverBudget as err:  # a fixed plan over the budget, or none the strategy may choose within it: INFEASIBLE
        log(str(err))
        metrics.update(status="infeasible", relus=err.relus, reason=str(err), seconds=time.perf_counter() - start)
        return _with_objectives(metrics, spec), {}
    except TargetOutOfReach as err:  # stopped early, on purpose: PRUNED, not FAILED
        log(str(err))
        metrics.update(status="pruned", reason=str(err), seconds=time.perf_counter() - start)
        return metrics, {}
    except Exception as err:  # a strategy's bug or bad sample: record it, keep the study going
        log(traceback.format_exc())
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        metrics.update(status="failed", reason=f"{type(err).__name__}: {first}".rstrip(": "), seconds=time.perf_counter() - start)
        return metrics, {}


def _naming_the_run_dir(log: Callable[[str], None], renames: dict[str, str]) -> Callable[[str], None]:
    """``log`` with the trial's temporary files named as the run directory keeps them (``renames``, in
    order: temporary path -> ``trials/<n>/...``): the pipeline logs ``saved <path>`` for each model
    it writes, and the trial's log.txt should not point at a folder that is gone."""

    def named(line: str) -> None:
        for temporary, kept in renames.items():
            line = line.replace(temporary, kept)
        log(line)

    return named


def path_budgets(target: int, cap: int, rungs: tuple[int, ...]) -> list[int]:
    """The larger budgets an SNL trial also keeps along its own mask path: ``target`` times each of
    ``rungs`` (default :data:`PATH_RUNGS`), those within ``cap`` (the study's budget or full count)."""
    return sorted({target * m for m in rungs if target * m <= cap and m > 1})


def _result_fields(result: Result, spec: TrialSpec, data: Dataset, number: int, model_file: str, saved: Path,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """A finished result as report fields: status ok with its objectives, or failed when an objective
    is not a finite number. ``saved`` is the model on disk, measured under SPU when an objective asks."""
    relus = result.outcome.relus
    cost = cost_model(spec.cost_model)
    fields: dict[str, Any] = {
        "status": "ok", "reason": "", "relus": relus, "val_acc": result.outcome.val_acc, "test_acc": result.test_acc,
        "latency_s": cost.latency_s(relus), "communication_mb": cost.communication_mb(relus), "feasible": True,
        "model_path": trial_model_path(Path(), number).with_name(model_file).as_posix(),
        "details": json.dumps(result.outcome.details, sort_keys=True, default=str),
        # The report's baseline and intervals: the full-ReLU teacher (when the strategy fetched it) and split sizes.
        "teacher_val_acc": result.teacher.get("val_acc", math.nan), "teacher_test_acc": result.teacher.get("test_acc", math.nan),
        "val_images": len(data.val), "test_images": len(data.test),
    }
    if MEASURED_COMMUNICATION in spec.objectives:
        try:
            fields.update(_measured_fields(saved, spec, log))
        except SearchError as err:  # the model trained; only its measurement failed: keep it, say why
            log(f"measurement under SPU failed: {err}")
            return {**_with_objectives(fields, spec), "status": "failed", "feasible": False,
                    "reason": f"measurement under SPU failed: {str(err).splitlines()[0]}"}
    _with_objectives(fields, spec)
    bad = [name for name in spec.objectives if not math.isfinite(fields[name])]
    if bad:
        fields.update(status="failed", feasible=False, model_path="", reason=f"objective {bad[0]} is not a finite number ({fields[bad[0]]})")
    return fields


def _measured_fields(saved: Path, spec: TrialSpec, log: Callable[[str], None]) -> dict[str, Any]:
    """The model's secure inference under SPU's Cheetah, as trial fields (steady state of MEASURED_IMAGES)."""
    started = time.perf_counter()
    log(f"measuring under SPU cheetah on {MEASURED_IMAGES} test images")
    m = measure_checkpoint(str(saved), MEASURED_IMAGES, "cheetah", spec.dataset, spec.data_dir, progress=log)
    steady = m.steady
    log(f"measured under SPU cheetah in {time.perf_counter() - started:.1f} s: {steady.total_bytes / 1e6:,.3f} MB per "
        f"inference ({steady.bytes_by_kind['relu'] / 1e6:,.3f} MB in ReLUs), {steady.seconds:.2f} s; predictions "
        f"{'match' if m.matches else 'DIFFER from'} the plain model's")
    return {"measured_communication_mb": steady.total_bytes / 1e6, "measured_relu_mb": steady.bytes_by_kind["relu"] / 1e6,
            "measured_seconds": steady.seconds, "measured_matches_plain": m.matches}


def _run_path(spec: TrialSpec, prepared: Prepared, data: Dataset, budgets: list[int], metrics: dict[str, Any], number: int,
              start: float, log: Callable[[str], None], on_partial: PartialSink | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One mask phase for the trial's target and its path budgets (``budgets[0]`` is the target). The
    target's result is the trial's; each path budget's finished result goes into ``metrics["path"]``
    (recorded as a trial of its own by :func:`search.study.storage.record`). Every result reaches
    ``on_partial`` as soon as it is finished, before the next budget trains."""
    target, models, path = budgets[0], {}, []

    def on_result(budget: int, result: Result | SearchError) -> None:
        out = budget_path(prepared.job.out, budget)  # type: ignore[arg-type]
        if budget == target and isinstance(result, TargetOutOfReach):
            log(str(result))
            metrics.update(status="pruned", reason=str(result))
        elif budget == target and isinstance(result, SearchError):
            log(str(result))
            metrics.update(status="failed", reason=f"SearchError: {str(result).splitlines()[0]}")
        elif budget == target:
            metrics.update(_result_fields(result, spec, data, number, MODEL_FILE, out, log))
            if metrics["model_path"]:  # ok, or trained but not measured
                models[MODEL_FILE] = out.read_bytes()
        elif isinstance(result, SearchError):
            log(f"path budget {budget:,}: {result}")
        else:
            name = f"{Path(MODEL_FILE).stem}-{budget}{Path(MODEL_FILE).suffix}"
            point = {**_result_fields(result, spec, data, number, name, out, log), "budget": budget, "seconds": result.seconds}
            if point["status"] == "ok":
                path.append(point)
                models[name] = out.read_bytes()
        metrics.update(path=json.dumps(path, default=str), seconds=time.perf_counter() - start)
        if on_partial is not None:
            on_partial(metrics, models)

    execute_budgets(prepared, budgets, log=log, data=data, on_result=on_result)
    return metrics, models


def _with_objectives(metrics: dict[str, Any], spec: TrialSpec) -> dict[str, Any]:
    """Objective values from the measured ReLUs and accuracy (NaN stays NaN)."""
    for objective in objectives(spec.objectives, cost_model(spec.cost_model)):
        try:
            metrics[objective.name] = objective.value(metrics)
        except (KeyError, TypeError, ValueError):  # a value the trial never measured (it stopped first)
            metrics[objective.name] = float("nan")
    return metrics
