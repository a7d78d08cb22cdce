"""The run directory: the one place a study keeps everything, and what reports read.

Layout::

    RUN_DIR/
      .lock             the live run's host, PID and start time (search.study.lock)
      run.json          RunSettings: what was asked for, versions, the study's name and storage
      study.db          Optuna storage (SQLite) unless --storage points elsewhere
      trials/<n>/model.pt   the linearized model of trial n (search.checkpoint format)
      trials/<n>/model-<B>.pt  for an SNL trial with path sharing, the model at each path budget B
      trials/<n>/log.txt    what trial n printed (training lines, a failure's traceback)
      trials/<n>/result.json  what trial n reported, written before Ray Tune hears of it: a trial whose
                        result never reached the storage (driver killed, Ctrl-C, storage fault) is
                        recorded from it by the next --resume instead of being trained again
      tune/             Ray Tune's own experiment state (not needed to resume or report)
      report.html report.md pareto.png trials.csv   written by search.report

Every path a run keeps is relative to its directory (``run.json`` names a storage inside it
relative to it), so a copied or moved run directory resumes on its own storage. A storage given with
``--storage`` lies outside and is kept as given (a relative file path made absolute).

Each finished Optuna trial carries these user attributes (``TRIAL_ATTRS``): ``strategy``,
``relus``, ``val_acc``, ``test_acc``, ``latency_s``, ``communication_mb``, ``seconds`` (wall),
``compute_seconds`` (CPU time of the trial's processes, or wall time on a GPU; for a trial stopped at
a rung, up to its last epoch), ``progress_seconds`` (time the trial spent streaming its progress to
the driver), ``model_path`` (relative to the run directory), ``feasible`` (within the budget), and,
for a failed trial, ``fail_reason``. Trial values follow ``RunSettings.objectives`` in order.

Also recorded: ``options`` (the strategy options the trial used, sampled and fixed), ``details`` (what
the strategy reports of its run, e.g. SNL's counts per epoch, ``count_above_epsilon`` and
``added_below_epsilon``, DeepReDuce's plan; a completed trial's), ``node_ip`` (the
Ray node it ran on), under ``--objectives measured_communication`` the model's secure inference
under SPU (``measured_communication_mb``, ``measured_relu_mb``, ``measured_seconds``, steady state per
inference, and ``measured_matches_plain``), ``infeasible_reason`` for a PRUNED trial whose plan was over the budget (it
never trained and is never on the Pareto front; its ``relus`` is the plan's count), ``prune_reason``
for a PRUNED trial stopped early (its target out of reach, or dominated at a rung: see
:mod:`search.study.halving`; its epochs' validation accuracies are its intermediate values), and ``rerun_of``
on a trial rerunning one that a killed run interrupted (that one is FAIL with ``fail_reason``
``interrupted ...``). A completed trial also records ``val_images`` and ``test_images`` (the sizes of
the splits its accuracies were measured on) and, where its strategy fetched the full-ReLU teacher,
``teacher_val_acc`` and ``teacher_test_acc`` (the teacher's accuracies: the report's baseline). A
trial recorded from another trial's mask path (path sharing, :func:`search.study.storage.record_path`)
carries ``path_of``, that trial's number, and ``compute_seconds`` 0. With a budget, every recorded
trial carries the Optuna constraint
``relus_over_budget`` = relus - budget (feasible when <= 0).

Trial parameters: ``strategy`` (when the study has several), ``relu_target`` (the ReLU count that
budget-driven strategies such as SNL train to in that trial; at most the budget, or the full count)
and each strategy's own ``<strategy>/<option>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.errors import SearchError
from search.outputs import check_writable_dir
from search.study.lock import LOCK_FILE, RunLock, acquire, in_use, live_owner

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
    "progress_seconds",
    "model_path",
    "feasible",
    "fail_reason",
    "options",
    "details",
    "node_ip",
    "infeasible_reason",
    "prune_reason",
    "rerun_of",
    "path_of",
    "teacher_val_acc",
    "teacher_test_acc",
    "val_images",
    "test_images",
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


def storage_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` or ``journal:`` storage URL (None for a database server)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    return None


def _with_file(url: str, path: Path | str) -> str:
    return f"journal:{path}" if url.startswith("journal:") else f"sqlite:///{path}" + (url.partition("?")[1] + url.partition("?")[2])


def absolute_storage(url: str, base: str | os.PathLike[str] | None = None) -> str:
    """``url`` with a relative file path resolved against ``base`` (default: the working directory)."""
    path = storage_file(url)
    if path is None or path.is_absolute():
        return url
    return _with_file(url, (Path(base or ".") / path).resolve())


def _relative_storage(run_dir: Path, url: str) -> str:
    """``url`` relative to ``run_dir`` when its file lies inside it, else unchanged."""
    path = storage_file(url)
    if path is None or not path.is_absolute():
        return url
    try:
        return _with_file(url, path.resolve().relative_to(run_dir.resolve()).as_posix())
    except ValueError:
        return url


def trial_model_path(run_dir: str | os.PathLike[str], number: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / str(number) / "model.pt"


def check_new_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Say in one line why ``run_dir`` cannot hold a new run (it holds one already, or cannot be
    created or written); creates nothing."""
    path = Path(run_dir)
    check_not_in_use(path)
    if path.exists() and (not path.is_dir() or (path / SETTINGS_FILE).exists()):
        raise SearchError(f"run directory {run_dir} already exists; pass --resume to continue it, or choose another --run-dir")
    if path.is_dir():
        check_writable(path)
        return
    check_writable_dir(path, "run directory")


def check_not_in_use(run_dir: Path) -> None:
    """A SearchError naming the live run that holds ``run_dir``, if one does."""
    owner = live_owner(run_dir) if run_dir.is_dir() else None
    if owner:
        raise in_use(run_dir, owner)


def check_writable(run_dir: str | os.PathLike[str]) -> None:
    """A SearchError unless files can be written in ``run_dir``."""
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise SearchError(f"cannot write in run directory {run_dir}: {err.strerror or err}") from None


@contextmanager
def claim(run_dir: Path, new: bool) -> Iterator[RunLock]:
    """Hold ``run_dir`` for this run (created when ``new``). A new run that ends before writing its
    ``run.json`` takes back what it made, so the same command can be given again."""
    made = new and not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SearchError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None
    lock = acquire(run_dir)
    try:
        if new and (run_dir / SETTINGS_FILE).exists():  # another run took it between the check and the lock
            raise SearchError(f"run directory {run_dir} already exists; pass --resume to continue it, or choose another --run-dir")
        yield lock
    finally:
        lock.release()
        if new and not (run_dir / SETTINGS_FILE).exists():
            _take_back(run_dir, made)


def _take_back(run_dir: Path, made: bool) -> None:
    """Remove what a new run wrote before it failed: its lock, and its folder when it made it."""
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    if made:
        shutil.rmtree(run_dir, ignore_errors=True)


def write_settings(run_dir: str | os.PathLike[str], settings: RunSettings) -> None:
    """Write ``run.json`` atomically, a storage inside ``run_dir`` named relative to it."""
    path = Path(run_dir) / SETTINGS_FILE
    record = {**dataclasses.asdict(settings), "storage": _relative_storage(Path(run_dir), settings.storage)}
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; on any failure no temporary file is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_settings(run_dir: str | os.PathLike[str]) -> RunSettings:
    """The settings of an existing run, or a SearchError saying what is missing or damaged."""
    path = Path(run_dir) / SETTINGS_FILE
    if not Path(run_dir).is_dir():
        raise SearchError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise SearchError(f"{run_dir} is not a run directory: {SETTINGS_FILE} is missing")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, found {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(RunSettings)}
        settings = RunSettings(**{k: v for k, v in raw.items() if k in known})
        settings.storage = absolute_storage(str(settings.storage), run_dir)
        return settings
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError, OSError) as err:
        raise SearchError(f"{path} is damaged: {err}") from None
