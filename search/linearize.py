"""``python -m search.linearize``: one strategy, one model, one budget, no study.

Ends with the line ``relus=N val_acc=A test_acc=T`` (accuracies as fractions); ``--out`` saves the
weights and masks, loadable with ``search.checkpoint.load_model``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from search.cli import ArgumentParser, add_data_arguments, add_model_arguments, run_main
from search.data import dataset_info
from search.options import declared_options, describe
from search.pipeline import Job, execute, full_relu_count, prepare
from search.settings import parse_budget, split_settings
from search.strategies import get_strategy, list_strategies


def strategies_help() -> str:
    """Each installed strategy with its summary and ``--set`` options, for ``--help``."""
    parts = []
    for name in list_strategies():
        strategy = get_strategy(name)
        lines = [f"strategy {name}: {strategy.summary}".rstrip(": ")]
        for key, (hint, default) in declared_options(strategy.Options).items():
            lines.append(f"  --set {key}=...  {describe(hint)} (default: {_show_default(default)})")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _show_default(value: object) -> str:
    """A default as a user would type it; None means the strategy picks (per dataset or budget)."""
    if value is None:
        return "automatic"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m search.linearize",
        description="Cut a model's ReLUs to a budget with one strategy, then report accuracy. "
        "Ends with: relus=N val_acc=A test_acc=T",
        epilog=strategies_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--strategy", required=True, help=f"one of: {', '.join(list_strategies())}")
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--budget", help="ReLU budget: a count (e.g. 50000) or a percentage of the model's ReLUs (e.g. 10%%)")
    parser.add_argument("--out", help="save the linearized model (weights and masks) here")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data split is fixed)")
    parser.add_argument("--teacher-epochs", type=int, help="epochs for the cached full-ReLU teacher (default per dataset)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--cache-dir", help="teacher cache (default: $SEARCH_CACHE_DIR or ~/.cache/search)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    strategy = get_strategy(args.strategy)
    model_name = args.model or dataset_info(args.dataset).default_model
    model_options, strategy_options = split_settings(args.sets, model_name, strategy)
    budget = parse_budget(args.budget, full_relu_count(model_name, model_options, args.dataset))
    job = Job(
        strategy=args.strategy,
        dataset=args.dataset,
        model=model_name,
        budget=budget,
        model_options=model_options,
        strategy_options=strategy_options,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.seed,
        teacher_epochs=args.teacher_epochs,
        device=args.device,
        cache_dir=args.cache_dir,
        out=args.out,
    )
    prepared = prepare(job)
    print(f"{args.strategy} on {model_name}/{args.dataset}: {prepared.full_relus:,} ReLUs, budget {budget or 'none'}")
    result = execute(prepared)
    print(result.summary_line())
    return 0


if __name__ == "__main__":
    run_main(main)
