"""Reading run directories and the published reference points: all the I/O a report does on input.

A run directory is read without changing it: the storage file is checked before Optuna opens it, so
a missing or damaged file gives one clear error instead of an empty database created in its place.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import optuna
from optuna.trial import FrozenTrial

from search.errors import SearchError
from search.study import rundir
from search.study.rundir import RunSettings

SQLITE_MAGIC = b"SQLite format 3\x00"
PUBLISHED_FILE = "published_pareto.csv"


@dataclass(frozen=True)
class RunData:
    """One run directory as read from disk: what the pure report builder works from."""

    label: str
    run_dir: Path
    settings: RunSettings
    trials: tuple[FrozenTrial, ...]
    models_present: frozenset[int]


@dataclass(frozen=True)
class PublishedPoint:
    """An accuracy-vs-ReLU figure from a paper (top-1 test accuracy as a fraction), with its source."""

    method: str
    dataset: str
    model: str
    relus: int
    accuracy: float
    source: str


def load_runs(run_dirs: list[Path]) -> list[RunData]:
    """Every run directory in order (a directory named twice is read once), labels made unique."""
    unique: list[Path] = []
    for run_dir in run_dirs:
        if Path(run_dir).resolve() not in [u.resolve() for u in unique]:
            unique.append(Path(run_dir))
    labels: list[str] = []
    for run_dir in unique:
        base = run_dir.resolve().name or str(run_dir)
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return [load_run(run_dir, label) for run_dir, label in zip(unique, labels)]


def load_run(run_dir: Path, label: str | None = None) -> RunData:
    """Settings and trials of one run directory, or a SearchError naming what is missing or damaged."""
    run_dir = Path(run_dir)
    settings = rundir.read_settings(run_dir)
    _check_settings(run_dir, settings)
    storage = _open_storage(run_dir, settings.storage)
    try:
        study = optuna.load_study(study_name=settings.study_name, storage=storage)
        trials = tuple(study.get_trials(deepcopy=False))
    except KeyError:
        where = run_dir / rundir.SETTINGS_FILE
        raise SearchError(f"study {settings.study_name!r} (named in {where}) is not in {settings.storage}") from None
    except Exception as err:  # SQLAlchemy, sqlite3 and journal errors all mean the same to a user
        raise SearchError(f"cannot read the study storage {settings.storage}: {_first_line(err)}") from None
    finally:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()  # search.run calls this in a long-lived process: leave no connection open
    present = frozenset(t.number for t in trials if (path := model_file(run_dir, t)) is not None and path.is_file())
    return RunData(label or run_dir.resolve().name, run_dir, settings, trials, present)


def load_published() -> list[PublishedPoint]:
    """The published points shipped with the package (``search/reference/published_pareto.csv``)."""
    text = (importlib.resources.files("search") / "reference" / PUBLISHED_FILE).read_text(encoding="utf-8")
    return parse_published(text)


def parse_published(text: str) -> list[PublishedPoint]:
    """Rows ``method,dataset,model,relus,top1,source`` with ``top1`` in percent."""
    points = []
    for row in csv.DictReader(io.StringIO(text)):
        points.append(
            PublishedPoint(
                method=row["method"],
                dataset=row["dataset"],
                model=row["model"],
                relus=int(row["relus"]),
                accuracy=float(row["top1"]) / 100.0,
                source=row["source"],
            )
        )
    return points


def model_file(run_dir: Path, trial: FrozenTrial) -> Path | None:
    """Where a trial's saved model is (its ``model_path`` attribute is relative to the run directory)."""
    path = trial.user_attrs.get("model_path")
    if not path:
        return None
    path = Path(str(path))
    return path if path.is_absolute() else run_dir / path


def _check_settings(run_dir: Path, settings: RunSettings) -> None:
    where = run_dir / rundir.SETTINGS_FILE
    if not isinstance(settings.objectives, list) or "accuracy" not in settings.objectives or "relus" not in settings.objectives:
        raise SearchError(f"{where} is damaged: objectives must list 'accuracy' and 'relus', got {settings.objectives!r}")
    if not isinstance(settings.study_name, str) or not isinstance(settings.storage, str) or not settings.storage:
        raise SearchError(f"{where} is damaged: study_name and storage must be strings")
    if not isinstance(settings.full_relus, int) or settings.full_relus <= 0:
        raise SearchError(f"{where} is damaged: full_relus must be a positive integer, got {settings.full_relus!r}")
    budget = settings.budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise SearchError(f"{where} is damaged: budget must be null or a positive integer, got {budget!r}")
    if not isinstance(settings.strategies, list) or not all(isinstance(s, str) for s in settings.strategies):
        raise SearchError(f"{where} is damaged: strategies must be a list of names, got {settings.strategies!r}")
    for key in ("dataset", "model", "cost_model"):
        if not isinstance(getattr(settings, key), str):
            raise SearchError(f"{where} is damaged: {key} must be a string, got {getattr(settings, key)!r}")


def _open_storage(run_dir: Path, url: str) -> optuna.storages.BaseStorage:
    """The storage, read-only in spirit: a file-backed one must exist and be what it claims, and no
    tables are created (``skip_table_creation``, as optuna-dashboard does), so a wrong file stays as it was."""
    if url.startswith("sqlite:"):
        path = _sqlite_path(url)
        if path is None:
            return _rdb(url)
        if not path.exists() and (run_dir / path.name).is_file():
            path = run_dir / path.name  # the run directory was moved or copied since run.json was written
            url = f"sqlite:///{path.resolve()}"
        if not path.is_file():
            raise SearchError(f"study storage {path} does not exist (run.json names {url})")
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise SearchError(f"study storage {path} is damaged: not an SQLite database")
        return _rdb(url)
    if "://" in url:
        return _rdb(url)  # a database server (PostgreSQL, MySQL): Optuna says what is wrong with it
    path = Path(url.removeprefix("journal:"))
    if not path.is_file() and not path.is_absolute() and (run_dir / path).is_file():
        path = run_dir / path  # a relative journal path, read from elsewhere than where the run started
    if not path.is_file():
        raise SearchError(f"study storage {path} does not exist")
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _rdb(url: str) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as err:  # driver missing, server unreachable, not an Optuna database, schema too new
        raise SearchError(f"cannot read the study storage {url}: {_first_line(err)}") from None


def _sqlite_path(url: str) -> Path | None:
    """The file behind an ``sqlite:///`` URL (None for an in-memory database)."""
    parsed = urlparse(url)
    path = unquote(parsed.path)
    if not path or path == "/" or ":memory:" in path:
        return None
    return Path(path[1:])  # sqlite:///relative.db -> "/relative.db"; sqlite:////abs.db -> "//abs.db"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
