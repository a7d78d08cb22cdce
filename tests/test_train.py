"""Training loop, distillation, determinism and the teacher cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from search.data import Loader, load_dataset
from search.errors import SearchError
from search.spaces import build_model
from search.teacher import get_teacher
from search.train import TrainConfig, evaluate, fit, kd_loss

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
