"""The local Ray's head process (search.study.localray): which command lines start it early, that it
comes up and goes away whole (stopped, aborted mid-start, its driver killed), and that a bad command
line that started one leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.errors import SearchError
from search.run import parse_args
from search.study import localray
from tests.conftest import PROJECT_ROOT
from tests.helpers import run, study_env

# Tokens of search.run command lines, abbreviations and short-flag clusters included.
TOKENS = ["--strategy", "snl", "--trials", "2", "--dry-run", "--dry", "--dry-r", "--address", "--addr", "auto",
          "--address=auto", "-h", "-qh", "--help", "--he", "--version", "--vers", "-q", "-v", "--seed", "3",
          "--run-dir", "runs/x", "--resume", "--set", "keep=0.5", "--no-early-stop"]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(processes: list[psutil.Process], seconds: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    left = processes
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    return left


def _tree(pid: int) -> list[psutil.Process]:
    head = psutil.Process(pid)
    return [head, *head.children(recursive=True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=6))
def test_a_head_starts_early_only_for_a_local_study(argv: list[str]) -> None:
    """Whenever the command line starts a head early, the real parse makes it a local study that runs:
    no help, version, dry run or cluster address, however abbreviated."""
    if not localray._runs_local_study(argv):
        return
    try:
        args = parse_args(argv)
    except SearchError:
        return  # a usage error: the command ends at once, and the head with it (test below)
    assert not args.dry_run and not args.address, argv


@pytest.mark.parametrize(("lines", "local"), [
    ("strategy: snl\ntrials: 4\n", True),
    ("", True),
    ("dry-run: true\n", False),
    ("dry_run: true\n", False),
    ("address: 10.0.0.1:6379\n", False),
    ("- not a mapping\n", False),
    ("strategy: [unclosed\n", False),
])
def test_a_config_file_that_may_not_run_a_local_study_starts_nothing_early(tmp_path: Path, lines: str, local: bool) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(lines)
    assert localray._runs_local_study(["--config", str(config)]) is local
    assert localray._runs_local_study([f"--config={config}", "-q"]) is local
    assert not localray._runs_local_study(["--config", str(tmp_path / "missing.yaml")])


def test_a_head_comes_up_and_stops_whole() -> None:
    head = localray.LocalRay.start()
    host, _, port = head.address().rpartition(":")
    assert host and port.isdigit(), head.address()
    tree = _tree(head.process.pid)
    assert any("raylet" in " ".join(p.cmdline()) for p in tree[1:]), [p.name() for p in tree]
    head.stop()
    assert head.process.returncode == 0
    left = _wait_gone(tree)
    assert not left, [p.name() for p in left]


def test_a_head_aborted_halfway_through_its_start_leaves_nothing() -> None:
    head = localray.LocalRay.start()
    time.sleep(1.5)  # Ray's GCS and dashboard are starting
    tree = _tree(head.process.pid)
    head.abort()
    assert head.process.returncode is not None
    left = _wait_gone(tree)
    assert not left, [p.name() for p in left]
    with pytest.raises(SearchError, match="the local Ray did not start"):
        head.address()


def test_a_head_whose_driver_is_killed_stops_its_ray() -> None:
    code = ("import time; from search.study.localray import LocalRay; head = LocalRay.start(); "
            "print(head.address(), head.process.pid, flush=True); time.sleep(120)")
    driver = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT, env=study_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        _, pid = driver.stdout.readline().split()  # type: ignore[union-attr]
        tree = _tree(int(pid))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        left = _wait_gone(tree)
        assert not left, [p.name() for p in left]
    finally:
        if driver.poll() is None:
            driver.kill()


def test_a_head_that_fails_to_start_is_one_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    unusable = tmp_path / "not-a-directory"
    unusable.write_text("")
    monkeypatch.setenv("RAY_TMPDIR", str(unusable))  # Ray cannot make its session directory there
    head = localray.LocalRay.start()
    with pytest.raises(SearchError, match="the local Ray did not start: ") as info:
        head.address()
    assert "\n" not in str(info.value)
    assert head.process.returncode is not None


def test_bad_input_that_started_a_head_leaves_no_process() -> None:
    argv = ["--strategy", "snl", "--trials", "0"]
    assert localray._runs_local_study(argv)  # the command starts a head before it reads its input
    before = {p.pid for p in psutil.process_iter()}
    done = run(argv, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: bad value 0 for --trials: expected an integer >= 1"], done.stderr
    started = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before and "ray" in " ".join(p.info["cmdline"] or [])]
    left = _wait_gone(started, 10)
    assert not left, [" ".join(p.cmdline()) for p in left if _alive(p)]
