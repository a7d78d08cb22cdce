"""Measure a saved model's secure inference: export, run the SPU runner in a subprocess, check, sum up.

The runner runs in a process of its own because SPU's parties, its C++ logger and its RPC servers are
process-wide, and because it needs JAX and SPU but not torch. Its result is checked here against the
plain model: the secure logits must give the same predictions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.checkpoint import load_model
from search.data import Loader, load_dataset
from search.errors import SearchError
from search.pi.arguments import MAX_IMAGES
from search.pi.export import export_model
from search.pi.graph import KINDS, save_graph
from search.pi.runner import PROTOCOLS

INSTALL_HINT = "pip install -e '.[pi]'"


@dataclass
class ImageCost:
    """One secure inference: bytes both parties sent and wall seconds, in all and by layer kind."""

    bytes_by_kind: dict[str, int]
    seconds_by_kind: dict[str, float]
    predicted: int
    plain_predicted: int
    label: int
    logit_error: float  # largest |secure - plain| logit

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_kind.values())


@dataclass
class Measurement:
    """Secure inference of one checkpoint on a few test images; the first image carries the setup."""

    checkpoint: str
    model: str
    strategy: str
    dataset: str
    relus: int
    protocol: str
    spu_version: str
    images: list[ImageCost]
    node_count: int
    compile_seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def steady(self) -> ImageCost:
        """The steady-state inference: of the images after the first (which carries the protocol's setup),
        the one of median communication, the lower one of an even count. SPU's Cheetah sometimes pays a
        further one-time cost (a refill of correlated OTs) in a later inference; a median sets it apart,
        where a mean over a few images would charge it to every one. The first image, alone."""
        warm = sorted(self.images[1:] or self.images[:1], key=lambda i: i.total_bytes)
        return warm[(len(warm) - 1) // 2]

    @property
    def relu_bytes_per_relu(self) -> float | None:
        return self.steady.bytes_by_kind["relu"] / self.relus if self.relus else None

    @property
    def setup_bytes(self) -> int:
        """Bytes beyond the steady state, summed over the images measured: setup and later one-time costs."""
        return sum(i.total_bytes for i in self.images) - len(self.images) * self.steady.total_bytes

    @property
    def matches(self) -> bool:
        return all(i.predicted == i.plain_predicted for i in self.images)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint, "model": self.model, "strategy": self.strategy, "dataset": self.dataset,
            "relus": self.relus, "protocol": self.protocol, "spu_version": self.spu_version, "nodes": self.node_count,
            "compile_seconds": self.compile_seconds, "matches_plain": self.matches,
            "steady_bytes": self.steady.total_bytes, "steady_seconds": self.steady.seconds,
            "steady_bytes_by_kind": self.steady.bytes_by_kind, "steady_seconds_by_kind": self.steady.seconds_by_kind,
            "setup_bytes": self.setup_bytes,
            "images": [dict(vars(i), total_bytes=i.total_bytes, seconds=i.seconds) for i in self.images],
        }


def runner_python() -> str:
    """The interpreter that runs the SPU runner: this one, when SPU and JAX are installed in it."""
    if importlib.util.find_spec("spu") is None or importlib.util.find_spec("jax") is None:
        raise SearchError(f"secure inference needs SPU, an optional extra: {INSTALL_HINT}")
    return sys.executable


def first_test_images(dataset: str, count: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test images, normalised as in training and evaluation, and their labels."""
    data = load_dataset(dataset, data_dir)
    if count > len(data.test):
        raise SearchError(f"--images {count} is more than the {len(data.test):,} test images of {dataset}")
    images, labels = next(iter(Loader(data.test, data.info, count, torch.device("cpu"))))
    return images, labels


def _run_runner(python: str, folder: Path, protocol: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the runner on ``folder``'s graph and images, passing its progress lines on."""
    log = folder / "runner.log"
    command = [python, "-m", "search.pi.runner", str(folder / "graph"), str(folder / "images.npz"),
               str(folder / "result.json"), "--protocol", protocol]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            progress(line.rstrip())
        code = process.wait()
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith(("I", "W"))]
        raise SearchError(f"secure inference failed (runner exit {code}): {lines[-1] if lines else 'no message'}")
    return json.loads((folder / "result.json").read_text())


def measure_checkpoint(checkpoint: str, images: int = 4, protocol: str = "cheetah", dataset: str | None = None,
                       data_dir: str | None = None, progress: Callable[[str], None] = lambda line: None) -> Measurement:
    """Secure inference of ``checkpoint`` on its dataset's first ``images`` test images."""
    if protocol not in PROTOCOLS:
        raise SearchError(f"bad protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if not 1 <= images <= MAX_IMAGES:
        raise SearchError(f"bad value {images} for --images: expected an integer from 1 to {MAX_IMAGES:,}")
    python = runner_python()
    model, payload = load_model(checkpoint)
    info = payload.get("info", {})
    dataset = dataset or info.get("dataset")
    if not dataset:
        raise SearchError(f"checkpoint {checkpoint} does not say its dataset: give --dataset")
    x, labels = first_test_images(dataset, images, data_dir)
    graph = export_model(model, tuple(payload["input_size"]), {"model": payload["model"], "strategy": info.get("strategy", "")})
    with torch.no_grad():
        plain = model.eval()(x)
    with tempfile.TemporaryDirectory(prefix="search-pi-") as tmp:
        folder = Path(tmp)
        save_graph(graph, folder / "graph")
        np.savez(folder / "images.npz", images=x.numpy())
        result = _run_runner(python, folder, protocol, progress)
    kinds = [n["kind"] for n in result["nodes"]]
    costs = []
    for i, image in enumerate(result["images"]):
        logits = torch.tensor(image["logits"]).reshape(plain[i].shape)
        costs.append(ImageCost(
            {k: int(sum(b for b, kk in zip(image["bytes"], kinds) if kk == k)) for k in KINDS},
            {k: float(sum(s for s, kk in zip(image["seconds"], kinds) if kk == k)) for k in KINDS},
            int(logits.argmax()), int(plain[i].argmax()), int(labels[i]), float((logits - plain[i]).abs().max()),
        ))
    return Measurement(os.fspath(checkpoint), payload["model"], info.get("strategy", ""), dataset, graph.relus, protocol,
                       result["spu_version"], costs, len(result["nodes"]), result["compile_seconds"], info)
