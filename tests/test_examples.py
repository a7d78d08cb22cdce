"""The examples run as a user runs them: the strategy plug-in installed with pip and found by its
entry point, the user model module found by its import path, both through the CLIs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples"
FAST = ["--dataset", "digits", "--budget", "10%", "--teacher-epochs", "1"]


def cli(module: str, *args: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(PROJECT_ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plug-in package installed by pip (its own build, its entry point declared) into a folder."""
    target = tmp_path_factory.mktemp("plugin")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
                    str(EXAMPLES / "strategy_plugin")], check=True, capture_output=True, timeout=300)
    assert list(target.glob("search_random_drop-*.dist-info/entry_points.txt"))
    return target


def test_the_installed_plugin_is_listed_and_runs_by_name(plugin: Path) -> None:
    listed = cli("search.inspect", "--list", path=plugin)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^strategy random_drop\b", listed.stdout, re.M), listed.stdout[-2000:]
    done = cli("search.linearize", "--strategy", "random_drop", *FAST, "--set", "epochs=1", path=plugin)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "random_drop: kept 460 random ReLU positions" in done.stdout
    assert re.fullmatch(r"relus=460 val_acc=[\d.]+ test_acc=[\d.]+", done.stdout.strip().splitlines()[-1])


def test_the_user_model_runs_through_inspect_and_linearize(tmp_path: Path) -> None:
    shown = cli("search.inspect", "--model", "my_model:make_net", "--dataset", "digits", "--set", "width=8", path=EXAMPLES)
    assert shown.returncode == 0, shown.stderr
    # stem 8x8x8, two ReLUs in a block at 8 channels, 8x8; two at 16 channels, 4x4: 512 + 1,024 + 512
    assert shown.stdout.strip().splitlines()[-1] == "total_relus=2048"
    out = tmp_path / "mine.pt"
    done = cli("search.linearize", "--strategy", "snl", "--model", "my_model:make_net", *FAST, "--set", "width=8",
               "--set", "finetune_epochs=1", "--out", str(out), path=EXAMPLES)
    assert done.returncode == 0, done.stderr[-2000:]
    relus = int(re.fullmatch(r"relus=(\d+) val_acc=[\d.]+ test_acc=[\d.]+", done.stdout.strip().splitlines()[-1]).group(1))  # type: ignore[union-attr]
    assert relus <= 204 and out.is_file()
