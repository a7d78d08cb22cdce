"""DeepReDuce (Jha et al., ICML 2021) as a strategy: cull, thin, reshape, distil.

A plan is four choices: which stages to cull (every ReLU of stage ``Sk`` off; the stem ReLU goes with
S1, as in the released models), whether to thin the kept stages (keep ``relu1`` inside each residual
branch, drop ``relu2`` after the add), the channel width factor ``alpha`` and the stem stride factor
``rho`` (0.5 = stem stride 2). Culling and thinning are site masks; ``alpha`` and ``rho`` go through the
model space's ``width`` and ``stem_stride`` options. A plan is built and counted without training
(:meth:`DeepReDuce.plan`), so a plan over the budget is rejected before anything trains.

Any model with ReLU sites works: its stages are the model's ``stage<k>`` modules, or derived from the
spatial resolution, or named by the user (``stages=prefixA,prefixB``; see
:mod:`search.strategies.stages`). Thinning needs residual blocks, and alpha and rho need the model's
factory to declare ``width`` and ``stem_stride``; what does not apply to a model is said before
anything trains (:class:`ModelFit`), and refused when asked for.

Which stages to cull can be named (``cull=S1,S4``) or left to the measured criticality order
(``n_cull=2``, see :mod:`search.strategies.criticality`); the log then prints the order and the stages
the plan culls. With a budget, every plan choice left unset is picked so that the plan keeps the most
ReLUs under the budget. The chosen network is trained with Hinton KD from the full-ReLU teacher; when
its architecture is the teacher's (alpha = rho = 1) it starts from the teacher's weights, otherwise
only the distillation transfers.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from search import progress
from search.data import DatasetInfo, dataset_info
from search.errors import SearchError
from search.relu import relu_count, sites, trace_shapes
from search.spaces import build_model
from search.spaces import model_options as declared_model_options
from search.strategies.base import Context, Outcome, OverBudget, Phase, PlanNeedsTraining, Strategy, final_training
from search.strategies.criticality import Criticality, cached_order, criticality
from search.strategies.stages import Stages, forward_sites, model_stages, residual_blocks
from search.teacher import default_cache_dir
from search.train import TrainConfig, fit, teacher_config

if TYPE_CHECKING:
    import optuna

_LABEL = re.compile(r"S([1-9]\d*)")
DEFAULT_EPOCHS = {"digits": 8, "cifar10": 30, "cifar100": 60, "tinyimagenet": 60}
DEFAULT_CRITICALITY_EPOCHS = {"digits": 2, "cifar10": 2, "cifar100": 2, "tinyimagenet": 2}
# A plan choice neither the options nor a budget decide leaves that part of the network unchanged.
DEFAULT_N_CULL, DEFAULT_THIN, DEFAULT_ALPHA, DEFAULT_RHO = 0, False, 1.0, 1
PLAN_FIELDS = ("cull", "n_cull", "thin", "alpha", "rho")
SUGGESTED_N_CULL = [0, 1, 2]  # valid for every supported model (resnet_tiny has three stages)
SUGGESTED_ALPHA = [1.0, 0.5, 0.25]
RHOS: tuple[float, ...] = (1, 0.5)


@dataclass(frozen=True)
class DeepReDuceOptions:
    """``--set`` options. Plan choices left unset (None) are picked under the budget when there is
    one; without a budget they leave the network unchanged (no culling, no thinning, alpha 1, rho 1),
    and at least one of them must be set."""

    cull: tuple[str, ...] | None = None
    n_cull: int | None = None
    thin: bool | None = None
    alpha: float | None = None
    rho: Literal[1, 0.5] | None = None
    stages: tuple[str, ...] | None = None
    alphas: tuple[float, ...] = (1.0, 0.5, 0.25)
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    epochs: int | None = None
    lr: float = 0.05
    criticality_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.cull is not None:
            labels = tuple(label.strip().upper() for label in self.cull)
            bad = [label for label in labels if not _LABEL.fullmatch(label)]
            if bad or not labels:
                raise SearchError(f"bad value {','.join(self.cull)!r} for cull: expected stage labels such as S1,S4")
            if len(set(labels)) != len(labels):
                raise SearchError(f"bad value {','.join(self.cull)!r} for cull: a stage is named twice")
            object.__setattr__(self, "cull", tuple(sorted(labels, key=lambda label: int(label[1:]))))
            if self.n_cull is not None:
                raise SearchError("give either cull (named stages) or n_cull (the n least critical stages), not both")
        if self.n_cull is not None and self.n_cull < 0:
            raise SearchError(f"bad value {self.n_cull} for n_cull: expected an integer >= 0")
        for name, value in (("alpha", self.alpha), *(("alphas", a) for a in self.alphas)):
            if value is not None and not 0 < value <= 1:
                raise SearchError(f"bad value {value} for {name}: expected a number in (0, 1] (channel width factor)")
        if not self.alphas:
            raise SearchError("bad value for alphas: expected at least one width factor in (0, 1]")
        if self.kd_weight < 0:
            raise SearchError(f"bad value {self.kd_weight} for kd_weight: expected a number >= 0")
        if self.kd_temperature <= 0:
            raise SearchError(f"bad value {self.kd_temperature} for kd_temperature: expected a number > 0")
        if self.lr <= 0:
            raise SearchError(f"bad value {self.lr} for lr: expected a number > 0")
        for name, value in (("epochs", self.epochs), ("criticality_epochs", self.criticality_epochs)):
            if value is not None and value < 1:
                raise SearchError(f"bad value {value} for {name}: expected an integer >= 1")


@dataclass(frozen=True)
class PlanSpec:
    """One DeepReDuce network: culled stages, thinning, width factor, stem stride factor."""

    cull: tuple[str, ...]
    thin: bool
    alpha: float
    rho: float

    def describe(self) -> str:
        return f"cull={','.join(self.cull) or 'none'} thin={str(self.thin).lower()} alpha={self.alpha:g} rho={self.rho:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"cull": list(self.cull), "thin": self.thin, "alpha": self.alpha, "rho": self.rho}


# -- building plans ---------------------------------------------------------------------------------


def base_model(model_name: str, model_options: Mapping[str, Any], input_size: Sequence[int], num_classes: int) -> nn.Module:
    """The unmodified model, traced."""
    model = build_model(model_name, num_classes=num_classes, input_size=tuple(input_size), **model_options)
    trace_shapes(model, input_size)
    return model


@dataclass(frozen=True)
class ModelFit:
    """What DeepReDuce can do to one model: cull its stages, thin its residual blocks (each block's
    sites, the first one kept), scale its ``width`` (alpha) and stem stride (rho) where its factory
    declares those options."""

    model_name: str
    stages: Stages
    blocks: tuple[tuple[str, ...], ...]
    no_blocks: str
    declared: tuple[str, ...]

    @property
    def culls(self) -> bool:
        return len(self.stages.stages) > 1

    @property
    def widens(self) -> bool:
        return "width" in self.declared

    @property
    def strides(self) -> bool:
        return "stem_stride" in self.declared

    def _lacks(self, option: str) -> str:
        return f"its factory has no {option} option (it has {', '.join(self.declared) or 'no options'})"

    def why_not(self) -> dict[str, str]:
        """Plan part -> why it does not apply to this model, for the parts that do not."""
        why = {
            "cull": "it has a single stage (name stages with stages=prefixA,prefixB,...)" if not self.culls else "",
            "thin": self.no_blocks,
            "alpha": self._lacks("width") if not self.widens else "",
            "rho": self._lacks("stem_stride") if not self.strides else "",
        }
        return {part: reason for part, reason in why.items() if reason}

    def describe(self) -> str:
        """Two lines: the stages found, and which plan parts apply (and why not where not)."""
        why = self.why_not()
        how = {"cull": f"culling ({','.join(self.stages.labels)})", "thin": f"thinning ({len(self.blocks)} residual blocks)",
               "alpha": "alpha (option width)", "rho": "rho (option stem_stride)"}
        line = f"applies to {self.model_name}: {', '.join(text for part, text in how.items() if part not in why) or 'nothing'}"
        nouns = {"cull": "culling", "thin": "thinning", "alpha": "alpha", "rho": "rho"}
        line += "".join(f"; {nouns[part]} does not apply: {reason}" for part, reason in why.items())
        return f"{self.stages.describe()}\n{line}"

    def refuse(self, options: DeepReDuceOptions) -> None:
        """SearchError when the options ask for a plan part that does not apply to this model."""
        asked = {
            "cull": f"cull={','.join(options.cull)}" if options.cull else (f"n_cull={options.n_cull}" if options.n_cull else ""),
            "thin": "thin=true" if options.thin else "",
            "alpha": f"alpha={options.alpha:g}" if options.alpha not in (None, 1) else "",
            "rho": f"rho={options.rho:g}" if options.rho not in (None, 1) else "",
        }
        for part, reason in self.why_not().items():
            if asked[part]:
                raise SearchError(f"deepreduce's {asked[part]} does not apply to {self.model_name}: {reason}")


def model_fit(model: nn.Module, model_name: str, input_size: Sequence[int], prefixes: Sequence[str] | None) -> ModelFit:
    """What DeepReDuce can do to ``model`` (built from ``model_name``)."""
    found = forward_sites(model, input_size)
    blocks, no_blocks = residual_blocks(model, found)
    return ModelFit(model_name, model_stages(found, prefixes), tuple(blocks), no_blocks, tuple(declared_model_options(model_name)))


@functools.lru_cache(maxsize=8)
def study_model_fit(model_name: str, model_options_json: str, dataset: str, prefixes: tuple[str, ...] | None) -> ModelFit:
    """:func:`model_fit` of a study's model on its dataset, once per process (the searcher asks per trial)."""
    info = dataset_info(dataset)
    model = base_model(model_name, json.loads(model_options_json), info.input_shape, info.num_classes)
    return model_fit(model, model_name, info.input_shape, prefixes)


def reshaped_options(model_name: str, model_options: Mapping[str, Any], alpha: float, rho: float) -> dict[str, Any]:
    """The model options of a plan: width scaled by ``alpha``, stem stride doubled when ``rho`` is 0.5;
    only the options the model declares (:meth:`ModelFit.refuse` has refused factors it lacks)."""
    declared = declared_model_options(model_name)
    options = dict(model_options)
    if "width" in declared:
        kind, default = declared["width"]
        width = model_options.get("width", default)
        options["width"] = max(1, round(width * alpha)) if kind is int else round(float(width) * alpha, 6)
    if "stem_stride" in declared:
        stride = int(model_options.get("stem_stride", declared["stem_stride"][1]))
        if rho != 1 and stride != 1:
            raise SearchError(f"rho={rho:g} doubles the stem stride, but {model_name} already has stem_stride={stride}")
        options["stem_stride"] = stride if rho == 1 else 2 * stride
    return options


def apply_masks(model: nn.Module, applies: ModelFit, cull: Iterable[str], thin: bool) -> None:
    """Cull: every site of the named stages off. Thin: every site of a residual block but its first
    (forward order) off: in the registry's ResNets, ``relu2`` after the add."""
    culled = set(cull)
    for label, members in applies.stages.of(model).items():
        for site in members:
            site.switch_off() if label in culled else site.switch_on()
    if thin:
        by_name = {site.name: site for site in sites(model)}
        for block in applies.blocks:
            for name in block[1:]:
                by_name[name].switch_off()


def check_cull(cull: Sequence[str], labels: Sequence[str], model_name: str) -> None:
    unknown = [label for label in cull if label not in labels]
    if unknown:
        raise SearchError(f"bad value {','.join(cull)} for cull: {model_name} has stages {','.join(labels)}")
    if len(cull) >= len(labels):
        raise SearchError(f"cull={','.join(cull)} removes every stage of {model_name}; keep at least one stage's ReLUs")


def build_plan(
    model_name: str, model_options: Mapping[str, Any], input_size: Sequence[int], num_classes: int, spec: PlanSpec, applies: ModelFit
) -> tuple[nn.Module, dict[str, Any]]:
    """The plan's untrained model with its masks set, and the model options that rebuild it."""
    options = reshaped_options(model_name, model_options, spec.alpha, spec.rho)
    model = base_model(model_name, options, input_size, num_classes)
    check_cull(spec.cull, applies.stages.labels, model_name)
    apply_masks(model, applies, spec.cull, spec.thin)
    return model, options


class PlanCounter:
    """Counts candidate plans, building and tracing each (alpha, rho) architecture once.

    A mask change does not change activation shapes, so after one ``relu_count`` (which traces the
    shapes) a plan's count is the sum of ``ReLUSite.active()`` over the traced sites, exactly what
    ``relu_count`` sums, without a dry run per candidate. :func:`choose_plan` confirms its pick
    with ``relu_count`` itself. ``applies`` is what applies to the unmodified model, whose stages are
    named by ``stages`` (site-name prefixes) when given.
    """

    def __init__(self, model_name: str, model_options: Mapping[str, Any], input_size: Sequence[int], num_classes: int,
                 stages: Sequence[str] | None = None) -> None:
        self.args = (model_name, model_options, tuple(input_size), num_classes)
        base = base_model(model_name, model_options, input_size, num_classes)
        self.applies = model_fit(base, model_name, input_size, stages)
        self._models: dict[tuple[float, float], nn.Module] = {(1, 1): base}

    def count(self, spec: PlanSpec) -> int:
        key = (spec.alpha, spec.rho)
        if key not in self._models:
            name, options, size, classes = self.args
            self._models[key] = base_model(name, reshaped_options(name, options, spec.alpha, spec.rho), size, classes)
        model = self._models[key]
        apply_masks(model, self.applies, spec.cull, spec.thin)
        return sum(site.active() for site in sites(model))

    def confirm(self, spec: PlanSpec) -> int:
        """The plan's count by ``relu_count`` (a fresh dry run)."""
        model = self._models[(spec.alpha, spec.rho)]
        apply_masks(model, self.applies, spec.cull, spec.thin)
        return relu_count(model, self.args[2])


# -- choosing a plan --------------------------------------------------------------------------------


def cull_choices(options: DeepReDuceOptions, labels: Sequence[str], order: Sequence[str] | None, budgeted: bool) -> list[tuple[str, ...]]:
    """Culled-stage sets the plan may use. With ``order`` None, every set the order could give."""
    if options.cull is not None:
        return [options.cull]
    sizes = [options.n_cull] if options.n_cull is not None else (range(len(labels)) if budgeted else [DEFAULT_N_CULL])
    choices: list[tuple[str, ...]] = []
    for n in sizes:
        if n >= len(labels):
            raise SearchError(f"n_cull={n} would cull every stage ({','.join(labels)}); accepted: 0..{len(labels) - 1}")
        if order is None:
            choices += [tuple(sorted(c, key=lambda label: int(label[1:]))) for c in itertools.combinations(labels, n)]
        else:
            choices.append(tuple(sorted(order[:n], key=lambda label: int(label[1:]))))
    return choices


def candidate_specs(options: DeepReDuceOptions, culls: Sequence[tuple[str, ...]], budgeted: bool, applies: ModelFit) -> list[PlanSpec]:
    """Every plan the options allow: fixed choices as given, free ones over their candidates (with a
    budget, among the parts that apply to the model) or at their defaults (without)."""
    thins = [options.thin] if options.thin is not None else ([False, True] if budgeted and applies.blocks else [DEFAULT_THIN])
    alphas = [options.alpha] if options.alpha is not None else (list(options.alphas) if budgeted and applies.widens else [DEFAULT_ALPHA])
    rhos = [options.rho] if options.rho is not None else (list(RHOS) if budgeted and applies.strides else [DEFAULT_RHO])
    return [PlanSpec(c, t, a, r) for c in culls for t in thins for a in alphas for r in rhos]


def needs_order(options: DeepReDuceOptions, budgeted: bool) -> bool:
    """Whether the culled stages depend on the measured criticality order."""
    if options.cull is not None:
        return False
    return bool(options.n_cull) or (options.n_cull is None and budgeted)


def require_plan(options: DeepReDuceOptions) -> None:
    """Without a budget, the options must say what to change."""
    if all(getattr(options, name) is None for name in PLAN_FIELDS):
        raise SearchError(
            "deepreduce needs a plan or a budget: set cull=S1,... or n_cull=N, thin=true, alpha=0.5, rho=0.5 "
            "(any of them), or give --budget to pick the plan"
        )


def best_under_budget(counted: Sequence[tuple[PlanSpec, int]], budget: int | None) -> tuple[PlanSpec, int] | None:
    """The plan keeping the most ReLUs within ``budget``; ties go to the wider, unstrided, less culled,
    unthinned plan (more of the teacher's network kept)."""
    fitting = [(spec, n) for spec, n in counted if budget is None or n <= budget]
    if not fitting:
        return None
    return max(fitting, key=lambda item: (item[1], item[0].alpha, item[0].rho, -len(item[0].cull), not item[0].thin))


def choose_plan(
    counter: PlanCounter,
    options: DeepReDuceOptions,
    labels: Sequence[str],
    order: Sequence[str] | None,
    budget: int | None,
) -> tuple[PlanSpec, int, int]:
    """(plan, its ReLU count, number of candidates). ``order`` None means the order is not known
    yet: then this only checks that some plan could fit. Raises OverBudget if none fits."""
    specs = candidate_specs(options, cull_choices(options, labels, order, budget is not None), budget is not None, counter.applies)
    counted = [(spec, counter.count(spec)) for spec in specs]
    best = best_under_budget(counted, budget)
    if best is None:
        smallest = min(counted, key=lambda item: item[1])
        if len(counted) == 1:
            raise OverBudget(
                f"deepreduce plan {smallest[0].describe()} has {smallest[1]:,} ReLUs, over the budget of {budget:,}; "
                "cull more stages, thin, lower alpha or rho, or leave them unset so the budget picks them",
                smallest[1],
            )
        raise OverBudget(
            f"no deepreduce plan fits the budget of {budget:,} ReLUs: the smallest of {len(counted)} candidates, "
            f"{smallest[0].describe()}, has {smallest[1]:,}",
            smallest[1],
        )
    confirmed = counter.confirm(best[0])
    if confirmed != best[1]:
        raise RuntimeError(f"plan {best[0].describe()}: counted {best[1]:,} ReLUs by sites but relu_count says {confirmed:,}")
    return best[0], best[1], len(counted)


def check_before_training(
    model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budget: int | None, options: DeepReDuceOptions
) -> tuple[PlanCounter, list[str]]:
    """What ``run`` checks before any training (``preview`` checks the same): a plan or a budget is
    given, the plan parts asked for apply to the model, named stages exist, n_cull leaves a stage, and
    some plan the options allow meets the budget."""
    if budget is None:
        require_plan(options)
    counter = PlanCounter(model_name, model_options, info.input_shape, info.num_classes, options.stages)
    counter.applies.refuse(options)
    labels = counter.applies.stages.labels
    if options.cull is not None:
        check_cull(options.cull, labels, model_name)
    if budget is not None:
        choose_plan(counter, options, labels, None, budget)
    else:
        cull_choices(options, labels, None, budgeted=False)  # n_cull beyond the stages fails now, not after measuring
    return counter, labels


# -- the strategy -----------------------------------------------------------------------------------


def _per_dataset(table: Mapping[str, int], dataset: str, fallback: int) -> int:
    return table.get(dataset, fallback)


def criticality_recipe(options: DeepReDuceOptions, dataset: str, seed: int) -> TrainConfig:
    """Brief finetuning from the teacher's weights, cross-entropy only (the measurement is of what the
    stage's ReLUs can do, not of distillation)."""
    epochs = options.criticality_epochs or _per_dataset(DEFAULT_CRITICALITY_EPOCHS, dataset, 2)
    return replace(teacher_config(dataset), epochs=epochs, lr=options.lr, kd_weight=0.0, seed=seed)


def train_recipe(options: DeepReDuceOptions, dataset: str, seed: int) -> TrainConfig:
    """The plan's training before the user's ``train.KEY`` options: the dataset's full-ReLU recipe
    with this strategy's epochs, lr and distillation."""
    epochs = options.epochs or _per_dataset(DEFAULT_EPOCHS, dataset, teacher_config(dataset).epochs)
    return replace(teacher_config(dataset), epochs=epochs, lr=options.lr, kd_weight=options.kd_weight,
                   kd_temperature=options.kd_temperature, seed=seed)


class DeepReDuce(Strategy):
    """Stage-level ReLU reduction: cull by criticality, thin, reshape, distil."""

    name = "deepreduce"
    Options = DeepReDuceOptions
    summary = "cull the least critical ResNet stages, thin, reshape (alpha, rho), train with KD"

    def suggest(self, trial: optuna.Trial, budget: int | None, model: str | None = None, dataset: str | None = None,
                fixed: Mapping[str, Any] | None = None, model_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The plan parts that apply to the study's ``model`` (built once per study, :func:`study_model_fit`):
        n_cull below its stage count where it has several stages, thin where it has residual blocks,
        alpha and rho where its factory declares ``width`` and ``stem_stride``. Parts that do not apply
        are not sampled: their trials would only be refused, dead dimensions of the sampler's space."""
        if model is None or dataset is None:  # a caller that does not say the model: the registry's ResNets
            culls, thins, declared = SUGGESTED_N_CULL, True, ("width", "stem_stride")
        else:
            stages = (fixed or {}).get("stages")
            applies = study_model_fit(model, json.dumps(dict(model_options or {}), sort_keys=True, default=str), dataset,
                                      tuple(stages) if stages else None)
            culls = [n for n in SUGGESTED_N_CULL if n < len(applies.stages.labels)]
            thins, declared = bool(applies.blocks), applies.declared
        chosen: dict[str, Any] = {}
        if "cull" not in (fixed or {}):  # named stages fixed: n_cull would contradict them
            chosen["n_cull"] = trial.suggest_categorical("deepreduce/n_cull", culls) if len(culls) > 1 else 0
        if thins:
            chosen["thin"] = trial.suggest_categorical("deepreduce/thin", [False, True])
        if "width" in declared:
            chosen["alpha"] = trial.suggest_categorical("deepreduce/alpha", SUGGESTED_ALPHA)
        if "stem_stride" in declared:
            chosen["rho"] = trial.suggest_categorical("deepreduce/rho", list(RHOS))
        return chosen

    def plan(
        self,
        model_name: str,
        model_options: Mapping[str, Any],
        input_size: tuple[int, int, int],
        num_classes: int,
        options: DeepReDuceOptions,
    ) -> nn.Module:
        require_plan(options)
        applies = model_fit(base_model(model_name, model_options, input_size, num_classes), model_name, input_size, options.stages)
        applies.refuse(options)
        labels = applies.stages.labels
        order = None
        if needs_order(options, budgeted=False):
            recipe_filter = {"lr": options.lr}
            if options.criticality_epochs is not None:
                recipe_filter["epochs"] = options.criticality_epochs
            found = cached_order(default_cache_dir(), model_name, model_options, input_size, num_classes, recipe_filter,
                                 applies.stages)
            if found is None:
                raise PlanNeedsTraining(
                    f"n_cull={options.n_cull} culls the least critical stages, and no criticality order of {model_name} "
                    f"({', '.join(f'{k}={v}' for k, v in model_options.items()) or 'default options'}) is cached yet: "
                    "it is measured by training (python -m search.linearize --strategy deepreduce ...); "
                    "to count a plan now, name the stages with cull=S1,... instead"
                )
            order = found[0]
        culls = cull_choices(options, labels, order, budgeted=False)
        spec = candidate_specs(options, culls, False, applies)[0]
        return build_plan(model_name, model_options, input_size, num_classes, spec, applies)[0]

    def preview(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budget: int | None,
                options: DeepReDuceOptions) -> str:
        counter, labels = check_before_training(model_name, model_options, info, budget, options)
        if needs_order(options, budget is not None):
            line = (f"measure the criticality of stages {','.join(labels)} by training, then train the plan "
                    + (f"keeping the most ReLUs within {budget:,}" if budget is not None else f"culling the {options.n_cull} least critical"))
        else:
            spec, relus, candidates = choose_plan(counter, options, labels, None, budget)
            how = f"the most ReLUs within the budget of {budget:,} among {candidates} candidate plans" if candidates > 1 else "as set"
            line = f"plan {spec.describe()}: {relus:,} ReLUs ({how}); train it with KD from the teacher"
        return f"{line}\n{counter.applies.describe()}"

    def run(self, ctx: Context, options: DeepReDuceOptions) -> Outcome:
        info = ctx.data.info
        counter, labels = check_before_training(ctx.model_name, ctx.model_options, info, ctx.budget, options)
        applies = counter.applies
        ctx.log(applies.describe())
        teacher = ctx.teacher()
        measured: Criticality | None = None
        if needs_order(options, ctx.budget is not None):
            measured = criticality(ctx, criticality_recipe(options, info.name, ctx.seed), teacher, stages=applies.stages)
            ctx.log(measured.describe())
        spec, relus, candidates = choose_plan(counter, options, labels, measured.order if measured else None, ctx.budget)
        how = f"the most ReLUs within the budget of {ctx.budget:,} among {candidates} candidate plans" if candidates > 1 else "as set"
        ctx.log(f"deepreduce plan {spec.describe()}: {relus:,} ReLUs ({how})")
        if measured:
            ctx.log(measured.culls(spec.cull))
        progress.note_relus(relus)

        student, student_options = build_plan(ctx.model_name, ctx.model_options, info.input_shape, info.num_classes, spec, applies)
        same_architecture = spec.alpha == 1 and spec.rho == 1
        if same_architecture:
            student.load_state_dict(teacher.state_dict())
            apply_masks(student, applies, spec.cull, spec.thin)  # loading the teacher's state resets the masks
        config = ctx.final_training(train_recipe(options, info.name, ctx.seed))
        result = fit(student, ctx.data, config, ctx.device, teacher=teacher, log=ctx.log, label="deepreduce")
        counted = relu_count(student, info.input_shape)
        details: dict[str, Any] = {
            "plan": {**spec.as_dict(), "relus": counted},
            "chosen": how,
            "init": "teacher weights" if same_architecture else "scratch (architecture differs from the teacher's)",
            "train": dataclasses.asdict(config),
            "best_epoch": result.best_epoch,
            "criticality": {**measured.as_details(), "culls": list(spec.cull)} if measured else None,
        }
        return Outcome(student, ctx.model_name, student_options, counted, result.best_val_acc, details)

    def phases(self, model_name: str, model_options: Mapping[str, Any], info: DatasetInfo, budgets: Sequence[int],
               options: DeepReDuceOptions, train_overrides: Mapping[str, Any]) -> list[Phase]:
        """Criticality when the culled stages are left to it (one finetuning per stage and one of the
        all-linear network, measured once and cached), then the plan trained with KD, once per budget.
        Before criticality is measured the plan is not known: the estimate takes the plan keeping the
        most ReLUs that any order could give (its width and stride set its cost)."""
        phases = []
        for budget in budgets or [None]:
            counter, labels = check_before_training(model_name, model_options, info, budget, options)
            if needs_order(options, budget is not None) and not phases:
                stage_only = base_model(model_name, model_options, info.input_shape, info.num_classes)
                apply_masks(stage_only, counter.applies, labels[1:], thin=False)
                phases.append(Phase("criticality", stage_only, criticality_recipe(options, info.name, 0), runs=len(labels) + 1,
                                    about=f"stage-only networks of {','.join(labels)} and the all-linear one"))
            spec, relus, _ = choose_plan(counter, options, labels, None, budget)
            student = build_plan(model_name, model_options, info.input_shape, info.num_classes, spec, counter.applies)[0]
            phases.append(Phase("train", student, final_training(train_recipe(options, info.name, 0), train_overrides), teacher=True,
                                about=f"plan {spec.describe()}, {relus:,} ReLUs"))
        return phases
