"""Nonlinearities that are not ReLU sites: GELU, SiLU, Hardswish, sigmoid, softmax, max pooling, ...

Under private inference each of their elements costs at least what a ReLU costs (comparisons in a
garbled circuit, or a polynomial approximation), yet no strategy here removes them and the ReLU count
leaves them out. :func:`nonlinear_table` finds them on one forward pass, as modules or as functional
calls (``F.gelu``, ``torch.sigmoid``, ``x.tanh()``, attention's softmax), so ``search.inspect`` can
list them and the other commands can warn that the ReLU count understates such a model's cost.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# torch function name (leading/trailing "_" stripped: in-place and private variants) -> kind shown
_KINDS: dict[str, str] = {
    "gelu": "GELU", "silu": "SiLU", "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid", "sigmoid": "Sigmoid",
    "logsigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax", "log_softmax": "Softmax", "softmin": "Softmax",
    "elu": "ELU", "selu": "ELU", "celu": "ELU", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "rrelu": "LeakyReLU",
    "mish": "Mish", "softplus": "Softplus", "hardtanh": "ReLU6/Hardtanh", "relu6": "ReLU6/Hardtanh", "glu": "GLU",
    **{f"{kind}max_pool{d}d{tail}": "MaxPool" for kind in ("", "adaptive_") for d in (1, 2, 3) for tail in ("", "_with_indices")},
}
# Fused attention: one call whose softmax has (heads x queries x keys) elements
_ATTENTION = ("scaled_dot_product_attention", "multi_head_attention_forward")
HOW = "modules and functional calls on one forward pass"  # what the listing counts, for its heading


@dataclass(frozen=True)
class NonlinearCount:
    """Nonlinearities of one kind called inside one module (its dotted path, ``top`` for the model's own forward)."""

    place: str
    kind: str
    calls: int
    elements: int  # output elements for one input: one nonlinear evaluation each


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs[name]


def _elements(name: str, args: Sequence[Any], kwargs: dict[str, Any], result: Any) -> int:
    """Elements one call evaluates nonlinearly: its output's, or its attention matrix's."""
    query, key = (_arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")) if name in _ATTENTION else (None, None)
    if name == "scaled_dot_product_attention":  # query (..., L, E), key (..., S, E)
        return query.numel() // query.shape[-1] * key.shape[-2]
    if name == "multi_head_attention_forward":  # query (L, N, E), key (S, N, E); one input: N = 1
        return _arg(args, kwargs, 4, "num_heads") * (query.numel() // query.shape[-1]) * (key.numel() // key.shape[-1])
    first = result[0] if isinstance(result, (tuple, list)) else result  # max pooling may return (values, indices)
    return first.numel() if isinstance(first, torch.Tensor) else 0


class _Spy(TorchFunctionMode):
    """Records every nonlinear torch function the forward pass calls, with the module it is called in.

    Inside a handled call the mode is off, so a function that calls others (``F.softmax`` and its
    C++ kernel, ``multi_head_attention_forward`` and its softmax) is seen once, as the outermost call."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ["top"]
        self.found: dict[tuple[str, str], tuple[int, int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "").strip("_")
        kind = "Softmax" if name in _ATTENTION else _KINDS.get(name)
        if kind is not None:
            calls, elements = self.found.get((self.stack[-1], kind), (0, 0))
            self.found[(self.stack[-1], kind)] = (calls + 1, elements + _elements(name, args, kwargs, result))
        return result


def nonlinear_table(model: nn.Module, input_shape: Sequence[int]) -> list[NonlinearCount]:
    """Every nonlinearity of ``model`` that is not a ReLU site, per module and kind, in call order,
    counted on one forward pass of a zero input of ``input_shape`` (C, H, W) in eval mode."""
    spy = _Spy()

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:  # a hook's non-None result replaces the output
        spy.stack.pop()

    handles = []
    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(lambda _m, _a, p=path: spy.stack.append(p)))
            handles.append(module.register_forward_hook(leave, always_call=True))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((1, *input_shape), device=device)
    try:
        model.eval()
        with torch.no_grad(), spy:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [NonlinearCount(place, kind, calls, elements) for (place, kind), (calls, elements) in spy.found.items()]


def kind_totals(rows: Sequence[NonlinearCount]) -> dict[str, int]:
    """Kind -> elements for one input, largest first."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.kind] = totals.get(row.kind, 0) + row.elements
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def warn_nonlinear(model: nn.Module, input_shape: Sequence[int], model_name: str) -> None:
    """One ``warning:`` line on stderr when ``model`` has nonlinearities that are not ReLU sites."""
    totals = kind_totals(nonlinear_table(model, input_shape))
    if totals:
        shown = ", ".join(f"{kind} {elements:,}" for kind, elements in totals.items())
        print(f"warning: model {model_name} also has nonlinearities that are not ReLU sites ({shown} elements per input); "
              "its ReLU count understates its private-inference cost (python -m search.inspect lists them)", file=sys.stderr)
