"""Measured private inference (``search.pi``): export to the neutral graph, secure inference under SPU's
Cheetah with two real parties on 127.0.0.1, predictions equal to the plain model's, ReLU bytes that
scale with the kept count, and one-line refusals.

The export of every model space is checked against torch by evaluating the graph in plain JAX (fast);
secure runs are kept to a few small digits models, since each costs seconds per image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import search.pi.measure
from search.checkpoint import save_model
from search.cli import run_main
from search.errors import SearchError
from search.pi.cli import main as pi_main
from search.pi.export import export_model
from search.pi.graph import load_graph, save_graph
from search.pi.measure import measure_checkpoint
from search.pi.runner import plain_logits
from search.pipeline import Job, execute, prepare
from search.relu import relu_count, sites
from search.spaces import build_model
from tests.conftest import PROJECT_ROOT
from tests.helpers import run_together

LOGIT_TOLERANCE = 0.05  # SPU's fixed point (FM64, 18 fraction bits): errors seen are about 2e-3
MODULE = "pi_test_models"
FACTORIES = '''
from torch import nn


def two_convs(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8), width: int = 4) -> nn.Module:
    """Two convolutions with a ReLU after each: 2 x width x 64 ReLU positions on 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(input_size[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def hardswish_net(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> nn.Module:
    """A Hardswish, which secure inference here does not evaluate."""
    return nn.Sequential(nn.Conv2d(input_size[0], 4, 3, padding=1), nn.ReLU(), nn.Hardswish(),
                         nn.Flatten(), nn.Linear(256, num_classes))
'''


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory):
    """The test's own model module, importable here and (through PYTHONPATH) in subprocesses."""
    folder = tmp_path_factory.mktemp("pi_models")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(FACTORIES))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def _env(*paths: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), *map(str, paths)]))


def _pi(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m search.pi`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "search.pi", *args], check=False, capture_output=True, text=True, timeout=900,
                          env=_env(*([extra_path] if extra_path else [])))


def _randomise_batch_norms(model: torch.nn.Module) -> None:
    """Statistics far from the identity, so a wrong fold of batch norm shows in the outputs."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


# -- export: every space, checked against torch in plain JAX ----------------------------------------

SPACES = [
    ("resnet_tiny", (1, 8, 8), {}),
    ("resnet18", (3, 16, 16), {"width": 0.125}),
    ("wrn22_8", (3, 8, 8), {"depth": 10, "widen_factor": 1}),
    ("cnet", (1, 8, 8), {"layers": 6, "width": 4, "ops": ("sepconv3x3", "maxpool", "avgpool", "conv5x5", "sepconv5x5", "conv3x3"),
                         "skips": ("0-2", "1-4", "0-5")}),
]


@pytest.mark.parametrize("name,shape,options", SPACES, ids=[s[0] for s in SPACES])
def test_export_of_every_space_computes_what_the_model_computes(name, shape, options, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_size=shape, **options).eval()
    relu_count(model, shape)
    _randomise_batch_norms(model)
    found = sites(model)
    found[0].set_mask(torch.rand(found[0].mask_shape("pixel")) > 0.5)  # pixel mask
    found[1].switch_off()
    found[2].set_mask(torch.rand(found[2].mask_shape("channel")) > 0.5)  # channel mask
    graph = export_model(model, shape)
    assert graph.relus == relu_count(model, shape)
    save_graph(graph, tmp_path)
    loaded = load_graph(tmp_path)  # through the files, as the runner reads it
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(plain_logits(loaded, x.numpy()) - expected).max() < 1e-4
    ops = {n.op for n in loaded.nodes}
    assert "conv" in ops and "relu" in ops
    if name.startswith("resnet"):
        assert "affine" not in ops  # every batch norm follows a convolution that feeds only it: folded
    if name == "wrn22_8":
        assert "affine" in ops  # pre-activation batch norms follow additions: kept as their own nodes
    if name == "cnet":
        assert {"maxpool", "avgpool", "cat"} <= ops


def test_an_unknown_operation_is_refused_naming_it(module_dir: Path) -> None:
    model = build_model(f"{MODULE}:hardswish_net", num_classes=10, input_size=(1, 8, 8))
    with pytest.raises(SearchError, match=r"^cannot export Hardswish at \S+ for secure inference"):
        export_model(model, (1, 8, 8))


# -- secure inference -----------------------------------------------------------------------------

FAST = {
    "snl": Job("snl", "digits", budget=250, strategy_options={"max_epochs": "20", "finetune_epochs": "1"}, teacher_epochs=4),
    "deepreduce": Job("deepreduce", "digits", strategy_options={"cull": "S1", "thin": "false", "alpha": "1", "rho": "1",
                                                                 "epochs": "1"}, teacher_epochs=4),
    "cryptonas": Job("cryptonas", "digits", budget=1500, strategy_options={"epochs": "1"}),
}


@pytest.fixture(scope="module")
def linearized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One digits checkpoint per strategy, trained briefly: what a user would measure."""
    folder = tmp_path_factory.mktemp("linearized")
    paths = {}
    for strategy, job in FAST.items():
        paths[strategy] = folder / f"{strategy}.pt"
        job.out = str(paths[strategy])
        execute(prepare(job), log=lambda _: None)
    return paths


@pytest.mark.parametrize("strategy", list(FAST))
def test_a_model_linearized_by_each_strategy_runs_under_spu_with_the_plain_predictions(
        strategy: str, linearized: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "pi.json"
    proc = _pi(str(linearized[strategy]), "--images", "2", "--json", str(report))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "predictions match the plain model's on 2 image(s)" in proc.stdout
    assert "image 2/2" in proc.stderr  # progress while it runs
    measured = json.loads(report.read_text())
    saved = torch.load(linearized[strategy], weights_only=True)["info"]
    assert measured["strategy"] == strategy and measured["relus"] == saved["relus"] > 0
    assert measured["matches_plain"] and all(i["predicted"] == i["plain_predicted"] for i in measured["images"])
    assert max(i["logit_error"] for i in measured["images"]) < LOGIT_TOLERANCE
    first, warm = measured["images"]
    assert first["total_bytes"] > warm["total_bytes"] > 0  # the first inference carries the protocol's setup
    assert warm["bytes_by_kind"]["relu"] > 0 and warm["bytes_by_kind"]["linear"] > 0
    assert warm["bytes_by_kind"]["other"] == 0  # additions, concatenations and reshapes are local


def test_relu_bytes_fall_exactly_with_the_kept_count(module_dir: Path, tmp_path: Path) -> None:
    """One model, two masks: 128 and 384 kept positions. Everything else is the same network."""
    torch.manual_seed(0)
    name = f"{MODULE}:two_convs"
    model = build_model(name, num_classes=10, input_size=(1, 8, 8))
    relu_count(model, (1, 8, 8))
    first, second = sites(model)
    measured = {}
    for kept_first, kept_second in ((128, 0), (256, 128)):
        for site, kept in ((first, kept_first), (second, kept_second)):
            mask = torch.zeros(site.size, dtype=torch.bool)
            mask[torch.randperm(site.size)[:kept]] = True
            site.set_mask(mask.reshape(site.shape))
        path = tmp_path / f"kept{kept_first + kept_second}.pt"
        save_model(model, path, name, {}, 10, (1, 8, 8), {"dataset": "digits"})
        measured[kept_first + kept_second] = measure_checkpoint(str(path), images=2)
    small, large = measured[128], measured[384]
    assert small.relus == 128 and large.relus == 384 and small.matches and large.matches
    ratio = large.warm_mean(lambda i: i.bytes_by_kind["relu"]) / small.warm_mean(lambda i: i.bytes_by_kind["relu"])
    assert abs(ratio / 3 - 1) < 0.02, ratio  # a few hundred bytes per site are fixed; the rest is per kept ReLU
    assert large.warm_mean(lambda i: i.bytes_by_kind["linear"]) == pytest.approx(
        small.warm_mean(lambda i: i.bytes_by_kind["linear"]), rel=0.01)


def test_a_checkpoint_with_an_unknown_operation_is_refused_in_one_line(module_dir: Path, tmp_path: Path) -> None:
    name = f"{MODULE}:hardswish_net"
    model = build_model(name, num_classes=10, input_size=(1, 8, 8))
    relu_count(model, (1, 8, 8))
    save_model(model, tmp_path / "hs.pt", name, {}, 10, (1, 8, 8), {"dataset": "digits"})
    proc = _pi(str(tmp_path / "hs.pt"), extra_path=module_dir)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: cannot export Hardswish at "), proc.stderr


BAD_INPUT = [
    (["missing.pt"], "error: checkpoint missing.pt does not exist"),
    (["x.pt", "--images", "0"], "error: argument --images: expected an integer from 1 to 10,000, got '0'"),
    (["x.pt", "--protocol", "aby3"], "error: argument --protocol: invalid choice: 'aby3'"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """The command lines of the test below, run together up front (:func:`tests.helpers.run_together`)
    in an empty folder; each case checks the result of its own."""
    commands = {tuple(args): [sys.executable, "-m", "search.pi", *args] for args, _ in BAD_INPUT}
    return run_together(commands, cwd=tmp_path_factory.mktemp("pi-bad-input"), env=_env(), timeout=300)  # type: ignore[return-value]


@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_gets_one_error_line(args: list[str], message: str,
                                       bad_input_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]]) -> None:
    proc = bad_input_runs[tuple(args)]
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr


def test_without_spu_the_command_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    real = search.pi.measure.importlib.util.find_spec
    monkeypatch.setattr(search.pi.measure.importlib.util, "find_spec", lambda name: None if name == "spu" else real(name))
    with pytest.raises(SystemExit) as exit_info:
        run_main(pi_main, [str(tmp_path / "any.pt")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: secure inference needs SPU, an optional extra: pip install -e '.[pi]'\n"


def test_the_runner_needs_no_torch() -> None:
    code = "import sys, search.pi.runner, search.pi.graph; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
