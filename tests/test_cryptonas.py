"""CryptoNAS: CNet counts, the three moves (pruning/shuffling, balancing, budgeted search), rejection of
over-budget candidates before training, save/load of a chosen architecture, and CLI errors."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from search.checkpoint import load_model
from search.cli import run_main
from search.data import load_dataset
from search.errors import SearchError
from search.pipeline import Job, execute, prepare
from search.relu import relu_count, relu_table, sites, trace_shapes
from search.spaces import build_model
from search.strategies import Context, get_strategy
from search.strategies import cryptonas as cryptonas_module
from search.spaces.cnet import format_skips
from search.strategies.cryptonas import candidate
from search.train import pick_device

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)
INSPECT = ("search.inspect", "--model", "cnet", "--input", "3x32x32")
LINEARIZE = ("search.linearize", "--strategy", "cryptonas", "--dataset", "digits")


def cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` in a new process, the way a user does (one torch thread: the
    machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=300
    )


@pytest.fixture
def command(capsys: pytest.CaptureFixture[str]):
    """Run a command's real entry point (``run_main(main, argv)``) in this process: (exit code, stdout, stderr)."""

    def run(module: str, *args: str) -> tuple[int, str, str]:
        main = importlib.import_module(module).main
        with pytest.raises(SystemExit) as exited:
            run_main(main, list(args))
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine two threads run several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def layer_counts(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    return {row.name: row.active for row in relu_table(model, input_shape)}


# -- the CNet space --------------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "width", "expected"), [(6, 14, 86_016), (12, 28, 344_064), (24, 56, 1_376_256)])
def test_cnet_counts_exact_through_cli_and_relu_count(command, layers: int, width: int, expected: int) -> None:
    code, out, err = command(*INSPECT, "--set", f"layers={layers}", "--set", f"width={width}")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"total_relus={expected}"
    assert "stem ReLU: absent" in out
    assert relu_count(build_model("cnet", input_size=CIFAR, layers=layers, width=width), CIFAR) == expected


@pytest.mark.parametrize("input_shape", [CIFAR, DIGITS])
def test_balanced_network_has_the_same_count_in_every_layer(input_shape: tuple[int, int, int]) -> None:
    ops = ("conv3x3", "conv5x5", "sepconv3x3", "sepconv5x5", "maxpool", "avgpool", "conv3x3", "maxpool", "sepconv5x5")
    model = build_model("cnet", input_size=input_shape, layers=9, width=5, ops=ops, skips=("0-3", "2-7", "4-9", "8-9"))
    counts = layer_counts(model, input_shape)
    per_layer = 5 * input_shape[1] * input_shape[2]
    assert list(counts) == [f"layer{i}.relu" for i in range(1, 10)]
    assert set(counts.values()) == {per_layer}
    assert sum(counts.values()) == 9 * per_layer
    assert model.channels[1:] == [5] * 3 + [20] * 3 + [80] * 3


# Layers per resolution in the official code (ENAS general_child.py: pool after layers L//3 - 1 and
# 2*(L//3) - 1, 0-based), written out by hand for every L from 6 to 12.
OFFICIAL_STAGE_SIZES = {6: (2, 2, 2), 7: (2, 2, 3), 8: (2, 2, 4), 9: (3, 3, 3), 10: (3, 3, 4), 11: (3, 3, 5), 12: (4, 4, 4)}


@pytest.mark.parametrize("layers", sorted(OFFICIAL_STAGE_SIZES))
def test_stage_boundaries_follow_the_official_code(layers: int) -> None:
    model = build_model("cnet", input_size=CIFAR, layers=layers, width=2)
    sides = [site.shape[-1] for site in trace_shapes(model, CIFAR)]
    sizes = tuple(sides.count(side) for side in (32, 16, 8))
    assert sizes == OFFICIAL_STAGE_SIZES[layers] and len(sides) == layers
    stages = [site.stage for site in sites(model)]
    assert stages == [f"stage{k}" for k, n in enumerate(sizes, start=1) for _ in range(n)]


def test_balance_off_grows_channels_x2_and_the_table_shows_the_imbalance(command) -> None:
    model = build_model("cnet", input_size=CIFAR, layers=6, width=8, balance=False)
    assert model.channels[1:] == [8, 8, 16, 16, 32, 32]
    first = 8 * 32 * 32
    expected = [first, first, first // 2, first // 2, first // 4, first // 4]
    assert list(layer_counts(model, CIFAR).values()) == expected
    args = (*INSPECT, "--set", "layers=6", "--set", "width=8", "--set", "balance=false")
    code, out, err = command(*args, "--sites")
    assert code == 0, err
    shown = [int(line.split()[2].replace(",", "")) for line in out.splitlines() if line.startswith("layer")]
    assert shown == expected
    assert out.strip().splitlines()[-1] == f"total_relus={sum(expected)}"
    _, by_stage, _ = command(*args)
    rows = {row.split()[0]: int(row.split()[2].replace(",", "")) for row in by_stage.splitlines() if re.match(r"stage\d", row)}
    assert rows == {"stage1": 2 * first, "stage2": first, "stage3": first // 2}


def test_relu_per_layer_toggles_pruning_and_shuffling() -> None:
    skips = ("0-2", "1-3", "2-6")
    pruned = build_model("cnet", input_size=DIGITS, layers=6, width=4, skips=skips)
    conventional = build_model("cnet", input_size=DIGITS, layers=6, width=4, skips=skips, relu_per_layer=False)
    pruned_counts, conventional_counts = layer_counts(pruned, DIGITS), layer_counts(conventional, DIGITS)
    # pruned: one ReLU per layer; conventional: a ReLU after each of the three skip merges as well
    assert list(pruned_counts) == [f"layer{i}.relu" for i in range(1, 7)]
    skip_sites = [n for n in conventional_counts if n.endswith("skip_relu")]
    assert skip_sites == ["layer2.skip_relu", "layer3.skip_relu", "layer6.skip_relu"]
    extra = sum(conventional_counts[f"layer{i}.relu"] for i in (2, 3, 6))
    assert sum(conventional_counts.values()) == sum(pruned_counts.values()) + extra

    # shuffling: the pruned layer's ReLU is on its input (the op sees no negatives); the conventional
    # layer applies op -> BN -> ReLU (the op sees negatives, the output of a layer without skips does not)
    seen: dict[str, torch.Tensor] = {}
    for name, model in (("pruned", pruned), ("conventional", conventional)):
        model.eval()
        layer = model.layers[4]  # layer5: downsamples (linear), no skip into it
        handles = [
            layer.op.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(f"{name}.op_in", args[0])),
            layer.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(f"{name}.out", out)),
        ]
        with torch.no_grad():
            model(torch.randn(8, *DIGITS))
        for handle in handles:
            handle.remove()
    assert seen["pruned.op_in"].min() >= 0 and seen["pruned.out"].min() < 0
    assert seen["conventional.op_in"].min() < 0 and seen["conventional.out"].min() >= 0


def test_ops_and_skips_change_the_network() -> None:
    ops = ("sepconv5x5", "maxpool", "avgpool")
    model = build_model("cnet", input_size=DIGITS, layers=3, width=4, ops=ops, skips=("0-3",))
    first_op = model.layers[0].op
    assert isinstance(first_op, torch.nn.Sequential) and first_op[0].groups == 4 and first_op[0].kernel_size == (5, 5)
    assert isinstance(model.layers[1].op, torch.nn.MaxPool2d) and isinstance(model.layers[2].op, torch.nn.AvgPool2d)
    assert model.layers[0].merge is None and model.layers[2].merge is not None
    assert model.layers[2].merge[0].in_channels == 64 + 4  # layer3's own 4*16 channels + the stem's 4, pooled twice
    assert model.skip_table == {3: (0,)}
    assert model(torch.randn(2, *DIGITS)).shape == (2, 10)


# -- the strategy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "layers", "width"), [(86_016, 6, 14), (344_064, 12, 28), (1_376_256, 24, 56)])
def test_budget_alone_picks_the_cnet_of_that_count(target: int, layers: int, width: int) -> None:
    options = get_strategy("cryptonas").parse_options({})
    arch, model = candidate(options, CIFAR, target)
    assert (arch["layers"], arch["width"]) == (layers, width)
    assert relu_count(model, CIFAR) == target


def test_budget_alone_picks_the_widest_network_that_fits() -> None:
    strategy = get_strategy("cryptonas")
    for budget in (700, 2000, 4608):
        arch, model = candidate(strategy.parse_options({}), DIGITS, budget)
        assert relu_count(model, DIGITS) <= budget
        wider = build_model("cnet", input_size=DIGITS, **{**arch, "width": arch["width"] + 1})
        assert relu_count(wider, DIGITS) > budget
    # a fixed depth (here from one op per layer) keeps the depth and fills the width
    arch, model = candidate(strategy.parse_options({"ops": "conv5x5,maxpool,conv3x3,sepconv3x3"}), DIGITS, 2000)
    unit = relu_count(build_model("cnet", input_size=DIGITS, **{**arch, "width": 1}), DIGITS)
    assert arch["layers"] == 4 and arch["width"] == 2000 // unit
    # a fixed width keeps the width and takes the deepest multiple of 3 that fits: 4 * 64 per layer
    arch, model = candidate(strategy.parse_options({"width": "4"}), DIGITS, 2000)
    assert (arch["layers"], arch["width"]) == (6, 4) and relu_count(model, DIGITS) == 6 * 4 * 64


def test_over_budget_candidate_is_rejected_before_training(
    digits, command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cryptonas_module, "fit", lambda *a, **k: calls.append("fit"))
    strategy = get_strategy("cryptonas")
    options = strategy.parse_options({"layers": "6", "width": "32"})
    plan = strategy.plan("resnet_tiny", {}, DIGITS, 10, options)
    assert relu_count(plan, DIGITS) == 6 * 32 * 64 > 1000  # what a study checks before running the trial
    teacher = lambda: calls.append("teacher")  # noqa: E731
    ctx = Context("resnet_tiny", {}, digits, 1000, pick_device("cpu"), 0, teacher, tmp_path, log=lambda _: None)
    with pytest.raises(SearchError, match=r"12,288 ReLUs, over the budget of 1,000; rejected before training"):
        strategy.run(ctx, options)
    assert calls == []

    code, out, err = command(*LINEARIZE, "--budget", "1000", "--set", "layers=6", "--set", "strategy.width=32")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "rejected before training" in err
    assert calls == [] and "epoch" not in out


def test_suggest_searches_the_macro_space_within_the_budget(tmp_path: Path) -> None:
    strategy = get_strategy("cryptonas")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=3), study_name="cnas")
    budget = 3000
    seen: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def objective(trial: optuna.Trial) -> float:
        options = strategy.parse_options(strategy.suggest(trial, budget))
        model = strategy.plan("resnet_tiny", {}, DIGITS, 10, options)
        assert model.ops == options.ops and format_skips(model.skip_table) == options.skips
        seen.append((options.ops, options.skips))
        return float(relu_count(model, DIGITS))

    study.optimize(objective, n_trials=12)  # sqlite storage rejects a name sampled with two distributions
    counts = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(counts) == 12 and max(counts) <= budget
    assert len(set(seen)) > 6 and len({len(ops) for ops, _ in seen}) > 1
    params = set().union(*(t.params for t in study.trials))
    assert {"cryptonas/layers", "cryptonas/fill", "cryptonas/op_1", "cryptonas/skip_1"} <= params

    published = optuna.create_study(storage=storage, study_name="published")  # 24 layers, two skips into layer 5
    published.enqueue_trial({"cryptonas/layers": 24, "cryptonas/skip_5": "3", "cryptonas/skip2_5": "1", "cryptonas/skip_9": "8",
                             "cryptonas/skip2_9": "8"})
    options = strategy.parse_options(strategy.suggest(published.ask(), 10**6))
    assert options.layers == 24 and {"1-5", "3-5", "8-9"} <= set(options.skips)
    assert not any(skip.endswith("-9") and skip != "8-9" for skip in options.skips)

    free = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), study_name="free")
    chosen = strategy.suggest(free.ask(), None)
    assert "width" in chosen and "target" not in chosen


def test_chosen_architecture_round_trips_through_save_and_load(digits, tmp_path: Path) -> None:
    out = tmp_path / "cnet.pt"
    job = Job(
        strategy="cryptonas",
        dataset="digits",
        budget=1500,
        strategy_options={"layers": "3", "ops": "sepconv3x3,maxpool,conv5x5", "skips": "0-2,1-3", "epochs": "1"},
        out=str(out),
    )
    result = execute(prepare(job), log=lambda _: None, data=digits)
    outcome = result.outcome
    assert outcome.model_name == "cnet" and outcome.relus <= 1500
    assert outcome.model_options["ops"] == ("sepconv3x3", "maxpool", "conv5x5")
    assert outcome.model_options["skips"] == ("0-2", "1-3")
    loaded, payload = load_model(out)
    assert payload["model"] == "cnet" and payload["options"] == outcome.model_options
    assert relu_count(loaded, DIGITS) == outcome.relus
    assert "layer3   stage3" in payload["info"]["details"]["architecture"]
    outcome.model.eval().cpu()
    loaded.eval()
    images = digits.test.images[:64].float()
    with torch.no_grad():
        assert torch.equal(outcome.model(images), loaded(images))


def test_kd_weight_distils_from_the_runs_base_model(digits) -> None:
    distil = Job("cryptonas", "digits", budget=1500, teacher_epochs=1, strategy_options={"kd_weight": "1", "epochs": "1"})
    result = execute(prepare(distil), log=lambda _: None, data=digits)
    assert result.outcome.details["teacher"] == "resnet_tiny" and result.teacher["epochs"] == 1
    alone = Job("cryptonas", "digits", budget=1500, strategy_options={"epochs": "1"})
    plain = execute(prepare(alone), log=lambda _: None, data=digits)
    assert plain.outcome.details["teacher"] is None and plain.teacher == {}


def test_linearize_cli_prints_the_architecture_and_the_result_line(tmp_path: Path) -> None:
    out = tmp_path / "cli.pt"
    done = cli(*LINEARIZE, "--budget", "2000", "--set", "epochs=1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "cnet: 3 layers, width 10" in done.stdout and "layer3   stage3  160x2x2" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"relus=(\d+) val_acc=(0\.\d{4}|1\.0000) test_acc=(0\.\d{4}|1\.0000)", last)
    assert match and int(match.group(1)) == 1920
    loaded, _ = load_model(out)
    assert relu_count(loaded, DIGITS) == 1920 and len(sites(loaded)) == 3


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([*INSPECT, "--set", "ops=conv7x7"], "'conv7x7' for ops"),
        ([*INSPECT, "--set", "skips=3-1"], "'3-1' for skips"),
        ([*INSPECT, "--set", "layers=2"], "for layers: expected an integer >= 3"),
        ([*INSPECT, "--set", "ops=conv3x3,maxpool"], "expected 6 op names"),
        ([*LINEARIZE, "--set", "epochs=0"], "bad value 0 for epochs"),
        ([*LINEARIZE, "--set", "balance=maybe"], "'maybe' for balance: expected true or false"),
        ([*LINEARIZE, "--set", "skips=0-2"], "skips need a known depth"),
        ([*LINEARIZE, "--set", "width=8"], "write model.width or strategy.width"),
    ],
)
def test_bad_set_values_give_one_error_line(command, args: list[str], named: str) -> None:
    code, _, err = command(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
