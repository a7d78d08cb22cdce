"""One trial in a child process held to a wall-clock limit and a memory limit.

A Ray Tune function trial runs in a thread of a long-lived worker process, where nothing can stop it
safely. Under ``--trial-timeout`` or ``--trial-memory`` the trial therefore runs in a child process
(``python -m search.study.limits``) that the Ray worker waits for: past the time limit the worker kills it;
a watchdog thread in the child stops it when its peak resident memory passes the memory limit. Either
way the trial is reported ``failed`` with a reason naming the limit, and the study goes on.

Parent and child exchange JSON files and the model's bytes in a private temporary directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from search.study.trial import PartialSink, ProgressSink, TrialSpec, blank_metrics, run_one

WATCH_INTERVAL_S = 0.1
_MEMORY_EXIT = 3  # the child's exit code when its watchdog stopped it


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_reason(limit_s: float) -> str:
    return f"time limit exceeded: still running after --trial-timeout {limit_s:g} s (stopped)"


def memory_reason(peak_mb: float, limit_mb: int) -> str:
    return f"memory limit exceeded: peak resident memory {peak_mb:,.0f} MB over --trial-memory {limit_mb:,} MB (stopped)"


def run_limited(spec: TrialSpec, decided: dict[str, Any], log_lines: list[str], node_ip: str = "",
                on_progress: ProgressSink | None = None, on_partial: PartialSink | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Like :func:`search.study.trial.run_one`, in a child process held to ``spec.timeout_s`` and
    ``spec.memory_mb``; the child's progress reaches ``on_progress`` as it happens (the child appends
    it to a file this process polls). A result the child finished before the rest of its trial (its
    mask path) is in its folder at once (``on_partial`` is unused here): a trial stopped by a limit
    afterwards still returns it. Never raises."""
    with tempfile.TemporaryDirectory(prefix="search-limited-") as tmp:
        folder = Path(tmp)
        (folder / "in.json").write_text(json.dumps({"spec": dataclasses.asdict(spec), "decided": decided, "node_ip": node_ip}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        start = time.perf_counter()
        with open(folder / "stderr.txt", "wb") as stderr_file:
            child = subprocess.Popen([sys.executable, "-m", "search.study.limits", str(folder)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=stderr_file, preexec_fn=_die_with_parent)
        events = _EventReader(folder / EVENTS_FILE, on_progress)
        timed_out = False
        while child.poll() is None:
            events.relay()
            if spec.timeout_s is not None and time.perf_counter() - start > spec.timeout_s:
                child.kill()
                child.wait()
                timed_out = True
                break
            time.sleep(WATCH_INTERVAL_S)
        events.relay()
        stderr = (folder / "stderr.txt").read_bytes()
        out = folder / "out.json"
        if out.is_file():
            result = json.loads(out.read_text())
            log_lines.extend(result["log"])
            if timed_out:
                log_lines.append(time_reason(spec.timeout_s or 0) + " after the trial's own result was saved")
            return result["metrics"], {path.name: path.read_bytes() for path in folder.glob("model*.pt")}
        metrics = blank_metrics(spec)
        metrics.update(strategy=decided["strategy"], node_ip=node_ip, seconds=time.perf_counter() - start,
                       options=json.dumps({**decided["options"], **spec.fixed_options.get(decided["strategy"], {})}, sort_keys=True, default=str))
        if timed_out:
            metrics["reason"] = time_reason(spec.timeout_s or 0)
        else:
            last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            metrics["reason"] = f"the trial process died with exit code {child.returncode} {last[0]}".rstrip()
            log_lines.append(stderr.decode(errors="replace"))
        log_lines.append(metrics["reason"])
        return metrics, {}


def _watch_memory(limit_mb: int, folder: Path, spec: TrialSpec, decided: dict[str, Any], node_ip: str, log_lines: list[str], start: float) -> None:
    """Stop this (child) process once its peak resident memory passes ``limit_mb``."""
    while True:
        peak = peak_rss_mb()
        if peak > limit_mb:
            if (folder / "out.json").is_file():  # a result the trial finished first (its mask path's target) stays
                os._exit(_MEMORY_EXIT)
            metrics = blank_metrics(spec)
            metrics.update(strategy=decided["strategy"], node_ip=node_ip, seconds=time.perf_counter() - start,
                           reason=memory_reason(peak, limit_mb))
            _write_result(folder, metrics, [*log_lines, metrics["reason"]])
            os._exit(_MEMORY_EXIT)
        time.sleep(WATCH_INTERVAL_S)


EVENTS_FILE = "events.jsonl"


def _append_event(folder: Path, event: dict[str, Any], new_lines: list[str]) -> None:
    """In the child: one JSON line per progress event, with the log lines written since the last."""
    with open(folder / EVENTS_FILE, "a") as out:
        out.write(json.dumps({"event": event, "log": new_lines}) + "\n")


class _EventReader:
    """In the parent: hands each complete line the child appended to ``on_progress``."""

    def __init__(self, path: Path, on_progress: ProgressSink | None) -> None:
        self.path, self.on_progress, self.offset = path, on_progress, 0

    def relay(self) -> None:
        if self.on_progress is None or not self.path.is_file():
            return
        with open(self.path, "rb") as events:
            events.seek(self.offset)
            chunk = events.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            record = json.loads(line)
            self.on_progress(record["event"], record["log"])


def _die_with_parent() -> None:
    """The child dies with its Ray worker (a stopped or pruned trial's worker is killed), on Linux."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _write_result(folder: Path, metrics: dict[str, Any], log_lines: list[str]) -> None:
    tmp = folder / "out.json.tmp"
    tmp.write_text(json.dumps({"metrics": metrics, "log": log_lines}))
    os.replace(tmp, folder / "out.json")


def _write_models_and_result(folder: Path, metrics: dict[str, Any], models: dict[str, bytes], log_lines: list[str]) -> None:
    for name, model in models.items():
        if not (folder / name).is_file():
            (folder / f"{name}.tmp").write_bytes(model)
            os.replace(folder / f"{name}.tmp", folder / name)
    _write_result(folder, metrics, log_lines)


def _child(folder: Path) -> None:
    start = time.perf_counter()
    given = json.loads((folder / "in.json").read_text())
    raw = given["spec"]
    spec = TrialSpec(**{**raw, "objectives": tuple(raw["objectives"])})
    lines: list[str] = []
    if spec.memory_mb:
        threading.Thread(target=_watch_memory, args=(spec.memory_mb, folder, spec, given["decided"], given["node_ip"], lines, start),
                         daemon=True).start()
    metrics, models = run_one(spec, given["decided"], lines, given["node_ip"],
                              on_progress=lambda event, new: _append_event(folder, event, new),
                              on_partial=lambda partial, finished: _write_models_and_result(folder, partial, finished, lines))
    _write_models_and_result(folder, metrics, models, lines)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
