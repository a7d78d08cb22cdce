"""The report model: one pure function from loaded runs to everything a report shows.

``build_report`` reads nothing and writes nothing; renderers draw its :class:`Report` and compute
nothing of substance. Conventions fixed here, and stated in every rendering:

- Fronts are per series (a strategy; ``strategy [run]`` when one strategy appears in several runs),
  over finished, feasible trials, on (validation accuracy: maximise, ReLU count: minimise).
- Hypervolume is measured in normalised coordinates, both minimised: ``x = log10(ReLUs) / log10(N)``
  and ``y = 1 - accuracy``, with reference point ``(1, 1)``, i.e. N ReLUs at accuracy 0, where N is
  the full count of the trial's own run (or the most ReLUs of any finished, feasible trial of that
  run, if a strategy that changes the architecture went above it). It lies in [0, 1]: 1 would be
  100 % accuracy with one ReLU, and a trial with N ReLUs adds nothing. Log ReLUs because budgets span
  orders of magnitude.
- Merged reports normalise per run, never by the largest N of the runs: a run's hypervolume is the
  same in a merged report as in its own. Each *trial* is normalised by its run's N, so a series is
  well defined even if it held trials of runs with different N (series are per run wherever a
  strategy repeats, so today none does): its hypervolume is taken over all its finished, feasible
  trials in normalised coordinates, where they are comparable fractions of their own models (a
  front in raw counts need not be the front in normalised coordinates once N differs).
- "Best accuracy at <= B" uses the same finished, feasible trials; the leader has the highest
  validation accuracy (selection is on validation; test accuracy is shown beside it). It is marked
  the winner only where its lead is more than noise: its validation interval (below) does not overlap
  that of any other series in the row. Otherwise the series whose intervals overlap the leader's are
  "within noise" and no winner is named; where a run did not record its split sizes there are no
  intervals and the lead is not judged. A series alone in a row wins it; a report of one series has
  nothing to compare, so it names no winner and no margin.
- Every accuracy carries a 95 % Wilson score interval (binomial) for the number of images in its
  split (:mod:`search.reporting.intervals` says why Wilson), taken from the trials' ``val_images``
  and ``test_images`` attributes.
- A run's baseline is its full-ReLU teacher's validation and test accuracy (the trials'
  ``teacher_val_acc`` and ``teacher_test_acc``); each trial's drop is the baseline's accuracy minus
  its own, in percentage points (negative: above the teacher). A run that did not record it reports
  "baseline: not recorded" and no drops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from search.errors import SearchError
from search.objectives import COST_PRESETS, CostModel, cost_model, hypervolume_2d, pareto_front
from search.reporting import text
from search.reporting.intervals import METHOD, Interval, accuracy_interval
from search.reporting.load import PublishedPoint, RunData, model_file

BUDGET_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.25, 0.50, 1.0)
LATENCY_PRESETS = ("delphi", "cheetah")
HV_REFERENCE_ACCURACY = 0.0
TIE = 1e-12
LADDER_RULE = (
    "The winner (★) leads in validation accuracy by more than noise: its interval does not overlap that of any "
    "other strategy in the row. Otherwise the strategies whose intervals overlap the leader's are marked ≈ "
    "(within noise) and no winner is named. Margin = the leader's lead in accuracy points over the next strategy."
)
ALONE_RULE = "With one strategy in the report there is nothing to compare it with, so no row names a winner."


@dataclass(frozen=True)
class TrialRow:
    """One Optuna trial of one run, with its objectives, attributes and front membership."""

    run: str
    number: int
    state: str
    strategy: str
    series: str
    params: dict[str, Any]
    values: dict[str, float]
    relus: int | None
    val_acc: float | None
    test_acc: float | None
    latency_s: float | None
    communication_mb: float | None
    seconds: float | None
    model_path: str | None
    model_present: bool
    feasible: bool
    fail_reason: str | None
    attrs: dict[str, Any]
    val_interval: Interval | None
    test_interval: Interval | None
    val_drop: float | None  # the run's teacher's validation accuracy minus this trial's
    test_drop: float | None
    on_front: bool = False
    on_overall_front: bool = False

    @property
    def eligible(self) -> bool:
        """Finished, within the budget, with both objectives: may enter a front or a ladder cell."""
        return self.state == "COMPLETE" and self.feasible and self.relus is not None and self.val_acc is not None

    @property
    def over_budget(self) -> bool:
        """Finished over the budget, or stopped before training because its plan was (Optuna state PRUNED
        with an ``infeasible_reason``; a trial stopped early has a ``prune_reason`` instead)."""
        over = self.state == "COMPLETE" or (self.state == "PRUNED" and "infeasible_reason" in self.attrs)
        return over and not self.feasible and self.relus is not None


@dataclass(frozen=True)
class Series:
    """One strategy's trials (per run when a strategy appears in several runs) and its front."""

    name: str
    strategy: str
    runs: tuple[str, ...]
    trials: int
    finished: int
    failed: int
    rerun: int
    over_budget: int
    stopped_early: int  # by the rung rule of search.study.halving (PRUNED with a prune_reason)
    unfinished: int
    compute_s: float
    front: tuple[TrialRow, ...]
    hypervolume: float | None
    best_acc: float | None
    best_interval: Interval | None
    fewest_relus: int | None


@dataclass(frozen=True)
class LadderRow:
    """Best trial per series within one limit, the leader(s), the series within noise of them, and the
    lead over the next series."""

    label: str
    detail: str
    relus: int
    cells: dict[str, TrialRow | None]
    leaders: tuple[str, ...]  # the highest validation accuracy (several on an exact tie)
    contenders: tuple[str, ...] | None  # leaders and every series whose interval overlaps one; None: not judged
    margin: float | None

    @property
    def winners(self) -> tuple[str, ...]:
        """The leader, where no other series is within noise of it; else nobody, and nobody where the
        report has one series (nothing to compare)."""
        alone = len(self.cells) == 1
        return self.leaders if not alone and len(self.leaders) == 1 and self.contenders == self.leaders else ()

    @property
    def within_noise(self) -> tuple[str, ...]:
        """The series that cannot be told apart from the leader (empty where there is a winner or no judgement)."""
        return self.contenders if self.contenders is not None and len(self.contenders) > 1 else ()


@dataclass(frozen=True)
class Ladder:
    title: str
    note: str
    rows: tuple[LadderRow, ...]

    @property
    def compares(self) -> bool:
        """More than one series: only then does a row have a winner or a margin to show."""
        return any(len(row.cells) > 1 for row in self.rows)


@dataclass(frozen=True)
class Baseline:
    """A run's full-ReLU teacher: the accuracies its trials' drops are measured from, with intervals."""

    val_acc: float | None
    test_acc: float | None
    val_images: int | None
    test_images: int | None
    val_interval: Interval | None
    test_interval: Interval | None
    missing: str | None  # why there is no baseline, where there is none

    @property
    def recorded(self) -> bool:
        return self.val_acc is not None


@dataclass(frozen=True)
class RunSummary:
    """What a run was asked to do, as the report states it."""

    label: str
    run_dir: str
    settings: dict[str, Any]
    convention: str
    baseline: Baseline


@dataclass(frozen=True)
class MeasuredTrial:
    """A Pareto-optimal trial's secure inference, measured by ``search.pi`` (its steady state)."""

    trial: TrialRow
    protocol: str
    total_mb: float
    mb_by_kind: dict[str, float]
    seconds: float
    relu_bytes_per_relu: float | None
    matches: bool  # secure predictions equal the plain model's on every image measured
    images: int

    @property
    def estimate_ratio(self) -> float | None:
        """Measured communication over the run's cost-model estimate (from the ReLU count)."""
        estimate = self.trial.communication_mb
        return self.total_mb / estimate if estimate else None


@dataclass(frozen=True)
class Report:
    title: str
    runs: tuple[RunSummary, ...]
    dataset: str | None
    model: str | None
    full_relus: int
    reference_relus: dict[str, int]  # run label -> the N its trials' hypervolume coordinates use
    budget: int | None
    objectives: tuple[str, ...]
    param_names: tuple[str, ...]
    series: tuple[Series, ...]
    trials: tuple[TrialRow, ...]
    hypervolume_note: str
    accuracy_note: str
    relu_ladder: Ladder
    latency_ladders: tuple[Ladder, ...]
    published: tuple[PublishedPoint, ...]
    notes: tuple[str, ...]
    measured: tuple[MeasuredTrial, ...] = ()  # filled by search.report --measure-pi

    @property
    def finished(self) -> int:
        return sum(1 for t in self.trials if t.state == "COMPLETE")

    @property
    def pareto_trials(self) -> tuple[TrialRow, ...]:
        """Trials on their series' front, series by series, fewest ReLUs first."""
        return tuple(t for s in self.series for t in s.front)


def build_report(runs: Sequence[RunData], published: Sequence[PublishedPoint] = (),
                 measured: Mapping[tuple[str, int], Mapping[str, Any]] | None = None) -> Report:
    """The report model of one run or a merged comparison of several; ``measured`` maps (run label, trial
    number) to a ``search.pi`` measurement (``Measurement.to_json()``) of that trial's model."""
    if not runs:
        raise SearchError("no run directory given")
    if len({run.label for run in runs}) < len(runs):  # a trial finds its run, and so its N, by the run's label
        raise SearchError("two runs share a label: give each run a unique label (load_runs does)")
    notes: list[str] = []
    names_of = _series_names(runs)
    baselines = {run.label: _baseline(run, notes) for run in runs}
    rows = _mark_fronts([row for run in runs for row in _trial_rows(run, names_of, baselines[run.label], notes)])
    full_relus = max(run.settings.full_relus for run in runs)
    eligible = [r for r in rows if r.eligible]
    references = _reference_relus(runs, eligible)
    most_relus = max(references.values())  # the ladders reach every trial of every run
    dataset = _common(run.settings.dataset for run in runs)
    model = _common(run.settings.model for run in runs)
    budget = _common(run.settings.budget for run in runs)
    if dataset is None:
        notes.append("The runs use different datasets: accuracies are not comparable across them.")
    elif model is None:
        notes.append("The runs use different models; ReLU counts follow each run's own model.")
    if len({run.settings.stem_relu for run in runs}) > 1:
        notes.append("The runs count ReLUs under different conventions (stem ReLU or not): see Settings.")
    finished = sum(1 for r in rows if r.state == "COMPLETE")
    if finished == 0:
        notes.insert(0, f"No finished trials yet: {len(rows)} trial(s) in storage, none COMPLETE, so there is no front.")
    elif not any(r.eligible for r in rows):
        notes.insert(0, "No finished trial is within the budget, so there is no front.")
    series = _series(runs, rows, references)
    names = [s.name for s in series]
    shown = tuple(p for p in published if dataset is not None and p.dataset == dataset)
    if published and dataset is not None and not shown:
        have = ", ".join(sorted({p.dataset for p in published}))
        notes.append(f"No published reference points for {dataset} (they exist for {have}).")
    return Report(
        title=_title(runs),
        runs=tuple(_run_summary(run, baselines[run.label]) for run in runs),
        dataset=dataset,
        model=model,
        full_relus=full_relus,
        reference_relus=references,
        budget=budget,
        objectives=tuple(runs[0].settings.objectives),
        param_names=tuple(sorted({k for r in rows for k in r.params})),
        series=series,
        trials=tuple(rows),
        hypervolume_note=_hypervolume_note(runs, references),
        accuracy_note=_accuracy_note(runs, baselines),
        relu_ladder=_relu_ladder(eligible, names, full_relus, most_relus, {run.settings.budget for run in runs} - {None}),
        latency_ladders=tuple(
            _latency_ladder(eligible, names, full_relus, most_relus, COST_PRESETS[p]) for p in LATENCY_PRESETS
        ),
        published=shown,
        notes=tuple(notes),
        measured=_measured(series, measured or {}),
    )


def _measured(series: Sequence[Series], measured: Mapping[tuple[str, int], Mapping[str, Any]]) -> tuple[MeasuredTrial, ...]:
    """The measured trials on their series' fronts, in the order of the front table."""
    result = []
    for row in (t for s in series for t in s.front if (t.run, t.number) in measured):
        m = measured[(row.run, row.number)]
        result.append(MeasuredTrial(
            row, str(m["protocol"]), float(m["steady_bytes"]) / 1e6,
            {k: float(v) / 1e6 for k, v in m["steady_bytes_by_kind"].items()}, float(m["steady_seconds"]),
            (float(m["steady_bytes_by_kind"]["relu"]) / m["relus"]) if m["relus"] else None,
            bool(m["matches_plain"]), len(m["images"]),
        ))
    return tuple(result)


def faint_trials(report: Report, series: Series) -> tuple[list[TrialRow], list[TrialRow]]:
    """The series' trials drawn faint: (dominated but eligible, over the budget with an accuracy)."""
    mine = [t for t in report.trials if t.series == series.name]
    dominated = [t for t in mine if t.eligible and not t.on_front]
    over = [t for t in mine if t.over_budget and t.val_acc is not None]
    return dominated, over


def normalised_point(relus: int, accuracy: float, reference_relus: int) -> tuple[float, float]:
    """A trial in hypervolume coordinates: (log10 ReLUs / log10 N, 1 - accuracy)."""
    return math.log10(max(relus, 1)) / math.log10(reference_relus), 1.0 - accuracy


def series_hypervolume(trials: Sequence[TrialRow], reference_relus: Mapping[str, int]) -> float | None:
    """Hypervolume of the eligible trials, each normalised by its own run's N, against the reference point
    (N ReLUs, accuracy 0) = (1, 1); None when there is none or an N is too small to take a log of."""
    eligible = [t for t in trials if t.eligible]
    if not eligible or any(reference_relus[t.run] <= 1 for t in eligible):
        return None
    points = [normalised_point(t.relus, t.val_acc, reference_relus[t.run]) for t in eligible]  # type: ignore[arg-type]
    return hypervolume_2d(points, (1.0, 1.0 - HV_REFERENCE_ACCURACY))


def _reference_relus(runs: Sequence[RunData], eligible: list[TrialRow]) -> dict[str, int]:
    """Each run's N: its full count, or the most ReLUs of its own eligible trials where one went above it
    (strategies that change the architecture, such as CryptoNAS, may without a budget)."""
    return {
        run.label: max([run.settings.full_relus, *(r.relus or 0 for r in eligible if r.run == run.label)])
        for run in runs
    }


def _hypervolume_note(runs: Sequence[RunData], references: dict[str, int]) -> str:
    """States N for every run: one number for one run or for runs that agree, else each run's own, listed."""
    per_run = ""
    if len(runs) == 1:
        run = runs[0]
        which = f"N = {references[run.label]:,} ReLUs ({_reference_source(run, references[run.label])})"
    elif len(set(references.values())) == 1 and all(references[r.label] == r.settings.full_relus for r in runs):
        which = f"N = each run's own full count ({references[runs[0].label]:,} ReLUs in every run here)"
    else:
        which = "N = each run's own full count, so each trial is normalised by its own run's model"
        per_run = " N per run: " + "; ".join(_run_reference(run, references[run.label]) for run in runs) + "."
    return (
        f"Hypervolume in (log10 ReLUs / log10 N, 1 - validation accuracy), both minimised, with {which}, "
        f"and reference point (N ReLUs, accuracy {HV_REFERENCE_ACCURACY:.0%}) = (1, 1).{per_run} "
        "Range 0..1: 1 would be 100% accuracy with one ReLU; a trial with N ReLUs adds nothing."
        + (" A run's hypervolume here is the one its own report shows." if len(runs) > 1 else "")
    )


def _run_reference(run: RunData, n: int) -> str:
    """``label n``, saying why where N is not the run's full count."""
    return f"{run.label} {n:,}" + ("" if n == run.settings.full_relus else f" ({_reference_source(run, n)})")


def _reference_source(run: RunData, n: int) -> str:
    if n == run.settings.full_relus:
        return "the full model's count"
    return f"the most of any trial; the full model has {run.settings.full_relus:,}"


def _series_names(runs: Sequence[RunData]) -> dict[tuple[str, str], str]:
    """(run label, strategy) -> series name; the run label is added only where a strategy repeats."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        for trial in run.trials:
            seen.setdefault(_strategy(trial, run), set()).add(run.label)
    return {
        (label, strategy): strategy if len(labels) == 1 else f"{strategy} [{label}]"
        for strategy, labels in seen.items()
        for label in labels
    }


def _strategy(trial: FrozenTrial, run: RunData) -> str:
    name = trial.user_attrs.get("strategy") or trial.params.get("strategy")
    if not name and len(run.settings.strategies) == 1:
        name = run.settings.strategies[0]
    return str(name or "unknown")


def _baseline(run: RunData, notes: list[str]) -> Baseline:
    """The run's teacher and split sizes, as its completed trials recorded them (the most common record,
    with a note where trials disagree: a teacher retrained between a run and its resume, say)."""
    done = [t.user_attrs for t in run.trials if t.state.name == "COMPLETE"]
    teachers = [(v, _number(a.get("teacher_test_acc"))) for a in done if (v := _number(a.get("teacher_val_acc"))) is not None]
    val_images = _most_common(_count(a.get("val_images")) for a in done)
    test_images = _most_common(_count(a.get("test_images")) for a in done)
    if len(set(teachers)) > 1:
        notes.append(f"Run {run.label}: its trials recorded {len(set(teachers))} different teachers; "
                     "the baseline is the one most of them used.")
    teacher = _most_common(teachers)
    if teacher is None:
        if not done:
            missing = "no trial of this run has finished"
        elif val_images is None:
            missing = "its trials did not record the teacher (the run predates that record)"
        else:
            missing = "no finished trial used the full-ReLU teacher (CryptoNAS trains without it unless kd_weight > 0)"
        return Baseline(None, None, val_images, test_images, None, None, missing)
    val_acc, test_acc = teacher
    return Baseline(val_acc, test_acc, val_images, test_images, accuracy_interval(val_acc, val_images),
                    accuracy_interval(test_acc, test_images), None)


def _most_common(values: Any) -> Any:
    """The most frequent of the values that are not None (the first seen on a tie), or None."""
    counts: dict[Any, int] = {}
    for value in values:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=counts.__getitem__, default=None)


def _count(value: Any) -> int | None:
    """A positive whole number (a split's size), or None."""
    number = _number(value)
    return int(number) if number is not None and number >= 1 and number == int(number) else None


def _drop(baseline: float | None, accuracy: float | None) -> float | None:
    return None if baseline is None or accuracy is None else baseline - accuracy


def _trial_rows(run: RunData, series_names: dict[tuple[str, str], str], baseline: Baseline,
                notes: list[str]) -> list[TrialRow]:
    settings = run.settings
    cost: CostModel | None
    try:
        cost = cost_model(settings.cost_model)
    except SearchError as err:
        cost = None
        notes.append(f"Run {run.label}: {err}; latency and communication shown only where trials recorded them.")
    rows = []
    for trial in sorted(run.trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        values = dict(zip(settings.objectives, trial.values)) if trial.values else {}
        relus = _number(values.get("relus", attrs.get("relus")))
        relus_int = int(relus) if relus is not None else None
        latency = _number(attrs.get("latency_s"))
        communication = _number(attrs.get("communication_mb"))
        if cost is not None and relus_int is not None:
            latency = cost.latency_s(relus_int) if latency is None else latency
            communication = cost.communication_mb(relus_int) if communication is None else communication
        strategy = _strategy(trial, run)
        path = model_file(run.run_dir, trial)
        val_acc = _number(values.get("accuracy", attrs.get("val_acc")))
        test_acc = _number(attrs.get("test_acc"))
        # Each accuracy on the size of the split the trial itself recorded, else the run's.
        val_images = _count(attrs.get("val_images")) or baseline.val_images
        test_images = _count(attrs.get("test_images")) or baseline.test_images
        rows.append(
            TrialRow(
                run=run.label,
                number=trial.number,
                state=trial.state.name,
                strategy=strategy,
                series=series_names[(run.label, strategy)],
                params=dict(trial.params),
                values={k: float(v) for k, v in values.items()},
                relus=relus_int,
                val_acc=val_acc,
                test_acc=test_acc,
                latency_s=latency,
                communication_mb=communication,
                seconds=_seconds(trial),
                model_path=str(path) if path is not None else None,
                model_present=trial.number in run.models_present,
                feasible=_feasible(trial, relus_int, settings.budget),
                fail_reason=str(attrs["fail_reason"]) if attrs.get("fail_reason") else None,
                attrs=dict(attrs),
                val_interval=accuracy_interval(val_acc, val_images),
                test_interval=accuracy_interval(test_acc, test_images),
                val_drop=_drop(baseline.val_acc, val_acc),
                test_drop=_drop(baseline.test_acc, test_acc),
            )
        )
    return rows


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric or NaN values."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _compute_seconds(row: TrialRow) -> float:
    """The trial's recorded compute time (CPU time, or wall time on a GPU); its wall time when older
    runs did not record it."""
    recorded = _number(row.attrs.get("compute_seconds"))
    return recorded if recorded is not None else (row.seconds or 0.0)


def _seconds(trial: FrozenTrial) -> float | None:
    seconds = _number(trial.user_attrs.get("seconds"))
    if seconds is None and trial.datetime_start and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return seconds


def _feasible(trial: FrozenTrial, relus: int | None, budget: int | None) -> bool:
    """Within the budget by every sign recorded: the ``feasible`` attribute, Optuna constraints, the count itself."""
    flagged = trial.user_attrs.get("feasible")
    return (
        (flagged is None or bool(flagged))
        and all(c <= 0.0 for c in trial.constraints.values())
        and (budget is None or relus is None or relus <= budget)
    )


def _mark_fronts(rows: list[TrialRow]) -> list[TrialRow]:
    directions = ("maximize", "minimize")
    eligible = [i for i, r in enumerate(rows) if r.eligible]
    overall = {eligible[j] for j in pareto_front([(rows[i].val_acc, rows[i].relus) for i in eligible], directions)}
    on_front: set[int] = set()
    for name in dict.fromkeys(rows[i].series for i in eligible):
        members = [i for i in eligible if rows[i].series == name]
        on_front |= {members[j] for j in pareto_front([(rows[i].val_acc, rows[i].relus) for i in members], directions)}
    return [dataclasses.replace(r, on_front=i in on_front, on_overall_front=i in overall) for i, r in enumerate(rows)]


def _series(runs: Sequence[RunData], rows: list[TrialRow], references: dict[str, int]) -> tuple[Series, ...]:
    order = {s: i for i, s in enumerate(dict.fromkeys(s for run in runs for s in run.settings.strategies))}
    names = sorted(dict.fromkeys(r.series for r in rows), key=lambda n: (order.get(n.split(" [")[0], len(order)), n))
    # A trial a killed run interrupted is FAIL in storage, and --resume reran it as a new trial (``rerun_of``).
    rerun = {(r.run, r.attrs["rerun_of"]) for r in rows if r.attrs.get("rerun_of") is not None}
    result = []
    for name in names:
        mine = [r for r in rows if r.series == name]
        front = tuple(sorted((r for r in mine if r.on_front), key=lambda r: (r.relus, -r.val_acc, r.run, r.number)))
        eligible = [r for r in mine if r.eligible]
        best = max(eligible, key=lambda r: (r.val_acc, -r.relus), default=None)  # type: ignore[arg-type,return-value]
        result.append(
            Series(
                name=name,
                strategy=mine[0].strategy,
                runs=tuple(dict.fromkeys(r.run for r in mine)),
                trials=len(mine),
                finished=sum(1 for r in mine if r.state == "COMPLETE"),
                failed=sum(1 for r in mine if r.state == "FAIL" and (r.run, r.number) not in rerun),
                rerun=sum(1 for r in mine if r.state == "FAIL" and (r.run, r.number) in rerun),
                over_budget=sum(1 for r in mine if r.over_budget),
                stopped_early=sum(1 for r in mine if r.state == "PRUNED" and "prune_reason" in r.attrs),
                unfinished=sum(1 for r in mine if r.state in ("RUNNING", "WAITING")),
                compute_s=sum(_compute_seconds(r) for r in mine),
                front=front,
                hypervolume=series_hypervolume(mine, references),
                best_acc=best.val_acc if best is not None else None,
                best_interval=best.val_interval if best is not None else None,
                fewest_relus=min((r.relus for r in eligible), default=None),  # type: ignore[type-var]
            )
        )
    return tuple(result)


def _ladder_row(label: str, detail: str, limit: int, eligible: list[TrialRow], names: list[str]) -> LadderRow:
    cells: dict[str, TrialRow | None] = {}
    for name in names:
        within = [r for r in eligible if r.series == name and r.relus <= limit]  # type: ignore[operator]
        cells[name] = max(within, key=lambda r: (r.val_acc, -r.relus), default=None)  # type: ignore[arg-type,return-value]
    present = {n: c for n, c in cells.items() if c is not None}
    scores = sorted(((c.val_acc, n) for n, c in present.items()), reverse=True)
    if not scores:
        return LadderRow(label, detail, limit, cells, (), None, None)
    best = scores[0][0]
    leaders = tuple(n for n in names if n in present and best - present[n].val_acc <= TIE)  # type: ignore[operator]
    others = [s for s, n in scores if n not in leaders]
    margin = (best - others[0]) if others else (0.0 if len(leaders) > 1 else None)
    contenders: tuple[str, ...] | None = None
    if all(c.val_interval is not None for c in present.values()):
        contenders = tuple(
            n for n in names if n in present
            and any(present[n].val_interval.overlaps(present[lead].val_interval) for lead in leaders)  # type: ignore[union-attr,arg-type]
        )
    return LadderRow(label, detail, limit, cells, leaders, contenders, margin)


def _rule(names: list[str]) -> str:
    """How a ladder's rows are judged: between strategies, or not at all for one alone."""
    return LADDER_RULE if len(names) > 1 else ALONE_RULE


def _relu_ladder(eligible: list[TrialRow], names: list[str], full_relus: int, most: int, budgets: set[int]) -> Ladder:
    """Rungs at fractions of the full count, the run's budget, and the largest trial where it is above the full count."""
    rungs = {int(math.floor(f * full_relus)): f"{f:.0%} of {full_relus:,}" for f in BUDGET_FRACTIONS}
    if most > full_relus:
        rungs[most] = "every trial (some exceed the full model)"
    for b in sorted(budgets):
        rungs[b] = "the run's budget" if b not in rungs else rungs[b] + " (the run's budget)"
    rows = tuple(
        _ladder_row(f"≤ {limit:,}", detail, limit, eligible, names) for limit, detail in sorted(rungs.items()) if limit >= 1
    )
    return Ladder(
        "Best validation accuracy at ≤ B ReLUs",
        "Budgets are fractions of the full model's ReLU count; each cell is the best finished, feasible trial "
        f"within the budget. {_rule(names)}",
        rows,
    )


def _latency_ladder(eligible: list[TrialRow], names: list[str], full_relus: int, most: int, cost: CostModel) -> Ladder:
    """Round latencies from that of the smallest ReLU rung up to that of the largest trial or the full model."""
    per_relu_s = cost.online_us_per_relu * 1e-6
    limits = _one_two_five(cost.latency_s(max(1, int(BUDGET_FRACTIONS[0] * full_relus))), cost.latency_s(most))
    rows = []
    for seconds in limits:
        relus = int(math.floor(seconds / per_relu_s * (1 + 1e-12)))
        detail = f"≤ {relus:,} ReLUs, {cost.communication_mb(relus):,.3g} MB online"
        rows.append(_ladder_row(f"≤ {text.seconds(seconds)}", detail, relus, eligible, names))
    return Ladder(
        f"Best validation accuracy at equal estimated PI latency ({cost.name})",
        f"{cost.name}: {cost.online_us_per_relu:g} us and {cost.online_bytes_per_relu:,.0f} B online per ReLU. "
        f"Latency is linear in the ReLU count under this model, so each row is a ReLU budget read as seconds. {_rule(names)}",
        tuple(rows),
    )


def _one_two_five(low: float, high: float) -> list[float]:
    """Round limits (1, 2, 5 x 10^k) from ``low`` up to ``high``, ending with ``high`` itself."""
    values: list[float] = []
    exponent = math.floor(math.log10(low))
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if value > high * (1 - 1e-9):
                return values + [high]
            if value >= low * (1 - 1e-9):
                values.append(value)
        exponent += 1


def _common(values: Any) -> Any:
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else None


def _title(runs: Sequence[RunData]) -> str:
    if len(runs) == 1:
        return f"Pareto report: {runs[0].settings.study_name}"
    return f"Pareto report: {len(runs)} runs ({', '.join(run.label for run in runs)})"


def convention(stem_relu: bool) -> str:
    """The counting convention in words: one ReLU per activation element per input, stem or not."""
    stem = "the stem ReLU is counted"
    if not stem_relu:
        stem = "the model has no stem ReLU (as in SNL's and DeepReDuce's released models)"
    return f"one ReLU = one activation element for one input (batch excluded); {stem}"


def _run_summary(run: RunData, baseline: Baseline) -> RunSummary:
    settings = dataclasses.asdict(run.settings)
    return RunSummary(run.label, str(run.run_dir), settings, convention(run.settings.stem_relu), baseline)


def _accuracy_note(runs: Sequence[RunData], baselines: Mapping[str, Baseline]) -> str:
    """The interval method, each run's split sizes, and what a drop is."""
    sizes = []
    for run in runs:
        b = baselines[run.label]
        where = f" ({run.label})" if len(runs) > 1 else ""
        if b.val_images is None and b.test_images is None:
            sizes.append(f"not recorded{where or ' by this run'}, so its accuracies carry no interval and its leads are not judged")
        else:
            sizes.append(f"validation n = {text.count(b.val_images)}, test n = {text.count(b.test_images)}{where}")
    return (
        f"Every accuracy is shown with its {METHOD}, as [low, high]; split sizes: {'; '.join(sizes)}. "
        "Drop = the run's full-ReLU teacher's accuracy minus the trial's, in percentage points (negative: above "
        "the teacher). A winner needs intervals that do not overlap, which is conservative: two trials measured "
        "on the same images could be compared more sharply image by image, but the study does not keep "
        "per-image predictions."
    )
