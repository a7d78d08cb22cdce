"""Reliability: what a study does when things go wrong, with real processes and bounded in time.

- the driver SIGKILLed at seeded random points, three times, each followed by ``--resume``;
- per-trial time and memory limits (``--trial-timeout``, ``--trial-memory``) that really stop a trial;
- corrupt inputs through the real command line: one ``error:`` line, exit 2, no result file touched;
- a read-only run directory, refused at start.

Trials that raise or return NaN are covered by ``tests/test_study.py``
(``test_raising_and_nan_trials_fail_and_the_study_completes``); the Ray worker node killed mid-trial on a
two-node cluster, with ``--trial-retries`` 0 and 1, by ``tests/test_cluster.py`` (one cluster serves
both tests there).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

import search.inspect
import search.run
from search.errors import SearchError
from search.run import parse_args
from search.study import rundir
from search.study.limits import memory_reason, time_reason
from search.study.storage import INTERRUPTED, finished
from tests.conftest import PROJECT_ROOT
from tests.helpers import cli_result, load, progress_lines, run, start_run, stop_group

QUICK = "tests.strategies_for_tests:Quick"
NAP = "tests.strategies_for_tests:Nap"
HOG = "tests.strategies_for_tests:Hog"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


def _record(trial: FrozenTrial) -> tuple[object, ...]:
    """What must never change once a trial has finished."""
    return trial.state, trial.values, trial.params, trial.user_attrs.get("fail_reason"), trial.user_attrs.get("relus")


def _wait_for_line(driver: subprocess.Popen[str], prefix: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        line = driver.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        if line.startswith(prefix):
            return
    raise AssertionError(f"the driver never printed a line starting {prefix!r}")


def _running_trials(run_dir: Path) -> set[int]:
    """The numbers of the trials the study's storage holds RUNNING, read with sqlite3, read-only (it waits
    out the driver's writes and never creates the file); none while the storage is not created yet."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{run_dir / 'study.db'}?mode=ro", uri=True, timeout=30)) as db:
            return {number for (number,) in db.execute("SELECT number FROM trials WHERE state = 'RUNNING'")}
    except sqlite3.OperationalError:  # no file, or its tables not written yet
        return set()


def _wait_for_a_new_running_trial(run_dir: Path, driver: subprocess.Popen[str], before: set[int], deadline: float) -> None:
    """Until a trial other than those RUNNING ``before`` the driver started (left by a kill) is RUNNING."""
    while time.monotonic() < deadline and driver.poll() is None:
        if _running_trials(run_dir) - before:
            return
        time.sleep(0.2)
    raise AssertionError("no trial started before the driver ended or the deadline passed")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory, cache: list[str]) -> tuple[Path, dict[int, tuple[object, ...]], int, str]:
    """A 4-trial study whose driver is SIGKILLed three times at seeded random points (1 to 7 s after
    it announced its run directory, i.e. during Ray's start or Tune's start; the second one 0 to 1 s
    after a trial is RUNNING, so one always lands mid-trial), each kill followed by ``--resume``, the
    last one left to finish (asking for half a GPU per trial, which a CPU-only Ray must drop, saying
    so). Returns the run directory, every trial seen finished after some kill (number -> record), how
    many kills left a trial RUNNING, and the last resume's stderr."""
    run_dir = tmp_path_factory.mktemp("kills") / "run"
    first = ["--strategy", QUICK, "--trials", "4", "--run-dir", str(run_dir), "--teacher-epochs", "2", "--concurrency", "2", *cache]
    resume = ["--resume", "--run-dir", str(run_dir), *cache]
    rng = random.Random(8)
    kept: dict[int, tuple[object, ...]] = {}
    mid_trial = 0
    for kill in range(3):
        left_running = _running_trials(run_dir)
        driver = start_run(first if kill == 0 else resume)
        try:
            _wait_for_line(driver, "run directory", time.monotonic() + 120)
            if kill == 1:  # within a second of a trial's start: long before its worker has even imported torch
                _wait_for_a_new_running_trial(run_dir, driver, left_running, time.monotonic() + 120)
            time.sleep(rng.uniform(0.0, 1.0) if kill == 1 else rng.uniform(1.0, 7.0))
            driver.send_signal(signal.SIGKILL)
            driver.wait(30)
        finally:
            stop_group(driver)
        trials = load(run_dir)[1].get_trials()
        now = {t.number: _record(t) for t in trials if finished(t)}
        lost = {n: rec for n, rec in kept.items() if now.get(n) != rec}
        assert not lost, f"after kill {kill + 1}, finished trials changed or vanished: {lost}"
        kept.update(now)
        mid_trial += any(t.state == TrialState.RUNNING for t in trials)
    done = run([*resume, "--gpus-per-trial", "0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, kept, mid_trial, done.stderr


def test_driver_killed_three_times_then_resumed(killed_and_resumed: tuple[Path, dict[int, tuple[object, ...]], int, str]) -> None:
    run_dir, kept, mid_trial, last_stderr = killed_and_resumed
    settings, study = load(run_dir)
    trials = study.get_trials()
    assert mid_trial >= 1, "at least one kill landed while a trial was running"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(_record(study.trials[n]) == record for n, record in kept.items()), "finished trials are kept as they were"
    assert sum(finished(t) for t in trials) == settings.trials == 4
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == INTERRUPTED]
    assert interrupted
    reruns = {t.user_attrs.get("rerun_of"): t for t in trials if "rerun_of" in t.user_attrs}
    for trial in interrupted:  # each interrupted trial was rerun with its parameters
        assert reruns[trial.number].params == trial.params
    assert all(t.state == TrialState.COMPLETE for t in trials if finished(t)), "Quick trials never fail on their own"
    if not torch.cuda.is_available():  # a GPU request on a CPU-only Ray would wait forever: dropped, said
        assert "warning: the Ray cluster has no GPU; ignoring --gpus-per-trial 0.5" in last_stderr


def test_time_and_memory_limits_stop_trials_and_the_study_goes_on(tmp_path: Path, cache: list[str]) -> None:
    # A new study runs each strategy's default recipe first, in the order given: Hog, Nap, then Quick,
    # which starts once Hog is stopped and completes while Nap still sleeps.
    run_dir = tmp_path / "run"
    done = run(["--strategy", f"{HOG},{NAP},{QUICK}", "--trials", "3", "--sampler", "random", "--seed", "11",
                "--set", "nap.seconds=600", "--trial-timeout", "20", "--trial-memory", "1500",
                "--run-dir", str(run_dir), "--teacher-epochs", "2", "--concurrency", "2", *cache], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, study = load(run_dir)
    trials = study.get_trials()
    by_strategy = {name: [t for t in trials if t.params["strategy"] == name] for name in (QUICK, NAP, HOG)}
    assert len(trials) == 3 and all(by_strategy.values())
    for trial in by_strategy[NAP]:  # would sleep 600 s: stopped at 20
        assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == time_reason(20)
        assert trial.user_attrs["seconds"] < 120
        assert time_reason(20) in (run_dir / "trials" / str(trial.number) / "log.txt").read_text()
    for trial in by_strategy[HOG]:  # would touch 4 GB, then raise "nothing stopped it"
        reason = trial.user_attrs["fail_reason"]
        assert trial.state == TrialState.FAIL and reason.startswith("memory limit exceeded: peak resident memory ")
        peak = int(reason.split("memory ")[2].split(" MB")[0].replace(",", ""))
        assert reason == memory_reason(peak, 1500) and 1500 < peak < 2500
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["model_path"] for t in by_strategy[QUICK])
    assert max(t.number for t in by_strategy[QUICK]) > min(t.number for t in by_strategy[NAP] + by_strategy[HOG]), \
        "a trial completed after a stopped one"
    lines = progress_lines(done.stdout)
    assert sum("FAILED: time limit exceeded" in line for line in lines) == len(by_strategy[NAP])
    assert sum("FAILED: memory limit exceeded" in line for line in lines) == len(by_strategy[HOG])


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its content hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _command(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m module args``: the real entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not progress_lines(done.stdout)
    return lines[0]


def test_corrupt_inputs_are_one_error_line_and_touch_no_result(
    killed_and_resumed: tuple[Path, dict[int, tuple[object, ...]], int, str], tmp_path: Path, cifar_dir: Path,
) -> None:
    run_dir = killed_and_resumed[0]
    before = _snapshot(run_dir)
    model = next(run_dir.glob("trials/*/model.pt"))

    data = tmp_path / "cifar10"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    for source in (cifar_dir / "cifar-10-batches-py").iterdir():
        (data / "cifar-10-batches-py" / source.name).symlink_to(source)
    truncated = data / "cifar-10-batches-py" / "data_batch_3"
    truncated.unlink()
    truncated.write_bytes((cifar_dir / "cifar-10-batches-py" / "data_batch_3").read_bytes()[:100_000])
    line = _one_error(_command("search.run", ["--strategy", QUICK, "--dataset", "cifar10", "--data-dir", str(data),
                                              "--run-dir", str(run_dir)]))
    assert line.startswith(f"error: corrupt data file {truncated}:")

    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    line = _one_error(cli_result(search.inspect, ["--checkpoint", str(not_a_checkpoint)]))
    assert line.startswith(f"error: {not_a_checkpoint} is not a search checkpoint")
    line = _one_error(cli_result(search.inspect, ["--checkpoint", str(model.with_name("log.txt"))]))
    assert "is not a search checkpoint" in line
    shown = cli_result(search.inspect, ["--checkpoint", str(model)])  # the real one is shown
    assert shown.returncode == 0 and f"total_relus={study_relus(run_dir, model)}" in shown.stdout

    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    storage = damaged / rundir.STORAGE_FILE
    storage.write_bytes(b"\0garbage, not SQLite\0" * 64)
    settings = rundir.read_settings(damaged)
    settings.storage = rundir.storage_url(damaged)
    rundir.write_settings(damaged, settings)
    damaged_before = _snapshot(damaged)
    line = _one_error(cli_result(search.run, ["--resume", "--run-dir", str(damaged)]))
    assert line.startswith(f"error: cannot open study storage '{settings.storage}': ")
    assert _snapshot(damaged) == damaged_before

    line = _one_error(cli_result(search.run, ["--strategy", QUICK, "--set", "width=wide", "--run-dir", str(run_dir)]))
    assert line == "error: bad value 'wide' for width: expected a number"

    config = tmp_path / "study.yaml"
    config.write_text("strategy: snl\ntrials: 4\nepochs: 3\nteacher_epoch: 2\n")
    line = _one_error(cli_result(search.run, ["--config", str(config), "--run-dir", str(run_dir)]))
    assert line.startswith(f"error: unknown keys 'epochs', 'teacher_epoch' in --config {config}; accepted: ")
    assert _snapshot(run_dir) == before, "no file of the existing run was written"


def study_relus(run_dir: Path, model: Path) -> int:
    """The ReLU count the study recorded for the trial that saved ``model``."""
    return int(load(run_dir)[1].trials[int(model.parent.name)].user_attrs["relus"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trials: many\n", "bad value 'many' for trials in --config {path}: expected an integer"),
        ("trials: 2.5\n", "bad value 2.5 for trials in --config {path}: expected an integer"),
        ("verbose: 3\n", "bad value 3 for verbose in --config {path}: expected true or false"),
        ("- strategy\n", "--config {path} must hold a mapping of option: value, not list"),
        ("strategy: [a\n", "--config {path} is not valid YAML: "),
    ],
)
def test_bad_config_values(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SearchError) as err:
        parse_args(["--config", str(path)])
    assert str(err.value).startswith(expected.format(path=path))


def test_config_holds_options_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("strategy: snl\ntrials: 3\ntrial-timeout: 600\ntrial_memory: 2048\nset: [width=0.5]\nverbose: true\n")
    args = parse_args(["--config", str(path), "--trials", "5", "--set", "snl.epochs=2"])
    assert (args.strategy, args.trials, args.trial_timeout, args.trial_memory, args.verbose) == ("snl", 5, 600.0, 2048, True)
    assert args.sets == ["width=0.5", "snl.epochs=2"]


@pytest.mark.parametrize(("option", "value"), [("--trial-timeout", "0"), ("--trial-memory", "-1"), ("--trial-retries", "-2")])
def test_bad_limits(option: str, value: str) -> None:
    with pytest.raises(SearchError, match=f"bad value {value} for {option}"):
        parse_args(["--strategy", QUICK, option, value])


def _read_only_bind(source: Path, target: Path) -> None:
    """Mount ``source`` read-only at ``target`` (root: chmod alone would not stop writes)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a read-only bind mount")
    target.mkdir()
    if subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(target)], capture_output=True)
        pytest.skip("cannot remount a bind mount read-only here")


def test_read_only_run_directory_fails_at_start(
    killed_and_resumed: tuple[Path, dict[int, tuple[object, ...]], int, str], tmp_path: Path,
) -> None:
    source = tmp_path / "copy"
    shutil.copytree(killed_and_resumed[0], source)
    readonly = tmp_path / "ro"
    _read_only_bind(source, readonly)
    try:
        before = _snapshot(readonly)
        resumed = cli_result(search.run, ["--resume", "--run-dir", str(readonly), "--trials", "8"])
        assert _one_error(resumed).startswith(f"error: cannot write in run directory {readonly}: Read-only file system")
        new = cli_result(search.run, ["--strategy", QUICK, "--run-dir", str(readonly / "new")])
        assert _one_error(new).startswith(f"error: cannot write run directory {readonly / 'new'}: Read-only file system")
        assert resumed.stdout == new.stdout == "", "refused before Ray started: nothing announced, nothing trained"
        assert _snapshot(readonly) == before
    finally:
        subprocess.run(["umount", str(readonly)], capture_output=True)
