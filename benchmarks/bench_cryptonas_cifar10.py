"""CryptoNAS on CIFAR-10: budgeted CNets at the ReLU counts of the SNL and DeepReDuce benchmarks.

Each budget goes through the same pipeline as ``python -m search.linearize --strategy cryptonas
--model resnet18 --set model.width=0.25 --dataset cifar10 --budget B``: the strategy picks the CNet
depth and width that fit B, trains it from scratch (no distillation), selects on the validation split
and evaluates the test split once. Budgets are counts or percentages of resnet18 width 0.25
(139,264 ReLUs at 32x32 with the stem ReLU): the SNL budgets 15% / 5% and DeepReDuce's plan counts.

Run: python -m benchmarks.bench_cryptonas_cifar10 [--epochs 10] [--budgets 57344,28672,15%,12288,5%] [--set balance=false]
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
from search.options import parse_assignments
from search.pipeline import Job, execute, full_relu_count, prepare
from search.settings import parse_budget

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BASE_MODEL, BASE_OPTIONS = "resnet18", {"width": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--budgets", default="57344,28672,15%,12288,5%", help="comma-separated counts or percentages")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core machine)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a cryptonas option for every budget (repeatable), e.g. balance=false")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = full_relu_count(BASE_MODEL, BASE_OPTIONS, "cifar10")
    budgets = [parse_budget(text, full) for text in args.budgets.split(",")]
    data = load_dataset("cifar10", args.data_dir)
    started = datetime.datetime.now(datetime.timezone.utc)
    base = f"base {BASE_MODEL} width 0.25: {full:,} ReLUs"
    print(f"# {started:%Y-%m-%d %H:%M} UTC | {machine()} | torch threads {args.threads} | {base}", flush=True)
    rows = []
    for budget in budgets:
        job = Job(
            strategy="cryptonas",
            dataset="cifar10",
            model=BASE_MODEL,
            budget=budget,
            model_options=dict(BASE_OPTIONS),
            strategy_options={"epochs": args.epochs, **parse_assignments(args.sets)},
            data_dir=args.data_dir,
            seed=args.seed,
        )
        start = time.perf_counter()
        result = execute(prepare(job), log=lambda line: print(line, flush=True), data=data)
        arch = result.outcome.model_options
        rows.append(
            {
                "budget": budget,
                "relus": result.outcome.relus,
                "val_acc": result.outcome.val_acc,
                "test_acc": result.test_acc,
                "layers": arch["layers"],
                "width": arch["width"],
                "ops": list(arch["ops"]),
                "skips": list(arch["skips"]),
                "epochs": result.outcome.details["epochs"],
                "seconds": time.perf_counter() - start,
            }
        )
        print(result.summary_line(), flush=True)
    print("| budget | ReLUs | CNet (layers, width) | ops / skips | epochs | val acc | test acc | time (s) |")
    print("|---:|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        ops = "all conv3x3" if set(r["ops"]) == {"conv3x3"} else ",".join(r["ops"])
        print(
            f"| {r['budget']:,} | {r['relus']:,} | ({r['layers']}, {r['width']}) | {ops}; skips {','.join(r['skips']) or 'none'} "
            f"| {r['epochs']} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {r['seconds']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started.isoformat(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
