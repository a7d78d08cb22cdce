"""Inputs checked before anything trains: output paths (``search.outputs``), ``--dry-run`` of
``search.linearize`` and ``search.train_teacher``, budgets, numbers, devices and seeds.

The machine runs tests as root, for whom permissions do not stop a write; the unwritable paths here
are unwritable for every user (a path under a regular file, a folder where a file is expected, a
name longer than the file system allows).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

import search.linearize
import search.pipeline
import search.strategies.criticality
import search.strategies.cryptonas
import search.strategies.deepreduce
import search.strategies.snl
import search.train_teacher
from search.checkpoint import save_model
from search.cli import run_main
from search.data import load_dataset
from search.errors import SearchError
from search.options import coerce
from search.outputs import check_writable_dir, check_writable_file
from search.preflight import check_device, check_seed
from search.settings import parse_budget, parse_budgets
from search.spaces import build_model
from search.teacher import teacher_key
from search.train import teacher_config
from tests.conftest import PROJECT_ROOT, quick_estimates


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line_error(call: object) -> str:
    """The message of the SearchError ``call()`` raises, asserting it is one line."""
    with pytest.raises(SearchError) as info:
        call()  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


# -- search.outputs ---------------------------------------------------------------------------------


def test_writable_file_in_new_folders_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "model.pt"
    assert check_writable_file(target, "--out") == target
    assert listing(tmp_path) == []


def test_writable_file_next_to_existing_files_leaves_them_alone(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"old")
    check_writable_file(tmp_path / "model.pt", "--out")
    assert listing(tmp_path) == ["model.pt"] and (tmp_path / "model.pt").read_bytes() == b"old"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: t / "plain.txt" / "model.pt", "Not a directory"),
        (lambda t: t / "plain.txt" / "deeper" / "still" / "model.pt", "Not a directory"),
        (lambda t: t / "folder", "Is a directory"),
        (lambda t: str(t / "new-folder") + "/", "Is a directory"),
        (lambda t: t / ("n" * 300), "File name too long"),
        (lambda t: t / ("n" * 250), "File name too long"),  # the save's temporary name, .NAME.XXXXXXXX.tmp, is longer
        (lambda t: Path("/dev/null"), "exists and is not a regular file"),
    ],
    ids=["under-a-file", "deep-under-a-file", "a-folder", "trailing-slash", "name-too-long", "temp-name-too-long", "device"],
)
def test_unwritable_file_is_one_line_naming_option_path_and_reason(tmp_path: Path, make, reason: str) -> None:
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    before = listing(tmp_path)
    path = make(tmp_path)
    message = one_line_error(lambda: check_writable_file(path, "--out"))
    assert message == f"cannot write --out {path}: {reason}"
    assert listing(tmp_path) == before


def test_empty_output_path_is_refused() -> None:
    assert one_line_error(lambda: check_writable_file("", "--out")) == "--out is empty: expected a file path"


def test_writable_dir(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    assert check_writable_dir(tmp_path / "new" / "cache", "--cache-dir") == tmp_path / "new" / "cache"
    assert check_writable_dir(tmp_path, "--cache-dir") == tmp_path
    assert listing(tmp_path) == ["plain.txt"]
    assert one_line_error(lambda: check_writable_dir(tmp_path / "plain.txt", "--cache-dir")).endswith(": Not a directory")
    assert one_line_error(lambda: check_writable_dir(tmp_path / "plain.txt" / "c", "--cache-dir")).endswith(": Not a directory")
    assert listing(tmp_path) == ["plain.txt"]


@pytest.mark.parametrize("check, target", [(check_writable_dir, "run"), (check_writable_file, "run/model.pt")])
def test_a_folder_made_meanwhile_by_another_command_is_no_error(check, target: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two commands started together probe the same missing folder: the second to create it finds it made."""
    real_mkdir = Path.mkdir
    raced: list[Path] = []

    def other_command_first(self: Path, *args, **kwargs) -> None:
        if not raced:  # the other command creates it between this one's check and its mkdir
            raced.append(self)
            real_mkdir(self)
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_command_first)
    assert check(tmp_path / target, "--out") == tmp_path / target
    assert raced == [tmp_path / "run"]


# -- the CLIs refuse before training ----------------------------------------------------------------


def _tripwire(*_a: object, **_k: object) -> None:
    raise AssertionError("training started")


# Where training starts: the whole pipeline, or (``deep``) the teacher and each strategy's own training,
# so a real run gets as far as its strategy's own checks.
SHALLOW = {search.linearize: [(search.linearize, "execute")], search.train_teacher: [(search.train_teacher, "get_teacher")]}
DEEP = [(search.pipeline, "get_teacher"), (search.strategies.snl, "fit"), (search.strategies.deepreduce, "fit"),
        (search.strategies.cryptonas, "fit"), (search.strategies.criticality, "fit")]


def run_cli(module: object, argv: list[str], cwd: Path, deep: bool = False) -> tuple[int, str, str]:
    """``run_main(module.main, argv)`` in-process from ``cwd``, with training replaced by a tripwire and a
    dry run's estimate timing one small step (what it prints is checked here, its accuracy in test_dry_run)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        for owner, name in DEEP if deep else SHALLOW[module]:
            stack.enter_context(mock.patch.object(owner, name, _tripwire))
        stack.enter_context(quick_estimates())
        stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(redirect_stdout(out))
        stack.enter_context(redirect_stderr(err))
        with pytest.raises(SystemExit) as info:
            run_main(module.main, argv)  # type: ignore[attr-defined]
    return int(info.value.code or 0), out.getvalue(), err.getvalue()


def assert_one_error(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_linearize_unwritable_out_exits_2_before_training(tmp_path: Path, where: str) -> None:
    (tmp_path / "plain.txt").write_text("x")
    out = tmp_path / "plain.txt" / "model.pt" if where == "under-a-file" else tmp_path
    start = time.monotonic()
    code, stdout, err = run_cli(search.linearize, ["--strategy", "snl", "--budget", "10%", "--out", str(out)], tmp_path)
    assert_one_error(code, err, f"error: cannot write --out {out}: ")
    assert stdout == "" and time.monotonic() - start < 10
    assert listing(tmp_path) == ["plain.txt"]


def test_linearize_unwritable_out_real_entry_point(tmp_path: Path) -> None:
    """The real ``python -m search.linearize``: exit 2, one line, no training lines, in seconds."""
    (tmp_path / "plain.txt").write_text("x")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "search.linearize", "--strategy", "snl", "--budget", "10%", "--out", str(tmp_path / "plain.txt" / "m.pt")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.strip().splitlines() == [f"error: cannot write --out {tmp_path / 'plain.txt' / 'm.pt'}: Not a directory"]
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("module", [search.linearize, search.train_teacher], ids=["linearize", "train_teacher"])
def test_unwritable_cache_dir_exits_2_before_training(tmp_path: Path, module: object) -> None:
    (tmp_path / "plain.txt").write_text("x")
    argv = ["--cache-dir", str(tmp_path / "plain.txt" / "cache")]
    if module is search.linearize:
        argv += ["--strategy", "snl", "--budget", "10%"]
    code, _, err = run_cli(module, argv, tmp_path)
    assert_one_error(code, err, f"cannot write --cache-dir {tmp_path / 'plain.txt' / 'cache'}: Not a directory")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--device", "gpu"], "bad value 'gpu' for --device: expected auto, cpu, cuda, cuda:N or mps"),
        (["--seed", "-1"], "bad value -1 for --seed"),
        (["--seed", str(2**70)], f"bad value {2**70} for --seed"),
        (["--budget", "inf"], "bad budget 'inf'"),
        (["--set", "lam=inf"], "bad value 'inf' for lam: expected a finite number"),
        (["--set", "width=-1"], "bad value -1.0 for width: expected a number > 0"),
        (["--set", "width=1000"], "has 76,289,456,010 parameters (284 GiB of weights); at most 1,073,741,824 are supported"),
        (["--set", "width=1e9"], "cannot build model resnet_tiny (width=1000000000.0): "),
        (["--teacher-epochs", "0"], "bad value 0 for teacher epochs"),
    ],
)
def test_linearize_bad_values_exit_2_before_training(tmp_path: Path, argv: list[str], expected: str) -> None:
    code, _, err = run_cli(search.linearize, ["--strategy", "snl", "--budget", "10%", *argv], tmp_path)
    assert_one_error(code, err, expected)


# -- --dry-run --------------------------------------------------------------------------------------


def test_linearize_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path: Path, isolated_cache: Path) -> None:
    out = tmp_path / "models" / "snl.pt"
    before = listing(tmp_path), listing(isolated_cache) if isolated_cache.exists() else []
    code, stdout, err = run_cli(
        search.linearize, ["--strategy", "snl", "--budget", "10%", "--set", "granularity=channel", "--out", str(out), "--dry-run"],
        tmp_path,
    )
    assert code == 0 and err == "", err
    lines = stdout.splitlines()
    assert lines[0] == "dry run (nothing is trained or written): snl on resnet_tiny/digits: 4,608 ReLUs, budget 460"
    assert "granularity=channel" in lines[2] and lines[2].startswith("strategy options: ")
    assert lines[3].startswith("plan: learn channel masks until at most 460 ReLUs remain")
    assert lines[4].startswith("data: digits, ")
    assert lines[5].startswith("teacher: not cached; a run trains it first (15 epochs)")
    assert lines[6] == f"output: {out}"
    assert (listing(tmp_path), listing(isolated_cache) if isolated_cache.exists() else []) == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--strategy", "snl"], "strategy snl needs a ReLU budget"),
        (["--strategy", "deepreduce", "--budget", "10", "--set", "cull=S1"], "no deepreduce plan fits the budget of 10 ReLUs"),
        (["--strategy", "deepreduce", "--budget", "100", "--set", "cull=S1", "--set", "thin=true", "--set", "alpha=1",
          "--set", "rho=1"], "over the budget of 100"),
        (["--strategy", "deepreduce", "--set", "n_cull=3"], "n_cull=3 would cull every stage"),
        (["--strategy", "cryptonas", "--budget", "10", "--set", "layers=6", "--set", "strategy.width=8"], "over the budget of 10"),
        (["--strategy", "snl", "--budget", "10%", "--dataset", "cifar10", "--data-dir", "nowhere"], "cifar10 not found"),
    ],
)
def test_linearize_dry_run_refuses_what_a_run_refuses(tmp_path: Path, argv: list[str], expected: str) -> None:
    code, _, err = run_cli(search.linearize, [*argv, "--dry-run"], tmp_path)
    assert_one_error(code, err, expected)
    code, _, err = run_cli(search.linearize, argv, tmp_path, deep=True)
    assert_one_error(code, err, expected)


def test_linearize_dry_run_shows_a_fixed_plan(tmp_path: Path) -> None:
    code, stdout, _ = run_cli(search.linearize, ["--strategy", "deepreduce", "--set", "cull=S1", "--set", "thin=true", "--dry-run"], tmp_path)
    assert code == 0
    plan = next(line for line in stdout.splitlines() if line.startswith("plan: "))
    assert "ReLUs (as set)" in plan
    code, stdout, _ = run_cli(search.linearize, ["--strategy", "cryptonas", "--budget", "25%", "--dry-run"], tmp_path)
    assert code == 0 and "teacher: not used with these options" in stdout and "cnet:" in stdout


def test_train_teacher_dry_run_says_whether_the_teacher_is_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    argv = ["--cache-dir", str(cache), "--dry-run"]
    code, stdout, err = run_cli(search.train_teacher, argv, tmp_path)
    assert code == 0 and err == ""
    assert stdout.splitlines()[0] == "dry run (nothing is trained or written): teacher resnet_tiny (defaults) on digits: 4,608 ReLUs"
    assert "teacher: not cached; a run trains it first (15 epochs)" in stdout
    assert not cache.exists()

    key = teacher_key("resnet_tiny", {}, load_dataset("digits"), teacher_config("digits"))
    model = build_model("resnet_tiny", num_classes=10, input_size=(1, 8, 8))
    save_model(model, cache / "teachers" / f"{key}.pt", "resnet_tiny", {}, 10, (1, 8, 8), {"val_acc": 0.875, "test_acc": 0.5})
    before = listing(cache)
    code, stdout, _ = run_cli(search.train_teacher, argv, tmp_path)
    assert code == 0 and f"teacher: cached at {cache / 'teachers' / f'{key}.pt'} (val_acc 0.8750)" in stdout
    assert listing(cache) == before

    code, stdout, _ = run_cli(search.train_teacher, [*argv, "--teacher-epochs", "3"], tmp_path)
    assert code == 0 and "teacher: not cached; a run trains it first (3 epochs)" in stdout


def test_train_teacher_dry_run_does_not_download(tmp_path: Path) -> None:
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--download", "--dry-run", "--cache-dir", str(tmp_path / "c")]
    code, stdout, _ = run_cli(search.train_teacher, argv, tmp_path)
    assert code == 0 and "a run would download it there first" in stdout and "teacher: unknown until" in stdout
    assert listing(tmp_path) == []


# -- numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "inf%", "nan%", "10.5", "1e400", "10%%", "", "%", "abc"])
def test_bad_budgets_are_one_line(text: str) -> None:
    assert one_line_error(lambda: parse_budget(text, 4608)).startswith(("bad budget", "budget"))


@pytest.mark.parametrize(("text", "budget"), [("10%", 460), ("1e3", 1000), ("4,608", 4608), ("100%", 4608), ("1_000", 1000)])
def test_good_budgets(text: str, budget: int) -> None:
    assert parse_budget(text, 4608) == budget


@pytest.mark.parametrize(("text", "budgets"), [("5%,10%,25%", [230, 460, 1152]), ("4,608", [4608]), ("1,000", [1000]),
                                              ("100,2000", [100, 2000]), ("10%, 10%", [460]), ("460", [460])])
def test_budget_lists(text: str, budgets: list[int]) -> None:
    assert parse_budgets(text, 4608) == budgets  # a thousands-separated number is one count


@pytest.mark.parametrize("text", [",", " , ", "10%,abc", "10%,0", "10%,200%"])
def test_bad_budget_lists_are_one_line(text: str) -> None:
    assert one_line_error(lambda: parse_budgets(text, 4608)).startswith(("bad budget", "budget"))


def test_float_options_refuse_non_finite_numbers() -> None:
    for text in ("inf", "-inf", "nan", "1e400"):
        assert one_line_error(lambda text=text: coerce("lam", text, float)) == f"bad value {text!r} for lam: expected a finite number"
    assert coerce("lam", "1e-3", float) == 1e-3


def test_devices_and_seeds() -> None:
    assert check_device("cpu").type == "cpu"
    for bad in ("gpu", "", "cuda:x", "CPU"):
        one_line_error(lambda bad=bad: check_device(bad))
    assert check_seed(0) == 0 and check_seed(2**63 - 1) == 2**63 - 1
    one_line_error(lambda: check_seed(2**63))
    one_line_error(lambda: check_seed(-1))


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("resnet18", {"width": 10.0}, "has 1,115,914,890 parameters (4 GiB of weights); at most 1,073,741,824 are supported"),
        ("resnet18", {"width": 1e9}, "cannot build model resnet18"),
        ("resnet18", {"width": -1.0}, "bad value -1.0 for width"),
        ("wrn22_8", {"dropout": 1.5}, "bad value 1.5 for dropout"),
        ("wrn22_8", {"depth": 1_000_000}, "bad value 1000000 for depth"),
        ("wrn22_8", {"widen_factor": 10**9}, "cannot build model wrn22_8"),
        ("cnet", {"layers": 10**9}, "bad value 1000000000 for layers"),
    ],
)
def test_models_too_large_or_malformed_fail_fast(name: str, options: dict, expected: str) -> None:
    start = time.monotonic()
    assert expected in one_line_error(lambda: build_model(name, **options))
    assert time.monotonic() - start < 5
