"""Property-based tests of the command lines: whatever a user types, every CLI ends well.

Hypothesis builds command lines for ``search.inspect``, ``search.linearize``, ``search.report`` and
``search.train_teacher`` from vocabularies of valid and invalid values per option (unknown options,
NaN / infinite / negative / zero / huge / non-numeric numbers, bad names, bad ``--set`` pairs,
missing, folder and garbage files, bad budgets, damaged run directories next to a real one): all
valid, valid but for one fault, or several faults. For every one: the exit code is 0 or 2, no
traceback is printed, there is at most one ``error:`` line and exactly one on exit 2 (the last line
of stderr), and no file in the fixture folder changed (only ``search.report`` may add its four files
to the run directory it was given first, on success). ``test_every_value_alone`` also tries every
value of every vocabulary alone on a valid command line, which random sampling covers only in part.

``search.linearize`` and ``search.train_teacher`` always get ``--dry-run``, or a command line that is
invalid by construction; their training entry points are replaced by a tripwire, so a command that
would start training fails the test instead of running for minutes; a dry run's estimate times one
small step per network (``tests.conftest.quick_estimates``). Calls run in-process through
``search.cli.run_main`` (the real entry point's code path, without a new interpreter per example); a
few subprocess cases at the end check the real entry points.

The number of examples per test is ``$SEARCH_PROPERTY_EXAMPLES`` (default 40: the file runs in well
under a minute on 2 CPUs); set it to a few thousand for a thorough run. ``$SEARCH_PROPERTY_LOG`` names
a file to append one JSON line per command line to (module, argv, exit code, last stderr line);
``$SEARCH_PROPERTY_COUNTS`` one to write the number of command lines per CLI to.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import optuna
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.checkpoint import save_model
from search.cli import run_main
from search.data import load_dataset
from search.spaces import build_model
from search.study import rundir
from search.teacher import teacher_key
from search.train import teacher_config
from tests.conftest import CIFAR_DIR, PROJECT_ROOT, quick_estimates

EXAMPLES = int(os.environ.get("SEARCH_PROPERTY_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": it reruns a failing case many times over
    # The world fixture is module-scoped and every call isolates its own environment and working
    # folder, so conftest's function-scoped autouse fixture being shared across examples is harmless.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
REPORT_FILES = frozenset({"report.html", "report.md", "pareto.png", "trials.csv"})
HAVE_CIFAR = (CIFAR_DIR / "cifar-10-batches-py" / "data_batch_1").is_file()
GENERATED: dict[str, int] = {}  # examples run per CLI, printed at the end (for the large-budget run's numbers)


# -- the fixture world ------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class World:
    """Files every example may be pointed at. Its whole tree is hashed before and after each call."""

    root: Path
    cwd: Path  # the working directory of every call: relative outputs would land (and be seen) here
    cache: Path  # $SEARCH_CACHE_DIR, holding the cached teacher of resnet_tiny on digits
    plain: Path  # a regular text file: nothing can be created under it
    garbage: Path
    empty: Path
    folder: Path
    checkpoints: dict[str, Path]
    runs: dict[str, Path]
    cifar_bad: Path  # cifar-10-batches-py with truncated and foreign batch files

    def __repr__(self) -> str:  # hypothesis prints the fixture with every failure: keep it to one line
        return f"World({self.root})"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (files), ``dir`` (folders) or the link target (symlinks)."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in dirs:
            path = base / name
            found[str(path.relative_to(root))] = f"link:{os.readlink(path)}" if path.is_symlink() else "dir"
        for name in files:
            path = base / name
            found[str(path.relative_to(root))] = f"link:{os.readlink(path)}" if path.is_symlink() else _sha(path)
    return found


def stat_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` (for the large real-data folder)."""
    if not root.is_dir():
        return {}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def make_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    good = folder / "good.pt"
    model = build_model("resnet_tiny", num_classes=10, input_size=(1, 8, 8))
    save_model(model, good, "resnet_tiny", {}, 10, (1, 8, 8), {"relus": 4608})
    payloads: dict[str, object] = {
        "wrong-format.pt": {"format": "something/else"},
        "damaged.pt": {"format": "search.linearized/1", "model": "resnet_tiny", "options": {}, "num_classes": 10},
        "bad-size.pt": {"format": "search.linearized/1", "model": "resnet_tiny", "options": {}, "num_classes": 10,
                        "input_size": [1, 99999, 99999], "state_dict": {}},
        "unknown-model.pt": {"format": "search.linearized/1", "model": "nope", "options": {}, "num_classes": 10,
                             "input_size": [1, 8, 8], "state_dict": {}},
        "bad-options.pt": {"format": "search.linearized/1", "model": "resnet_tiny", "options": {"width": "wide"},
                           "num_classes": 10, "input_size": [1, 8, 8], "state_dict": {}},
        "mismatch.pt": {"format": "search.linearized/1", "model": "resnet18", "options": {}, "num_classes": 10,
                        "input_size": [3, 8, 8], "state_dict": torch.load(good, weights_only=True)["state_dict"]},
        "list.pt": [1, 2, 3],
    }
    paths = {"good": good}
    for name, payload in payloads.items():
        torch.save(payload, folder / name)
        paths[name.removesuffix(".pt")] = folder / name
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    paths["truncated"] = folder / "truncated.pt"
    return paths


def make_run(run_dir: Path, model_file: Path) -> Path:
    """A small real run directory, as search.run leaves it: run.json, an SQLite study, saved models."""
    run_dir.mkdir(parents=True)
    settings_ = rundir.RunSettings(
        study_name="prop-study", storage=rundir.storage_url(run_dir), strategies=["snl", "deepreduce"], dataset="digits",
        model="resnet_tiny", model_options={}, objectives=["accuracy", "relus"], directions=["maximize", "minimize"],
        budget=3000, full_relus=4608, stem_relu=True, cost_model="delphi", sampler="tpe", seed=0, trials=4,
        created="2026-11-30T08:00:00+00:00", versions={"search": "0.1.0"},
    )
    rundir.write_settings(run_dir, settings_)
    storage = optuna.storages.RDBStorage(settings_.storage)
    study = optuna.create_study(study_name=settings_.study_name, storage=storage, directions=settings_.directions)
    rows = [("snl", 460, 0.91, TrialState.COMPLETE), ("snl", 1000, 0.95, TrialState.COMPLETE),
            ("deepreduce", 2304, 0.96, TrialState.COMPLETE), ("deepreduce", None, None, TrialState.FAIL)]
    for number, (strategy, relus, acc, state) in enumerate(rows):
        attrs: dict[str, object] = {"strategy": strategy, "seconds": 10.0 + number, "options": {"lr": 0.01}}
        params = {f"{strategy}/lr": 0.01}
        dists = {f"{strategy}/lr": FloatDistribution(1e-4, 1e-1, log=True)}
        if state == TrialState.COMPLETE:
            model = rundir.trial_model_path(run_dir, number)
            model.parent.mkdir(parents=True)
            model.write_bytes(model_file.read_bytes())
            attrs |= {"relus": relus, "val_acc": acc, "test_acc": acc - 0.01, "feasible": True,
                      "model_path": str(model.relative_to(run_dir)), "latency_s": relus * 24.6e-6,
                      "communication_mb": relus * 1184 / 1e6}
            study.add_trial(create_trial(state=state, values=[acc, relus], params=params, distributions=dists,
                                         user_attrs=attrs, constraints={"relus_over_budget": relus - 3000}))
        else:
            attrs["fail_reason"] = "loss became NaN"
            study.add_trial(create_trial(state=state, params=params, distributions=dists, user_attrs=attrs))
    storage.engine.dispose()
    return run_dir


def make_damaged_runs(root: Path, good: Path) -> dict[str, Path]:
    """Run directories damaged in the ways a crash, a copy or a hand edit leaves them."""
    settings_ = json.loads((good / rundir.SETTINGS_FILE).read_text())
    db = (good / rundir.STORAGE_FILE).read_bytes()

    def edited(**changes: object) -> str:
        return json.dumps({**settings_, **changes})

    variants: dict[str, dict[str, bytes | str]] = {
        "empty": {},
        "bad-json": {"run.json": "{"},
        "json-list": {"run.json": "[]"},
        "json-null": {"run.json": "null"},
        "json-missing-fields": {"run.json": '{"study_name": "x"}'},
        "binary-json": {"run.json": b"\xff\xfe\x00garbage"},
        "no-db": {"run.json": edited()},
        "garbage-db": {"run.json": edited(), "study.db": b"this is not a database" * 10},
        "truncated-db": {"run.json": edited(), "study.db": db[: len(db) // 3]},
        "header-only-db": {"run.json": edited(), "study.db": db[:100]},
        "wrong-study": {"run.json": edited(study_name="another-study"), "study.db": db},
        "bad-objectives": {"run.json": edited(objectives=["accuracy", "speed"]), "study.db": db},
        "bad-full": {"run.json": edited(full_relus=-1), "study.db": db},
        "string-budget": {"run.json": edited(budget="lots"), "study.db": db},
        "int-strategies": {"run.json": edited(strategies=5), "study.db": db},
        "int-dataset": {"run.json": edited(dataset=5), "study.db": db},
        "int-cost-model": {"run.json": edited(cost_model=3), "study.db": db},
        "float-budget": {"run.json": edited(budget=10.5), "study.db": db},
        "memory-storage": {"run.json": edited(storage="sqlite:///:memory:")},
        "journal-missing": {"run.json": edited(storage="journal:nowhere.log")},
        "server-storage": {"run.json": edited(storage="postgresql://nobody@127.0.0.1:9/x")},
        "storage-elsewhere": {"run.json": edited(storage=f"sqlite:///{good / rundir.STORAGE_FILE}")},
    }
    runs: dict[str, Path] = {}
    for name, files in variants.items():
        folder = root / name
        folder.mkdir()
        for file_name, content in files.items():
            if isinstance(content, bytes):
                (folder / file_name).write_bytes(content)
            else:
                (folder / file_name).write_text(content)
        runs[name] = folder
    return runs


def make_cifar_bad(root: Path) -> Path:
    folder = root / "cifar-bad" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"\x80\x04garbage")
    torch.save({"not": "a batch"}, folder / "data_batch_2")
    (folder / "test_batch").write_bytes(b"")
    return folder.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("cli-world")
    (root / "cwd").mkdir()
    plain = root / "plain.txt"
    plain.write_text("a regular file\n")
    (root / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    (root / "empty.bin").write_bytes(b"")
    (root / "folder").mkdir()
    checkpoints = make_checkpoints(root / "checkpoints")
    good = make_run(root / "runs" / "good", checkpoints["good"])
    runs = {"good": good, **make_damaged_runs(root / "runs", good)}
    cache = root / "cache"
    data = load_dataset("digits")
    key = teacher_key("resnet_tiny", {}, data, teacher_config("digits"))
    model = build_model("resnet_tiny", num_classes=10, input_size=(1, 8, 8))
    save_model(model, cache / "teachers" / f"{key}.pt", "resnet_tiny", {}, 10, (1, 8, 8), {"val_acc": 0.5, "test_acc": 0.5})
    return World(root, root / "cwd", cache, plain, root / "garbage.bin", root / "empty.bin", root / "folder",
                 checkpoints, runs, make_cifar_bad(root))


# -- calling a CLI in-process -----------------------------------------------------------------------


class TrainingStarted(BaseException):
    """Raised by the patched training entry points: a dry run or a bad command line got that far."""


def _tripwire(*_args: object, **_kwargs: object) -> None:
    raise TrainingStarted("training started")


TRIPWIRES = {"search.linearize": ("execute",), "search.train_teacher": ("get_teacher",)}


@dataclass(frozen=True)
class Outcome:
    argv: tuple[str, ...]
    code: object
    out: str
    err: str

    def __str__(self) -> str:
        return f"argv={list(self.argv)!r}\nexit={self.code!r}\n--- stdout\n{self.out}--- stderr\n{self.err}"


def call(world: World, module: str, argv: Sequence[str]) -> Outcome:
    """``python -m module argv`` in this process, from ``world.cwd``, with the world's teacher cache."""
    mod = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    env = {"SEARCH_CACHE_DIR": str(world.cache), "SEARCH_DATA_DIR": str(world.root / "no-data-here")}
    with contextlib.ExitStack() as stack:
        for name in TRIPWIRES.get(module, ()):
            stack.enter_context(mock.patch.object(mod, name, _tripwire))
        stack.enter_context(quick_estimates())
        stack.enter_context(mock.patch.dict(os.environ, env))
        stack.enter_context(contextlib.chdir(world.cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            run_main(mod.main, list(argv))
            code: object = "returned without exiting"
        except SystemExit as stop:
            code = 0 if stop.code is None else stop.code
        except BaseException:  # noqa: BLE001 - anything else escaping run_main is the failure under test
            err.write(traceback.format_exc())
            code = "raised"
    return Outcome(tuple(argv), code, out.getvalue(), err.getvalue())


def check(outcome: Outcome, *, must_fail: bool = False) -> None:
    """Exit 0 or 2; no traceback; one ``error:`` line (the last of stderr) on exit 2, none on exit 0."""
    assert outcome.code in (0, 2), str(outcome)
    assert "Traceback" not in outcome.out + outcome.err, str(outcome)
    errors = [line for line in (outcome.out + outcome.err).splitlines() if line.startswith("error:")]
    if outcome.code == 2:
        assert len(errors) == 1, str(outcome)
        assert outcome.err.rstrip("\n").splitlines()[-1] == errors[0], str(outcome)
    else:
        assert errors == [], str(outcome)
    if must_fail:
        assert outcome.code == 2, str(outcome)


def run_checked(world: World, module: str, argv: Sequence[str], *, must_fail: bool = False,
                allowed: Callable[[Outcome], set[str]] = lambda _o: set()) -> Outcome:
    """:func:`call` and :func:`check`, asserting the world is unchanged but for ``allowed(outcome)``."""
    before, real_data = snapshot(world.root), stat_snapshot(CIFAR_DIR)
    outcome = call(world, module, argv)
    GENERATED[module] = GENERATED.get(module, 0) + 1
    if os.environ.get("SEARCH_PROPERTY_LOG"):  # one JSON line per command line, to study what was generated
        last = (outcome.err.strip().splitlines() or [""])[-1]
        with open(os.environ["SEARCH_PROPERTY_LOG"], "a") as log:
            log.write(json.dumps({"module": module, "argv": list(argv), "code": str(outcome.code), "last_err": last}) + "\n")
    after = snapshot(world.root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    permitted = allowed(outcome)
    for name in changed & permitted:  # put the world back for the next example
        (world.root / name).unlink()
    assert changed <= permitted, f"files changed: {sorted(changed - permitted)}\n{outcome}"
    assert stat_snapshot(CIFAR_DIR) == real_data, f"the real CIFAR folder changed\n{outcome}"
    check(outcome, must_fail=must_fail)
    return outcome


# -- vocabularies -----------------------------------------------------------------------------------
# Each option has good values (valid on their own) and bad ones. A command line is all good ("valid"),
# good but for one fault, or a mix of faults: one fault at a time reaches the checks deep in a run,
# which a mix of several stops at the first.

MODELS = ["resnet_tiny", "resnet_tiny", "resnet_tiny", "resnet18", "resnet34", "wrn22_8", "cnet"]
BAD_MODELS = ["nope", "", "ResNet18", "resnet18 ", "search.spaces:resnet18", "os:system", "../resnet18"]
STRATEGIES = ["snl", "deepreduce", "cryptonas"]
BAD_STRATEGIES = ["nope", "", "SNL", "os:path", "nope.module:Thing", "search.strategies.base:Strategy", "all", "snl,deepreduce"]
BAD_DATASETS = ["mnist", "", "Digits", "cifar10 "]
INPUTS = ["3x32x32", "1x8x8", "1x8x8", "3x16x16", "1x1x1", "3×32×32", "1X8X8"]
BAD_INPUTS = ["0x32x32", "3x32", "3x32x32x1", "axbxc", "3x-1x32", "3x99999x99999", "", "nanxnanxnan", "1e3x2x2", "x", "3x32x"]
BUDGETS = ["10%", "5%", "1%", "25%", "100%", "460", "1", "2000", "1e3", "4,608", "1_000", "0.5%"]
BAD_BUDGETS = ["0", "0%", "101%", "-5", "-5%", "1e9", "10%%", "", " ", "%", "nan", "inf", "-inf", "inf%", "nan%", "abc",
               "5%,10%", "10.5", "0.0001%", "1e400", "99999999999999999999999999"]
MODEL_SETS = {
    "resnet_tiny": ["stem_relu=false", "stem_relu=true", "width=0.5", "width=2", "stem_stride=2", "model.width=0.25"],
    "resnet18": ["stem_relu=false", "width=0.25", "width=0.5", "stem_stride=2", "model.width=0.5"],
    "resnet34": ["stem_relu=false", "width=0.25", "stem_stride=2"],
    "wrn22_8": ["depth=10", "widen_factor=1", "dropout=0.3", "depth=16"],
    "cnet": ["layers=3", "layers=6", "width=4", "ops=conv3x3", "ops=maxpool", "skips=0-2", "balance=false",
             "relu_per_layer=false", "model.width=8"],
}
STRATEGY_SETS = {
    "snl": ["lam=0.01", "kappa=1.2", "granularity=channel", "max_epochs=3", "finetune_epochs=0", "exact_budget=false",
            "epsilon=0.05", "strategy.lr=0.01", "batch_size=32", "warmup=0"],
    "deepreduce": ["cull=S1", "cull=S1,S3", "n_cull=1", "thin=true", "alpha=0.5", "rho=0.5", "alphas=1,0.5", "epochs=2",
                   "kd_weight=0.5", "criticality_epochs=1"],
    "cryptonas": ["strategy.layers=6", "strategy.width=4", "target=500", "ops=conv3x3,maxpool,avgpool", "kd_weight=0.5",
                  "epochs=2", "balance=false", "strategy.lr=0.01", "skips=0-2"],
}
BAD_SETS = ["noequals", "=5", "width=", "k=v", "width=nan", "width=inf", "width=-1", "width=0", "width=1e9", "width=1e300",
            "width=1000", "width=abc", "stem_relu=maybe", "stem_stride=3", "lam=1e400", "lam=-1", "lam=inf", "kappa=1",
            "cull=S9", "cull=S1,S1", "cull=", "cull=,", "n_cull=99", "n_cull=-1", "layers=1000000000", "layers=2",
            "dropout=1.5", "dropout=nan", "depth=11", "depth=1000000", "widen_factor=1000000000", "ops=conv3x3,bogus",
            "skips=0-99", "skips=banana", "a.b.c=1", "model.nope=1", "strategy.nope=1", "granularity=atom", "alpha=0",
            "alpha=2", "rho=0.25", "target=0", "target=1e30", "batch_size=0", "max_epochs=0", "epochs=nan",
            "kd_temperature=0", "alphas=", "width=0.5", "strategy.width=0.5", "snl.lam=1"]
DEVICES = ["auto", "cpu"]
BAD_DEVICES = ["gpu", "", "cuda", "cuda:0", "cuda:x", "mps", "meta", "cpu:0", "CPU"]
SEEDS = ["0", "1", "12345", str(2**63 - 1)]
BAD_SEEDS = ["-1", str(2**63), str(2**70), "nan", "1.5", "abc", "", "1e3"]
EPOCHS = ["1", "3", "15", "99999999999"]
BAD_EPOCHS = ["0", "-3", "nan", "abc", "1.5", "", "inf"]
UNKNOWN = [["--bogus"], ["--bogus=1"], ["-x"], ["--dry-run=yes"], ["--budget"], ["--set"], ["--"], ["positional"],
           ["--strat", "snl"], ["--model"], ["--list"]]
HELP = [["-h"], ["--help"], ["--version"]]  # each prints and exits 0


@dataclass(frozen=True)
class Opt:
    """Token groups for one occurrence of an option: good ones, and bad ones (both non-empty)."""

    good: list[list[str]]
    bad: list[list[str]]

    def draw(self, faulty: bool) -> st.SearchStrategy[list[str]]:
        """One group; ``--opt value`` is now and then spelled ``--opt=value``, argparse's other spelling."""
        groups = self.bad if faulty else self.good
        return st.tuples(st.sampled_from(groups), st.integers(0, 9)).map(
            lambda g: [f"{g[0][0]}={g[0][1]}"] if g[1] == 9 and len(g[0]) == 2 and g[0][0].startswith("--") else g[0])


def option(name: str, good: Sequence[str], bad: Sequence[str]) -> Opt:
    return Opt([[name, v] for v in good], [[name, v] for v in bad] or [[name, v] for v in good])


def tokens(good: Sequence[Sequence[str]], bad: Sequence[Sequence[str]] = ()) -> Opt:
    return Opt([list(t) for t in good], [list(t) for t in (bad or good)])


def command(data: st.DataObject, opts: dict[str, Opt], required: Sequence[str], max_optional: int = 4) -> list[str]:
    """A command line: each of ``required`` nine times in ten, some optional options, all good, or good
    but for one fault, or with several faults; in a random order."""
    # Hypothesis favours small draws, so the rare branch is always the largest value.
    names = [name for name in required if data.draw(st.integers(0, 9), label=f"omit {name}?") < 9]
    optional = sorted(set(opts) - set(required))
    names += data.draw(st.lists(st.sampled_from(optional), max_size=max_optional), label="options")
    mode = data.draw(st.sampled_from(["valid", "valid", "one fault", "one fault", "one fault", "faults"]), label="mode")
    bad: set[int] = set()
    if mode == "one fault":
        if names and data.draw(st.integers(0, 4), label="fault in a given option?") < 4:
            bad = {data.draw(st.integers(0, len(names) - 1), label="faulty option")}
        else:
            names.append("unknown")
            bad = {len(names) - 1}
    elif mode == "faults":
        bad = {i for i in range(len(names)) if data.draw(st.booleans(), label=f"fault in {names[i]}?")}
    groups = [data.draw(opts[name].draw(i in bad), label=name) for i, name in enumerate(names)]
    groups = data.draw(st.permutations(groups), label="order") if len(groups) > 1 else groups
    return [token for group in groups for token in group]


def dataset_opt(world: World, needs_files: bool) -> Opt:
    """digits mostly; CIFAR-10 with the real subset where it is here; data-less datasets as faults where
    a command needs files (inspect only needs the input shape)."""
    good = [["--dataset", "digits"]] * 4 + ([["--dataset", "cifar10", "--data-dir", str(CIFAR_DIR)]] if HAVE_CIFAR else [])
    missing = [["--dataset", "cifar100"], ["--dataset", "tinyimagenet"], ["--dataset", "cifar10", "--data-dir", str(world.cifar_bad)]]
    if not needs_files:
        good += [["--dataset", "cifar10"], ["--dataset", "cifar100"], ["--dataset", "tinyimagenet"]]
    return tokens(good, [["--dataset", d] for d in BAD_DATASETS] + (missing if needs_files else []))


def shared_opts(world: World, model: str, strategy: str | None) -> dict[str, Opt]:
    """Options of search.linearize and search.train_teacher, ``--set`` goods fitting ``model`` and ``strategy``."""
    sets = MODEL_SETS[model] + (STRATEGY_SETS[strategy] if strategy else [])
    good_dirs = [str(CIFAR_DIR)] if HAVE_CIFAR else [str(world.folder)]
    bad_dirs = [str(world.cifar_bad), str(world.cifar_bad / "cifar-10-batches-py"), str(world.plain), str(world.root / "missing"),
                str(world.plain / "sub"), ""]
    return {
        "--model": option("--model", [model], BAD_MODELS),
        "--set": option("--set", sets, BAD_SETS),
        "--set ": option("--set", sets, BAD_SETS),
        "--dataset": dataset_opt(world, needs_files=True),
        "--data-dir": option("--data-dir", good_dirs, bad_dirs),
        "--download": tokens([["--download"]]),
        "--teacher-epochs": option("--teacher-epochs", EPOCHS, BAD_EPOCHS),
        "--device": option("--device", DEVICES, BAD_DEVICES),
        "--cache-dir": option("--cache-dir", [str(world.cache), str(world.cache), str(world.root / "new-cache" / "deep"),
                                              str(world.folder)],
                              [str(world.plain), str(world.plain / "cache"), str(world.garbage), ""]),
        "unknown": tokens(UNKNOWN),
        "help": tokens(HELP, UNKNOWN),
    }


def linearize_opts(world: World, model: str, strategy: str) -> dict[str, Opt]:
    good_out = ["out.pt", "sub/dir/out.pt", str(world.root / "new" / "model.pt"), str(world.checkpoints["good"])]
    bad_out = [str(world.plain / "x.pt"), str(world.plain / "a" / "b" / "c.pt"), str(world.folder), str(world.folder) + "/",
               "x" * 300, str(world.root / ("y" * 250)), "", "/", "/proc/version", "/dev/zero", str(world.garbage / "m.pt")]
    return {
        **shared_opts(world, model, strategy),
        "--strategy": option("--strategy", [strategy], BAD_STRATEGIES),
        "--budget": option("--budget", BUDGETS, BAD_BUDGETS),
        "--out": option("--out", good_out, bad_out),
        "--seed": option("--seed", SEEDS, BAD_SEEDS),
    }


def poisons(world: World, module: str) -> list[list[str]]:
    """Additions that make any command line of ``module`` invalid (appended last: argparse keeps the
    last value of an option), so it must stop with exit 2 before anything trains."""
    common = [["--bogus"], ["--dataset", "mnist"], ["--device", "gpu"], ["--teacher-epochs", "0"],
              ["--cache-dir", str(world.plain / "cache")], ["--set", "nope=1"], ["--set", "width=nan"],
              ["--model", "nope"], ["--data-dir", str(world.cifar_bad), "--dataset", "cifar10"]]
    if module == "search.linearize":
        common += [["--out", str(world.plain / "model.pt")], ["--out", str(world.folder)], ["--budget", "0"],
                   ["--budget", "101%"], ["--strategy", "nope"], ["--seed", "-1"], ["--budget", "inf"],
                   ["--strategy", "snl", "--budget", "1e9"]]
    return common


def is_help(argv: Sequence[str]) -> bool:
    return any(token in ("-h", "--help", "--version") for token in argv)


# -- the properties -----------------------------------------------------------------------------------


def inspect_opts(world: World, model: str, strategy: str | None) -> dict[str, Opt]:
    sets = MODEL_SETS[model] + (STRATEGY_SETS[strategy] if strategy else [])
    checkpoints = [str(p) for name, p in world.checkpoints.items() if name != "good"]
    return {
        "--model": option("--model", [model], BAD_MODELS),
        "--set": option("--set", sets, BAD_SETS),
        "--set ": option("--set", sets, BAD_SETS),
        "--input": option("--input", INPUTS, BAD_INPUTS),
        "--dataset": dataset_opt(world, needs_files=False),
        "--checkpoint": option("--checkpoint", [str(world.checkpoints["good"])],
                               checkpoints + [str(world.folder), str(world.garbage), str(world.empty), "", "missing.pt"]),
        "--strategy": option("--strategy", [strategy or "cryptonas"], BAD_STRATEGIES),
        "--sites": tokens([["--sites"]]),
        "unknown": tokens(UNKNOWN),
        "help": tokens(HELP, UNKNOWN),
    }


def report_opts(world: World) -> dict[str, Opt]:
    good = str(world.runs["good"])
    damaged = [str(p) for name, p in world.runs.items() if name != "good"]
    not_runs = [str(world.plain), str(world.folder), str(world.root / "missing"), "", ".", str(world.garbage),
                str(world.runs["good"] / rundir.STORAGE_FILE)]
    return {
        "run": tokens([[good]], [[d] for d in damaged + not_runs]),
        "run ": tokens([[good]], [[d] for d in damaged + not_runs]),
        "unknown": tokens(UNKNOWN),
        "help": tokens(HELP, UNKNOWN),
    }


@PROPERTY
@given(data=st.data())
def test_inspect_command_lines(world: World, data: st.DataObject) -> None:
    strategy = data.draw(st.sampled_from([None, None, *STRATEGIES]), label="strategy")
    opts = inspect_opts(world, data.draw(st.sampled_from(MODELS), label="model"), strategy)
    where = data.draw(st.sampled_from(["--input", "--input", "--dataset", "--checkpoint"]), label="where")
    required = {"--input": ["--input", "--model"], "--dataset": ["--dataset"], "--checkpoint": ["--checkpoint"]}[where]
    if where != "--checkpoint":  # with a checkpoint, --model, --set and --strategy are faults of their own
        required += ["--strategy"] if strategy else []
    else:
        opts = {k: v for k, v in opts.items() if k not in ("--model", "--set", "--set ", "--strategy", "--input", "--dataset")}
    run_checked(world, "search.inspect", command(data, opts, required))


@PROPERTY
@given(data=st.data())
def test_linearize_dry_run_command_lines(world: World, data: st.DataObject) -> None:
    opts = linearize_opts(world, data.draw(st.sampled_from(MODELS), label="model"), data.draw(st.sampled_from(STRATEGIES), label="strategy"))
    argv = command(data, opts, ["--strategy", "--budget", "--model"]) + ["--dry-run"]
    outcome = run_checked(world, "search.linearize", argv)
    if outcome.code == 0 and not is_help(argv):
        assert outcome.out.startswith("dry run (nothing is trained or written)"), str(outcome)


@PROPERTY
@given(data=st.data())
def test_linearize_invalid_command_lines_stop_before_training(world: World, data: st.DataObject) -> None:
    opts = linearize_opts(world, data.draw(st.sampled_from(MODELS), label="model"), data.draw(st.sampled_from(STRATEGIES), label="strategy"))
    opts = {k: v for k, v in opts.items() if k != "help"}
    argv = command(data, opts, ["--strategy", "--budget", "--model"]) + data.draw(
        st.sampled_from(poisons(world, "search.linearize")), label="poison")
    run_checked(world, "search.linearize", argv, must_fail=True)


@PROPERTY
@given(data=st.data())
def test_train_teacher_dry_run_command_lines(world: World, data: st.DataObject) -> None:
    argv = command(data, shared_opts(world, data.draw(st.sampled_from(MODELS), label="model"), None), ["--model"]) + ["--dry-run"]
    outcome = run_checked(world, "search.train_teacher", argv)
    if outcome.code == 0 and not is_help(argv):
        assert outcome.out.startswith("dry run (nothing is trained or written)"), str(outcome)


@PROPERTY
@given(data=st.data())
def test_train_teacher_invalid_command_lines_stop_before_training(world: World, data: st.DataObject) -> None:
    opts = {k: v for k, v in shared_opts(world, data.draw(st.sampled_from(MODELS), label="model"), None).items() if k != "help"}
    argv = command(data, opts, ["--model"]) + data.draw(st.sampled_from(poisons(world, "search.train_teacher")), label="poison")
    run_checked(world, "search.train_teacher", argv, must_fail=True)


def _report_files(outcome: Outcome, world: World) -> set[str]:
    """On success the report's four files appear in the first run directory given; nothing else."""
    dirs = [a for a in outcome.argv if not a.startswith("-")]
    if outcome.code != 0 or not dirs:
        return set()
    first = (world.cwd / dirs[0]).resolve()
    try:
        relative = first.relative_to(world.root.resolve())
    except ValueError:
        return set()
    return {str(relative / name) for name in REPORT_FILES}


@PROPERTY
@given(data=st.data())
def test_report_command_lines(world: World, data: st.DataObject) -> None:
    argv = command(data, report_opts(world), ["run"], max_optional=2)
    outcome = run_checked(world, "search.report", argv, allowed=lambda o: _report_files(o, world))
    if outcome.code == 0 and not is_help(argv):
        assert all(name in outcome.out for name in REPORT_FILES), str(outcome)


# Each CLI's options on a valid base command line; for the where-options of inspect (one of --input,
# --dataset, --checkpoint) and report's run directories the value replaces the base.
SWEEPS: dict[str, tuple[Callable[[World], dict[str, Opt]], list[str]]] = {
    "search.inspect": (lambda w: inspect_opts(w, "resnet_tiny", None), ["--model", "resnet_tiny", "--input", "1x8x8"]),
    "search.linearize": (lambda w: linearize_opts(w, "resnet_tiny", "snl"), ["--strategy", "snl", "--budget", "10%", "--dry-run"]),
    "search.train_teacher": (lambda w: shared_opts(w, "resnet_tiny", None), ["--dry-run"]),
    "search.report": (report_opts, []),
}
REPLACES_BASE = {"--input": ["--model", "resnet_tiny"], "--dataset": [], "--checkpoint": [], "run": []}


@pytest.mark.parametrize("module", sorted(SWEEPS))
def test_every_value_alone(world: World, module: str) -> None:
    """Every value of every vocabulary, good or bad, alone on a valid command line: the complete
    single-fault sweep that random sampling covers only in part. (Report: each directory alone and
    after the good run.)"""
    make, base = SWEEPS[module]
    seen: set[tuple[str, ...]] = set()
    failures: list[str] = []
    for name, opt in make(world).items():
        for group in opt.good + opt.bad:
            if module == "search.inspect" and name in REPLACES_BASE:
                cases = [REPLACES_BASE[name] + group]
            elif module == "search.report":
                cases = [group, [str(world.runs["good"]), *group]]
            else:
                cases = [base + group]
            for argv in cases:
                if tuple(argv) in seen:
                    continue
                seen.add(tuple(argv))
                try:
                    outcome = run_checked(world, module, argv, allowed=lambda o: _report_files(o, world))
                    if outcome.code == 0 and module in ("search.linearize", "search.train_teacher") and not is_help(argv):
                        assert outcome.out.startswith("dry run (nothing is trained or written)"), str(outcome)
                except AssertionError as failure:  # collect them all: one run shows every value that fails
                    failures.append(f"{argv!r}: {str(failure)[-600:]}")
    assert not failures, f"{len(failures)} of {len(seen)} command lines failed:\n" + "\n\n".join(failures)


def test_examples_were_generated() -> None:
    """Runs after the properties above: how many command lines each CLI got, printed (see it with -s)
    and, when ``$SEARCH_PROPERTY_COUNTS`` names a file, written there as JSON."""
    print(f"\ngenerated command lines per CLI: {GENERATED} (total {sum(GENERATED.values())})")
    if os.environ.get("SEARCH_PROPERTY_COUNTS"):
        Path(os.environ["SEARCH_PROPERTY_COUNTS"]).write_text(json.dumps(GENERATED, indent=2))


# -- the real entry points ----------------------------------------------------------------------------


def _subprocess(world: World, module: str, *argv: str, timeout: float = 120) -> Outcome:
    env = {**os.environ, "SEARCH_CACHE_DIR": str(world.cache), "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=world.cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Outcome(tuple(argv), done.returncode, done.stdout, done.stderr)


def test_entry_point_linearize_unwritable_out_fails_before_training(world: World) -> None:
    before = snapshot(world.root)
    start = time.monotonic()
    outcome = _subprocess(world, "search.linearize", "--strategy", "snl", "--budget", "10%", "--out", str(world.plain / "m.pt"))
    check(outcome, must_fail=True)
    assert "cannot write --out" in outcome.err and "Not a directory" in outcome.err, str(outcome)
    assert "epoch" not in outcome.out and "teacher" not in outcome.out, str(outcome)
    assert time.monotonic() - start < 60, "the check must come before anything slow"
    assert snapshot(world.root) == before


def test_entry_point_report_on_damaged_run_dir(world: World) -> None:
    before = snapshot(world.root)
    check(_subprocess(world, "search.report", str(world.runs["json-list"]), str(world.runs["good"])), must_fail=True)
    check(_subprocess(world, "search.report", str(world.runs["garbage-db"])), must_fail=True)
    assert snapshot(world.root) == before


def test_entry_point_train_teacher_dry_run(world: World) -> None:
    before = snapshot(world.root)
    outcome = _subprocess(world, "search.train_teacher", "--dry-run")
    check(outcome)
    assert outcome.code == 0 and "teacher: cached at" in outcome.out, str(outcome)
    assert snapshot(world.root) == before
