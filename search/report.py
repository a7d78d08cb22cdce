"""``python -m search.report RUN_DIR [RUN_DIR ...]``: the comparative Pareto report of one or more runs.

Writes ``report.html`` (interactive, self-contained), ``report.md``, ``pareto.png`` and ``trials.csv``
into the first run directory. Several run directories merge into one comparison. Every file is
rendered in memory first and then renamed into place, so bad input or a failure half-way leaves the
previous report untouched. ``search.run`` calls :func:`write_report` at the end of every study.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from search.cli import ArgumentParser, run_main
from search.errors import SearchError
from search.reporting.load import load_published, load_runs
from search.reporting.model import Report, build_report

HTML_FILE, MARKDOWN_FILE, PLOT_FILE, CSV_FILE = "report.html", "report.md", "pareto.png", "trials.csv"


def make_report(run_dirs: Sequence[str | os.PathLike[str]]) -> Report:
    """Read the run directories and build the report model (nothing is written)."""
    if not run_dirs:
        raise SearchError("no run directory given: expected one or more run directories written by search.run")
    return build_report(load_runs([Path(d) for d in run_dirs]), load_published())


def write_report(run_dirs: list[Path]) -> Path:
    """Write the four report files into ``run_dirs[0]``; returns the path of ``report.html``."""
    report = make_report(run_dirs)
    # The renderers import plotly and matplotlib: only after the input is known to be good, so bad input fails fast.
    from search.reporting import html, markdown, png, trials_csv

    files = {
        HTML_FILE: html.render(report).encode("utf-8"),
        MARKDOWN_FILE: markdown.render(report, PLOT_FILE).encode("utf-8"),
        PLOT_FILE: png.render(report),
        CSV_FILE: trials_csv.render(report).encode("utf-8"),
    }
    out = Path(run_dirs[0])
    _write_all(out, files)
    return out / HTML_FILE


def _write_all(out: Path, files: dict[str, bytes]) -> None:
    """Write every file to a temporary name first, then rename them all: no half-written report."""
    temps: dict[str, str] = {}
    try:
        for name, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            temps[name] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
        for name, tmp in temps.items():
            os.replace(tmp, out / name)
    except OSError as err:
        raise SearchError(f"cannot write the report into {out}: {err.strerror or err}") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m search.report",
        description="Comparative Pareto report of one or more run directories: report.html, report.md, "
        "pareto.png and trials.csv, written into the first run directory.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory written by python -m search.run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = write_report([Path(d) for d in args.run_dirs])
    for name in (HTML_FILE, MARKDOWN_FILE, PLOT_FILE, CSV_FILE):
        print(path.parent / name)
    return 0


if __name__ == "__main__":
    run_main(main)
