"""Cost of ReLU sites (all masks on) in a training step, against the same network with nn.ReLU.

Run: python -m benchmarks.bench_sites_overhead [--repeats 30]
"""

from __future__ import annotations

import argparse
import datetime

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import alternate, machine
from search.relu import ReLUSite
from search.spaces import build_model


def with_plain_relus(model: nn.Module) -> nn.Module:
    """The same network (same weights) with every site replaced by torch.nn.ReLU."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ReLUSite):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.ReLU())
    return model


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    print(f"# {datetime.date.today()} | {machine()} | batch {args.batch}, median of {args.repeats} alternating steps")
    print("| resnet18 width | nn.ReLU step (ms) | sites all on (ms) | ratio |")
    print("|---|---|---|---|")
    for width in (0.25, 1.0):
        sites_model = build_model("resnet18", width=width)
        plain_model = with_plain_relus(build_model("resnet18", width=width))
        plain_model.load_state_dict(sites_model.state_dict())
        opt_sites = torch.optim.SGD(sites_model.parameters(), lr=0.01, momentum=0.9)
        opt_plain = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)
        times = alternate(
            {
                "plain": lambda: training_step(plain_model, opt_plain, x, y),
                "sites": lambda: training_step(sites_model, opt_sites, x, y),
            },
            args.repeats,
        )
        print(f"| {width} | {times['plain'] * 1e3:.1f} | {times['sites'] * 1e3:.1f} | {times['sites'] / times['plain']:.3f} |")


if __name__ == "__main__":
    main()
