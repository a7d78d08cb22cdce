"""The three strategies compared in one study on CIFAR-10, each given the same compute time.

Runs, as a user would:

    python -m search.train_teacher --dataset cifar10 --data-dir D --model resnet18 --set width=W --cache-dir C
    python -m search.run --strategy all --dataset cifar10 --data-dir D --model resnet18 --set width=W \\
        --minutes-per-strategy M --budget 25% --cache-dir C --run-dir R [short schedules as --set]

then reads the run directory back through the report model (``search.reporting``) and prints, per
strategy: trials, compute time used, its Pareto front (ReLUs, validation and test accuracy), its
hypervolume, and its best test accuracy within 5%, 10% and 25% of the full ReLU count (the trial with
the best validation accuracy there, so the test split never chooses). The report itself is in R.

The teacher is trained first so that no strategy's share pays for it. Schedules are fixed per
strategy (``SCHEDULES``) so that each trial takes minutes on a CPU: far below the papers' hundreds of
epochs, the same for every strategy in kind (a few epochs of training per trial).

Run: python -m benchmarks.bench_compare_cifar10 [--minutes 25] [--width 0.25] [--run-dir runs/compare] [--set snl.lam=0.002]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import machine, stream
from search.reporting.load import load_runs
from search.reporting.model import Report, build_report
from search.teacher import default_cache_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARES = (0.05, 0.10, 0.25)  # of the full ReLU count: rungs of the report's ReLU ladder
# Short schedules, fixed for the whole study (everything else each strategy samples).
SCHEDULES = (
    "snl.max_epochs=6", "snl.finetune_epochs=4", "snl.warmup=1", "snl.lr=0.01",
    "deepreduce.epochs=6", "deepreduce.criticality_epochs=1",
    "cryptonas.epochs=8",
)


def summarize(report: Report) -> dict[str, Any]:
    """Per strategy: its front, hypervolume, compute used and best test accuracy at each share (the
    report's ReLU ladder: the best validation accuracy within the share, its test accuracy shown)."""
    full = report.full_relus
    rungs = {row.relus: row for row in report.relu_ladder.rows}
    result: dict[str, Any] = {"full_relus": full, "strategies": {}}
    for series in report.series:
        at = {}
        for share in SHARES:
            best = rungs[math.floor(share * full)].cells.get(series.name)
            at[f"{share:.0%}"] = None if best is None else {"trial": best.number, "relus": best.relus,
                                                            "val_acc": best.val_acc, "test_acc": best.test_acc}
        result["strategies"][series.strategy] = {
            "trials": series.trials, "finished": series.finished, "failed": series.failed, "over_budget": series.over_budget,
            "cpu_minutes": series.compute_s / 60, "hypervolume": series.hypervolume,
            "front": [{"trial": t.number, "relus": t.relus, "val_acc": t.val_acc, "test_acc": t.test_acc} for t in series.front],
            "best_at": at,
        }
    return result


def print_tables(summary: dict[str, Any], teacher: str) -> None:
    """The summary as the Markdown tables BENCHMARKS.md records."""
    full = summary["full_relus"]
    print(f"\nteacher (full ReLU, {full:,} ReLUs): {teacher}\n")
    print("| strategy | trials (finished / failed / over budget) | CPU min used | hypervolume | "
          + " | ".join(f"best test acc at <= {int(s * 100)}% ({int(s * full):,})" for s in SHARES) + " |")
    print("|---|---|---|---|" + "---|" * len(SHARES))
    for name, s in summary["strategies"].items():
        cells = []
        for share in SHARES:
            best = s["best_at"][f"{share:.0%}"]
            cells.append("-" if best is None else f"{best['test_acc']:.4f} ({best['relus']:,}, trial {best['trial']})")
        hv = "-" if s["hypervolume"] is None or math.isnan(s["hypervolume"]) else f"{s['hypervolume']:.4f}"
        print(f"| {name} | {s['trials']} ({s['finished']} / {s['failed']} / {s['over_budget']}) | {s['cpu_minutes']:.1f} | {hv} | "
              + " | ".join(cells) + " |")
    print("\n| strategy | front: ReLUs / val acc / test acc (trial) |\n|---|---|")
    for name, s in summary["strategies"].items():
        front = "; ".join(f"{p['relus']:,} / {p['val_acc']:.4f} / {p['test_acc']:.4f} ({p['trial']})" for p in s["front"])
        print(f"| {name} | {front or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--width", type=float, default=0.25, help="resnet18 width (default 0.25: 139,264 ReLUs)")
    parser.add_argument("--minutes", type=float, default=25.0, help="compute minutes per strategy (default 25)")
    parser.add_argument("--budget", default="25%", help="the study's ReLU budget (default 25%%: the low-ReLU regime)")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="teacher cache (default: search's own)")
    parser.add_argument("--run-dir", default=f"runs/compare-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="STRATEGY.KEY=VALUE",
                        help="a further fixed option, as search.run --set (repeatable)")
    parser.add_argument("--summarize", action="store_true", help="only read an existing --run-dir and print the tables")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    model = ["--model", "resnet18", "--set", f"width={args.width}"]
    data = ["--dataset", "cifar10", "--data-dir", args.data_dir, "--cache-dir", args.cache_dir]
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {machine()}")
    if not args.summarize:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run_dir.with_name(run_dir.name + ".log")
        teacher = stream([sys.executable, "-m", "search.train_teacher", *data, *model], log).strip().splitlines()[-1]
        sets = [part for pair in (*SCHEDULES, *args.sets) for part in ("--set", pair)]
        stream([sys.executable, "-m", "search.run", "--strategy", "all", *data, *model, *sets, "--budget", args.budget,
                 "--minutes-per-strategy", str(args.minutes), "--concurrency", str(args.concurrency), "--seed", str(args.seed),
                 "--run-dir", str(run_dir)], log)
        (run_dir / "teacher.txt").write_text(teacher + "\n")
    teacher = (run_dir / "teacher.txt").read_text().strip() if (run_dir / "teacher.txt").is_file() else "unknown"
    summary = summarize(build_report(load_runs([run_dir])))
    (run_dir / "comparison.json").write_text(json.dumps({**summary, "teacher": teacher}, indent=2))
    print_tables(summary, teacher)
    print(f"\nreport: {run_dir / 'report.html'}; summary: {run_dir / 'comparison.json'}")


if __name__ == "__main__":
    main()
