"""ReLU sites: conversion of user models, masks, and the one counting function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.checkpoint import load_model, save_model
from search.errors import SearchError
from search.relu import ReLUSite, active_relus, linearizable, relu_count, relu_table, sites, trace_shapes
from search.spaces import build_model


class ModuleNet(nn.Module):
    """A user model written with nn.ReLU modules (one reused twice, as torchvision's ResNet does)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv2(self.act(self.conv1(x)))))


class FunctionalNet(nn.Module):
    """A user model calling F.relu, torch.relu and Tensor.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)).relu()
        return self.fc(x.mean((2, 3)))


class UntraceableFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() >= 0:  # data-dependent control flow: torch.fx cannot trace this
            return F.relu(self.conv(x))
        return self.conv(x)


class UntraceableModules(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.relu(y) if y.sum() > -1e9 else y


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    a.eval(), b.eval()
    x = torch.randn(4, *shape)
    return torch.allclose(a(x), b(x), atol=1e-6)


def test_module_relus_become_sites_with_outputs_unchanged() -> None:
    model = ModuleNet()
    converted = linearizable(model, (3, 8, 8))
    # conv1 output 8x8x8, conv2 output 4x4x4 (the reused nn.ReLU becomes two sites), head 16
    assert relu_count(converted, (3, 8, 8)) == 8 * 8 * 8 + 4 * 4 * 4 + 16
    assert len(sites(converted)) == 3
    assert _same_outputs(model, converted, (3, 8, 8))
    assert not any(isinstance(m, ReLUSite) for m in model.modules()), "the user's model must be left untouched"


def test_functional_relus_become_sites_with_outputs_unchanged() -> None:
    model = FunctionalNet()
    converted = linearizable(model, (3, 6, 6))
    assert isinstance(converted, torch.fx.GraphModule)
    assert relu_count(converted, (3, 6, 6)) == 3 * 6 * 6 * 6
    assert _same_outputs(model, converted, (3, 6, 6))


def test_relu_count_converts_plain_models_on_the_fly() -> None:
    assert relu_count(FunctionalNet(), (3, 6, 6)) == 3 * 216
    assert relu_count(ModuleNet(), (3, 8, 8)) == 512 + 64 + 16


def test_untraceable_model_with_functional_relu_is_a_clear_error() -> None:
    with pytest.raises(SearchError, match=r"cannot convert UntraceableFunctional.*test_relu\.py:\d+"):
        linearizable(UntraceableFunctional(), (3, 8, 8))


def test_untraceable_model_with_relu_modules_still_converts() -> None:
    model = UntraceableModules()
    converted = linearizable(model, (3, 8, 8))
    assert relu_count(converted, (3, 8, 8)) == 4 * 6 * 6
    assert _same_outputs(model, converted, (3, 8, 8))


@pytest.mark.parametrize("model_fn", [ModuleNet, FunctionalNet])
def test_switching_a_site_off_makes_it_identity_and_drops_its_size(model_fn) -> None:  # type: ignore[no-untyped-def]
    shape = (3, 8, 8)
    converted = linearizable(model_fn(), shape)
    full = relu_count(converted, shape)
    first = sites(converted)[0]
    probe = torch.randn(2, *first.shape)
    first.switch_off()
    assert torch.equal(first(probe), probe)
    assert relu_count(converted, shape) == full - first.size
    first.switch_on()
    assert torch.equal(first(probe), F.relu(probe))
    assert relu_count(converted, shape) == full


def test_channel_and_pixel_masks_count_and_act_per_position() -> None:
    model = build_model("resnet_tiny", input_size=(1, 8, 8))
    trace_shapes(model, (1, 8, 8))
    site = sites(model)[0]  # stem: 16 x 8 x 8
    full = relu_count(model, (1, 8, 8))
    channel = torch.zeros(site.mask_shape("channel"), dtype=torch.bool)
    channel[:5] = True
    site.set_mask(channel)
    assert relu_count(model, (1, 8, 8)) == full - (16 - 5) * 64
    x = torch.randn(3, 16, 8, 8)
    out = site(x)
    assert torch.equal(out[:, :5], F.relu(x[:, :5])) and torch.equal(out[:, 5:], x[:, 5:])
    pixel = torch.rand(site.mask_shape("pixel")) > 0.5
    site.set_mask(pixel)
    assert relu_count(model, (1, 8, 8)) == full - site.size + int(pixel.sum())
    assert torch.equal(site(x), torch.where(pixel, F.relu(x), x))


def test_soft_mask_counts_above_threshold_and_binarizes() -> None:
    site = ReLUSite("s")
    site.shape = (2, 2, 2)
    site.set_mask(torch.tensor([0.5, 0.005, 1.0, 0.0, 0.02, 0.009, 0.3, 0.0]).view(2, 2, 2), trainable=True)
    site.count_threshold = 0.01
    assert site.mode == "soft" and isinstance(site.mask, nn.Parameter)
    assert site.active() == 4
    x = torch.randn(5, 2, 2, 2)
    alpha = site.mask.detach()
    assert torch.allclose(site(x), alpha * F.relu(x) + (1 - alpha) * x, atol=1e-6)
    site.binarize()
    assert site.mode == "masked" and site.mask.dtype == torch.bool and not isinstance(site.mask, nn.Parameter)
    assert site.active() == 4


def test_active_relus_is_the_count_for_every_kind_of_mask() -> None:
    """The per-step count (one host sync for the model) equals relu_count's, site kinds mixed."""
    model = build_model("resnet18", input_size=(3, 32, 32), width=0.125)
    trace_shapes(model, (3, 32, 32))
    first, second, third, fourth, *_ = sites(model)
    generator = torch.Generator().manual_seed(0)
    first.switch_off()
    second.set_mask(torch.rand(second.mask_shape("pixel"), generator=generator) > 0.7)
    third.set_mask(torch.rand(third.mask_shape("channel"), generator=generator) > 0.5)
    fourth.set_mask(torch.rand(fourth.mask_shape("pixel"), generator=generator), trainable=True)
    fourth.count_threshold = 0.4
    expected = relu_count(model, (3, 32, 32))
    assert active_relus(model) == expected and isinstance(active_relus(model), int)
    assert expected == sum(site.active() for site in sites(model)) < relu_count(build_model("resnet18", input_size=(3, 32, 32), width=0.125), (3, 32, 32))


def test_soft_mask_gradient_matches_the_released_formula() -> None:
    x = torch.randn(4, 3, 5, 5, dtype=torch.double, requires_grad=True)
    for shape in [(3, 5, 5), (3, 1, 1)]:
        site = ReLUSite("s")
        site.shape = (3, 5, 5)
        site.set_mask(torch.rand(shape, dtype=torch.double), trainable=True)
        alpha = site.mask
        ours = torch.autograd.grad(site(x).pow(2).sum(), (x, alpha))
        reference = torch.autograd.grad((alpha * F.relu(x) + (1 - alpha) * x).pow(2).sum(), (x, alpha))
        for a, b in zip(ours, reference):
            assert torch.allclose(a, b)


def test_masks_round_trip_through_a_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = build_model("resnet_tiny", input_size=(1, 8, 8))
    trace_shapes(model, (1, 8, 8))
    all_sites = sites(model)
    all_sites[0].switch_off()
    all_sites[1].set_mask(torch.rand(all_sites[1].mask_shape("pixel")) > 0.3)
    all_sites[2].set_mask(torch.rand(all_sites[2].mask_shape("channel")) > 0.5)
    count = relu_count(model, (1, 8, 8))
    save_model(model, tmp_path / "m.pt", "resnet_tiny", {}, 10, (1, 8, 8))
    loaded, _ = load_model(tmp_path / "m.pt")
    assert relu_count(loaded, (1, 8, 8)) == count < 4608
    assert _same_outputs(model, loaded, (1, 8, 8))


def test_a_site_reached_twice_is_a_clear_error() -> None:
    site = ReLUSite("shared")
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), site, nn.Conv2d(2, 2, 3, padding=1), site)
    with pytest.raises(SearchError, match="used 2 times"):
        trace_shapes(model, (1, 4, 4))


def test_relu_table_rows_sum_to_the_count() -> None:
    model = build_model("resnet18", width=0.25)
    rows = relu_table(model, (3, 32, 32))
    assert sum(r.active for r in rows) == relu_count(model, (3, 32, 32)) == 139_264
    assert rows[0].stage == "stem"
