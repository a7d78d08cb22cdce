"""SNL's default lambda on a short mask schedule: does the default recipe reach its target in time?

A study's first SNL trial runs the default recipe, and the short schedules of the CIFAR-10
benchmarks (6 mask epochs instead of the released 100) scale the released lambda up
(:func:`search.strategies.snl.short_schedule_lam`). This runs that first trial as a user would,
``python -m search.linearize --strategy snl`` on the CIFAR-10 subset (resnet18 width 0.25, the mask
schedule of ``bench_compare_cifar10``: 6 epochs, warm-up 1, lr 0.01) with lambda left to its default,
and beside it the same command with lambda fixed to the values other rules would give: ``linear``
(the released 1e-5 times 100 / max_epochs, the rule before the square) and ``top`` (the top of the
sampled range, 30 times the default). Arms run two at a time, one torch thread each; counts and
accuracies do not depend on timing. Reported per arm: the count after each mask epoch, whether and
when the target was reached (or why the trial stopped), and the accuracy after the finetune.

Run: python -m benchmarks.bench_snl_short_schedule [--target 3500] [--finetune-epochs 1] [--arms default,linear,top]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import PROJECT_ROOT, machine
from search.strategies.snl import LAM_RANGE, RELEASED_DEFAULTS, SNLOptions

SCHEDULE = {"max_epochs": 6, "warmup": 1, "lr": 0.01}


def arm_lam(arm: str, max_epochs: int) -> float | None:
    """The lambda an arm fixes (None: the default, left to SNL)."""
    default = SNLOptions(max_epochs=max_epochs).resolved("cifar10").lam
    return {"default": None, "linear": RELEASED_DEFAULTS.lam * RELEASED_DEFAULTS.max_epochs / max_epochs,
            "top": LAM_RANGE * default}[arm]  # type: ignore[operator]


def run_arm(arm: str, args: argparse.Namespace, log_dir: Path) -> dict[str, object]:
    """One ``search.linearize`` run; what its output says about the mask phase and the result."""
    lam = arm_lam(arm, SCHEDULE["max_epochs"])
    sets = [*(f"{key}={value}" for key, value in SCHEDULE.items()), f"finetune_epochs={args.finetune_epochs}", "width=0.25",
            *([f"lam={lam}"] if lam is not None else [])]
    command = [sys.executable, "-m", "search.linearize", "--strategy", "snl", "--dataset", "cifar10", "--data-dir", args.data_dir,
               "--model", "resnet18", "--budget", str(args.target), "--seed", str(args.seed),
               *[part for pair in sets for part in ("--set", pair)], *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    log = log_dir / f"{arm}.log"
    print("$", " ".join(command), f"> {log}", flush=True)
    with log.open("w") as sink:
        code = subprocess.run(command, check=False, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    text = log.read_text()
    counts = [int(n.replace(",", "")) for n in re.findall(r"^snl epoch \d+: relus ([\d,]+)", text, re.MULTILINE)]
    lambdas = re.findall(r"^snl epoch \d+: relus .*lambda (\S+)$", text, re.MULTILINE)
    reached = re.search(r"budget [\d,]+ reached after (\d+) mask steps", text)
    result = re.search(r"^relus=(\d+) val_acc=(\S+) test_acc=(\S+)$", text, re.MULTILINE)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    return {
        "arm": arm, "lam": float(lambdas[0]) if lambdas else lam, "exit_code": code, "counts": counts,
        "reached_after_steps": int(reached.group(1)) if reached else None,
        "relus": int(result.group(1)) if result else None,
        "val_acc": float(result.group(2)) if result else None, "test_acc": float(result.group(3)) if result else None,
        "error": errors[-1] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--target", type=int, default=3500, help="the ReLU budget the trial trains down to (default 3500)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="finetune epochs after the mask phase (default 1)")
    parser.add_argument("--arms", default="default,linear,top", help="comma list of default, linear, top")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="teacher cache (default: the shared default cache)")
    parser.add_argument("--log-dir", default=str(PROJECT_ROOT / "runs" / "bench-snl-short"), help="each arm's output")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = [arm for arm in arms if arm not in ("default", "linear", "top")]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}: expected default, linear, top")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(lambda arm: run_arm(arm, args, log_dir), arms))
    ended = datetime.datetime.now(datetime.timezone.utc)
    print(f"\n{started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC, {machine()}; target {args.target:,} ReLUs, "
          f"{SCHEDULE['max_epochs']} mask epochs (warm-up {SCHEDULE['warmup']}, lr {SCHEDULE['lr']}), "
          f"{args.finetune_epochs} finetune epoch(s), seed {args.seed}")
    print("| arm | lambda | count after each mask epoch | target reached | val_acc | test_acc |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        counts = " / ".join(f"{c:,}" for c in row["counts"])  # type: ignore[union-attr]
        reached = f"after {row['reached_after_steps']} mask steps" if row["reached_after_steps"] is not None else f"no: {row['error']}"
        accuracy = [f"{row[key]:.4f}" if row[key] is not None else "-" for key in ("val_acc", "test_acc")]
        print(f"| {row['arm']} | {row['lam']:.3g} | {counts} | {reached} | {accuracy[0]} | {accuracy[1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started.isoformat(), "machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
