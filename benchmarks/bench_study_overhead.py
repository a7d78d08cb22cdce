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
    python benchmarks/bench_study_overhead.py --small 4 --large 16 --repeats 3 --joined   # also joining a running Ray
    python benchmarks/bench_study_overhead.py --ray-processes   # where Ray's start spends CPU
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGY = "tests.strategies_for_tests:Quick"


def study_seconds(trials: int, cache: Path, work: Path, index: str, concurrency: int,
                  address: str | None = None) -> tuple[float, list[dict]]:
    """Wall time of the whole study command (joining the Ray at ``address``, else starting its own),
    and the decisions its trials ran (to replay in the loop)."""
    import optuna

    from search.study import rundir

    run_dir = work / f"study{index}"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT),
           **({"RAY_AUTH_MODE": "token"} if address else {})}  # a local Ray uses the token in ~/.ray; its drivers must say so
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "search.run", "--strategy", STRATEGY, "--trials", str(trials), "--concurrency", str(concurrency),
         "--teacher-epochs", "2", "--cache-dir", str(cache), "--run-dir", str(run_dir),
         *(["--address", address] if address else [])],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise SystemExit(f"search.run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
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


@contextmanager
def running_ray() -> Iterator[str]:
    """A local Ray kept running by a helper process (as ``ray start --head`` keeps one) for studies to
    join with ``--address``; its address. It stops when the helper's stdin closes."""
    code = ("import ray, sys\n"
            "context = ray.init(address='local', include_dashboard=False, logging_level='ERROR')\n"
            "print(context.address_info['gcs_address'], flush=True)\n"
            "sys.stdin.read()\n")
    helper = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    try:
        yield helper.stdout.readline().strip()  # type: ignore[union-attr]
    finally:
        helper.stdin.close()  # type: ignore[union-attr]
        helper.wait(60)


def ray_start_cpu(settle_s: float) -> None:
    """CPU seconds of every process of a local Ray started as a study starts it (``search.study.cluster``),
    ``settle_s`` after ``ray.init`` returns: what Ray's start costs a 2-core machine besides its wall time."""
    import psutil

    from search.study import cluster

    cluster.quiet(False)
    start = time.perf_counter()
    cluster.connect(None, False)
    print(f"local Ray started and joined: {time.perf_counter() - start:.2f} s wall")
    time.sleep(settle_s)
    driver = psutil.Process()
    rows = []
    for process in [driver, *driver.children(recursive=True)]:
        try:
            cpu, cmdline = process.cpu_times(), process.cmdline()
        except psutil.Error:
            continue
        words = [Path(w).name for w in cmdline[:3]] or [process.name()]
        name = "driver (this process)" if process.pid == driver.pid else next(
            (w for w in words if w.startswith("ray::") or w.endswith(".py") or w in ("gcs_server", "raylet")), " ".join(words))
        rows.append((cpu.user + cpu.system, name))
    cluster.disconnect()
    for seconds, name in sorted(rows, reverse=True):
        print(f"{seconds:6.2f} s  {name}")
    print(f"{sum(s for s, _ in rows):6.2f} s  total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4)
    parser.add_argument("--large", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--joined", action="store_true", help="also time each study joining a local Ray started once "
                        "beforehand (--address), alternated with the study that starts its own")
    parser.add_argument("--ray-processes", action="store_true", help="instead: CPU seconds of each process of a local "
                        "Ray started as a study starts it, 4 s after ray.init")
    args = parser.parse_args()
    if args.ray_processes:
        ray_start_cpu(4.0)
        return
    sizes = (args.small, args.large)
    kinds = ("study", "joined", "loop") if args.joined else ("study", "loop")
    times: dict[str, list[float]] = {f"{kind} {n}": [] for n in sizes for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp, ExitStack() as stack:
        work, cache = Path(tmp), Path(tmp) / "cache"
        address = stack.enter_context(running_ray()) if args.joined else None
        study_seconds(2, cache, work, "warm", 2)  # trains the cached teacher for every variant
        for index in range(args.repeats):
            for n in (sizes if index % 2 == 0 else sizes[::-1]):
                seconds, decisions = study_seconds(n, cache, work, f"{n}-{index}", 2)
                times[f"study {n}"].append(seconds)
                if address:
                    times[f"joined {n}"].append(study_seconds(n, cache, work, f"{n}-{index}-joined", 2, address)[0])
                times[f"loop {n}"].append(loop_seconds(decisions, cache, 1))
            print(f"repeat {index}: " + "  ".join(f"{k}: {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    m = {k: statistics.median(v) for k, v in times.items()}
    small, large = sizes
    slope = {kind: (m[f"{kind} {large}"] - m[f"{kind} {small}"]) / (large - small) for kind in kinds}
    fixed = {kind: m[f"{kind} {small}"] - slope[kind] * small for kind in kinds}
    print(" ".join(f"{k.replace(' ', '_')}_s={v:.1f}" for k, v in m.items()))
    print("per_trial_s: " + " ".join(f"{kind}={slope[kind]:.2f}" for kind in kinds)
          + f" overhead={slope['study'] - slope['loop']:+.2f} (concurrency 2)")
    print("fixed_s: " + " ".join(f"{kind}={fixed[kind]:.1f}" for kind in kinds)
          + "".join(f"; {kind} above the loop {fixed[kind] - fixed['loop']:.1f}" for kind in kinds if kind != "loop"))
    for n in sizes:
        print(f"whole run, {n} trials: ratio={m[f'study {n}'] / m[f'loop {n}']:.2f} "
              f"overhead_s_per_trial={(m[f'study {n}'] - m[f'loop {n}']) / n:+.2f}")


if __name__ == "__main__":
    main()
