"""The study's define-by-run search space, without Ray: which strategy, which ReLU target, which options.

:func:`define_space` is what the study's searcher (:mod:`search.study.searcher`) asks Optuna with;
:func:`enqueue_defaults` makes each strategy's first trial its default recipe; a dry run draws its
first trials with both, and :func:`unsampled_options` tells a run, before Ray starts, when a
strategy's options are all fixed so that every one of its trials would run the same plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna

from search.strategies import Strategy
from search.study.trial import TARGET_PARAM, TRIAL_KEY


class PinnedTrial:
    """An Optuna trial as a strategy's ``suggest`` sees it when some of its options are fixed
    (``--set STRATEGY.KEY=VALUE``): asking for a fixed option returns the fixed value and samples
    nothing, so the sampler's space (and the dashboard's importance plot) has no dimension whose value
    would be overridden anyway. Anything else is the real trial's."""

    def __init__(self, trial: optuna.Trial, strategy: str, fixed: Mapping[str, Any]) -> None:
        self._trial, self._prefix, self._fixed = trial, f"{strategy}/", fixed

    def _key(self, name: str) -> str | None:
        key = name.removeprefix(self._prefix)
        return key if name.startswith(self._prefix) and key in self._fixed else None

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        key = self._key(name)
        return self._fixed[key] if key else self._trial.suggest_float(name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        key = self._key(name)
        return self._fixed[key] if key else self._trial.suggest_int(name, *args, **kwargs)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        key = self._key(name)
        return self._fixed[key] if key else self._trial.suggest_categorical(name, choices)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._trial, attribute)


def suggest_options(strategy: Strategy, trial: optuna.Trial, target: int, dataset: str, fixed: Mapping[str, Any],
                    model: str | None, model_options: Mapping[str, Any]) -> dict[str, Any]:
    """``strategy.suggest`` on a :class:`PinnedTrial`, told the dataset, the fixed options and the
    study's model and its options where its signature takes them (a plug-in need not)."""
    accepted = inspect.signature(strategy.suggest).parameters
    given = (("dataset", dataset), ("fixed", fixed), ("model", model), ("model_options", model_options))
    extra = {k: v for k, v in given if k in accepted}
    return strategy.suggest(PinnedTrial(trial, strategy.name, fixed), target, **extra)  # type: ignore[arg-type]


def define_space(strategies: dict[str, Strategy], cap: int, dataset: str, fixed: Mapping[str, Mapping[str, Any]] | None = None,
                 model: str | None = None,
                 model_options: Mapping[str, Any] | None = None) -> Callable[[optuna.Trial], dict[str, Any]]:
    """Define-by-run space: the strategy (a categorical when there are several), a ReLU target for
    strategies that use one (``Strategy.uses_target``), then the strategy's own options, except those
    ``fixed`` (per strategy, from ``--set``), which are never sampled.

    The target (``relu_target``, log-uniform between 1% of ``cap`` and ``cap``, the budget or the full
    count) is what budget-driven strategies aim at in this trial: SNL trains down to it, CryptoNAS
    sizes its network to it. Without it every SNL trial would land on the same count and the study
    would have no accuracy-for-ReLUs trade-off to show. Strategies that ignore it (DeepReDuce) never
    sample it: no dead dimension in the sampler's space.
    """
    fixed = fixed or {}

    def space(trial: optuna.Trial) -> dict[str, Any]:
        names = list(strategies)
        name = trial.suggest_categorical("strategy", names) if len(names) > 1 else names[0]
        trial.set_user_attr("strategy", name)
        target = trial.suggest_int(TARGET_PARAM, max(1, cap // 100), cap, log=True) if strategies[name].uses_target else cap
        decided: dict[str, Any] = {"strategy": name, "options": {}, "number": trial.number, "target": target}
        try:
            decided["options"] = suggest_options(strategies[name], trial, target, dataset, fixed.get(name, {}), model,
                                                  model_options or {})
        except Exception as err:  # a strategy's bug: the trial reports it as its failure
            decided["error"] = f"{name}.suggest raised {type(err).__name__}: {err}"
        return {TRIAL_KEY: decided}

    return space


def enqueue_defaults(study: optuna.Study, strategies: dict[str, Strategy], cap: int, dataset: str,
                     fixed: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """A new study's first trial of each strategy runs its default recipe given its ``fixed`` options
    (target: 10% of ``cap``)."""
    for name, strategy in strategies.items():
        params: dict[str, Any] = {"strategy": name} if len(strategies) > 1 else {}
        if strategy.uses_target:
            params[TARGET_PARAM] = max(1, cap // 10)
        params.update(strategy.default_params(dataset, (fixed or {}).get(name, {})))
        study.enqueue_trial(params, user_attrs={"strategy": name, "default_recipe": True}, skip_if_exists=True)


def unsampled_options(strategy: Strategy, cap: int, dataset: str, fixed: Mapping[str, Any], model: str | None,
                      model_options: Mapping[str, Any]) -> Any | None:
    """The typed options every trial of ``strategy`` would run when the study samples nothing for it
    (no ReLU target, every option its ``suggest`` asks for fixed with ``--set``); None when something
    is sampled, or when ``suggest`` fails (each trial then reports that failure itself)."""
    if strategy.uses_target:
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        trial = optuna.create_study().ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    try:
        options = suggest_options(strategy, trial, cap, dataset, fixed, model, model_options)
    except Exception:  # noqa: BLE001 - a plug-in's bug: its trials report it, as in the study
        return None
    return None if trial.params else strategy.parse_options({**options, **fixed})
