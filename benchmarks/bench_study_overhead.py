"""Per-trial overhead of the study machinery (Ray Tune + Optuna storage + run directory).

Runs short trials (the ``Quick`` test strategy on digits: keep a fraction of ReLUs, finetune one
epoch from the cached teacher) two ways, alternating them in every repeat so load from other
processes hits both equally:

  study   ``python -m search.run`` with 2 concurrent trials, one CPU each (a local Ray started and
          stopped by the run, storage, models saved to the run directory);
  loop    the same decisions in a plain loop in one fresh process calling ``search.study.trial.run_one``,
          torch on 1 thread (what each Ray trial gets; 2 threads on this loaded 2-core machine was
          six times slower in a first run, so it would flatter the study).

Each is timed at N_SMALL and N_LARGE trials. The slope (seconds per extra trial) is the per-trial
cost; the difference of the slopes is the study's per-trial overhead (negative when running two
trials at once gains more than the machinery costs). The fixed cost of a study (Python imports, Ray
start and stop, the first trial actor) is reported apart, and so are the whole-run ratios.

    python benchmarks/bench_study_overhead.py --small 4 --large 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGY = "tests.strategies_for_tests:Quick"


def study_seconds(trials: int, cache: Path, work: Path, index: str, concurrency: int) -> tuple[float, list[dict]]:
    """Wall time of the whole study command, and the decisions its trials ran (to replay in the loop)."""
    import optuna

    from search.study import rundir

    run_dir = work / f"study{index}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "search.run", "--strategy", STRATEGY, "--trials", str(trials), "--concurrency", str(concurrency),
         "--teacher-epochs", "2", "--cache-dir", str(cache), "--run-dir", str(run_dir)],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    seconds = time.perf_counter() - start
    settings = rundir.read_settings(run_dir)
    study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    cap = settings.budget or settings.full_relus  # a strategy without targets (Quick) trains to the cap
    decisions = [
        {"strategy": STRATEGY, "options": {"keep": t.params["quick/keep"]}, "number": t.number,
         "target": t.params.get("relu_target", cap)}
        for t in study.get_trials()
    ]
    return seconds, decisions


def loop_seconds(decisions: list[dict], cache: Path, threads: int) -> float:
    """The same trials in a plain loop in a fresh process (imports and data loading included, once)."""
    code = (
        "import sys, time, json, torch; torch.set_num_threads(%d); sys.path.insert(0, %r)\n"
        "from search.study.trial import TrialSpec, run_one\n"
        "spec = TrialSpec('digits', 'resnet_tiny', {}, None, ('accuracy', 'relus'), 'delphi', teacher_epochs=2, cache_dir=%r)\n"
        "for decided in json.loads(sys.argv[1]):\n"
        "    metrics, _ = run_one(spec, decided, [])\n"
        "    assert metrics['status'] == 'ok', metrics\n"
    ) % (threads, str(ROOT), str(cache))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(decisions)], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4)
    parser.add_argument("--large", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = (args.small, args.large)
    times: dict[str, list[float]] = {f"{kind} {n}": [] for n in sizes for kind in ("study", "loop")}
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        study_seconds(2, cache, work, "warm", 2)  # trains the cached teacher for every variant
        for index in range(args.repeats):
            for n in (sizes if index % 2 == 0 else sizes[::-1]):
                seconds, decisions = study_seconds(n, cache, work, f"{n}-{index}", 2)
                times[f"study {n}"].append(seconds)
                times[f"loop {n}"].append(loop_seconds(decisions, cache, 1))
            print(f"repeat {index}: " + "  ".join(f"{k}: {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    m = {k: statistics.median(v) for k, v in times.items()}
    small, large = sizes
    slope = {kind: (m[f"{kind} {large}"] - m[f"{kind} {small}"]) / (large - small) for kind in ("study", "loop")}
    fixed = {kind: m[f"{kind} {small}"] - slope[kind] * small for kind in ("study", "loop")}
    print(" ".join(f"{k.replace(' ', '_')}_s={v:.1f}" for k, v in m.items()))
    print(f"per_trial_s: study={slope['study']:.2f} loop={slope['loop']:.2f} overhead={slope['study'] - slope['loop']:+.2f} "
          f"(concurrency 2)")
    print(f"fixed_s: study={fixed['study']:.1f} loop={fixed['loop']:.1f}")
    for n in sizes:
        print(f"whole run, {n} trials: ratio={m[f'study {n}'] / m[f'loop {n}']:.2f} "
              f"overhead_s_per_trial={(m[f'study {n}'] - m[f'loop {n}']) / n:+.2f}")


if __name__ == "__main__":
    main()
