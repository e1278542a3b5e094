"""StyleGAN2 discriminator: shapes, minibatch stddev, the logistic losses and R1."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from float.discriminator import (
    Discriminator,
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_r1_weight,
    minibatch_stddev,
    r1_penalty,
)

WIDTH = 0.125


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: extra OpenMP threads only spin on the shared CPUs."""


@pytest.mark.parametrize("size,batch", [(16, 2), (32, 3), (16, 6)])
def test_output_is_one_logit_per_image(size, batch):
    torch.manual_seed(0)
    d = Discriminator(size, WIDTH)
    out = d(torch.rand(batch, 3, size, size) * 2 - 1)
    assert out.shape == (batch, 1) and torch.isfinite(out).all()


def test_layout_follows_stylegan2():
    d = Discriminator(32, WIDTH)
    # 1x1 from RGB, then one ResBlock per halving from 32 px down to 4 px
    assert len(d.convs) == 1 + 3
    names = set(d.state_dict())
    assert {"convs.0.0.weight", "convs.1.conv1.0.weight", "convs.3.skip.1.weight",
            "final_conv.0.weight", "final_linear.0.weight", "final_linear.1.bias"} <= names
    c4 = d.final_linear[1].weight.shape[1]
    assert d.final_conv[0].weight.shape[1] == c4 + 1  # + the stddev map
    assert d.final_linear[0].weight.shape == (c4, c4 * 16)


def test_bad_sizes_and_inputs_are_refused():
    for size in (4, 12, 2048):
        with pytest.raises(ValueError, match="power of two"):
            Discriminator(size, WIDTH)
    d = Discriminator(16, WIDTH)
    with pytest.raises(ValueError, match=r"\(B,3,16,16\)"):
        d(torch.zeros(1, 3, 32, 32))


def test_minibatch_stddev_groups_strided_samples():
    # batch 4, groups of 2: samples {0, 2} and {1, 3} (StyleGAN2's grouping)
    x = torch.zeros(4, 2, 3, 3)
    x[3] = 2.0  # group {1, 3}: std 1 everywhere; group {0, 2}: identical samples
    out = minibatch_stddev(x, group_size=2)
    assert out.shape == (4, 3, 3, 3)
    assert torch.equal(out[:, :2], x)
    stat = out[:, 2]
    assert torch.allclose(stat[[1, 3]], torch.ones(2, 3, 3))
    assert torch.allclose(stat[[0, 2]], torch.full((2, 3, 3), 1e-4))


def test_minibatch_stddev_odd_batch_uses_a_divisor():
    x = torch.randn(6, 4, 2, 2)
    out = minibatch_stddev(x, group_size=4)  # 6 is not divisible by 4: groups of 3
    ref = torch.sqrt(x.view(3, 2, 4, 2, 2).var(0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))
    assert torch.allclose(out[:, 4, 0, 0], ref.repeat(3))


def test_loss_values():
    zero = torch.zeros(5, 1)
    assert math.isclose(d_logistic_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(g_nonsaturating_loss(zero).item(), math.log(2), rel_tol=1e-6)
    confident = d_logistic_loss(torch.full((5, 1), 20.0), torch.full((5, 1), -20.0))
    assert confident.item() < 1e-8
    assert g_nonsaturating_loss(torch.full((5, 1), -20.0)).item() > 19


def test_discriminator_learns_bright_from_dark():
    torch.manual_seed(0)
    d = Discriminator(16, WIDTH)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = 0.6 + 0.2 * torch.rand(4, 3, 16, 16)
    fake = -0.6 - 0.2 * torch.rand(4, 3, 16, 16)
    losses = []
    for _ in range(15):
        loss = d_logistic_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < 2 * math.log(2) - 0.5


class _Linear(nn.Module):
    """logit = <w, image>: its input gradient is w, so R1 = |w|^2."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


class _Blind(nn.Module):
    def __init__(self, uses_input: bool):
        super().__init__()
        self.b = nn.Parameter(torch.ones(1))
        self.uses_input = uses_input

    def forward(self, x):
        out = self.b.expand(x.shape[0], 1)
        return out + 0 * x.mean() if self.uses_input else out


def test_r1_is_squared_input_gradient_norm():
    w = torch.randn(3, 4, 4)
    d = _Linear(w.clone())
    real = torch.rand(5, 3, 4, 4, requires_grad=True)
    r1 = r1_penalty(d(real), real)
    assert torch.allclose(r1, w.pow(2).sum())
    r1.backward()  # create_graph: d(|w|^2)/dw = 2w reaches the parameters
    assert torch.allclose(d.w.grad, 2 * w)


@pytest.mark.parametrize("uses_input", [False, True])
def test_r1_is_zero_for_a_discriminator_ignoring_its_input(uses_input):
    d = _Blind(uses_input)
    real = torch.rand(2, 3, 8, 8, requires_grad=True)
    assert r1_penalty(d(real), real).item() == 0.0


def test_r1_of_the_real_discriminator_is_positive_and_trains_it():
    torch.manual_seed(1)
    d = Discriminator(16, WIDTH)
    real = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    r1 = r1_penalty(d(real), real)
    assert r1.item() > 0
    r1.backward()
    assert d.convs[0][0].weight.grad.abs().sum() > 0
    assert d.final_linear[1].weight.grad.abs().sum() > 0


def test_r1_needs_images_that_require_grad():
    d = Discriminator(16, WIDTH)
    real = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(d(real), real)


def test_lazy_r1_weight():
    assert lazy_r1_weight(10.0, 16) == 80.0  # StyleGAN2 defaults: gamma 10, every 16 steps
    assert lazy_r1_weight(10.0, 1) == 5.0
    with pytest.raises(ValueError):
        lazy_r1_weight(-1.0, 16)
    with pytest.raises(ValueError):
        lazy_r1_weight(10.0, 0)
