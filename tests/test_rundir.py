"""Run directories you can trust: one owner, relocatable, nothing lost on any fault or bad input.

Each test reproduces one way a run directory used to lose or corrupt results, through the real
command line with real Ray and real Optuna storage on disk:

- ``--resume`` with the study storage missing (it used to start an empty study over the old models);
- two runs on one directory (both used to be accepted), and a stale lock after a SIGKILL;
- a copied run directory (it used to resume into the original's storage);
- ``--storage`` pointing at a file that is not an Optuna storage (it used to be written);
- storage faults mid-run: read-only, disk full (tracebacks, trials left RUNNING, ``.tmp`` files);
- Ctrl-C (exit 0, no word of resuming, a finished trial trained again);
- SIGKILL of the driver (the local Ray's agents outlived it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

import search.run
from search.errors import SearchError
from search.study import rundir
from search.study.artifacts import read_result
from search.study.lock import LOCK_FILE
from search.study.storage import INTERRUPTED, finished
from tests.conftest import PROJECT_ROOT
from tests.helpers import cli_result, load, progress_lines, run, study_env

QUICK = "tests.strategies_for_tests:Quick"
NAP = "tests.strategies_for_tests:Nap"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


@dataclass(frozen=True)
class Race:
    """Two new runs started together on one directory: their exit codes and stderr files."""

    run_dir: Path
    codes: list[int]
    errors: list[Path]


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory, cache: list[str]) -> Race:
    """Two new one-trial studies started together on one directory: one owns it and finishes, the
    other is refused. The finished run is also :func:`finished_run`, so that one study (and its Ray)
    serves the race and the tests of a finished run."""
    folder = tmp_path_factory.mktemp("race")
    run_dir = folder / "run"
    args = ["--strategy", QUICK, "--trials", "1", "--run-dir", str(run_dir), "--teacher-epochs", "2", *cache]
    drivers = [_start(args, folder / f"d{i}") for i in range(2)]
    return Race(run_dir, [d.wait(300) for d in drivers], [folder / f"d{i}.err" for i in range(2)])


@pytest.fixture(scope="module")
def finished_run(race: Race) -> Path:
    """A finished one-trial study, the one the race left (copy it before changing it)."""
    assert 0 in race.codes, [path.read_text()[-3000:] for path in race.errors]
    return race.run_dir


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stdout + done.stderr and not progress_lines(done.stdout)
    return lines[0]


def _start(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    """``python -m search.run`` in a session of its own, stdout and stderr to files (``out``.out / .err)."""
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=PROJECT_ROOT, env=study_env(),
                            stdout=open(out.with_suffix(".out"), "wb"), stderr=open(out.with_suffix(".err"), "wb"),
                            start_new_session=True)


def _wait_for(path: Path, text: str, driver: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if driver.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never saw {text!r}: {path.read_text() if path.exists() else ''}")
        time.sleep(0.2)


def test_resume_refuses_a_missing_storage_and_keeps_the_models(finished_run: Path, tmp_path: Path, cache: list[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / rundir.STORAGE_FILE).unlink()
    before = _snapshot(copy)
    line = _one_error(cli_result(search.run, ["--resume", "--run-dir", str(copy), "--trials", "4", *cache]))
    assert line.startswith(f"error: study storage {copy / rundir.STORAGE_FILE} does not exist")
    assert _snapshot(copy) == before and not (copy / rundir.STORAGE_FILE).exists()

    # A storage that exists but holds another study is refused just the same.
    import optuna

    optuna.create_study(storage=rundir.storage_url(copy), study_name="someone-else")
    before = _snapshot(copy)
    line = _one_error(cli_result(search.run, ["--resume", "--run-dir", str(copy), "--trials", "4", *cache]))
    assert "is not in its storage" in line and "nothing to resume" in line
    assert _snapshot(copy) == before


def test_a_copied_run_resumes_on_its_own_storage(finished_run: Path, tmp_path: Path, cache: list[str]) -> None:
    assert json.loads((finished_run / rundir.SETTINGS_FILE).read_text())["storage"] == "sqlite:///study.db"
    original = _snapshot(finished_run)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(finished_run, copy)
    done = run(["--resume", "--run-dir", str(copy), "--trials", "3", *cache])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _snapshot(finished_run) == original, "the original run directory was not touched"
    settings, study = load(copy)
    assert settings.storage == rundir.storage_url(copy)
    assert sum(finished(t) for t in study.get_trials()) == 3
    assert (copy / "trials" / "2" / "model.pt").is_file()


@dataclass(frozen=True)
class KilledOwner:
    """A run whose driver was SIGKILLed mid-trial (see :func:`killed_owner`): what it showed while it
    was alive, what of its Ray was left after, and its resume."""

    run_dir: Path
    pid: int
    refused: list[subprocess.CompletedProcess[str]]  # a new run, then a --resume, on its live directory
    lock: dict[str, object]  # its lock file while it was alive
    ray_processes: list[str]  # "pid name" of its local Ray's processes before the kill
    left: list[str]  # those still alive 30 s after the kill
    resumed: subprocess.CompletedProcess[str]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def killed_owner(tmp_path_factory: pytest.TempPathFactory, cache: list[str]) -> KilledOwner:
    """One live run for the lock test and the test of what a SIGKILL leaves, which both need a driver
    killed mid-trial (one run and its Ray instead of two): a one-trial study of a 60 s nap. While it
    runs, a second run and a ``--resume`` on its directory are tried and its lock file read; once its
    trial's worker is up (3 s after "running 1 trial"), its driver alone is SIGKILLed, as the OOM killer
    would, and the Ray processes it had are watched for 30 s; then the run is resumed, the rerun of the
    nap cut short (only the lock is under test there)."""
    folder = tmp_path_factory.mktemp("killed-owner")
    run_dir = folder / "run"
    driver = _start(["--strategy", NAP, "--set", "seconds=60", "--trials", "1", "--run-dir", str(run_dir), *cache], folder / "driver")
    try:
        _wait_for(folder / "driver.out", "running 1 trial", driver)
        running = time.monotonic()
        refused = [run([*args, "--run-dir", str(run_dir), *cache]) for args in (["--strategy", NAP], ["--resume"])]
        lock = json.loads((run_dir / LOCK_FILE).read_text())
        time.sleep(max(0.0, 3 - (time.monotonic() - running)))  # the trial's worker is up
        ray_processes = [p for p in psutil.Process(driver.pid).children(recursive=True) if "reaper" not in " ".join(p.cmdline())]
        names = {p.pid: f"{p.pid} {p.name()}" for p in ray_processes}
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone
        driver.wait(30)
        deadline = time.monotonic() + 30
        left = ray_processes
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = [p for p in left if _alive(p)]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    resumed = run(["--resume", "--run-dir", str(run_dir), "--trial-timeout", "2", *cache], timeout=300)
    return KilledOwner(run_dir, driver.pid, refused, lock, list(names.values()), [names[p.pid] for p in left], resumed)


def test_a_second_run_on_a_live_directory_is_refused_and_a_stale_lock_taken_over(killed_owner: KilledOwner) -> None:
    run_dir, pid = killed_owner.run_dir, killed_owner.pid
    owner = f"PID {pid} on "
    for refused in killed_owner.refused:
        line = _one_error(refused)
        assert owner in line and "in use by" in line, line
    lock = killed_owner.lock
    assert lock["pid"] == pid and lock["host"] and lock["started"]
    resumed = killed_owner.resumed
    assert f"taking over the stale lock of {run_dir}: PID {pid}" in resumed.stdout, resumed.stdout[-2000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_sigkill_of_the_driver_leaves_no_ray_process(killed_owner: KilledOwner) -> None:
    assert any("raylet" in name for name in killed_owner.ray_processes), killed_owner.ray_processes
    assert not killed_owner.left, "left running after SIGKILL of the driver: " + "; ".join(killed_owner.left)


def test_new_runs_started_together_get_one_owner(race: Race) -> None:
    run_dir, codes = race.run_dir, race.codes
    assert sorted(codes) == [0, 2], codes
    loser = codes.index(2)
    error = race.errors[loser].read_text().strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: run directory") and ("in use by" in error[0] or "already exists" in error[0])
    settings, study = load(run_dir)
    assert len(study.get_trials()) == 1 and len({s.study_name for s in [settings]}) == 1
    with sqlite3.connect(run_dir / rundir.STORAGE_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 1, "one study in the storage"


@pytest.mark.parametrize("kind", ["journal", "sqlite-other-app", "not-sqlite"])
def test_a_storage_that_is_not_optunas_is_refused_untouched(kind: str, tmp_path: Path, cache: list[str]) -> None:
    path = tmp_path / "data.bin"
    if kind == "journal":
        path.write_text("my notes\nmore notes\n")
        url = f"journal:{path}"
    elif kind == "sqlite-other-app":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        url = f"sqlite:///{path}"
    else:
        path.write_bytes(b"PK\x03\x04 a zip, say" * 10)
        url = f"sqlite:///{path}"
    before = path.read_bytes()
    line = _one_error(cli_result(search.run, ["--strategy", QUICK, "--storage", url, "--run-dir", str(tmp_path / "run"), *cache]))
    assert "refusing to" in line
    assert path.read_bytes() == before and not (tmp_path / "run").exists()


def test_a_new_run_that_fails_before_its_study_exists_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(SearchError, match="boom"):
        with rundir.claim(run_dir, new=True):
            assert (run_dir / LOCK_FILE).is_file()
            raise SearchError("boom")
    assert not run_dir.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(SearchError):
        with rundir.claim(existing, new=True):
            raise SearchError("boom")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def _mount_tmpfs(target: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a small file system")
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB file system of the test's own, unmounted afterwards."""
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "64m")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_mid_run_stops_cleanly_and_resume_finishes(small_disk: Path, tmp_path: Path, cache: list[str]) -> None:
    """The disk under the run directory (storage and trial files) fills while a trial runs. (A read-only
    remount cannot be shown here: the kernel refuses it while SQLite holds the file open; a read-only
    storage goes through the same path: the write raises, the searcher stops the study.)"""
    run_dir = small_disk / "run"
    driver = _start(["--strategy", NAP, "--set", "seconds=4", "--trials", "3", "--concurrency", "1", "--run-dir", str(run_dir),
                     *cache], tmp_path / "driver")
    try:
        _wait_for(tmp_path / "driver.out", "trial   0 ", driver)
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"], capture_output=True)
        code = driver.wait(180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    err = (tmp_path / "driver.err").read_text()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot write"), err[-3000:]
    assert "No space left on device" in lines[0] or "disk is full" in lines[0], lines[0]
    assert "--resume --run-dir" in lines[0] and "Traceback" not in err and "worker died" not in lines[0]
    assert not list(run_dir.rglob("*.tmp")), "no temporary file is left"
    filler.unlink()
    done = run(["--resume", "--run-dir", str(run_dir), *cache], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(run_dir)[1]
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE, "the trial finished before the fault is kept"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(finished(t) for t in trials) == 3


def test_ctrl_c_keeps_finished_trials_says_how_to_resume_and_exits_130(tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    driver = _start(["--strategy", NAP, "--set", "seconds=3", "--trials", "2", "--concurrency", "1", "--run-dir", str(run_dir),
                     *cache], tmp_path / "driver")
    try:
        _wait_for(tmp_path / "driver.out", "trial   0 ", driver)
        os.killpg(driver.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
        code = driver.wait(120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    err = (tmp_path / "driver.err").read_text()
    assert code == 130, err[-3000:]
    assert "interrupted" in err and f"python -m search.run --resume --run-dir {run_dir}" in err and "Traceback" not in err
    trials = load(run_dir)[1].get_trials()
    assert trials[0].state == TrialState.COMPLETE
    for trial in trials:  # a trial that saved its result is recorded from it, never trained again
        if read_result(run_dir, trial.number) is not None:
            assert trial.state == TrialState.COMPLETE, (trial.number, trial.user_attrs)
        elif trial.state == TrialState.FAIL:
            assert trial.user_attrs["fail_reason"] == INTERRUPTED
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = run(["--resume", "--run-dir", str(run_dir), *cache], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(finished(t) for t in load(run_dir)[1].get_trials()) == 2
