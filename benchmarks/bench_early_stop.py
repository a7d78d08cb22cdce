"""Early stopping and default first points against neither: anytime hypervolume per compute second.

Two arms of the same study, as a user runs it (``search.run``), same seed, data, strategies and
compute share per strategy (``--minutes-per-strategy``), one after the other in one benchmark run:

    on:   python -m search.run --strategy all ...                                    (the defaults)
    off:  python -m search.run --strategy all ... --no-early-stop --no-default-first

on digits (embedded) and on the CIFAR-10 subset (resnet18 at ``--width``, the short schedules and the
25% budget of ``bench_compare_cifar10``, the teacher trained first so that no arm pays for it).

Read back from each run's storage: the trials in the order they finished; after each, the compute used
so far (the sum of the finished trials' ``compute_seconds``: CPU time of all their threads, what the
time share counts) and the hypervolume of the finished trials so far (the report's: eligible trials
in (log10 ReLUs / log10 N, 1 - validation accuracy) against (N ReLUs, accuracy 0), with one N for
both arms). Printed per arm: trials by state, compute spent on trials that ended FAILED or PRUNED,
the final hypervolume, the compute at which "on" first reaches "off"'s final hypervolume (and its
share of "off"'s total compute), and the cost of progress streaming per trial (``progress_seconds``,
the time the trial's process spent handing its epochs to the driver, over the trial's wall time).

Run: python -m benchmarks.bench_early_stop [--datasets digits,cifar10] [--digits-minutes 1] [--cifar-minutes 8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench_compare_cifar10 import SCHEDULES
from benchmarks.common import machine, stream
from search.objectives import hypervolume_2d
from search.reporting.load import load_runs
from search.reporting.model import HV_REFERENCE_ACCURACY, build_report, normalised_point

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARMS = {"on": [], "off": ["--no-early-stop", "--no-default-first"]}


@dataclass(frozen=True)
class Point:
    """The study after one more trial finished."""

    trial: int
    state: str
    compute_s: float  # compute used by the trials finished so far
    point: tuple[int, float] | None  # the trial's (ReLUs, validation accuracy), when eligible for the front


@dataclass(frozen=True)
class Arm:
    name: str
    run_dir: Path
    points: tuple[Point, ...]
    reference_relus: int
    by_state: dict[str, int]
    wasted_s: float  # compute of trials that ended FAILED or PRUNED
    streaming: tuple[float, ...]  # progress_seconds / seconds of each trial that reports both

    @property
    def total_s(self) -> float:
        return self.points[-1].compute_s if self.points else 0.0


def read_arm(name: str, run_dir: Path) -> Arm:
    """One arm's trials from its run directory, through the report model (eligibility, N)."""
    run = load_runs([run_dir])[0]
    report = build_report([run])
    eligible = {row.number for row in report.trials if row.eligible}
    rows = {row.number: row for row in report.trials}
    reference = report.reference_relus[run.label]
    finished = sorted((t for t in run.trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    points, used, wasted, by_state, streaming = [], 0.0, 0.0, {}, []
    for trial in finished:
        compute = float(trial.user_attrs.get("compute_seconds", 0.0))
        used += compute
        state = trial.state.name
        by_state[state] = by_state.get(state, 0) + 1
        if state in ("FAIL", "PRUNED"):
            wasted += compute
        row = rows[trial.number]
        point = (row.relus, row.val_acc) if trial.number in eligible else None
        points.append(Point(trial.number, state, used, point))  # type: ignore[arg-type]
        seconds, spent = trial.user_attrs.get("seconds"), trial.user_attrs.get("progress_seconds")
        if seconds and spent is not None:
            streaming.append(spent / seconds)
    return Arm(name, run_dir, tuple(points), reference, by_state, wasted, tuple(streaming))


def anytime(arm: Arm, reference_relus: int) -> list[tuple[float, float]]:
    """(compute used, hypervolume so far) after each finished trial."""
    curve, front = [], []
    for p in arm.points:
        if p.point is not None:
            relus, acc = p.point
            front.append(normalised_point(relus, acc, reference_relus))
        curve.append((p.compute_s, hypervolume_2d(front, (1.0, 1.0 - HV_REFERENCE_ACCURACY))))
    return curve


def compare(arms: dict[str, Arm]) -> dict[str, Any]:
    """The figures BENCHMARKS.md records, for one dataset."""
    reference = max(arm.reference_relus for arm in arms.values())
    curves = {name: anytime(arm, reference) for name, arm in arms.items()}
    old_final = curves["off"][-1][1] if curves["off"] else 0.0
    reached = next((compute for compute, hv in curves["on"] if hv >= old_final), None)
    return {
        "reference_relus": reference,
        "arms": {
            name: {
                "trials": len(arm.points), "by_state": arm.by_state, "compute_min": arm.total_s / 60,
                "wasted_min": arm.wasted_s / 60, "final_hypervolume": curves[name][-1][1] if curves[name] else 0.0,
                "streaming_share": {"median": statistics.median(arm.streaming), "max": max(arm.streaming)} if arm.streaming else None,
                "curve": curves[name],
            }
            for name, arm in arms.items()
        },
        "on_reaches_off_final_at_min": None if reached is None else reached / 60,
        "on_reaches_off_final_share": None if reached is None or not arms["off"].total_s else reached / arms["off"].total_s,
    }


def checkpoints(curve: list[tuple[float, float]], at: list[float]) -> list[float]:
    """The hypervolume reached by each compute value of ``at`` (0 before the first trial)."""
    return [max([hv for compute, hv in curve if compute <= c], default=0.0) for c in at]


def print_tables(dataset: str, result: dict[str, Any]) -> None:
    arms = result["arms"]
    print(f"\n### {dataset} (N = {result['reference_relus']:,} ReLUs)\n")
    print("| arm | trials (COMPLETE / PRUNED / FAIL) | compute (CPU min) | on FAILED or PRUNED (CPU min, share) | "
          "final hypervolume | progress streaming per trial (median / max share of its time) |")
    print("|---|---|---|---|---|---|")
    for name, a in arms.items():
        s = a["by_state"]
        share = a["wasted_min"] / a["compute_min"] if a["compute_min"] else 0.0
        stream = a["streaming_share"]
        streamed = "-" if stream is None else f"{stream['median']:.3%} / {stream['max']:.3%}"
        print(f"| {name} | {a['trials']} ({s.get('COMPLETE', 0)} / {s.get('PRUNED', 0)} / {s.get('FAIL', 0)}) | "
              f"{a['compute_min']:.1f} | {a['wasted_min']:.1f} ({share:.0%}) | {a['final_hypervolume']:.4f} | {streamed} |")
    at = result["on_reaches_off_final_at_min"]
    reach = "never" if at is None else f"{at:.2f} CPU min = {result['on_reaches_off_final_share']:.0%} of off's total"
    print(f"\n'on' reaches 'off''s final hypervolume ({arms['off']['final_hypervolume']:.4f}) at: {reach}")
    total = max(a["compute_min"] for a in arms.values())
    marks = [total * f for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
    print("\n| arm | " + " | ".join(f"HV at {m:.1f} CPU min" for m in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for name, a in arms.items():
        values = checkpoints([(c / 60, hv) for c, hv in a["curve"]], marks)
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")


def run_arms(dataset: str, args: argparse.Namespace, root: Path) -> dict[str, Arm]:
    """Run both arms (teacher first, for CIFAR-10) and read them back."""
    log = root / f"{dataset}.log"
    if dataset == "cifar10":
        common = ["--dataset", "cifar10", "--data-dir", args.data_dir, "--model", "resnet18", "--set", f"width={args.width}",
                  "--budget", "25%", *[part for pair in SCHEDULES for part in ("--set", pair)]]
        minutes = args.cifar_minutes
        teacher = ["--dataset", "cifar10", "--data-dir", args.data_dir, "--model", "resnet18", "--set", f"width={args.width}"]
        stream([sys.executable, "-m", "search.train_teacher", *teacher, "--cache-dir", args.cache_dir], log)
    else:
        common, minutes = ["--dataset", "digits"], args.digits_minutes
        stream([sys.executable, "-m", "search.train_teacher", "--dataset", "digits", "--cache-dir", args.cache_dir], log)
    arms = {}
    for name in args.order.split(","):
        run_dir = root / f"{dataset}-{name}"
        if not args.summarize:
            stream([sys.executable, "-m", "search.run", "--strategy", "all", *common, "--minutes-per-strategy", str(minutes),
                     "--seed", str(args.seed), "--cache-dir", args.cache_dir, "--run-dir", str(run_dir), "-q", *ARMS[name]], log)
        arms[name] = read_arm(name, run_dir)
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,cifar10", help="comma list of digits, cifar10 (default both)")
    parser.add_argument("--digits-minutes", type=float, default=1.0, help="compute minutes per strategy on digits (default 1)")
    parser.add_argument("--cifar-minutes", type=float, default=8.0, help="compute minutes per strategy on CIFAR-10 (default 8)")
    parser.add_argument("--width", type=float, default=0.25, help="resnet18 width on CIFAR-10 (default 0.25)")
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--cache-dir", default=str(PROJECT_ROOT / "runs" / "bench-cache"), help="teacher cache")
    parser.add_argument("--root", default=f"runs/early-stop-{datetime.datetime.now():%Y%m%d-%H%M%S}", help="folder of the runs")
    parser.add_argument("--order", default="on,off", help="which arm runs first (default on,off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarize", action="store_true", help="only read the runs under an existing --root")
    args = parser.parse_args()
    if sorted(args.order.split(",")) != ["off", "on"]:
        parser.error("--order must name both arms: on,off or off,on")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {machine()}")
    results = {}
    for dataset in args.datasets.split(","):
        results[dataset] = compare(run_arms(dataset, args, root))
        print_tables(dataset, results[dataset])
    (root / "early_stop.json").write_text(json.dumps(results, indent=2))
    print(f"\nsummary: {root / 'early_stop.json'}")


if __name__ == "__main__":
    main()
