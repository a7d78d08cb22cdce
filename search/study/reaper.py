"""No process of a local Ray outlives the driver that started it.

A local Ray's head process stops Ray when its driver ends, and Ray ties its GCS server and raylet to
the head's life, but not every process they start: after a SIGKILL of the head its dashboard agent,
runtime-env agent and idle workers live on. So a study that
starts a local Ray also starts this reaper, in a session of its own (a Ctrl-C or a signal to the
driver's process group leaves it alone). While the driver lives, the reaper notes, twice a second,
the driver's descendants whose command line names the Ray session's directory (GCS, raylet, monitors,
under the head process of :mod:`search.study.localray`) and all their descendants (agents, workers,
trial processes); once the driver is gone, or closes the reaper's stdin at a normal end, it
stops every noted process still running (SIGTERM, then SIGKILL after a grace period), plus any whose
command line names the Ray session's directory. Process identity is checked by start time, so a
reused PID is never hit.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def start(session_dir: str) -> subprocess.Popen[bytes]:
    """The reaper for this process's local Ray; close its ``stdin`` once Ray is shut down."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.study.reaper", str(os.getpid()), session_dir],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def watch(driver_pid: int, session_dir: str) -> None:
    """Note the driver's descendants until it ends or closes stdin, then stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        driver = None
    while driver is not None:
        try:
            _note(driver, session_dir, seen)
        except psutil.NoSuchProcess:
            break
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break
        if not driver.is_running():
            break
    stop(_leftovers(seen, session_dir))


def _note(driver: psutil.Process, session_dir: str, seen: dict[int, float]) -> None:
    """Add the Ray processes under ``driver`` (pid -> start time) to ``seen``: those of its Ray's head
    process (:mod:`search.study.localray`), its grandchildren, and theirs."""
    for child in driver.children(recursive=True):
        try:
            if child.pid == os.getpid() or not any(session_dir in part for part in child.cmdline()):  # not Ray's, or this reaper
                continue
            for process in (child, *child.children(recursive=True)):
                seen.setdefault(process.pid, process.create_time())
        except psutil.NoSuchProcess:
            continue


def _leftovers(seen: dict[int, float], session_dir: str) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for pid, created in seen.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - created) < 0.01:
                found[pid] = process
        except psutil.NoSuchProcess:
            pass
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and session_dir and any(session_dir in part for part in process.info["cmdline"] or []):
            found.setdefault(process.pid, process)
    return list(found.values())


def stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + GRACE_S
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.2)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
