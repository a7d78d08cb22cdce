"""``python -m search.run``: the study from the command line.

One multi-objective Optuna study (maximize validation accuracy, minimize ReLUs, optionally PI latency
and communication) over one strategy, several, or all, run by Ray Tune on this machine or a cluster.
Everything lands in a run directory (see :mod:`search.study.rundir`); ``--resume`` continues a killed run.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # a local study's Ray starts now and comes up while the imports below run
    from search.study.localray import start_early

    start_early(sys.argv[1:])

import argparse
import importlib
import math
import os
import platform
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.cli import ArgumentParser, run_main
from search.config import describe_about, parse_with_config
from search.data import Dataset, dataset_info, load_dataset
from search.dryrun import describe_data, teacher_file, teacher_status
from search.errors import RunInterrupted, SearchError
from search.estimate import Estimator, duration, recipe_line, report, strategy_phases, teacher_phase
from search.masked_relu import prepare_fused_kernels
from search.nonlinear import warn_nonlinear
from search.objectives import COST_PRESETS, MEASURED_COMMUNICATION, Objective, cost_model, objectives
from search.options import show_options
from search.outputs import cache_option, check_writable_dir
from search.pi.measure import runner_python
from search.pipeline import full_relu_count
from search.relu import relu_table
from search.settings import Routed, parse_budget, split_settings
from search.spaces import build_model
from search.strategies import OverBudget, Strategy, get_strategy, list_strategies
from search.study import cluster, rundir
from search.study.samplers import SAMPLERS, make_sampler
from search.study.space import define_space, enqueue_defaults, unsampled_options
from search.study.storage import check_storage, check_study, create_study, open_storage, pareto_trials
from search.study.timeshare import check_minutes
from search.study.trial import PATH_RUNGS, TRIAL_KEY, TrialSpec, path_budgets
from search.teacher import default_cache_dir
from search.train import pick_device, teacher_config

DEFAULTS: dict[str, Any] = {
    "strategy": "snl",
    "dataset": "digits",
    "trials": 6,  # without --minutes-per-strategy; with it, no cap unless given
    "objectives": "",
    "cost_model": "delphi",
    "sampler": "tpe",
    "seed": 0,
}
# Options that define what a study computes: on --resume they must be omitted or match run.json.
STUDY_OPTIONS = ("strategy", "dataset", "model", "sets", "budget", "objectives", "cost_model", "sampler", "seed", "teacher_epochs")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m search.run",
        description="Search for the most accurate network with the fewest ReLUs: one multi-objective Optuna study "
        "over the chosen ReLU-reduction strategies, run by Ray Tune locally or on a Ray cluster. "
        "Prints a line per finished trial and the Pareto-optimal trials; writes everything to a run directory.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m search.run --strategy snl                      # digits, resnet_tiny, a few minutes on a laptop\n"
        "  python -m search.run --strategy all --dataset cifar10 --data-dir ../shared/data/cifar10 --trials 40 --budget 50000\n"
        "  python -m search.run --strategy all --dataset cifar10 --data-dir ../shared/data/cifar10 --minutes-per-strategy 30"
        "   # equal compute time\n"
        "  python -m search.run --resume --run-dir runs/20260101-120000   # continue a killed run\n"
        "  python -m search.run --strategy all --address auto       # on a node of a running Ray cluster",
    )
    study = parser.add_argument_group("what to search")
    study.add_argument("--strategy", help=f"a strategy, a comma list of them, or all (= every installed one: "
                       f"{', '.join(list_strategies()) or 'none installed'}); a plug-in may be given as module:Class "
                       f"(default {DEFAULTS['strategy']})")
    study.add_argument("--dataset", help=f"digits (embedded), cifar10, cifar100, tinyimagenet (default {DEFAULTS['dataset']})")
    study.add_argument("--data-dir", help="folder holding the dataset, on every node (default: $SEARCH_DATA_DIR or ./data)")
    study.add_argument("--model", help="model name (default: the dataset's default model, resnet_tiny for digits)")
    study.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                       help="a model option, or a fixed strategy option as STRATEGY.KEY=VALUE (a bare KEY when there is one "
                       "strategy); fixed options override sampled ones (repeatable)")
    study.add_argument("--budget", help="ReLU budget: a count or a percentage of the model's ReLUs (e.g. 10%%); trials over it "
                       "are infeasible and never on the Pareto front (default: none)")
    study.add_argument("--trials", type=int, help=f"number of finished trials the study should have (default {DEFAULTS['trials']}; "
                       "with --minutes-per-strategy, a cap, none by default)")
    study.add_argument("--minutes-per-strategy", type=float, metavar="MINUTES",
                       help="give every strategy the same compute time instead of counting trials: the next trial goes to the "
                       "strategy that has used the least, and the study ends once each has used MINUTES (CPU time of its "
                       "trials, all threads; wall time on a GPU); trials running then finish. Train the teacher first "
                       "(python -m search.train_teacher) or the first trials pay for it. May be raised on --resume")
    study.add_argument("--objectives", help="extra objectives to minimize besides accuracy and ReLUs, comma-separated: "
                       "latency, communication (estimated online PI cost from the ReLU count), measured_communication "
                       "(each trial's model run under SPU's Cheetah after training; small models only, see README; "
                       "needs pip install -e '.[pi]')")
    study.add_argument("--cost-model", help=f"per-ReLU PI cost for latency/communication: {', '.join(COST_PRESETS)}, or "
                       f"us=<microseconds>,bytes=<bytes> (default {DEFAULTS['cost_model']})")
    study.add_argument("--sampler", help=f"Optuna sampler: {', '.join(SAMPLERS)} (default {DEFAULTS['sampler']})")
    study.add_argument("--seed", type=int, help=f"seed of the sampler and of trial training (default {DEFAULTS['seed']})")
    study.add_argument("--teacher-epochs", type=int, help="epochs for the cached full-ReLU teacher (default per dataset)")
    where = parser.add_argument_group("where to run and store")
    where.add_argument("--run-dir", help="run directory (default runs/<date>-<time>); must not exist unless --resume")
    where.add_argument("--resume", action="store_true", help="continue the run in --run-dir: finished trials are kept, "
                       "interrupted ones rerun, until the study has --trials finished trials")
    where.add_argument("--storage", help="Optuna storage URL instead of RUN_DIR/study.db (e.g. postgresql://user@host/db, "
                       "or journal:PATH); optuna-dashboard <storage> shows the study live")
    where.add_argument("--cache-dir", help="teacher cache shared by the trials (default: $SEARCH_CACHE_DIR or ~/.cache/search)")
    where.add_argument("--address", help="join a running Ray cluster: auto (on a cluster node) or HOST:PORT of the head; "
                       "default: start a local Ray for this run")
    where.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial (default 1)")
    where.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default: 1 where the cluster "
                       "has GPUs, else 0; dropped with a warning on a cluster without GPUs)")
    where.add_argument("--concurrency", type=int, help="trials running at once (default: cluster CPUs / --cpus-per-trial)")
    limits = parser.add_argument_group("limits and faults (may change on --resume)")
    limits.add_argument("--trial-timeout", type=float, metavar="SECONDS", help="stop a trial that runs longer than this "
                        "(wall clock, including its start) and record it FAILED; the study goes on (default: no limit)")
    limits.add_argument("--trial-memory", type=int, metavar="MB", help="stop a trial whose peak resident memory passes this "
                        "many MB and record it FAILED; the study goes on (default: no limit)")
    limits.add_argument("--trial-retries", type=int, metavar="N", help="rerun a trial up to N times when its Ray worker or "
                        "node dies (default 0: record it FAILED and go on)")
    where.add_argument("--device", default="auto", help="device inside a trial: auto (CUDA when the trial has a GPU), cpu, cuda")
    parser.add_argument("--config", metavar="FILE", help="YAML file of options, keyed by their long names (e.g. strategy: snl, "
                        "trial-timeout: 600, set: [width=0.5]); options on the command line override it")
    parser.add_argument("--dry-run", action="store_true", help="check every option, the data, the run directory and the storage, "
                        "print what would run, each strategy's first trial's training recipes and estimated compute (a few "
                        "steps timed here) and the study's, and stop: nothing is trained or written, Ray is not started")
    parser.add_argument("--no-early-stop", action="store_true", help="run every trial to its end: no pruning of targets out of "
                        "reach, no stopping of trials dominated at a rung (see README, Early stopping)")
    parser.add_argument("--path-sharing", action="store_true", help="an SNL trial also finetunes the masks it passed at 2x "
                        "and 4x its target and records each as a trial of its own; pays where the mask phase costs more than "
                        "a finetune (see README, Path sharing)")
    parser.add_argument("--no-default-first", action="store_true", help="start a new study from the sampler alone, not "
                        "from each strategy's default recipe (see README, Early stopping)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print only a line per finished trial and the summary")
    output.add_argument("-v", "--verbose", action="store_true", help="show Ray's and Optuna's own logs and the trials' output")
    return parser


def resolve_strategies(text: str) -> dict[str, Strategy]:
    """``snl``, ``snl,deepreduce``, ``all`` or import paths -> name as given -> Strategy."""
    names = list_strategies() if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SearchError("--strategy all found no installed strategy" if text == "all" else "--strategy is empty")
    return {name: get_strategy(name) for name in dict.fromkeys(names)}


def split_fixed(sets: list[str], model_name: str, strategies: dict[str, Strategy]) -> tuple[Routed, dict[str, dict[str, Any]]]:
    """The routed ``--set`` pairs (typed model options, teacher and train recipe overrides) and the
    fixed options of each strategy, typed."""
    model_pairs: list[str] = []
    fixed: dict[str, list[str]] = {name: [] for name in strategies}
    by_short = {s.name: name for name, s in strategies.items()}
    for pair in sets:
        key = pair.partition("=")[0].strip()
        owner, dot, _ = key.partition(".")
        target = owner if owner in strategies else by_short.get(owner)
        if dot and target:
            fixed[target].append(pair.split(".", 1)[1])
        else:  # a model or recipe option, or (with one strategy) a bare strategy option: split_settings routes it
            model_pairs.append(pair)
    if len(strategies) == 1:
        (name, strategy), = strategies.items()
        routed = split_settings(model_pairs + fixed[name], model_name, strategy)
        typed = {name: {k: v for k, v in asdict(strategy.parse_options(routed.strategy)).items() if k in routed.strategy}}
        return routed, typed
    routed = split_settings(model_pairs, model_name, None)
    typed = {}
    for name, pairs in fixed.items():
        raw = split_settings([f"strategy.{p}" for p in pairs], model_name, strategies[name]).strategy
        typed[name] = {k: v for k, v in asdict(strategies[name].parse_options(raw)).items() if k in raw}
    return routed, typed


def new_settings(args: argparse.Namespace, run_dir: Path, storage: str) -> rundir.RunSettings:
    """RunSettings of a new run from the command line (defaults filled in), validated."""
    values = {k: (getattr(args, k) if getattr(args, k) is not None else DEFAULTS.get(k)) for k in STUDY_OPTIONS}
    strategies = resolve_strategies(values["strategy"])
    info = dataset_info(values["dataset"])
    model_name = values["model"] or info.default_model
    routed, fixed = split_fixed(values["sets"] or [], model_name, strategies)
    model_options = routed.model
    teacher_config(info.name, values["teacher_epochs"], routed.teacher)  # bad or contradicting values fail here
    full = full_relu_count(model_name, model_options, info.name)
    chosen = objectives([n.strip() for n in values["objectives"].split(",") if n.strip()], cost_model(values["cost_model"]))
    if MEASURED_COMMUNICATION in [o.name for o in chosen]:
        runner_python()  # SPU missing: say how to install it before anything starts
    make_sampler(values["sampler"], 0)
    trials = args.trials if args.trials is not None else (None if args.minutes_per_strategy else DEFAULTS["trials"])
    if trials is not None and trials < 1:
        raise SearchError(f"bad value {trials} for --trials: expected an integer >= 1")
    model = build_model(model_name, num_classes=info.num_classes, input_size=info.input_shape, **model_options)
    warn_nonlinear(model, info.input_shape, model_name)
    return rundir.RunSettings(
        study_name=f"{run_dir.name}-{uuid.uuid4().hex[:8]}",
        storage=storage,
        strategies=list(strategies),
        dataset=info.name,
        model=model_name,
        model_options=model_options,
        objectives=[o.name for o in chosen],
        directions=[o.direction for o in chosen],
        budget=parse_budget(values["budget"], full),
        full_relus=full,
        stem_relu=any(row.stage == "stem" for row in relu_table(model, info.input_shape)),
        cost_model=values["cost_model"],
        sampler=values["sampler"],
        seed=values["seed"],
        trials=trials,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
        extra={"fixed_options": fixed, "teacher_epochs": values["teacher_epochs"], "teacher_options": routed.teacher,
               "train_options": routed.train, "argv": sys.argv[1:]},
        minutes_per_strategy=args.minutes_per_strategy,
    )


def check_resume(args: argparse.Namespace, settings: rundir.RunSettings) -> rundir.RunSettings:
    """The stored settings, after checking that the options given on the command line agree."""
    given_objectives = [n.strip() for n in (args.objectives or "").split(",") if n.strip()]
    if args.objectives is not None:
        wanted = [o.name for o in objectives(given_objectives, cost_model(args.cost_model or settings.cost_model))]
        if wanted != settings.objectives:
            raise SearchError(
                f"--resume: the run in {args.run_dir} has objectives {','.join(settings.objectives)}, "
                f"not {','.join(wanted)}; resume without --objectives or start a new run"
            )
    stored = {
        "strategy": ",".join(settings.strategies), "dataset": settings.dataset, "model": settings.model,
        "budget": settings.budget, "cost_model": settings.cost_model, "sampler": settings.sampler, "seed": settings.seed,
        "teacher_epochs": settings.extra.get("teacher_epochs"),
    }
    for key, value in stored.items():
        given = getattr(args, key)
        if given is not None and str(given) != str(value) and not (key == "strategy" and given == "all"):
            raise SearchError(f"--resume: the run in {args.run_dir} was made with --{key.replace('_', '-')} {value}, not {given}; "
                              "omit it to resume, or start a new run")
    if args.sets:
        raise SearchError("--resume takes the --set options of the run (see its run.json); omit --set")
    if args.trials is not None:
        if args.trials < 1:
            raise SearchError(f"bad value {args.trials} for --trials: expected an integer >= 1")
        settings.trials = args.trials
    if args.minutes_per_strategy is not None:
        settings.minutes_per_strategy = args.minutes_per_strategy
    return settings


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("search", "torch", "ray", "optuna"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def describe_trial(trial: FrozenTrial, names: Sequence[str]) -> str:
    """One progress line: number, strategy, options, accuracy, ReLUs (or why it failed)."""
    attrs = trial.user_attrs
    strategy = attrs.get("strategy", "?")
    used = attrs.get("options") or {}  # a fixed --set option overrides the sampled value: show what ran
    shown = {k.split("/", 1)[-1]: v for k, v in trial.params.items() if k != "strategy"}
    params = ", ".join(f"{k}={_short(used.get(k, v))}" for k, v in shown.items()) or "-"
    head = f"trial {trial.number:>3} {strategy:<12} {params}"
    if "path_of" in attrs:
        head += f"  [on trial {attrs['path_of']}'s mask path]"
    if trial.state == TrialState.COMPLETE:
        values = "  ".join(f"{n}={_short(v)}" for n, v in zip(names, trial.values))
        return f"{head}  {values}  test_acc={_short(attrs.get('test_acc'))}  ({attrs.get('seconds', 0):.1f}s)"
    if trial.state == TrialState.PRUNED and "prune_reason" in attrs:
        return f"{head}  PRUNED: {attrs['prune_reason']}"
    if trial.state == TrialState.PRUNED:
        return f"{head}  INFEASIBLE: {attrs.get('infeasible_reason', '')}"
    return f"{head}  FAILED: {attrs.get('fail_reason', trial.state.name)}"


def _stem_note(settings: rundir.RunSettings) -> str:
    """Whether the count includes a stem ReLU; a model imported by path has no known stem."""
    if ":" in settings.model:
        return "stem ReLU not identified (a model imported by path)"
    return f"{'with' if settings.stem_relu else 'without'} the stem ReLU"


def _show_options(options: dict[str, Any]) -> str:
    """A trial's options as its progress line shows them, rounded (``trials.csv`` keeps every digit)."""
    return ", ".join(f"{key}={_short(value)}" for key, value in sorted(options.items())) or "-"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pareto_table(front: list[FrozenTrial], chosen: Sequence[Objective]) -> str:
    """The Pareto-optimal trials as an aligned text table."""
    headers = ["trial", "strategy", *(f"{o.name} ({o.unit})" for o in chosen), "test_acc", "options"]
    rows = [
        [str(t.number), str(t.user_attrs.get("strategy", "?")), *(_short(v) for v in t.values),
         _short(t.user_attrs.get("test_acc")), _show_options(t.user_attrs.get("options", {}))]
        for t in front
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows])


def write_report(run_dir: Path) -> None:
    """The report of ``search.report``, where that module is installed."""
    try:
        from search.report import write_report as report
    except ModuleNotFoundError as err:
        if err.name != "search.report":
            raise
        print(f"no report written: search.report is not available in this install (run python -m search.report {run_dir} later)")
        return
    report([run_dir])
    print(f"report: {run_dir / 'report.html'}")


def _run(args: argparse.Namespace, run_dir: Path, settings: rundir.RunSettings, strategies: dict[str, Strategy], chosen: list[Objective],
         resources: cluster.Resources) -> Any:
    """Announce the study and run it on the connected Ray; returns the Optuna study."""
    spec = TrialSpec(
        dataset=settings.dataset, model=settings.model, model_options=settings.model_options, budget=settings.budget,
        objectives=tuple(settings.objectives), cost_model=settings.cost_model, seed=settings.seed,
        teacher_epochs=settings.extra.get("teacher_epochs"), teacher_options=settings.extra.get("teacher_options", {}),
        train_options=settings.extra.get("train_options", {}), data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else None, device=args.device,
        fixed_options=settings.extra.get("fixed_options", {}), timeout_s=args.trial_timeout, memory_mb=args.trial_memory,
        early_stop=not args.no_early_stop, path_rungs=PATH_RUNGS if args.path_sharing else (),
    )
    budget = f"{settings.budget:,}" if settings.budget else "none"
    print(f"study {settings.study_name}: {', '.join(settings.strategies)} on {settings.model}/{settings.dataset} "
          f"({settings.full_relus:,} ReLUs, {_stem_note(settings)}, budget {budget}), "
          f"objectives {', '.join(f'{o.name} ({o.direction})' for o in chosen)}, {_extent(settings)}, sampler {settings.sampler}")
    print(f"run directory {run_dir}, storage {settings.storage}", flush=True)
    if not args.address and not resources.gpus and any(s.uses_soft_masks for s in strategies.values()):
        # after the study exists, so a Ctrl-C during a first build leaves a run that --resume continues
        prepare_fused_kernels(lambda line: print(line, flush=True))  # trials on this machine find them built
    from search.study.display import TrialDisplay, choose_mode
    from search.study.engine import Execution, run_study  # imports Ray: only once the input is known to be good

    execution = Execution(resources, args.concurrency, args.verbose, args.trial_retries or 0, early_stop=not args.no_early_stop,
                          default_first=not args.no_default_first)
    display = TrialDisplay(choose_mode(args.quiet))
    try:
        return run_study(
            run_dir, settings.study_name, settings.storage, strategies, chosen, spec, settings.sampler, settings.seed,
            settings.trials, settings.full_relus, execution,
            on_recorded=lambda t: display.finished(t.number, describe_trial(t, settings.objectives)),
            log=display.say, minutes_per_strategy=settings.minutes_per_strategy, on_progress=display.running,
        )
    finally:
        display.close()


def _extent(settings: rundir.RunSettings) -> str:
    """How long the study runs, as the start line states it."""
    if settings.minutes_per_strategy is None:
        return f"{settings.trials} trials"
    cap = f", at most {settings.trials} trials" if settings.trials is not None else ""
    return f"{settings.minutes_per_strategy:g} min of compute time per strategy{cap}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line over the ``--config`` file (when given), checked."""
    args = parse_with_config(build_parser(), argv)
    if args.concurrency is not None and args.concurrency < 1:
        raise SearchError(f"bad value {args.concurrency} for --concurrency: expected an integer >= 1")
    if args.trial_timeout is not None and not 0 < args.trial_timeout < math.inf:
        raise SearchError(f"bad value {args.trial_timeout:g} for --trial-timeout: expected seconds > 0")
    if not 0 < args.cpus_per_trial < math.inf:
        raise SearchError(f"bad value {args.cpus_per_trial:g} for --cpus-per-trial: expected a number of CPUs > 0")
    if not args.address and args.cpus_per_trial > (os.cpu_count() or 1):
        raise SearchError(f"--cpus-per-trial {args.cpus_per_trial:g} is more than this machine's {os.cpu_count()} CPUs")
    if args.gpus_per_trial is not None and not 0 <= args.gpus_per_trial < math.inf:
        raise SearchError(f"bad value {args.gpus_per_trial:g} for --gpus-per-trial: expected a number of GPUs >= 0")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", args.device):
        raise SearchError(f"bad value {args.device!r} for --device: expected auto, cpu, cuda, cuda:N or mps")

    if args.trial_memory is not None and args.trial_memory < 1:
        raise SearchError(f"bad value {args.trial_memory} for --trial-memory: expected MB >= 1")
    if args.minutes_per_strategy is not None:
        check_minutes(args.minutes_per_strategy)
    if args.trial_retries is not None and args.trial_retries < 0:
        raise SearchError(f"bad value {args.trial_retries} for --trial-retries: expected an integer >= 0")
    return args


@dataclass
class Plan:
    """A validated run: everything is known and checked, nothing is written yet."""

    run_dir: Path
    settings: rundir.RunSettings
    strategies: dict[str, Strategy]
    objectives: list[Objective]
    new: bool


def plan_run(args: argparse.Namespace) -> tuple[Plan, Dataset]:
    """Check every input (names, numbers, paths, storage, data) without writing anything or starting
    Ray; the plan, and the data as loaded (a dry run's estimate reads it; trials load their own)."""
    if args.address:
        cluster.check_reachable(args.address)
    if args.resume:
        if not args.run_dir:
            raise SearchError("--resume needs --run-dir: the run directory to continue")
        run_dir = Path(args.run_dir)
        rundir.check_not_in_use(run_dir)
        settings = check_resume(args, rundir.read_settings(run_dir))
        if args.storage and rundir.absolute_storage(args.storage) != settings.storage:
            raise SearchError(f"--resume: the run in {run_dir} stores its study in {settings.storage}, not {args.storage}")
        rundir.check_writable(run_dir)
        check_storage(settings.storage, must_exist=True)
        check_study(open_storage(settings.storage), settings.study_name, settings.storage)
    else:
        run_dir = Path(args.run_dir or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        storage = rundir.absolute_storage(args.storage) if args.storage else rundir.storage_url(run_dir)
        settings = new_settings(args, run_dir, storage)
    strategies = resolve_strategies(",".join(settings.strategies))
    chosen = objectives(settings.objectives, cost_model(settings.cost_model))
    if [o.name for o in chosen] != settings.objectives:
        raise SearchError(f"{run_dir}/{rundir.SETTINGS_FILE} lists objectives {settings.objectives} in an order this version cannot use")
    data = load_dataset(settings.dataset, args.data_dir)  # missing or corrupt data fails here, not in every trial
    if not args.resume:
        rundir.check_new_run_dir(run_dir)
        check_storage(settings.storage, must_exist=False)
    check_writable_dir(args.cache_dir if args.cache_dir is not None else default_cache_dir(), cache_option(args.cache_dir))
    check_fixed_plans(settings, strategies)
    return Plan(run_dir, settings, strategies, chosen, new=not args.resume), data


def check_fixed_plans(settings: rundir.RunSettings, strategies: dict[str, Strategy]) -> None:
    """A strategy for which the study samples nothing (every option it searches fixed with ``--set``,
    no ReLU target) runs one plan in every trial: when the checks its ``run`` makes before training
    refuse that plan (a DeepReDuce plan over the budget), the run is refused now, before Ray starts,
    rather than recording every trial of it infeasible."""
    info = dataset_info(settings.dataset)
    fixed = settings.extra.get("fixed_options", {})
    for name, strategy in strategies.items():
        options = unsampled_options(strategy, settings.budget or settings.full_relus, settings.dataset, fixed.get(name, {}),
                                    settings.model, settings.model_options)
        if options is None:
            continue
        try:
            strategy.preview(settings.model, settings.model_options, info, settings.budget, options)
        except SearchError as err:
            raise SearchError(f"every trial of {name} would run the same plan (--set fixes all it searches): {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.about:  # a recipe's source and the published figures it should reproduce
        print(describe_about(args.config, args.about))
    plan, data = plan_run(args)
    if args.dry_run:
        print(f"dry run: {describe_plan(plan)}; nothing written")
        print_estimates(args, plan, data)
        return 0
    del data
    run_dir, settings = plan.run_dir, plan.settings
    with rundir.claim(run_dir, new=plan.new) as lock:
        cluster.quiet(args.verbose)
        importlib.import_module("ray")  # here, before the thread: two threads must not import one package at once
        imports = threading.Thread(target=_import_ahead, daemon=True)
        imports.start()
        started = cluster.connect(args.address, args.verbose, ship=cluster.user_code([settings.model, *settings.strategies]))
        imports.join()
        finished = False
        try:
            resources = cluster.fit_resources(args.cpus_per_trial, args.gpus_per_trial, lambda m: print(m, file=sys.stderr))
            if plan.new:  # run.json only once its study exists: from here on the directory can be resumed
                create_study(settings.storage, settings.study_name, settings.directions, settings.objectives)
                rundir.write_settings(run_dir, settings)
            study = _run(args, run_dir, settings, plan.strategies, plan.objectives, resources)
            finished = True
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted; resume with: python -m search.run --resume --run-dir {run_dir}") from None
        finally:
            if started:  # after a finished study, Ray stops while the summary and the report are written
                cluster.disconnect(background=finished)
        lock.release()
    front = pareto_trials(study, plan.objectives)
    trials = study.get_trials(deepcopy=False)
    complete, failed = (sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.FAIL))
    pruned = sum(t.state == TrialState.PRUNED and "prune_reason" in t.user_attrs for t in trials)
    infeasible = sum(t.state == TrialState.PRUNED for t in trials) - pruned
    print(f"\n{complete} complete, {pruned} pruned early, {infeasible} infeasible, {failed} failed; "
          f"Pareto-optimal trials ({len(front)}):")
    print(pareto_table(front, plan.objectives) if front else "(none: no trial completed)")
    write_report(run_dir)
    cluster.wait_disconnected()
    return 0


def _import_ahead() -> None:
    """What the study needs, imported in a thread while the driver waits for Ray (its local Ray's head
    to come up, or ``ray.init`` to join a cluster): Ray Tune and Optuna's RDB storage. The storage
    imports SQLAlchemy's ORM and Alembic only when one is opened: opening a throwaway in-memory one
    here takes the study's creation from 1.4 s to 0.3 s. The report's renderers (plotly, matplotlib:
    0.5 s of CPU) are left to the report, written while Ray stops and a core is free; before the
    study, Ray's start and the driver keep both cores busy."""
    importlib.import_module("search.study.engine")
    optuna.storages.RDBStorage("sqlite:///:memory:")


def first_trials(plan: Plan, verbose: bool, path_sharing: bool) -> dict[str, tuple[Any, list[int]]]:
    """The options and budgets of a new study's first trial of each strategy, drawn as the study draws
    them, in an in-memory study: its default recipe enqueued, the options that recipe leaves open
    sampled by the run's sampler and seed; its budget the target where the strategy trains to one
    (and, with ``path_sharing``, the larger ones along its path), else the study's."""
    settings = plan.settings
    fixed = settings.extra.get("fixed_options", {})
    cap = settings.budget or settings.full_relus
    cluster.quiet(verbose)
    study = optuna.create_study(directions=settings.directions, sampler=make_sampler(settings.sampler, settings.seed))
    enqueue_defaults(study, plan.strategies, cap, settings.dataset, fixed)
    space = define_space(plan.strategies, cap, settings.dataset, fixed, settings.model, settings.model_options)
    first: dict[str, tuple[Any, list[int]]] = {}
    for _ in plan.strategies:
        decided = space(study.ask())[TRIAL_KEY]
        name = decided["strategy"]
        if decided.get("error"):
            raise SearchError(decided["error"])
        strategy = plan.strategies[name]
        options = strategy.parse_options({**decided["options"], **fixed.get(name, {})})
        budget = decided["target"] if strategy.trains_to_budget else settings.budget
        path = path_budgets(budget, cap, PATH_RUNGS) if path_sharing and strategy.shares_path and budget is not None else []
        first[name] = (options, [budget, *path] if budget is not None else [])
    return first


def print_estimates(args: argparse.Namespace, plan: Plan, data: Dataset) -> None:
    """For ``--dry-run``: the teacher's and each strategy's first trial's resolved recipes and compute
    (:mod:`search.estimate`, timed here with the threads a trial gets), and the study's, roughly."""
    settings, info, extra = plan.settings, dataset_info(plan.settings.dataset), plan.settings.extra
    print(describe_data(data))
    try:
        device, unavailable = pick_device(args.device), ""
    except SearchError as err:  # the trials may run where there is one: only this machine cannot time it
        device, unavailable = None, f"{err} (the steps are timed on this machine)"
    estimator = None if device is None else Estimator(info, len(data.train), len(data.val), device, settings.model,
                                                      settings.model_options, max(1, int(args.cpus_per_trial)))
    first = first_trials(plan, args.verbose, args.path_sharing)
    recipe = teacher_config(info.name, extra.get("teacher_epochs"), extra.get("teacher_options"))
    teacher_seconds: float | None = 0.0
    if any(strategy.uses_teacher(first[name][0]) for name, strategy in plan.strategies.items()):
        cache_dir = Path(args.cache_dir) if args.cache_dir is not None else default_cache_dir()
        print(teacher_status(settings.model, settings.model_options, data, recipe, cache_dir))
        cached = teacher_file(settings.model, settings.model_options, data, recipe, cache_dir).is_file()
        teacher = teacher_phase(settings.model, settings.model_options, info, recipe, cached)
        if cached:
            print(recipe_line(teacher))
        else:
            teacher_seconds = report([teacher], estimator, unavailable, total="teacher estimate (once: the trials share it)")
    trials: dict[str, float | None] = {}
    for name, strategy in plan.strategies.items():
        options, budgets = first[name]
        shown = ", ".join(f"{b:,}" for b in budgets) or "none"
        target = f"target{'s' if len(budgets) > 1 else ''} {shown} ReLUs" if strategy.trains_to_budget else f"budget {shown}"
        print(f"first trial of {name} (its default recipe; what it leaves open, sampled; {target}): {show_options(options)}")
        try:
            phases, unknown = strategy_phases(strategy, options, settings.model, settings.model_options, info, budgets,
                                              extra.get("train_options", {}))
        except OverBudget as over:  # only this trial's: a strategy with nothing sampled was refused by check_fixed_plans
            print(f"  the study records this trial infeasible, untrained ({over}); the trials it samples after it may fit")
            trials[name] = None
            continue
        trials[name] = report(phases, estimator, unknown or unavailable, total="estimate of the trial",
                              say=lambda line: print(f"  {line}"))
    print(study_estimate(args, settings, trials, teacher_seconds))


def study_estimate(args: argparse.Namespace, settings: rundir.RunSettings, trials: dict[str, float | None],
                   teacher_seconds: float | None) -> str:
    """The study's compute as its number of trials (or its time shares) times the mean first trial,
    plus the teacher once: rough, since sampled trials differ from the default ones."""
    unknown = [name for name, seconds in trials.items() if seconds is None] + (["the teacher"] if teacher_seconds is None else [])
    if unknown:
        return f"study estimate: unavailable: no estimate of {', '.join(unknown)} (see above)"
    mean = sum(trials.values()) / len(trials)  # type: ignore[arg-type]
    bounds = []
    if settings.trials is not None:
        bounds.append((settings.trials * mean, f"{settings.trials} trials x ~{duration(mean)}"
                       + (" (the mean first trial)" if len(trials) > 1 else "")))
    if settings.minutes_per_strategy is not None:
        bounds.append((settings.minutes_per_strategy * 60 * len(trials),
                       f"{settings.minutes_per_strategy:g} min per strategy x {len(trials)}"))
    seconds, how = min(bounds)
    if teacher_seconds:
        seconds, how = seconds + teacher_seconds, f"{how} + the teacher {duration(teacher_seconds)}"
    concurrency = args.concurrency or (None if args.address else max(1, int((os.cpu_count() or 1) // args.cpus_per_trial)))
    concurrency = min(concurrency or 1, settings.trials or math.inf)
    notes = [f"about {duration(seconds / concurrency)} of wall time with {concurrency} trials at a time"] if concurrency > 1 else []
    if args.address:
        notes.append("timed on this machine, not on the cluster's nodes")
    if settings.trials is not None and args.resume:
        notes.append("the trials already finished count against it")
    return (f"study estimate (rough: sampled trials differ from the default recipes, and early stopping ends some "
            f"sooner): {how} = {duration(seconds)} of trial compute" + "".join(f"; {note}" for note in notes))


def describe_plan(plan: Plan) -> str:
    settings = plan.settings
    budget = f"{settings.budget:,}" if settings.budget else "none"
    verb = "would resume" if not plan.new else "would run"
    return (f"{verb} {', '.join(settings.strategies)} on {settings.model}/{settings.dataset} ({settings.full_relus:,} ReLUs, "
            f"budget {budget}), objectives {', '.join(settings.objectives)}, {_extent(settings)}, sampler {settings.sampler}, "
            f"in {plan.run_dir} (storage {settings.storage})")


if __name__ == "__main__":
    run_main(main, skip_teardown=True)  # Ray and torch take ~2 s to tear down after a study
