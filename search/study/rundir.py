"""The run directory: the one place a study keeps everything, and what reports read.

Layout::

    RUN_DIR/
      run.json          RunSettings: what was asked for, versions, the study's name and storage
      study.db          Optuna storage (SQLite) unless --storage points elsewhere
      trials/<n>/model.pt   the linearized model of trial n (search.checkpoint format)
      trials/<n>/log.txt    what trial n printed (training lines, a failure's traceback)
      tune/             Ray Tune's own experiment state (not needed to resume or report)
      report.html report.md pareto.png trials.csv   written by search.report

Each finished Optuna trial carries these user attributes (``TRIAL_ATTRS``): ``strategy``,
``relus``, ``val_acc``, ``test_acc``, ``latency_s``, ``communication_mb``, ``seconds`` (wall),
``compute_seconds`` (CPU time of the trial's processes, or wall time on a GPU), ``model_path`` (relative to the run directory), ``feasible`` (within the budget), and, for a failed
trial, ``fail_reason``. Trial values follow ``RunSettings.objectives`` in order.

Also recorded: ``options`` (the strategy options the trial used, sampled and fixed), ``node_ip`` (the
Ray node it ran on), ``infeasible_reason`` for a PRUNED trial whose plan was over the budget (it
never trained and is never on the Pareto front; its ``relus`` is the plan's count), and ``rerun_of``
on a trial rerunning one that a killed run interrupted (that one is FAIL with ``fail_reason``
``interrupted ...``). With a budget, every recorded trial carries the Optuna constraint
``relus_over_budget`` = relus - budget (feasible when <= 0).

Trial parameters: ``strategy`` (when the study has several), ``relu_target`` (the ReLU count that
budget-driven strategies such as SNL train to in that trial; at most the budget, or the full count)
and each strategy's own ``<strategy>/<option>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.errors import SearchError

SETTINGS_FILE = "run.json"
STORAGE_FILE = "study.db"
TRIALS_DIR = "trials"
TRIAL_ATTRS = (
    "strategy",
    "relus",
    "val_acc",
    "test_acc",
    "latency_s",
    "communication_mb",
    "seconds",
    "compute_seconds",
    "model_path",
    "feasible",
    "fail_reason",
    "options",
    "node_ip",
    "infeasible_reason",
    "rerun_of",
)


@dataclass
class RunSettings:
    """What a study was asked to do; written once at the start, checked on --resume."""

    study_name: str
    storage: str
    strategies: list[str]
    dataset: str
    model: str
    model_options: dict[str, Any]
    objectives: list[str]
    directions: list[str]
    budget: int | None
    full_relus: int
    stem_relu: bool
    cost_model: str
    sampler: str
    seed: int
    trials: int | None  # None: no cap, the time share ends the study
    created: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    minutes_per_strategy: float | None = None  # compute time each strategy may use (search.study.timeshare)


def storage_url(run_dir: str | os.PathLike[str]) -> str:
    """The default SQLite storage URL inside ``run_dir``."""
    return f"sqlite:///{Path(run_dir).resolve() / STORAGE_FILE}"


def trial_model_path(run_dir: str | os.PathLike[str], number: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / str(number) / "model.pt"


def check_new_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Create ``run_dir`` for a new run, or say in one line why it cannot be one (it holds a run
    already, or cannot be written)."""
    path = Path(run_dir)
    if path.exists() and (not path.is_dir() or (path / SETTINGS_FILE).exists()):
        raise SearchError(f"run directory {run_dir} already exists; pass --resume to continue it, or choose another --run-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SearchError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None
    check_writable(path)


def check_writable(run_dir: str | os.PathLike[str]) -> None:
    """A SearchError unless files can be written in ``run_dir``."""
    probe = Path(run_dir) / ".write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SearchError(f"cannot write in run directory {run_dir}: {err.strerror or err}") from None


def write_settings(run_dir: str | os.PathLike[str], settings: RunSettings) -> None:
    path = Path(run_dir) / SETTINGS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(settings), indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_settings(run_dir: str | os.PathLike[str]) -> RunSettings:
    """The settings of an existing run, or a SearchError saying what is missing or damaged."""
    path = Path(run_dir) / SETTINGS_FILE
    if not Path(run_dir).is_dir():
        raise SearchError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise SearchError(f"{run_dir} is not a run directory: {SETTINGS_FILE} is missing")
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(RunSettings)}
        return RunSettings(**{k: v for k, v in raw.items() if k in known})
    except (json.JSONDecodeError, TypeError) as err:
        raise SearchError(f"{path} is damaged: {err}") from None
