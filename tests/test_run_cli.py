"""``python -m search.run`` refuses bad input with one ``error:`` line and exit code 2, before training.

Two cases run the real command in a subprocess; the rest call the same entry point in-process (no
Ray starts for any of them: every check comes first), which keeps the file fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import run_main
from search.run import build_parser, main
from search.study import rundir
from tests.conftest import PROJECT_ROOT, quick_estimates

QUICK = "tests.strategies_for_tests:Quick"


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The single error line of ``python -m search.run argv`` (asserting exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def fake_run(run_dir: Path, objectives: list[str]) -> None:
    """A run directory as a study leaves it (settings only), to resume."""
    run_dir.mkdir(parents=True)
    rundir.write_settings(run_dir, rundir.RunSettings(
        study_name="old-0001", storage=rundir.storage_url(run_dir), strategies=[QUICK], dataset="digits",
        model="resnet_tiny", model_options={}, objectives=objectives, directions=["maximize"] + ["minimize"] * (len(objectives) - 1),
        budget=None, full_relus=4608, stem_relu=True, cost_model="delphi", sampler="tpe", seed=0, trials=2, created="now",
    ))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--strategy", "nope"], "unknown strategy 'nope'; accepted:"),
        (["--strategy", QUICK, "--sampler", "annealing"], "unknown sampler 'annealing'; accepted: tpe, nsga2, gp, random"),
        (["--strategy", QUICK, "--objectives", "speed"], "unknown objective 'speed'; accepted: accuracy, relus, latency, communication"),
        (["--strategy", QUICK, "--cost-model", "fast"], "bad cost model 'fast'"),
        (["--strategy", QUICK, "--budget", "0"], "budget 0 is out of range"),
        (["--strategy", QUICK, "--trials", "0"], "bad value 0 for --trials"),
        (["--strategy", QUICK, "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--strategy", QUICK, "--set", "colour=red"], "unknown option 'colour'"),
        (["--strategy", QUICK, "--address", "nowhere"], "bad --address 'nowhere': expected auto or host:port"),
        (["--strategy", QUICK, "--storage", "notaurl"], "cannot open study storage 'notaurl'"),
        (["--resume"], "--resume needs --run-dir"),
    ],
)
def test_bad_input_is_one_error_line(argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails([*argv, "--run-dir", str(tmp_path / "run")] if "--resume" not in argv else argv, capsys)
    assert expected in line
    assert not (tmp_path / "run" / rundir.SETTINGS_FILE).exists()


def test_a_strategy_with_every_searched_option_fixed_over_the_budget_is_refused_before_ray(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixed = ["--set", "cull=S1", "--set", "thin=true", "--set", "alpha=1", "--set", "rho=1"]
    line = fails(["--strategy", "deepreduce", "--budget", "100", *fixed, "--run-dir", str(tmp_path / "run")], capsys)
    assert line == ("error: every trial of deepreduce would run the same plan (--set fixes all it searches): deepreduce plan "
                    "cull=S1 thin=true alpha=1 rho=1 has 768 ReLUs, over the budget of 100; cull more stages, thin, lower "
                    "alpha or rho, or leave them unset so the budget picks them")
    assert not (tmp_path / "run").exists()
    # with thin, alpha and rho left to the sampler, some trials may fit: the run is not refused (checked by dry run)
    with quick_estimates(), pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--strategy", "deepreduce", "--budget", "100", "--set", "cull=S1", "--run-dir", str(tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out
    assert "  the study records this trial infeasible, untrained (deepreduce plan cull=S1 thin=true alpha=1 rho=1 has 768 " \
           "ReLUs, over the budget of 100" in out.out, out
    assert out.out.rstrip().endswith("study estimate: unavailable: no estimate of deepreduce (see above)") and out.err == ""


def test_unreachable_address_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, and no traffic leaves the machine.
    line = fails(["--strategy", QUICK, "--address", "127.0.0.1:1", "--run-dir", str(tmp_path / "run")], capsys)
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in line


def test_resume_of_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"run directory {tmp_path / 'none'} does not exist" in fails(["--resume", "--run-dir", str(tmp_path / "none")], capsys)


def test_resume_with_other_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "run", ["accuracy", "relus"])
    line = fails(["--resume", "--run-dir", str(tmp_path / "run"), "--objectives", "latency"], capsys)
    assert "has objectives accuracy,relus, not accuracy,relus,latency" in line
    line = fails(["--resume", "--run-dir", str(tmp_path / "run"), "--sampler", "random"], capsys)
    assert "was made with --sampler tpe, not random" in line


def test_existing_run_dir_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "run", ["accuracy", "relus"])
    before = (tmp_path / "run" / rundir.SETTINGS_FILE).read_text()
    line = fails(["--strategy", QUICK, "--run-dir", str(tmp_path / "run")], capsys)
    assert "already exists; pass --resume" in line
    assert (tmp_path / "run" / rundir.SETTINGS_FILE).read_text() == before


def test_read_only_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        readonly.chmod(0o500)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)]).returncode != 0:
        pytest.skip("cannot mount a read-only filesystem here")
    try:
        line = fails(["--strategy", QUICK, "--run-dir", str(readonly / "run")], capsys)
        assert f"cannot write run directory {readonly / 'run'}" in line
    finally:
        subprocess.run(["umount", str(readonly)], capture_output=True)


def test_real_command_line_error_and_exit_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "search.run", "--strategy", "nope", "--run-dir", str(tmp_path / "run")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown strategy 'nope'") and len(done.stderr.strip().splitlines()) == 1


def test_help_explains_every_option() -> None:
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"option {action.option_strings} has no help"
    text = parser.format_help()
    for option in ("--strategy", "--resume", "--address", "--run-dir", "--storage", "--cost-model", "--sampler",
                   "--objectives", "--budget", "--gpus-per-trial", "--cpus-per-trial", "--concurrency", "--cache-dir"):
        assert option in text



def test_set_routes_model_and_fixed_strategy_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from search.run import new_settings

    coarse = "tests.strategies_for_tests:Coarse"
    one = build_parser().parse_args(["--strategy", QUICK, "--set", "epochs=2", "--set", "width=0.5"])
    settings = new_settings(one, tmp_path / "a", "sqlite:///unused.db")
    assert settings.model_options == {"width": 0.5} and settings.extra["fixed_options"] == {QUICK: {"epochs": 2}}
    two = build_parser().parse_args(["--strategy", f"{QUICK},{coarse}", "--set", "quick.epochs=3", "--set", "coarse.off=2"])
    settings = new_settings(two, tmp_path / "b", "sqlite:///unused.db")
    assert settings.extra["fixed_options"] == {QUICK: {"epochs": 3}, coarse: {"off": 2}}
    assert "unknown option 'nope'" in fails(["--strategy", f"{QUICK},{coarse}", "--set", "quick.nope=1",
                                             "--run-dir", str(tmp_path / "c")], capsys)


def test_progress_line_shows_the_options_the_trial_ran_with() -> None:
    """A fixed --set option overrides the sampled value; the line shows the value that was used."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.run import describe_trial

    trial = create_trial(
        state=TrialState.COMPLETE, values=[0.5, 100.0],
        params={"snl/lr": 0.0003, "snl/lam": 0.002},
        distributions={"snl/lr": FloatDistribution(1e-4, 1e-1, log=True), "snl/lam": FloatDistribution(1e-5, 1e-1, log=True)},
        user_attrs={"strategy": "snl", "options": {"lr": 0.01, "lam": 0.002}, "seconds": 3.0},
    )
    line = describe_trial(trial, ["accuracy", "relus"])
    assert "lr=0.01," in line and "lam=0.002" in line and "0.0003" not in line


def test_pareto_table_rounds_options_as_the_progress_lines_do() -> None:
    from optuna.trial import TrialState, create_trial

    from search.objectives import cost_model, objectives
    from search.run import pareto_table

    trial = create_trial(state=TrialState.COMPLETE, values=[0.9585, 60.0], user_attrs={
        "strategy": "snl", "test_acc": 0.9749, "options": {"lam": 0.013449326615130807, "granularity": "channel"}})
    row = pareto_table([trial], objectives([], cost_model("delphi"))).splitlines()[1]
    assert row.endswith("granularity=channel, lam=0.01345"), row
