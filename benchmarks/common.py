"""Helpers shared by the benchmark scripts: alternating timing and a machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """One line naming the machine, for BENCHMARKS.md."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"


def alternate(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each variant, timed A, B, A, B, ... so background load hits all alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def stream(command: list[str], log: Path) -> str:
    """Run ``command`` from the project root (exit on failure), echoing and logging its output; its stdout."""
    print("$", " ".join(command), flush=True)
    lines: list[str] = []
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process, \
            log.open("a") as sink:
        for line in process.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            sink.write(line)
            lines.append(line)
    if process.returncode:
        sys.exit(f"{command[2]} failed with exit code {process.returncode} (output in {log})")
    return "".join(lines)
