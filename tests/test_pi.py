"""Measured private inference (``search.pi``): export to the neutral graph, secure inference under SPU's
Cheetah with two real parties on 127.0.0.1, predictions equal to the plain model's, ReLU bytes that
scale with the kept count, and one-line refusals.

The export of every model space is checked against torch by evaluating the graph in plain JAX (fast);
secure runs are kept to a few small digits models, since each costs seconds per image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.pi.cli
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
from search.run import main as run_study_main
from search.spaces import build_model
from search.study import rundir
from tests.conftest import PROJECT_ROOT
from tests.helpers import cli, run_together
from tests.test_report import make_run

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


@pytest.fixture(scope="module")
def measured_runs(linearized: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """``python -m search.pi`` on each strategy's checkpoint, run together (:func:`tests.helpers.run_together`):
    most of each run is starting Python and compiling, which two cores overlap."""
    folder = tmp_path_factory.mktemp("measured")
    reports = {strategy: folder / f"{strategy}.json" for strategy in linearized}
    commands = {strategy: [sys.executable, "-m", "search.pi", str(path), "--images", "2", "--json", str(reports[strategy])]
                for strategy, path in linearized.items()}  # a steady state needs more images; not here
    done = run_together(commands, env=_env(), timeout=900)
    return {strategy: (done[strategy], reports[strategy]) for strategy in linearized}  # type: ignore[index]


@pytest.mark.parametrize("strategy", list(FAST))
def test_a_model_linearized_by_each_strategy_runs_under_spu_with_the_plain_predictions(
        strategy: str, linearized: dict[str, Path], measured_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]) -> None:
    proc, report = measured_runs[strategy]
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


@pytest.fixture(scope="module")
def kept_models(module_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One small model saved with two masks, keeping 128 and 384 positions; everything else the same."""
    folder = tmp_path_factory.mktemp("kept")
    torch.manual_seed(0)
    name = f"{MODULE}:two_convs"
    model = build_model(name, num_classes=10, input_size=(1, 8, 8))
    relu_count(model, (1, 8, 8))
    first, second = sites(model)
    paths = {}
    for kept_first, kept_second in ((128, 0), (256, 128)):
        for site, kept in ((first, kept_first), (second, kept_second)):
            mask = torch.zeros(site.size, dtype=torch.bool)
            mask[torch.randperm(site.size)[:kept]] = True
            site.set_mask(mask.reshape(site.shape))
        paths[kept_first + kept_second] = folder / f"kept{kept_first + kept_second}.pt"
        save_model(model, paths[kept_first + kept_second], name, {}, 10, (1, 8, 8), {"dataset": "digits", "strategy": "snl"})
    return paths


def test_relu_bytes_fall_exactly_with_the_kept_count(kept_models: dict[int, Path]) -> None:
    small, large = (measure_checkpoint(str(kept_models[n]), images=3) for n in (128, 384))
    assert small.relus == 128 and large.relus == 384 and small.matches and large.matches
    ratio = large.steady.bytes_by_kind["relu"] / small.steady.bytes_by_kind["relu"]
    assert abs(ratio / 3 - 1) < 0.02, ratio  # a few hundred bytes per site are fixed; the rest is per kept ReLU
    assert large.steady.bytes_by_kind["linear"] == pytest.approx(small.steady.bytes_by_kind["linear"], rel=0.01)


def test_semi2k_runs_the_same_model_with_the_plain_predictions(kept_models: dict[int, Path]) -> None:
    measured = measure_checkpoint(str(kept_models[128]), images=2, protocol="semi2k")
    assert measured.protocol == "semi2k" and measured.matches and measured.relus == 128
    assert measured.steady.bytes_by_kind["relu"] > 0 and measured.steady.bytes_by_kind["linear"] > 0
    assert max(i.logit_error for i in measured.images) < LOGIT_TOLERANCE


def test_report_measures_the_pareto_trials_and_keeps_the_measurements(kept_models: dict[int, Path], module_dir: Path,
                                                                      tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", [("snl", 128, 0.80, True, TrialState.COMPLETE),
                                          ("snl", 384, 0.90, True, TrialState.COMPLETE)], ["snl"], "pi-study", full=512,
                       budget=None)
    for number, kept in enumerate((128, 384)):
        shutil.copyfile(kept_models[kept], rundir.trial_model_path(run_dir, number))
    command = [sys.executable, "-m", "search.report", str(run_dir), "--measure-pi", "--pi-images", "2"]
    first = subprocess.run(command, check=False, capture_output=True, text=True, env=_env(module_dir), timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("under SPU cheetah") == 2 and (run_dir / "pi.png").stat().st_size > 10_000
    markdown = (run_dir / "report.md").read_text()
    section = markdown.split("## Measured private inference", 1)[1].split("## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| snl |")]
    assert len(rows) == 2 and all(line.endswith("| yes |") for line in rows)  # secure predictions = plain ones
    kept = [json.loads(rundir.trial_model_path(run_dir, n).with_name("pi-cheetah.json").read_text()) for n in (0, 1)]
    assert [k["relus"] for k in kept] == [128, 384]
    second = subprocess.run(command, check=False, capture_output=True, text=True, env=_env(module_dir), timeout=900)
    assert second.returncode == 0 and "under SPU" not in second.stderr  # the kept measurements are reused
    assert (run_dir / "report.md").read_text() == markdown


def _study(run_dir: Path, model: str, trials: int, module_dir: Path) -> subprocess.Popen[str]:
    """``python -m search.run`` with the measured objective, on this test's own model (single-node Ray)."""
    args = ["--strategy", "tests.strategies_for_tests:Quick", "--model", f"{MODULE}:{model}", "--trials", str(trials),
            "--objectives", "measured_communication", "--teacher-epochs", "2", "--concurrency", "2", "--sampler", "random",
            "--seed", "4", "--run-dir", str(run_dir), "-q"]
    env = {**_env(module_dir), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_study_minimizes_the_measured_communication_and_keeps_a_model_it_cannot_measure(
        module_dir: Path, tmp_path: Path) -> None:
    measured, refused = _study(tmp_path / "measured", "two_convs", 2, module_dir), _study(tmp_path / "refused", "hardswish_net", 1, module_dir)
    for proc in (measured, refused):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    settings = rundir.read_settings(tmp_path / "measured")
    study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.values[2] == attrs["measured_communication_mb"] > attrs["measured_relu_mb"] > 0
        assert attrs["measured_matches_plain"] is True and attrs["measured_seconds"] > 0
        log = (tmp_path / "measured" / attrs["model_path"]).with_name("log.txt").read_text()
        assert f"{attrs['measured_communication_mb']:,.3f} MB per inference" in log
    # The ReLU bytes follow each trial's own count: about 98 bytes per kept ReLU (the rest is per site).
    fewer, more = sorted(trials, key=lambda t: t.user_attrs["relus"])
    kept = more.user_attrs["relus"] - fewer.user_attrs["relus"]
    slope = (more.user_attrs["measured_relu_mb"] - fewer.user_attrs["measured_relu_mb"]) * 1e6 / kept
    assert kept > 100 and 90 < slope < 110, (kept, slope)

    settings = rundir.read_settings(tmp_path / "refused")
    (failed,) = optuna.load_study(study_name=settings.study_name, storage=settings.storage).get_trials()
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("measurement under SPU failed: cannot export Hardswish at ")
    assert rundir.trial_model_path(tmp_path / "refused", failed.number).exists()  # trained: kept, though unmeasured


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


@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_gets_one_error_line(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an empty folder; in-process (the entry point runs as a command above)
    code, out, err = cli(search.pi.cli, args)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message), err


@pytest.mark.parametrize("main,args", [
    (pi_main, ["any.pt"]),
    (run_study_main, ["--strategy", "snl", "--objectives", "measured_communication", "--run-dir", "run"]),
], ids=["search.pi", "search.run"])
def test_without_spu_the_commands_say_how_to_install_it(main, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys,
                                                        tmp_path: Path) -> None:
    real = search.pi.measure.importlib.util.find_spec
    monkeypatch.setattr(search.pi.measure.importlib.util, "find_spec", lambda name: None if name == "spu" else real(name))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: secure inference needs SPU, an optional extra: pip install -e '.[pi]'\n"
    assert list(tmp_path.iterdir()) == []  # nothing written: no run directory


def test_the_runner_needs_no_torch() -> None:
    code = "import sys, search.pi.runner, search.pi.graph; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
