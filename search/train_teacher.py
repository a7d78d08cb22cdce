"""``python -m search.train_teacher``: train (or find) the cached full-ReLU teacher ahead of a study.

Every strategy distils from the same teacher, which the first trial that needs it would otherwise
train while the others wait on its lock. Training it first keeps that cost out of the trials, and
out of a strategy's share under ``search.run --minutes-per-strategy``. The cache key is the one the
trials compute (:func:`search.teacher.teacher_key`), so give the same model, ``--set`` options
(``teacher.KEY`` ones included), data and ``--teacher-epochs`` as the study. ``--dry-run`` checks the same inputs and says whether that
teacher is cached already.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from search.cli import ArgumentParser, add_data_arguments, add_model_arguments, run_main
from search.data import dataset_info, load_dataset
from search.dryrun import check_data, teacher_status
from search.outputs import cache_option, check_writable_dir
from search.pipeline import full_relu_count
from search.preflight import check_device
from search.settings import describe_options, split_settings
from search.teacher import default_cache_dir, get_teacher
from search.train import seed_everything, teacher_config


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m search.train_teacher",
        description="Train the full-ReLU teacher of a model and dataset into the teacher cache (or report the cached one), "
        "with the recipe the study's trials use. Ends with: teacher val_acc=A test_acc=T path=P",
    )
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--teacher-epochs", type=int, help="epochs (default: the dataset's recipe, as in search.run); "
                        "the same as --set teacher.epochs=N. Any other field of the recipe: --set teacher.KEY=VALUE "
                        "(lr, batch_size, schedule=step, milestones=80,120, ...; see README, Training recipes)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--cache-dir", help="teacher cache (default: $SEARCH_CACHE_DIR or ~/.cache/search)")
    parser.add_argument("--dry-run", action="store_true", help="check every input as a run would and say whether the "
                        "teacher is cached already; train and write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    info = dataset_info(args.dataset)
    model_name = args.model if args.model is not None else info.default_model
    routed = split_settings(args.sets, model_name, None)
    model_options = routed.model
    full = full_relu_count(model_name, model_options, info.name)  # builds the model: bad option values fail here
    recipe = teacher_config(info.name, args.teacher_epochs, routed.teacher)
    device = check_device(args.device)
    cache_dir = check_writable_dir(args.cache_dir if args.cache_dir is not None else default_cache_dir(),
                                   cache_option(args.cache_dir))
    if args.dry_run:
        data, data_line = check_data(info.name, args.data_dir, args.download)
        print(f"dry run (nothing is trained or written): teacher {model_name} ({describe_options(model_options)}) "
              f"on {info.name}: {full:,} ReLUs")
        print(f"recipe: {describe_options(asdict(recipe))}")
        print(data_line)
        print(teacher_status(model_name, model_options, data, recipe, cache_dir))
        return 0
    data = load_dataset(info.name, args.data_dir, args.download)
    seed_everything(0)
    _, record = get_teacher(model_name, model_options, data, recipe, device, cache_dir)
    print(f"teacher val_acc={record['val_acc']:.4f} test_acc={record['test_acc']:.4f} path={record['path']}")
    return 0


if __name__ == "__main__":
    run_main(main)
