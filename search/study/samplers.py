"""The study's Optuna samplers, and a repair that lets TPE sample beside pruned trials.

Optuna's TPESampler (5.0) ranks PRUNED trials by their last intermediate value in the study's one
direction (``optuna.samplers._tpe.sampler._get_pruned_trial_score`` reads ``study.direction``), which
a multi-objective study has not: with two pruned trials carrying learning curves, every later
``suggest`` raises "A single direction cannot be retrieved from a multi-objective study" and the study
dies. Early stopping (:mod:`search.study.halving`) prunes such trials in every search study. The
repair ranks them as Optuna does for one objective, by the furthest step reached and then by the
value there, taking the direction of the first objective: here the intermediate values are
validation accuracies and the first objective is accuracy. It replaces that one function only for
multi-objective studies and leaves single-objective ones to Optuna.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import optuna
from optuna.samplers._tpe import sampler as tpe_internals
from optuna.study import StudyDirection

from search.errors import SearchError

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler; all four handle several objectives and ReLU-budget constraints."""
    if name == "tpe":
        _repair_tpe_pruned_ranking()
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}")


def pruned_trial_score(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> tuple[float, float]:
    """The rank of a PRUNED trial among pruned ones (lower is better) in a multi-objective study:
    furthest step first, then the best last intermediate value in the first objective's direction."""
    if not trial.intermediate_values:
        return 1, 0.0
    step, value = max(trial.intermediate_values.items())
    if math.isnan(value):
        return -step, math.inf
    return -step, value if study.directions[0] == StudyDirection.MINIMIZE else -value


@functools.cache
def _repair_tpe_pruned_ranking() -> None:
    """Install :func:`pruned_trial_score` for multi-objective studies (once per process)."""
    upstream = tpe_internals._get_pruned_trial_score

    def score(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> Any:
        if len(study.directions) > 1:
            return pruned_trial_score(trial, study)
        return upstream(trial, study)

    tpe_internals._get_pruned_trial_score = score
