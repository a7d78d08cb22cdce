"""DeepReDuce's ReLU criticality: how much accuracy each stage's ReLUs buy, measured once and cached.

Stages are labelled ``S1`` .. ``Sn`` as :mod:`search.strategies.stages` assigns them (the model's
``stage<k>`` modules with the stem in ``S1``, the spatial resolution, or the user's ``stages=``).

Measurement: for each stage k, start from the full-ReLU teacher's weights, switch every site off except
stage k's, finetune briefly and read the validation accuracy ``acc_k`` after the last epoch (no
best-epoch selection, so the figure is not picked on the data it is reported on). The all-linear
network (every site off), finetuned the same way, gives the floor ``acc_0``.

Score: ``score_k = 1000 * (acc_k - acc_0) / relus_k``, the accuracy stage k's ReLUs buy over the
linear network, per thousand ReLUs they cost. Culling trades accuracy for ReLUs, so the stage whose
ReLUs buy the least accuracy each is the cheapest one to give up: this is the greedy ratio of a
knapsack. Dividing by the count itself (not its logarithm) keeps a large stage with a middling gain
from outranking a small stage with nearly the same gain. Stages are ordered from least to most
critical (lowest score first), and a plan's line names the stages it culls
(:meth:`Criticality.culls`).

The score is this project's own. The paper ranks stages by a criticality ``C_k``, but its formula and
profiling procedure could not be read in any copy of the paper, nor of DeepReShape by the same
authors, available to this project; summaries of the paper say only that the metric combines
accuracy and ReLU cost. BENCHMARKS.md ("DeepReDuce criticality metric") lists what was searched and
found.

The result is cached as JSON under ``<cache_dir>/criticality/<key>.json``, content-addressed like the
teacher cache: the key hashes the model and its options, the input size and classes, the dataset and a
fingerprint of its data, the seed, the finetuning recipe, a fingerprint of the teacher's weights and,
unless the stages are the model's own ``stage<k>`` modules, the stage assignment.
Writes are atomic and a file lock lets concurrent trials share one measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from search.errors import SearchError
from search.relu import relu_count, trace_shapes
from search.strategies.base import Context
from search.strategies.stages import FROM_NAMES, Stages, forward_sites, model_stages
from search.teacher import data_fingerprint
from search.train import TrainConfig, fit, preserved_rng

CACHE_VERSION = 1
FORMULA = "score = 1000 * (acc_k - acc_linear) / relus_k  (val accuracy gained per 1,000 ReLUs)"
METRIC = "val acc gained per 1k ReLUs"


def keep_only(model: nn.Module, stages: Stages, labels: Sequence[str]) -> None:
    """Switch on the sites of the stages in ``labels`` and switch every other site off."""
    for label, members in stages.of(model).items():
        for site in members:
            site.switch_on() if label in labels else site.switch_off()


@dataclass(frozen=True)
class StageScore:
    """One stage's measurement."""

    label: str
    relus: int
    val_acc: float
    gain: float
    score: float


@dataclass(frozen=True)
class Criticality:
    """Stages ordered from least to most critical, with the measurements behind the order."""

    order: tuple[str, ...]
    stages: tuple[StageScore, ...]
    linear_val_acc: float
    path: str
    cached: bool

    def describe(self) -> str:
        """The order and per-stage scores, as printed to the user."""
        lines = [f"criticality (least to most critical): {' < '.join(self.order)}   [{FORMULA}]"]
        by_label = {s.label: s for s in self.stages}
        for label in self.order:
            s = by_label[label]
            lines.append(
                f"  {label}: relus {s.relus:,}  val_acc {s.val_acc:.4f}  gain {s.gain:+.4f}  score {s.score:.4f}"
            )
        lines.append(f"  all-linear network: val_acc {self.linear_val_acc:.4f}")
        return "\n".join(lines)

    def culls(self, cull: Sequence[str]) -> str:
        """The order and the stages a plan culls, as one line: ``criticality (...): S1 < S2 -> culls S1``."""
        return f"criticality ({METRIC}): {' < '.join(self.order)} -> culls {','.join(cull) or 'none'}"

    def as_details(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "scores": {s.label: round(s.score, 6) for s in self.stages},
            "val_acc": {s.label: s.val_acc for s in self.stages},
            "relus": {s.label: s.relus for s in self.stages},
            "linear_val_acc": self.linear_val_acc,
            "formula": FORMULA,
            "cache": self.path,
        }


def order_stages(scores: Sequence[StageScore]) -> tuple[str, ...]:
    """Least critical first; ties keep the earlier stage first."""
    return tuple(s.label for s in sorted(scores, key=lambda s: (s.score, int(s.label[1:]))))


def score(val_acc: float, linear_val_acc: float, relus: int) -> float:
    """Validation accuracy gained over the all-linear network per 1,000 ReLUs (see module docstring)."""
    return 1000.0 * (val_acc - linear_val_acc) / max(relus, 1)


def stage_scores(val_acc: Mapping[str, float], relus: Mapping[str, int], linear_val_acc: float) -> list[StageScore]:
    """Every stage's score from its measured accuracy and ReLU count, in the order of ``val_acc``."""
    return [
        StageScore(k, relus[k], acc, acc - linear_val_acc, score(acc, linear_val_acc, relus[k]))
        for k, acc in val_acc.items()
    ]


def model_fingerprint(model: nn.Module) -> str:
    """Hash of a model's weights and buffers: a retrained teacher means a new measurement."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def stages_key(stages: Stages) -> dict[str, list[str]] | None:
    """The stage assignment as a cache key part; None for the model's own stage modules, whose
    assignment the model name and options already fix (so caches made before this key stay valid)."""
    return None if stages.source == FROM_NAMES else stages.assignment()


def _identity(ctx: Context, recipe: TrainConfig, teacher: nn.Module, stages: Stages) -> dict[str, Any]:
    info = ctx.data.info
    assignment = stages_key(stages)
    return {
        "version": CACHE_VERSION,
        "model": ctx.model_name,
        "model_options": _plain_json(ctx.model_options),
        "input_size": list(info.input_shape),
        "num_classes": info.num_classes,
        "dataset": info.name,
        "data": data_fingerprint(ctx.data),
        "seed": ctx.seed,
        "recipe": dataclasses.asdict(recipe),
        "teacher": model_fingerprint(teacher),
        "formula": FORMULA,
        **({"stage_sites": assignment} if assignment is not None else {}),
    }


def _plain_json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def criticality(
    ctx: Context,
    recipe: TrainConfig,
    teacher: nn.Module | None = None,
    log: Callable[[str], None] | None = None,
    stages: Stages | None = None,
) -> Criticality:
    """The cached criticality of ``ctx``'s model on ``ctx``'s data, measured with ``recipe`` if absent.
    ``teacher`` saves fetching ``ctx.teacher()`` again when the caller has it; ``stages`` defaults to
    the teacher's own (:func:`search.strategies.stages.model_stages`).

    Measuring trains (reseeding the global RNGs) and reading the cache does not, so both run under
    :func:`preserved_rng`: the strategy's later draws (a student built from scratch) do not depend on
    whether the measurement was cached.
    """
    with preserved_rng(ctx.device):
        return _criticality(ctx, recipe, teacher, log or ctx.log, stages)


def _criticality(
    ctx: Context, recipe: TrainConfig, teacher: nn.Module | None, log: Callable[[str], None], stages: Stages | None
) -> Criticality:
    teacher = teacher if teacher is not None else ctx.teacher()
    if stages is None:
        stages = model_stages(forward_sites(teacher, ctx.data.info.input_shape))
    identity = _identity(ctx, recipe, teacher, stages)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(ctx.cache_dir) / "criticality"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _read_record(path, log)
        if record is not None:
            log(f"criticality of {ctx.model_name} on {ctx.data.info.name} from cache {path}")
            return _from_record(record, str(path), cached=True)
        log(
            f"measuring criticality of {ctx.model_name} on {ctx.data.info.name}: {recipe.epochs} epoch(s) per stage "
            f"from the teacher's weights; cached as {path}"
        )
        record = {**identity, **_measure(ctx, recipe, teacher, stages, log)}
        _write_json(path, record)
        return _from_record(record, str(path), cached=False)


def _measure(ctx: Context, recipe: TrainConfig, teacher: nn.Module, stages: Stages, log: Callable[[str], None]) -> dict[str, Any]:
    input_size = ctx.data.info.input_shape
    labels = stages.labels
    accuracies: dict[str, float] = {}
    counts: dict[str, int] = {}
    for label in ["linear", *labels]:
        model = copy.deepcopy(teacher)
        trace_shapes(model, input_size)
        keep_only(model, stages, [] if label == "linear" else [label])
        counts[label] = relu_count(model, input_size)
        result = fit(model, ctx.data, recipe, ctx.device, select_best=False, log=log, label=f"criticality {label}")
        accuracies[label] = result.history[-1].val_acc if result.history else 0.0
    linear = accuracies.pop("linear")
    stages = stage_scores(accuracies, counts, linear)
    return {
        "linear_val_acc": linear,
        "stages": [dataclasses.asdict(s) for s in stages],
        "order": list(order_stages(stages)),
    }


def _from_record(record: Mapping[str, Any], path: str, cached: bool) -> Criticality:
    stages = tuple(StageScore(**s) for s in record["stages"])
    return Criticality(tuple(record["order"]), stages, float(record["linear_val_acc"]), path, cached)


def _valid(record: Any) -> bool:
    """A cache record has the fields we read, with the types we expect (the file is data, not trusted)."""
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION:
        return False
    stages, order = record.get("stages"), record.get("order")
    if not (isinstance(stages, list) and isinstance(order, list) and isinstance(record.get("linear_val_acc"), (int, float))):
        return False
    fields = {"label": str, "relus": int, "val_acc": (int, float), "gain": (int, float), "score": (int, float)}
    for stage in stages:
        if not isinstance(stage, dict) or set(stage) != set(fields):
            return False
        if not all(isinstance(stage[k], t) for k, t in fields.items()):
            return False
    return sorted(order) == sorted(s["label"] for s in stages)


def _read_record(path: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log(f"ignoring unreadable criticality cache {path}: {err}")
        return None
    if not _valid(record):
        log(f"ignoring malformed criticality cache {path}; measuring again")
        return None
    return record


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_order(
    cache_dir: str | os.PathLike[str],
    model_name: str,
    model_options: Mapping[str, Any],
    input_size: Sequence[int],
    num_classes: int,
    recipe_filter: Mapping[str, Any],
    stages: Stages,
) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """The criticality order cached for this model, options, input and stage assignment, without training.

    ``recipe_filter`` keeps only records whose recipe has these values. Returns (order, record) when
    every matching record agrees on the order, None when nothing matches; raises SearchError when
    matching records disagree (e.g. two datasets with the same input size), since the choice is then
    the user's.
    """
    folder = Path(cache_dir) / "criticality"
    wanted = (model_name, _plain_json(dict(model_options)), list(input_size), num_classes, stages_key(stages))
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = _read_record(path, lambda _message: None)
        if record is None:
            continue
        found_key = (record.get("model"), record.get("model_options"), record.get("input_size"), record.get("num_classes"),
                     record.get("stage_sites"))
        if found_key != wanted:
            continue
        recipe = record.get("recipe") or {}
        if any(recipe.get(k) != v for k, v in recipe_filter.items()):
            continue
        found.setdefault(tuple(record["order"]), record)
    if not found:
        return None
    if len(found) > 1:
        listed = "; ".join(
            f"{' < '.join(order)} ({r.get('dataset')}, seed {r.get('seed')})" for order, r in found.items()
        )
        raise SearchError(f"the cache holds different criticality orders for {model_name}: {listed}; name the stages with cull=...")
    return next(iter(found.items()))
