"""Helpers shared by the benchmark scripts: alternating timing and a machine description."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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


Factory = tuple[Callable[..., Callable[[], None]], tuple[Any, ...]]  # (module-level builder, its arguments)


def alternate_in_processes(variants: dict[str, Factory], repeats: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Like :func:`alternate`, but each variant runs in a process of its own, as each trial of a study
    does: what a process keeps between calls (its heap, thread pools, caches) is the variant's own,
    so one variant's allocations cannot speed up or slow down another's. Each variant is built in its
    process by ``builder(*arguments)``; the calls still alternate A, B, A, B, ...

    Returns, per variant, the median seconds per call and the median minor page faults per call."""
    context = multiprocessing.get_context("spawn")
    links: dict[str, Connection] = {}
    workers = []
    try:
        for name, factory in variants.items():
            ours, theirs = context.Pipe()
            worker = context.Process(target=_serve, args=(factory, theirs), name=f"variant {name}", daemon=True)
            worker.start()
            links[name] = ours
            workers.append(worker)
        for link in links.values():
            _expect(link.recv(), "ready")
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
        for round_ in range(warmup + repeats):
            for name, link in links.items():
                link.send("run")
                seconds, faults = _expect(link.recv(), "done")
                if round_ >= warmup:
                    samples[name].append((seconds, faults))
    finally:
        for link in links.values():
            with contextlib.suppress(OSError):  # a variant that failed has closed its end
                link.send("stop")
        for worker in workers:
            worker.join(timeout=30)
    return {name: (statistics.median(s for s, _ in runs), statistics.median(f for _, f in runs)) for name, runs in samples.items()}


def _serve(factory: Factory, link: Connection) -> None:
    """A variant's process: build it, then run it once per request, timing it in here."""
    builder, arguments = factory
    try:
        run = builder(*arguments)
        link.send(("ready",))
        while link.recv() == "run":
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            run()
            link.send(("done", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    except Exception as err:  # noqa: BLE001 - the parent reports it: a variant that breaks must not hang the run
        link.send(("failed", f"{type(err).__name__}: {err}"))


def _expect(message: tuple[Any, ...], kind: str) -> tuple[Any, ...]:
    """The payload of a variant's ``kind`` message; exits with its error if the variant failed."""
    if message[0] != kind:
        sys.exit(f"a benchmark variant failed: {message[-1]}")
    return message[1:]


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
