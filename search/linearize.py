"""``python -m search.linearize``: one strategy, one model, one budget (or a few), no study.

Ends with the line ``relus=N val_acc=A test_acc=T`` (accuracies as fractions), one ``budget=B ...``
line per budget when given several (``--budget 5%,10%,25%``); ``--out`` saves the
weights and masks, loadable with ``search.checkpoint.load_model``. Every input, output paths included,
is checked before anything trains; ``--dry-run`` stops there and says what a run would do and about
how long it would take (:mod:`search.estimate`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from search.cli import ArgumentParser, add_data_arguments, add_model_arguments, run_main
from search.config import describe_about, parse_with_config
from search.data import dataset_info, load_dataset
from search.dryrun import check_data, teacher_file, teacher_status
from search.errors import SearchError
from search.estimate import Estimator, report, strategy_phases, teacher_phase
from search.nonlinear import warn_nonlinear
from search.options import show_options
from search.outputs import cache_option, check_writable_dir, check_writable_file
from search.pipeline import Job, Prepared, budget_path, execute, execute_budgets, full_relu_count, prepare
from search.preflight import check_device, check_seed
from search.settings import describe_options, parse_budgets, split_settings
from search.spaces import build_model
from search.strategies import describe_strategies, get_strategy, list_strategies
from search.teacher import default_cache_dir
from search.train import pick_device


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m search.linearize",
        description="Cut a model's ReLUs to a budget with one strategy, then report accuracy. "
        "Ends with: relus=N val_acc=A test_acc=T",
        epilog=describe_strategies(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--strategy", help="(required, here or in --config) "
                        + f"one of: {', '.join(list_strategies())}")
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--budget", help="ReLU budget: a count (e.g. 50000) or a percentage of the model's ReLUs (e.g. 10%%); "
                        "a comma list (5%%,10%%,25%%) prints one result line per budget: SNL learns its masks once, down "
                        "to the smallest, and finetunes the masks it had at each budget; other strategies run once per budget")
    parser.add_argument("--out", help="save the linearized model (weights and masks) here; with several budgets, "
                        "to NAME-<budget>.pt beside it")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data split is fixed)")
    parser.add_argument("--teacher-epochs", type=int, help="epochs for the cached full-ReLU teacher (default per dataset); "
                        "the same as --set teacher.epochs=N. Every field of the teacher's recipe is --set teacher.KEY=VALUE, "
                        "and of the strategy's final training phase --set train.KEY=VALUE (see README, Training recipes)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--cache-dir", help="teacher cache (default: $SEARCH_CACHE_DIR or ~/.cache/search)")
    parser.add_argument("--config", metavar="FILE", help="YAML file of options keyed by their long names (strategy: snl, "
                        "budget: 10%%, set: [max_epochs=2000]), such as the papers' recipes in recipes/; the command line "
                        "overrides it, a --set KEY=VALUE the file's entry of that key")
    parser.add_argument("--dry-run", action="store_true", help="check every input as a run would and print what it "
                        "would do (model, ReLUs, budget, plan, data, teacher, each training phase's resolved recipe) and "
                        "an estimate of its compute (a few steps timed on --device); train and write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_with_config(build_parser(), argv)
    if args.strategy is None:
        raise SearchError("--strategy is required (on the command line or in --config); "
                          f"installed: {', '.join(list_strategies())}")
    if args.about:  # a recipe's source and the published figures it should reproduce
        print(describe_about(args.config, args.about))
    prepared, outputs, cache_dir, budgets = checked_job(args)
    job = prepared.job
    info = dataset_info(job.dataset)
    warn_nonlinear(build_model(prepared.model_name, num_classes=info.num_classes, input_size=info.input_shape,
                               **prepared.model_options), info.input_shape, prepared.model_name)
    shown = ", ".join(f"{b:,}" for b in budgets) if budgets else "none"
    header = (f"{job.strategy} on {prepared.model_name}/{job.dataset}: {prepared.full_relus:,} ReLUs, "
              f"budget{'s' if len(budgets) > 1 else ''} {shown}")
    if args.dry_run:
        print(f"dry run (nothing is trained or written): {header}")
        print_dry_run(prepared, outputs, cache_dir, budgets)
        return 0
    print(header)
    data = load_dataset(job.dataset, job.data_dir, job.download)  # missing or corrupt files fail before training
    if len(budgets) <= 1:
        print(execute(prepared, data=data).summary_line())
        return 0
    results = execute_budgets(prepared, budgets, data=data, on_result=lambda budget, result: print(
        f"budget={budget} " + (f"error: {result}" if isinstance(result, SearchError) else result.summary_line()), flush=True))
    failed = sum(isinstance(r, SearchError) for r in results.values())
    if failed:
        raise SearchError(f"{failed} of {len(budgets)} budgets were not reached (see their lines above)")
    return 0


def checked_job(args: argparse.Namespace) -> tuple[Prepared, list[Path], Path, list[int]]:
    """The job the command line asks for, every value and output path checked (the files ``--out``
    leads to: one, or one per budget); nothing trained. With several budgets the job's budget is the
    smallest (the one a shared run goes down to)."""
    strategy = get_strategy(args.strategy)
    info = dataset_info(args.dataset)
    model_name = args.model if args.model is not None else info.default_model
    routed = split_settings(args.sets, model_name, strategy)
    model_options = routed.model
    budgets = parse_budgets(str(args.budget), full_relu_count(model_name, model_options, info.name)) if args.budget is not None else []
    budget = min(budgets) if budgets else None
    check_device(args.device)
    check_seed(args.seed)
    # Output paths before anything trains: a result that cannot be saved is lost.
    if args.out is None:
        outputs = []
    elif len(budgets) > 1:
        outputs = [check_writable_file(str(budget_path(args.out, each)), "--out") for each in budgets]
    else:
        outputs = [check_writable_file(args.out, "--out")]
    cache_dir = check_writable_dir(args.cache_dir if args.cache_dir is not None else default_cache_dir(),
                                   cache_option(args.cache_dir))
    job = Job(
        strategy=args.strategy,
        dataset=info.name,
        model=model_name,
        budget=budget,
        model_options=model_options,
        strategy_options=routed.strategy,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.seed,
        teacher_epochs=args.teacher_epochs,
        teacher_options=routed.teacher,
        train_options=routed.train,
        device=args.device,
        cache_dir=str(cache_dir),
        out=args.out,
    )
    return prepare(job), outputs, cache_dir, budgets


def print_dry_run(prepared: Prepared, outputs: list[Path], cache_dir: Path, budgets: list[int]) -> None:
    """What a run would do, after the checks the run makes before training (the strategy's own
    included) and reading the data as the run would: the resolved recipe of each training phase and
    the compute it would take (:mod:`search.estimate`: a few steps timed on the run's device)."""
    job, strategy, info = prepared.job, prepared.strategy, dataset_info(prepared.job.dataset)
    plan = strategy.preview(prepared.model_name, prepared.model_options, info, job.budget, prepared.options)
    data, data_line = check_data(job.dataset, job.data_dir, job.download)
    print(f"model options: {describe_options(prepared.model_options)}")
    print(f"strategy options: {show_options(prepared.options)}")
    print(f"plan: {plan}")
    print(data_line)
    uses_teacher = strategy.uses_teacher(prepared.options)
    recipe = prepared.teacher_recipe
    print(teacher_status(prepared.model_name, prepared.model_options, data, recipe, cache_dir) if uses_teacher
          else "teacher: not used with these options")
    print(f"output: {', '.join(map(str, outputs)) or 'none (no --out)'}")
    phases, unknown = strategy_phases(strategy, prepared.options, prepared.model_name, prepared.model_options, info, budgets,
                                      job.train_options)
    if uses_teacher:
        cached = data is not None and teacher_file(prepared.model_name, prepared.model_options, data, recipe, cache_dir).is_file()
        phases.insert(0, teacher_phase(prepared.model_name, prepared.model_options, info, recipe, cached))
    if data is None:
        report(phases, None, "the data is not downloaded yet, and its size sets the steps per epoch")
        return
    report(phases, Estimator(info, len(data.train), len(data.val), pick_device(job.device), prepared.model_name,
                             prepared.model_options), unknown)


if __name__ == "__main__":
    run_main(main)
