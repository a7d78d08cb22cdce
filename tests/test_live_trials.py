"""Live, frugal trials: progress while they run, learning curves in storage, early stopping.

Through the real command line with real Ray and real Optuna storage: progress lines of a running
trial reach the driver (and ``trials/<n>/log.txt``) before the trial ends; every epoch is an Optuna
intermediate value and the objectives carry their names; an unreachable SNL target is PRUNED within
three epochs; the rung rule stops a dominated trial and spares a non-dominated one (a test strategy
whose learning curves are known, ``tests.strategies_for_tests:Curve``); resume keeps pruned trials.
That strategies that do not use ``relu_target`` never sample it, and that a new study starts from each
strategy's default recipe, is checked on the study ``tests/test_study.py`` shares.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import masked_relu, progress
from search.errors import SearchError
from search.objectives import cost_model, objectives
from search.pipeline import Job, execute, prepare
from search.run import parse_args
from search.strategies import TargetOutOfReach
from search.strategies.snl import out_of_reach, travel_epochs
from search.study import trainable
from search.study.display import describe
from search.study.halving import MARGIN, Rungs, RungValue, rung_of
from search.study.searcher import StudySearcher
from search.study.storage import finished
from search.study.trial import TRIAL_KEY
from tests.conftest import PROJECT_ROOT
from tests.helpers import RUNNING_LINE, load, run, study_env

CURVE = "tests.strategies_for_tests:Curve"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


def test_progress_reaches_the_driver_and_the_log_while_the_trial_runs(tmp_path: Path, cache: list[str]) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "driver.out"
    with open(out, "wb") as stdout:
        driver = subprocess.Popen([sys.executable, "-m", "search.run", "--strategy", CURVE, "--set", "epochs=6",
                                   "--set", "seconds=1.5", "--trials", "1", "--run-dir", str(run_dir), *cache],
                                  cwd=PROJECT_ROOT, env=study_env(), stdout=stdout, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        # epoch 2 of 6 is the 25% rung: its report reaches the driver at once (others at most every 5 s)
        shown = re.compile(rf"trial +0 {re.escape(CURVE)} +train 2/6 val_acc 0\.3167 relus 4,608 elapsed \S+ eta \S+")
        while not shown.search(out.read_text()):
            assert driver.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        log = run_dir / "trials" / "0" / "log.txt"
        while "curve epoch 1/6" not in (log.read_text() if log.exists() else ""):
            assert driver.poll() is None and time.monotonic() < deadline, "log.txt did not grow while the trial ran"
            time.sleep(0.2)
        assert driver.poll() is None, "both arrived before the trial ended"
        assert "curve epoch 6/6" not in log.read_text()
        assert driver.wait(180) == 0, driver.stderr.read()[-3000:]  # type: ignore[union-attr]
    finally:
        if driver.poll() is None:
            driver.kill()
    study = load(run_dir)[1]
    assert study.metric_names == ["accuracy", "relus"]
    curve = study.trials[0].intermediate_values
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]
    assert curve[6] == pytest.approx(0.95) and curve[1] == pytest.approx(0.95 / 6)
    assert "curve epoch 6/6" in (run_dir / "trials" / "0" / "log.txt").read_text()


def test_rung_rule_stops_a_dominated_trial_and_spares_the_others(tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    args = ["--strategy", CURVE, "--trials", "4", "--concurrency", "1", "--run-dir", str(run_dir), *cache]
    done = run(args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(run_dir)[1].get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE], states
    reason = trials[1].user_attrs["prune_reason"]
    assert reason.startswith("dominated at 25% of train (epoch 2/8)") and "trial 0" in reason
    assert sorted(trials[1].intermediate_values) == [1, 2], "stopped at the rung, its curve kept"
    # charged what it used up to the rung (the time share counts it), 2 of 8 epochs of 0.3 s
    assert 0 < trials[1].user_attrs["compute_seconds"] and 0.6 <= trials[1].user_attrs["seconds"] < trials[0].user_attrs["seconds"]
    assert all(0 <= t.user_attrs["progress_seconds"] < t.user_attrs["seconds"] for t in trials if t.state == TrialState.COMPLETE)
    assert "PRUNED: dominated" in done.stdout
    log = (run_dir / "trials" / "1" / "log.txt").read_text().splitlines()
    assert log[-1] == f"stopped early by the rung rule: {reason}" and "curve epoch 2/8" in log[-2], log[-3:]

    resumed = run(["--resume", "--run-dir", str(run_dir), "--trials", "5", *cache], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load(run_dir)[1].get_trials()
    assert again[1].state == TrialState.PRUNED and again[1].user_attrs["prune_reason"] == reason, "resume keeps pruned trials"
    assert sum(finished(t) for t in again) == 5


def test_no_early_stop_runs_every_trial_to_its_end_and_quiet_keeps_only_finished_lines(tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    done = run(["--strategy", CURVE, "--set", "epochs=4", "--set", "seconds=0.1", "--trials", "2", "--concurrency", "1",
                "--no-early-stop", "--no-default-first", "-q", "--run-dir", str(run_dir), *cache], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(run_dir)[1].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, "trial 1 is dominated, yet runs"
    assert not [t for t in trials if t.user_attrs.get("default_recipe")], "--no-default-first: the sampler alone"
    assert not [line for line in done.stdout.splitlines() if RUNNING_LINE.match(line)], "-q: no progress lines"
    assert re.search(rf"^trial +1 {re.escape(CURVE)} .* accuracy=0\.5 ", done.stdout, re.MULTILINE)


def test_rung_rule() -> None:
    assert [rung_of(e, 8) for e in range(1, 9)] == [None, 0.25, None, 0.5, None, None, None, None]
    assert rung_of(1, 1) is None and rung_of(1, 2) == 0.25
    rungs = Rungs()
    assert rungs.judge("s", "train", 2, 8, RungValue(0, 0.80, 1000)) is None
    assert rungs.judge("s", "train", 2, 8, RungValue(1, 0.80 - MARGIN / 2, 1000)) is None, "within the margin"
    assert rungs.judge("s", "train", 2, 8, RungValue(2, 0.50, 500)) is None, "fewer ReLUs: not dominated"
    assert rungs.judge("s", "train", 2, 8, RungValue(3, 0.50, 1000)) is not None
    assert rungs.judge("other", "train", 2, 8, RungValue(4, 0.10, 5000)) is None, "other strategies are not compared"
    assert rungs.judge("s", "mask", 2, 8, RungValue(5, 0.10, 5000)) is None, "only the final phase counts"
    assert rungs.judge("s", "train", 3, 8, RungValue(6, 0.10, 5000)) is None, "not a rung"


def test_progress_relay_reports_at_rungs_and_carries_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainable, "REPORT_EVERY_S", 3600.0)  # only the rungs are due
    reports: list[dict[str, object]] = []
    logged: list[str] = []
    relay = trainable.ProgressRelay(reports.append, logged.append, rungs=True)
    for epoch in range(1, 9):
        relay({"phase": "train", "epoch": epoch, "epochs": 8, "step": epoch, "val_acc": epoch / 10}, [f"epoch {epoch}"])
    assert [r["epoch"] for r in reports] == [2, 4], "the 25% and 50% rungs of 8 epochs"
    assert [json.loads(r["curve"]) for r in reports] == [[[1, 0.1], [2, 0.2]], [[3, 0.3], [4, 0.4]]]
    assert json.loads(relay.unreported()) == [[5, 0.5], [6, 0.6], [7, 0.7], [8, 0.8]], "left for the final result"
    assert logged == [f"epoch {e}\n" for e in range(1, 9)], "log lines go on at once"

    quiet = trainable.ProgressRelay(reports.append, logged.append, rungs=False)  # --no-early-stop: no rung is due
    quiet({"phase": "train", "epoch": 2, "epochs": 8, "step": 2, "val_acc": 0.2}, [])
    assert len(reports) == 2
    monkeypatch.setattr(trainable, "REPORT_EVERY_S", 0.0)
    quiet({"phase": "train", "epoch": 3, "epochs": 8, "step": 3, "val_acc": 0.3}, [])
    assert json.loads(reports[-1]["curve"]) == [[2, 0.2], [3, 0.3]] and quiet.unreported() == "[]"


def test_snl_reach_rule() -> None:
    assert travel_epochs(lr=0.01, epsilon=0.01, steps_per_epoch=10) == pytest.approx(9.9)
    assert out_of_reach([4608, 4608], 4608, 46, epochs_left=30), "a count that has not moved is out of reach"
    assert not out_of_reach([2304, 1152], 4608, 46, epochs_left=30), "halving per epoch gets there"
    assert out_of_reach([4500, 4400], 4608, 46, epochs_left=5)
    assert not out_of_reach([40], 4608, 46, epochs_left=0), "within the budget"


def test_unreachable_snl_target_is_stopped_within_three_epochs(tmp_path: Path) -> None:
    lines: list[str] = []
    job = Job(strategy="snl", dataset="digits", budget=46, teacher_epochs=2, cache_dir=str(tmp_path),
              strategy_options={"lam": 1e-9, "warmup": 0, "max_epochs": 40, "finetune_epochs": 1})
    with pytest.raises(TargetOutOfReach, match="snl cannot reach 46 ReLUs in max_epochs=40"):
        execute(prepare(job), log=lines.append)
    mask_epochs = [line for line in lines if line.startswith("snl-mask epoch")]
    assert 1 <= len(mask_epochs) <= 3, mask_epochs
    job.early_stop = False
    job.strategy_options = {**job.strategy_options, "max_epochs": 4}
    with pytest.raises(SearchError, match="did not reach the budget"):  # without early stopping: all 4 epochs
        execute(prepare(job), log=lines.append)


def test_a_phase_that_may_end_early_shows_its_epochs_and_eta_as_bounds(tmp_path: Path) -> None:
    events: list[progress.Progress] = []
    job = Job(strategy="snl", dataset="digits", budget=460, teacher_epochs=2, cache_dir=str(tmp_path),
              strategy_options={"finetune_epochs": 2})
    with progress.listening(events.append):
        execute(prepare(job), log=lambda line: None)
    mask = [e for e in events if e.phase == "mask"]
    finetune = [e for e in events if e.phase == "finetune"]
    assert mask and finetune and mask[-1].epoch < mask[-1].epochs, "the mask phase stopped at its target"
    assert all(e.open_ended for e in mask) and not any(e.open_ended for e in finetune)
    shown = describe(3, "snl", dataclasses.asdict(mask[0]))
    assert f"mask 1/≤{mask[0].epochs} " in shown and " eta ≤" in shown, shown
    assert "eta ≤" not in describe(3, "snl", dataclasses.asdict(finetune[0]))


def test_a_one_off_cost_such_as_a_kernel_build_is_left_out_of_the_eta() -> None:
    events: list[progress.Progress] = []
    with progress.listening(events.append):
        progress.one_off(60.0)  # a kernel built during the first epoch
        progress.epoch_done("snl-mask", 1, 40, 0.5, 62.0)
        progress.epoch_done("snl-mask", 2, 40, 0.6, 2.0)
    assert [e.eta_s for e in events] == [2.0 * 39, 2.0 * 38]
    assert events[0].elapsed_s < 1.0, "elapsed time stays the wall time"


def test_a_kernel_load_that_took_long_is_recorded_as_a_one_off(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[progress.Progress] = []
    monkeypatch.setattr(masked_relu, "BUILT_AFTER_S", 0.0)  # the real (cached) load then counts as a build
    masked_relu.fused_kernels.cache_clear()
    try:
        with progress.listening(events.append):
            assert masked_relu.fused_kernels() is not None
            progress.epoch_done("snl-mask", 1, 3, 0.5, 1000.0)
    finally:
        masked_relu.fused_kernels.cache_clear()
    assert 0 < events[0].eta_s < 1000.0 * 2, events[0].eta_s  # the load's seconds are out of the epoch's


def test_a_slow_kernel_build_before_the_trials_is_announced_and_a_quick_load_is_not() -> None:
    said: list[str] = []
    masked_relu.prepare_fused_kernels(said.append, patience_s=0.05, load=lambda: time.sleep(0.5))
    assert len(said) == 2 and said[0].startswith("building the fused soft-mask kernel"), said
    assert re.fullmatch(r"fused soft-mask kernel ready after \d+ s", said[1]), said
    said.clear()
    masked_relu.prepare_fused_kernels(said.append, patience_s=5.0, load=lambda: None)
    assert said == []


def test_unreachable_snl_target_is_pruned_in_a_study(tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    done = run(["--strategy", "snl", "--trials", "1", "--budget", "1%", "--set", "lam=1e-9", "--set", "warmup=0",
                "--teacher-epochs", "2", "--run-dir", str(run_dir), *cache], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trial = load(run_dir)[1].trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["prune_reason"].startswith("snl cannot reach")
    assert "1 pruned early" in done.stdout


@pytest.mark.parametrize("argv", [["-q", "-v"], ["--no-early-stop=yes"], ["--no-default-first=1"], ["--quiet=1"]])
def test_bad_values_for_the_new_options(argv: list[str]) -> None:
    with pytest.raises(SearchError):
        parse_args(["--strategy", "snl", *argv])


def test_a_running_trials_curve_is_stored_after_its_report_and_before_it_is_recorded(tmp_path: Path) -> None:
    """Tune lets a trial go on only once the searcher's ``on_trial_result`` returns: the curve's storage
    writes wait for ``store_curves`` (the end of Tune's step), yet land before the trial is recorded."""
    storage = optuna.storages.InMemoryStorage()
    searcher = StudySearcher(lambda trial: {TRIAL_KEY: {"number": trial.number}}, objectives([], cost_model("delphi")),
                             optuna.samplers.RandomSampler(0), "s", storage, tmp_path, None, lambda stored: None)
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"status": "running", "curve": "[[1, 0.5], [2, 0.6]]"})
    assert searcher.study.trials[0].intermediate_values == {}, "not written while the trial waits"
    searcher.store_curves()
    assert searcher.study.trials[0].intermediate_values == {1: 0.5, 2: 0.6}
    searcher.on_trial_result("t0", {"status": "running", "curve": "[[3, 0.7]]"})
    searcher.on_trial_complete("t0", None, error=True)  # its worker died: recorded FAILED, its curve kept
    trial = searcher.study.trials[0]
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
