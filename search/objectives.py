"""Objectives of a study, PI cost models, Pareto fronts and the 2-D hypervolume.

Each objective declares its name, direction and whether it is cheap (known from the ReLU count
before training, so a plan can be rejected early) or expensive (needs training). The study's
directions come from these declarations; reports read them back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from search.errors import SearchError

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class CostModel:
    """Per-ReLU private-inference cost: online latency (microseconds) and communication (bytes)."""

    name: str
    online_us_per_relu: float
    online_bytes_per_relu: float
    offline_bytes_per_relu: float = 0.0
    source: str = ""  # where the constants come from

    def latency_s(self, relus: int) -> float:
        return relus * self.online_us_per_relu * 1e-6

    def communication_mb(self, relus: int) -> float:
        return relus * self.online_bytes_per_relu / 1e6


# DELPHI on ResNet18 (garbled circuits): 24.6 us and 1,184 B online per ReLU; offline 17,072 B garbled
# circuit + 1,344 B labels + 672 B OT. Cheetah as published (OpenCheetah, l = 32): about 1 us and 44 B
# per ReLU. Cheetah as measured here (benchmarks/bench_pi.py, BENCHMARKS.md "Measured private
# inference"): 98.5 B per kept ReLU under SPU's Cheetah (64-bit ring), exactly linear in the kept count
# from 2% to 50% of resnet18's positions; 15 us per ReLU with both parties on one 2-core machine (13.4
# and 17.0 us in two runs).
COST_PRESETS: dict[str, CostModel] = {
    "delphi": CostModel("delphi", 24.6, 1184.0, 17072.0 + 1344.0 + 672.0, source="DELPHI on ResNet18"),
    "cheetah": CostModel("cheetah", 15.0, 98.5, source="SPU Cheetah measured, BENCHMARKS.md"),
    "cheetah-paper": CostModel("cheetah-paper", 1.0, 44.0, source="OpenCheetah paper, l = 32"),
}


def cost_model(spec: str) -> CostModel:
    """A preset name (``delphi``, ``cheetah``, ``cheetah-paper``) or ``us=<float>,bytes=<float>`` for your own protocol."""
    if spec in COST_PRESETS:
        return COST_PRESETS[spec]
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    try:
        us, nbytes = float(fields["us"]), float(fields["bytes"])
    except (KeyError, ValueError):
        raise SearchError(
            f"bad cost model {spec!r}: expected {', '.join(COST_PRESETS)} or us=<microseconds>,bytes=<bytes> per ReLU"
        ) from None
    if us < 0 or nbytes < 0:
        raise SearchError(f"bad cost model {spec!r}: costs must be >= 0")
    return CostModel("custom", us, nbytes)


@dataclass(frozen=True)
class Objective:
    """One study objective, computed from a trial's metrics (``relus``, ``val_acc``)."""

    name: str
    direction: Direction
    cheap: bool
    unit: str
    value: Callable[[Mapping[str, float]], float]


def _relus(m: Mapping[str, float]) -> float:
    return float(m["relus"])


def _accuracy(m: Mapping[str, float]) -> float:
    return float(m["val_acc"])


MEASURED_COMMUNICATION = "measured_communication"


def objectives(names: Sequence[str], cost: CostModel) -> list[Objective]:
    """Accuracy and ReLU count always, first and in that order; then ``latency``, ``communication`` and/or
    ``measured_communication`` (the trial's model run under SPU's Cheetah: :mod:`search.pi`)."""
    table = {
        "accuracy": Objective("accuracy", "maximize", False, "fraction", _accuracy),
        "relus": Objective("relus", "minimize", True, "ReLUs", _relus),
        "latency": Objective("latency", "minimize", True, f"s ({cost.name})", lambda m: cost.latency_s(int(m["relus"]))),
        "communication": Objective(
            "communication", "minimize", True, f"MB ({cost.name})", lambda m: cost.communication_mb(int(m["relus"]))
        ),
        MEASURED_COMMUNICATION: Objective(
            MEASURED_COMMUNICATION, "minimize", False, "MB (SPU cheetah, measured)", lambda m: float(m["measured_communication_mb"])
        ),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SearchError(f"unknown objective {unknown[0]!r}; accepted: {', '.join(table)}")
    chosen = ["accuracy", "relus"] + [n for n in dict.fromkeys(names) if n not in ("accuracy", "relus")]
    return [table[n] for n in chosen]


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions):
        if (x < y) if d == "maximize" else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[Direction]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p, directions) for q in points)]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` and bounded by ``reference``, both objectives minimised.

    Points not strictly better than the reference in both coordinates add nothing.
    """
    inside = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in inside:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area
