"""The report's text and tables, laid out once for both the HTML and the Markdown renderer.

A section is a title and a list of blocks (a paragraph or a table); cells are text, optionally
strong (a ladder winner). Renderers only decide how a paragraph and a table look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.reporting import text
from search.reporting.model import Ladder, LadderRow, MeasuredTrial, Report, RunSummary, TrialRow


@dataclass(frozen=True)
class Cell:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""


Block = str | Table


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


def sections(report: Report) -> list[Section]:
    """Every section after the plot, in reading order."""
    result = [_strategies(report)] if report.series else []
    result.append(_baseline(report))
    if any(s.front for s in report.series):
        result.append(_ladder(report, report.relu_ladder))
        result += [_ladder(report, ladder) for ladder in report.latency_ladders]
        result.append(_pareto(report))
    if report.measured:
        result.append(_measured(report))
    if report.published:
        result.append(_published(report))
    result.append(_settings(report))
    return result


def subtitle(report: Report) -> str:
    """Dataset, model, trial counts and the counting convention, in one line under the title."""
    parts = [f"dataset {report.dataset or 'mixed'}", f"model {report.model or 'mixed'}"]
    parts.append(f"{len(report.trials)} trials ({report.finished} finished)")
    conventions = {run.convention for run in report.runs}
    if len(conventions) == 1:
        parts.append(f"counting: {conventions.pop()}")
    return " · ".join(parts)


def _c(value: Any, strong: bool = False) -> Cell:
    return Cell(str(value), strong)


def _strategies(report: Report) -> Section:
    headers = ("strategy", "runs", "trials", "finished", "failed", "over budget", "stopped early", "on front", "best val acc",
               "fewest ReLUs", "hypervolume", "compute time")
    rows = tuple(
        (
            _c(s.name),
            _c(", ".join(s.runs)),
            _c(s.trials),
            _c(s.finished),
            _c(s.failed),
            _c(s.over_budget),
            _c(s.stopped_early),
            _c(len(s.front)),
            _c(text.accuracy_in(s.best_acc, s.best_interval)),
            _c(text.count(s.fewest_relus)),
            _c(text.hypervolume(s.hypervolume)),
            _c(text.duration(s.compute_s)),
        )
        for s in report.series
    )
    note = ("Compute time is the sum of the trials' compute time (CPU time of the trial's processes, all threads; wall time "
            "on a GPU; wall time for trials of runs that did not record it), failed and stopped-early trials included. "
            "Stopped early: ended at a rung of the study's early-stopping rule, dominated by finished trials (--no-early-stop "
            "turns the rule off).")
    reruns = sum(s.rerun for s in report.series)
    if reruns:
        note += f" {reruns} trial(s) interrupted by a killed run and rerun by --resume are not counted as failed."
    unfinished = sum(s.unfinished for s in report.series)
    if unfinished:
        note += (f" {unfinished} trial(s) still running or waiting (the run is live, or was stopped and not resumed yet) are "
                 "counted in trials only.")
    return Section("Strategies", (Table(headers, rows), report.hypervolume_note, note))


def _baseline(report: Report) -> Section:
    """Each run's full-ReLU teacher, with intervals, and how accuracies, drops and winners are read."""
    headers = ("run", "teacher val acc", "validation images", "teacher test acc", "test images")
    rows = []
    for run in report.runs:
        b = run.baseline
        if b.recorded:
            val, test = text.accuracy_in(b.val_acc, b.val_interval), text.accuracy_in(b.test_acc, b.test_interval)
        else:
            val = test = "baseline: not recorded"
        rows.append((_c(run.label), _c(val), _c(text.count(b.val_images)), _c(test), _c(text.count(b.test_images))))
    missing = [f"Run {run.label}: baseline: not recorded ({run.baseline.missing})." for run in report.runs
               if not run.baseline.recorded]
    return Section("Baseline: the full-ReLU teacher", (Table(headers, tuple(rows)), *missing, report.accuracy_note))


def _ladder(report: Report, ladder: Ladder) -> Section:
    names = [s.name for s in report.series]
    headers = ("limit", "") + tuple(names) + (("winner", "margin") if ladder.compares else ())
    rows = []
    for row in ladder.rows:
        cells = [_c(row.label), _c(row.detail)]
        for name in names:
            mark = "★" if name in row.winners else "≈" if name in row.within_noise else ""
            cells.append(_ladder_cell(row.cells[name], mark, len(report.runs) > 1))
        if ladder.compares:
            cells += [_c(_verdict(row)), _c(text.points(row.margin))]
        rows.append(tuple(cells))
    return Section(ladder.title, (ladder.note, Table(headers, tuple(rows))))


def _verdict(row: LadderRow) -> str:
    """The winner, the series within noise of each other, or the leader whose lead could not be judged."""
    if row.winners:
        return ", ".join(row.winners)
    if row.within_noise:
        return "within noise: " + ", ".join(row.within_noise)
    if row.leaders:
        return f"{', '.join(row.leaders)} (lead not judged: split sizes not recorded)"
    return "—"


def _ladder_cell(trial: TrialRow | None, mark: str, name_run: bool) -> Cell:
    """Validation accuracy (★ for the winner, ≈ within noise) with its interval, then test accuracy and which trial."""
    if trial is None:
        return Cell("—")
    which = f"{trial.run} #{trial.number}" if name_run else f"trial #{trial.number}"
    test = text.accuracy_in(trial.test_acc, trial.test_interval)
    return Cell(f"{text.accuracy_in(trial.val_acc, trial.val_interval, mark)} (test {test}; {which})", mark == "★")


def _measured(report: Report) -> Section:
    """The Pareto-optimal trials' secure inference as measured, beside the run's per-ReLU estimate."""
    cost = {run.label: run.settings.get("cost_model", "") for run in report.runs}
    headers = ("strategy", "run", "trial", "ReLUs", "val acc", "measured", "ReLU", "linear", "pooling", "B per ReLU",
               "time", "estimate", "measured / estimate", "secure = plain")
    rows = tuple(
        (
            _c(m.trial.series), _c(m.trial.run), _c(f"#{m.trial.number}"), _c(text.count(m.trial.relus)),
            _c(text.accuracy(m.trial.val_acc)), _c(text.megabytes(m.total_mb)),
            *(_c(text.megabytes(m.mb_by_kind.get(kind))) for kind in ("relu", "linear", "pooling")),
            _c("—" if m.relu_bytes_per_relu is None else f"{m.relu_bytes_per_relu:,.1f}"), _c(text.seconds(m.seconds)),
            _c(f"{text.megabytes(m.trial.communication_mb)} ({cost[m.trial.run]})"),
            _c("—" if m.estimate_ratio is None else f"{m.estimate_ratio:,.1f}x"), _c("yes" if m.matches else "NO"),
        )
        for m in report.measured
    )
    return Section("Measured private inference", (_measured_note(report.measured), Table(headers, rows)))


def _measured_note(measured: tuple[MeasuredTrial, ...]) -> str:
    protocols = ", ".join(sorted({m.protocol for m in measured}))
    note = (f"Each Pareto-optimal trial's saved model run under SPU ({protocols}), two parties on one machine, by "
            "python -m search.pi: communication is both parties' bytes per inference, time is wall time, both of the "
            "steady state: the median of the inferences after the first, which carries the protocol's setup. "
            "Weights are secret-shared, so linear layers are products of two secrets. 'estimate' is the run's cost "
            "model applied to the ReLU count.")
    by_relus = sorted(measured, key=lambda m: m.trial.relus or 0)
    swapped = [(a, b) for i, a in enumerate(by_relus) for b in by_relus[i + 1:]
               if (a.trial.relus or 0) < (b.trial.relus or 0) and a.total_mb > b.total_mb]
    if swapped:
        a, b = swapped[0]
        note += (f" Ranked by measured communication the order differs from the ReLU count's in {len(swapped)} pair(s): "
                 f"{a.trial.series} #{a.trial.number} has fewer ReLUs ({text.count(a.trial.relus)}) than {b.trial.series} "
                 f"#{b.trial.number} ({text.count(b.trial.relus)}) but moves more ({text.megabytes(a.total_mb)} vs "
                 f"{text.megabytes(b.total_mb)}).")
    return note


def _pareto(report: Report) -> Section:
    cost = {run.label: run.settings.get("cost_model", "") for run in report.runs}
    headers = ("strategy", "run", "trial", "sampled hyperparameters", "options used", "ReLUs", "val acc", "val drop", "test acc",
               "test drop", "latency", "communication", "best overall", "saved model")
    rows = tuple(
        (
            _c(t.series),
            _c(t.run),
            _c(f"#{t.number}"),
            _c(text.params(t.params)),
            _c(text.options(t.attrs.get("options"))),
            _c(text.count(t.relus)),
            _c(text.accuracy_in(t.val_acc, t.val_interval)),
            _c(text.drop(t.val_drop)),
            _c(text.accuracy_in(t.test_acc, t.test_interval)),
            _c(text.drop(t.test_drop)),
            _c(f"{text.seconds(t.latency_s)} ({cost[t.run]})"),
            _c(f"{text.megabytes(t.communication_mb)} ({cost[t.run]})"),
            _c("yes" if t.on_overall_front else ""),
            _c(_model_cell(t)),
        )
        for t in report.pareto_trials
    )
    note = (
        "Each strategy's non-dominated trials (validation accuracy vs ReLUs), fewest ReLUs first. "
        "'best overall' marks trials no other strategy's trial dominates. Drops are from the run's full-ReLU "
        "teacher (see Baseline). Latency and communication are the online estimates of the run's cost model."
    )
    return Section("Pareto-optimal trials", (note, Table(headers, rows)))


def _model_cell(t: TrialRow) -> str:
    if t.model_path is None:
        return "not saved"
    return t.model_path if t.model_present else f"{t.model_path} (missing)"


def _published(report: Report) -> Section:
    headers = ("method", "model", "ReLUs", "top-1 (test)", "source")
    rows = tuple(
        (_c(p.method), _c(p.model), _c(text.count(p.relus)), _c(text.accuracy(p.accuracy)), _c(p.source))
        for p in sorted(report.published, key=lambda p: (p.method, p.relus))
    )
    note = (
        f"Figures from the papers for {report.dataset}, drawn as grey marks. They are test top-1 accuracies of "
        "full-size training runs with each paper's own counting convention, so read them as landmarks, not as "
        "a like-for-like comparison."
    )
    return Section("Published reference points", (note, Table(headers, rows)))


SETTING_LABELS = (
    ("run_dir", "run directory"),
    ("study_name", "study"),
    ("storage", "storage"),
    ("strategies", "strategies"),
    ("dataset", "dataset"),
    ("model", "model"),
    ("model_options", "model options"),
    ("objectives", "objectives"),
    ("budget", "ReLU budget"),
    ("full_relus", "full model ReLUs"),
    ("convention", "counting convention"),
    ("cost_model", "PI cost model"),
    ("sampler", "sampler"),
    ("seed", "seed"),
    ("trials", "trials requested"),
    ("created", "created"),
    ("versions", "versions"),
    ("extra", "other settings"),
)


def _settings(report: Report) -> Section:
    blocks: list[Block] = []
    for run in report.runs:
        rows = tuple((_c(label), _c(_setting(run, key))) for key, label in SETTING_LABELS)
        blocks.append(Table(("setting", "value"), rows, caption=f"Run {run.label}"))
    return Section("Settings", tuple(blocks))


def _setting(run: RunSummary, key: str) -> str:
    s = run.settings
    if key == "run_dir":
        return run.run_dir
    if key == "convention":
        return run.convention
    if key == "objectives":
        return ", ".join(f"{o} ({d})" for o, d in zip(s.get("objectives", []), s.get("directions", [])))
    value = s.get(key)
    if key == "budget":
        return "none" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
    if key == "full_relus" and isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={text.value(v)}" for k, v in sorted(value.items())) or "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return "—" if value is None or value == "" else str(value)
