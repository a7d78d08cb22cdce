"""Dry-run estimates of the papers' recipes (``recipes/*.yaml``), and how rough they are on a CPU.

Table 1: each recipe's ``python -m search.linearize --config RECIPE --data-dir DATA --dry-run`` (the
CIFAR-100 recipes with ``--dataset cifar10``: only the CIFAR-10 subset is here; the network and the
steps per epoch are the same, the classifier has 10 outputs instead of 100), with an empty teacher
cache so the teacher's training counts: its phases as printed, the estimate, and how long the dry run
itself took (wall clock, the interpreter's start included).

Table 2 (``--check``): for the phases of the named recipes, the step time the dry run extrapolates
from batches of at most 32 against a step timed at the recipe's own batch (a warm-up step, then two),
the same networks, the same step (``search.estimate`` with its CPU batch cap lifted); medians of
``--repeats`` of each, alternated.

    python -m benchmarks.bench_dry_run [--threads 1] [--check snl-resnet18-cifar10,deepreduce-resnet18-cifar100-12k]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import PROJECT_ROOT, machine
from search import estimate
from search.config import parse_with_config
from search.data import dataset_info, load_dataset
from search.linearize import build_parser, checked_job

RECIPES = sorted((PROJECT_ROOT / "recipes").glob("*.yaml"))


def dry_run(recipe: Path, data_dir: str, threads: int, cache: Path) -> tuple[list[str], float]:
    """The dry run's phase lines and total line, and its wall time."""
    argv = [sys.executable, "-m", "search.linearize", "--config", str(recipe), "--data-dir", data_dir, "--dry-run",
            "--cache-dir", str(cache)]
    if "cifar100" in recipe.stem:
        argv += ["--dataset", "cifar10"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(PROJECT_ROOT)}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{recipe.name}: exit {done.returncode}: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    return [line for line in lines if line.startswith(("phase ", "estimate: "))], took


def table(data_dir: str, threads: int) -> None:
    print("| recipe | phases (epochs x steps of batch: time) | estimate | dry run took |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for recipe in RECIPES:
            lines, took = dry_run(recipe, data_dir, threads, Path(cache))
            phases = "; ".join(re.sub(r", ~.*: ", ": ", line.removeprefix("phase ")) for line in lines[:-1])
            total = re.match(r"estimate: (.*?) on ", lines[-1]).group(1)  # type: ignore[union-attr]
            print(f"| {recipe.stem} | {phases} | {total} | {took:.0f} s |", flush=True)


def check(names: list[str], data_dir: str, repeats: int) -> None:
    """The extrapolated step time of each phase of ``names`` against one timed at the recipe's batch:
    medians of ``repeats`` of each, alternated (dry run, full batch, dry run, ...) so that the load of
    the moment falls on both alike."""
    print("| recipe | phase | batch | dry run: s/step (timed at batch) | timed at the batch: s/step | ratio |")
    print("|---|---|---|---|---|---|")
    for name in names:
        recipe = PROJECT_ROOT / "recipes" / f"{name}.yaml"
        argv = ["--config", str(recipe), "--data-dir", data_dir] + (["--dataset", "cifar10"] if "cifar100" in name else [])
        with tempfile.TemporaryDirectory() as cache:
            prepared, _, _, budgets = checked_job(parse_with_config(build_parser(), [*argv, "--cache-dir", cache]))
        job, info = prepared.job, dataset_info(prepared.job.dataset)
        data = load_dataset(info.name, data_dir)
        phases, _ = estimate.strategy_phases(prepared.strategy, prepared.options, prepared.model_name, prepared.model_options,
                                             info, budgets, job.train_options)
        if prepared.strategy.uses_teacher(prepared.options):
            phases.insert(0, estimate.teacher_phase(prepared.model_name, prepared.model_options, info, prepared.teacher_recipe,
                                                    cached=False))
        args = (info, len(data.train), len(data.val), torch.device("cpu"), prepared.model_name, prepared.model_options)
        for phase in phases:
            dry, full = [], []
            for _ in range(repeats):
                dry.append(estimate.Estimator(*args).estimate(phase).timing)
                cap, seconds = estimate.CPU_BATCH_CAP, estimate.STEP_SECONDS
                estimate.CPU_BATCH_CAP = estimate.STEP_SECONDS = 10**6  # time the recipe's batch itself
                try:
                    full.append(estimate.Estimator(*args).estimate(phase).timing)
                finally:
                    estimate.CPU_BATCH_CAP, estimate.STEP_SECONDS = cap, seconds
            dry_s = statistics.median(t.step_seconds for t in dry)  # type: ignore[union-attr]
            full_s = statistics.median(t.step_seconds for t in full)  # type: ignore[union-attr]
            batches = ",".join(str(t.timed_batch) for t in dry)  # type: ignore[union-attr]
            print(f"| {name} | {phase.name} | {phase.config.batch_size} | {dry_s:.2f} ({batches}) | {full_s:.2f} | "
                  f"{dry_s / full_s:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as OMP_NUM_THREADS=1)")
    parser.add_argument("--check", default="", help="recipes (file stems, comma-separated) whose phases to time at the "
                        "recipe's batch too; minutes each on a CPU")
    parser.add_argument("--repeats", type=int, default=3, help="--check: timings of each kind per phase (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M} | {machine()} | torch threads {args.threads}", flush=True)
    table(args.data_dir, args.threads)
    if args.check:
        check([n.strip() for n in args.check.split(",") if n.strip()], args.data_dir, args.repeats)


if __name__ == "__main__":
    main()
