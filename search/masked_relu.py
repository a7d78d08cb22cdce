"""The soft-masked ReLU that SNL trains: its cost is the hot path of mask training."""

from __future__ import annotations

import torch


class _SoftMaskedReLU(torch.autograd.Function):
    """``x - a * min(x, 0)`` (equal to ``a*relu(x) + (1-a)*x``) with one fused forward op.

    Autograd of the plain expression keeps three full-size intermediates; this keeps only ``x``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        return torch.addcmul(x, alpha, x.clamp(max=0), value=-1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        negative = x.clamp(max=0)
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(negative < 0, grad * (1 - alpha), grad)
        if ctx.needs_input_grad[1]:
            reduce_dims = [0] + [d + 1 for d, size in enumerate(alpha.shape) if size == 1 and x.shape[d + 1] != 1]
            grad_alpha = -(grad * negative).sum(dim=reduce_dims, keepdim=True).squeeze(0)
        return grad_x, grad_alpha


def soft_masked_relu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha * relu(x) + (1 - alpha) * x`` for a mask ``alpha`` broadcastable to one input."""
    return _SoftMaskedReLU.apply(x, alpha)
