"""DeepReDuce on a user's model: stages derived from the resolution or named with ``stages=``, residual
blocks from the graph, alpha and rho only where the factory declares ``width`` and ``stem_stride``, and
one error line for what does not apply.

Counts are by hand: ``examples/my_model.py:make_net`` at 1x8x8 (width 16) has a stem ReLU and one block
(two ReLUs) at 16x8x8, then one block at 32x4x4: 3 * 1,024 + 2 * 512 = 4,096 ReLUs.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from search.cli import run_main
from search.inspect import main as inspect_main
from search.linearize import main as linearize_main
from search.relu import relu_count
from search.spaces import build_model
from search.strategies import get_strategy
from search.strategies.stages import (
    FROM_NAMES,
    FROM_RESOLUTION,
    Stages,
    derived_stages,
    forward_sites,
    model_stages,
    residual_blocks,
)
from search.study.space import define_space
from search.study.trial import TRIAL_KEY
from tests.conftest import PROJECT_ROOT

MY_MODEL = "my_model:make_net"
TV_RESNET18 = "torchvision.models:resnet18"
PLAIN = '''
from torch import nn


def make(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> nn.Module:
    """Two conv-ReLUs at full resolution, max pooling, one more: no residual block."""
    return nn.Sequential(
        nn.Conv2d(input_size[0], 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
'''


@pytest.fixture(autouse=True)
def user_modules(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/ (my_model) and a folder holding ``plain_model`` on sys.path, as PYTHONPATH puts them."""
    folder = tmp_path_factory.getbasetemp() / "deepreduce-own-models"
    folder.mkdir(exist_ok=True)
    (folder / "plain_model.py").write_text(textwrap.dedent(PLAIN))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "examples"))


def _table(stages: Stages) -> list[tuple[str, int, int]]:
    return [(stage.label, len(stage.sites), stage.relus) for stage in stages.stages]


def _plan_count(model: str, size: tuple[int, int, int], pairs: list[str]) -> int:
    strategy = get_strategy("deepreduce")
    options = strategy.parse_options(dict(pair.split("=", 1) for pair in pairs))
    return relu_count(strategy.plan(model, {}, size, 10, options), size)


def _one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        run_main(inspect_main, argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_my_model_stages_by_resolution_agree_with_its_stage_modules() -> None:
    found = forward_sites(build_model(MY_MODEL, num_classes=10, input_size=(1, 8, 8)), (1, 8, 8))
    derived = derived_stages(found)
    # stem + stage1 at 8x8 -> S1; stage2 at 4x4 -> S2
    assert _table(derived) == [("S1", 3, 3 * 16 * 8 * 8), ("S2", 2, 2 * 32 * 4 * 4)]
    assert derived.stages[0].sites == ("stem.2", "stage1.0.relu", "stage1.0.relu_2")
    assert model_stages(found) == replace(derived, source=FROM_NAMES)


def test_torchvision_resnet18_stages_by_resolution_and_blocks_from_its_graph() -> None:
    model = build_model(TV_RESNET18, num_classes=10, input_size=(3, 32, 32))
    found = forward_sites(model, (3, 32, 32))
    stages = model_stages(found)
    assert stages.source == FROM_RESOLUTION
    # the stem ReLU (64x16x16, before max pooling) joins layer1 (64x8x8); layer4 runs at 1x1
    assert _table(stages) == [
        ("S1", 5, 64 * 16 * 16 + 4 * 64 * 8 * 8),
        ("S2", 4, 4 * 128 * 4 * 4),
        ("S3", 4, 4 * 256 * 2 * 2),
        ("S4", 4, 4 * 512 * 1 * 1),
    ]
    assert stages.stages[0].sites[0] == "relu" and stages.stages[3].sites == tuple(
        f"layer4.{b}.{r}" for b in (0, 1) for r in ("relu", "relu_2")
    )
    blocks, _ = residual_blocks(model, found)
    assert blocks == [(f"layer{s}.{b}.relu", f"layer{s}.{b}.relu_2") for s in (1, 2, 3, 4) for b in (0, 1)]


def test_a_plain_stack_has_no_stem_merge_and_no_residual_blocks() -> None:
    model = build_model("plain_model:make", num_classes=10, input_size=(1, 8, 8))
    found = forward_sites(model, (1, 8, 8))
    assert _table(model_stages(found)) == [("S1", 2, 2 * 4 * 64), ("S2", 1, 8 * 16)]  # two sites at 8x8: no lone stem
    blocks, why = residual_blocks(model, found)
    assert blocks == [] and "no residual block" in why


def test_my_model_plans_cull_thin_and_alpha() -> None:
    assert _plan_count(MY_MODEL, (1, 8, 8), ["cull=S2"]) == 4_096 - 1_024
    assert _plan_count(MY_MODEL, (1, 8, 8), ["thin=true"]) == 4_096 - 1_024 - 512  # each block keeps its first ReLU
    # width 8: 3 * 512 + 2 * 256 = 2,048; culling S2 leaves 1,536
    assert _plan_count(MY_MODEL, (1, 8, 8), ["alpha=0.5"]) == 2_048
    assert _plan_count(MY_MODEL, (1, 8, 8), ["alpha=0.5", "cull=S2"]) == 1_536


def test_torchvision_resnet18_named_stages_cull_and_thin(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", TV_RESNET18, "--input", "3x32x32", "--strategy", "deepreduce",
            "--set", "stages=relu,layer1,layer2,layer3,layer4", "--set", "cull=S1", "--set", "thin=true"]
    assert inspect_main(argv) == 0
    # the stem ReLU alone is S1; thinning halves every layer: 8,192 + 4,096 + 2,048 + 1,024
    assert capsys.readouterr().out.strip().splitlines()[-1] == "total_relus=15360"


@pytest.mark.parametrize(
    ("model", "sets", "words"),
    [
        (MY_MODEL, ["rho=0.5"], ["rho=0.5 does not apply to my_model:make_net", "no stem_stride option"]),
        (TV_RESNET18, ["alpha=0.5"], ["alpha=0.5 does not apply", "no width option"]),
        ("plain_model:make", ["thin=true"], ["thin=true does not apply to plain_model:make", "no residual block"]),
        (TV_RESNET18, ["stages=relu,layer1,layer", "cull=S1"], ["stages", "layer1.0.relu (layer1 and layer)", "two prefixes"]),
        (TV_RESNET18, ["stages=relu,layer1", "cull=S1"], ["stages", "layer2.0.relu", "none of the prefixes"]),
        (TV_RESNET18, ["stages=relu,layer,conv", "cull=S1"], ["stages", "no site starts with conv"]),
        (MY_MODEL, ["cull=S3"], ["cull", "has stages S1,S2"]),
    ],
)
def test_what_does_not_apply_is_one_error_line(model: str, sets: list[str], words: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    size = "1x8x8" if model != TV_RESNET18 else "3x32x32"
    argv = ["--model", model, "--input", size, "--strategy", "deepreduce"]
    for pair in sets:
        argv += ["--set", pair]
    line = _one_error_line(argv, capsys)
    assert all(word in line for word in words), line


def test_dry_run_says_the_stages_and_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strategy", "deepreduce", "--model", MY_MODEL, "--dataset", "digits", "--budget", "3000", "--dry-run"]
    assert linearize_main(argv) == 0
    out = capsys.readouterr().out
    assert ("stages (the model's stage<k> modules): S1 stem.2..stage1.0.relu_2 (3 sites, 3,072 ReLUs); "
            "S2 stage2.0.relu..stage2.0.relu_2 (2 sites, 1,024 ReLUs)") in out
    assert ("applies to my_model:make_net: culling (S1,S2), thinning (2 residual blocks), alpha (option width); "
            "rho does not apply: its factory has no stem_stride option (it has width, blocks)") in out


def test_linearize_culls_a_stage_of_my_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strategy", "deepreduce", "--model", MY_MODEL, "--dataset", "digits", "--set", "cull=S2",
            "--teacher-epochs", "1", "--set", "epochs=1", "--cache-dir", str(tmp_path)]
    assert linearize_main(argv) == 0
    out = capsys.readouterr().out
    assert "applies to my_model:make_net: culling (S1,S2)" in out
    assert out.strip().splitlines()[-1].startswith(f"relus={4_096 - 1_024} ")


def test_named_stages_are_measured_for_n_cull_and_keyed_in_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strategy", "deepreduce", "--model", MY_MODEL, "--dataset", "digits", "--set", "stages=stem,stage1,stage2",
            "--set", "n_cull=1", "--set", "criticality_epochs=1", "--teacher-epochs", "1", "--set", "epochs=1",
            "--cache-dir", str(tmp_path)]
    assert linearize_main(argv) == 0
    out = capsys.readouterr().out
    assert "stages (named by stages=): S1 stem.2 (1 sites, 1,024 ReLUs); S2 " in out
    [record_path] = (tmp_path / "criticality").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["stage_sites"] == {"S1": ["stem.2"], "S2": ["stage1.0.relu", "stage1.0.relu_2"],
                                     "S3": ["stage2.0.relu", "stage2.0.relu_2"]}
    least = record["order"][0]
    relus = {"S1": 1_024, "S2": 2_048, "S3": 1_024}
    assert out.strip().splitlines()[-1].startswith(f"relus={4_096 - relus[least]} ")



@pytest.mark.parametrize("model, fixed, sampled", [
    ("resnet18", {}, {"n_cull", "thin", "alpha", "rho"}),
    (MY_MODEL, {}, {"n_cull", "thin", "alpha"}),  # width, no stem_stride
    ("plain_model:make", {}, {"n_cull"}),  # no residual block to thin, no width or stem stride
    ("resnet18", {"cull": ("S1",)}, {"thin", "alpha", "rho"}),  # named stages fixed: no n_cull beside them
])
def test_a_study_samples_only_the_plan_parts_that_apply_to_its_model(model: str, fixed: dict, sampled: set[str]) -> None:
    strategy = get_strategy("deepreduce")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_space({"deepreduce": strategy}, 4_096, "digits", {"deepreduce": fixed}, model, {})
    for _ in range(4):
        trial = study.ask()
        decided = space(trial)[TRIAL_KEY]
        assert "error" not in decided, decided
        assert {name.removeprefix("deepreduce/") for name in trial.params} == sampled
        strategy.parse_options({**decided["options"], **fixed})  # a consistent plan: cull and n_cull never both
