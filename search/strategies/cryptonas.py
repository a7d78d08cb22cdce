"""CryptoNAS (Ghodsi et al., NeurIPS 2020): pick a ReLU-balanced CNet that fits the budget, train it.

CryptoNAS does not mask a given network: it builds its own from the ``cnet`` model space
(:mod:`search.spaces.cnet`), where ReLU pruning/shuffling and ReLU balancing are options. The run's
base model (``ctx.model_name``) is used only as the distillation teacher, and only when
``kd_weight`` > 0 (the default, 0, trains from labels alone, as the paper does).

Choosing the network: options the user sets are kept; with a ReLU target (``target``, else the run's
budget) and no width, the width is the largest that fits; with no depth either, the depth is the
multiple of 3 whose fitting width is closest to the CNet family's proportion width/depth = 7/3
((6,14), (12,28), (24,56)), which reproduces those CNets at their own counts; with a width but no
depth, the depth is the deepest multiple of 3 that fits. With no target at all, unset depth and width
are CNet (6,14)'s. The count is taken from the built plan with ``relu_count`` before any training; a
candidate over the budget is rejected with a SearchError (nothing is trained; a study checks
:meth:`CryptoNAS.plan` first and records the trial as infeasible).

In a study, :meth:`CryptoNAS.suggest` searches the ENAS-style macro space define-by-run: depth
``cryptonas/layers`` (3..24, step 3: the published CNets have 6, 12 and 24 layers), per-layer ops
``cryptonas/op_<i>`` and up to two skips into each layer, ``cryptonas/skip_<i>`` and, when that one is
taken, ``cryptonas/skip2_<i>`` (a fixed set of choices per name; a second skip equal to the first adds
nothing), and, with a budget, the share of it to fill ``cryptonas/fill`` (without one, the width
``cryptonas/width``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from search import progress
from search.data import DatasetInfo
from search.errors import SearchError
from search.relu import relu_count
from search.spaces import build_model
from search.spaces.cnet import OPS, CNet, Op, format_skips, parse_skips
from search.strategies.base import Context, Outcome, Phase, Strategy, final_training
from search.train import TrainConfig, fit, teacher_config

if TYPE_CHECKING:
    import optuna

CNET_RATIO = 7 / 3  # width / depth of the published CNets
DEFAULT_LAYERS, DEFAULT_WIDTH = 6, 14  # CNet (6,14), used when neither a width nor a ReLU target is given
SEARCH_MAX_LAYERS = 24  # the deepest published CNet
PICK_MAX_LAYERS = 48  # deepest CNet a free depth is picked from: twice the largest published; bounds the search time
SEARCH_WIDTHS = (4, 64)
SEARCH_MIN_FILL = 0.25
EPOCHS = {"digits": 10}  # per-dataset default epochs; other datasets use their full-ReLU recipe's


@dataclass(frozen=True)
class CryptoNASOptions:
    """``--set`` options of strategy cryptonas (prefix ``strategy.`` where the model shares a key)."""

    layers: int | None = None  # depth; None: chosen from the ReLU target (or 6, or one per op given)
    width: int | None = None  # first-stage channels; None: the largest that fits the ReLU target (or 14)
    ops: tuple[Op, ...] = ()  # per-layer ops; none: all conv3x3; one: every layer
    skips: tuple[str, ...] = ()  # FROM-TO pairs, e.g. 0-2,1-3 (needs a known depth)
    balance: bool = True  # ReLU balancing: channels x4 at each downsampling (x2 when off)
    relu_per_layer: bool = True  # ReLU pruning/shuffling: one ReLU per layer, none on skips
    target: int | None = None  # ReLU count to fill when the width is free; None: the run's budget
    epochs: int | None = None  # None: 10 on digits, else the dataset's full-ReLU recipe (cifar10 30, ...)
    lr: float = 0.05
    kd_weight: float = 0.0  # > 0 distils from the run's base model (the cached teacher)
    dropout: float = 0.0  # before the classifier; the paper trains with 0.5 (recipes/cryptonas-*.yaml)

    def __post_init__(self) -> None:
        for key, low in (("layers", 3), ("width", 1), ("target", 1), ("epochs", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise SearchError(f"bad value {value} for {key}: expected an integer >= {low}")
        if self.lr <= 0:
            raise SearchError(f"bad value {self.lr} for lr: expected a number > 0")
        if self.kd_weight < 0:
            raise SearchError(f"bad value {self.kd_weight} for kd_weight: expected a number >= 0")
        if not 0 <= self.dropout < 1:
            raise SearchError(f"bad value {self.dropout} for dropout: expected a number in [0, 1)")
        if self.layers is not None and len(self.ops) > 1 and len(self.ops) != self.layers:
            raise SearchError(
                f"bad value for ops: {len(self.ops)} ops given for layers={self.layers}; give one per layer or one for all"
            )
        if self.skips:
            if self.depth is None:
                raise SearchError("skips need a known depth: set layers (or one op per layer) as well")
            parse_skips(self.skips, self.depth)

    @property
    def depth(self) -> int | None:
        """The depth the user fixed, directly or by giving one op per layer."""
        return self.layers if self.layers is not None else (len(self.ops) if len(self.ops) > 1 else None)


def _build(arch: Mapping[str, Any], input_size: tuple[int, int, int], num_classes: int = 10) -> CNet:
    return build_model("cnet", num_classes=num_classes, input_size=input_size, **arch)  # type: ignore[return-value]


def _unit_count(arch: Mapping[str, Any], layers: int, input_size: tuple[int, int, int]) -> int:
    """ReLUs of the network at width 1; every site's count is linear in the width."""
    return relu_count(_build({**arch, "layers": layers, "width": 1}, input_size), input_size)


def _pick_depth(arch: Mapping[str, Any], target: int, input_size: tuple[int, int, int]) -> int:
    """The multiple of 3 (at most PICK_MAX_LAYERS) whose widest fitting network is nearest (in log) to
    width/depth = 7/3."""
    best, best_gap, layers = 3, math.inf, 3
    while layers <= PICK_MAX_LAYERS:
        unit = _unit_count(arch, layers, input_size)
        if unit > target:
            return best
        ratio = (target // unit) / layers
        gap = abs(math.log(ratio / CNET_RATIO))
        if gap < best_gap:
            best, best_gap = layers, gap
        if ratio < CNET_RATIO:
            return best
        layers += 3
    return best


def _deepest(arch: Mapping[str, Any], width: int, target: int, input_size: tuple[int, int, int]) -> int:
    """The deepest multiple of 3 (at most PICK_MAX_LAYERS) whose network at ``width`` fits ``target`` (3 when none does)."""
    layers = 3
    while layers + 3 <= PICK_MAX_LAYERS and width * _unit_count(arch, layers + 3, input_size) <= target:
        layers += 3
    return layers


def candidate(
    options: CryptoNASOptions, input_size: tuple[int, int, int], budget: int | None, num_classes: int = 10
) -> tuple[dict[str, Any], CNet]:
    """The full ``cnet`` options of the candidate ``options`` describe, and that network untrained.

    When even width 1 exceeds the target, width 1 is returned and the budget check rejects it.
    """
    arch: dict[str, Any] = {
        "ops": options.ops,
        "skips": options.skips,
        "balance": options.balance,
        "relu_per_layer": options.relu_per_layer,
        "dropout": options.dropout,
    }
    target = options.target if options.target is not None else budget
    layers, width = options.depth, options.width
    if target is None:
        layers, width = layers or DEFAULT_LAYERS, width or DEFAULT_WIDTH
    elif width is None:
        layers = layers or _pick_depth(arch, target, input_size)
        width = max(1, target // _unit_count(arch, layers, input_size))
    elif layers is None:
        layers = _deepest(arch, width, target, input_size)
    model = _build({**arch, "layers": layers, "width": width}, input_size, num_classes)
    return {**arch, "layers": layers, "width": width, "ops": model.ops, "skips": format_skips(model.skip_table)}, model


def checked_candidate(
    options: CryptoNASOptions, info: DatasetInfo, budget: int | None, log: Callable[[str], None] | None = None
) -> tuple[dict[str, Any], CNet, int]:
    """The candidate (options, untrained network, ReLU count), refused when over ``budget``: the check
    ``run`` makes before training, and ``preview`` makes for a dry run."""
    arch, model = candidate(options, info.input_shape, budget, info.num_classes)
    relus = relu_count(model, info.input_shape)
    if log is not None:
        log(f"{model.describe()}\n  {relus:,} ReLUs (budget {f'{budget:,}' if budget else 'none'})")
    if budget is not None and relus > budget:
        raise SearchError(
            f"cryptonas candidate cnet layers={arch['layers']} width={arch['width']} has {relus:,} ReLUs, "
            f"over the budget of {budget:,}; rejected before training (lower layers or width, or raise the budget)"
        )
    return arch, model, relus


def train_config(options: CryptoNASOptions, info: DatasetInfo, seed: int) -> TrainConfig:
    """The CNet's recipe before the user's ``train.KEY`` options: the dataset's full-ReLU recipe with
    this strategy's epochs, lr and KD weight."""
    recipe = teacher_config(info.name)
    return replace(recipe, epochs=options.epochs or EPOCHS.get(info.name, recipe.epochs), lr=options.lr,
                   kd_weight=options.kd_weight, augment=info.augment, seed=seed)


class CryptoNAS(Strategy):
    """ReLU-balanced, one-ReLU-per-layer CNets sized to a ReLU budget (see the module docstring)."""

    name = "cryptonas"
    uses_target = True  # sizes its network to a fraction of the trial's relu_target
    Options = CryptoNASOptions
    summary = (
        "CryptoNAS (Ghodsi et al. 2020): build a ReLU-balanced CNet (model cnet: one ReLU per layer, channels x4 at "
        "each downsampling) that fits the budget and train it from scratch; kd_weight > 0 distils from --model. "
        "Unset layers/width give the widest CNet under the budget (or target); skips are FROM-TO pairs such as "
        "0-2,1-3 (0 is the stem); write strategy.width where the model also has a width."
    )

    def suggest(self, trial: optuna.Trial, budget: int | None) -> dict[str, Any]:
        layers = trial.suggest_int("cryptonas/layers", 3, SEARCH_MAX_LAYERS, step=3)
        ops = tuple(trial.suggest_categorical(f"cryptonas/op_{i}", OPS) for i in range(1, layers + 1))
        skips = []
        for i in range(1, layers + 1):
            choices = ("none", *map(str, range(i)))
            first = trial.suggest_categorical(f"cryptonas/skip_{i}", choices)
            if first == "none":
                continue
            second = trial.suggest_categorical(f"cryptonas/skip2_{i}", choices)
            sources = sorted({int(first)} | ({int(second)} if second != "none" else set()))
            skips.extend(f"{source}-{i}" for source in sources)
        chosen: dict[str, Any] = {"layers": layers, "ops": ops, "skips": tuple(skips)}
        if budget is None:
            chosen["width"] = trial.suggest_int("cryptonas/width", *SEARCH_WIDTHS, log=True)
        else:
            fill = trial.suggest_float("cryptonas/fill", SEARCH_MIN_FILL, 1.0)
            chosen["target"] = max(1, int(fill * budget))
        return chosen

    def plan(
        self,
        model_name: str,
        model_options: Mapping[str, Any],
        input_size: tuple[int, int, int],
        num_classes: int,
        options: CryptoNASOptions,
    ) -> nn.Module:
        """The CNet ``options`` describe, untrained (the base model is not used). With no width and no
        ``target`` it is CNet (6,14): a plan does not see the run's budget."""
        return candidate(options, input_size, None, num_classes)[1]

    def preview(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budget: int | None,
                options: CryptoNASOptions) -> str:
        _, model, relus = checked_candidate(options, info, budget)
        teacher = f", with KD from {model_name} (the teacher)" if options.kd_weight > 0 else ""
        return f"train from scratch{teacher}: {model.describe()}\n  {relus:,} ReLUs (budget {f'{budget:,}' if budget else 'none'})"

    def uses_teacher(self, options: CryptoNASOptions) -> bool:
        return options.kd_weight > 0

    def phases(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budgets: Sequence[int],
               options: CryptoNASOptions, train_overrides: Mapping[str, Any]) -> list[Phase]:
        """One CNet trained from scratch per budget (``run`` once per budget), KD only when kd_weight > 0."""
        config = final_training(train_config(options, info, 0), train_overrides)
        phases = []
        for budget in budgets or [None]:
            arch, model, relus = checked_candidate(options, info, budget)
            phases.append(Phase("train", model, config, teacher=self.uses_teacher(options),
                                about=f"cnet layers={arch['layers']} width={arch['width']}, {relus:,} ReLUs"))
        return phases

    def run(self, ctx: Context, options: CryptoNASOptions) -> Outcome:
        info = ctx.data.info
        arch, model, relus = checked_candidate(options, info, ctx.budget, ctx.log)
        progress.note_relus(relus)
        config = ctx.final_training(train_config(options, info, ctx.seed))
        teacher = ctx.teacher() if options.kd_weight > 0 else None
        result = fit(model, ctx.data, config, ctx.device, teacher=teacher, log=ctx.log, label="cryptonas")
        return Outcome(
            model=model,
            model_name="cnet",
            model_options=arch,
            relus=relus,
            val_acc=result.best_val_acc,
            details={
                "architecture": model.describe(),
                "epochs": config.epochs,
                "best_epoch": result.best_epoch,
                "kd_weight": options.kd_weight,
                "teacher": ctx.model_name if teacher is not None else None,
            },
        )
