"""Training at the machine's speed: this package's ``fit`` against a plain PyTorch loop.

The same model (resnet18, CIFAR variant, at each ``--widths``), the same data (the first
``--steps`` x ``--batch`` training images of the CIFAR-10 subset and 512 validation images), the same
SGD recipe (lr 0.05, momentum 0.9, weight decay 5e-4, no augmentation), one epoch: every training step
and one evaluation of the validation images. Variants, timed in the same run, alternated (a, b, c, d,
a, b, ...), medians of ``--repeats`` epochs each, each variant in a process of its own as each
trial of a study is (so one variant's heap cannot speed up or slow down another's):

  (a) plain: the loop a user writes, NCHW: shuffle, normalise, forward, cross-entropy, zero_grad,
      backward, step; then accuracy over the validation images under ``torch.no_grad``;
  (b) fit, all on: ``search.train.fit`` with every ReLU site on (channels-last where
      ``search.layout`` picks it, the package's loader, model selection on the validation split);
  (c) fit, soft masks: (b) with SNL's per-pixel soft masks on every site and its Lasso penalty on
      them (what SNL's mask phase runs);
  (d) fit, keeping inputs: (b) with every site a plain ReLU that keeps its input for the backward, as
      a soft mask must, in an ``autograd.Function`` as (c)'s is: the floor under (c) (see
      ``benchmarks/bench_masked_relu.py``, variant f).

Each variant's epoch is given as a ratio to (a) and to (b): (c) over (b) is what a soft mask costs
over the all-on step (goal: at most 1.05). Also printed: each variant's minor page faults per epoch
(memory a step freed and the next one takes back from the kernel, see ``search/heap.py``) and its
achieved GFLOP/s, from the floating-point operations of one training step (forward and backward,
counted by ``torch.utils.flop_counter``), against two measures of one core's FP32 peak:

- nominal: ``--flops-per-cycle`` (default 32: two 256-bit FMA pipes, 8 floats x 2 operations each,
  as on AMD Zen 4; Intel cores with two 512-bit FMA units have 64) x the clock ``/proc/cpuinfo``
  reports. A virtual machine reports its base clock there, and a core that boosts above it beats
  this "peak";
- measured: the best rate of a 1024 x 1024 FP32 matrix product on ``--threads`` threads (oneDNN /
  MKL's most favourable kernel), the share column's denominator.

The step's FLOPs are those of direct convolution: a kernel that needs fewer (Winograd, say) achieves
an effective rate that can pass either peak.

    python -m benchmarks.bench_train_step --widths 0.25,1.0 --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_masked_relu import ReLUKeepingInput, swap_sites
from benchmarks.common import PROJECT_ROOT, alternate_in_processes, machine
from search.data import Dataset, Split, load_dataset
from search.layout import preferred_format
from search.relu import sites, trace_shapes
from search.spaces import build_model
from search.train import TrainConfig, fit, pick_device

RECIPE = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=128, schedule="constant",
                     augment=False)
LASSO = 1e-5  # SNL's released lambda: the penalty's value does not change its cost


def subset(data: Dataset, images: int, val_images: int) -> Dataset:
    """The first ``images`` training and ``val_images`` validation images of ``data``."""
    return replace(data, train=Split(data.train.images[:images], data.train.labels[:images]),
                   val=Split(data.val.images[:val_images], data.val.labels[:val_images]))


def fresh_model(width: float, soft: bool) -> nn.Module:
    """resnet18 at ``width``, the same initial weights every call; soft: per-pixel soft masks at 1."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, input_size=(3, 32, 32), width=width)
    trace_shapes(model, (3, 32, 32))
    if soft:
        for site in sites(model):
            site.set_mask(torch.ones(site.mask_shape("pixel")), trainable=True)
    return model


def plain_epoch(width: float, data: Dataset, device: torch.device, recipe: TrainConfig) -> Callable[[], None]:
    """(a): the loop a user writes, NCHW."""
    model = fresh_model(width, soft=False).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    mean = torch.tensor(data.info.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.info.std, device=device).view(1, -1, 1, 1) * 255
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    val_images, val_labels = data.val.images.to(device), data.val.labels.to(device)

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(labels), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            x = (images[idx].float() - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model((val_images[i:i + 512].float() - mean) / std).argmax(1) == val_labels[i:i + 512]).sum())
                          for i in range(0, len(val_labels), 512))
        assert 0 <= correct <= len(val_labels)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return epoch


def fit_epoch(width: float, data: Dataset, device: torch.device, recipe: TrainConfig, soft: bool,
              keep_inputs: bool = False) -> Callable[[], None]:
    """(b), (c) and (d): ``search.train.fit`` for one epoch; (c) with soft masks and SNL's Lasso, (d)
    with ReLUs that keep their inputs."""
    model = fresh_model(width, soft)
    if keep_inputs:
        swap_sites(model, lambda site: ReLUKeepingInput())
    masks = [site.mask for site in sites(model)] if soft else []

    def lasso(_: nn.Module) -> torch.Tensor:
        return LASSO * sum(mask.abs().sum() for mask in masks)  # type: ignore[union-attr, return-value]

    def epoch() -> None:
        fit(model, data, recipe, device, extra_loss=lasso if soft else None, log=lambda line: None)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return epoch


def step_flops(width: float, batch: int, device: torch.device) -> int:
    """Floating-point operations of one training step (forward and backward) at ``batch``."""
    model = fresh_model(width, soft=False).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, size: int = 1024, tries: int = 5) -> float:
    """The best GFLOP/s of a ``size`` x ``size`` FP32 matrix product on ``device`` over ``tries`` runs."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(tries + 1):  # the first warms the kernel up
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def core_peak_gflops(flops_per_cycle: int) -> tuple[float, float]:
    """(GHz as /proc/cpuinfo reports it, one core's FP32 peak in GFLOP/s)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = next((float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")), float("nan"))
    return mhz / 1000, flops_per_cycle * mhz / 1000


@dataclass(frozen=True)
class Setup:
    """What every variant's process needs to build its epoch."""

    width: float
    steps: int
    batch: int
    threads: int
    device: str
    data_dir: str


def epoch_of(variant: str, setup: Setup) -> Callable[[], None]:
    """Variant ``variant`` (one of ``VARIANTS``) as one epoch, built in the process that will run it."""
    torch.set_num_threads(setup.threads)
    device = pick_device(setup.device)
    data = subset(load_dataset("cifar10", setup.data_dir), setup.steps * setup.batch, 512)
    recipe = replace(RECIPE, batch_size=setup.batch)
    if variant == "a_plain":
        return plain_epoch(setup.width, data, device, recipe)
    return fit_epoch(setup.width, data, device, recipe, soft=variant == "c_fit_soft_masks",
                     keep_inputs=variant == "d_fit_keeping_inputs")


VARIANTS = ("a_plain", "b_fit_all_on", "c_fit_soft_masks", "d_fit_keeping_inputs")


def measure(setup: Setup, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds and page faults per epoch of each variant, interleaved round by round (one
    warm-up epoch each), each in its own process."""
    return alternate_in_processes({name: (epoch_of, (name, setup)) for name in VARIANTS}, repeats, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="0.25,1.0")
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch (default 8)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (a, b, c, d) (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a study trial on 1 CPU)")
    parser.add_argument("--flops-per-cycle", type=int, default=32, help="one core's FP32 operations per cycle (default 32)")
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ghz, nominal = core_peak_gflops(args.flops_per_cycle)
    peak = matmul_gflops(device)
    print(f"{machine()}; device {device}, {args.threads} thread(s), batch {args.batch}, {args.steps} steps + 512 validation "
          f"images per epoch; nominal core peak {nominal:.1f} GFLOP/s ({args.flops_per_cycle} flops/cycle x {ghz:.3f} GHz "
          f"from /proc/cpuinfo); measured 1024x1024 matrix product {peak:.1f} GFLOP/s ({peak / nominal:.0%} of nominal)")
    print("| width | variant | s/epoch (median) | ratio to (a) | ratio to (b) | format | page faults/epoch | "
          "GFLOP/s (training steps) | share of the matrix product's rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in (float(w) for w in args.widths.split(",")):
        setup = Setup(width, args.steps, args.batch, args.threads, args.device, args.data_dir)
        medians = measure(setup, args.repeats)
        flops = step_flops(width, args.batch, device) * args.steps
        chosen = "channels-last" if preferred_format(device, fresh_model(width, False)) == torch.channels_last else "NCHW"
        plain_seconds, all_on_seconds = medians["a_plain"][0], medians["b_fit_all_on"][0]
        for name, (seconds, faults) in medians.items():
            rate = flops / seconds / 1e9  # counts the epoch's evaluation as time, not as work: a lower bound
            layout = "NCHW" if name == "a_plain" else chosen
            print(f"| {width} | {name} | {seconds:.3f} | {seconds / plain_seconds:.3f} | {seconds / all_on_seconds:.3f} | "
                  f"{layout} | {faults:,.0f} | {rate:.1f} | {rate / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
