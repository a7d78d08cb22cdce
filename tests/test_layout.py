"""Channels-last and NCHW give the same outputs and gradients, for every model space and every mask.

Each space is built small, once in NCHW and once converted to channels-last with the same weights;
the same batch goes through both with every site in each mode SNL and the strategies use (all on,
soft masks per pixel, per channel and per layer, fixed binary masks), and the outputs and the
gradients of the input, the weights and the masks are compared. float32, as training runs, so the
two layouts may take different convolution algorithms and sum in different orders: every element
must agree within 1e-4 times the largest magnitude in its tensor (for the weights' gradients: in
all of them, since some are zero in exact arithmetic, e.g. a bias followed by batch norm, and hold
only rounding noise); float32 rounding of sums over a batch is ~1e-6 of that. On CPU, and on CUDA where present.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search.data import Loader, load_dataset
from search.layout import CHANNELS_LAST, NCHW, has_onednn_unsafe_conv, preferred_format
from search.relu import sites, trace_shapes
from search.spaces import build_model

# Each space small enough to run in a second, at CIFAR's input size (resnet_tiny: digits').
SPACES = {
    "resnet18": ({"width": 0.125}, (3, 32, 32)),
    "resnet34": ({"width": 0.125}, (3, 16, 16)),
    "resnet_tiny": ({}, (1, 8, 8)),
    "wrn22_8": ({"depth": 10, "widen_factor": 1}, (3, 16, 16)),
    "cnet": ({"layers": 3, "width": 8, "ops": ("conv3x3", "sepconv5x5", "avgpool"), "skips": ("0-2", "1-3")}, (3, 16, 16)),
}
MODES = ("on", "pixel", "channel", "layer", "binary")
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
TOLERANCE = 1e-4  # of the largest magnitude in the tensor compared


def _set_masks(model: nn.Module, mode: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for site in sites(model):
        if mode == "on":
            site.set_mask(None)
        elif mode == "binary":
            site.set_mask(torch.rand(site.mask_shape("pixel"), generator=generator) > 0.5)
        else:
            site.set_mask(torch.rand(site.mask_shape(mode), generator=generator), trainable=True)  # type: ignore[arg-type]


def _forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads  # type: ignore[return-value]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, scale: float | None = None) -> None:
    scale = float(expected.abs().max()) if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=0, atol=TOLERANCE * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("space", sorted(SPACES))
def test_channels_last_matches_nchw(space: str, device: str) -> None:
    options, shape = SPACES[space]
    torch.manual_seed(0)
    nchw = build_model(space, 10, shape, **options)
    trace_shapes(nchw, shape)
    assert preferred_format(torch.device(device), nchw) == CHANNELS_LAST or not torch.backends.mkldnn.is_available()
    batch = torch.randn(6, *shape, device=device)
    for mode in MODES:
        _set_masks(nchw, mode, seed=1)
        last = build_model(space, 10, shape, **options)
        trace_shapes(last, shape)
        _set_masks(last, mode, seed=1)
        last.load_state_dict(nchw.state_dict())
        nchw.to(device).train()
        last.to(device, memory_format=CHANNELS_LAST).train()
        out_a, x_a, grads_a = _forward_backward(nchw, batch)
        out_b, x_b, grads_b = _forward_backward(last, batch.contiguous(memory_format=CHANNELS_LAST))
        _assert_close(out_b, out_a, f"{space} {mode} outputs")
        _assert_close(x_b, x_a, f"{space} {mode} input gradient")
        assert grads_a.keys() == grads_b.keys() and grads_a
        largest = max(float(g.abs().max()) for g in grads_a.values())
        for name in grads_a:
            _assert_close(grads_b[name], grads_a[name], f"{space} {mode} gradient of {name}", largest)
        if mode in ("pixel", "channel", "layer"):
            assert any(name.endswith("mask") for name in grads_a), "the soft masks get gradients"
        nchw.zero_grad(set_to_none=True)


@pytest.mark.parametrize("device", DEVICES)
def test_loaders_hand_out_the_format_asked_for_with_the_same_values(device: str) -> None:
    data = load_dataset("digits")
    last = Loader(data.train, data.info, 32, torch.device(device), shuffle=True, augment=True, seed=3, memory_format=CHANNELS_LAST)
    plain = Loader(data.train, data.info, 32, torch.device(device), shuffle=True, augment=True, seed=3)
    (x, y), (x_plain, y_plain) = next(iter(last)), next(iter(plain))
    # digits has one channel, where the two layouts are the same memory: the strides say which was asked for
    assert x.is_contiguous(memory_format=CHANNELS_LAST) and x_plain.is_contiguous()
    torch.testing.assert_close(x, x_plain, rtol=0, atol=0)
    assert torch.equal(y, y_plain)


def test_models_with_a_convolution_onednn_gets_wrong_in_channels_last_train_in_nchw_on_cpu() -> None:
    thin = build_model("resnet18", 10, (3, 32, 32), width=0.0625)  # 4-channel 1x1 stride-2 shortcuts
    assert has_onednn_unsafe_conv(thin) and preferred_format(torch.device("cpu"), thin) == NCHW
    for safe in (build_model("resnet18", 10, (3, 32, 32), width=0.25), build_model("resnet_tiny", 10, (1, 8, 8))):
        assert not has_onednn_unsafe_conv(safe)
    assert preferred_format(torch.device("cuda"), thin) == CHANNELS_LAST, "cuDNN has no such defect"
