"""The papers' recipes under ``recipes/``: each names its source and published points that exist in
the reference table, and each dry-runs (on the CIFAR-10 subset, the only CIFAR data here), planning
the published network's exact ReLU count and showing every training phase with its epochs and a
compute estimate. Also ``--config`` itself: ``about`` and ``--set`` merging."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from search.cli import run_main
from search.linearize import main as linearize_main
from tests.conftest import quick_estimates

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((PROJECT_ROOT / "recipes").glob("*.yaml"))
PUBLISHED = PROJECT_ROOT / "search" / "reference" / "published_pareto.csv"


def published_points() -> set[tuple[str, str, int, float]]:
    with PUBLISHED.open() as handle:
        return {(row["method"], row["dataset"], int(row["relus"]), float(row["top1"])) for row in csv.DictReader(handle)}


def run_linearize(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        run_main(linearize_main, list(args))
    captured = capsys.readouterr()
    return int(exited.value.code), captured.out, captured.err


def test_the_published_setups_are_all_there() -> None:
    names = {path.stem for path in RECIPES}
    assert {"snl-resnet18-cifar100", "snl-resnet18-cifar10"} <= names
    assert {f"cryptonas-cnet{i}-cifar10" for i in (1, 2, 3)} <= names
    assert len([n for n in names if n.startswith("deepreduce-resnet18-cifar100-")]) == 7  # the released plans


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_names_its_source_and_points_of_the_reference_table(path: Path) -> None:
    recipe = yaml.safe_load(path.read_text())
    about = recipe["about"]
    assert about["source"].strip() and recipe["strategy"] in path.stem
    points = about["reproduces"]
    if not points:
        assert about["missing"].strip()  # says why no published point is given
    table = published_points()
    for point in points:
        assert (point["method"], point["dataset"], point["relus"], point["top1"]) in table
        assert point["dataset"] == recipe["dataset"]


@pytest.fixture
def quick() -> Iterator[None]:
    """These tests read the phases and the estimate's form, not its accuracy."""
    with quick_estimates():
        yield


# Each recipe's phases as its dry run prints them: name -> the start of its line (epochs, steps of the
# 9,000 training images of the CIFAR-10 subset, batch), and a field its resolved recipe must show.
SNL_PHASES = {"teacher": "160 epochs x 36 steps of batch 256", "mask": "up to 2,000 epochs x 71 steps of batch 128",
              "finetune x6": "100 epochs x 71 steps of batch 128"}
PHASES = {
    "snl": (SNL_PHASES, "recipe teacher (full-ReLU resnet18): epochs=160 optimizer=sgd lr=0.1"),
    "deepreduce": ({"teacher": "200 epochs x 71 steps of batch 128", "train": "200 epochs x 71 steps of batch 128"},
                   "nesterov=true weight_decay=0.0001 batch_size=128 schedule=step"),
    "cryptonas": ({"train": "310 epochs x 90 steps of batch 100"},
                  ("schedule=restarts min_lr=0.001 milestones=none gamma=0.1 restart_epochs=10 restart_mult=2 grad_clip=5.0 "
                   "clip_mode=per_tensor")),
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_dry_runs_and_plans_the_published_count(path: Path, cifar_dir: Path, quick: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipe = yaml.safe_load(path.read_text())
    args = ["--config", str(path), "--data-dir", str(cifar_dir), "--dry-run"]
    if recipe["dataset"] != "cifar10":  # only the CIFAR-10 subset is here; class count does not change a ReLU count
        args += ["--dataset", "cifar10"]
    code, out, err = run_linearize(capsys, *args)
    assert code == 0, err
    assert out.startswith(f"config {path}\n  source: ") and "dry run (nothing is trained or written)" in out
    counts = [point["relus"] for point in recipe["about"]["reproduces"]]
    if recipe["strategy"] == "snl":
        budgets = re.search(r"budgets ([\d, ]+)\n", out).group(1)  # type: ignore[union-attr]
        assert [int(b.replace(",", "")) for b in budgets.split(", ")] == counts
        assert "491,520 ReLUs" in out  # ResNet18 without the stem ReLU, as SNL's
    else:
        planned = int(re.search(r"([\d,]+) ReLUs \((?:as set|budget none)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
        network = int(re.search(r"([\d,]+) ReLUs at 32x32", recipe["about"]["network"]).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert planned == network and all(count == network for count in counts)
    phases, field = PHASES[recipe["strategy"]]
    lines = out.splitlines()
    shown = {line.split(":")[0].removeprefix("phase "): line.split(": ", 1)[1] for line in lines if line.startswith("phase ")}
    assert list(shown) == list(phases), out
    for name, start in phases.items():
        assert shown[name].startswith(f"{start}, ~"), shown[name]
    assert field in out
    total = re.fullmatch(r"estimate: (up to )?([\d.]+) (s|min|h|days) on cpu \(.*torch thread.*\)", lines[-1])
    assert total and float(total.group(2)) > 0 and bool(total.group(1)) == (recipe["strategy"] == "snl"), lines[-1]


def test_command_line_set_replaces_the_config_entry_of_that_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("about: {source: a test}\nstrategy: snl\nbudget: 10%\nset: [max_epochs=5, finetune_epochs=2]\n")
    code, out, err = run_linearize(capsys, "--config", str(config), "--set", "max_epochs=7", "--dry-run")
    assert code == 0, err
    assert "max_epochs=7" in out and "finetune_epochs=2" in out and "max_epochs=5" not in out
    assert out.splitlines()[:2] == [f"config {config}", "  source: a test"]


@pytest.mark.parametrize("text, named", [
    ("about: [a, b]\nstrategy: snl\n", "about"),
    ("strategy: snl\nbudgett: 10%\n", "budgett"),
    ("budget: 10%\n", "--strategy is required"),
])
def test_bad_config_gives_one_error_line(text: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, out, err = run_linearize(capsys, "--config", str(config), "--dry-run")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and named in err and len(err.strip().splitlines()) == 1
