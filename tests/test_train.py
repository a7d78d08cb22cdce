"""Training loop, distillation, determinism and the teacher cache."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import search.linearize
from search.data import Loader, load_dataset
from search.errors import SearchError
from search.pipeline import Job, execute, prepare
from search.spaces import build_model
from search.teacher import get_teacher, recipe_record, teacher_key
from search.train import LATER_FIELDS, TrainConfig, clip_gradients, evaluate, fit, kd_loss, make_schedule, teacher_config
from tests.conftest import quick_estimates
from tests.helpers import cli

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


def _tiny():  # type: ignore[no-untyped-def]
    return build_model("resnet_tiny", input_size=(1, 8, 8), width=0.5)


def test_fit_learns_digits_and_selects_on_validation(digits) -> None:  # type: ignore[no-untyped-def]
    model = _tiny()
    lines: list[str] = []
    result = fit(model, digits, TrainConfig(epochs=3, lr=0.05, batch_size=64), CPU, log=lines.append)
    assert len(lines) == 3 and lines[0].startswith("train epoch 1/3 loss")
    assert result.best_val_acc == max(h.val_acc for h in result.history) > 0.8
    assert evaluate(model, Loader(digits.val, digits.info, 512, CPU)) == pytest.approx(result.best_val_acc)


def test_fit_is_deterministic_on_cpu(digits) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=1, lr=0.05, batch_size=64, seed=7)
    a, b = _tiny(), _tiny()
    b.load_state_dict(a.state_dict())
    fit(a, digits, config, CPU, log=lambda _: None)
    fit(b, digits, config, CPU, log=lambda _: None)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_kd_loss_is_hinton_and_zero_for_equal_logits() -> None:
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    expected = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(kd_loss(s, t, 4.0), expected, atol=1e-6)
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_kd_from_a_teacher_changes_training(digits) -> None:  # type: ignore[no-untyped-def]
    teacher = _tiny()
    fit(teacher, digits, TrainConfig(epochs=1, lr=0.05, batch_size=64), CPU, log=lambda _: None)
    plain, distilled = _tiny(), _tiny()
    distilled.load_state_dict(plain.state_dict())
    fit(plain, digits, TrainConfig(epochs=1, batch_size=64), CPU, teacher=teacher, log=lambda _: None)
    fit(distilled, digits, TrainConfig(epochs=1, batch_size=64, kd_weight=1.0), CPU, teacher=teacher, log=lambda _: None)
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), distilled.parameters()))


def test_extra_loss_and_early_stop_hooks(digits) -> None:  # type: ignore[no-untyped-def]
    model = _tiny()
    calls: list[int] = []
    result = fit(
        model,
        digits,
        TrainConfig(epochs=5, batch_size=64),
        CPU,
        extra_loss=lambda m: 0.0 * sum(p.sum() for p in m.parameters()),
        on_epoch_end=lambda stats: calls.append(stats.epoch) or stats.epoch == 2,
        log=lambda _: None,
    )
    assert calls == [1, 2] and result.stopped_early


def test_nan_loss_stops_training_with_a_reason(digits) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(_tiny(), digits, TrainConfig(epochs=1, batch_size=64), CPU, extra_loss=lambda m: torch.tensor(float("nan")), log=lambda _: None)


def test_bad_train_config_is_a_clear_error() -> None:
    with pytest.raises(SearchError, match="lr"):
        TrainConfig(lr=0)


def test_teacher_is_trained_once_then_read_from_cache(digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=1, batch_size=64)
    first_log: list[str] = []
    first, record1 = get_teacher("resnet_tiny", {"width": 0.5}, digits, config, CPU, tmp_path, first_log.append)
    second_log: list[str] = []
    second, record2 = get_teacher("resnet_tiny", {"width": 0.5}, digits, config, CPU, tmp_path, second_log.append)
    assert not record1["cached"] and record2["cached"] and record1["key"] == record2["key"]
    assert any("training teacher" in line for line in first_log)
    assert not any("epoch" in line for line in second_log) and "from cache" in second_log[0]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    _, record3 = get_teacher("resnet_tiny", {"width": 0.5}, digits, TrainConfig(epochs=2, batch_size=64), CPU, tmp_path, lambda _: None)
    assert record3["key"] != record1["key"] and not record3["cached"]


def test_linearize_pipeline_end_to_end(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "search.linearize", "--strategy", "tests.strategies_core:KeepAll", "--teacher-epochs", "2",
         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("relus=4608 val_acc=") and " test_acc=" in last
    from search.checkpoint import load_model
    from search.relu import relu_count

    model, meta = load_model(out)
    assert relu_count(model, (1, 8, 8)) == 4608 and meta["info"]["relus"] == 4608
    test_acc = float(last.split("test_acc=")[1])
    data = load_dataset("digits")
    assert evaluate(model, Loader(data.test, data.info, 512, CPU)) == pytest.approx(test_acc, abs=1e-4)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from search.checkpoint import load_model

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SearchError, match="is not a search checkpoint"):
        load_model(bad)


# -- the papers' training knobs ---------------------------------------------------------------------


def _lrs(config: TrainConfig) -> list[float]:
    """The learning rate of each epoch under ``config``'s schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = make_schedule(optimizer, config)
    rates = []
    for _ in range(config.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return rates


def test_step_schedule_multiplies_by_gamma_at_the_milestones() -> None:
    rates = _lrs(TrainConfig(epochs=160, lr=0.1, schedule="step", milestones=(80, 120)))  # SNL's teacher
    assert rates[0] == rates[79] == 0.1
    assert rates[80] == pytest.approx(0.01) and rates[119] == pytest.approx(0.01)
    assert rates[120] == pytest.approx(0.001) and rates[159] == pytest.approx(0.001)


def test_warm_restarts_of_310_epochs_end_a_period_at_the_last_epoch() -> None:
    config = TrainConfig(epochs=310, lr=0.05, min_lr=0.001, schedule="restarts", restart_epochs=10, restart_mult=2)
    rates = _lrs(config)
    restarts = [epoch for epoch in range(1, 310) if rates[epoch] > rates[epoch - 1]]
    assert restarts == [10, 30, 70, 150]  # periods of 10, 20, 40, 80 and 160 epochs
    assert all(rates[epoch] == pytest.approx(0.05) for epoch in [0, *restarts])
    assert min(rates) >= 0.001 and rates[-1] < 0.0011


def test_cosine_falls_towards_min_lr() -> None:
    rates = _lrs(TrainConfig(epochs=11, lr=0.1, min_lr=0.01))
    assert rates == pytest.approx([0.01 + 0.09 * (1 + math.cos(math.pi * k / 11)) / 2 for k in range(11)])


@pytest.mark.parametrize("mode, expected", [("per_tensor", [5.0, 1.0]), ("global", [10 * 5 / 101 ** 0.5, 5 / 101 ** 0.5])])
def test_gradient_clipping_per_tensor_and_global(mode: str, expected: list[float]) -> None:
    big, small = torch.zeros(4, requires_grad=True), torch.zeros(3, requires_grad=True)
    big.grad, small.grad = torch.tensor([6.0, 8.0, 0.0, 0.0]), torch.tensor([0.6, 0.8, 0.0])  # norms 10 and 1
    clip_gradients([big, small], TrainConfig(grad_clip=5, clip_mode=mode))  # type: ignore[arg-type]
    assert [float(p.grad.norm()) for p in (big, small)] == pytest.approx(expected, rel=1e-5)


def test_fit_with_the_cryptonas_knobs_trains(digits) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=2, lr=0.05, min_lr=0.001, batch_size=100, schedule="restarts", restart_epochs=1, nesterov=True,
                         weight_decay=4e-4, grad_clip=5, clip_mode="per_tensor")
    result = fit(build_model("cnet", input_size=(1, 8, 8), layers=3, width=8, dropout=0.5), digits, config, CPU, log=lambda _: None)
    assert [h.lr for h in result.history] == [0.05, 0.05]  # a restart every epoch
    assert result.best_val_acc > 0.3


@pytest.mark.parametrize("options, named", [
    ({"schedule": "step"}, "milestones"),
    ({"milestones": (80, 120)}, "schedule step"),
    ({"schedule": "step", "milestones": (120, 80)}, "milestones"),
    ({"gamma": 2.0}, "gamma"),
    ({"grad_clip": -1.0}, "grad_clip"),
])
def test_bad_recipe_values_are_refused(options: dict, named: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SearchError, match=named):
        TrainConfig(**options)


def test_recipe_options_enter_the_teacher_key_only_when_set(digits) -> None:  # type: ignore[no-untyped-def]
    default = teacher_config("digits")
    assert not set(recipe_record(default)) & set(LATER_FIELDS)  # keys of teachers cached before these options hold
    stepped = teacher_config("digits", overrides={"schedule": "step", "milestones": (5, 10)})
    assert recipe_record(stepped)["milestones"] == (5, 10)
    assert teacher_key("resnet_tiny", {}, digits, stepped) != teacher_key("resnet_tiny", {}, digits, default)
    assert teacher_config("digits", 3, {"epochs": 3}).epochs == 3
    with pytest.raises(SearchError, match="disagree"):
        teacher_config("digits", 3, {"epochs": 4})


def test_train_options_reach_the_strategys_final_phase(tmp_path: Path) -> None:
    job = Job("cryptonas", "digits", budget=1500, strategy_options={"epochs": "3"}, train_options={"epochs": 1, "grad_clip": 5.0},
              cache_dir=str(tmp_path))
    result = execute(prepare(job), log=lambda _: None)
    assert result.outcome.details["epochs"] == 1


def test_teacher_and_train_options_on_the_command_line() -> None:
    base = ["--strategy", "snl", "--budget", "10%", "--dry-run"]
    with quick_estimates():  # what the dry run plans is checked here, not its timing
        code, out, err = cli(search.linearize, [*base, "--set", "teacher.epochs=4", "--set", "teacher.schedule=step",
                                                "--set", "teacher.milestones=2,3", "--set", "train.weight_decay=1e-4"])
    assert code == 0, err
    assert "trains it first (4 epochs)" in out
    code, out, err = cli(search.linearize, [*base, "--set", "teacher.shedule=step"])
    assert code == 2 and out == ""
    assert err.startswith("error: unknown option 'shedule' for the teacher recipe") and "schedule" in err


def test_a_strategy_asking_twice_for_the_teacher_gets_it_fetched_once(tmp_path: Path) -> None:
    # Quick asks for the teacher twice: to copy its weights and to distil from it
    lines: list[str] = []
    job = Job("tests.strategies_for_tests:Quick", "digits", teacher_epochs=1, cache_dir=str(tmp_path))
    result = execute(prepare(job), log=lines.append)
    assert sum(line.startswith(("teacher resnet_tiny from cache", "training teacher")) for line in lines) == 1, lines
    again: list[str] = []
    execute(prepare(job), log=again.append)  # now cached: read once too
    assert [line.startswith("teacher resnet_tiny from cache") for line in again].count(True) == 1, again
    assert result.teacher["cached"] is False
