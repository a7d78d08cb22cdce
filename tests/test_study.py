"""The study end to end: real Ray Tune (a local single-node Ray), real Optuna storage on disk, digits.

Every test drives ``python -m search.run`` as a user would, from the project root, so Ray's workers
import the test strategies of ``tests/strategies_for_tests.py`` the same way. Repeated driver kills,
time and memory limits and corrupt inputs are in ``tests/test_reliability.py``, a dead node in
``tests/test_cluster.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.checkpoint import load_model, read_checkpoint
from search.data import load_dataset
from search.objectives import pareto_front
from search.relu import relu_count
from tests.helpers import load, progress_lines, run

QUICK = "tests.strategies_for_tests:Quick"
COARSE = "tests.strategies_for_tests:Coarse"
BOOM = "tests.strategies_for_tests:Boom"
NAN = "tests.strategies_for_tests:NotANumber"
FAST = ["--teacher-epochs", "2", "--concurrency", "2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--cache-dir`` pointing at the session's teacher cache (the one conftest gives every test)."""
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


def cached_teachers(cache: list[str]) -> list[dict]:
    """The records of the teachers in the ``--cache-dir`` of ``cache``."""
    # read, not built: the session's cache also holds teachers of models other tests import from elsewhere
    return [read_checkpoint(path)["info"] for path in (Path(cache[1]) / "teachers").glob("*.pt")]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, cache: list[str]) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One study shared by the tests below: four strategies as a categorical (two real, one raising,
    one NaN), a ReLU budget, a seeded random sampler (seed 28 samples all four strategies in 8 trials,
    with feasible and over-budget plans)."""
    run_dir = tmp_path_factory.mktemp("mixed") / "run"
    strategies = ",".join([QUICK, COARSE, BOOM, NAN])
    done = run(["--strategy", strategies, "--trials", "8", "--budget", "3000", "--sampler", "random", "--seed", "28",
                "--run-dir", str(run_dir), *FAST, *cache])
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_study_stores_a_pareto_front(mixed: tuple[Path, subprocess.CompletedProcess[str]], cache: list[str]) -> None:
    run_dir, done = mixed
    settings, study = load(run_dir)
    assert settings.objectives == ["accuracy", "relus"] and settings.directions == ["maximize", "minimize"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 8 and len(progress_lines(done.stdout)) == 8
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 3
    digits = load_dataset("digits")
    for trial in complete:
        attrs = trial.user_attrs
        assert attrs["feasible"] is True and trial.values == [attrs["val_acc"], attrs["relus"]]
        assert 0.0 <= attrs["test_acc"] <= 1.0 and attrs["seconds"] > 0 and attrs["node_ip"]
        model, payload = load_model(run_dir / attrs["model_path"])
        assert relu_count(model, (1, 8, 8)) == attrs["relus"] == payload["info"]["relus"] <= 3000
        log = (run_dir / attrs["model_path"]).with_name("log.txt").read_text()
        assert log.splitlines()[-1] == f"saved {attrs['model_path']}", "the model where the run keeps it, not a temporary path"
        assert (attrs["val_images"], attrs["test_images"]) == (len(digits.val), len(digits.test))
    # Both test strategies start from the cached teacher: every trial records that teacher, the report's baseline.
    teachers = {(t.user_attrs["teacher_val_acc"], t.user_attrs["teacher_test_acc"]) for t in complete}
    cached = {(info["val_acc"], info["test_acc"]) for info in cached_teachers(cache)}
    assert len(teachers) == 1 and teachers <= cached
    quick = [t for t in complete if t.params["strategy"] == QUICK]
    assert all(t.user_attrs["options"] == {"keep": t.params["quick/keep"]} for t in quick)
    assert all(t.user_attrs["details"] == {"kept": t.user_attrs["relus"], "asked": t.params["quick/keep"]} for t in quick)
    assert len({t.user_attrs["relus"] for t in quick}) == len(quick) >= 2, "each keep fraction gives its own ReLU count"
    expected = {complete[i].number for i in pareto_front([t.values for t in complete], settings.directions)}
    assert expected and {t.number for t in study.best_trials} == expected
    assert "Pareto-optimal trials" in done.stdout


def test_strategy_is_a_categorical(mixed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, study = load(mixed[0])
    sampled = {t.params["strategy"] for t in study.get_trials()}
    assert sampled == {QUICK, COARSE, BOOM, NAN}
    assert all(t.user_attrs["strategy"] == t.params["strategy"] for t in study.get_trials())


def test_raising_and_nan_trials_fail_and_the_study_completes(mixed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, done = mixed
    _, study = load(run_dir)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    boom = [t for t in trials if t.params["strategy"] == BOOM]
    nan = [t for t in trials if t.params["strategy"] == NAN]
    assert boom and nan
    for trial in boom:
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == "RuntimeError: deliberate failure from the Boom test strategy"
        assert "Traceback" in (run_dir / "trials" / str(trial.number) / "log.txt").read_text()
    for trial in nan:
        assert trial.state == TrialState.FAIL and "objective accuracy is not a finite number" in trial.user_attrs["fail_reason"]
    assert sum("FAILED" in line for line in progress_lines(done.stdout)) == len(boom) + len(nan)
    first_failure = min(t.number for t in boom + nan)
    assert [t for t in trials if t.number > first_failure and t.state != TrialState.FAIL], "the study went on after a failure"


def test_targets_only_where_used_and_default_recipes_first(mixed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """A new study starts from each strategy's default recipe, in the order given; strategies that do not
    use ``relu_target`` (none of these four does) never sample it."""
    _, study = load(mixed[0])
    trials = study.get_trials()
    assert not [t for t in trials if "relu_target" in t.params], "no strategy here uses a target"
    first = {t.params["strategy"]: t for t in trials[:4]}
    assert set(first) == {QUICK, COARSE, BOOM, NAN} and all(t.user_attrs.get("default_recipe") for t in first.values())
    assert first[QUICK].params["quick/keep"] == 0.5 and first[QUICK].user_attrs["options"]["keep"] == 0.5


def test_over_budget_plans_are_infeasible_and_never_trained(mixed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, _ = mixed
    _, study = load(run_dir)
    trials = study.get_trials()
    infeasible = [t for t in trials if t.state == TrialState.PRUNED]
    assert infeasible
    for trial in infeasible:
        assert trial.user_attrs["relus"] > 3000 and trial.user_attrs["feasible"] is False
        assert trial.constraints == {"relus_over_budget": trial.user_attrs["relus"] - 3000}
        assert "model_path" not in trial.user_attrs and "over the budget" in trial.user_attrs["infeasible_reason"]
        assert "finetune" not in (run_dir / "trials" / str(trial.number) / "log.txt").read_text()
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.constraints["relus_over_budget"] <= 0
    assert not {t.number for t in infeasible} & {t.number for t in study.best_trials}
