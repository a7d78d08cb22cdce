"""The soft-masked ReLU that SNL trains: its cost is the hot path of mask training.

``alpha * relu(x) + (1 - alpha) * x`` equals ``x`` where ``x > 0`` and ``(1 - alpha) * x`` elsewhere:
a PReLU whose negative slope ``1 - alpha`` is broadcast per pixel or per channel. The forward is ATen's
vectorised PReLU kernel, one pass like a plain ReLU. The backward uses four vectorised passes
(ReLU's own backward, a subtraction, an addcmul, and the product for the mask gradient) instead of ATen's PReLU backward,
which is a scalar loop about twice as slow; the mask gradient is summed over the batch with a
matrix-vector product, which reads the tensor once where ``sum(0)`` is a slow strided reduction.
Only ``x`` is saved, as for autograd's ReLU. ``benchmarks/bench_masked_relu.py`` measures the result.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

_prelu = torch.ops.aten._prelu_kernel
_relu_backward = torch.ops.aten.threshold_backward


class _SoftMaskedReLU(torch.autograd.Function):
    """``x - alpha * min(x, 0)`` as a PReLU with slope ``1 - alpha``; saves ``x`` and ``alpha`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        return _prelu(x, (1 - alpha).to(x.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        kept = _relu_backward(grad, x, 0)  # grad where x > 0, else 0
        negative_part = kept.sub_(grad)  # -grad where x <= 0, else 0 (in place: kept is ours)
        grad_x = torch.addcmul(grad, negative_part, alpha.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # d out / d alpha = -min(x, 0): grad_alpha sums -grad * min(x, 0) over the batch
            product = negative_part.mul_(x)
            batch = x.shape[0]
            ones = torch.ones(batch, dtype=product.dtype, device=product.device)
            per_input = (ones @ product.reshape(batch, -1)).reshape(1, *x.shape[1:])
            grad_alpha = per_input.sum_to_size(alpha.shape).to(alpha.dtype)
        return grad_x, grad_alpha


def soft_masked_relu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha * relu(x) + (1 - alpha) * x`` for a mask ``alpha`` broadcastable to one input of ``x``
    (its shape without the batch dimension, e.g. C x H x W per pixel or C x 1 x 1 per channel)."""
    return _SoftMaskedReLU.apply(x, alpha)
