"""Memory layout of image batches and models: channels-last where the device runs it faster.

Convolutions in channels-last (NHWC) memory run through oneDNN on CPU and reach tensor-core kernels
on CUDA; in NCHW the CPU pays layout reorders around every convolution. Measured on a 2-core AVX-512
CPU, an SGD step of resnet18 (width 0.25, batch 128) and of resnet_tiny on digits took about 0.8x
the NCHW time (``benchmarks/bench_train_step.py``). The rule, decided once per model and device:

- channels-last on CUDA, and on a CPU where torch has oneDNN;
- NCHW on a CPU without oneDNN (no faster channels-last path there), and on CPU for a model with a
  1x1 convolution of stride > 1 and 2 to 7 input channels: oneDNN (torch 2.14) computes that
  convolution's weight gradient wrong in channels-last, and for some shapes corrupts the heap
  (found by ``tests/test_layout.py``; such narrow shortcuts occur in very thin ResNets).

Values are the same in either layout; only strides differ.
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS_LAST = torch.channels_last
NCHW = torch.contiguous_format


def preferred_format(device: torch.device, model: nn.Module | None = None) -> torch.memory_format:
    """The memory format ``model``'s batches and weights use on ``device`` (see the module's rule)."""
    if device.type == "cuda":
        return CHANNELS_LAST
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return NCHW if model is not None and has_onednn_unsafe_conv(model) else CHANNELS_LAST
    return NCHW


def has_onednn_unsafe_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution whose channels-last CPU backward is wrong (see the module)."""
    return any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and 2 <= m.in_channels < 8
        for m in model.modules()
    )


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is a 4-D tensor laid out NHWC (and not also NCHW-contiguous, as when C or
    H*W is 1, where both layouts are the same memory)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=CHANNELS_LAST)


def to_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` in ``memory_format`` when it is a 4-D batch (a copy only when its layout differs)."""
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x
