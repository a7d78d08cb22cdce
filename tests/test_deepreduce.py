"""DeepReDuce: exact plan counts, criticality cache, masks, budget rejection, distillation, CLI errors.

Counting tests use resnet18 at 3x32x32 (no training); training tests use digits with resnet_tiny, a
two-epoch teacher and one-epoch finetuning, so the file stays fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import search.train
from search.checkpoint import load_model, save_model
from search.cli import run_main
from search.data import load_dataset
from search.errors import SearchError
from search.inspect import main as inspect_main
from search.linearize import main as linearize_main
from search.relu import relu_count, sites
from search.strategies import Context, OverBudget, get_strategy
from search.strategies.criticality import Criticality, order_stages, stage_scores
from search.strategies.deepreduce import PlanCounter, base_model, choose_plan
from search.study.trial import TrialSpec, run_one
from search.teacher import get_teacher
from search.train import TrainConfig, pick_device

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# (--set pairs, ReLUs) for resnet18 at 3x32x32, the released models' convention (stem dropped with S1).
PAPER_COUNTS = [
    (["cull=S1"], 229_376),
    (["cull=S1,S4"], 196_608),
    (["cull=S1", "thin=true"], 114_688),
    (["cull=S1", "thin=true", "alpha=0.5"], 57_344),
    (["cull=S1,S4", "thin=true", "alpha=0.5"], 49_152),
    (["cull=S1", "thin=true", "rho=0.5"], 28_672),
    (["cull=S1,S4", "thin=true", "alpha=0.5", "rho=0.5"], 12_288),
]


def _options(pairs: list[str]):  # type: ignore[no-untyped-def]
    return get_strategy("deepreduce").parse_options(dict(p.split("=", 1) for p in pairs))


@pytest.mark.parametrize(("pairs", "expected"), PAPER_COUNTS)
def test_paper_counts_through_relu_count(pairs: list[str], expected: int) -> None:
    model = get_strategy("deepreduce").plan("resnet18", {}, (3, 32, 32), 10, _options(pairs))
    assert relu_count(model, (3, 32, 32)) == expected


@pytest.mark.parametrize(("pairs", "expected"), PAPER_COUNTS)
def test_paper_counts_through_inspect_cli(pairs: list[str], expected: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "resnet18", "--input", "3x32x32", "--strategy", "deepreduce"]
    for pair in pairs:
        argv += ["--set", pair]
    assert inspect_main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"total_relus={expected}"


def test_inspect_subprocess_counts_plan_without_training() -> None:
    command = [sys.executable, "-m", "search.inspect", "--model", "resnet18", "--input", "3x32x32", "--strategy", "deepreduce",
               "--set", "cull=S1,S4", "--set", "thin=true", "--set", "alpha=0.5", "--set", "rho=0.5"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "total_relus=12288"
    assert "epoch" not in done.stdout


def test_bad_value_through_real_cli_is_one_line_exit_2() -> None:
    command = [sys.executable, "-m", "search.inspect", "--model", "resnet18", "--input", "3x32x32", "--strategy", "deepreduce",
               "--set", "alpha=2"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "alpha" in lines[0] and "(0, 1]" in lines[0]


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        (["rho=0.3"], ["rho", "1, 0.5"]),
        (["cull=S1", "n_cull=1"], ["cull", "n_cull", "not both"]),
        (["cull=S9"], ["cull", "S1,S2,S3,S4"]),
        (["cull=X1"], ["cull", "S1,S4"]),
        (["cull=S1,S2,S3,S4"], ["every stage"]),
        (["n_cull=-1"], ["n_cull", ">= 0"]),
        (["thin=maybe"], ["thin", "true or false"]),
        (["kd_weight=-1"], ["kd_weight", ">= 0"]),
        ([], ["plan or a budget"]),
    ],
)
def test_bad_set_values_one_error_line(pairs: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "resnet18", "--input", "3x32x32", "--strategy", "deepreduce"]
    for pair in pairs:
        argv += ["--set", pair]
    with pytest.raises(SystemExit) as exited:
        run_main(inspect_main, argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert all(word in lines[0] for word in words), lines[0]


def test_other_registry_models_cull_their_stages_and_refuse_what_does_not_apply() -> None:
    # WRN-22-8's 1,359,872 ReLUs less stage 1's 671,744; its factory has no width option.
    model = get_strategy("deepreduce").plan("wrn22_8", {}, (3, 32, 32), 10, _options(["cull=S1"]))
    assert relu_count(model, (3, 32, 32)) == 1_359_872 - 671_744
    with pytest.raises(SearchError, match="alpha=0.5 does not apply to wrn22_8: its factory has no width option"):
        get_strategy("deepreduce").plan("wrn22_8", {}, (3, 32, 32), 10, _options(["alpha=0.5"]))


def test_budget_only_picks_the_plan_with_most_relus_under_budget() -> None:
    options = get_strategy("deepreduce").parse_options({})
    counter = PlanCounter("resnet18", {}, (3, 32, 32), 10)
    spec, count, candidates = choose_plan(counter, options, ["S1", "S2", "S3", "S4"], ["S1", "S4", "S2", "S3"], 114_688)
    # cull S1 + thin and cull S1 + alpha 0.5 both have 114,688: the tie goes to the full-width plan.
    assert (spec.cull, spec.thin, spec.alpha, spec.rho, count) == (("S1",), True, 1.0, 1, 114_688)
    assert candidates == 4 * 2 * 3 * 2
    with pytest.raises(SearchError, match="no deepreduce plan fits the budget of 1,000"):
        choose_plan(counter, options, ["S1", "S2", "S3", "S4"], None, 1_000)


def test_no_plan_under_the_budget_once_the_order_is_known_carries_the_smallest_count() -> None:
    # n_cull=1 with thinning, width and stride fixed: before criticality any one stage may be culled, and
    # culling S3 (491,520 ReLUs) fits a budget of 491,520; once the order says S4 is least critical, the
    # only plan left culls S4 and keeps 524,288.
    options = _options(["n_cull=1", "thin=false", "alpha=1", "rho=1"])
    counter = PlanCounter("resnet18", {}, (3, 32, 32), 10)
    labels = ["S1", "S2", "S3", "S4"]
    assert choose_plan(counter, options, labels, None, 491_520)[1] == 491_520
    with pytest.raises(OverBudget, match="plan cull=S4 thin=false alpha=1 rho=1 has 524,288 ReLUs, over the budget of 491,520") as over:
        choose_plan(counter, options, labels, ["S4", "S1", "S2", "S3"], 491_520)
    assert over.value.relus == 524_288


def test_a_study_trial_with_no_plan_under_the_budget_is_infeasible_not_failed(tmp_path: Path) -> None:
    # resnet_tiny on digits: culling its largest stage (S1, 3,072 of 4,608) leaves 1,536, over 1,000.
    spec = TrialSpec("digits", "resnet_tiny", {}, 1_000, ("accuracy", "relus"), "delphi", teacher_epochs=2, cache_dir=str(tmp_path))
    decided = {"strategy": "deepreduce", "options": {"n_cull": 1, "thin": False, "alpha": 1.0, "rho": 1}, "number": 0}
    lines: list[str] = []
    metrics, models = run_one(spec, decided, lines)
    assert metrics["status"] == "infeasible" and models == {}
    assert metrics["reason"].startswith("no deepreduce plan fits the budget of 1,000 ReLUs") and lines[-1] == metrics["reason"]
    assert metrics["relus"] == 1_536 and math.isnan(metrics["accuracy"])  # the smallest plan's count; nothing was trained
    assert not (tmp_path / "teachers").exists()  # refused before any training


def test_criticality_score_orders_known_accuracies_and_names_culled_stages() -> None:
    # BENCHMARKS.md's CIFAR-10 measurement (resnet18 width 0.25, stem with S1). By the gain alone S4
    # (+0.101) would rank below S3 (+0.106); per 1,000 ReLUs S4's small count makes it the most critical.
    accuracies = {"S1": 0.3280, "S2": 0.3440, "S3": 0.4020, "S4": 0.3970}
    relus = {"S1": 81_920, "S2": 32_768, "S3": 16_384, "S4": 8_192}
    stages = stage_scores(accuracies, relus, 0.2960)
    # 1000 * gain / relus, by hand: 32/81920, 48/32768, 106/16384, 101/8192
    assert [s.score for s in stages] == pytest.approx([0.000390625, 0.00146484375, 0.0064697265625, 0.0123291015625])
    order = order_stages(stages)
    assert order == ("S1", "S2", "S3", "S4")
    measured = Criticality(order, tuple(stages), 0.2960, path="", cached=False)
    assert measured.culls(("S1", "S2")) == "criticality (val acc gained per 1k ReLUs): S1 < S2 < S3 < S4 -> culls S1,S2"
    assert measured.culls(()).endswith(" -> culls none")


# -- training on digits -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deepreduce-cache")


def _context(digits, cache: Path, budget: int | None = None, calls: list[str] | None = None, log: list[str] | None = None) -> Context:  # type: ignore[no-untyped-def]
    device = pick_device()

    def teacher():  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append("teacher")
        recipe = TrainConfig(epochs=2, batch_size=64)
        return get_teacher("resnet_tiny", {}, digits, recipe, device, cache, log=lambda _m: None)[0]

    return Context("resnet_tiny", {}, digits, budget, device, 0, teacher, cache, (log.append if log is not None else print))


def test_plans_keep_outputs_well_formed(digits) -> None:  # type: ignore[no-untyped-def]
    x = digits.test.images[:16].float()
    for pairs in (["cull=S1"], ["cull=S2", "thin=true"], ["thin=true", "alpha=0.5"], ["cull=S1,S3", "thin=true", "alpha=0.5", "rho=0.5"]):
        model = get_strategy("deepreduce").plan("resnet_tiny", {}, (1, 8, 8), 10, _options(pairs)).eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (16, 10) and torch.isfinite(out).all(), pairs
        full = relu_count(base_model("resnet_tiny", {}, (1, 8, 8), 10), (1, 8, 8))
        assert 0 < relu_count(model, (1, 8, 8)) < full


def test_over_budget_plan_rejected_before_training(digits, teacher_cache: Path) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    strategy = get_strategy("deepreduce")
    ctx = _context(digits, teacher_cache, budget=10, calls=calls, log=[])
    with pytest.raises(SearchError, match=r"cull=S1 thin=false alpha=1 rho=1 has 1,536 ReLUs, over the budget of 10"):
        strategy.run(ctx, _options(["cull=S1", "thin=false", "alpha=1", "rho=1"]))
    with pytest.raises(SearchError, match="no deepreduce plan fits the budget of 10"):
        strategy.run(ctx, _options([]))
    with pytest.raises(SearchError, match="no deepreduce plan fits the budget of 10"):
        strategy.run(ctx, _options(["n_cull=1"]))
    assert calls == []  # the teacher was never even fetched: nothing trained


def test_criticality_is_measured_cached_and_reused(digits, teacher_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from search.strategies.criticality import criticality
    from search.strategies.deepreduce import criticality_recipe

    options = _options(["n_cull=1", "criticality_epochs=1"])
    recipe = criticality_recipe(options, "digits", 0)
    first_log: list[str] = []
    first = criticality(_context(digits, teacher_cache, log=first_log), recipe)
    assert not first.cached
    assert any(line.startswith("criticality S1 epoch 1/1") for line in first_log)
    assert sorted(first.order) == ["S1", "S2", "S3"]
    scores = {s.label: s.score for s in first.stages}
    assert [scores[k] for k in first.order] == sorted(scores.values())
    record = json.loads(Path(first.path).read_text())
    assert record["order"] == list(first.order) and record["dataset"] == "digits"
    assert "S1" in first.describe() and "score" in first.describe()

    second_log: list[str] = []
    second = criticality(_context(digits, teacher_cache, log=second_log), recipe)
    assert second.cached and second.order == first.order and second.path == first.path
    assert any("from cache" in line for line in second_log)
    assert not any("epoch" in line for line in second_log)  # no training the second time

    # plan() reuses the cached order without training: n_cull=1 culls the least critical stage.
    monkeypatch.setenv("SEARCH_CACHE_DIR", str(teacher_cache))
    model = get_strategy("deepreduce").plan("resnet_tiny", {}, (1, 8, 8), 10, options)
    relu_count(model, (1, 8, 8))
    off = {s.stage for s in sites(model) if s.mode == "off"}
    least = first.order[0]
    assert off == ({"stem", "stage1"} if least == "S1" else {f"stage{least[1:]}"})


def test_run_distils_from_teacher_and_saves(digits, teacher_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    kd_calls: list[int] = []
    real_kd = search.train.kd_loss

    def spy(student, teacher, temperature):  # type: ignore[no-untyped-def]
        kd_calls.append(1)
        return real_kd(student, teacher, temperature)

    monkeypatch.setattr(search.train, "kd_loss", spy)
    strategy = get_strategy("deepreduce")
    ctx = _context(digits, teacher_cache, budget=2_000, log=[])
    outcome = strategy.run(ctx, _options(["cull=S1", "thin=true", "alpha=0.5", "epochs=1"]))
    assert kd_calls, "kd_weight > 0 must train with the distillation loss"
    assert outcome.relus == relu_count(outcome.model, (1, 8, 8)) == 384
    assert outcome.model_options == {"width": 0.5, "stem_stride": 1}
    assert outcome.details["plan"]["cull"] == ["S1"] and 0 <= outcome.val_acc <= 1
    with torch.no_grad():
        assert torch.isfinite(outcome.model.eval()(digits.test.images[:8].float().to(ctx.device))).all()

    path = tmp_path / "student.pt"
    save_model(outcome.model, path, outcome.model_name, outcome.model_options, 10, (1, 8, 8))
    loaded, _ = load_model(path)
    assert relu_count(loaded, (1, 8, 8)) == outcome.relus

    kd_calls.clear()
    strategy.run(ctx, _options(["cull=S1", "epochs=1", "kd_weight=0"]))
    assert not kd_calls


def test_linearize_with_only_a_budget_says_which_plan(teacher_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strategy", "deepreduce", "--dataset", "digits", "--budget", "1500", "--teacher-epochs", "2",
            "--cache-dir", str(teacher_cache), "--set", "epochs=1", "--set", "criticality_epochs=1"]
    assert linearize_main(argv) == 0
    out = capsys.readouterr().out
    assert "deepreduce plan cull=" in out and "within the budget of 1,500" in out
    lines = out.splitlines()
    plan = next(line for line in lines if line.startswith("deepreduce plan cull="))
    culls = next(line for line in lines if line.startswith("criticality (val acc gained per 1k ReLUs): "))
    culled = plan.split()[2].removeprefix("cull=")
    order = culls.split(": ", 1)[1].split(" -> ")[0].split(" < ")
    assert culls.endswith(f" -> culls {culled}")
    assert culled == "none" or culled.split(",") == sorted(order[: culled.count(",") + 1], key=lambda k: int(k[1:]))
    last = out.strip().splitlines()[-1]
    assert last.startswith("relus=") and " val_acc=" in last and " test_acc=" in last
    assert int(last.split()[0].split("=")[1]) <= 1500
