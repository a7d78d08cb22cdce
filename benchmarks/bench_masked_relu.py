"""Cost of SNL's soft-masked activation in a full training step, as a ratio to plain ReLU.

One training step = forward, cross-entropy, backward and an Adam step over weights (and masks), on a
CIFAR ResNet18 at batch 64. Six variants of the same network, timed in the same run, alternated
(a, b, c, d, e, a, b, ...) so load from other processes hits all of them alike; medians are reported:

  (a) plain ``nn.ReLU`` modules;
  (b) per-pixel soft masks with the released formula ``relu(x)*a + (1-a)*x`` in plain autograd;
  (c) ``x - a*min(x, 0)`` in plain autograd;
  (d) ``search/masked_relu.py`` with its ATen backward (four vectorised passes; what CUDA uses);
  (e) ReLU sites in soft mode: ``search/masked_relu.py`` with its fused C++ backward (what SNL trains
      with on a CPU);
  (f) the floor under (e): a plain ReLU (ATen's kernels) in an ``autograd.Function`` that, like any
      soft mask, keeps its input for the backward beside its output, and has no mask.

The process keeps freed memory for the next step (``search/heap.py``), as a trial's does once ``fit``
runs, so no variant pays page faults for another's allocations.

    python -m benchmarks.bench_masked_relu --widths 0.25,1.0 --repeats 15 [--threads 1]

``--builds N`` times N first builds of the fused kernel instead (what a new machine pays once), each
in a new process with an empty extension cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search import heap
from search.masked_relu import fused_kernels, soft_masked_relu
from search.relu import ReLUSite, sites, trace_shapes
from search.spaces import build_model
from search.train import pick_device


class _Released(nn.Module):
    """SNL's released activation: ``relu(x) * a + (1 - a) * x``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) * self.alpha + (1 - self.alpha) * x


class _MinForm(nn.Module):
    """The cheaper identity ``x - a * min(x, 0)``, left to autograd."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.alpha * x.clamp(max=0)


class _AtenBackward(nn.Module):
    """``search.masked_relu`` forced onto its ATen backward."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_masked_relu(x, self.alpha, fused=False)


class _KeepsInput(torch.autograd.Function):
    """ReLU that keeps its input alive until the backward, as a soft mask must (it needs ``min(x, 0)``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = F.relu(x)
        ctx.save_for_backward(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, _ = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0)


class ReLUKeepingInput(nn.Module):
    """A plain ReLU with a soft mask's memory: it keeps its input until the backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _KeepsInput.apply(x)


def swap_sites(model: nn.Module, make: Callable[[ReLUSite], nn.Module]) -> nn.Module:
    for site in sites(model):
        path = next(name for name, module in model.named_modules() if module is site)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, make(site))
    return model


def build_variant(kind: str, width: float, device: torch.device) -> nn.Module:
    """ResNet18 (CIFAR) at ``width`` with the activation of variant ``kind``; same initial weights."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, input_size=(3, 32, 32), width=width)
    trace_shapes(model, (3, 32, 32))
    if kind == "plain":
        swap_sites(model, lambda site: nn.ReLU())
    elif kind == "released":
        swap_sites(model, lambda site: _Released(site.mask_shape("pixel")))
    elif kind == "min":
        swap_sites(model, lambda site: _MinForm(site.mask_shape("pixel")))
    elif kind == "aten":
        swap_sites(model, lambda site: _AtenBackward(site.mask_shape("pixel")))
    elif kind == "fused":
        if fused_kernels() is None:
            raise SystemExit("the fused soft-mask kernel could not be built here (see the line above)")
        for site in sites(model):
            site.set_mask(torch.ones(site.mask_shape("pixel")), trainable=True)
    elif kind == "keeps_input":
        swap_sites(model, lambda site: ReLUKeepingInput())
    else:
        raise ValueError(kind)
    return model.to(device).train()


def make_step(model: nn.Module, batch: int, device: torch.device) -> Callable[[], None]:
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


VARIANTS = {
    "a_plain_relu": "plain",
    "b_released_formula": "released",
    "c_min_form_autograd": "min",
    "d_aten_backward": "aten",
    "e_fused_kernel": "fused",
    "f_relu_keeping_its_input": "keeps_input",
}


def measure(width: float, batch: int, repeats: int, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per training step of each variant, interleaved round by round."""
    runners = {label: make_step(build_variant(kind, width, device), batch, device) for label, kind in VARIANTS.items()}
    for run in runners.values():  # warm-up: allocator, Adam state, oneDNN primitives
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(repeats):
        for label, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[label].append((time.perf_counter() - start) / steps)
    return {label: statistics.median(values) for label, values in times.items()}


_TIMED_BUILD = (
    "import time\n"
    "from search.masked_relu import fused_kernels\n"
    "start = time.perf_counter()\n"
    "built = fused_kernels() is not None\n"
    "print(time.perf_counter() - start if built else 'failed')\n"
)


def time_builds(count: int) -> list[float]:
    """Seconds of each of ``count`` first builds of the fused kernel (compile and load), each in a new
    process whose ``$TORCH_EXTENSIONS_DIR`` is empty."""
    seconds = []
    for _ in range(count):
        with tempfile.TemporaryDirectory(prefix="bench-kernel-build-") as cache:
            done = subprocess.run([sys.executable, "-c", _TIMED_BUILD], env={**os.environ, "TORCH_EXTENSIONS_DIR": cache},
                                  capture_output=True, text=True, check=True)
        last = done.stdout.strip().splitlines()[-1]
        if last == "failed":
            raise SystemExit(f"the fused soft-mask kernel could not be built here: {done.stderr.strip()[-500:]}")
        seconds.append(float(last))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="0.25,1.0")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="rounds of (a, b, c, d, e, f)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--builds", type=int, help="time this many first builds of the fused kernel instead")
    args = parser.parse_args()
    if args.builds:
        seconds = time_builds(args.builds)
        print(f"fused kernel first build: median {statistics.median(seconds):.1f} s over {len(seconds)} "
              f"({', '.join(f'{s:.1f}' for s in seconds)} s)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cpu":
        heap.keep_freed_memory()
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, torch {torch.__version__}")
    print("| width | variant | ms/step (median) | ratio to (a) |")
    print("|---|---|---|---|")
    for width in (float(w) for w in args.widths.split(",")):
        medians = measure(width, args.batch, args.repeats, args.steps, device)
        base = medians["a_plain_relu"]
        for label, seconds in medians.items():
            print(f"| {width} | {label} | {seconds * 1e3:.1f} | {seconds / base:.3f} |", flush=True)


if __name__ == "__main__":
    main()
