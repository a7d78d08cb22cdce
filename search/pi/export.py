"""Export a linearized model to the neutral graph of :mod:`search.pi.graph`.

The model is traced with torch.fx (ReLU sites and the usual layers as leaves) and its shapes are
propagated on one input. Batch norms fold into the convolution or linear layer before them where that
layer feeds nothing else; the rest become ``affine`` nodes. A ReLU site exports the flat positions that
keep their ReLU, so the runner evaluates only those. Anything the runner does not know is refused with
one line naming the operation and where it sits.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from search.errors import SearchError
from search.pi.graph import Graph, Node
from search.relu import ReLUSite, relu_count

_LEAVES = (ReLUSite, nn.ReLU, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d,
           nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)
_ADD = (operator.add, operator.iadd, torch.add)
_RELU = (F.relu, torch.relu)
_RESHAPES = ("view", "reshape", "flatten")


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


class _Exporter:
    """Walks the traced graph once, emitting nodes; one instance per export."""

    def __init__(self, model: nn.Module, graph_module: torch.fx.GraphModule) -> None:
        self.model = model
        self.gm = graph_module
        self.nodes: list[Node] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.value: dict[torch.fx.Node, str] = {}  # fx node -> name of the value it computes
        self.emitted: dict[str, Node] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def _shape(self, node: torch.fx.Node) -> list[int]:
        return [int(s) for s in node.meta["tensor_meta"].shape[1:]]

    def _emit(self, fx_node: torch.fx.Node, op: str, inputs: list[str], params: dict[str, torch.Tensor] | None = None,
              **attrs: Any) -> Node:
        name = f"v{len(self.nodes)}"
        names = []
        for key, tensor in (params or {}).items():
            self.arrays[f"{name}.{key}"] = _array(tensor)
            names.append(f"{name}.{key}")
        node = Node(name, op, inputs, self._shape(fx_node), names, {"source": str(fx_node.target), **attrs})
        self.nodes.append(node)
        self.emitted[name] = node
        self.value[fx_node] = name
        return node

    def _alias(self, fx_node: torch.fx.Node, source: torch.fx.Node) -> None:
        self.value[fx_node] = self.value[source]

    def _unknown(self, fx_node: torch.fx.Node, what: str) -> SearchError:
        place = f" at {fx_node.target}" if fx_node.op == "call_module" else ""
        return SearchError(f"cannot export {what}{place} for secure inference; the exporter knows convolutions, linear "
                           "layers, batch norm, ReLU sites, additions, concatenations, flatten, average/max/global pooling "
                           "and dropout")

    def _input(self, fx_node: torch.fx.Node, index: int = 0) -> torch.fx.Node:
        arg = fx_node.args[index]
        if not isinstance(arg, torch.fx.Node):
            raise self._unknown(fx_node, f"{fx_node.target} with a constant input")
        return arg

    # -- modules ---------------------------------------------------------------------------------

    def _module(self, fx_node: torch.fx.Node) -> None:
        m = self.gm.get_submodule(str(fx_node.target))
        source = self._input(fx_node)
        x = self.value[source]
        if isinstance(m, (nn.Dropout, nn.Identity)):
            self._alias(fx_node, source)
        elif isinstance(m, ReLUSite):
            self._site(fx_node, m, source)
        elif isinstance(m, nn.ReLU):
            self._emit(fx_node, "relu", [x]).relus = int(np.prod(self._shape(fx_node)))
        elif isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise self._unknown(fx_node, f"Conv2d with padding {m.padding!r} ({m.padding_mode})")
            bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
            self._emit(fx_node, "conv", [x], {"weight": m.weight, "bias": bias}, stride=_pair(m.stride),
                       padding=_pair(m.padding), dilation=_pair(m.dilation), groups=int(m.groups))
        elif isinstance(m, nn.Linear):
            bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
            self._emit(fx_node, "linear", [x], {"weight": m.weight, "bias": bias})
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self._batch_norm(fx_node, m, source)
        elif isinstance(m, nn.AvgPool2d):
            self._avgpool(fx_node, source, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                          m.divisor_override)
        elif isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != [1, 1] or m.return_indices:
                raise self._unknown(fx_node, "MaxPool2d with dilation or indices")
            self._maxpool(fx_node, source, m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive_avgpool(fx_node, source, m.output_size)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise self._unknown(fx_node, f"Flatten({m.start_dim}, {m.end_dim})")
            self._emit(fx_node, "flatten", [x])
        else:
            raise self._unknown(fx_node, type(m).__name__)

    def _site(self, fx_node: torch.fx.Node, site: ReLUSite, source: torch.fx.Node) -> None:
        if site.mode == "soft":
            raise SearchError(f"ReLU site {site.name} still has a soft mask; export a binarized (finished) model")
        shape = self._shape(fx_node)
        size = int(np.prod(shape))
        if site.mode == "off":
            self._alias(fx_node, source)
            return
        node = self._emit(fx_node, "relu", [self.value[source]], site=site.name)
        if site.mode == "on":
            node.relus = size
            return
        assert site.mask is not None
        kept = torch.broadcast_to(site.mask.detach().cpu().bool(), tuple(shape)).reshape(-1).nonzero().flatten()
        self.arrays[f"{node.name}.kept"] = kept.numpy().astype(np.int64)
        node.relus = int(kept.numel())

    def _batch_norm(self, fx_node: torch.fx.Node, bn: nn.Module, source: torch.fx.Node) -> None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias.detach() - bn.running_mean * scale
        before = self.emitted.get(self.value[source])
        if before is not None and before.op in ("conv", "linear") and len(source.users) == 1:
            weight, bias = self.arrays[before.params[0]], self.arrays[before.params[1]]
            s = _array(scale)
            self.arrays[before.params[0]] = weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))
            self.arrays[before.params[1]] = bias * s + _array(shift)
            self._alias(fx_node, source)
            return
        self._emit(fx_node, "affine", [self.value[source]], {"scale": scale, "shift": shift})

    def _avgpool(self, fx_node: torch.fx.Node, source: torch.fx.Node, kernel: Any, stride: Any, padding: Any,
                 ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> None:
        k, p = _pair(kernel), _pair(padding)
        s = _pair(stride) if stride not in (None, []) else k
        h, w = self._shape(source)[1:]
        ones = torch.ones(1, 1, h, w)
        average = F.avg_pool2d(ones, k, s, p, ceil_mode, count_include_pad, divisor_override)
        valid = F.avg_pool2d(ones, k, s, p, ceil_mode, True, 1)  # the window's in-bounds elements, all ones
        self._pooled(fx_node, source, "avgpool", k, s, p)
        self.arrays[f"{self.value[fx_node]}.scale"] = _array((average / valid)[0, 0])

    def _maxpool(self, fx_node: torch.fx.Node, source: torch.fx.Node, kernel: Any, stride: Any, padding: Any) -> None:
        k, p = _pair(kernel), _pair(padding)
        s = _pair(stride) if stride not in (None, []) else k
        self._pooled(fx_node, source, "maxpool", k, s, p)

    def _pooled(self, fx_node: torch.fx.Node, source: torch.fx.Node, op: str, k: list[int], s: list[int], p: list[int]) -> None:
        size_in, size_out = self._shape(source)[1:], self._shape(fx_node)[1:]
        pad = [[p[d], (size_out[d] - 1) * s[d] + k[d] - size_in[d] - p[d]] for d in range(2)]
        self._emit(fx_node, op, [self.value[source]], kernel=k, stride=s, pad=pad)

    def _adaptive_avgpool(self, fx_node: torch.fx.Node, source: torch.fx.Node, output_size: Any) -> None:
        out = self._shape(fx_node)[1:]
        h, w = self._shape(source)[1:]
        if out == [1, 1]:
            self._emit(fx_node, "mean", [self.value[source]])
        elif h % out[0] == 0 and w % out[1] == 0:
            k = [h // out[0], w // out[1]]
            self._avgpool(fx_node, source, k, k, 0, False, True, None)
        else:
            raise self._unknown(fx_node, f"AdaptiveAvgPool2d to {output_size} from {h}x{w}")

    # -- functions and methods -------------------------------------------------------------------

    def _function(self, fx_node: torch.fx.Node) -> None:
        target = fx_node.target
        if target in _ADD and len(fx_node.args) == 2 and not fx_node.kwargs and all(
                isinstance(a, torch.fx.Node) for a in fx_node.args):
            self._emit(fx_node, "add", [self.value[a] for a in fx_node.args])  # type: ignore[index]
        elif target is torch.cat:
            parts = fx_node.args[0]
            axis = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("dim", 0)
            if int(axis) in (0, -len(self._shape(fx_node)) - 1):  # type: ignore[arg-type]
                raise self._unknown(fx_node, "concatenation along the batch")
            self._emit(fx_node, "cat", [self.value[a] for a in parts], axis=int(axis))  # type: ignore[union-attr, arg-type]
        elif target is torch.flatten:
            self._flatten(fx_node)
        elif target in _RELU:
            self._emit(fx_node, "relu", [self.value[self._input(fx_node)]]).relus = int(np.prod(self._shape(fx_node)))
        elif target is F.adaptive_avg_pool2d:
            self._adaptive_avgpool(fx_node, self._input(fx_node), fx_node.args[1])
        else:
            raise self._unknown(fx_node, getattr(target, "__name__", str(target)))

    def _method(self, fx_node: torch.fx.Node) -> None:
        name = str(fx_node.target)
        if name in _RESHAPES:
            self._flatten(fx_node)
        elif name == "add" and len(fx_node.args) == 2 and isinstance(fx_node.args[1], torch.fx.Node):
            self._emit(fx_node, "add", [self.value[a] for a in fx_node.args])  # type: ignore[index]
        elif name == "relu":
            self._emit(fx_node, "relu", [self.value[self._input(fx_node)]]).relus = int(np.prod(self._shape(fx_node)))
        elif name == "size":
            return  # a shape query feeding a reshape: nothing to compute
        else:
            raise self._unknown(fx_node, f"the tensor method .{name}()")

    def _flatten(self, fx_node: torch.fx.Node) -> None:
        if len(self._shape(fx_node)) != 1:
            raise self._unknown(fx_node, f"a reshape to {tuple(self._shape(fx_node))} (only flattening to one row per input)")
        source = self._input(fx_node)
        if len(self._shape(source)) == 1:
            self._alias(fx_node, source)
        else:
            self._emit(fx_node, "flatten", [self.value[source]])

    # -- the walk --------------------------------------------------------------------------------

    def run(self) -> Graph:
        input_node, output = None, None
        for fx_node in self.gm.graph.nodes:
            if fx_node.op == "placeholder":
                if input_node is not None:
                    raise SearchError("cannot export a model with more than one input for secure inference")
                input_node = fx_node
                self.value[fx_node] = "input"
            elif fx_node.op == "call_module":
                self._module(fx_node)
            elif fx_node.op == "call_function":
                self._function(fx_node)
            elif fx_node.op == "call_method":
                self._method(fx_node)
            elif fx_node.op == "output":
                result = fx_node.args[0]
                if not isinstance(result, torch.fx.Node):
                    raise SearchError("cannot export a model whose output is not one tensor for secure inference")
                output = self.value[result]
            else:
                raise self._unknown(fx_node, f"a {fx_node.op} node ({fx_node.target})")
        assert input_node is not None and output is not None
        return Graph("input", self._shape(input_node), self.nodes, output, self.arrays)


def export_model(model: nn.Module, input_shape: Sequence[int], info: dict[str, Any] | None = None) -> Graph:
    """The neutral graph of ``model`` (in eval mode) for inputs of ``input_shape`` (C, H, W).

    Raises SearchError naming the first operation the runner cannot evaluate.
    """
    model = model.eval()
    try:
        graph_module = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # symbolic tracing fails on data-dependent control flow
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SearchError(f"cannot export {type(model).__name__} for secure inference: torch.fx cannot trace it ({first})") from None
    with torch.no_grad():
        ShapeProp(graph_module).propagate(torch.zeros(1, *input_shape))
    graph = _Exporter(model, graph_module).run()
    counted = relu_count(model, input_shape)
    if graph.relus != counted:
        raise SearchError(f"exported graph evaluates {graph.relus:,} ReLUs but the model counts {counted:,} (a ReLU site "
                          "called more than once cannot be exported)")
    graph.info = dict(info or {}, relus=counted)
    return graph
