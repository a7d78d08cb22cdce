"""DeepReDuce on CIFAR-10 (the 10,000-image subset): criticality order and plans, beside SNL at the same counts.

ResNet18 at width 0.25 (139,264 ReLUs with the stem ReLU). The teacher comes from the shared cache
(default recipe ``search.train.teacher_config("cifar10")``, default cache dir), so it is the same
teacher the SNL benchmark uses. Each plan goes through the same pipeline as
``python -m search.linearize --strategy deepreduce --model resnet18 --set model.width=0.25 --dataset
cifar10 --set n_cull=... ...``: the criticality order is measured once (cached) and the least critical
stages are culled; the network is trained with KD and selected on the validation split, and the test
split is evaluated once. Then SNL runs at each plan's ReLU count through
``python -m search.linearize --strategy snl ... --budget N`` (in-process, same pipeline), with the
short schedule of benchmarks/bench_snl_cifar10.py. Epochs are far below the paper's so that the run
fits a 2-core CPU; the figures compare the strategies at equal, small training budgets.

Run: python -m benchmarks.bench_deepreduce_cifar10 [--epochs 4] [--criticality-epochs 1] [--no-snl]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine
from search.data import load_dataset
from search.pipeline import Job, execute, full_relu_count, prepare

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL, MODEL_OPTIONS = "resnet18", {"width": 0.25}
# Three plans from the paper's recipe: cull the least critical stage + thin; cull two + thin at half
# width; cull one + thin with stem stride 2.
PLANS: list[dict[str, str]] = [
    {"n_cull": "1", "thin": "true"},
    {"n_cull": "2", "thin": "true", "alpha": "0.5"},
    {"n_cull": "1", "thin": "true", "rho": "0.5"},
]
SNL_OPTIONS = {"lam": "5e-4", "kappa": "1.5", "warmup": "1", "lr": "1e-2", "max_epochs": "8", "finetune_lr": "1e-2"}


def _run(job: Job, data: Any) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    result = execute(prepare(job), data=data)
    row = {
        "relus": result.outcome.relus,
        "val_acc": result.outcome.val_acc,
        "test_acc": result.test_acc,
        "teacher_test_acc": result.teacher.get("test_acc"),
        "details": result.outcome.details,
    }
    print(result.summary_line(), flush=True)
    return row, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--epochs", type=int, default=4, help="DeepReDuce training epochs per plan")
    parser.add_argument("--criticality-epochs", type=int, default=1, help="finetuning epochs per stage for criticality")
    parser.add_argument("--snl-finetune-epochs", type=int, default=3)
    parser.add_argument("--no-snl", action="store_true", help="skip the SNL runs at the plans' counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, help="teacher recipe epochs (default: the cifar10 recipe's)")
    parser.add_argument("--cache-dir", help="teacher and criticality cache (default: the user cache)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core machine)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = full_relu_count(MODEL, MODEL_OPTIONS, "cifar10")
    data = load_dataset("cifar10", args.data_dir)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {started:%Y-%m-%d %H:%M} UTC | {machine()} | torch threads {args.threads} | {MODEL} width 0.25: {full:,} ReLUs (stem ReLU included)", flush=True)
    common = {"epochs": str(args.epochs), "criticality_epochs": str(args.criticality_epochs)}
    rows: list[dict[str, Any]] = []
    for plan in PLANS:
        options = {**plan, **common}
        sets = " ".join(f"--set {k}={v}" for k, v in options.items())
        print(f"\n## deepreduce {sets}", flush=True)
        job = Job(strategy="deepreduce", dataset="cifar10", model=MODEL, model_options=dict(MODEL_OPTIONS),
                  strategy_options=options, data_dir=args.data_dir, seed=args.seed,
                  teacher_epochs=args.teacher_epochs, cache_dir=args.cache_dir)
        row, seconds = _run(job, data)
        rows.append({"strategy": "deepreduce", "plan": row["details"]["plan"], "set": sets, **row, "seconds": seconds})

    if not args.no_snl:
        snl_options = {**SNL_OPTIONS, "finetune_epochs": str(args.snl_finetune_epochs)}
        for count in [r["relus"] for r in rows if r["strategy"] == "deepreduce"]:
            print(f"\n## snl --budget {count} " + " ".join(f"--set {k}={v}" for k, v in snl_options.items()), flush=True)
            job = Job(strategy="snl", dataset="cifar10", model=MODEL, budget=count, model_options=dict(MODEL_OPTIONS),
                      strategy_options=snl_options, data_dir=args.data_dir, seed=args.seed,
                      teacher_epochs=args.teacher_epochs, cache_dir=args.cache_dir)
            try:
                row, seconds = _run(job, data)
            except Exception as err:  # a budget SNL cannot reach is a result to record, not a crash
                rows.append({"strategy": "snl", "budget": count, "error": str(err)})
                print(f"snl at {count:,}: failed: {err}", flush=True)
                continue
            rows.append({"strategy": "snl", "budget": count, **row, "seconds": seconds})

    criticality = next((r["details"]["criticality"] for r in rows if r["details"].get("criticality")), None)
    if criticality:
        print("\ncriticality order (least to most critical): " + " < ".join(criticality["order"]))
        print("| stage | ReLUs | val acc (only this stage has ReLUs) | score (val acc gained per 1k ReLUs) |")
        print("|---|---|---|---|")
        for label in criticality["order"]:
            print(f"| {label} | {criticality['relus'][label]:,} | {criticality['val_acc'][label]:.4f} | {criticality['scores'][label]:.4f} |")
        print(f"all-linear network val acc: {criticality['linear_val_acc']:.4f}")
    print("\n| strategy | plan / budget | ReLUs | val acc | test acc | minutes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        what = r.get("set") or f"budget {r['budget']:,}"
        if "error" in r:
            print(f"| {r['strategy']} | {what} | failed: {r['error']} | | | |")
        else:
            print(f"| {r['strategy']} | {what} | {r['relus']:,} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {r['seconds'] / 60:.1f} |")
    if rows and "teacher_test_acc" in rows[0]:
        print(f"teacher (full ReLU, {full:,}) test acc: {rows[0]['teacher_test_acc']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started.isoformat(), "machine": machine(), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
