"""Training at the machine's speed: this package's ``fit`` against a plain PyTorch loop.

The same model (resnet18, CIFAR variant, at each ``--widths``), the same data (the first
``--steps`` x ``--batch`` training images of the CIFAR-10 subset and 512 validation images), the same
SGD recipe (lr 0.05, momentum 0.9, weight decay 5e-4, no augmentation), one epoch: every training step
and one evaluation of the validation images. Variants, timed in the same run, alternated (a, b, c,
a, b, c, ...), medians of ``--repeats`` epochs each:

  (a) plain: the loop a user writes, NCHW: shuffle, normalise, forward, cross-entropy, zero_grad,
      backward, step; then accuracy over the validation images under ``torch.no_grad``;
  (b) fit, all on: ``search.train.fit`` with every ReLU site on (channels-last where
      ``search.layout`` picks it, the package's loader, model selection on the validation split);
  (c) fit, soft masks: (b) with SNL's per-pixel soft masks on every site and its Lasso penalty on
      them (what SNL's mask phase runs).

Also printed: the achieved GFLOP/s of each, from the floating-point operations of one training step
(forward and backward, counted by ``torch.utils.flop_counter``), against one core's FP32 peak:
``--flops-per-cycle`` (default 32: two 256-bit FMA pipes, 8 floats x 2 operations each, as on AMD
Zen 4; Intel cores with two 512-bit FMA units have 64) x the clock ``/proc/cpuinfo`` reports.

    python -m benchmarks.bench_train_step --widths 0.25,1.0 --threads 1
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import PROJECT_ROOT, alternate, machine
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


def fit_epoch(width: float, data: Dataset, device: torch.device, recipe: TrainConfig, soft: bool) -> Callable[[], None]:
    """(b) and (c): ``search.train.fit`` for one epoch; (c) with soft masks and SNL's Lasso."""
    model = fresh_model(width, soft)
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


def core_peak_gflops(flops_per_cycle: int) -> tuple[float, float]:
    """(GHz as /proc/cpuinfo reports it, one core's FP32 peak in GFLOP/s)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = next((float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")), float("nan"))
    return mhz / 1000, flops_per_cycle * mhz / 1000


def measure(width: float, data: Dataset, device: torch.device, recipe: TrainConfig, repeats: int) -> dict[str, float]:
    """Median seconds per epoch of each variant, interleaved round by round (one warm-up epoch each)."""
    runners = {"a_plain": plain_epoch(width, data, device, recipe),
               "b_fit_all_on": fit_epoch(width, data, device, recipe, soft=False),
               "c_fit_soft_masks": fit_epoch(width, data, device, recipe, soft=True)}
    return alternate(runners, repeats, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="0.25,1.0")
    parser.add_argument("--steps", type=int, default=8, help="training steps per epoch (default 8)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of (a, b, c) (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a study trial on 1 CPU)")
    parser.add_argument("--flops-per-cycle", type=int, default=32, help="one core's FP32 operations per cycle (default 32)")
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    recipe = replace(RECIPE, batch_size=args.batch)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = subset(load_dataset("cifar10", args.data_dir), args.steps * args.batch, 512)
    ghz, peak = core_peak_gflops(args.flops_per_cycle)
    print(f"{machine()}; device {device}, {args.threads} thread(s), batch {args.batch}, {args.steps} steps + 512 validation "
          f"images per epoch; core peak {peak:.1f} GFLOP/s ({args.flops_per_cycle} flops/cycle x {ghz:.3f} GHz)")
    print("| width | variant | s/epoch (median) | ratio to (a) | format | GFLOP/s (training steps) | share of core peak |")
    print("|---|---|---|---|---|---|---|")
    for width in (float(w) for w in args.widths.split(",")):
        medians = measure(width, data, device, recipe, args.repeats)
        flops = step_flops(width, args.batch, device) * args.steps
        chosen = "channels-last" if preferred_format(device, fresh_model(width, False)) == torch.channels_last else "NCHW"
        for name, seconds in medians.items():
            rate = flops / seconds / 1e9  # counts the epoch's evaluation as time, not as work: a lower bound
            layout = "NCHW" if name == "a_plain" else chosen
            print(f"| {width} | {name} | {seconds:.2f} | {seconds / medians['a_plain']:.3f} | {layout} | {rate:.1f} | "
                  f"{rate / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
