"""``python -m search.report RUN_DIR [RUN_DIR ...]``: the comparative Pareto report of one or more runs.

Writes ``report.html`` (interactive, self-contained), ``report.md``, ``pareto.png`` and ``trials.csv``
into the first run directory. ``--measure-pi`` also runs each Pareto-optimal trial's saved model under
SPU (``search.pi``), adds the measured columns and writes ``pi.png``, measured against estimated
communication; each measurement is kept beside its model (``trials/<n>/pi-<protocol>.json``) and reused. Several run directories merge into one comparison. Every file is
rendered in memory first and then renamed into place, so bad input or a failure half-way leaves the
previous report untouched. ``search.run`` calls :func:`write_report` at the end of every study.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.cli import ArgumentParser, run_main
from search.errors import SearchError
from search.pi.arguments import image_count
from search.pi.runner import PROTOCOLS
from search.reporting.load import load_published, load_runs
from search.reporting.model import Report, build_report

HTML_FILE, MARKDOWN_FILE, PLOT_FILE, CSV_FILE = "report.html", "report.md", "pareto.png", "trials.csv"
PI_PLOT_FILE = "pi.png"


@dataclass(frozen=True)
class MeasurePI:
    """``--measure-pi``: how the Pareto-optimal models are run under SPU."""

    images: int = 4
    protocol: str = "cheetah"


def make_report(run_dirs: Sequence[str | os.PathLike[str]], measure: MeasurePI | None = None) -> Report:
    """Read the run directories and build the report model; with ``measure``, the Pareto-optimal trials'
    models are measured under SPU first (or their kept measurements reused)."""
    if not run_dirs:
        raise SearchError("no run directory given: expected one or more run directories written by search.run")
    runs, published = load_runs([Path(d) for d in run_dirs]), load_published()
    report = build_report(runs, published)
    if measure is None:
        return report
    return build_report(runs, published, _measure_fronts(report, measure))


def _measure_fronts(report: Report, measure: MeasurePI) -> dict[tuple[str, int], dict[str, Any]]:
    """Each Pareto-optimal trial with a saved model, measured (or read back from its kept measurement)."""
    from search.pi.measure import measure_checkpoint, runner_python

    runner_python()  # says how to install SPU before anything runs
    found: dict[tuple[str, int], dict[str, Any]] = {}
    trials = [t for t in report.pareto_trials if t.model_present and t.model_path]
    for i, trial in enumerate(trials, 1):
        model = Path(str(trial.model_path))
        kept = model.with_name(f"pi-{measure.protocol}.json")
        if kept.is_file() and kept.stat().st_mtime >= model.stat().st_mtime:
            previous = json.loads(kept.read_text())
            if len(previous.get("images", ())) >= measure.images:
                found[(trial.run, trial.number)] = previous
                continue
        print(f"measuring {trial.series} trial #{trial.number} ({i}/{len(trials)}, {trial.relus:,} ReLUs) under SPU "
              f"{measure.protocol}", file=sys.stderr, flush=True)
        result = measure_checkpoint(str(model), measure.images, measure.protocol).to_json()
        _write_all(kept.parent, {kept.name: json.dumps(result, indent=1).encode("utf-8")})
        found[(trial.run, trial.number)] = result
    skipped = len(report.pareto_trials) - len(trials)
    if skipped:
        print(f"{skipped} Pareto-optimal trial(s) have no saved model and are not measured", file=sys.stderr)
    return found


def write_report(run_dirs: list[Path], measure: MeasurePI | None = None) -> Path:
    """Write the report files into ``run_dirs[0]``; returns the path of ``report.html``."""
    report = make_report(run_dirs, measure)
    # The renderers import plotly and matplotlib: only after the input is known to be good, so bad input fails fast.
    from search.reporting import html, markdown, png, trials_csv

    files = {
        HTML_FILE: html.render(report).encode("utf-8"),
        MARKDOWN_FILE: markdown.render(report, PLOT_FILE).encode("utf-8"),
        PLOT_FILE: png.render(report),
        CSV_FILE: trials_csv.render(report).encode("utf-8"),
    }
    if report.measured:
        files[PI_PLOT_FILE] = png.render_measured(report)
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
    parser.add_argument("--measure-pi", action="store_true",
                        help="run each Pareto-optimal trial's saved model under SPU (python -m search.pi; needs "
                        "pip install -e '.[pi]') and add the measured communication and time, and pi.png")
    parser.add_argument("--pi-images", type=image_count, default=MeasurePI.images, metavar="N",
                        help="test images per measured model (default 4: the first carries the protocol's setup, the "
                        "median of the others is the steady state)")
    parser.add_argument("--pi-protocol", choices=PROTOCOLS, default=MeasurePI.protocol, help="SPU protocol (default cheetah)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    measure = MeasurePI(args.pi_images, args.pi_protocol) if args.measure_pi else None
    if not args.measure_pi and (args.pi_images != MeasurePI.images or args.pi_protocol != MeasurePI.protocol):
        raise SearchError("--pi-images and --pi-protocol go with --measure-pi")
    path = write_report([Path(d) for d in args.run_dirs], measure)
    for name in (HTML_FILE, MARKDOWN_FILE, PLOT_FILE, CSV_FILE, *((PI_PLOT_FILE,) if measure else ())):
        print(path.parent / name)
    return 0


if __name__ == "__main__":
    run_main(main)
