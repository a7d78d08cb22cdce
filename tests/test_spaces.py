"""Model spaces and the published ReLU counts they must reproduce exactly."""

from __future__ import annotations

import subprocess

import pytest
import torch

import search.inspect
from search.errors import SearchError
from search.relu import relu_count, relu_table, stage_totals
from search.spaces import build_model, list_models
from tests.helpers import cli_result


def test_resnet18_counts_per_stage_at_32() -> None:
    rows = relu_table(build_model("resnet18"), (3, 32, 32))
    totals = {stage: active for stage, (active, _) in stage_totals(rows).items()}
    assert totals == {"stem": 65_536, "stage1": 262_144, "stage2": 131_072, "stage3": 65_536, "stage4": 32_768}
    assert sum(totals.values()) == 557_056


@pytest.mark.parametrize(
    ("name", "options", "shape", "expected"),
    [
        ("resnet18", {}, (3, 32, 32), 557_056),
        ("resnet18", {"stem_relu": False}, (3, 32, 32), 491_520),
        ("resnet18", {}, (3, 64, 64), 2_228_224),
        ("wrn22_8", {}, (3, 32, 32), 1_359_872),
        ("resnet18", {"width": 0.5, "stem_stride": 2}, (3, 32, 32), 557_056 // 8),
    ],
)
def test_published_counts(name: str, options: dict, shape: tuple[int, int, int], expected: int) -> None:
    model = build_model(name, input_size=shape, **options)
    assert relu_count(model, shape) == expected


TOTALS = [
    (["--model", "resnet18", "--input", "3x32x32"], 557_056),
    (["--model", "resnet18", "--input", "3x32x32", "--set", "stem_relu=false"], 491_520),
    (["--model", "resnet18", "--input", "3x64x64"], 2_228_224),
    (["--model", "wrn22_8", "--input", "3x32x32"], 1_359_872),
]
DEFAULTS = ["--dataset", "digits", "--sites"]
BAD_INPUT = [
    (["--model", "nope", "--input", "3x32x32"], "unknown model 'nope'; accepted: "),
    (["--model", "resnet18", "--input", "3x32"], "bad input shape '3x32'"),
    (["--model", "resnet18", "--input", "3x32x32", "--set", "depth=3"], "unknown option 'depth' for model resnet18"),
    (["--model", "resnet18", "--input", "3x32x32", "--set", "width=wide"], "bad value 'wide' for width: expected a number"),
    (["--model", "resnet18", "--input", "3x32x32", "--set", "stem_stride=3"], "expected one of 1, 2"),
    (["--model", "resnet18", "--input", "3x32x32", "--set", "width"], "--set expects key=value"),
    (["--model", "wrn22_8", "--input", "3x32x32", "--set", "depth=21"], "expected 6n+4"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--model", "resnet18"], "one of the arguments --input --dataset"),
]


Runs = dict[tuple[str, ...], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def inspected() -> Runs:
    """``search.inspect`` with each command line of the tests below, in-process (:func:`tests.helpers.cli_result`;
    other tests run its entry point as a command); each test checks the result of its own."""
    lines = [args for args, _ in TOTALS] + [DEFAULTS] + [args for args, _ in BAD_INPUT]
    return {tuple(args): cli_result(search.inspect, args) for args in lines}


@pytest.mark.parametrize(("args", "expected"), TOTALS)
def test_inspect_cli_prints_exact_totals(args: list[str], expected: int, inspected: Runs) -> None:
    done = inspected[tuple(args)]
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.strip().splitlines()[-1] == f"total_relus={expected}"
    assert ("stem ReLU: present" in out) == ("stem_relu=false" not in args and "wrn22_8" not in args)


def test_inspect_dataset_uses_the_default_model_and_input_shape(inspected: Runs) -> None:
    done = inspected[tuple(DEFAULTS)]
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "model resnet_tiny" in out and "input 1x8x8" in out and "stage1.0.relu2" in out
    assert out.strip().splitlines()[-1] == "total_relus=4608"


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_inspect_bad_input_is_one_line_and_exit_2(args: list[str], message: str, inspected: Runs) -> None:
    proc = inspected[tuple(args)]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_every_model_runs_forward_and_backward() -> None:
    for name in list_models():
        shape = (1, 8, 8) if name == "resnet_tiny" else (3, 16, 16)
        model = build_model(name, num_classes=7, input_size=shape, **({"widen_factor": 1, "depth": 10} if name.startswith("wrn") else {"width": 0.25} if "resnet" in name else {}))
        out = model(torch.randn(2, *shape))
        assert out.shape == (2, 7)
        out.sum().backward()


def test_build_model_rejects_bad_input_size() -> None:
    with pytest.raises(SearchError, match="input size"):
        build_model("resnet18", input_size=(3, 0, 32))
