"""Path sharing against none: anytime hypervolume per compute second of an SNL study.

Two arms of the same SNL study, as a user runs it (``search.run``), same seed, data and compute share
(``--minutes-per-strategy``), one after the other in one benchmark run, for each seed:

    on:   python -m search.run --strategy snl ... --path-sharing
    off:  python -m search.run --strategy snl ...                       (the default)

on digits (embedded) and optionally on the CIFAR-10 subset (resnet18 at ``--width``, the short
schedules of ``bench_compare_cifar10``, the teacher trained first so that no arm pays for it). The
figures are those of ``bench_early_stop`` (same reading of the runs): compute used after each finished
trial (path trials cost nothing of their own: their finetuning is in their parent's compute), the
hypervolume of the finished trials so far, the final hypervolume, and the compute at which "on"
first reaches "off"'s final hypervolume, as a share of "off"'s total. Several seeds: each seed's
table, then the medians.

Run: python -m benchmarks.bench_path_sharing [--datasets digits,cifar10] [--seeds 0,1,2] [--digits-minutes 1] [--cifar-minutes 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.bench_compare_cifar10 import SCHEDULES
from benchmarks.bench_early_stop import Arm, compare, print_tables, read_arm
from benchmarks.common import machine, stream

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARMS = {"on": ["--path-sharing"], "off": []}


def run_arms(dataset: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Arm]:
    """Run both arms of one seed (teacher first) and read them back."""
    log = root / f"{dataset}.log"
    if dataset == "cifar10":
        model = ["--dataset", "cifar10", "--data-dir", args.data_dir, "--model", "resnet18", "--set", f"width={args.width}"]
        common = [*model, *[part for pair in SCHEDULES if pair.startswith("snl.") for part in ("--set", pair)]]
        minutes = args.cifar_minutes
    else:
        model, common, minutes = ["--dataset", "digits"], ["--dataset", "digits"], args.digits_minutes
    stream([sys.executable, "-m", "search.train_teacher", *model, "--cache-dir", args.cache_dir], log)
    arms = {}
    order = args.order.split(",") if seed % 2 == 0 else list(reversed(args.order.split(",")))  # alternate who runs first
    for name in order:
        run_dir = root / f"{dataset}-seed{seed}-{name}"
        if not args.summarize:
            stream([sys.executable, "-m", "search.run", "--strategy", "snl", *common, "--minutes-per-strategy", str(minutes),
                    "--seed", str(seed), "--cache-dir", args.cache_dir, "--run-dir", str(run_dir), "-q", *ARMS[name]], log)
        arms[name] = read_arm(name, run_dir)
    return arms


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over seeds of each arm's final hypervolume and compute, and of the reach share."""
    shares = [r["on_reaches_off_final_share"] for r in results]
    return {
        "final_hypervolume": {arm: statistics.median(r["arms"][arm]["final_hypervolume"] for r in results) for arm in ARMS},
        "trials": {arm: statistics.median(r["arms"][arm]["trials"] for r in results) for arm in ARMS},
        "compute_min": {arm: statistics.median(r["arms"][arm]["compute_min"] for r in results) for arm in ARMS},
        "on_reaches_off_final_share": shares,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits", help="comma list of digits, cifar10 (default digits)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of study seeds (default 0,1,2)")
    parser.add_argument("--digits-minutes", type=float, default=1.0, help="compute minutes of SNL on digits (default 1)")
    parser.add_argument("--cifar-minutes", type=float, default=5.0, help="compute minutes of SNL on CIFAR-10 (default 5)")
    parser.add_argument("--width", type=float, default=0.25, help="resnet18 width on CIFAR-10 (default 0.25)")
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--cache-dir", default=str(PROJECT_ROOT / "runs" / "bench-cache"), help="teacher cache")
    parser.add_argument("--root", default=f"runs/path-sharing-{datetime.datetime.now():%Y%m%d-%H%M%S}", help="folder of the runs")
    parser.add_argument("--order", default="on,off", help="which arm runs first for even seeds (odd seeds reverse it)")
    parser.add_argument("--summarize", action="store_true", help="only read the runs under an existing --root")
    args = parser.parse_args()
    if sorted(args.order.split(",")) != ["off", "on"]:
        parser.error("--order must name both arms: on,off or off,on")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {machine()}")
    summary: dict[str, Any] = {}
    for dataset in args.datasets.split(","):
        per_seed = []
        for seed in (int(s) for s in args.seeds.split(",")):
            result = compare(run_arms(dataset, seed, args, root))
            print_tables(f"{dataset}, seed {seed}", result)
            per_seed.append(result)
        summary[dataset] = {"seeds": per_seed, "medians": medians(per_seed)}
        m = summary[dataset]["medians"]
        shares = ", ".join("never" if s is None else f"{s:.0%}" for s in m["on_reaches_off_final_share"])
        print(f"\n### {dataset}: medians over {len(per_seed)} seeds\n")
        print("| arm | trials (sampled + path) | compute (CPU min) | final hypervolume |")
        print("|---|---|---|---|")
        for arm in ARMS:
            print(f"| {arm} | {m['trials'][arm]:g} | {m['compute_min'][arm]:.1f} | {m['final_hypervolume'][arm]:.4f} |")
        print(f"\n'on' reaches 'off''s final hypervolume at this share of 'off''s compute, per seed: {shares}")
    (root / "path_sharing.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {root / 'path_sharing.json'}")


if __name__ == "__main__":
    main()
