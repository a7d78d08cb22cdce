"""Measured private-inference cost under SPU's Cheetah, beside the per-ReLU estimates.

Three parts, each run when asked:

- ``--calibrate``: resnet18 (``--width``) in CIFAR-10's shape with random weights and random per-pixel
  masks keeping a fraction of every site's positions (``--fractions``), each measured on ``--images``
  test images. A least-squares line through (kept ReLUs, steady-state ReLU bytes) and (kept ReLUs,
  ReLU seconds) gives the per-ReLU constants of the ``cheetah`` cost model; the intercept is the
  per-site fixed cost. Cheetah's bytes do not depend on the weights' values, so random weights do.
- ``--checkpoints A.pt B.pt ...``: saved linearized models (``search.linearize --out``), each measured
  as ``python -m search.pi`` would.
- ``--run-dir R``: ``python -m search.report R --measure-pi`` (the run's Pareto-optimal trials), then the
  same table from the measurements the report kept beside each trial's model.

Each table gives per model: ReLUs, test accuracy, steady-state communication (total, ReLU, linear,
pooling) and seconds per image, the one-time setup, and the estimates of the cost-model presets; then
how many pairs of models the ReLU count orders differently from the measured communication.

Run: python -m benchmarks.bench_pi [--calibrate] [--checkpoints A.pt ...] [--run-dir R] [--images 4]
     [--data-dir ../shared/data/cifar10] [--width 0.25] [--fractions 0,0.02,0.05,0.15,0.5]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import PROJECT_ROOT, machine, stream
from search.checkpoint import save_model
from search.errors import SearchError
from search.objectives import COST_PRESETS
from search.pi.measure import measure_checkpoint
from search.relu import relu_count, sites
from search.spaces import build_model
from search.study import rundir
from search.study.artifacts import RESULT_FILE

ESTIMATES = ("cheetah", "cheetah-paper", "delphi")
CIFAR_SHAPE = (3, 32, 32)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def calibrate(width: float, fractions: list[float], images: int, data_dir: str) -> dict[str, Any]:
    """Measure resnet18 at each kept fraction; fit bytes and seconds per kept ReLU."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, input_size=CIFAR_SHAPE, width=width)
    full = relu_count(model, CIFAR_SHAPE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pi-") as tmp:
        for fraction in fractions:
            generator = torch.Generator().manual_seed(0)
            for site in sites(model):
                site.set_mask(torch.rand(site.mask_shape("pixel"), generator=generator) < fraction)
            path = Path(tmp) / f"kept-{fraction}.pt"
            save_model(model, path, "resnet18", {"width": width}, 10, CIFAR_SHAPE, {"dataset": "cifar10", "strategy": "random masks"})
            started = time.perf_counter()
            m = measure_checkpoint(str(path), images, "cheetah", "cifar10", data_dir, progress=_log)
            _log(f"kept {fraction:.0%}: {m.relus:,} ReLUs measured in {time.perf_counter() - started:.0f} s")
            rows.append({"fraction": fraction, "sites": len(sites(model)), **m.to_json()})
    fitted = [r for r in rows if r["relus"]]  # a site with nothing kept is skipped outright: no fixed cost
    kept = np.array([r["relus"] for r in fitted], dtype=float)
    relu_bytes = np.array([r["steady_bytes_by_kind"]["relu"] for r in fitted], dtype=float)
    relu_seconds = np.array([r["steady_seconds_by_kind"]["relu"] for r in fitted], dtype=float)
    bytes_slope, bytes_intercept = np.polyfit(kept, relu_bytes, 1)
    seconds_slope, seconds_intercept = np.polyfit(kept, relu_seconds, 1)
    worst = float(np.max(np.abs(relu_bytes - (bytes_slope * kept + bytes_intercept)) / relu_bytes))
    return {"width": width, "full_relus": full, "rows": rows, "bytes_per_relu": float(bytes_slope),
            "bytes_fixed": float(bytes_intercept), "us_per_relu": float(seconds_slope) * 1e6,
            "seconds_fixed": float(seconds_intercept), "worst_bytes_fit_error": worst}


def _mb(value: float) -> str:
    return f"{value / 1e6:,.3f}"


def calibration_table(result: dict[str, Any]) -> str:
    lines = [
        f"resnet18 width {result['width']}, {result['full_relus']:,} ReLUs in full, random weights and per-pixel masks",
        "",
        "| kept | ReLUs | ReLU MB | ReLU B per kept ReLU | ReLU s | linear MB | total MB | s per image | setup MB | predictions match |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        by_kind = r["steady_bytes_by_kind"]
        per = f"{by_kind['relu'] / r['relus']:.1f}" if r["relus"] else "-"
        lines.append(f"| {r['fraction']:.0%} | {r['relus']:,} | {_mb(by_kind['relu'])} | {per} | "
                     f"{r['steady_seconds_by_kind']['relu']:.2f} | {_mb(by_kind['linear'])} | {_mb(r['steady_bytes'])} | "
                     f"{r['steady_seconds']:.1f} | {_mb(r['setup_bytes'])} | {'yes' if r['matches_plain'] else 'NO'} |")
    fit = (f"fit over the rows with ReLUs kept: ReLU bytes = {result['bytes_per_relu']:.1f} x kept + {result['bytes_fixed']:,.0f} "
           f"(worst row off the line by {result['worst_bytes_fit_error']:.1%}); ReLU seconds = "
           f"{result['us_per_relu']:.1f} us x kept + {result['seconds_fixed']:.2f} s")
    lines += ["", fit]
    return "\n".join(lines)


def _accuracy(measured: dict[str, Any]) -> str:
    value = measured.get("info", {}).get("test_acc")
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def models_table(measured: list[dict[str, Any]]) -> str:
    """One row per measured model, fewest ReLUs first, with the estimates; then the ranking check."""
    measured = sorted(measured, key=lambda m: m["relus"])
    heads = " | ".join(f"est. {name} MB" for name in ESTIMATES)
    lines = [
        f"| model | ReLUs | test acc | total MB | ReLU MB | linear MB | pooling MB | s per image (ReLU s) | setup MB | {heads} | match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(ESTIMATES) + "---|",
    ]
    for m in measured:
        by_kind = m["steady_bytes_by_kind"]
        estimates = " | ".join(f"{COST_PRESETS[name].communication_mb(m['relus']):,.3f}" for name in ESTIMATES)
        lines.append(f"| {m['label']} | {m['relus']:,} | {_accuracy(m)} | {_mb(m['steady_bytes'])} | {_mb(by_kind['relu'])} | "
                     f"{_mb(by_kind['linear'])} | {_mb(by_kind['pooling'])} | {m['steady_seconds']:.1f} "
                     f"({m['steady_seconds_by_kind']['relu']:.2f}) | {_mb(m['setup_bytes'])} | {estimates} | "
                     f"{'yes' if m['matches_plain'] else 'NO'} |")
    swaps = [(a["label"], b["label"]) for a, b in itertools.combinations(measured, 2)
             if a["relus"] < b["relus"] and a["steady_bytes"] > b["steady_bytes"]]
    pairs = len(measured) * (len(measured) - 1) // 2
    relu_share = [m["steady_bytes_by_kind"]["relu"] / m["steady_bytes"] for m in measured]
    listed = f" ({', '.join(f'{a} > {b}' for a, b in swaps)})" if swaps else ""
    ranking = (f"ReLUs' share of the measured communication: {min(relu_share):.1%}-{max(relu_share):.1%}; pairs that "
               f"fewer ReLUs do not make cheaper: {len(swaps)} of {pairs}{listed}")
    lines += ["", ranking]
    return "\n".join(lines)


def measure_files(paths: list[str], images: int, data_dir: str) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        started = time.perf_counter()
        m = measure_checkpoint(path, images, "cheetah", None, data_dir, progress=_log)
        _log(f"{path}: {m.relus:,} ReLUs measured in {time.perf_counter() - started:.0f} s")
        found.append({**m.to_json(), "info": m.info, "label": f"{m.strategy or m.model} ({Path(path).name})"})
    return found


def measure_run(run_dir: Path, images: int) -> list[dict[str, Any]]:
    """The report's own measurement of the run's Pareto-optimal trials, read back from what it kept."""
    stream([sys.executable, "-m", "search.report", str(run_dir), "--measure-pi", "--pi-images", str(images)],
           run_dir / "bench-pi.log")
    found = []
    for kept in sorted(run_dir.glob("trials/*/pi-cheetah.json"), key=lambda p: int(p.parent.name)):
        measured = json.loads(kept.read_text())
        trial = json.loads(kept.with_name(RESULT_FILE).read_text())
        if len(measured["images"]) >= images:
            found.append({**measured, "info": trial, "label": f"{measured['strategy']} #{kept.parent.name}"})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="fit the per-ReLU constants on resnet18 at several kept fractions")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="saved linearized models to measure")
    parser.add_argument("--run-dir", type=Path, help="a study's run directory: measure its Pareto-optimal trials")
    parser.add_argument("--images", type=int, default=4, help="test images per model: the first carries the setup (default 4)")
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"), help="CIFAR-10 folder")
    parser.add_argument("--width", type=float, default=0.25, help="resnet18 width for --calibrate")
    parser.add_argument("--fractions", default="0,0.02,0.05,0.15,0.5", help="kept fractions for --calibrate")
    parser.add_argument("--json", type=Path, help="also write everything measured here")
    args = parser.parse_args()
    if not (args.calibrate or args.checkpoints or args.run_dir):
        parser.error("nothing to measure: give --calibrate, --checkpoints and/or --run-dir")
    if args.run_dir is not None:
        try:
            rundir.read_settings(args.run_dir)
        except SearchError as err:
            parser.error(str(err))
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {started:%Y-%m-%d %H:%M} UTC, {machine()}; SPU Cheetah, 2 parties on 127.0.0.1, {args.images} images per model\n")
    everything: dict[str, Any] = {}
    if args.calibrate:
        everything["calibration"] = calibrate(args.width, [float(f) for f in args.fractions.split(",")], args.images, args.data_dir)
        print(calibration_table(everything["calibration"]) + "\n", flush=True)
    if args.run_dir is not None:
        everything["run"] = measure_run(args.run_dir, args.images)
        print(f"Pareto-optimal trials of {args.run_dir}\n\n{models_table(everything['run'])}\n", flush=True)
    if args.checkpoints:
        everything["checkpoints"] = measure_files(args.checkpoints, args.images, args.data_dir)
        print(models_table(everything["checkpoints"]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, default=str))
    print(f"finished in {(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60:.1f} min")


if __name__ == "__main__":
    main()
