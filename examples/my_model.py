"""A user's own model, used by `search` through its import path, with no change to `search`.

    PYTHONPATH=examples python -m search.inspect --model my_model:make_net --dataset digits --set width=8
    PYTHONPATH=examples python -m search.linearize --strategy snl --model my_model:make_net --dataset digits --budget 10%

The factory takes ``num_classes`` and ``input_size`` (both passed by `search`) and keyword options
with type hints and defaults, which become ``--set`` options. Its ReLUs, modules or functional calls,
are converted into ReLU sites; nothing here knows about `search`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """conv-BN-ReLU twice with a residual add; the second ReLU is a functional call."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class SmallNet(nn.Module):
    """A stem, ``blocks`` residual blocks at full resolution, a strided transition, ``blocks`` more."""

    def __init__(self, num_classes: int, in_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.stage2 = nn.Sequential(*(Block(2 * width) for _ in range(blocks)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


def make_net(num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32), width: int = 16, blocks: int = 1) -> nn.Module:
    """SmallNet for ``input_size`` images: ``width`` channels in the first stage, ``blocks`` per stage."""
    return SmallNet(num_classes, input_size[0], width, blocks)
