"""Property-based tests of ``python -m search.run`` command lines and ``--config`` files.

The same properties as ``tests/test_cli_properties.py`` (whose fixture world, vocabularies and checks
this reuses): whatever a user types, the exit code is 0 or 2, no traceback is printed, there is at most
one ``error:`` line (exactly one on exit 2), and no file of the fixture folder changes, a real run
directory among them. Command lines always carry ``--dry-run`` or are invalid by construction, and
``search.study.cluster.connect`` is a tripwire: a command line that would start Ray fails the test.
``--config`` files are generated as YAML mappings of known and unknown keys to values of every type,
and as non-mappings, broken YAML and YAML tags that a safe loader must refuse.
"""

# ruff: noqa: F811 - ``world`` is the fixture of tests.test_cli_properties, imported as pytest requires
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import yaml
from hypothesis import given
from hypothesis import strategies as st

from search.run import build_parser
from tests.test_cli_properties import (  # noqa: F401 - world is a fixture
    BAD_BUDGETS,
    BAD_DEVICES,
    BAD_SEEDS,
    BAD_SETS,
    BAD_STRATEGIES,
    BUDGETS,
    DEVICES,
    HELP,
    PROPERTY,
    STRATEGY_SETS,
    UNKNOWN,
    Opt,
    Outcome,
    World,
    command,
    dataset_opt,
    is_help,
    option,
    run_checked,
    tokens,
    world,
)

NUMBERS = ["1", "2", "0.5"]
BAD_COUNTS = ["0", "-1", "2.5", "x", "", "nan", "99999999999999999999999999"]
BAD_FLOATS = ["0", "-1", "nan", "inf", "-inf", "x", "", "1e400"]


def _tripwire(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("Ray was started by a command line that should have stopped before it")


def run_run(world: World, argv: Sequence[str], must_fail: bool = False) -> Outcome:
    with mock.patch("search.study.cluster.connect", _tripwire):
        outcome = run_checked(world, "search.run", argv, must_fail=must_fail)
    if outcome.code == 0 and not is_help(argv):
        assert outcome.out.startswith("dry run: "), str(outcome)
    return outcome


def run_opts(world: World) -> dict[str, Opt]:
    good_run = str(world.runs["good"])
    damaged = [str(p) for name, p in world.runs.items() if name != "good"]
    fresh = [str(world.root / "new-run"), str(world.cwd / "runs" / "a"), "relative/run"]
    return {
        "--strategy": option("--strategy", ["snl", "deepreduce", "cryptonas", "all", "snl,deepreduce", "snl, cryptonas"],
                             [s for s in BAD_STRATEGIES if s not in ("all", "snl,deepreduce")] + [",", "snl,nope"]),
        "--dataset": dataset_opt(world, needs_files=True),
        "--model": option("--model", ["resnet_tiny"], ["nope", "", "os:system", "resnet18 "]),
        "--set": option("--set", ["width=0.5", "stem_relu=false", *(f"snl.{s}" for s in STRATEGY_SETS["snl"][:4])], BAD_SETS),
        "--budget": option("--budget", BUDGETS, BAD_BUDGETS),
        "--trials": option("--trials", ["1", "3", "40"], BAD_COUNTS),
        "--minutes-per-strategy": option("--minutes-per-strategy", ["1", "0.5", "30"], BAD_FLOATS),
        "--objectives": option("--objectives", ["latency", "communication", "latency,communication", ""],
                               ["nope", "latency,nope", "accuracy", ","]),
        "--cost-model": option("--cost-model", ["delphi", "cheetah", "us=1,bytes=2"],
                               ["nope", "us=-1,bytes=2", "us=nan,bytes=1", "us=1", "us=inf,bytes=inf", ""]),
        "--sampler": option("--sampler", ["tpe", "nsga2", "gp", "random"], ["nope", "", "TPE", "cmaes"]),
        "--seed": option("--seed", ["0", "7"], BAD_SEEDS),
        "--teacher-epochs": option("--teacher-epochs", ["1", "3"], ["0", "-3", "nan", "abc", "1.5", ""]),
        "--run-dir": option("--run-dir", fresh, [good_run, str(world.plain), str(world.plain / "sub"), str(world.garbage)]),
        "--storage": option("--storage", [f"sqlite:///{world.root / 'other' / 'fresh.db'}", f"journal:{world.root / 'fresh.log'}"],
                            [f"journal:{world.plain}", f"sqlite:///{world.garbage}", f"sqlite:///{world.plain}",
                             f"sqlite:///{world.folder}", "nope", "", "sqlite://", "postgresql://nobody@127.0.0.1:9/x",
                             f"sqlite:///{world.plain / 'x.db'}"]),
        "--cache-dir": option("--cache-dir", [str(world.cache)], [str(world.plain), str(world.plain / "cache"), ""]),
        "--address": option("--address", ["auto"], ["nope", "127.0.0.1:1", "host:", ":80", "h:99999", ""]),
        "--cpus-per-trial": option("--cpus-per-trial", ["1", "0.5"], BAD_FLOATS + ["1000"]),
        "--gpus-per-trial": option("--gpus-per-trial", ["0", "0.5", "1"], ["-1", "nan", "inf", "x", ""]),
        "--concurrency": option("--concurrency", ["1", "4"], ["0", "-2", "x", "1.5"]),
        "--trial-timeout": option("--trial-timeout", ["10", "0.5"], BAD_FLOATS),
        "--trial-memory": option("--trial-memory", ["100", "20000"], ["0", "-1", "x", "1.5", "nan"]),
        "--trial-retries": option("--trial-retries", ["0", "2"], ["-1", "x", "1.5"]),
        "--device": option("--device", DEVICES + ["cuda"], [d for d in BAD_DEVICES if d not in ("cuda", "cuda:0", "mps")]),
        "--resume": tokens([["--resume", "--run-dir", good_run]],
                           [["--resume"], ["--resume", "--run-dir", str(world.root / "missing")],
                            *(["--resume", "--run-dir", d] for d in damaged)]),
        "--verbose": tokens([["-v"], ["--verbose"]]),
        "unknown": tokens(UNKNOWN),
        "help": tokens(HELP, UNKNOWN),
    }


@PROPERTY
@given(data=st.data())
def test_run_command_lines(world: World, data: st.DataObject) -> None:
    argv = command(data, run_opts(world), ["--strategy"]) + ["--dry-run"]
    run_run(world, argv)


@PROPERTY
@given(data=st.data())
def test_run_invalid_command_lines_stop_before_ray(world: World, data: st.DataObject) -> None:
    opts = {k: v for k, v in run_opts(world).items() if k != "help"}
    poison = data.draw(st.sampled_from([["--bogus"], ["--dataset", "mnist"], ["--trials", "0"], ["--budget", "0"],
                                        ["--cpus-per-trial", "nan"], ["--device", "gpu"], ["--sampler", "nope"],
                                        ["--storage", f"journal:{world.plain}"], ["--run-dir", str(world.runs["good"])],
                                        ["--set", "nope=1"]]), label="poison")
    argv = command(data, opts, ["--strategy"])
    if poison[0] == "--run-dir" and "--resume" in argv:  # resuming the good run is valid: poison it otherwise
        poison = ["--bogus"]
    run_run(world, argv + poison, must_fail=True)


def _keys() -> list[str]:
    parser = build_parser()
    return sorted(a.option_strings[-1].removeprefix("--") for a in parser._actions
                  if a.option_strings and a.dest not in ("help", "config", "resume"))


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["snl", "digits", "10%", "tpe", "1", "0", "-1", "nan", "width=0.5", "auto", "resnet_tiny"]),
)


def _yaml_value(value: object) -> object:
    """YAML has no NaN/inf literal that safe_dump writes readably for every version: keep floats finite
    here; the command-line vocabularies cover NaN and infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@PROPERTY
@given(data=st.data())
def test_run_config_files(world: World, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["mapping", "mapping", "mapping", "not-a-mapping", "broken", "tag"]), label="kind")
    keys = _keys()
    if kind == "mapping":
        chosen = data.draw(st.lists(st.one_of(st.sampled_from(keys), st.sampled_from([k.replace("-", "_") for k in keys]),
                                              st.text(min_size=1, max_size=10)), max_size=5, unique=True), label="keys")
        mapping = {key: _yaml_value(data.draw(VALUES, label=key)) for key in chosen}
        text = yaml.safe_dump(mapping)
    elif kind == "not-a-mapping":
        text = yaml.safe_dump(data.draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=10), st.integers()),
                                        label="document"))
    elif kind == "broken":
        text = data.draw(st.sampled_from(["strategy: [a\n", "a: b: c\n", "\t- x\n", "key: 'unterminated\n", "{{\n"]), label="yaml")
    else:
        text = data.draw(st.sampled_from(["!!python/object/apply:os.system ['touch pwned']\n",
                                          "strategy: !!python/name:os.system\n", "trials: !custom 3\n"]), label="yaml")
    path = Path(world.cwd.parent / "config-under-test.yaml")
    path.write_text(text)
    try:
        argv = ["--config", str(path), "--dry-run", "--run-dir", str(world.root / "new-run")]
        if data.draw(st.booleans(), label="strategy on the command line?"):
            argv += ["--strategy", "snl"]
        run_run(world, argv)
    finally:
        path.unlink()
    assert not (world.cwd / "pwned").exists()
