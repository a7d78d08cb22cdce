"""CryptoNAS networks (CNet): ENAS-style macro networks shaped for a ReLU budget.

A CNet is a stem convolution (no ReLU), ``layers`` layers in three resolutions, global average
pooling, optional dropout and a linear classifier. The two architectural moves of CryptoNAS (Ghodsi et al., NeurIPS
2020) are options, so each can be switched off and compared:

* ``relu_per_layer`` (ReLU pruning and shuffling, on by default): every layer is
  ReLU -> op -> BN, one ReLU on the layer's input; skip connections are
  concatenate -> 1x1 conv -> BN with no ReLU. Off gives the conventional network CryptoNAS starts
  from (its Fig. 2b): op -> BN -> ReLU in every layer, and a skip merge concatenate -> 1x1 conv -> BN
  -> ReLU, so every layer that receives a skip pays a second ReLU layer.
* ``balance`` (ReLU balancing, on by default): the resolution halves before layers L//3 and
  2*(L//3) (0-based), where the official code (ENAS's ``general_child.py``, ``pool_layers``) puts
  them, and the channels grow x4 there, so every layer has the same ReLU count and the total is
  L * width * H * W (CNet (6,14), (12,28), (24,56) at 32x32: 86,016 / 344,064 / 1,376,256). Off
  grows channels x2, the usual rule, and later layers get half and a quarter of the first stage's count.

The downsampling itself is linear (2x2 average pool -> 1x1 conv -> BN), as are the pools that bring an
earlier layer's output to the resolution of the layer it skips into. There is no stem ReLU.

Sites are named ``layer<i>.relu`` (and ``layer<i>.skip_relu`` in the conventional form), with stage
``stage1``..``stage3`` by resolution, so ``python -m search.inspect --sites`` shows every layer's count.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from search.errors import SearchError
from search.relu import ReLUSite
from search.spaces.registry import register_model

Op = Literal["conv3x3", "conv5x5", "sepconv3x3", "sepconv5x5", "maxpool", "avgpool"]
OPS: tuple[str, ...] = typing.get_args(Op)
_SKIP = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
MAX_LAYERS = 1000  # far beyond the published CNets (24 layers); deeper ones take minutes merely to construct
SKIP_FORMAT = "FROM-TO pairs such as 0-2,1-3: the output of layer FROM (0 is the stem) joins layer TO, FROM < TO <= layers"


def stage_of(index: int, layers: int) -> int:
    """Resolution stage (1..3) of 1-based layer ``index``: downsampling before 0-based layers L//3 and
    2*(L//3), as the official code pools after layers ``L//3 - 1`` and ``2*(L//3) - 1``; when L is not
    a multiple of 3 the last stage takes the extra layers (L = 8: 2, 2, 4)."""
    distance = layers // 3
    zero_based = index - 1
    return 1 + (zero_based >= distance) + (zero_based >= 2 * distance)


def expand_ops(ops: Sequence[str], layers: int) -> tuple[str, ...]:
    """One op per layer: none given means all conv3x3, one op applies to every layer."""
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise SearchError(f"bad value {unknown[0]!r} for ops: expected one of {', '.join(OPS)}")
    if not ops:
        return ("conv3x3",) * layers
    if len(ops) == 1:
        return tuple(ops) * layers
    if len(ops) != layers:
        raise SearchError(
            f"bad value {','.join(ops)!r} for ops: expected {layers} op names (one per layer), one for all layers, "
            f"or none for all conv3x3; ops are {', '.join(OPS)}"
        )
    return tuple(ops)


def parse_skips(skips: Sequence[str], layers: int) -> dict[int, tuple[int, ...]]:
    """Target layer -> sorted source layers, from ``("0-2", "1-3")``; raises SearchError when malformed."""
    found: dict[int, set[int]] = {}
    for item in skips:
        match = _SKIP.match(str(item))
        source, target = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
        if not match or not 0 <= source < target <= layers:
            raise SearchError(f"bad value {item!r} for skips: expected {SKIP_FORMAT} (layers={layers})")
        if source in found.setdefault(target, set()):
            raise SearchError(f"bad value for skips: {source}-{target} is given twice")
        found[target].add(source)
    return {target: tuple(sorted(sources)) for target, sources in sorted(found.items())}


def format_skips(skips: dict[int, tuple[int, ...]]) -> tuple[str, ...]:
    """The canonical ``FROM-TO`` strings of a parsed skip table."""
    return tuple(f"{s}-{t}" for t, sources in skips.items() for s in sources)


def make_op(name: str, channels: int) -> nn.Module:
    """A shape-preserving op of the macro space (stride 1, same channels)."""
    if name.startswith("sepconv"):
        k = int(name[-1])
        return nn.Sequential(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
    if name.startswith("conv"):
        k = int(name[-1])
        return nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
    if name == "maxpool":
        return nn.MaxPool2d(3, 1, 1)
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


def _halve(times: int) -> nn.Module:
    """``times`` 2x2 average pools (ceil mode, so odd sizes match the main path); linear."""
    return nn.Sequential(*(nn.AvgPool2d(2, ceil_mode=True) for _ in range(times))) if times else nn.Identity()


class CNetLayer(nn.Module):
    """One layer: optional linear downsampling, the op with its one ReLU, and the skip merge."""

    def __init__(
        self,
        index: int,
        stage: int,
        downsample: bool,
        in_channels: int,
        channels: int,
        op: str,
        sources: Sequence[tuple[int, int, int]],
        relu_per_layer: bool,
    ) -> None:
        super().__init__()
        name, stage_name = f"layer{index}", f"stage{stage}"
        self.pre_activation = relu_per_layer
        self.reduce: nn.Module = nn.Identity()
        if downsample:
            self.reduce = nn.Sequential(_halve(1), nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.relu = ReLUSite(f"{name}.relu", stage_name, name)
        self.op = make_op(op, channels)
        self.bn = nn.BatchNorm2d(channels)
        self.sources = [source for source, _, _ in sources]
        self.skip_pools = nn.ModuleList(_halve(halvings) for _, _, halvings in sources)
        self.merge: nn.Module | None = None
        self.skip_relu: nn.Module | None = None
        if sources:
            merged = channels + sum(c for _, c, _ in sources)
            self.merge = nn.Sequential(nn.Conv2d(merged, channels, 1, bias=False), nn.BatchNorm2d(channels))
            if not relu_per_layer:
                self.skip_relu = ReLUSite(f"{name}.skip_relu", stage_name, name)

    def forward(self, x: torch.Tensor, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.reduce(x)
        out = self.bn(self.op(self.relu(x))) if self.pre_activation else self.relu(self.bn(self.op(x)))
        if self.merge is not None:
            skipped = [pool(outputs[s]) for s, pool in zip(self.sources, self.skip_pools)]
            out = self.merge(torch.cat([out, *skipped], dim=1))
            if self.skip_relu is not None:
                out = self.skip_relu(out)
        return out


class CNet(nn.Module):
    """Stem conv + BN, ``layers`` CNet layers in three resolutions, average pool, linear classifier."""

    def __init__(
        self,
        num_classes: int,
        input_size: tuple[int, int, int],
        layers: int,
        width: int,
        ops: Sequence[str],
        skips: Sequence[str],
        balance: bool,
        relu_per_layer: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise SearchError(f"bad value {dropout} for dropout: expected a number in [0, 1)")
        if layers < 3:
            raise SearchError(f"bad value {layers} for layers: expected an integer >= 3 (one or more per resolution)")
        if layers > MAX_LAYERS:
            raise SearchError(f"bad value {layers} for layers: expected an integer <= {MAX_LAYERS}")
        if width < 1:
            raise SearchError(f"bad value {width} for width: expected an integer >= 1")
        self.ops = expand_ops(ops, layers)
        self.skip_table = parse_skips(skips, layers)
        self.balance, self.relu_per_layer = balance, relu_per_layer
        self.input_size = input_size
        growth = 4 if balance else 2
        self.channels = [width] + [width * growth ** (stage_of(i, layers) - 1) for i in range(1, layers + 1)]
        stages = [1] + [stage_of(i, layers) for i in range(1, layers + 1)]
        self.stem = nn.Sequential(nn.Conv2d(input_size[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.layers = nn.ModuleList(
            CNetLayer(
                i,
                stages[i],
                stages[i] != stages[i - 1],
                self.channels[i - 1],
                self.channels[i],
                self.ops[i - 1],
                [(s, self.channels[s], stages[i] - stages[s]) for s in self.skip_table.get(i, ())],
                relu_per_layer,
            )
            for i in range(1, layers + 1)
        )
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(self.channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        outputs = [x]
        for layer in self.layers:
            x = layer(x, outputs)
            outputs.append(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))

    def describe(self) -> str:
        """The architecture in readable form: one line per layer (stage, resolution, channels, op, skips)."""
        _, h, w = self.input_size
        sides = [(h, w)]
        for _ in range(2):
            sides.append((math.ceil(sides[-1][0] / 2), math.ceil(sides[-1][1] / 2)))
        relus = (
            "one ReLU per layer, on its input; skips carry no ReLU"
            if self.relu_per_layer
            else "conventional op-BN-ReLU, ReLU after each skip merge"
        )
        head = (
            f"cnet: {len(self.layers)} layers, width {self.channels[0]}; "
            f"ReLU balancing {'on (channels x4' if self.balance else 'off (channels x2'} at each downsampling); {relus}"
        )
        lines = [head]
        for i, op in enumerate(self.ops, start=1):
            s = self.stages[i]
            skip = ", ".join("stem" if src == 0 else f"layer{src}" for src in self.skip_table.get(i, ()))
            shape = f"{self.channels[i]}x{sides[s - 1][0]}x{sides[s - 1][1]}"
            line = f"  layer{i:<3} stage{s}  {shape:<12} {op}" + (f"  + skip from {skip}" if skip else "")
            lines.append(line)
        return "\n".join(lines)


@register_model
def cnet(
    num_classes: int = 10,
    input_size: tuple[int, int, int] = (3, 32, 32),
    layers: int = 6,
    width: int = 14,
    ops: tuple[Op, ...] = (),
    skips: tuple[str, ...] = (),
    balance: bool = True,
    relu_per_layer: bool = True,
    dropout: float = 0.0,
) -> CNet:
    """CryptoNAS CNet: ``layers`` x ``width``; defaults are CNet (6,14), 86,016 ReLUs at 3x32x32, no stem ReLU.

    ``ops``: per-layer ops (conv3x3, conv5x5, sepconv3x3, sepconv5x5, maxpool, avgpool); none means
    all conv3x3, one op means every layer. ``skips``: FROM-TO pairs (``0-2,1-3``; 0 is the stem).
    ``balance`` off grows channels x2 instead of x4; ``relu_per_layer`` off gives the conventional
    op-BN-ReLU layers with a ReLU after every skip merge. ``dropout``: before the classifier (CryptoNAS
    trains its CNets with 0.5).
    """
    return CNet(num_classes, input_size, layers, width, ops, skips, balance, relu_per_layer, dropout)
