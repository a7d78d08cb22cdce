"""``python -m search.pi CHECKPOINT``: secure inference of a saved model, measured, beside the estimates.

Runs the model on a few test images of its dataset with two SPU parties on this machine, checks that
the secure predictions equal the plain model's, and prints per image the communication (both parties'
bytes) and wall time, in all and by layer kind, then the steady state beside the per-ReLU cost models.
The first inference carries the protocol's one-time setup; the steady state is the median of the others.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from search.cli import ArgumentParser, run_main
from search.errors import SearchError
from search.objectives import COST_PRESETS
from search.pi.arguments import image_count
from search.pi.graph import KINDS
from search.pi.measure import INSTALL_HINT, Measurement, measure_checkpoint
from search.pi.runner import PROTOCOLS

# the per-ReLU cost models a protocol's measurement is shown beside
ESTIMATES = {"cheetah": ("cheetah", "cheetah-paper"), "semi2k": ()}


def _mb(n: float) -> str:
    return f"{n / 1e6:,.3f}"


def format_measurement(m: Measurement) -> str:
    """The per-image table, the steady state, the setup and the estimates, as printed."""
    lines = [(f"model {m.model}{f' ({m.strategy})' if m.strategy else ''} on {m.dataset}: {m.relus:,} ReLUs, "
              f"{m.node_count} nodes; protocol {m.protocol} (SPU {m.spu_version}, 2 parties on 127.0.0.1); "
              f"compiled in {m.compile_seconds:.1f} s"),
             "communication in MB (both parties' bytes sent), time in wall seconds; image 1 includes the setup"]
    header = (f"{'image':>5} {'label':>5} {'secure':>6} {'plain':>5} {'max|dlogit|':>11} {'total MB':>10} "
              + " ".join(f"{k + ' MB':>10}" for k in KINDS) + f" {'seconds':>8}")
    lines += [header, "-" * len(header)]
    for n, i in enumerate(m.images, 1):
        lines.append(f"{n:>5} {i.label:>5} {i.predicted:>6} {i.plain_predicted:>5} {i.logit_error:>11.2e} {_mb(i.total_bytes):>10} "
                     + " ".join(f"{_mb(i.bytes_by_kind[k]):>10}" for k in KINDS) + f" {i.seconds:>8.2f}")
    lines.append("-" * len(header))
    steady = m.steady
    relu = steady.bytes_by_kind["relu"]
    which = f"image {m.images.index(steady) + 1}, the median of images 2-{len(m.images)}" if len(m.images) > 1 else \
        "image 1; give --images 3 or more to see it apart from the setup"
    per_relu = f", {m.relu_bytes_per_relu:,.1f} B per ReLU" if m.relu_bytes_per_relu else ""
    lines.append(f"steady state ({which}): {_mb(steady.total_bytes)} MB and {steady.seconds:.2f} s per image; ReLUs "
                 f"{_mb(relu)} MB ({relu / max(steady.total_bytes, 1):.1%}){per_relu}, {steady.seconds_by_kind['relu']:.2f} s")
    if len(m.images) > 1:
        lines.append(f"setup and other one-time costs (all images minus {len(m.images)} x steady): {_mb(m.setup_bytes)} MB")
    for name in ESTIMATES[m.protocol]:
        cost = COST_PRESETS[name]
        lines.append(f"estimate {name} ({cost.online_bytes_per_relu:g} B, {cost.online_us_per_relu:g} us per ReLU; "
                     f"{cost.source}): {cost.communication_mb(m.relus):,.3f} MB, {cost.latency_s(m.relus):.3f} s = "
                     f"{cost.communication_mb(m.relus) * 1e6 / max(steady.total_bytes, 1):.1%} of the measured bytes")
    lines.append(f"predictions {'match' if m.matches else 'DIFFER from'} the plain model's on {len(m.images)} image(s); "
                 f"largest logit error {max(i.logit_error for i in m.images):.2e}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m search.pi", description=__doc__.splitlines()[0],
                            epilog=f"Needs the optional extra: {INSTALL_HINT}.")
    parser.add_argument("checkpoint", help="a saved model: search.linearize --out, or a study's trials/<n>/model.pt")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cheetah",
                        help="SPU's two-party protocol: cheetah (OT and HE) or semi2k (trusted-dealer Beaver triples)")
    parser.add_argument("--images", type=image_count, default=4,
                        help="test images to run, one at a time (default 4: the first carries the setup, the median "
                        "of the others is the steady state)")
    parser.add_argument("--dataset", help="the dataset whose test images to use (default: the checkpoint's)")
    parser.add_argument("--data-dir", help="folder holding the dataset (default: $SEARCH_DATA_DIR or ./data)")
    parser.add_argument("--json", metavar="PATH", help="also write the measurement as JSON")
    args = parser.parse_args(argv)
    if args.json and Path(args.json).is_dir():
        raise SearchError(f"--json {args.json} is a folder; give a file path")
    measurement = measure_checkpoint(args.checkpoint, args.images, args.protocol, args.dataset, args.data_dir,
                                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_measurement(measurement))
    if args.json:
        Path(args.json).write_text(json.dumps(measurement.to_json(), indent=1))
    return 0 if measurement.matches else 1


def entry() -> None:
    run_main(main)
