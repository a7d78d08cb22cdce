"""ReLU sites: the one abstraction every strategy, objective and report stands on.

A :class:`ReLUSite` is a named place in a network where a ReLU may stand. It learns its activation
shape on a dry run and holds a mask: all on (a plain ReLU), all off (the identity), per channel, per
pixel, or a trainable soft mask while SNL learns it. :func:`relu_count` is the single counting
function: the number of active mask elements over all sites, for one input (batch excluded).

:func:`linearizable` turns any ``nn.Module`` whose ReLUs are ``nn.ReLU`` modules, or ``F.relu`` /
``torch.relu`` calls that torch.fx can trace, into a model built from sites.
"""

from __future__ import annotations

import copy
import math
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from search.errors import SearchError
from search.masked_relu import soft_masked_relu

Granularity = Literal["site", "channel", "pixel"]
_Mode = Literal["on", "off", "masked", "soft"]


class ReLUSite(nn.Module):
    """A ReLU whose positions can be switched off individually, per channel or per pixel.

    ``name``, ``stage`` and ``block`` say where the site sits (for tables and stage-level strategies).
    ``shape`` is the per-input activation shape, learned on a dry run (:func:`trace_shapes`).
    """

    def __init__(self, name: str = "", stage: str = "", block: str = "") -> None:
        super().__init__()
        self.name = name
        self.stage = stage
        self.block = block
        self.shape: tuple[int, ...] | None = None
        self.count_threshold = 0.0
        self.mask: torch.Tensor | None
        self.register_buffer("mask", None)
        self._mode: _Mode = "on"
        self._recording = False
        self._calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._recording:
            self._calls += 1
            self.shape = tuple(x.shape[1:])
        mode = self._mode
        if mode == "on":
            return F.relu(x)
        if mode == "off":
            return x
        if mode == "soft":
            return soft_masked_relu(x, self.mask)
        return torch.where(self.mask, F.relu(x), x)

    # -- masks -------------------------------------------------------------------------------------

    def mask_shape(self, granularity: Granularity) -> tuple[int, ...]:
        """Shape of a mask at ``granularity``, broadcastable against the activation."""
        shape = self._require_shape()
        if granularity == "pixel":
            return shape
        if granularity == "channel":
            return (shape[0],) + (1,) * (len(shape) - 1)
        return (1,) * len(shape)

    def set_mask(self, mask: torch.Tensor | None, trainable: bool = False) -> None:
        """Install ``mask``: None means all on; a bool/0-1 tensor is a fixed mask; ``trainable`` makes
        it a soft mask parameter (values in [0, 1], counted where above ``count_threshold``)."""
        if "mask" in self._parameters:
            del self._parameters["mask"]
        self._buffers.pop("mask", None)
        if mask is None:
            self.register_buffer("mask", None)
            self._mode = "on"
            return
        if self.shape is not None and torch.broadcast_shapes(mask.shape, self.shape) != self.shape:
            raise SearchError(f"mask of shape {tuple(mask.shape)} does not fit site {self.name} of shape {self.shape}")
        if trainable:
            values = mask.detach().clone() if mask.is_floating_point() else mask.detach().float()
            self.register_parameter("mask", nn.Parameter(values))
            self._mode = "soft"
            return
        binary = mask.detach().bool() if mask.dtype == torch.bool else mask.detach() > 0.5
        if bool(binary.all()):
            self.register_buffer("mask", None)
            self._mode = "on"
        elif not bool(binary.any()):
            self.register_buffer("mask", torch.zeros_like(binary))
            self._mode = "off"
        else:
            self.register_buffer("mask", binary)
            self._mode = "masked"

    def switch_off(self) -> None:
        """Make the site the identity (every position linear)."""
        self.set_mask(torch.zeros((1,) * len(self._require_shape()), dtype=torch.bool))

    def switch_on(self) -> None:
        """Make the site a plain ReLU again."""
        self.set_mask(None)

    def binarize(self, threshold: float | None = None) -> None:
        """Freeze a soft mask into a fixed one: positions above ``threshold`` keep their ReLU."""
        if self._mode != "soft":
            return
        cut = self.count_threshold if threshold is None else threshold
        self.set_mask(self.mask.detach() > cut)  # type: ignore[union-attr]
        self.count_threshold = 0.0

    @property
    def mode(self) -> _Mode:
        return self._mode

    # -- counting ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """ReLU positions at this site for one input, all on."""
        return math.prod(self._require_shape())

    def active(self) -> int:
        """ReLU positions still active for one input."""
        return int(self.active_on_device())

    def active_on_device(self) -> int | torch.Tensor:
        """:meth:`active`, as a tensor on the mask's device where a mask decides (no host sync)."""
        if self._mode == "on":
            return self.size
        if self._mode == "off":
            return 0
        assert self.mask is not None
        return (self.mask.detach() > self.count_threshold).sum() * (self.size // self.mask.numel())

    def _require_shape(self) -> tuple[int, ...]:
        if self.shape is None:
            raise SearchError(f"site {self.name or '?'} has no shape yet; run relu_count or trace_shapes first")
        return self.shape

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # A saved site carries its mask (or none): adopt it, so a linearized model loads into a fresh one.
        saved = state_dict.get(prefix + "mask")
        self.set_mask(saved, trainable=saved is not None and saved.dtype != torch.bool)
        if saved is not None and self.mask is None:
            state_dict.pop(prefix + "mask")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stage={self.stage!r}, mode={self._mode}"


# -- finding, tracing and counting ----------------------------------------------------------------


def sites(model: nn.Module) -> list[ReLUSite]:
    """The model's ReLU sites in forward-definition order."""
    return [m for m in model.modules() if isinstance(m, ReLUSite)]


def trace_shapes(model: nn.Module, input_shape: Sequence[int]) -> list[ReLUSite]:
    """Dry-run ``model`` on one zero input so every site learns its activation shape.

    Raises SearchError when a site is reached more than once per input (one mask cannot serve two
    places) or is never reached.
    """
    found = sites(model)
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for site in found:
        site._recording, site._calls = True, 0
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    except RuntimeError as err:
        raise SearchError(f"model does not accept input shape {'x'.join(map(str, input_shape))}: {_first_line(err)}") from None
    finally:
        for site in found:
            site._recording = False
        model.train(was_training)
    for site in found:
        if site._calls > 1:
            raise SearchError(f"ReLU site {site.name} is used {site._calls} times per input; give each use its own nn.ReLU")
        if site._calls == 0:
            raise SearchError(f"ReLU site {site.name} is never reached by the forward pass")
    return found


@dataclass(frozen=True)
class SiteCount:
    """One row of a ReLU table."""

    name: str
    stage: str
    block: str
    shape: tuple[int, ...]
    mode: str
    active: int
    total: int


def relu_table(model: nn.Module, input_shape: Sequence[int]) -> list[SiteCount]:
    """Per-site ReLU counts for one input of ``input_shape`` (C, H, W)."""
    if not sites(model) or any(isinstance(m, nn.ReLU) for m in model.modules()):
        model = linearizable(model, input_shape)
    return [
        SiteCount(s.name, s.stage, s.block, s.shape or (), s.mode, s.active(), s.size)
        for s in trace_shapes(model, input_shape)
    ]


def relu_count(model: nn.Module, input_shape: Sequence[int]) -> int:
    """The ReLU count: active mask elements summed over all sites, for one input (batch excluded).

    Every strategy, objective and report calls this one function.
    """
    return sum(row.active for row in relu_table(model, input_shape))


def active_relus(model: nn.Module) -> int:
    """:func:`relu_count` of a model whose sites already know their shapes (:func:`trace_shapes`),
    without the tracing forward pass: cheap enough to watch a count every optimizer step (one host
    sync for the whole model, not one per site: on CUDA each sync waits for the queued kernels)."""
    return int(sum(site.active_on_device() for site in sites(model)))


def stage_totals(rows: Sequence[SiteCount]) -> dict[str, tuple[int, int]]:
    """Stage -> (active, total), in the order stages first appear."""
    totals: dict[str, tuple[int, int]] = {}
    for row in rows:
        active, total = totals.get(row.stage, (0, 0))
        totals[row.stage] = (active + row.active, total + row.total)
    return totals


# -- conversion of arbitrary models ---------------------------------------------------------------

_FUNCTIONAL_RELUS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", torch.relu_)}
_METHOD_RELUS = {"relu", "relu_"}
_TORCH_DIR = os.path.dirname(torch.__file__)


class _SiteLeafTracer(torch.fx.Tracer):
    """fx tracer that keeps sites and nn.ReLU modules as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (ReLUSite, nn.ReLU)) or super().is_leaf_module(m, module_qualified_name)


def _place(path: str) -> tuple[str, str]:
    """(stage, block) for a site at dotted module ``path``: first component, and parent module."""
    parts = path.split(".")
    stage = parts[0] if len(parts) > 1 else "top"
    block = ".".join(parts[:-1]) or "top"
    return stage, block


def _new_site(path: str) -> ReLUSite:
    return ReLUSite(path, *_place(path))


def _replace_relu_modules(model: nn.Module) -> None:
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, _new_site(path))


def _graph_has_functional_relu_or_reuse(graph: torch.fx.Graph, model: nn.Module) -> bool:
    used: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL_RELUS:
            return True
        if node.op == "call_method" and node.target in _METHOD_RELUS:
            return True
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), (nn.ReLU, ReLUSite)):
            if node.target in used:
                return True
            used.add(node.target)
    return False


def _convert_graph(model: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """Rewrite a traced graph so that every ReLU call (module or functional) is its own site."""
    gm = torch.fx.GraphModule(model, graph, class_name=type(model).__name__)
    relu_modules = {
        n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.ReLU, ReLUSite))
    }
    seen: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        is_module = node.op == "call_module" and node.target in relu_modules
        is_function = (node.op == "call_function" and node.target in _FUNCTIONAL_RELUS) or (
            node.op == "call_method" and node.target in _METHOD_RELUS
        )
        if not (is_module or is_function):
            continue
        if not node.users:
            raise SearchError(f"in-place ReLU at {node.name} has its result unused; write x = F.relu(x) instead")
        if is_module:
            base = node.target
        else:
            stack = node.meta.get("nn_module_stack") or {}
            owner = next(reversed(stack.values()))[0] if stack else ""
            base = f"{owner}.relu" if owner else node.name
        seen[base] = seen.get(base, 0) + 1
        path = base if seen[base] == 1 else f"{base}_{seen[base]}"
        parent_path, _, attr = path.rpartition(".")
        if is_module and seen[base] == 1:
            if not isinstance(gm.get_submodule(path), ReLUSite):
                setattr(gm.get_submodule(parent_path), attr, _new_site(path))
        else:
            while attr in dict(gm.get_submodule(parent_path).named_children()):
                attr += "_"
            gm.get_submodule(parent_path).add_module(attr, _new_site(f"{parent_path}.{attr}".lstrip(".")))
            path = f"{parent_path}.{attr}".lstrip(".")
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(path, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


class _FunctionalReluSpy(TorchFunctionMode):
    """Notes where functional ReLUs are called from outside a site, to name them in an error."""

    def __init__(self) -> None:
        super().__init__()
        self.places: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _FUNCTIONAL_RELUS or getattr(func, "__name__", "") in _METHOD_RELUS:
            callers = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith(_TORCH_DIR)]
            if callers and callers[-1].filename != __file__:
                caller = callers[-1]
                self.places.append(f"{caller.filename}:{caller.lineno} ({caller.line})")
        return func(*args, **(kwargs or {}))


def linearizable(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` whose ReLUs are :class:`ReLUSite` modules, outputs unchanged while all on.

    ``nn.ReLU`` modules are replaced in place in the copy (keeping the user's class and methods);
    functional ReLU calls and ReLU modules used at several places need torch.fx, and then the result
    is a ``torch.fx.GraphModule``. A model that neither way can convert raises SearchError naming
    the part it could not handle.
    """
    converted = copy.deepcopy(model)
    try:
        graph = _SiteLeafTracer().trace(converted)
    except Exception as err:  # fx raises many types for untraceable code
        trace_error: Exception | None = err
    else:
        trace_error = None
        if _graph_has_functional_relu_or_reuse(graph, converted):
            converted = _convert_graph(converted, graph)
            trace_shapes(converted, input_shape)
            return converted
    _replace_relu_modules(converted)
    spy = _FunctionalReluSpy()
    with spy:
        trace_shapes(converted, input_shape)
    if spy.places:
        reason = f"torch.fx cannot trace it ({_first_line(trace_error)})" if trace_error else "it calls ReLU functionally"
        raise SearchError(
            f"cannot convert {type(model).__name__}: {reason}, and it calls a functional ReLU at {spy.places[0]}; "
            "use nn.ReLU modules there"
        )
    return converted


def _first_line(err: BaseException | None) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
