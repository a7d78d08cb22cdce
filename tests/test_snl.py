"""SNL strategy: budget met exactly, frozen binary masks in finetune, the kappa schedule, channel
masks, checkpoints that round-trip, the soft-mask kernel, and one-line errors from the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import search.linearize
import search.strategies.snl as snl_module
from search.checkpoint import load_model
from search.data import Loader, load_dataset
from search.errors import SearchError
from search.masked_relu import fused_kernels, soft_masked_relu
from search.pipeline import Job, execute, execute_budgets, prepare
from search.relu import relu_count, sites, trace_shapes
from search.spaces import build_model
from search.strategies import PlanNeedsTraining, TargetOutOfReach, get_strategy
from search.train import EpochStats, evaluate
from tests.helpers import cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEACHER_EPOCHS = 4  # a small, quickly trained teacher shared by every test through the session cache
FAST = {"max_epochs": "20", "finetune_epochs": "2"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads make each small kernel wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(digits, budget: int, early_stop: bool = True, **options: str):
    job = Job(strategy="snl", dataset="digits", budget=budget, strategy_options={**FAST, **options}, teacher_epochs=TEACHER_EPOCHS,
              early_stop=early_stop)
    return execute(prepare(job), log=lambda line: None, data=digits)


def _full(model_name: str = "resnet_tiny") -> int:
    return relu_count(build_model(model_name, num_classes=10, input_size=(1, 8, 8)), (1, 8, 8))


# -- the whole strategy ---------------------------------------------------------------------------


def test_pixel_run_meets_budget_with_frozen_binary_masks_in_finetune(digits, monkeypatch):
    seen: dict[str, object] = {}
    real_fit = snl_module.fit

    def watching_fit(model, data, config, device, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("label") == "snl-finetune":
            masked = sites(model)
            seen["dtypes"] = {s.mask.dtype for s in masked if s.mask is not None}
            seen["mask_params"] = [name for name, _ in model.named_parameters() if name.endswith("mask")]
            seen["masks_before"] = [None if s.mask is None else s.mask.clone() for s in masked]
            result = real_fit(model, data, config, device, **kwargs)
            seen["masks_after"] = [None if s.mask is None else s.mask.clone() for s in masked]
            return result
        return real_fit(model, data, config, device, **kwargs)

    monkeypatch.setattr(snl_module, "fit", watching_fit)
    budget = _full() // 10
    result = _run(digits, budget)
    outcome = result.outcome
    assert outcome.relus == relu_count(outcome.model, (1, 8, 8))
    assert outcome.relus <= budget
    assert outcome.relus == budget  # exact_budget keeps exactly B single-pixel positions
    # in finetune the masks are bool buffers, not parameters (so not in the optimizer), and unchanged
    assert seen["dtypes"] == {torch.bool}
    assert seen["mask_params"] == []
    for before, after in zip(seen["masks_before"], seen["masks_after"]):  # type: ignore[arg-type]
        assert (before is None and after is None) or torch.equal(before, after)
    # the kappa schedule as recorded by the real run: growth after epoch e iff e > warmup and no new low
    details = outcome.details
    kappa, warmup = 1.1, 5
    counts, lambdas = details["counts"], details["lambdas"]
    assert counts[-1] <= budget < counts[0]
    for epoch in range(1, len(counts) + 1):
        new_low = epoch == 1 or counts[epoch - 1] < min(counts[: epoch - 1])
        grows = not new_low and epoch > warmup
        following = lambdas[epoch] if epoch < len(lambdas) else details["final_lambda"]
        assert following == pytest.approx(lambdas[epoch - 1] * (kappa if grows else 1.0))


def test_mask_phase_stops_at_the_first_count_within_the_budget(digits):
    """Counting during the epoch (the default) ends the mask phase earlier than counting at epoch ends
    (``count_every=0``, the released code's way), with more of the kept ReLUs chosen by SNL itself
    (above epsilon) and fewer refilled from masks already below it."""
    budget = _full() // 10
    stepwise = _run(digits, budget).outcome.details
    per_epoch = _run(digits, budget, count_every="0").outcome.details
    for details in (stepwise, per_epoch):
        assert details["count_above_epsilon"] <= budget
        assert details["count_above_epsilon"] + details["added_below_epsilon"] == budget  # exact_budget fills to B
    steps_per_epoch = -(-len(digits.train) // 64)  # digits' SNL batch size
    assert per_epoch["mask_steps"] % steps_per_epoch == 0, "counted at epoch ends only"
    assert stepwise["mask_steps"] < per_epoch["mask_steps"]
    assert stepwise["added_below_epsilon"] < per_epoch["added_below_epsilon"]


def test_one_mask_phase_serves_several_budgets_as_separate_runs_would(digits):
    budgets = [_full() // 10, _full() // 4]
    job = Job(strategy="snl", dataset="digits", budget=min(budgets), strategy_options=FAST, teacher_epochs=TEACHER_EPOCHS)
    shared = execute_budgets(prepare(job), budgets, log=lambda line: None, data=digits)
    for budget in budgets:
        alone = _run(digits, budget).outcome
        together = shared[budget].outcome  # type: ignore[union-attr]
        assert together.relus == alone.relus == budget
        assert together.details["mask_steps"] == alone.details["mask_steps"]
        for one, other in zip(sites(together.model), sites(alone.model)):
            assert torch.equal(one.mask, other.mask), f"budget {budget}: masks of {one.name} differ"
        assert together.val_acc == alone.val_acc
    assert shared[budgets[0]].outcome.details["mask_steps"] > shared[budgets[1]].outcome.details["mask_steps"]  # type: ignore[union-attr]


def test_channel_masks_count_in_whole_channels(digits):
    budget = _full() // 5
    outcome = _run(digits, budget, granularity="channel").outcome
    assert outcome.relus <= budget
    for site in sites(outcome.model):
        height_width = site.size // site.shape[0]  # type: ignore[index]
        assert site.active() % height_width == 0
        if site.mask is not None:
            assert site.mask.shape == (site.shape[0], 1, 1)  # type: ignore[index]


def test_max_epochs_without_reaching_budget_fails_with_reason(digits):
    with pytest.raises(SearchError, match=r"did not reach the budget of 46 ReLUs in max_epochs=1"):
        _run(digits, 46, early_stop=False, lam="0", max_epochs="1")
    with pytest.raises(TargetOutOfReach, match=r"snl cannot reach 46 ReLUs in max_epochs=1"):  # early stopping says so sooner
        _run(digits, 46, lam="0", max_epochs="1")


# -- pieces ---------------------------------------------------------------------------------------


def _tiny_with_soft_masks(granularity: str = "pixel", epsilon: float = 0.01):
    model = build_model("resnet_tiny", num_classes=10, input_size=(1, 8, 8))
    trace_shapes(model, (1, 8, 8))
    masked = sites(model)
    for site in masked:
        site.set_mask(torch.ones(site.mask_shape(granularity)), trainable=True)  # type: ignore[arg-type]
        site.count_threshold = epsilon
    return model, masked


def test_lambda_grows_by_kappa_only_on_epochs_without_new_low():
    model, masked = _tiny_with_soft_masks()
    lasso = snl_module._Lasso(masked, 1.0)
    schedule = snl_module._MaskPhase(model, (1, 8, 8), budgets=[10], lasso=lasso, kappa=2.0, warmup=2, log=lambda line: None)
    mask = masked[0].mask
    # counts per epoch: full, full (warm-up: no growth), lower (new low), same, same, lower
    switched_off = [0, 0, 100, 100, 100, 300]
    expected = [1.0, 1.0, 1.0, 1.0, 2.0, 4.0]
    for epoch, off in enumerate(switched_off, start=1):
        with torch.no_grad():
            mask.fill_(1.0)  # type: ignore[union-attr]
            mask.view(-1)[:off] = 0.0  # type: ignore[union-attr]
        assert lasso.lam == expected[epoch - 1]
        schedule.epoch_end(EpochStats(epoch, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert schedule.lambdas == expected
    assert lasso.lam == 4.0  # epoch 6 set a new low: no growth after it
    assert schedule.counts[0] - schedule.counts[-1] == 300


def test_select_top_keeps_highest_channels_within_budget():
    model, masked = _tiny_with_soft_masks("channel")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for site in masked:
            site.mask.copy_(torch.rand(site.mask.shape, generator=generator))  # type: ignore[union-attr]
    scores = {id(s): s.mask.detach().clone() for s in masked}  # type: ignore[union-attr]
    budget = 1000
    kept = snl_module.select_top(masked, budget)
    assert kept == relu_count(model, (1, 8, 8)) <= budget
    smallest_entry = min(s.size // s.shape[0] for s in masked)  # type: ignore[index]
    assert budget - kept < smallest_entry  # no entry that would still fit was left out
    for site in masked:
        assert site.mode in ("on", "off", "masked")
        assert "mask" not in dict(site.named_parameters())
        height_width = site.size // site.shape[0]  # type: ignore[index]
        assert site.active() % height_width == 0
    # every kept entry of equal size scores at least as high as every dropped one
    by_size: dict[int, tuple[list[float], list[float]]] = {}
    for site in masked:
        on = torch.ones(site.mask_shape("channel"), dtype=torch.bool) if site.mode == "on" else site.mask.expand(site.mask_shape("channel")).bool()  # type: ignore[union-attr]
        kept_scores, dropped_scores = by_size.setdefault(site.size // site.shape[0], ([], []))  # type: ignore[index]
        kept_scores += scores[id(site)][on].tolist()
        dropped_scores += scores[id(site)][~on].tolist()
    for kept_scores, dropped_scores in by_size.values():
        if kept_scores and dropped_scores:
            assert min(kept_scores) >= max(dropped_scores)


def test_fused_soft_mask_kernel_builds_here():
    """The CPU fast path is compiled on this machine (it has a C++ compiler), not silently skipped."""
    assert fused_kernels() is not None


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 1, 1), (1, 1, 1)])
def test_soft_mask_kernel_matches_released_formula(shape, fused):
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 5, dtype=torch.double, requires_grad=True)
    alpha = (torch.rand(shape, dtype=torch.double) * 1.4 - 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: soft_masked_relu(a, b, fused=fused), (x, alpha))
    x = x.detach()
    x[0, 0, 0, :2] = 0.0  # at the kink, ReLU's convention (autograd's gradient of relu at 0 is 0)
    x.requires_grad_()
    reference = torch.relu(x) * alpha + (1 - alpha) * x
    out = soft_masked_relu(x, alpha, fused=fused)
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(reference, (x, alpha), grad)
    got = torch.autograd.grad(out, (x, alpha), grad)
    torch.testing.assert_close(out, reference)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_fused_kernel_with_a_frozen_mask_and_float32():
    torch.manual_seed(1)
    x = torch.randn(64, 8, 6, 6, requires_grad=True)
    alpha = torch.rand(8, 6, 6)
    grad = torch.randn(64, 8, 6, 6)
    (fused,) = torch.autograd.grad(soft_masked_relu(x, alpha), x, grad)
    (aten,) = torch.autograd.grad(soft_masked_relu(x, alpha, fused=False), x, grad)
    torch.testing.assert_close(fused, aten)


@pytest.mark.parametrize("mask_shape", [(8, 6, 6), (8, 1, 1), (1, 1, 1)], ids=["pixel", "channel", "layer"])
def test_fused_kernel_gives_a_channels_last_batch_its_gradient_in_that_layout_as_a_tensor_of_its_own(mask_shape):
    """Not a permuted view: autograd adds a residual block's second gradient into the first in place
    only when that one owns its storage (a view cost an out-of-place add of the whole activation)."""
    torch.manual_seed(2)
    x = torch.randn(16, 8, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    alpha = torch.rand(mask_shape, requires_grad=True)
    grad = torch.randn(16, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    fused = torch.autograd.grad(soft_masked_relu(x, alpha), (x, alpha), grad)
    aten = torch.autograd.grad(soft_masked_relu(x, alpha, fused=False), (x, alpha), grad)
    assert fused[0].is_contiguous(memory_format=torch.channels_last) and not fused[0]._is_view()
    for a, b in zip(fused, aten):
        torch.testing.assert_close(a, b)


def test_suggest_is_define_by_run_with_namespaced_names(tmp_path):
    strategy = get_strategy("snl")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="snl-suggest")
    trial = study.ask()
    values = strategy.suggest(trial, budget=400)
    assert set(trial.params) == {"snl/lam", "snl/kappa", "snl/epsilon", "snl/lr", "snl/granularity"}
    options = strategy.parse_options(values)
    assert options.kappa > 1 and options.epsilon > 0 and options.granularity in ("pixel", "channel")
    with pytest.raises(PlanNeedsTraining, match="learns its result by training"):
        strategy.plan("resnet_tiny", {}, (1, 8, 8), 10, options)


# -- the real command line ------------------------------------------------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.linearize", "--strategy", "snl", "--dataset", "digits", *args]


def _cli_options(cache: Path) -> dict[str, Any]:
    return {"cwd": PROJECT_ROOT, "timeout": 600, "env": {**os.environ, "SEARCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}}


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), capture_output=True, text=True, **_cli_options(cache))


def test_cli_saved_model_round_trips(digits, tmp_path, isolated_cache):
    out = tmp_path / "snl.pt"
    budget = _full() // 10
    proc = _cli("--budget", "10%", "--teacher-epochs", str(TEACHER_EPOCHS), "--set", "finetune_epochs=2", "--out", str(out), cache=isolated_cache)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"relus=(\d+) val_acc=([\d.]+) test_acc=([\d.]+)", last)
    assert match, last
    assert int(match.group(1)) <= budget
    model, payload = load_model(out)
    assert relu_count(model, (1, 8, 8)) == int(match.group(1)) == payload["info"]["relus"]
    test_acc = evaluate(model, Loader(digits.test, digits.info, 512, torch.device("cpu")))
    assert f"{test_acc:.4f}" == match.group(3)
    assert all(s.mask is None or s.mask.dtype == torch.bool for s in sites(model))


def test_cli_several_budgets_print_a_line_and_save_a_model_each(digits, tmp_path, isolated_cache):
    out = tmp_path / "snl.pt"
    budgets = [_full() // 10, _full() // 4]
    proc = _cli("--budget", "10%,25%", "--teacher-epochs", str(TEACHER_EPOCHS), "--set", "finetune_epochs=1", "--out", str(out),
                cache=isolated_cache)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("budget=")]  # each printed as soon as it is done
    assert len(lines) == 2 and proc.stdout.index(lines[0]) < proc.stdout.index("snl-path epoch 1/1")
    for line, budget in zip(lines, budgets):
        match = re.fullmatch(rf"budget={budget} relus=(\d+) val_acc=([\d.]+) test_acc=([\d.]+)", line)
        assert match, lines
        model, payload = load_model(tmp_path / f"snl-{budget}.pt")
        assert relu_count(model, (1, 8, 8)) == int(match.group(1)) == budget == payload["info"]["budget"]
    assert not out.exists()


BAD_VALUES = [
    (["--budget", "0"], "budget 0 is out of range"),
    (["--budget", "10%,x"], "bad budget 'x'"),
    (["--budget", "10%,0"], "budget 0 is out of range"),
    (["--budget", "5000"], "budget 5000 is out of range"),
    (["--budget", "10%", "--set", "kappa=1"], "bad value 1.0 for kappa: expected a number > 1"),
    (["--budget", "10%", "--set", "epsilon=0"], "bad value 0.0 for epsilon: expected a number > 0"),
    (["--budget", "10%", "--set", "lam=-1"], "bad value -1.0 for lam: expected a number >= 0"),
]


@pytest.mark.parametrize("args, expected", BAD_VALUES)
def test_cli_bad_values_give_one_error_line(args, expected):
    code, out, err = cli(search.linearize, ["--strategy", "snl", "--dataset", "digits", *args])  # in-process: no 3 s start each
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
@pytest.mark.parametrize("mask_shape", [(8, 6, 6), (8, 1, 1), (1, 1, 1)], ids=["pixel", "channel", "layer"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
def test_soft_mask_without_autograd_gives_the_released_formula_in_the_batchs_layout(mask_shape, layout, fused):
    """Evaluation runs the soft mask under no_grad / inference mode: no graph, same values, same layout."""
    torch.manual_seed(3)
    x = torch.randn(5, 8, 6, 6).contiguous(memory_format=layout)
    alpha = torch.rand(mask_shape, requires_grad=True)
    with torch.inference_mode():
        out = soft_masked_relu(x, alpha, fused=fused)
    assert not out.requires_grad and out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out, (torch.relu(x) * alpha + (1 - alpha) * x).detach())


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
def test_soft_mask_gives_a_mask_its_gradient_when_the_input_needs_none(fused):
    torch.manual_seed(4)
    x = torch.randn(5, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    alpha = torch.rand(8, 6, 6, requires_grad=True)
    grad = torch.randn(5, 8, 6, 6)
    (got,) = torch.autograd.grad(soft_masked_relu(x, alpha, fused=fused), alpha, grad)
    (expected,) = torch.autograd.grad(torch.relu(x) * alpha + (1 - alpha) * x, alpha, grad)
    torch.testing.assert_close(got, expected)


_MASK_SHAPES = {"pixel": lambda c, h, w: (c, h, w), "channel": lambda c, h, w: (c, 1, 1), "layer": lambda c, h, w: (1, 1, 1),
                "column": lambda c, h, w: (w,)}


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 9), channels=st.integers(1, 5), height=st.integers(1, 4), width=st.integers(1, 4),
       granularity=st.sampled_from(sorted(_MASK_SHAPES)), x_layout=st.sampled_from(["nchw", "channels-last"]),
       grad_layout=st.sampled_from(["nchw", "channels-last"]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_fused_kernels_agree_with_the_released_formula_for_any_shape_layout_and_batch(
        batch, channels, height, width, granularity, x_layout, grad_layout, dtype, seed):
    """Batches the four-image backward does not divide, masks of every granularity (and one of fewer
    dimensions than an image), a gradient in another layout than the batch's: values, gradients and the
    batch's layout as the released formula gives them."""
    formats = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, dtype=dtype, generator=generator)
    x[0, 0, 0, 0] = 0.0  # the kink, where the released formula's gradient takes the negative side
    x = x.contiguous(memory_format=formats[x_layout]).requires_grad_()
    mask_shape = _MASK_SHAPES[granularity](channels, height, width)
    alpha = (torch.rand(mask_shape, dtype=dtype, generator=generator) * 1.4 - 0.2).requires_grad_()
    grad = torch.randn(batch, channels, height, width, dtype=dtype, generator=generator)
    grad = grad.contiguous(memory_format=formats[grad_layout])
    out = soft_masked_relu(x, alpha)
    reference = torch.relu(x) * alpha + (1 - alpha) * x
    torch.testing.assert_close(out, reference)
    got, expected = torch.autograd.grad(out, (x, alpha), grad), torch.autograd.grad(reference, (x, alpha), grad)
    assert out.is_contiguous(memory_format=formats[x_layout]) and got[0].is_contiguous(memory_format=formats[x_layout])
    for mine, theirs in zip(got, expected):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_batch_on_cpu_trains_its_mask_through_aten(dtype):
    """The C++ kernels are compiled for float32 and float64 only: other dtypes take the ATen path."""
    torch.manual_seed(5)
    x = torch.randn(6, 4, 3, 3).to(dtype).requires_grad_()
    alpha = torch.rand(4, 3, 3, requires_grad=True)
    grad = torch.randn(6, 4, 3, 3).to(dtype)
    out = soft_masked_relu(x, alpha)
    got = torch.autograd.grad(out, (x, alpha), grad)
    x32 = x.detach().float().requires_grad_()
    reference = torch.relu(x32) * alpha + (1 - alpha) * x32
    expected = torch.autograd.grad(reference, (x32, alpha), grad.float())
    assert out.dtype == got[0].dtype == dtype and got[1].dtype == torch.float32
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=2e-2)
