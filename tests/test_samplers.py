"""Samplers beside early stopping: TPE keeps sampling a multi-objective study that has pruned trials
with learning curves (Optuna 5.0's TPE alone raises there, see :mod:`search.study.samplers`), and
ranks them by how far they got, then by accuracy."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.study.samplers import SAMPLERS, make_sampler, pruned_trial_score

SPACE = {"x": FloatDistribution(0.0, 1.0)}


def _study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Accuracy up, ReLUs down: 12 finished trials and 3 pruned ones with learning curves."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for i in range(12):
        study.add_trial(create_trial(params={"x": i / 12}, distributions=SPACE, values=[0.5 + i / 30, 100 + 10 * i]))
    for i, curve in enumerate(({1: 0.2, 2: 0.3}, {1: 0.4}, {1: 0.1, 2: 0.5})):
        study.add_trial(create_trial(params={"x": 0.9 - i / 10}, distributions=SPACE, state=TrialState.PRUNED,
                                     intermediate_values=curve))
    return study


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_samples_beside_pruned_trials_with_curves(name: str) -> None:
    study = _study(make_sampler(name, seed=0))
    for _ in range(3):
        trial = study.ask()
        assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0
        study.tell(trial, [0.7, 120])


def test_pruned_trials_rank_by_the_furthest_step_then_accuracy() -> None:
    study = _study(make_sampler("random", seed=0))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    ranked = sorted(pruned, key=lambda t: pruned_trial_score(t, study))
    assert [t.intermediate_values for t in ranked] == [{1: 0.1, 2: 0.5}, {1: 0.2, 2: 0.3}, {1: 0.4}]
