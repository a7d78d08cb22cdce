"""A study's local Ray, started early in a process of its own, which also stops it.

Starting Ray takes about 4 s, most of it spent waiting for its processes (GCS, dashboard head,
raylet, agents) to come up one after another. ``python -m search.run`` therefore starts this head
process first thing, before it imports torch and checks its input (:func:`start_early`), and the
driver joins the running Ray once it is needed (:func:`search.study.cluster.connect`), so Ray's start
overlaps the driver's imports. Callers of ``search.run.main`` in a Python process of their own start
it at that point instead (:func:`take`).

The head owns Ray. It runs ``ray.init`` (no dashboard; it prints ``ready <GCS address>`` or ``error
<reason>`` on stdout), then shuts Ray down once its stdin reaches end-of-file: when the driver closes it
(:meth:`LocalRay.stop`) or exits in any way, a SIGKILL included. It runs in a session of its own, so a
Ctrl-C in the terminal reaches the driver alone, which stops the study first. A head that the command
never joins (bad input, a dry run named in ``--config``) is killed with everything it started at the
driver's exit, even halfway through Ray's start (:meth:`LocalRay.abort`).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

from search.errors import SearchError

READY, FAILED = "ready", "error"
STOP_TIMEOUT_S = 30.0
# search.run's options after which no local study runs (abbreviations included, as argparse takes them).
NOT_A_LOCAL_STUDY = ("--help", "--version", "--dry-run", "--address")

_early: LocalRay | None = None


class LocalRay:
    """The head process of a local Ray; :meth:`address` once it is up, then :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._address: str | None = None

    @classmethod
    def start(cls) -> LocalRay:
        """Start Ray in a new head process; returns at once."""
        process = subprocess.Popen(
            [sys.executable, "-m", "search.study.localray"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        return cls(process)

    def address(self) -> str:
        """The GCS address of the head's Ray, waiting until it is up; SearchError if it failed to start."""
        if self._address is None:
            kind, _, detail = _read_line(self.process.stdout).partition(" ")
            if kind != READY:
                self.abort()
                raise SearchError(f"the local Ray did not start: {detail or 'its process ended'}")
            self._address = detail
        return self._address

    def stop(self) -> None:
        """Have the head shut Ray down, and wait for it (forced after STOP_TIMEOUT_S)."""
        _close(self.process.stdin)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.abort()
        _close(self.process.stdout)

    def abort(self) -> None:
        """Kill the head and every process it started, now: nothing of a Ray that no study ran is
        worth a grace period, and an unused head must not hold up an ``error:`` exit."""
        import psutil

        try:
            head = psutil.Process(self.process.pid)
            tree = [head, *head.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()  # the others are not this process's children: a SIGKILL ends them regardless
        _close(self.process.stdin)
        _close(self.process.stdout)


def start_early(argv: Sequence[str]) -> None:
    """Start the head now when ``argv``, the command line of ``python -m search.run``, runs a local
    study; :func:`take` hands it over. Any doubt (a help or dry-run option, an address, a ``--config``
    that sets either) starts nothing: the study then starts its Ray when it gets there."""
    global _early
    if _early is None and _runs_local_study(argv):
        _early = LocalRay.start()
        atexit.register(_discard_unused)


def take() -> LocalRay:
    """The head :func:`start_early` started, else one started now; the caller stops it."""
    global _early
    head, _early = _early, None
    return head if head is not None else LocalRay.start()


def _discard_unused() -> None:
    global _early
    if _early is not None:
        _early.abort()
        _early = None


def _runs_local_study(argv: Sequence[str]) -> bool:
    """Whether ``argv`` surely runs a local study, read without argparse (it needs imports this
    must not wait for): no option of NOT_A_LOCAL_STUDY under any abbreviation, no ``-h``."""
    config: str | None = None
    for position, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name.startswith("--") and len(name) > 2:
            if any(option.startswith(name) for option in NOT_A_LOCAL_STUDY):
                return False
            if "--config".startswith(name):
                config = value if equals else (argv[position + 1] if position + 1 < len(argv) else None)
        elif name.startswith("-") and not name.startswith("--") and "h" in name:
            return False
    return config is None or _config_runs_local_study(config)


def _config_runs_local_study(path: str) -> bool:
    """False unless the ``--config`` file is a mapping that sets neither ``dry-run`` nor ``address``
    (an unreadable file is left to the real parse to report)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            raw = yaml.safe_load(file)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    if raw is None:
        return True
    return isinstance(raw, dict) and not {str(k).replace("_", "-") for k in raw} & {"dry-run", "address"}


def _read_line(stream: IO[str] | None) -> str:
    try:
        return stream.readline().strip() if stream is not None else ""
    except (OSError, ValueError):
        return ""


def _close(stream: IO[str] | None) -> None:
    if stream is not None:
        try:
            stream.close()
        except OSError:  # the head is gone: nothing left to tell it
            pass


def _serve() -> int:
    """The head: start Ray, say where it is, keep it until stdin ends, stop it."""
    import logging

    # Ray starts idle workers for its first driver, which is this process; they would never run a task.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    import ray

    try:
        # "local": a new Ray, never one that `ray start` left on this machine
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - any failure is reported to the driver in one line
        _say(f"{FAILED} {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip())
        return 1
    try:
        _say(f"{READY} {ray.get_runtime_context().gcs_address}")
        sys.stdin.read()  # until the driver closes it or ends
    finally:
        ray.shutdown()
    return 0


def _say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # the driver is gone; shutting down is all that is left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(_serve())
