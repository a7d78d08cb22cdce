"""Command-line plumbing shared by the ``python -m search.*`` entry points."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from search.errors import RunInterrupted, SearchError


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
             skip_teardown: bool = False) -> None:
    """Run ``main``; a SearchError becomes one ``error:`` line on stderr and exit code 2.
    ``skip_teardown`` (a command's own process only, never in-process callers): end after the atexit
    handlers and a flush of stdout and stderr, without the interpreter's teardown of the modules,
    which after a study takes about 2 s (Ray's core worker, torch) and holds nothing of this package:
    storage is committed and files are closed by then."""
    for stream in (sys.stdout, sys.stderr):  # a path or name the terminal cannot encode must not end in a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = main(argv) or 0
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except RunInterrupted as err:
        print(str(err), file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if skip_teardown:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


def package_version() -> str:
    """This package's installed version, or ``unknown`` when it runs uninstalled (from a source tree)."""
    try:
        return version("search")
    except PackageNotFoundError:
        return "unknown"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other bad input here; every
    command has ``--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"search {package_version()}",
                          help="print the version of search and exit")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SearchError(f"{message} (see {self.prog} --help)")


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` -> (3, 32, 32)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise SearchError(f"bad input shape {text!r}: expected CxHxW with positive integers, e.g. 3x32x32")
    return shape  # type: ignore[return-value]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a model name (python -m search.inspect --list shows them) or your own "
                        "model's factory as package.module:factory (default: the dataset's default model)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model or strategy option (repeatable); prefix model. or strategy. where a key is ambiguous",
    )


def add_data_arguments(parser: argparse.ArgumentParser, default: str | None = "digits") -> None:
    parser.add_argument("--dataset", default=default, help="digits (embedded), cifar10, cifar100, tinyimagenet")
    parser.add_argument("--data-dir", help="folder holding the dataset (default: $SEARCH_DATA_DIR or ./data)")
    parser.add_argument("--download", action="store_true", help="download CIFAR with torchvision if missing")
