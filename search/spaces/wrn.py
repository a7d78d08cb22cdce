"""WideResNet in SNL's pre-activation form (no ReLU before the final pooling).

WRN-22-8 at 3x32x32 has 1,359,872 ReLUs: each block has ``relu1`` on its input (after BN) and
``relu2`` between its two convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from search.errors import SearchError
from search.relu import ReLUSite
from search.spaces.registry import register_model

MAX_DEPTH = 1000  # beyond any published WRN; deeper ones take minutes merely to construct


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity or 1x1-conv shortcut from the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float, stage: str, name: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = ReLUSite(f"{name}.relu1", stage, name)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = ReLUSite(f"{name}.relu2", stage, name)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, dropout: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or not 10 <= depth <= MAX_DEPTH:
            raise SearchError(f"bad value {depth} for depth: expected 6n+4 with n >= 1 (10, 16, 22, 28, ... {MAX_DEPTH})")
        if not 0 <= dropout < 1:
            raise SearchError(f"bad value {dropout} for dropout: expected a probability in [0, 1)")
        per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages = []
        for index in range(3):
            stage = f"stage{index + 1}"
            blocks = [
                PreActBlock(
                    widths[index] if b == 0 else widths[index + 1],
                    widths[index + 1],
                    (1 if index == 0 else 2) if b == 0 else 1,
                    dropout,
                    stage,
                    f"{stage}.{b}",
                )
                for b in range(per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.stages(self.stem(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model
def wrn22_8(
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
    depth: int = 22,
    widen_factor: int = 8,
    dropout: float = 0.0,
) -> WideResNet:
    """WideResNet-22-8 (pre-activation, SNL's form): 1,359,872 ReLUs at 3x32x32."""
    if widen_factor < 1:
        raise SearchError(f"bad value {widen_factor} for widen_factor: expected an integer >= 1")
    return WideResNet(depth, widen_factor, dropout, num_classes, input_size[0])
