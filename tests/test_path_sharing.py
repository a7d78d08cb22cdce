"""Path sharing (``--path-sharing``): an SNL trial keeps the masks it passes at 2x and 4x its target,
finetunes each after its own result is saved, and the study records each as a finished trial of its own.
Without the option a trial keeps only its target: checked on the SNL study of ``tests/test_own_model.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search import progress
from search.checkpoint import load_model
from search.relu import relu_count
from search.study.halving import FINAL_PHASES
from search.study.trial import PATH_RUNGS, TrialSpec, path_budgets, run_one
from tests.helpers import load, progress_lines, run

FAST = ["--teacher-epochs", "2", "--set", "finetune_epochs=2", "--concurrency", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.getbasetemp() / "search-cache")]


def test_path_budgets_are_the_rungs_within_the_cap() -> None:
    assert PATH_RUNGS == (2, 4)
    assert path_budgets(460, 4608, PATH_RUNGS) == [920, 1840]
    assert path_budgets(1500, 4608, PATH_RUNGS) == [3000]
    assert path_budgets(3000, 4608, PATH_RUNGS) == []
    assert path_budgets(460, 4608, ()) == []


def test_each_result_is_handed_over_before_the_next_budget_trains(tmp_path: Path) -> None:
    spec = TrialSpec("digits", "resnet_tiny", {}, None, ("accuracy", "relus"), "delphi", teacher_epochs=2, cache_dir=str(tmp_path),
                     path_rungs=PATH_RUNGS)
    decided = {"strategy": "snl", "options": {"finetune_epochs": 2}, "number": 0, "target": 460}
    lines: list[str] = []
    saved: list[tuple[dict, list[str], int]] = []  # (metrics, model files, log lines so far) at each hand-over
    events: list[progress.Progress] = []
    with progress.listening(events.append):
        metrics, models = run_one(spec, decided, lines, on_partial=lambda m, files: saved.append((dict(m), sorted(files), len(lines))))
    assert metrics["status"] == "ok" and metrics["relus"] <= 460
    assert [files for _, files, _ in saved] == [["model.pt"], ["model-920.pt", "model.pt"], ["model-1840.pt", "model-920.pt", "model.pt"]]
    first = saved[0][0]
    assert first["status"] == "ok" and json.loads(first["path"]) == [] and first["relus"] == metrics["relus"]
    # The target's finetuning ends before any path finetuning starts: its result is saved first.
    before_first_save = lines[: saved[0][2]]
    assert any(line.startswith("snl-finetune epoch 2/2") for line in before_first_save)
    assert not any(line.startswith("snl-path") for line in before_first_save)
    points = json.loads(metrics["path"])
    assert [p["budget"] for p in points] == [920, 1840]
    assert all(p["relus"] <= p["budget"] and p["model_path"] == f"trials/0/model-{p['budget']}.pt" for p in points)
    assert sorted(models) == ["model-1840.pt", "model-920.pt", "model.pt"]
    # The log names each model where the run directory keeps it, not the trial's temporary folder.
    assert [line for line in lines if line.startswith("saved ")] == [
        "saved trials/0/model.pt", "saved trials/0/model-920.pt", "saved trials/0/model-1840.pt"]
    # Path finetuning is its own phase, which the rung rule never judges as the trial's result.
    assert {e.phase for e in events} == {"teacher", "mask", "finetune", "path"} and "path" not in FINAL_PHASES


def test_a_study_records_the_path_as_trials_of_their_own(tmp_path: Path, cache: list[str]) -> None:
    run_dir = tmp_path / "run"
    done = run(["--strategy", "snl", "--trials", "2", "--path-sharing", "--run-dir", str(run_dir), *FAST, *cache], timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    settings, study = load(run_dir)
    trials = study.get_trials()
    sampled = [t for t in trials if "path_of" not in t.user_attrs]
    shared = [t for t in trials if "path_of" in t.user_attrs]
    assert len(sampled) == 2, "--trials counts the sampled trials only"
    assert shared, "the default recipe's target (10%) has rungs at 20% and 40%"
    assert len(progress_lines(done.stdout)) == len(trials)
    by_number = {t.number: t for t in trials}
    for trial in shared:
        parent = by_number[trial.user_attrs["path_of"]]
        target, budget = parent.params["relu_target"], trial.params["relu_target"]
        assert budget in path_budgets(target, settings.full_relus, PATH_RUNGS)
        assert {k: v for k, v in trial.params.items() if k != "relu_target"} == \
               {k: v for k, v in parent.params.items() if k != "relu_target"}
        attrs = trial.user_attrs
        assert trial.state == TrialState.COMPLETE and trial.values == [attrs["val_acc"], attrs["relus"]]
        assert attrs["relus"] <= budget and attrs["compute_seconds"] == 0.0 and attrs["strategy"] == "snl"
        assert attrs["model_path"] == f"trials/{parent.number}/model-{budget}.pt"
        model, payload = load_model(run_dir / attrs["model_path"])
        assert relu_count(model, (1, 8, 8)) == attrs["relus"] == payload["info"]["relus"]
        assert f"trial {trial.number:>3} snl" in done.stdout and f"[on trial {parent.number}'s mask path]" in done.stdout
