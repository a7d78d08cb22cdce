"""CIFAR-style ResNets (3x3 stem, no max-pool) built from ReLU sites.

Stage names are ``stem``, ``stage1`` ... ``stageN``; each basic block has two sites: ``relu1`` inside
the residual branch and ``relu2`` after the residual add (the one DeepReDuce's thinning drops).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from search.errors import SearchError
from search.relu import ReLUSite
from search.spaces.registry import register_model


def scaled(channels: int, width: float) -> int:
    """Channel count after a width multiplier, never below one."""
    if not (math.isfinite(width) and width > 0):
        raise SearchError(f"bad value {width} for width: expected a number > 0 (channel width multiplier)")
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, stage: str, name: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = ReLUSite(f"{name}.relu1", stage, name)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = ReLUSite(f"{name}.relu2", stage, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem at ``stem_stride``, stages of basic blocks, avg-pool, linear."""

    def __init__(
        self,
        blocks: Sequence[int],
        channels: Sequence[int],
        num_classes: int,
        in_channels: int,
        stem_relu: bool,
        stem_stride: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(channels[0])
        )
        self.stem_relu: nn.Module = ReLUSite("stem.relu", "stem", "stem") if stem_relu else nn.Identity()
        stages = []
        previous = channels[0]
        for index, (count, width) in enumerate(zip(blocks, channels), start=1):
            stage = f"stage{index}"
            layers = []
            for b in range(count):
                stride = 2 if (b == 0 and index > 1) else 1
                layers.append(BasicBlock(previous, width, stride, stage, f"{stage}.{b}"))
                previous = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem_relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def resnet18(
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
    stem_relu: bool = True,
    width: float = 1.0,
    stem_stride: Literal[1, 2] = 1,
) -> CifarResNet:
    """ResNet18, CIFAR variant: 557,056 ReLUs at 3x32x32 with the stem ReLU, 491,520 without."""
    channels = [scaled(c, width) for c in (64, 128, 256, 512)]
    return CifarResNet((2, 2, 2, 2), channels, num_classes, input_size[0], stem_relu, stem_stride)


@register_model
def resnet34(
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
    stem_relu: bool = True,
    width: float = 1.0,
    stem_stride: Literal[1, 2] = 1,
) -> CifarResNet:
    """ResNet34, CIFAR variant (blocks 3/4/6/3)."""
    channels = [scaled(c, width) for c in (64, 128, 256, 512)]
    return CifarResNet((3, 4, 6, 3), channels, num_classes, input_size[0], stem_relu, stem_stride)


@register_model
def resnet_tiny(
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (1, 8, 8),
    stem_relu: bool = True,
    width: float = 1.0,
    stem_stride: Literal[1, 2] = 1,
) -> CifarResNet:
    """Three stages of one block (16/32/64 channels): trains on 8x8 digits in seconds on a CPU."""
    channels = [scaled(c, width) for c in (16, 32, 64)]
    return CifarResNet((1, 1, 1), channels, num_classes, input_size[0], stem_relu, stem_stride)
