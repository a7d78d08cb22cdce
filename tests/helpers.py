"""Helpers shared by the study tests: running ``python -m search.run`` as a user would, reading a run's
storage, and a real two-node Ray cluster in two network namespaces.

The two nodes are two network namespaces on this machine joined by a veth pair (DESIGN.md): the head
and the driver in one, a worker in the other, on the private 10.213.7.0/24. Every Ray process a test
starts is a child of a ``ray start --block`` it launched in its own process group, with its own temp
directory, and is stopped through that; ``ray stop`` is never used (it would stop every Ray here).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.cli import run_main
from search.study import rundir
from tests.conftest import PROJECT_ROOT

HEAD_IP, WORKER_IP, PORT = "10.213.7.1", "10.213.7.2", 6390
RAY = str(Path(sys.executable).with_name("ray"))


def study_env() -> dict[str, str]:
    """Single-node Ray on 127.0.0.1 (DESIGN.md); workers find the test strategies on PYTHONPATH."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(PROJECT_ROOT)}


def cli(module: object, argv: list[str]) -> tuple[int, str, str]:
    """``run_main(module.main, argv)`` in-process: (exit code, stdout, stderr). The real entry point's
    code path without a new interpreter (and its 3 s of imports) per command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        run_main(module.main, argv)  # type: ignore[attr-defined]
    return int(info.value.code or 0), out.getvalue(), err.getvalue()


def cli_result(module: object, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """:func:`cli` as a command's result, for tests that read ``returncode``, ``stdout`` and ``stderr``."""
    return subprocess.CompletedProcess(argv, *cli(module, argv))


def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m search.run args`` from the project root, to the end."""
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args], cwd=PROJECT_ROOT, env=study_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def run_together(commands: Mapping[Hashable, Sequence[str]], **options: Any) -> dict[Hashable, subprocess.CompletedProcess[str]]:
    """``subprocess.run(command, capture_output=True, text=True, **options)`` for each of ``commands``,
    as many at once as this machine has cores; each one's result under its key. For the command lines
    of a parametrized test that each start Python, import torch and stop at an error: one core's work
    for about 2 s each, so the file's cases take half the time on two cores, and each case still
    checks its own result."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        started = {key: pool.submit(subprocess.run, list(command), capture_output=True, text=True, **options)
                   for key, command in commands.items()}
        return {key: future.result() for key, future in started.items()}


def start_run(args: list[str]) -> subprocess.Popen[str]:
    """``python -m search.run args`` in a process group of its own (stop it with :func:`stop_group`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", *args], cwd=PROJECT_ROOT, env=study_env(),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )


def load(run_dir: Path) -> tuple[rundir.RunSettings, optuna.Study]:
    settings = rundir.read_settings(run_dir)
    return settings, optuna.load_study(study_name=settings.study_name, storage=settings.storage)


# search.study.display: a trial's progress ("mask 1/≤40": a phase that may end early shows its bound)
RUNNING_LINE = re.compile(r"trial +\d+ \S+ +\w+ \d+/≤?\d+ val_acc ")


def progress_lines(stdout: str) -> list[str]:
    """The permanent line of each finished trial (not the progress lines of running ones)."""
    return [line for line in stdout.splitlines() if re.match(r"trial +\d+ ", line) and not RUNNING_LINE.match(line)]


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stop what a killed driver left behind (its local Ray), which the test started in its own group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def network_namespaces() -> Iterator[tuple[str, str]]:
    """Namespaces (head, worker) joined by a veth pair on 10.213.7.0/24, deleted afterwards; skips the
    test where they cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = uuid.uuid4().hex[:6]
    head, worker = f"srh{tag}", f"srw{tag}"
    try:
        _ip("netns", "add", head)
    except (subprocess.CalledProcessError, OSError) as err:
        pytest.skip(f"cannot create a network namespace here: {err}")
    try:
        _ip("netns", "add", worker)
        _ip("link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vw{tag}")
        for ns, dev, ip in ((head, f"vh{tag}", HEAD_IP), (worker, f"vw{tag}", WORKER_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "default", "dev", dev)
        yield head, worker
    finally:
        for ns in (head, worker):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def cluster_env() -> dict[str, str]:
    """Token auth on for every node and the driver (Ray 2.60 never turns it on for an explicit
    address by itself); all of them read the same ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "token"}


# The head notices a dead node after 3 missed health checks 1 s apart (Ray's default: 5, 3 s apart).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _start(ns: str, args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``ray start --block`` in namespace ``ns``, in a process group of its own."""
    with open(log, "wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, RAY, "start", "--block", *args], cwd=PROJECT_ROOT,
                                env={**cluster_env(), **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen[bytes], *markers: str, sig: int = signal.SIGTERM) -> None:
    """Stop a ``ray start --block`` (with ``sig``) and any of its Ray processes still alive (found by a
    string only the test's processes carry on their command line: its temp directory, its node's address)."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    leftovers = [pid for m in markers for pid in subprocess.run(["pgrep", "-f", m], capture_output=True, text=True).stdout.split()]
    for pid in leftovers:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def nodes_alive(head: str, wait_for: int = 0, deadline: float = 0.0) -> int:
    """How many nodes the head counts alive (0 when it cannot be reached). With ``wait_for``, the probe
    polls until that many are alive or ``deadline`` (``time.monotonic()``) passes: one connection
    instead of a new interpreter every look."""
    seconds = max(0.0, deadline - time.monotonic()) if wait_for else 0.0
    probe = (
        "import time, ray; ray.init(address='%s:%d', logging_level='ERROR'); end = time.monotonic() + %.1f\n"
        "alive = lambda: sum(n['Alive'] for n in ray.nodes())\n"
        "while alive() < %d and time.monotonic() < end: time.sleep(0.2)\n"
        "print(alive())" % (HEAD_IP, PORT, seconds, wait_for)
    )
    done = subprocess.run(["ip", "netns", "exec", head, sys.executable, "-c", probe], env=cluster_env(),
                          capture_output=True, text=True, timeout=120 + seconds)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0


@dataclass
class Cluster:
    """A running two-node Ray cluster: the head (and the driver) in ``head_ns``, a worker in ``worker_ns``."""

    head_ns: str
    worker_ns: str
    logs: Path
    worker: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{PORT}"

    def start_worker(self, deadline: float) -> None:
        self.worker = _start(self.worker_ns, [f"--address={self.address}", f"--node-ip-address={WORKER_IP}", "--num-cpus=1",
                                              "--disable-usage-stats"], self.logs / "worker.log")
        alive = nodes_alive(self.head_ns, wait_for=2, deadline=deadline)
        while alive < 2 and time.monotonic() < deadline:
            time.sleep(2)
            alive = nodes_alive(self.head_ns, wait_for=2, deadline=deadline)
        assert alive == 2, (self.logs / "worker.log").read_text()[-2000:]

    def kill_worker(self) -> None:
        """The worker node dies at once: SIGKILL to its ``ray start``, raylet and workers."""
        if self.worker is not None:
            _stop(self.worker, f"--node-ip-address={WORKER_IP}", sig=signal.SIGKILL)
            self.worker = None

    def run(self, args: list[str], timeout: float = 300, driver_path: Path | None = None) -> subprocess.Popen[str]:
        """``python -m search.run args --address HEAD`` in the head's namespace, started; ``driver_path``
        is on the driver's PYTHONPATH only (not on the nodes')."""
        env = cluster_env()
        if driver_path is not None:
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(driver_path)])
        return subprocess.Popen(
            ["ip", "netns", "exec", self.head_ns, sys.executable, "-m", "search.run", *args, "--address", self.address],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


@contextmanager
def two_node_cluster(namespaces: tuple[str, str], logs: Path) -> Iterator[Cluster]:
    """A head (1 CPU) and a worker (1 CPU) in ``namespaces``, both stopped afterwards."""
    head_ns, worker_ns = namespaces
    subprocess.run([RAY, "get-auth-token", "--generate"], env=cluster_env(), capture_output=True, timeout=60, check=True)
    temp = f"/tmp/search-cluster-{uuid.uuid4().hex[:8]}"
    head = _start(head_ns, ["--head", f"--port={PORT}", f"--node-ip-address={HEAD_IP}", "--num-cpus=1",
                            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], logs / "head.log", FAST_HEALTH_CHECKS)
    cluster = Cluster(head_ns, worker_ns, logs)
    try:
        deadline = time.monotonic() + 120
        while nodes_alive(head_ns) < 1 and time.monotonic() < deadline:
            time.sleep(2)
        cluster.start_worker(deadline)
        yield cluster
    finally:
        cluster.kill_worker()
        # SIGKILL, like the worker: on SIGTERM the head drains for up to 30 s, which _stop never waited
        # out (it waited 10 s, then sent SIGKILL anyway).
        _stop(head, temp, f"--node-ip-address={HEAD_IP}", sig=signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
