"""The study's search space: options fixed with ``--set`` are never sampled, and a strategy's ranges
and default recipe follow what the user fixed (SNL: a shorter max_epochs scales lam).

Real Optuna studies in memory, the real strategies; no Ray.
"""

from __future__ import annotations

import optuna
import pytest

from search.strategies import get_strategy
from search.strategies.snl import RELEASED_DEFAULTS, SNLOptions
from search.study.space import define_space, enqueue_defaults, unsampled_options
from search.study.trial import TRIAL_KEY
from tests.conftest import PROJECT_ROOT


def _ask(fixed: dict[str, dict[str, object]], trials: int = 5, names: tuple[str, ...] = ("snl", "deepreduce")) -> optuna.Study:
    strategies = {name: get_strategy(name) for name in names}
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_space(strategies, 10_000, "cifar10", fixed)
    for _ in range(trials):
        trial = study.ask()
        decided = space(trial)[TRIAL_KEY]
        assert "error" not in decided, decided
        trial.set_user_attr("options", decided["options"])
        study.tell(trial, [0.5, 100.0])
    return study


def test_fixed_options_are_not_sampled_and_reach_the_trial() -> None:
    study = _ask({"snl": {"lr": 0.01, "granularity": "channel"}, "deepreduce": {}}, trials=12)
    snl = [t for t in study.trials if t.params["strategy"] == "snl"]
    assert snl, "the random sampler picked snl at least once in 12 trials"
    for trial in snl:
        assert "snl/lr" not in trial.params and "snl/granularity" not in trial.params
        assert "snl/lam" in trial.params and "snl/kappa" in trial.params  # the rest is still searched
        assert trial.user_attrs["options"]["lr"] == 0.01 and trial.user_attrs["options"]["granularity"] == "channel"


def test_without_fixed_options_every_option_is_sampled() -> None:
    study = _ask({}, names=("snl",))
    assert all({"snl/lr", "snl/granularity", "snl/lam"} <= set(t.params) for t in study.trials)


@pytest.mark.parametrize("max_epochs, scale", [(6, (100 / 6) ** 2), (50, 4.0), (100, 1.0), (400, 1.0)])
def test_snl_lam_range_and_default_follow_a_fixed_max_epochs(max_epochs: int, scale: float) -> None:
    study = _ask({"snl": {"max_epochs": max_epochs}}, trials=1, names=("snl",))
    distribution = study.trials[0].distributions["snl/lam"]
    assert distribution.low == pytest.approx(RELEASED_DEFAULTS.lam * scale)
    assert distribution.high == pytest.approx(30 * RELEASED_DEFAULTS.lam * scale)
    assert SNLOptions(max_epochs=max_epochs).resolved("cifar10").lam == pytest.approx(RELEASED_DEFAULTS.lam * scale)
    assert SNLOptions(max_epochs=max_epochs, lam=1e-4).resolved("cifar10").lam == 1e-4  # a given lam is kept


def test_default_recipe_first_trial_honours_fixed_options() -> None:
    strategies = {"snl": get_strategy("snl")}
    study = optuna.create_study(directions=["maximize", "minimize"])
    enqueue_defaults(study, strategies, 10_000, "cifar10", {"snl": {"max_epochs": 10, "lr": 0.01}})
    trial = study.ask()
    decided = define_space(strategies, 10_000, "cifar10", {"snl": {"max_epochs": 10, "lr": 0.01}})(trial)[TRIAL_KEY]
    assert decided["options"]["lam"] == pytest.approx(RELEASED_DEFAULTS.lam * 10**2)  # the recipe for 10 epochs
    assert "snl/lr" not in trial.params and "snl/max_epochs" not in trial.params
    assert trial.params["relu_target"] == 1_000


@pytest.mark.parametrize("model, sampled", [("resnet18", {"alpha", "rho"}), ("my_model:make_net", {"alpha"})])
def test_deepreduce_samples_only_the_reshaping_its_model_declares(model: str, sampled: set[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "examples"))  # the user model of examples/my_model.py: width, no stem_stride
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_space({"deepreduce": get_strategy("deepreduce")}, 4_096, "digits", {}, model)
    decided = space(study.ask())[TRIAL_KEY]
    assert "error" not in decided, decided
    assert {"alpha", "rho"} & set(decided["options"]) == sampled


def test_unsampled_options_only_where_the_study_samples_nothing_for_the_strategy() -> None:
    deepreduce, snl = get_strategy("deepreduce"), get_strategy("snl")
    plan = {"cull": ("S1",), "thin": True, "alpha": 0.5, "rho": 1}
    options = unsampled_options(deepreduce, 4_608, "digits", plan, "resnet_tiny", {})
    assert options == deepreduce.parse_options(plan)  # every trial would run this plan
    partly = {key: value for key, value in plan.items() if key != "alpha"}
    assert unsampled_options(deepreduce, 4_608, "digits", partly, "resnet_tiny", {}) is None  # alpha is sampled
    assert unsampled_options(snl, 4_608, "digits", {"lam": 0.01, "granularity": "pixel"}, "resnet_tiny", {}) is None  # its target is
