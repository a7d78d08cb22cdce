"""Stages and residual blocks of any converted model, for stage-level strategies (DeepReDuce).

A stage assignment labels every ReLU site ``S1`` .. ``Sn``. It comes from, in this order:

1. the user's ``stages=prefixA,prefixB,...``: stage k holds the sites whose names start with the
   k-th prefix; every site must match exactly one prefix;
2. the model's own stage names, when every site sits in a top-level module ``stem`` or ``stage<k>``
   (the registry's ResNets): ``stage<k>`` is ``Sk`` and the stem joins ``S1``, as in DeepReDuce's
   released models, which drop the stem ReLU together with stage 1;
3. otherwise the spatial resolution: walking the sites in forward order, consecutive sites whose
   activations have the same spatial size (H, W) form one stage. A first group that is a single site
   at a larger resolution than the next group (a stem ReLU before a pooling or strided layer, as in
   torchvision's ResNets) joins S1, as the stem does in (2).

Residual blocks, which thinning needs, are read from the torch.fx graph: each module holding an
addition of two computed tensors is a residual block, and its sites are the sites inside that module
(the innermost such module when blocks nest), in forward order.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from search.errors import SearchError
from search.relu import ReLUSite, _SiteLeafTracer, sites, trace_shapes

_STAGE = re.compile(r"stage([1-9]\d*)")
_ADDS = {operator.add, operator.iadd, torch.add}
FROM_OPTION, FROM_NAMES, FROM_RESOLUTION = "named by stages=", "the model's stage<k> modules", "spatial resolution"


@dataclass(frozen=True)
class Stage:
    """One stage: its label, its sites' names in forward order, and their ReLUs (all on)."""

    label: str
    sites: tuple[str, ...]
    relus: int


@dataclass(frozen=True)
class Stages:
    """A model's stages S1..Sn and where the assignment came from (one of the ``FROM_*`` sources)."""

    stages: tuple[Stage, ...]
    source: str

    @property
    def labels(self) -> list[str]:
        return [stage.label for stage in self.stages]

    def of(self, model: nn.Module) -> dict[str, list[ReLUSite]]:
        """Label -> the sites of ``model`` (this model or one rebuilt with other widths) in that stage."""
        by_name = {site.name: site for site in sites(model)}
        return {stage.label: [by_name[name] for name in stage.sites] for stage in self.stages}

    def assignment(self) -> dict[str, list[str]]:
        """Label -> site names, as plain data (part of a criticality cache key)."""
        return {stage.label: list(stage.sites) for stage in self.stages}

    def describe(self) -> str:
        """One line: each stage's label, first and last site, site count and ReLUs."""
        parts = []
        for stage in self.stages:
            span = stage.sites[0] if len(stage.sites) == 1 else f"{stage.sites[0]}..{stage.sites[-1]}"
            parts.append(f"{stage.label} {span} ({len(stage.sites)} sites, {stage.relus:,} ReLUs)")
        return f"stages ({self.source}): " + "; ".join(parts)


def _stage(label: str, members: Sequence[ReLUSite]) -> Stage:
    return Stage(label, tuple(site.name for site in members), sum(site.size for site in members))


def _spatial(site: ReLUSite) -> tuple[int, ...]:
    shape = site.shape
    if shape is None:
        raise SearchError(f"site {site.name} has no shape yet; trace the model first")
    return tuple(shape[1:])


def derived_stages(found: Sequence[ReLUSite]) -> Stages:
    """Stages by spatial resolution (rule 3 of the module docstring); ``found`` in forward order."""
    groups: list[list[ReLUSite]] = []
    for site in found:
        if groups and _spatial(groups[-1][-1]) == _spatial(site):
            groups[-1].append(site)
        else:
            groups.append([site])
    if len(groups) > 1 and len(groups[0]) == 1 and _larger(_spatial(groups[0][0]), _spatial(groups[1][0])):
        groups[:2] = [groups[0] + groups[1]]
    return Stages(tuple(_stage(f"S{k}", g) for k, g in enumerate(groups, 1)), FROM_RESOLUTION)


def _larger(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and a != b and all(x >= y for x, y in zip(a, b))


def labelled_stages(found: Sequence[ReLUSite]) -> Stages | None:
    """Stages from the model's ``stem`` / ``stage<k>`` modules (rule 2), or None when it has none."""
    numbers: dict[str, int] = {}
    for site in found:
        match = _STAGE.fullmatch(site.stage)
        if site.stage != "stem" and match is None:
            return None
        numbers[site.name] = 1 if match is None else int(match.group(1))
    if not any(_STAGE.fullmatch(site.stage) for site in found):
        return None
    groups: dict[int, list[ReLUSite]] = {}
    for site in found:
        groups.setdefault(numbers[site.name], []).append(site)
    return Stages(tuple(_stage(f"S{k}", groups[k]) for k in sorted(groups)), FROM_NAMES)


def named_stages(found: Sequence[ReLUSite], prefixes: Sequence[str]) -> Stages:
    """Stage k = the sites whose names start with ``prefixes[k-1]`` (rule 1); SearchError unless every
    site matches exactly one prefix and every prefix matches a site."""
    given = ",".join(prefixes)
    matches = {site.name: [p for p in prefixes if site.name.startswith(p)] for site in found}
    unmatched = [name for name, hit in matches.items() if not hit]
    if unmatched:
        raise SearchError(f"bad value {given!r} for stages: sites {_some(unmatched)} start with none of the prefixes")
    doubled = [f"{name} ({' and '.join(hit)})" for name, hit in matches.items() if len(hit) > 1]
    if doubled:
        raise SearchError(f"bad value {given!r} for stages: sites {_some(doubled)} match two prefixes")
    groups = {p: [site for site in found if matches[site.name] == [p]] for p in prefixes}
    empty = [p for p, members in groups.items() if not members]
    if empty:
        raise SearchError(f"bad value {given!r} for stages: no site starts with {', '.join(empty)}")
    return Stages(tuple(_stage(f"S{k}", groups[p]) for k, p in enumerate(prefixes, 1)), FROM_OPTION)


def _some(names: Sequence[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def forward_sites(model: nn.Module, input_size: Sequence[int]) -> list[ReLUSite]:
    """The model's sites in the order one forward pass reaches them (definition order may differ),
    each with its activation shape."""
    order: list[ReLUSite] = []
    found = trace_shapes(model, input_size)
    hooks = [site.register_forward_hook(lambda module, _in, _out: order.append(module)) for site in found]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=next((p.device for p in model.parameters()), None)))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return order


def model_stages(found: Sequence[ReLUSite], prefixes: Sequence[str] | None = None) -> Stages:
    """The stages of a model whose sites are ``found`` (in forward order, :func:`forward_sites`):
    named, else its own stage names, else by resolution."""
    if not found:
        raise SearchError("the model has no ReLU sites, so it has no stages")
    if prefixes:
        return named_stages(found, prefixes)
    return labelled_stages(found) or derived_stages(found)


def residual_blocks(model: nn.Module, found: Sequence[ReLUSite]) -> tuple[list[tuple[str, ...]], str]:
    """(blocks, why none): each residual block's site names in the order of ``found`` (forward order),
    for blocks with at least two sites; no blocks and the reason when the model shows none."""
    graph = _graph(model)
    if isinstance(graph, str):
        return [], f"torch.fx cannot trace the model ({graph}), so its residual blocks are unknown"
    owners = {_owner(node) for node in graph.nodes if _is_residual_add(node)} - {""}
    paths = {id(module): path for path, module in model.named_modules()}
    members: dict[str, list[str]] = {}
    for site in found:
        inside = [owner for owner in owners if paths[id(site)].startswith(owner + ".")]
        if inside:
            members.setdefault(max(inside, key=len), []).append(site.name)
    blocks = [tuple(names) for names in members.values() if len(names) > 1]
    reason = "" if blocks else "its graph shows no residual block (a module adding two computed tensors) holding two or more ReLUs"
    return blocks, reason


def _graph(model: nn.Module) -> torch.fx.Graph | str:
    """The model's fx graph, or the first line of why fx cannot trace it."""
    if isinstance(model, torch.fx.GraphModule):
        return model.graph
    try:
        return _SiteLeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001  (fx raises many types for untraceable code)
        lines = str(err).strip().splitlines()
        return lines[0] if lines else type(err).__name__


def _is_residual_add(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _ADDS:
        return False
    computed = [a for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr"]
    return len(computed) == 2


def _owner(node: torch.fx.Node) -> str:
    stack: Mapping[str, Any] = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""
