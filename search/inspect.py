"""``python -m search.inspect``: the per-stage (and per-site) ReLU table of a model or a strategy plan.

Counting is the project's one convention: active mask elements for one input, batch excluded. The
table says whether the model has a stem ReLU, since published counts differ on that. Below it come
the model's other nonlinearities (GELU, Hardswish, softmax, max pooling, ...), which no strategy
removes and the ReLU count leaves out. ``--list`` shows the models and strategies installed.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from search.checkpoint import load_model
from search.cli import ArgumentParser, add_model_arguments, parse_input_shape, run_main
from search.data import dataset_info
from search.errors import SearchError
from search.nonlinear import HOW, NonlinearCount, kind_totals, nonlinear_table
from search.relu import SiteCount, relu_table, stage_totals
from search.settings import describe_options, split_settings
from search.spaces import build_model, describe_models
from search.spaces.imported import is_import_path, plugin_models
from search.strategies import describe_strategies, get_strategy

MAX_INPUT_ELEMENTS = 3 * 2048 * 2048  # 60x ImageNet's 3x224x224; a ResNet's activations on it take several GB


def format_table(rows: Sequence[SiteCount], per_site: bool = False) -> str:
    """The ReLU table as text: one line per stage (or per site), with shares of the total."""
    total = sum(r.active for r in rows) or 1
    header = f"{'stage' if not per_site else 'site':<24} {'sites':>5} {'active ReLUs':>14} {'all-on ReLUs':>14} {'share':>7}"
    lines = [header, "-" * len(header)]
    if per_site:
        for r in rows:
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<24} {1:>5} {r.active:>14,} {r.total:>14,} {r.active / total:>7.1%}  {shape} {r.mode}")
    else:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.stage] = counts.get(r.stage, 0) + 1
        for stage, (active, all_on) in stage_totals(rows).items():
            lines.append(f"{stage:<24} {counts[stage]:>5} {active:>14,} {all_on:>14,} {active / total:>7.1%}")
    lines.append("-" * len(header))
    lines.append(f"{'total':<24} {len(rows):>5} {sum(r.active for r in rows):>14,} {sum(r.total for r in rows):>14,}")
    return "\n".join(lines)


def format_nonlinear(rows: Sequence[NonlinearCount]) -> str:
    """The nonlinearities that are not ReLU sites, one line per module and kind, with totals per kind."""
    if not rows:
        return f"other nonlinearities: none ({HOW})"
    header = f"{'place':<36} {'kind':<16} {'calls':>5} {'elements':>14}"
    lines = [f"other nonlinearities, not ReLU sites ({HOW}; elements per input):", header, "-" * len(header)]
    lines += [f"{r.place:<36} {r.kind:<16} {r.calls:>5} {r.elements:>14,}" for r in rows]
    lines.append("-" * len(header))
    lines.append("total: " + ", ".join(f"{kind} {elements:,}" for kind, elements in kind_totals(rows).items()))
    return "\n".join(lines)


def print_counts(model: nn.Module, input_size: tuple[int, int, int], rows: Sequence[SiteCount], per_site: bool) -> None:
    """The ReLU table, the other nonlinearities, and the closing ``total_relus=N`` line."""
    print(format_table(rows, per_site=per_site))
    print(format_nonlinear(nonlinear_table(model, input_size)))
    print(f"total_relus={sum(r.active for r in rows)}")


def catalogue() -> str:
    """``--list``: every model and strategy installed, one block each with its ``--set`` options."""
    return (f"models (--model NAME; your own: --model package.module:factory):\n\n{describe_models()}\n\n"
            f"strategies (--strategy NAME):\n\n{describe_strategies()}")


def check_input_size(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """``shape`` unless one input of it is too large to count on: the count runs the model once on
    it, and activations many times the input's size would exhaust memory instead of saying why."""
    elements = shape[0] * shape[1] * shape[2]
    if elements > MAX_INPUT_ELEMENTS:
        raise SearchError(
            f"input {'x'.join(map(str, shape))} has {elements:,} elements; at most {MAX_INPUT_ELEMENTS:,} "
            "(e.g. 3x2048x2048) can be counted"
        )
    return shape


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m search.inspect",
        description="Print the ReLU count of a model (or of a strategy's plan for it) per stage, "
        "ending with total_relus=N. Nothing is trained. With --checkpoint, the table of a saved model "
        "(e.g. a study's RUN_DIR/trials/<n>/model.pt) with its masks.",
    )
    add_model_arguments(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--input", help="input shape CxHxW, e.g. 3x32x32")
    where.add_argument("--dataset", help="take the input shape (and class count) of this dataset")
    where.add_argument("--checkpoint", metavar="PATH", help="a saved model (search.checkpoint format): count its active ReLUs")
    where.add_argument("--list", action="store_true", help="list the models and strategies installed (built in and "
                       "plug-ins) with their --set options, and count nothing")
    parser.add_argument("--strategy", help="show this strategy's plan (its masks and reshaping) instead of the full model")
    parser.add_argument("--sites", action="store_true", help="one row per ReLU site instead of per stage")
    args = parser.parse_args(argv)

    if args.list:
        if args.strategy is not None or args.sets or args.model is not None or args.sites:
            raise SearchError("--list takes no other option")
        print(catalogue())
        return 0
    if args.checkpoint is not None:
        if args.strategy is not None or args.sets or args.model is not None:
            raise SearchError("--checkpoint shows the saved model as it is: omit --model, --set and --strategy")
        model, payload = load_model(args.checkpoint)
        input_size = check_input_size(tuple(payload["input_size"]))
        rows = relu_table(model, input_size)
        print(f"checkpoint {args.checkpoint}: model {payload['model']} ({describe_options(payload['options'])}), "
              f"input {'x'.join(map(str, input_size))}")
        print_counts(model, input_size, rows, args.sites)
        return 0
    info = dataset_info(args.dataset) if args.dataset is not None else None
    input_size = info.input_shape if info else check_input_size(parse_input_shape(args.input))
    num_classes = info.num_classes if info else 10
    model_name = args.model if args.model is not None else (info.default_model if info else None)
    if model_name is None:
        raise SearchError("--model is required with --input")
    strategy = get_strategy(args.strategy) if args.strategy is not None else None
    routed = split_settings(args.sets, model_name, strategy)  # teacher./train. options change no count
    model_options, strategy_raw = routed.model, routed.strategy
    if strategy is not None:
        options = strategy.parse_options(strategy_raw)
        model = strategy.plan(model_name, model_options, input_size, num_classes, options)
    else:
        model = build_model(model_name, num_classes=num_classes, input_size=input_size, **model_options)
    rows = relu_table(model, input_size)
    stem = "present" if any(r.stage == "stem" for r in rows) else "absent"
    if stem == "absent" and strategy is None and (is_import_path(model_name) or model_name in plugin_models()):
        # a user's model: its stages are named after its top-level modules, so none is known as the stem
        stem = "not identified (stages are the model's top-level modules, top its own ReLUs)"
    print(f"model {model_name} ({describe_options(model_options)}), input {'x'.join(map(str, input_size))}")
    if strategy is not None:
        print(f"plan of strategy {strategy.name} ({describe_options(dict(strategy_raw))})")
    print(f"stem ReLU: {stem}; one ReLU = one activation element for one input")
    print_counts(model, input_size, rows, args.sites)
    return 0


if __name__ == "__main__":
    run_main(main)
