"""The neutral form a model is exported to for secure inference: a graph in JSON, arrays in one .npz.

Both sides read this module: the exporter (:mod:`search.pi.export`, torch) writes it, the runner
(:mod:`search.pi.runner`, JAX and SPU, no torch) reads it. It therefore imports only numpy.

A graph is a list of nodes in execution order. Each node has a name (its value's name in the secure
runtime), an op, the names of its input values, the names of its parameter arrays (secret inputs of
the model owner: weights with batch norm folded in) and plain attributes. Shapes exclude the batch.

Ops and their attributes:

- ``conv``: ``stride``, ``padding``, ``dilation`` (pairs), ``groups``; params ``weight`` (O, I/g, kH, kW), ``bias``
- ``linear``: params ``weight`` (out, in), ``bias``
- ``affine``: a batch norm that no convolution absorbs; params ``scale``, ``shift`` per channel
- ``relu``: a ReLU site; array ``<name>.kept`` holds the flat positions that keep their ReLU
  (absent when every position does; a site with none kept is exported as ``identity``)
- ``add``, ``cat`` (``axis``), ``flatten``, ``identity``
- ``avgpool``: ``kernel``, ``stride``, ``pad`` ((top, bottom), (left, right)); array ``<name>.scale``
  (out H, out W) holds 1 / divisor per output position, so padding and ceil mode need no rule here
- ``maxpool``: ``kernel``, ``stride``, ``pad``; padded positions repeat the edge, which never wins
- ``mean``: global average over H and W, keeping them as 1 x 1
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "search.pi/1"
GRAPH_FILE = "graph.json"
ARRAYS_FILE = "arrays.npz"

# What a node's communication is reported under.
KIND_OF_OP = {
    "conv": "linear", "linear": "linear", "affine": "linear",
    "relu": "relu",
    "avgpool": "pooling", "maxpool": "pooling", "mean": "pooling",
    "add": "other", "cat": "other", "flatten": "other", "identity": "other",
}
KINDS = ("relu", "linear", "pooling", "other")


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    shape: list[int]  # of the node's output, batch excluded
    params: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    relus: int = 0  # ReLU positions the node evaluates, for one input

    @property
    def kind(self) -> str:
        return KIND_OF_OP[self.op]


@dataclass
class Graph:
    input_name: str
    input_shape: list[int]
    nodes: list[Node]
    output: str
    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)  # model name, strategy, ReLU count: for the report

    @property
    def relus(self) -> int:
        return sum(n.relus for n in self.nodes)


def save_graph(graph: Graph, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "input": {"name": graph.input_name, "shape": graph.input_shape},
        "nodes": [asdict(n) for n in graph.nodes],
        "output": graph.output,
        "info": graph.info,
    }
    (folder / GRAPH_FILE).write_text(json.dumps(meta, indent=1))
    np.savez(folder / ARRAYS_FILE, **graph.arrays)


def load_graph(folder: str | Path) -> Graph:
    folder = Path(folder)
    meta = json.loads((folder / GRAPH_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / GRAPH_FILE} is not an exported graph (expected format {FORMAT})")
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Graph(meta["input"]["name"], meta["input"]["shape"], [Node(**n) for n in meta["nodes"]], meta["output"], arrays,
                 meta.get("info", {}))
