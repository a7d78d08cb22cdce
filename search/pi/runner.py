"""Secure inference of an exported graph under SPU, two parties on this machine; needs no torch.

``python -m search.pi.runner GRAPH_DIR IMAGES_NPZ RESULT_JSON --protocol cheetah|semi2k`` runs each
image through the graph with two SPU parties linked over 127.0.0.1: the model owner (rank 0) secret-
shares the weights once, the client (rank 1) each image. Every node is its own SPU executable, run in
turn on one runtime per party, so SPU's per-run link statistics give each node's communication; the
parties meet at a barrier after each node, which keeps the log's per-run lines in node order. The
result file holds, per image, the revealed logits and per node the bytes both parties sent and the
wall seconds. Progress goes to stdout, one line per image.

A masked ReLU gathers its kept positions by a fixed (public) permutation, applies the ReLU to those
only and scatters them back by the inverse permutation: both permutations are local, so the secure
cost falls exactly with the kept count. Weights are secret shares: SPU's Cheetah accepts no input
private to one party, so linear layers are products of two secrets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from search.pi.graph import Graph, Node, load_graph

PROTOCOLS = ("cheetah", "semi2k")
_LINK_LINE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+)")


def _conv(node: Node) -> Callable[..., Any]:
    from jax import lax

    a = node.attrs

    def f(x: Any, w: Any, b: Any) -> Any:
        y = lax.conv_general_dilated(x, w, tuple(a["stride"]), [(p, p) for p in a["padding"]], rhs_dilation=tuple(a["dilation"]),
                                     feature_group_count=a["groups"], dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b.reshape(1, -1, 1, 1)
    return f


def _pad(x: Any, pad: list[list[int]], mode: str) -> Any:
    """Pad (or, where negative, crop) H and W of an NCHW array."""
    import jax.numpy as jnp

    crop = tuple(slice(max(-lo, 0), x.shape[2 + d] - max(-hi, 0)) for d, (lo, hi) in enumerate(pad))
    x = x[:, :, crop[0], crop[1]]
    widths = [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pad]
    return jnp.pad(x, widths, mode=mode) if any(sum(w) for w in widths) else x


def _windows(x: Any, node: Node) -> list[Any]:
    """The strided slices of a padded input whose elementwise reduction is the pooling."""
    (kh, kw), (sh, sw) = node.attrs["kernel"], node.attrs["stride"]
    ho, wo = node.shape[1:]
    return [x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] for i in range(kh) for j in range(kw)]


def node_function(node: Node, arrays: dict[str, np.ndarray]) -> Callable[..., Any]:
    """The JAX function of one node: its inputs' values first, then its parameters."""
    import jax.numpy as jnp

    op, a = node.op, node.attrs
    if op == "conv":
        return _conv(node)
    if op == "linear":
        return lambda x, w, b: x @ w.T + b
    if op == "affine":
        return lambda x, s, t: x * s.reshape((1, -1) + (1,) * (x.ndim - 2)) + t.reshape((1, -1) + (1,) * (x.ndim - 2))
    if op == "relu":
        kept = arrays.get(f"{node.name}.kept")
        if kept is None:
            return lambda x: jnp.maximum(x, 0)
        size = int(np.prod(node.shape))
        order = np.concatenate([kept, np.setdiff1d(np.arange(size), kept)])
        inverse, n = np.argsort(order), len(kept)

        def masked(x: Any) -> Any:
            flat = x.reshape(x.shape[0], -1)[:, order]
            flat = jnp.concatenate([jnp.maximum(flat[:, :n], 0), flat[:, n:]], axis=1)
            return flat[:, inverse].reshape(x.shape)
        return masked
    if op == "add":
        return lambda x, y: x + y
    if op == "cat":
        return lambda *xs: jnp.concatenate(xs, axis=a["axis"])
    if op == "flatten":
        return lambda x: x.reshape(x.shape[0], -1)
    if op == "mean":
        return lambda x: x.sum(axis=(2, 3), keepdims=True) * (1.0 / (x.shape[2] * x.shape[3]))
    if op == "avgpool":
        scale = arrays[f"{node.name}.scale"]

        def average(x: Any) -> Any:
            windows = _windows(_pad(x, a["pad"], "constant"), node)
            total = windows[0]
            for w in windows[1:]:
                total = total + w
            return total * scale
        return average
    if op == "maxpool":
        def maximum(x: Any) -> Any:
            windows = _windows(_pad(x, a["pad"], "edge"), node)
            best = windows[0]
            for w in windows[1:]:
                best = jnp.maximum(best, w)
            return best
        return maximum
    raise ValueError(f"unknown op {op!r} in node {node.name}")


def plain_logits(graph: Graph, images: np.ndarray) -> np.ndarray:
    """The graph evaluated in plain JAX (float32): checks the export apart from the protocol."""
    values: dict[str, Any] = {graph.input_name: images}
    for node in graph.nodes:
        values[node.name] = node_function(node, graph.arrays)(*(values[i] for i in node.inputs),
                                                              *(graph.arrays[p] for p in node.params))
    return np.asarray(values[graph.output])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class _Party(threading.Thread):
    """One party's runtime: runs every node of every image in turn, meeting the other at a barrier."""

    def __init__(self, rank: int, run: Callable[[int], Any]) -> None:
        super().__init__(name=f"party-{rank}", daemon=True)
        self.rank, self._run = rank, run
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._run(self.rank)
        except BaseException as err:  # reported by the driver thread
            self.error = err


def run_secure(graph: Graph, images: np.ndarray, protocol: str, log_path: str,
               progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Secure inference of ``images`` (N, C, H, W), one at a time; per image logits and per node cost."""
    import spu
    from spu import libspu
    from spu.utils import frontend

    options = libspu.logging.LogOptions()
    options.enable_console_logger = False
    options.system_log_path = log_path
    libspu.logging.setup_logging(options)

    kind = {"cheetah": libspu.ProtocolKind.CHEETAH, "semi2k": libspu.ProtocolKind.SEMI2K}[protocol]
    config = libspu.RuntimeConfig(protocol=kind, field=libspu.FieldType.FM64)
    config.enable_pphlo_profile = True  # prints each run's link statistics, the figures read back below
    io = spu.Io(2, config)
    secret = libspu.Visibility.VIS_SECRET

    started = time.perf_counter()
    shapes = {graph.input_name: [1, *graph.input_shape]} | {n.name: [1, *n.shape] for n in graph.nodes}
    executables = []
    for node in graph.nodes:
        args = [np.zeros(shapes[i], np.float32) for i in node.inputs] + [graph.arrays[p] for p in node.params]
        names = node.inputs + node.params
        executable, _ = frontend.compile(frontend.Kind.JAX, node_function(node, graph.arrays), tuple(args), {}, names,
                                         [secret] * len(names), lambda _, name=node.name: [name])
        executables.append(executable)
    compile_seconds = time.perf_counter() - started
    progress(f"compiled {len(executables)} nodes in {compile_seconds:.1f} s")

    weights = {p: io.make_shares(graph.arrays[p], secret, 0) for n in graph.nodes for p in n.params}
    inputs = [io.make_shares(images[i : i + 1].astype(np.float32), secret, 1) for i in range(len(images))]
    desc = libspu.link.Desc()
    for rank, port in enumerate(_free_ports(2)):
        desc.add_party(f"party{rank}", f"127.0.0.1:{port}")
    barrier = threading.Barrier(2)
    seconds = np.zeros((len(images), len(graph.nodes)))

    def party(rank: int) -> list[Any]:
        link = libspu.link.create_brpc(desc, rank)
        runtime = spu.Runtime(link, config)
        for name, shares in weights.items():
            runtime.set_var(name, shares[rank])
        outputs = []
        for i, shares in enumerate(inputs):
            runtime.set_var(graph.input_name, shares[rank])
            image_start = time.perf_counter()
            for j, executable in enumerate(executables):
                t = time.perf_counter()
                runtime.run(executable)
                barrier.wait()
                if rank == 0:
                    seconds[i, j] = time.perf_counter() - t
            outputs.append(runtime.get_var(graph.output))
            if rank == 0:
                progress(f"image {i + 1}/{len(images)}: {time.perf_counter() - image_start:.1f} s")
        link.stop_link()
        return outputs

    parties = [_Party(rank, party) for rank in range(2)]
    for p in parties:
        p.start()
    for p in parties:
        p.join()
        if p.error is not None:
            barrier.abort()
            raise p.error
    logits = [np.asarray(io.reconstruct([parties[0].result[i], parties[1].result[i]])) for i in range(len(images))]
    communication = _link_bytes(log_path, len(images), len(graph.nodes))
    return {
        "protocol": protocol,
        "spu_version": spu.__version__,
        "compile_seconds": compile_seconds,
        "nodes": [{"name": n.name, "op": n.op, "kind": n.kind, "relus": n.relus} for n in graph.nodes],
        "images": [{"logits": logits[i].reshape(-1).tolist(), "bytes": communication[i].tolist(),
                    "seconds": seconds[i].tolist()} for i in range(len(images))],
    }


def _link_bytes(log_path: str, images: int, nodes: int) -> np.ndarray:
    """Bytes moved by each run (both directions), in run order, from the two parties' profile lines."""
    lines = [tuple(int(v) for v in m.groups()) for m in _LINK_LINE.finditer(Path(log_path).read_text())]
    runs = images * nodes
    if len(lines) != 2 * runs:
        raise RuntimeError(f"SPU reported {len(lines)} link statistics for {runs} runs of 2 parties; expected {2 * runs}")
    totals = np.array([sent + received for sent, received in lines], dtype=np.int64).reshape(runs, 2)
    if not (totals[:, 0] == totals[:, 1]).all():
        raise RuntimeError("the two parties' link statistics disagree: the log's runs are out of order")
    return totals[:, 0].reshape(images, nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.pi.runner", description=__doc__.splitlines()[0])
    parser.add_argument("graph", help="folder of an exported graph (graph.json, arrays.npz)")
    parser.add_argument("images", help=".npz with 'images' (N, C, H, W), normalised as the model expects")
    parser.add_argument("result", help="where to write the result (JSON)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="cheetah")
    args = parser.parse_args(argv)
    graph = load_graph(args.graph)
    with np.load(args.images, allow_pickle=False) as npz:
        images = npz["images"]
    with tempfile.TemporaryDirectory(prefix="search-pi-") as tmp:
        result = run_secure(graph, images, args.protocol, os.path.join(tmp, "spu.log"),
                            progress=lambda line: print(line, flush=True))
    result["plain_logits"] = plain_logits(graph, images.astype(np.float32)).tolist()
    tmp_result = f"{args.result}.tmp"
    Path(tmp_result).write_text(json.dumps(result))
    os.replace(tmp_result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
