"""The soft-masked ReLU that SNL trains: its cost is the hot path of mask training.

``alpha * relu(x) + (1 - alpha) * x`` equals ``x`` where ``x > 0`` and ``(1 - alpha) * x`` elsewhere:
a PReLU whose negative slope ``1 - alpha`` is broadcast per pixel or per channel. The backward needs
``x`` (its mask gradient is ``-min(x, 0)``), so ``x`` and the mask are what is saved.

Two implementations:

- on CPU (float32 and float64), fused C++ kernels (``search/csrc/soft_mask.cpp``): the forward is one
  pass like a plain ReLU's; the backward reads ``grad`` and ``x`` once, writes the input gradient and
  sums the mask's gradient over the batch in the same pass, like ReLU's own backward. Broadcasting
  the mask, the batch's memory order and reducing the gradient to the mask's shape happen in C++ too,
  so a site costs one Python call each way. They are compiled with ``torch.utils.cpp_extension`` on
  first use (once per machine, 15-20 s on a 2-core CPU, cached in ``$TORCH_EXTENSIONS_DIR`` or
  ``~/.cache/torch_extensions``; a study on a local Ray builds them before its trials start,
  :func:`prepare_fused_kernels`);
- elsewhere (CUDA, other dtypes), or where they cannot be compiled (no C++ compiler), ATen's PReLU
  forward and four vectorised ATen passes back: ReLU's own backward, a subtraction, an addcmul, and a
  product whose batch sum is a matrix-vector product (``sum(0)`` over the batch is a slow strided
  reduction on CPU).

Both handle channels-last batches (:mod:`search.layout`) in their own memory order, without a copy:
the kernels walk NHWC memory as they walk NCHW, the mask's gradient is permuted back at the end.

``benchmarks/bench_masked_relu.py`` measures both against a plain ReLU training step.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch.autograd.function import once_differentiable

from search import progress
from search.layout import is_channels_last

_prelu = torch.ops.aten._prelu_kernel
_relu_backward = torch.ops.aten.threshold_backward
_SOURCE = Path(__file__).with_name("csrc") / "soft_mask.cpp"
_EXTENSION = "search_soft_mask"
DISABLE_ENV = "SEARCH_NO_FUSED_KERNEL"  # set to 1 to use the ATen implementation everywhere
_FUSED_DTYPES = (torch.float32, torch.float64)  # what the C++ kernels are compiled for


class FusedKernels(Protocol):
    """The compiled operators, ``torch.ops.search_soft_mask``."""

    def soft_mask_forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor: ...

    def soft_mask_backward(self, grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                           want_alpha: bool) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@functools.lru_cache(maxsize=1)
def fused_kernels() -> FusedKernels | None:
    """The compiled CPU kernels, or None (disabled, or they cannot be built: said once on stderr)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    started = time.perf_counter()
    chatter = logging.getLogger("torch.utils.cpp_extension")
    level = chatter.level
    chatter.setLevel(logging.ERROR)  # its import warns "No CUDA runtime is found": noise for a CPU kernel
    try:
        from torch.utils import cpp_extension

        # -fno-trapping-math lets GCC turn the kernel's select into a vector blend: otherwise it keeps a
        # branch wherever the CPU lacks AVX-512's masked operations (13-25x slower on an AVX2 CPU)
        cpp_extension.load(_EXTENSION, [str(_SOURCE)], extra_cflags=["-O3", "-fno-trapping-math"], verbose=False,
                           is_python_module=False)  # the library registers torch.ops.<_EXTENSION>.soft_mask_*
    except Exception as err:  # no compiler, no ninja, a read-only cache: the ATen backward still works
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        print(f"search: the fused soft-mask kernels could not be built ({reason}); using the slower ATen ones",
              file=sys.stderr)
        return None
    finally:
        chatter.setLevel(level)
    seconds = time.perf_counter() - started
    if seconds > BUILT_AFTER_S:  # compiled now, in the epoch that first needed it: not a cost of every epoch
        progress.one_off(seconds)
    return getattr(torch.ops, _EXTENSION)  # type: ignore[no-any-return]


BUILT_AFTER_S = 2.0  # loading a built kernel takes about 0.1 s; longer means it was compiled


def prepare_fused_kernels(say: Callable[[str], None], patience_s: float = BUILT_AFTER_S,
                          load: Callable[[], object] = fused_kernels) -> None:
    """Load (or first build) the fused kernels now, in this process, saying so through ``say`` when
    that takes longer than ``patience_s``: a study calls it before its trials start, so the minute of
    a first build is announced once instead of stalling every trial's first epoch in silence.
    Trials on this machine then load the built kernels from the extension cache."""
    started, announced = time.perf_counter(), threading.Event()

    def announce() -> None:
        announced.set()
        say("building the fused soft-mask kernel that SNL's mask training uses (once per machine, about 20 s)")

    timer = threading.Timer(patience_s, announce)
    timer.daemon = True
    timer.start()
    try:
        load()
    finally:
        timer.cancel()
        timer.join()  # an announcement under way ends before the outcome is said
    if announced.is_set():
        say(f"fused soft-mask kernel ready after {time.perf_counter() - started:.0f} s")


def _in_order_of(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mask`` (one input's shape, broadcast over the batch) laid out in ``x``'s memory order: for a
    channels-last ``x``, a per-pixel mask in HWC order. Elementwise kernels over a channels-last
    batch and an NCHW-ordered mask cannot walk memory in order: ATen's PReLU ran 40x slower so."""
    if not is_channels_last(x) or mask.dim() != 3:
        return mask
    return mask.unsqueeze(0).contiguous(memory_format=torch.channels_last).squeeze(0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (batch, positions) in its own memory order, without a copy: NCHW order, or NHWC
    order for a channels-last batch (reshaping that to NCHW order would copy the whole tensor)."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1) if is_channels_last(t) else t.reshape(t.shape[0], -1)


def _mask_grad(per_position: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A gradient per position of one input (flat, in ``x``'s memory order, see :func:`_rows`)
    summed down to the mask's shape."""
    if is_channels_last(x):
        channels, height, width = x.shape[1:]
        one = per_position.reshape(height, width, channels).permute(2, 0, 1)
    else:
        one = per_position.reshape(x.shape[1:])
    return one.unsqueeze(0).sum_to_size(alpha.shape).to(alpha.dtype)


class _SoftMaskedReLU(torch.autograd.Function):
    """``x - alpha * min(x, 0)`` as a PReLU with slope ``1 - alpha``; ATen backward (four passes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        return _prelu(x, _in_order_of((1 - alpha).to(x.dtype), x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        kept = _relu_backward(grad, x, 0)  # grad where x > 0, else 0
        negative_part = kept.sub_(grad)  # -grad where x <= 0, else 0 (in place: kept is ours)
        grad_x = torch.addcmul(grad, negative_part, _in_order_of(alpha.to(grad.dtype), x)) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # d out / d alpha = -min(x, 0): grad_alpha sums -grad * min(x, 0) over the batch
            product = negative_part.mul_(x)
            ones = torch.ones(x.shape[0], dtype=product.dtype, device=product.device)
            grad_alpha = _mask_grad(ones @ _rows(product), x, alpha)
        return grad_x, grad_alpha


class _FusedSoftMaskedReLU(torch.autograd.Function):
    """The same function with the one-pass C++ forward and backward (CPU, float32 and float64)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, kernels: FusedKernels) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        ctx.kernels = kernels
        return kernels.soft_mask_forward(x, alpha)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        grad_x, grad_alpha = ctx.kernels.soft_mask_backward(grad, x, alpha, bool(ctx.needs_input_grad[1]))
        return grad_x, grad_alpha, None


def soft_masked_relu(x: torch.Tensor, alpha: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """``alpha * relu(x) + (1 - alpha) * x`` for a mask ``alpha`` broadcastable to one input of ``x``
    (its shape without the batch dimension, e.g. C x H x W per pixel or C x 1 x 1 per channel).
    ``fused=False`` forces the ATen implementation (benchmarks compare the two)."""
    if fused and x.device.type == "cpu" and x.dtype in _FUSED_DTYPES and x.dim() >= 1 and x.shape[0] > 0:
        kernels = fused_kernels()
        if kernels is not None:
            return _FusedSoftMaskedReLU.apply(x, alpha, kernels)
    return _SoftMaskedReLU.apply(x, alpha)
