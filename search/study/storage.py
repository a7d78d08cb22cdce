"""The Optuna side of a study, without Ray: storage, recording results, and the trial bookkeeping of
resume (the samplers are in :mod:`search.study.samplers`).

Kept apart from :mod:`search.study.engine` so the command line can check names and storage URLs (and fail
in one line) without importing Ray.

A storage is only ever written when it is an Optuna storage or a new, empty file:
:func:`check_storage` refuses, untouched, a SQLite file or database that holds other tables, a journal
file that is not Optuna's, and (on ``--resume``) a storage that does not exist.
"""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import SearchError
from search.objectives import Objective, pareto_front
from search.outputs import check_writable_dir
from search.study.artifacts import read_result
from search.study.rundir import storage_file
from search.study.trial import TARGET_PARAM

INTERRUPTED = "interrupted before it finished (rerun by --resume)"
NUMERIC_ATTRS = ("relus", "val_acc", "test_acc", "latency_s", "communication_mb", "seconds", "compute_seconds",
                 "progress_seconds", "teacher_val_acc", "teacher_test_acc", "val_images", "test_images",
                 "measured_communication_mb", "measured_relu_mb", "measured_seconds")
COUNT_ATTRS = ("relus", "val_images", "test_images")  # stored as integers
# What a storage that cannot be written raises: SQLAlchemy's errors (SQLite, servers), OSError (journal
# files, full disks) and Optuna's own wrapper.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, optuna.exceptions.StorageInternalError)
try:
    from sqlalchemy.exc import SQLAlchemyError

    STORAGE_ERRORS += (SQLAlchemyError,)
except ImportError:  # Optuna without SQLAlchemy: journal storages only
    pass
# Tables every Optuna RDB storage has; a database holding other tables but not these is not Optuna's.
_OPTUNA_TABLES = {"studies", "trials", "version_info"}


def check_storage(url: str, must_exist: bool) -> None:
    """Refuse, without touching it, a storage that is not Optuna's (or, with ``must_exist``, missing)."""
    path = storage_file(url)
    if path is None:
        if url.startswith(("sqlite:", "journal:")) or "://" not in url:
            raise SearchError(f"cannot open study storage {url!r}: expected an RDB URL such as sqlite:///study.db or "
                              "postgresql://user@host/db, or journal:PATH")
        _check_server(url)
        return
    if path.is_dir():
        raise SearchError(f"study storage {path} is a directory, not a file")
    if not path.exists():
        if must_exist:
            raise SearchError(f"study storage {path} does not exist: the run's finished trials are not there to resume "
                              "(restore the file, or start a new run)")
        check_writable_dir(path.parent, "the folder of study storage")
        return
    if url.startswith("journal:"):
        _check_journal(path)
    else:
        _check_sqlite(url, path)


def _check_sqlite(url: str, path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            header = handle.read(16)
        if not header:
            return  # an empty file: SQLite makes it a database
        if header != b"SQLite format 3\x00":
            raise SearchError(f"cannot open study storage {url!r}: {path} is not a SQLite database (damaged, or another "
                              "kind of file); refusing to write it")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        raise SearchError(f"cannot open study storage {url!r}: {err}") from None
    except OSError as err:
        raise SearchError(f"cannot read study storage {path}: {err.strerror or err}") from None
    _check_tables(str(path), tables)


def _check_tables(where: str, tables: set[str]) -> None:
    if tables and not _OPTUNA_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise SearchError(f"{where} holds another application's tables ({shown}), not an Optuna storage; "
                          "refusing to write it: give a new file or an Optuna storage")


def _check_journal(path: Path) -> None:
    """An Optuna journal is one JSON object with an ``op_code`` per line."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as err:
        raise SearchError(f"cannot read study storage {path}: {err.strerror or err}") from None
    if not first.strip():
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise SearchError(f"{path} is not an Optuna journal file; refusing to append to it: give a new file or an Optuna journal")


def _check_server(url: str) -> None:
    """A database server: its tables are Optuna's, or it has none."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as err:  # bad URL, missing driver, unreachable server: all one line for the user
        raise SearchError(f"cannot open study storage {url!r}: {_first_line(err)}") from None
    _check_tables(url, tables)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fault_reason(err: BaseException) -> str:
    """The root cause of a storage error in one line (Optuna and SQLAlchemy wrap the driver's own
    error, e.g. SQLite's "database or disk is full", in generic messages)."""
    while err.__cause__ is not None or getattr(err, "orig", None) is not None:
        err = err.__cause__ or err.orig  # type: ignore[attr-defined]
    return _first_line(err)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB URL (``sqlite:///path``, ``postgresql://...``) or ``journal:PATH`` (Optuna's journal file)."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        if "://" not in url:
            raise ValueError("not a URL")
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
    except Exception as err:  # bad URL, missing driver, unreachable server
        raise SearchError(
            f"cannot open study storage {url!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}; "
            "expected an RDB URL such as sqlite:///study.db or postgresql://user@host/db, or journal:PATH"
        ) from None


def create_study(url: str, study_name: str, directions: Sequence[str], names: Sequence[str]) -> None:
    """Create the study in its storage (which :func:`check_storage` has cleared); a name in use is an error."""
    try:
        study = optuna.create_study(storage=open_storage(url), study_name=study_name, directions=list(directions))
        with warnings.catch_warnings():  # experimental in Optuna 5, stable enough for a label
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))  # optuna-dashboard labels the axes with them
    except optuna.exceptions.DuplicatedStudyError:
        raise SearchError(f"a study named {study_name} is already in {url}") from None
    except STORAGE_ERRORS as err:
        raise SearchError(f"cannot write study storage {url}: {fault_reason(err)}") from None


def check_study(storage: optuna.storages.BaseStorage, study_name: str, where: str) -> None:
    """``--resume`` needs the study in the storage: never start an empty one in its place."""
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        raise SearchError(f"study {study_name} is not in its storage {where}: nothing to resume there "
                          "(was the storage replaced?); restore it, or start a new run") from None


def store_curve(study: optuna.Study, trial_id: int, curve: str | None) -> None:
    """Each ``[step, val_acc]`` of a reported ``curve`` (JSON, see :class:`search.study.trainable.ProgressRelay`)
    as an intermediate value of the trial: its learning curve."""
    for step, value in json.loads(curve or "[]"):
        study._storage.set_trial_intermediate_value(trial_id, int(step), float(value))


def result_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """The user attributes a reported ``result`` gives its trial (``search.study.rundir.TRIAL_ATTRS``)."""
    attrs: dict[str, Any] = {}
    for key in NUMERIC_ATTRS:
        value = result.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            attrs[key] = int(value) if key in COUNT_ATTRS else float(value)
    attrs.update({key: result[key] for key in ("model_path", "node_ip") if result.get(key)})
    attrs["options"] = json.loads(result.get("options") or "{}")
    if result.get("details", "{}") != "{}":
        attrs["details"] = json.loads(result["details"])
    attrs["feasible"] = bool(result.get("feasible"))
    if "measured_matches_plain" in result:
        attrs["measured_matches_plain"] = bool(result["measured_matches_plain"])
    return attrs


def record(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any], objectives: Sequence[str],
           budget: int | None) -> list[FrozenTrial]:
    """Store a trial's reported ``result``: COMPLETE with its objective values, PRUNED when its plan
    was over the budget (``infeasible``), FAIL with ``fail_reason`` otherwise; with every user attribute
    of ``search.study.rundir.TRIAL_ATTRS`` it has and the rest of its learning curve. The points of its
    mask path (``result["path"]``) become trials of their own (:func:`record_path`), returned."""
    store_curve(study, trial._trial_id, result.get("curve"))
    for key, value in result_attrs(result).items():
        trial.set_user_attr(key, value)
    relus = result.get("relus")
    if budget is not None and isinstance(relus, (int, float)) and math.isfinite(relus):
        trial.set_constraint("relus_over_budget", float(relus) - budget)
    values = [result.get(name) for name in objectives]
    if result.get("status") == "infeasible":
        trial.set_user_attr("infeasible_reason", result.get("reason", ""))
        study.tell(trial, state=TrialState.PRUNED)
    elif result.get("status") == "pruned":  # stopped early: its target was out of reach, or it was dominated
        prune(study, trial, result.get("reason") or "stopped early")
    elif result.get("status") != "ok":
        fail(study, trial, result.get("reason") or "failed without a reason")
    elif not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        fail(study, trial, f"objective values are not all finite numbers: {values}")
    else:
        study.tell(trial, [float(v) for v in values])  # type: ignore[arg-type]
    return record_path(study, trial, result, objectives, budget)


def record_path(study: optuna.Study, parent: optuna.Trial, result: dict[str, Any], objectives: Sequence[str],
                budget: int | None) -> list[FrozenTrial]:
    """Each point of the parent's mask path as a COMPLETE trial: the parent's parameters with the
    target set to the point's budget (the run that trial would be: same seed, same masks, see
    ``SNL.run_budgets``), its own values and files, ``path_of`` the parent's number and no compute
    time of its own (the parent's covers it)."""
    points = json.loads(result.get("path") or "[]")
    if not points:
        return []
    parent_frozen = study._storage.get_trial(parent._trial_id)
    added = []
    for point in points:
        params = dict(parent_frozen.params)
        if TARGET_PARAM in params:
            params[TARGET_PARAM] = int(point["budget"])
        attrs = {**result_attrs(point), "strategy": parent_frozen.user_attrs.get("strategy"), "path_of": parent_frozen.number,
                 "options": parent_frozen.user_attrs.get("options", {}), "compute_seconds": 0.0}
        constraints = {"relus_over_budget": float(point["relus"]) - budget} if budget is not None else None
        template = optuna.trial.create_trial(params=params, distributions=parent_frozen.distributions,
                                             values=[float(point[name]) for name in objectives], user_attrs=attrs,
                                             constraints=constraints)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
        added.append(study._storage.get_trial(trial_id))
    return added


def prune(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Record a trial stopped early (``prune_reason``); its learning curve so far stays in the storage."""
    trial.set_user_attr("prune_reason", reason)
    trial.set_user_attr("feasible", False)
    study.tell(trial, state=TrialState.PRUNED)


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("feasible", False)
    study.tell(trial, state=TrialState.FAIL)


def finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards the study's total (an interrupted one does not: it is rerun)."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_reason") != INTERRUPTED
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def settle_interrupted(study: optuna.Study, run_dir: Path, objectives: Sequence[str], budget: int | None) -> int:
    """Settle the trials left RUNNING (:func:`settle_running`) and enqueue each interrupted trial once
    more with its parameters; returns how many were enqueued."""
    settle_running(study, run_dir, objectives, budget)
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    again = [t for t in trials if t.state == TrialState.FAIL and not finished(t) and t.number not in rerun]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number, "strategy": trial.user_attrs.get("strategy")})
    return len(again)


def settle_running(study: optuna.Study, run_dir: Path, objectives: Sequence[str], budget: int | None) -> None:
    """Nothing of this study is running any more: record each RUNNING trial from the result it saved
    in the run directory, or mark it FAIL (interrupted) when it saved none."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.Trial(study, frozen._trial_id)
        result = read_result(run_dir, frozen.number)
        if result is not None:
            record(study, trial, result, objectives, budget)
        else:
            fail(study, trial, INTERRUPTED)


def remaining_trials(study: optuna.Study, total: int) -> int:
    """Trials still to run for ``total``: the points of a trial's mask path (``path_of``) do not count."""
    return max(0, total - sum(finished(t) and "path_of" not in t.user_attrs for t in study.get_trials(deepcopy=False)))


def existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials the study already has (0 for a new one): offsets the sampler's seed on resume,
    so a resumed random sampler does not replay the first run's samples."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name))
    except KeyError:
        return 0


def pareto_trials(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrozenTrial]:
    """Completed, feasible trials on the Pareto front, best accuracy first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible", True)]
    front = [done[i] for i in pareto_front([t.values for t in done], [o.direction for o in objectives])]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1]))
