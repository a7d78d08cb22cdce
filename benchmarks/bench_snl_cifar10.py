"""SNL on CIFAR-10 (the 10,000-image subset): accuracy vs ReLU budget against the full-ReLU teacher.

Each budget goes through the same pipeline as ``python -m search.linearize --strategy snl --model
resnet18 --set model.width=0.25 --dataset cifar10 --budget B --set ...``: the teacher comes from the
shared cache (default recipe ``search.train.teacher_config("cifar10")``, default cache dir, so it is
the same teacher the DeepReDuce benchmark uses), masks are trained until the count is within B, the
B highest-scoring ReLUs are kept, the network is finetuned with KD and selected on the validation
split, and the test split is evaluated once. The epochs here are far fewer than the released
recipe's (hundreds of mask epochs, 100 finetune epochs) so that the run fits a 2-core CPU; the mask
phase therefore uses a larger step, Lasso and kappa than the released defaults.

Run: python -m benchmarks.bench_snl_cifar10 [--budgets 15%,5%] [--max-epochs 8] [--finetune-epochs 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from benchmarks.common import machine
from search.data import load_dataset
from search.pipeline import Job, execute, full_relu_count, prepare
from search.settings import parse_budget

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL, MODEL_OPTIONS = "resnet18", {"width": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--budgets", default="15%,5%", help="comma-separated counts or percentages of the model's ReLUs")
    parser.add_argument("--granularity", default="pixel")
    parser.add_argument("--lam", type=float, default=5e-4)
    parser.add_argument("--kappa", type=float, default=1.5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam step of the mask phase")
    parser.add_argument("--max-epochs", type=int, default=8, help="mask-phase cap; the phase stops once within budget")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--count-every", type=int, help="optimizer steps between mask counts (0: at epoch ends only, as the "
                        "released code; default: the package's, 20 a epoch and every step near the budget)")
    parser.add_argument("--finetune-lr", type=float, default=1e-2)
    parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the recipe of teacher_config('cifar10'))")
    parser.add_argument("--cache-dir", help="teacher cache (default: the shared default cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core machine)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = full_relu_count(MODEL, MODEL_OPTIONS, "cifar10")
    budgets = [(text, parse_budget(text, full)) for text in args.budgets.split(",")]
    snl_options = {
        "granularity": args.granularity,
        "lam": args.lam,
        "kappa": args.kappa,
        "warmup": args.warmup,
        "lr": args.lr,
        "max_epochs": args.max_epochs,
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
        **({"count_every": args.count_every} if args.count_every is not None else {}),
    }
    data = load_dataset("cifar10", args.data_dir)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {started:%Y-%m-%d %H:%M} UTC | {machine()} | torch threads {args.threads} | {MODEL} width 0.25: {full:,} ReLUs (stem ReLU included)", flush=True)
    print(f"# snl options: {snl_options}", flush=True)
    rows = []
    for text, budget in budgets:
        job = Job(
            strategy="snl",
            dataset="cifar10",
            model=MODEL,
            budget=budget,
            model_options=dict(MODEL_OPTIONS),
            strategy_options={k: str(v) for k, v in snl_options.items()},
            data_dir=args.data_dir,
            seed=args.seed,
            teacher_epochs=args.teacher_epochs,
            cache_dir=args.cache_dir,
        )
        start = time.perf_counter()
        try:
            result = execute(prepare(job), data=data)
        except Exception as err:  # a budget SNL cannot reach is a result to record, not a crash
            rows.append({"budget": text, "budget_relus": budget, "error": str(err), "seconds": time.perf_counter() - start})
            print(f"budget {text} ({budget:,}): failed: {err}", flush=True)
            continue
        details = result.outcome.details
        rows.append(
            {
                "budget": text,
                "budget_relus": budget,
                "relus": result.outcome.relus,
                "val_acc": result.outcome.val_acc,
                "test_acc": result.test_acc,
                "teacher_test_acc": result.teacher.get("test_acc"),
                "teacher_val_acc": result.teacher.get("val_acc"),
                "teacher_epochs": result.teacher.get("epochs"),
                "mask_epochs": details["mask_epochs"],
                "finetune_epochs": details["finetune_epochs"],
                "counts": details["counts"],
                "lambdas": details["lambdas"],
                "count_above_epsilon": details["count_above_epsilon"],
                "added_below_epsilon": details["added_below_epsilon"],
                "mask_steps": details["mask_steps"],
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"budget {text} ({budget:,}): {result.summary_line()} teacher_test_acc={result.teacher.get('test_acc'):.4f}", flush=True)

    print("\n| budget | ReLUs | test acc | teacher test acc (full ReLU) | mask epochs (steps) | count above epsilon at the stop "
          "| added below epsilon | finetune epochs | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['budget']} ({row['budget_relus']:,}) | failed: {row['error']} | | | | | | | {row['seconds'] / 60:.1f} |")
        else:
            print(
                f"| {row['budget']} ({row['budget_relus']:,}) | {row['relus']:,} | {row['test_acc']:.4f} | "
                f"{row['teacher_test_acc']:.4f} | {row['mask_epochs']} ({row['mask_steps']:,}) | {row['count_above_epsilon']:,} | "
                f"{row['added_below_epsilon']:,} | {row['finetune_epochs']} | {row['seconds'] / 60:.1f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started.isoformat(), "machine": machine(), "options": snl_options, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
