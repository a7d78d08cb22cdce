"""Pareto reports from real run directories: run.json via rundir.write_settings, real SQLite Optuna storage."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.errors import SearchError
from search.report import make_report, write_report
from search.reporting.intervals import accuracy_interval, wilson
from search.reporting.load import load_run
from search.reporting.model import build_report
from search.study import rundir
from search.study.rundir import RunSettings

FULL = 10_000
BUDGET = 6_000
SPLIT = 50_000  # images per split in the fake runs: large enough that every lead of 1 point or more is beyond noise
TEACHER = (0.97, 0.96)  # the fake runs' full-ReLU teacher: validation and test accuracy
REPORT_FILES = ("report.html", "report.md", "pareto.png", "trials.csv")

# (strategy, relus, val_acc, feasible, state); params are namespaced per strategy as in a real study.
STUDY_A = [
    ("snl", 100, 0.80, True, TrialState.COMPLETE),
    ("snl", 1000, 0.90, True, TrialState.COMPLETE),
    ("snl", 1000, 0.85, True, TrialState.COMPLETE),
    ("snl", 5000, 0.88, True, TrialState.COMPLETE),
    ("deepreduce", 300, 0.84, True, TrialState.COMPLETE),
    ("deepreduce", 2000, 0.92, True, TrialState.COMPLETE),
    ("deepreduce", 8000, 0.95, False, TrialState.COMPLETE),
    ("deepreduce", None, None, True, TrialState.FAIL),
    ("snl", 7000, None, False, TrialState.PRUNED),  # its plan was over the budget: never trained
]
STUDY_B = [
    ("cryptonas", 400, 0.86, True, TrialState.COMPLETE),
    ("cryptonas", 3000, 0.93, True, TrialState.COMPLETE),
]


def make_run(run_dir: Path, trials: list[tuple], strategies: list[str], name: str, dataset: str = "digits",
             model: str = "resnet_tiny", full: int = FULL, budget: int | None = BUDGET, more_attrs: dict | None = None,
             split: int | None = SPLIT, teacher: tuple[float, float] | None = TEACHER) -> Path:
    """A run directory as search.run leaves it: run.json, study.db with real trials, saved models.

    ``more_attrs`` maps a trial number to extra user attributes (e.g. ``rerun_of``). Completed trials
    record ``split`` validation and test images and the ``teacher``'s accuracies; None leaves them out,
    as runs written before those records did (or, for the teacher, runs whose trials never fetched it)."""
    run_dir.mkdir(parents=True)
    settings = RunSettings(
        study_name=name,
        storage=rundir.storage_url(run_dir),
        strategies=strategies,
        dataset=dataset,
        model=model,
        model_options={"width": 8},
        objectives=["accuracy", "relus"],
        directions=["maximize", "minimize"],
        budget=budget,
        full_relus=full,
        stem_relu=True,
        cost_model="delphi",
        sampler="tpe",
        seed=7,
        trials=len(trials),
        created="2026-11-22T04:00:00+00:00",
        versions={"search": "0.1.0", "optuna": optuna.__version__},
    )
    rundir.write_settings(run_dir, settings)
    study = optuna.create_study(study_name=name, storage=settings.storage, directions=settings.directions)
    for number, (strategy, relus, acc, feasible, state) in enumerate(trials):
        params: dict = {f"{strategy}/lam": 1e-5 * (number + 1), f"{strategy}/epochs": number + 1}
        dists: dict = {f"{strategy}/lam": FloatDistribution(1e-6, 1e-3, log=True), f"{strategy}/epochs": IntDistribution(1, 1000)}
        if len(strategies) > 1:
            params["strategy"], dists["strategy"] = strategy, CategoricalDistribution(strategies)
        attrs: dict = {"strategy": strategy, "seconds": 60.0 + number, "options": {"lam": params[f"{strategy}/lam"],
                       "epochs": number + 1, "finetune_epochs": 2}}
        attrs |= (more_attrs or {}).get(number, {})
        constraints = {"relus_over_budget": relus - budget} if relus is not None and budget is not None else None
        if state == TrialState.COMPLETE:
            model = rundir.trial_model_path(run_dir, number)
            model.parent.mkdir(parents=True)
            model.write_bytes(b"weights")
            attrs |= {"relus": relus, "val_acc": acc, "test_acc": acc - 0.01, "feasible": feasible,
                      "model_path": str(model.relative_to(run_dir)), "latency_s": relus * 24.6e-6,
                      "communication_mb": relus * 1184 / 1e6}
            if split is not None:
                attrs |= {"val_images": split, "test_images": split}
            if teacher is not None:
                attrs |= {"teacher_val_acc": teacher[0], "teacher_test_acc": teacher[1]}
            study.add_trial(create_trial(state=state, values=[acc, relus], params=params, distributions=dists, user_attrs=attrs,
                                         constraints=constraints))
        elif state == TrialState.PRUNED and "prune_reason" in attrs:  # stopped early by the rung rule
            study.add_trial(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs))
        elif state == TrialState.PRUNED:
            attrs |= {"relus": relus, "feasible": False, "infeasible_reason": f"plan has {relus:,} ReLUs, over the budget"}
            study.add_trial(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs,
                                         constraints=constraints))
        else:
            attrs["fail_reason"] = "loss became NaN"
            study.add_trial(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs))
    return run_dir


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run-a", STUDY_A, ["snl", "deepreduce"], "study-a")


@pytest.fixture
def run_b(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run-b", STUDY_B, ["cryptonas"], "study-b")


def fronts(report) -> dict[str, list[tuple[int, float]]]:
    return {s.name: [(t.relus, t.val_acc) for t in s.front] for s in report.series}


def test_model_fronts_hypervolumes_and_ladder(run_a: Path) -> None:
    report = make_report([run_a])
    assert fronts(report) == {"snl": [(100, 0.80), (1000, 0.90)], "deepreduce": [(300, 0.84), (2000, 0.92)]}
    snl, dr = report.series
    # Hand-computed: x = log10(ReLUs)/log10(10,000), y = 1 - acc, reference (1, 1).
    # snl: x = 0.5, 0.75; y = 0.2, 0.1 -> (1-0.5)(1-0.2) + (1-0.75)(0.2-0.1) = 0.4 + 0.025.
    assert snl.hypervolume == pytest.approx(0.425)
    x1, x2 = math.log10(300) / 4, math.log10(2000) / 4
    assert dr.hypervolume == pytest.approx((1 - x1) * (1 - 0.16) + (1 - x2) * (0.16 - 0.08))
    assert (snl.trials, snl.finished, snl.failed, snl.over_budget, snl.stopped_early) == (5, 4, 0, 1, 0)
    assert (dr.trials, dr.finished, dr.failed, dr.over_budget) == (4, 3, 1, 1)
    assert snl.compute_s == pytest.approx(60 + 61 + 62 + 63 + 68)
    ladder = {row.relus: row for row in report.relu_ladder.rows}
    assert sorted(ladder) == [100, 200, 500, 1000, 2500, 5000, BUDGET, FULL]
    expected = {100: ("snl", None), 500: ("deepreduce", 0.04), 1000: ("snl", 0.06), 2500: ("deepreduce", 0.02),
                FULL: ("deepreduce", 0.02)}
    for limit, (winner, margin) in expected.items():
        assert ladder[limit].winners == (winner,)
        assert ladder[limit].margin == (None if margin is None else pytest.approx(margin))
    assert ladder[100].cells["deepreduce"] is None
    assert ladder[FULL].cells["deepreduce"].number == 5  # the 8,000-ReLU trial is over budget: never a winner
    overall = sorted((t.relus, t.number) for t in report.trials if t.on_overall_front)
    assert overall == [(100, 0), (300, 4), (1000, 1), (2000, 5)]
    delphi = {row.label: row for row in report.latency_ladders[0].rows}
    assert delphi["≤ 20 ms"].relus == 813 and delphi["≤ 20 ms"].winners == ("deepreduce",)
    assert report.latency_ladders[1].title.endswith("(cheetah)")
    assert report.published == ()  # digits has no published figures
    pareto = report.pareto_trials
    assert [t.number for t in pareto] == [0, 1, 4, 5] and all(t.model_present for t in pareto)


def test_trials_stopped_early_are_counted_apart_from_failed_and_over_budget(tmp_path: Path) -> None:
    trials = [("snl", 100, 0.80, True, TrialState.COMPLETE), ("snl", None, None, True, TrialState.PRUNED)]
    stopped = {"prune_reason": "dominated at 25% of finetune (epoch 3/10): val_acc 0.70 with 200 ReLUs"}
    run_dir = make_run(tmp_path / "run", trials, ["snl"], "stopped", more_attrs={1: stopped})
    (snl,) = make_report([run_dir]).series
    assert (snl.trials, snl.finished, snl.failed, snl.over_budget, snl.stopped_early) == (2, 1, 0, 0, 1)
    write_report([run_dir])
    md = (run_dir / "report.md").read_text()
    assert "| finished | failed | over budget | stopped early | on front |" in md
    assert "| snl | run | 2 | 1 | 0 | 0 | 1 | 1 |" in md


def test_all_four_files_written(run_a: Path) -> None:
    html_path = write_report([run_a])
    assert html_path == run_a / "report.html"
    for name in REPORT_FILES:
        assert (run_a / name).stat().st_size > 0, name
    assert (run_a / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    assert "<script src=" not in page and "<link" not in page  # self-contained: opens offline
    assert "Plotly.newPlot" in page and "0.425" in page
    md = (run_a / "report.md").read_text()
    assert "## Best validation accuracy at ≤ B ReLUs" in md and "**90.00% ★" in md
    assert "the stem ReLU is counted" in md and "| seed | 7 |" in md
    rows = list(csv.DictReader((run_a / "trials.csv").open()))
    assert len(rows) == len(STUDY_A)
    assert rows[7]["state"] == "FAIL" and rows[7]["fail_reason"] == "loss became NaN"
    assert rows[6]["feasible"] == "False" and rows[6]["values_relus"] == "8000.0"
    assert rows[0]["params_snl/lam"] == repr(1e-5) and rows[0]["on_front"] == "True"
    assert json.loads(rows[0]["user_attrs_options"])["finetune_epochs"] == 2
    assert rows[8]["state"] == "PRUNED" and rows[8]["user_attrs_infeasible_reason"].startswith("plan has 7,000")
    assert "| snl/epochs=1, snl/lam=1e-05 | epochs=1, finetune_epochs=2, lam=1e-05 |" in md
    assert not [p for p in run_a.iterdir() if p.name.endswith(".tmp")]


def test_merged_report_holds_both_runs(run_a: Path, run_b: Path) -> None:
    write_report([run_a, run_b])
    report = make_report([run_a, run_b])
    assert [s.name for s in report.series] == ["snl", "deepreduce", "cryptonas"]
    assert fronts(report)["cryptonas"] == [(400, 0.86), (3000, 0.93)]
    assert {t.run for t in report.trials} == {"run-a", "run-b"}
    ladder = {row.relus: row for row in report.relu_ladder.rows}
    assert ladder[500].winners == ("cryptonas",) and ladder[BUDGET].winners == ("cryptonas",)
    md = (run_a / "report.md").read_text()
    assert "Run run-a" in md and "Run run-b" in md and "study-b" in md
    assert not (run_b / "report.md").exists()  # written into the first run directory only
    assert len(list(csv.DictReader((run_a / "trials.csv").open()))) == len(STUDY_A) + len(STUDY_B)


def test_same_strategy_in_two_runs_stays_apart(tmp_path: Path) -> None:
    first = make_run(tmp_path / "seed0", STUDY_B, ["cryptonas"], "s0")
    second = make_run(tmp_path / "seed1", STUDY_B[:1], ["cryptonas"], "s1")
    report = make_report([first, second])
    assert [s.name for s in report.series] == ["cryptonas [seed0]", "cryptonas [seed1]"]


@pytest.mark.parametrize("trials", [[], [("snl", None, None, True, TrialState.FAIL)]], ids=["empty", "only-failed"])
def test_zero_finished_trials_says_so(tmp_path: Path, trials: list) -> None:
    run = make_run(tmp_path / "run", trials, ["snl"], "empty")
    write_report([run])
    assert make_report([run]).finished == 0
    for name in ("report.md", "report.html"):
        assert "No finished trials yet" in (run / name).read_text()
    assert (run / "pareto.png").stat().st_size > 0


def test_published_points_shown_when_the_dataset_matches(tmp_path: Path) -> None:
    run = make_run(tmp_path / "cifar", STUDY_B, ["cryptonas"], "c", dataset="cifar10", model="resnet18", full=557_056,
                   budget=None)
    report = make_report([run])
    assert report.published and {p.dataset for p in report.published} == {"cifar10"}
    snl = [p for p in report.published if p.method == "SNL" and p.relus == 12_900]
    assert len(snl) == 1 and snl[0].accuracy == pytest.approx(0.8823) and snl[0].source.startswith("SNL paper")
    assert {row.relus for row in report.relu_ladder.rows} == {int(f * 557_056) for f in (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)}
    write_report([run])
    md = (run / "report.md").read_text()
    assert "## Published reference points" in md and "88.23%" in md and "later methods as tabulated by ReLUPruner" in md
    assert "| ReLU budget | none |" in md


def test_trials_above_the_full_count_widen_the_reference(tmp_path: Path) -> None:
    """CryptoNAS builds its own networks: without a budget a trial may have more ReLUs than the base model."""
    trials = [("cryptonas", 400, 0.86, True, TrialState.COMPLETE), ("cryptonas", 20_000, 0.95, True, TrialState.COMPLETE)]
    report = make_report([make_run(tmp_path / "big", trials, ["cryptonas"], "big", budget=None)])
    assert fronts(report) == {"cryptonas": [(400, 0.86), (20_000, 0.95)]}
    x = math.log10(400) / math.log10(20_000)  # N = 20,000; the 20,000-ReLU trial sits at x = 1 and adds nothing
    assert report.series[0].hypervolume == pytest.approx((1 - x) * (1 - 0.14))
    top = report.relu_ladder.rows[-1]
    assert top.relus == 20_000 and top.cells["cryptonas"].relus == 20_000
    assert "N = 20,000" in report.hypervolume_note


def test_interrupted_and_rerun_trials_are_not_failures(tmp_path: Path) -> None:
    trials = [("snl", None, None, True, TrialState.FAIL), ("snl", 500, 0.9, True, TrialState.COMPLETE),
              ("snl", None, None, True, TrialState.FAIL)]
    run = make_run(tmp_path / "resumed", trials, ["snl"], "resumed", more_attrs={1: {"rerun_of": 0}})
    (snl,) = make_report([run]).series
    assert (snl.trials, snl.finished, snl.failed, snl.rerun) == (3, 1, 1, 1)


def test_running_and_waiting_trials_are_counted_and_said_to_be_unfinished(tmp_path: Path) -> None:
    trials = [("snl", 500, 0.9, True, TrialState.COMPLETE), ("snl", None, None, True, TrialState.RUNNING),
              ("snl", None, None, True, TrialState.WAITING)]
    run = make_run(tmp_path / "live", trials, ["snl"], "live")
    (snl,) = make_report([run]).series
    assert (snl.trials, snl.finished, snl.failed, snl.unfinished) == (3, 1, 0, 2)
    write_report([run])
    assert "2 trial(s) still running or waiting" in (run / "report.md").read_text()
    write_report([make_run(tmp_path / "done", trials[:1], ["snl"], "done")])
    assert "still running" not in (tmp_path / "done" / "report.md").read_text()


def test_moved_run_directory_still_reports(tmp_path: Path, run_a: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(run_a, moved)  # run.json still names the old study.db path
    report = make_report([moved])
    assert report.finished == 7 and all(t.model_present for t in report.pareto_trials)


def test_damaged_settings_and_foreign_database_fail_clearly(tmp_path: Path) -> None:
    bad_json = make_run(tmp_path / "bad-json", STUDY_B, ["cryptonas"], "j")
    (bad_json / "run.json").write_text("{ not json")
    with pytest.raises(SearchError, match="run.json is damaged"):
        make_report([bad_json])
    foreign = make_run(tmp_path / "foreign", STUDY_B, ["cryptonas"], "f")
    (foreign / "study.db").unlink()
    with sqlite3.connect(foreign / "study.db") as db:
        db.execute("create table notes (text)")
    with pytest.raises(SearchError, match="cannot read the study storage"):
        make_report([foreign])
    with sqlite3.connect(foreign / "study.db") as db:  # nothing was added to someone else's database
        assert [r[0] for r in db.execute("select name from sqlite_master")] == ["notes"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.report", *args], capture_output=True, text=True, timeout=120)


def test_cli_writes_report(run_a: Path) -> None:
    result = cli(str(run_a))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(run_a / name) for name in REPORT_FILES]


def test_cli_bad_inputs_one_line_exit_2_nothing_lost(tmp_path: Path, run_a: Path) -> None:
    write_report([run_a])
    before = {name: (run_a / name).read_bytes() for name in REPORT_FILES}
    not_run = tmp_path / "plain"
    not_run.mkdir()
    damaged = make_run(tmp_path / "damaged", STUDY_B, ["cryptonas"], "d")
    (damaged / "study.db").write_bytes(b"this is not a database" * 10)
    (damaged / "report.md").write_text("the previous report")
    wrong_name = make_run(tmp_path / "renamed", STUDY_B, ["cryptonas"], "r")
    settings = json.loads((wrong_name / "run.json").read_text())
    (wrong_name / "run.json").write_text(json.dumps(settings | {"study_name": "gone"}))
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(not_run): "is not a run directory",
        str(damaged): "is damaged",
        str(wrong_name): "'gone'",
    }
    # Each bad run directory alone, and the damaged one behind a good one (whose report must survive).
    for argv, expected in [([arg], text) for arg, text in cases.items()] + [([str(run_a), str(damaged)], "is damaged")]:
        result = cli(*argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (argv, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (argv, lines)
    assert (damaged / "report.md").read_text() == "the previous report"
    assert (damaged / "study.db").read_bytes() == b"this is not a database" * 10
    assert not (not_run / "study.db").exists() and not (tmp_path / "missing").exists()
    assert {name: (run_a / name).read_bytes() for name in REPORT_FILES} == before
    result = cli()
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def test_html_plot_renders_one_trace_per_strategy_in_chromium(run_a: Path, run_b: Path) -> None:
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get where it can)")
    page = write_report([run_a, run_b])
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=180,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, result.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-plot-ready") == "1", attrs
    assert json.loads(attrs["data-front-names"].replace("&quot;", '"')) == ["snl", "deepreduce", "cryptonas"]
    assert attrs["data-front-traces"] == "3"
    # Fronts of 3 strategies + dominated trials of snl + the over-budget deepreduce trial, all drawn in the SVG.
    assert attrs["data-rendered-traces"] == "5"
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', result.stdout)
    assert legend == ["snl", "deepreduce", "cryptonas"]


def test_compute_time_prefers_recorded_cpu_time(tmp_path: Path) -> None:
    """A trial's compute_seconds counts where recorded; older trials fall back to their wall time."""
    run = make_run(tmp_path / "run", STUDY_B, ["cryptonas"], "study-cpu", more_attrs={0: {"compute_seconds": 30.0}})
    (series,) = make_report([run]).series
    assert series.compute_s == pytest.approx(30.0 + 61.0)


BIG_FULL = 1_000_000  # a second run whose model has 100x the ReLUs of FULL


def test_merged_report_normalises_each_run_by_its_own_full_count(run_a: Path, tmp_path: Path) -> None:
    """Merging must not change a run's hypervolume: each run's N is its own full count, not the largest of the runs."""
    big = make_run(tmp_path / "run-big", STUDY_B, ["cryptonas"], "study-big", full=BIG_FULL, budget=None)
    alone = {s.name: s.hypervolume for r in (make_report([run_a]), make_report([big])) for s in r.series}
    merged = make_report([run_a, big])
    assert {s.name: s.hypervolume for s in merged.series} == pytest.approx(alone)
    assert merged.series[0].hypervolume == pytest.approx(0.425)  # hand-computed with N = 10,000, as alone
    x1, x2 = math.log10(400) / 6, math.log10(3000) / 6  # cryptonas under its own N = 1,000,000
    assert merged.series[2].hypervolume == pytest.approx((1 - x1) * (1 - 0.14) + (1 - x2) * (0.14 - 0.07))
    assert merged.reference_relus == {"run-a": FULL, "run-big": BIG_FULL}
    note = merged.hypervolume_note
    assert "each run's own full count" in note and "N per run: run-a 10,000; run-big 1,000,000." in note
    write_report([run_a, big])
    assert note in (run_a / "report.md").read_text()
    assert html.escape(note) in (run_a / "report.html").read_text()


def test_same_strategy_in_runs_of_different_full_counts_keeps_each_n(tmp_path: Path) -> None:
    """One strategy in two runs of different models: each series is measured under its own run's N, never mixed."""
    small = make_run(tmp_path / "small", STUDY_B, ["cryptonas"], "s")
    big = make_run(tmp_path / "big", STUDY_B, ["cryptonas"], "b", full=BIG_FULL, budget=None)
    merged = {s.name: s.hypervolume for s in make_report([small, big]).series}
    assert merged == pytest.approx({"cryptonas [small]": make_report([small]).series[0].hypervolume,
                                    "cryptonas [big]": make_report([big]).series[0].hypervolume})
    assert merged["cryptonas [small]"] < merged["cryptonas [big]"]  # same trials, a larger model: a larger share cut


def test_merged_runs_of_one_full_count_say_so(run_a: Path, run_b: Path) -> None:
    note = make_report([run_a, run_b]).hypervolume_note
    assert "each run's own full count" in note and "10,000 ReLUs in every run" in note


def test_runs_sharing_a_label_are_refused(tmp_path: Path) -> None:
    """Trials find their run's N by the run's label, so two runs under one label could be normalised wrongly."""
    small = make_run(tmp_path / "small", STUDY_B, ["cryptonas"], "s")
    big = make_run(tmp_path / "big", STUDY_B, ["cryptonas"], "b", full=BIG_FULL, budget=None)
    with pytest.raises(SearchError, match="share a label"):
        build_report([load_run(small, "same"), load_run(big, "same")])


def test_wilson_interval_against_hand_computed_values() -> None:
    """Wilson at 95 %, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half-width z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)."""
    iv = wilson(0.9, 100)  # centre 0.91921 / 1.03841 = 0.88521, half 1.88745 * 0.031560 = 0.059568
    assert (iv.low, iv.high) == (pytest.approx(0.82564, abs=1e-5), pytest.approx(0.94477, abs=1e-5))
    assert wilson(0.0, 10).low == 0.0 and wilson(0.0, 10).high == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    assert wilson(1.0, 10).low == pytest.approx(10 / 13.8415, abs=1e-4) and wilson(1.0, 10).high == pytest.approx(1.0)
    assert wilson(0.9, 10_000).high - wilson(0.9, 10_000).low == pytest.approx(2 * 1.96 * math.sqrt(0.09 / 10_000), rel=1e-2)
    assert accuracy_interval(0.9, None) is None and accuracy_interval(None, 100) is None
    with pytest.raises(ValueError):
        wilson(0.5, 0)


def test_baseline_and_drops_from_the_recorded_teacher(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", STUDY_A, ["snl", "deepreduce"], "base", split=400, teacher=(0.97, 0.96))
    report = make_report([run])
    (summary,) = report.runs
    baseline = summary.baseline
    assert (baseline.val_acc, baseline.test_acc, baseline.val_images, baseline.test_images) == (0.97, 0.96, 400, 400)
    assert baseline.val_interval == wilson(0.97, 400) and baseline.test_interval == wilson(0.96, 400)
    drops = {t.number: (t.val_drop, t.test_drop) for t in report.pareto_trials}
    # val_acc 0.80 / 0.90 / 0.84 / 0.92, test 0.01 lower; drop = teacher - trial
    assert drops == {0: pytest.approx((0.17, 0.17)), 1: pytest.approx((0.07, 0.07)), 4: pytest.approx((0.13, 0.13)),
                     5: pytest.approx((0.05, 0.05))}
    trial = next(t for t in report.pareto_trials if t.number == 1)
    assert trial.val_interval == wilson(0.90, 400) and trial.test_interval == wilson(0.89, 400)
    write_report([run])
    md = (run / "report.md").read_text()
    assert "## Baseline: the full-ReLU teacher" in md
    lo, hi = wilson(0.97, 400).low * 100, wilson(0.97, 400).high * 100
    assert f"| run | 97.00% [{lo:.2f}, {hi:.2f}] | 400 |" in md
    assert f"| 1,000 | 90.00% [{wilson(0.9, 400).low * 100:.2f}, {wilson(0.9, 400).high * 100:.2f}] | 7.00 pt |" in md
    assert "Wilson score interval (binomial)" in md and "validation n = 400, test n = 400" in md
    assert "Wilson score interval (binomial)" in html.unescape((run / "report.html").read_text())
    row = next(r for r in csv.DictReader((run / "trials.csv").open()) if r["number"] == "1")
    assert float(row["val_drop"]) == pytest.approx(0.07) and float(row["val_acc_low"]) == wilson(0.9, 400).low
    assert row["user_attrs_teacher_val_acc"] == "0.97" and row["user_attrs_val_images"] == "400"


def test_a_teacher_above_a_trial_gives_a_negative_drop(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", STUDY_B, ["cryptonas"], "above", teacher=(0.90, 0.85))
    top = max(make_report([run]).pareto_trials, key=lambda t: t.val_acc)
    assert (top.val_drop, top.test_drop) == (pytest.approx(-0.03), pytest.approx(-0.07))


# snl's best at <= 2,500 ReLUs is 0.90, deepreduce's 0.92.
CLOSE = [("snl", 1000, 0.90, True, TrialState.COMPLETE), ("deepreduce", 2000, 0.92, True, TrialState.COMPLETE)]


def test_winner_marked_only_where_its_lead_exceeds_the_interval(tmp_path: Path) -> None:
    # n = 100: 0.92 -> [0.850, 0.959] overlaps 0.90 -> [0.826, 0.945]: a 2-point lead is noise.
    small = make_run(tmp_path / "small", CLOSE, ["snl", "deepreduce"], "small", split=100)
    row = next(r for r in make_report([small]).relu_ladder.rows if r.relus == 2500)
    assert row.leaders == ("deepreduce",) and row.winners == () and row.within_noise == ("snl", "deepreduce")
    assert row.margin == pytest.approx(0.02)
    # n = 10,000: 0.92 -> [0.9146, 0.9252] and 0.90 -> [0.8940, 0.9058] do not overlap: a winner.
    large = make_run(tmp_path / "large", CLOSE, ["snl", "deepreduce"], "large", split=10_000)
    row = next(r for r in make_report([large]).relu_ladder.rows if r.relus == 2500)
    assert row.winners == ("deepreduce",) and row.within_noise == ()
    write_report([small])
    md = (small / "report.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith("| ≤ 2,500 |"))
    assert "★" not in line and "within noise: snl, deepreduce" in line and "92.00% ≈ [" in line and "90.00% ≈ [" in line
    write_report([large])
    line = next(line for line in (large / "report.md").read_text().splitlines() if line.startswith("| ≤ 2,500 |"))
    assert "**92.00% ★ [" in line and "≈" not in line and line.split(" | ")[-2] == "deepreduce"


def test_a_strategy_alone_in_a_row_wins_it(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", CLOSE, ["snl", "deepreduce"], "alone", split=100)
    row = next(r for r in make_report([run]).relu_ladder.rows if r.relus == 1000)
    assert row.cells["deepreduce"] is None and row.winners == ("snl",)


def test_a_report_of_one_strategy_names_no_winner(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", STUDY_B, ["cryptonas"], "one")
    report = make_report([run])
    rows = [row for ladder in (report.relu_ladder, *report.latency_ladders) for row in ladder.rows]
    assert any(row.leaders == ("cryptonas",) for row in rows)
    assert all(row.winners == () and row.margin is None for row in rows)
    write_report([run])
    md = (run / "report.md").read_text()
    assert "★" not in md and "| winner |" not in md and "nothing to compare it with" in md
    assert "| limit |   | cryptonas |\n" in md and "| ≤ 5,000 | 50% of 10,000 | 93.00% [" in md


def test_run_without_the_records_still_reports(tmp_path: Path) -> None:
    """A run written before the teacher and split sizes were recorded: no baseline, no intervals, leads not judged."""
    old = make_run(tmp_path / "old", STUDY_A, ["snl", "deepreduce"], "old", split=None, teacher=None)
    report = make_report([old])
    (summary,) = report.runs
    assert not summary.baseline.recorded and "predates" in summary.baseline.missing
    assert all(t.val_interval is None and t.val_drop is None for t in report.trials)
    row = next(r for r in report.relu_ladder.rows if r.relus == 1000)
    assert row.leaders == ("snl",) and row.contenders is None and row.winners == ()
    write_report([old])
    md = (old / "report.md").read_text()
    assert "baseline: not recorded" in md and "so its accuracies carry no interval" in md
    assert "snl (lead not judged: split sizes not recorded)" in md and "% ★" not in md
    assert "| 1,000 | 90.00% | — | 89.00% | — |" in md
    # Split sizes recorded but no trial fetched the teacher (CryptoNAS without distillation): intervals, no baseline.
    nas = make_run(tmp_path / "nas", STUDY_B, ["cryptonas"], "nas", teacher=None)
    report = make_report([nas])
    assert "kd_weight" in report.runs[0].baseline.missing and all(t.val_interval for t in report.pareto_trials)
