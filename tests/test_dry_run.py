"""``--dry-run``'s resolved recipes and compute estimate (:mod:`search.estimate`): each phase with its
epochs, a positive estimate, nothing trained or written; the phases a strategy declares are the ones
its run trains, config for config; the estimate is near the measured time of the same run; and
``search.run --dry-run`` estimates each strategy's first trial and the study without starting Ray."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import torch

import search.linearize
import search.run
import search.strategies.criticality
import search.strategies.cryptonas
import search.strategies.deepreduce
import search.strategies.snl
import search.teacher
from search import estimate
from search.cli import run_main
from search.data import dataset_info
from search.strategies import get_strategy
from search.train import TrainConfig, fit
from tests.conftest import PROJECT_ROOT, quick_estimates

UNITS = {"s": 1, "min": 60, "h": 3600, "days": 86400}
FIT_USERS = [search.teacher, search.strategies.snl, search.strategies.deepreduce, search.strategies.criticality,
             search.strategies.cryptonas]


def run_cli(module: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        run_main(module.main, argv)  # type: ignore[attr-defined]
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def seconds(line: str) -> float:
    """The duration at the end of an estimate line (``... : [up to] 3.5 min`` or ``... = 5.0 days``)."""
    match = re.search(r"(?:: |= |up to )([\d.]+) (s|min|h|days)(?: on \w+ \(|$)", line)
    assert match, line
    return float(match.group(1)) * UNITS[match.group(2)]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _tripwire(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("a dry run started training")


def test_linearize_dry_run_prints_each_phase_and_an_estimate_and_trains_nothing(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cache, out = tmp_path / "cache", tmp_path / "models" / "snl.pt"
    before = listing(tmp_path)
    with mock.patch.object(search.linearize, "execute_budgets", _tripwire), mock.patch.object(search.linearize, "execute", _tripwire), \
            mock.patch.object(search.teacher, "fit", _tripwire), mock.patch.object(search.strategies.snl, "fit", _tripwire):
        code, stdout, err = run_cli(search.linearize, ["--strategy", "snl", "--budget", "5%,10%", "--set", "finetune_epochs=3",
                                                       "--set", "train.epochs=4", "--cache-dir", str(cache), "--out", str(out),
                                                       "--dry-run"], capsys)
    assert code == 0 and err == "", err
    lines = stdout.splitlines()
    recipes = {line.split(" ")[1]: line for line in lines if line.startswith("recipe ")}
    assert list(recipes) == ["teacher", "mask", "finetune"]
    assert "epochs=15 optimizer=sgd" in recipes["teacher"]  # the digits teacher recipe
    assert "epochs=40 optimizer=adam lr=0.03" in recipes["mask"] and "Lasso" in recipes["mask"]
    assert "epochs=4 optimizer=sgd" in recipes["finetune"] and "2 runs" in recipes["finetune"]  # train.epochs over finetune_epochs
    phases = {line.split(":")[0]: line for line in lines if line.startswith("phase ")}
    assert phases["phase teacher"].startswith("phase teacher: 15 epochs x 16 steps of batch 64, ~")
    assert phases["phase mask"].startswith("phase mask: up to 40 epochs x 16 steps of batch 64, ~")
    assert phases["phase finetune x2"].startswith("phase finetune x2: 4 epochs x 16 steps of batch 64, ~")
    assert all(seconds(line) > 0 for line in phases.values())
    total = lines[-1]
    assert total.startswith("estimate: up to ") and " on cpu (" in total and "torch thread" in total, total
    assert seconds(total) == pytest.approx(sum(seconds(line) for line in phases.values()), rel=0.15)  # shown rounded
    assert listing(tmp_path) == before  # no --out file, nothing in the teacher cache


def test_a_cached_teacher_is_not_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strategy", "cryptonas", "--set", "kd_weight=1", "--set", "epochs=1", "--teacher-epochs", "1",
            "--cache-dir", str(tmp_path)]
    assert run_cli(search.linearize, argv, capsys)[0] == 0  # trains and caches the teacher
    code, stdout, _ = run_cli(search.linearize, [*argv, "--dry-run"], capsys)
    assert code == 0
    assert "phase teacher: not run (full-ReLU resnet_tiny; cached, a run loads it)" in stdout
    assert re.search(r"^phase train: 1 epoch x 16 steps of batch 64, ~", stdout, re.MULTILINE) and "KD from the teacher" in stdout


def test_a_strategy_without_declared_phases_has_no_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run_cli(search.linearize, ["--strategy", "tests.strategies_for_tests:Quick", "--dry-run"], capsys)
    assert code == 0, err
    assert stdout.splitlines()[-1] == ("estimate: unavailable: strategy quick does not declare its training phases "
                                       "(Strategy.phases)")
    assert "recipe teacher (full-ReLU resnet_tiny)" in stdout  # what is known is still shown


# The configs each strategy's run hands to fit, in order, against the phases it declares: one helper
# builds both, and this is the check that they do not drift apart.
@pytest.mark.parametrize("argv", [
    ["--strategy", "snl", "--budget", "30%,60%", "--set", "max_epochs=10", "--set", "finetune_epochs=1", "--set", "train.lr=0.002"],
    ["--strategy", "deepreduce", "--set", "n_cull=1", "--set", "epochs=1", "--set", "criticality_epochs=1",
     "--set", "train.nesterov=true"],
    ["--strategy", "cryptonas", "--set", "epochs=1", "--set", "kd_weight=0.5", "--set", "train.batch_size=100"],
], ids=["snl", "deepreduce", "cryptonas"])
def test_the_phases_declared_are_the_configs_a_run_trains_with(argv: list[str], tmp_path: Path) -> None:
    args = search.linearize.parse_with_config(search.linearize.build_parser(), [*argv, "--teacher-epochs", "1",
                                                                                  "--cache-dir", str(tmp_path)])
    prepared, _, _, budgets = search.linearize.checked_job(args)
    job, info = prepared.job, dataset_info(prepared.job.dataset)
    declared = [prepared.teacher_recipe] + [
        phase.config for phase in prepared.strategy.phases(prepared.model_name, prepared.model_options, info, budgets,
                                                           prepared.options, job.train_options)
        for _ in range(phase.runs)]
    trained: list[TrainConfig] = []

    def recording_fit(model, data, config, *rest, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(config)
        return fit(model, data, config, *rest, **kwargs)

    with mock.patch.multiple(search.teacher, fit=recording_fit), mock.patch.multiple(search.strategies.snl, fit=recording_fit), \
            mock.patch.multiple(search.strategies.deepreduce, fit=recording_fit), \
            mock.patch.multiple(search.strategies.criticality, fit=recording_fit), \
            mock.patch.multiple(search.strategies.cryptonas, fit=recording_fit):
        if len(budgets) > 1:  # as search.linearize runs them
            results = search.linearize.execute_budgets(prepared, budgets, log=lambda _line: None)
            assert not [r for r in results.values() if isinstance(r, Exception)], results
        else:
            search.linearize.execute(prepared, log=lambda _line: None)
    assert [replace(c, seed=0) for c in trained] == [replace(c, seed=0) for c in declared]


def test_the_estimate_is_near_the_measured_time_of_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real run of fixed epochs (DeepReDuce: the teacher, then the plan with KD) against its dry
    run. The factor is loose, 0.3x to 3x: this CPU is shared with other work (a step's time moves by
    tens of percent between runs), the CPU estimate extrapolates from batch 32 to the recipe's 64,
    and the run pays what the estimate leaves out (building models, the test evaluation, caching
    the teacher). An estimate off by a whole term (the steps per epoch, the epochs, the runs, the
    teacher forward) falls outside it."""
    argv = ["--strategy", "deepreduce", "--set", "cull=S1", "--set", "epochs=12", "--teacher-epochs", "12",
            "--cache-dir", str(tmp_path / "cache")]
    code, stdout, _ = run_cli(search.linearize, [*argv, "--dry-run"], capsys)
    assert code == 0
    estimated = seconds(stdout.splitlines()[-1])
    start = time.perf_counter()
    code, stdout, _ = run_cli(search.linearize, argv, capsys)
    measured = time.perf_counter() - start
    assert code == 0 and stdout.splitlines()[-1].startswith("relus=")
    assert 0.3 < estimated / measured < 3, f"estimated {estimated:.1f} s, measured {measured:.1f} s"


def test_extrapolation_through_two_timed_batches() -> None:
    assert estimate.extrapolate([(4, 0.4), (16, 1.0)], 128) == pytest.approx(0.2 + 0.05 * 128)
    assert estimate.extrapolate([(4, 0.4), (16, 1.0)], 16) == 1.0
    assert estimate.extrapolate([(4, 1.0), (16, 0.9)], 32) == pytest.approx(1.8)  # noise: a falling time, per image alone
    assert estimate.extrapolate([(4, 2.0)], 100) == pytest.approx(50.0)


def test_the_snl_recipe_estimates_days_of_cpu(cifar_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A GPU-days recipe (ResNet18: teacher, up to 2,000 mask epochs, six finetunes) estimates days of
    CPU time here, from steps extrapolated at small batches (how close such an estimate comes is the
    test of the real settings above)."""
    with quick_estimates():
        code, stdout, err = run_cli(search.linearize, ["--config", str(PROJECT_ROOT / "recipes" / "snl-resnet18-cifar10.yaml"),
                                                       "--data-dir", str(cifar_dir), "--dry-run"], capsys)
    assert code == 0, err
    assert seconds(stdout.splitlines()[-1]) > 86400  # days of CPU time


@pytest.fixture
def no_ray() -> object:
    """``search.study.cluster.connect`` as a tripwire: a dry run must not start Ray."""
    with mock.patch("search.study.cluster.connect", _tripwire) as patched:
        yield patched


def test_run_dry_run_estimates_each_first_trial_and_the_study(tmp_path: Path, no_ray: object,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, threads = tmp_path / "run", torch.get_num_threads()
    code, stdout, err = run_cli(search.run, ["--strategy", "all", "--trials", "9", "--concurrency", "1", "--run-dir",
                                             str(run_dir), "--cache-dir", str(tmp_path / "cache"), "--dry-run"], capsys)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("dry run: would run cryptonas, deepreduce, snl on resnet_tiny/digits")
    assert any(line.startswith("teacher: not cached") for line in lines)
    teacher = next(line for line in lines if line.startswith("teacher estimate (once: the trials share it): "))
    assert next(line for line in lines if line.startswith("phase teacher: 15 epochs x 16 steps of batch 64"))
    assert [line.split(" (")[0] for line in lines if line.startswith("first trial of ")] == [
        "first trial of cryptonas", "first trial of deepreduce", "first trial of snl"]
    assert "target 460 ReLUs" in next(line for line in lines if line.startswith("first trial of snl"))  # a tenth of 4,608
    trials = [line for line in lines if line.startswith("  estimate of the trial: ")]
    assert len(trials) == 3 and all(seconds(line) > 0 for line in trials)
    assert any(line.startswith("  phase mask: up to 40 epochs") for line in lines)
    study = lines[-1]
    assert study.startswith("study estimate (rough: sampled trials differ from the default recipes"), study
    match = re.search(r"= ([\d.]+) (s|min|h|days) of trial compute", study)
    assert match, study
    mean = sum(seconds(line) for line in trials) / 3
    study_seconds = float(match.group(1)) * UNITS[match.group(2)]
    assert study_seconds == pytest.approx(9 * mean + seconds(teacher), rel=0.2)  # 9 trials x the mean, + the teacher once
    assert not run_dir.exists() and not (tmp_path / "cache" / "teachers").exists()
    assert torch.get_num_threads() == threads  # timed with a trial's threads, then put back


def test_run_dry_run_with_path_sharing_counts_a_finetune_per_point_of_the_path(tmp_path: Path, no_ray: object,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run_cli(search.run, ["--strategy", "snl", "--path-sharing", "--run-dir", str(tmp_path / "run"),
                                             "--cache-dir", str(tmp_path / "cache"), "--dry-run"], capsys)
    assert code == 0, err
    assert "(its default recipe; what it leaves open, sampled; targets 460, 920, 1,840 ReLUs)" in stdout
    assert re.search(r"^  phase finetune x3: 10 epochs x 16 steps of batch 64, ~", stdout, re.MULTILINE), stdout


def test_run_dry_run_on_a_device_this_machine_lacks_says_so(tmp_path: Path, no_ray: object,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, stdout, err = run_cli(search.run, ["--strategy", "snl", "--device", "cuda", "--run-dir", str(tmp_path / "run"),
                                             "--cache-dir", str(tmp_path / "cache"), "--dry-run"], capsys)
    assert code == 0, err
    assert "  estimate of the trial: unavailable: device cuda was asked for but no CUDA device is available" in stdout
    assert stdout.splitlines()[-1] == "study estimate: unavailable: no estimate of snl, the teacher (see above)"


def test_every_builtin_strategy_declares_its_phases() -> None:
    info = dataset_info("digits")
    for name, budgets, options in [("snl", [460], {}), ("deepreduce", [], {"cull": "S1"}), ("cryptonas", [1000], {})]:
        strategy = get_strategy(name)
        phases = strategy.phases("resnet_tiny", {}, info, budgets, strategy.parse_options(options), {"epochs": 3})
        assert phases and phases[-1].config.epochs == 3  # train.KEY reaches the last phase only
