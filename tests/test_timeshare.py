"""Equal compute time per strategy (``--minutes-per-strategy``): the accounting, and a real study.

The study test replays the order the trials ran in: with one trial at a time, every trial must have
gone to the strategy that had used the least compute time among those with time left, and no
strategy may start a trial after its share was used.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.errors import SearchError
from search.study.timeshare import TimeShare
from tests.helpers import load, progress_lines, run

QUICK = "tests.strategies_for_tests:Quick"
COARSE = "tests.strategies_for_tests:Coarse"
SHARE_MINUTES = 0.05


def _study(tmp_path: Path, spent: list[tuple[str, float]]) -> optuna.Study:
    """A study on disk whose finished trials used ``spent`` (strategy, compute seconds)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["maximize", "minimize"])
    for strategy, seconds in spent:
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 10.0],
                                     user_attrs={"strategy": strategy, "compute_seconds": seconds}))
    return study


def test_next_trial_goes_to_the_strategy_that_used_least(tmp_path: Path) -> None:
    study = _study(tmp_path, [("a", 50.0), ("b", 20.0), ("b", 20.0), ("c", 30.0)])
    share = TimeShare(["a", "b", "c"], seconds_each=60.0)
    assert share.used(study) == {"a": 50.0, "b": 40.0, "c": 30.0}
    assert share.next_strategy(study) == "c"
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"strategy": "c", "compute_seconds": 35.0}))
    assert share.next_strategy(study) == "b", "a failed trial's time counts too"
    assert "a 0.8, b 0.7, c 1.1 min" in share.summary(study)


def test_ties_go_in_the_order_given_and_exhausted_strategies_get_nothing(tmp_path: Path) -> None:
    study = _study(tmp_path, [("a", 60.0)])
    share = TimeShare(["a", "b", "c"], seconds_each=60.0)
    assert share.next_strategy(study) == "b"
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 1.0], user_attrs={"strategy": "b", "compute_seconds": 61.0}))
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.5, 1.0], user_attrs={"strategy": "c", "compute_seconds": 60.0}))
    assert share.next_strategy(study) is None


def test_a_running_trial_counts_its_elapsed_time_per_cpu(tmp_path: Path) -> None:
    study = _study(tmp_path, [])
    share = TimeShare(["a", "b"], seconds_each=60.0, running_rate=2.0)
    share.started("tune-1", "a")
    assert share.used(study)["a"] > 0.0 and share.used(study)["b"] == 0.0
    assert share.next_strategy(study) == "b"
    share.finished("tune-1")
    assert share.used(study) == {"a": 0.0, "b": 0.0}


def test_a_running_trial_counts_at_least_its_strategys_average(tmp_path: Path) -> None:
    """Just under its share, a strategy whose running trial will likely use the rest starts no other."""
    study = _study(tmp_path, [("a", 20.0), ("a", 30.0), ("b", 59.0)])
    share = TimeShare(["a", "b"], seconds_each=60.0)
    share.started("tune-3", "a")  # just started: counts as a's average finished trial, 25 s
    assert share.used(study)["a"] == pytest.approx(75.0, abs=1.0)
    assert share.next_strategy(study) == "b"
    share.started("tune-4", "b")  # b has one finished trial of 59 s: 118 s with this one running
    assert share.next_strategy(study) is None


def test_share_must_be_positive() -> None:
    with pytest.raises(SearchError, match="minutes-per-strategy"):
        TimeShare(["a"], seconds_each=0.0)


def test_bad_minutes_is_one_line(tmp_path: Path) -> None:
    done = run(["--minutes-per-strategy", "-1", "--run-dir", str(tmp_path / "run")])
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "bad value -1 for --minutes-per-strategy: expected minutes > 0" in done.stderr
    assert not (tmp_path / "run").exists()


def test_study_gives_each_strategy_the_same_compute_time(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = tmp_path / "run"
    cache = ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]
    done = run(["--strategy", f"{QUICK},{COARSE}", "--minutes-per-strategy", str(SHARE_MINUTES), "--concurrency", "1",
                "--teacher-epochs", "2", "--sampler", "random", "--run-dir", str(run_dir), *cache], timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{SHARE_MINUTES:g} min of compute time per strategy" in done.stdout
    settings, study = load(run_dir)
    assert settings.trials is None and settings.minutes_per_strategy == SHARE_MINUTES
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    assert len(progress_lines(done.stdout)) == len(trials)
    assert done.stdout.count("compute time used (of") == len(trials)
    seconds_each = SHARE_MINUTES * 60
    used = {QUICK: 0.0, COARSE: 0.0}
    for trial in trials:  # replay: each trial went to the least-used strategy with time left
        left = [name for name in used if used[name] < seconds_each]
        assert left, f"trial {trial.number} started after every strategy had used its share: {used}"
        assert trial.params["strategy"] == min(left, key=lambda name: used[name]), (trial.number, used)
        assert trial.user_attrs["compute_seconds"] > 0
        used[trial.params["strategy"]] += trial.user_attrs["compute_seconds"]
    assert all(total >= seconds_each for total in used.values()), f"the study ended before each strategy used its share: {used}"

    again = run(["--resume", "--run-dir", str(run_dir), *cache])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "every strategy has used its" in again.stdout
    assert len(load(run_dir)[1].get_trials()) == len(trials)
