"""Stage-1 losses of one batch: reconstruction path, weighting and switches,
gradients into the auto-encoder, and the discriminator step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from float.discriminator import Discriminator, d_logistic_loss, lazy_r1_weight, r1_penalty
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_training import (
    MotionLossWeights,
    discriminator_losses,
    generator_losses,
    reconstruct,
)
from float.perceptual import StructureLoss

SIZE = 16


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: extra OpenMP threads only spin on the shared CPUs."""


class Spy(nn.Module):
    """Counts calls of the wrapped module."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def _model(seed=0):
    torch.manual_seed(seed)
    return MotionAutoEncoder(size=SIZE, style_dim=32, motion_dim=4, width=0.125)


def _frames(seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1
    drv = torch.roll(src, shifts=2, dims=-1)  # same "clip", moved
    return src, drv


def test_weights_are_validated():
    assert MotionLossWeights() == MotionLossWeights(1.0, 1.0, 1.0)  # LIA: plain sum
    for bad in ({"l1": -1.0}, {"perceptual": math.nan}, {"adversarial": math.inf}):
        with pytest.raises(ValueError, match="finite and >= 0"):
            MotionLossWeights(**bad)
    with pytest.raises(ValueError, match="all loss weights are 0"):
        MotionLossWeights(0.0, 0.0, 0.0)


def test_reconstruction_is_source_appearance_with_driving_motion():
    model = _model().eval()
    src, drv = _frames()
    with torch.no_grad():
        app_s, _, feats_s = model.encode(src)
        _, lam_d, _ = model.encode(drv)
        expected = model.decode(app_s, model.motion_from_lambdas(lam_d), feats_s)
        got = reconstruct(model, src, drv)
        swapped = reconstruct(model, drv, src)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, swapped, atol=1e-3)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruct(model, src, drv[:1])


def test_total_is_the_weighted_sum_of_the_terms():
    model = _model()
    src, drv = _frames()
    disc = Discriminator(SIZE, 0.125)
    weights = MotionLossWeights(l1=2.0, perceptual=0.5, adversarial=0.1)
    losses, recon = generator_losses(model, src, drv, StructureLoss(), disc, weights)
    assert set(losses) == {"total", "l1", "perceptual", "adversarial", "mouth"}
    assert recon.shape == drv.shape
    assert torch.allclose(losses["l1"], F.l1_loss(recon, drv))
    assert torch.allclose(losses["perceptual"], StructureLoss()(recon, drv))
    assert torch.allclose(losses["adversarial"], F.softplus(-disc(recon)).mean())
    expected = 2.0 * losses["l1"] + 0.5 * losses["perceptual"] + 0.1 * losses["adversarial"]
    assert torch.allclose(losses["total"], expected)
    assert losses["total"].requires_grad and not losses["l1"].requires_grad


@pytest.mark.parametrize("off", ["perceptual", "adversarial"])
def test_switched_off_term_is_zero_and_its_module_not_called(off):
    model = _model()
    src, drv = _frames()
    perceptual = Spy(StructureLoss())
    disc = Spy(Discriminator(SIZE, 0.125))
    weights = MotionLossWeights(**{off: 0.0})
    losses, recon = generator_losses(model, src, drv, perceptual, disc, weights)
    spies = {"perceptual": perceptual, "adversarial": disc}
    assert spies[off].calls == 0
    assert losses[off].item() == 0.0
    on = next(name for name in spies if name != off)
    assert spies[on].calls == 1 and losses[on].item() > 0
    assert torch.allclose(losses["total"], losses["l1"] + losses[on])


def test_modules_may_be_absent_only_when_switched_off():
    model = _model()
    src, drv = _frames()
    l1_only = MotionLossWeights(perceptual=0.0, adversarial=0.0)
    losses, _ = generator_losses(model, src, drv, None, None, l1_only)
    assert torch.allclose(losses["total"], losses["l1"])
    with pytest.raises(ValueError, match="no perceptual module"):
        generator_losses(model, src, drv, None, None, MotionLossWeights(adversarial=0.0))
    with pytest.raises(ValueError, match="no discriminator"):
        generator_losses(model, src, drv, StructureLoss(), None)


def test_gradients_reach_encoder_and_decoder():
    model = _model()
    src, drv = _frames()
    losses, _ = generator_losses(model, src, drv, StructureLoss(), Discriminator(SIZE, 0.125))
    losses["total"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name in ("enc.net_app.convs.0.0.weight",  # appearance encoder (source and driving)
                 "enc.fc.0.weight",  # motion MLP (driving)
                 "dec.direction.weight",  # motion basis
                 "dec.convs.0.conv.weight",
                 "dec.to_flows.0.conv.weight",
                 "dec.to_rgbs.1.conv.0.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_a_few_l1_steps_lower_the_reconstruction_loss():
    model = _model()
    # smooth frames: learnable in a few steps, unlike per-pixel noise
    g = torch.Generator().manual_seed(1)
    src = F.interpolate(torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, size=(SIZE, SIZE), mode="bilinear")
    drv = torch.roll(src, shifts=2, dims=-1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    weights = MotionLossWeights(perceptual=0.0, adversarial=0.0)
    values = []
    for _ in range(10):
        losses, _ = generator_losses(model, src, drv, None, None, weights)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        values.append(losses["l1"].item())
    assert values[-1] < 0.9 * values[0]


def test_discriminator_step_trains_only_the_discriminator():
    model = _model()
    src, drv = _frames()
    disc = Discriminator(SIZE, 0.125)
    _, recon = generator_losses(model, src, drv, None, None,
                                MotionLossWeights(perceptual=0.0, adversarial=0.0))
    out = discriminator_losses(disc, drv, recon)
    assert out["r1"].item() == 0.0
    assert torch.allclose(out["total"], out["logistic"])
    assert torch.allclose(out["logistic"], d_logistic_loss(disc(drv), disc(recon)))
    out["total"].backward()
    assert all(p.grad is None for p in model.parameters())  # the fake was detached
    assert disc.convs[0][0].weight.grad.abs().sum() > 0


def test_discriminator_step_with_r1():
    torch.manual_seed(2)
    disc = Discriminator(SIZE, 0.125)
    real = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    fake = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    weight = lazy_r1_weight(10.0, 16)
    out = discriminator_losses(disc, real, fake, r1_weight=weight)
    ref_real = real.clone().requires_grad_(True)
    expected_r1 = r1_penalty(disc(ref_real), ref_real)
    assert out["r1"].item() > 0 and torch.allclose(out["r1"], expected_r1)
    assert torch.allclose(out["total"], out["logistic"] + weight * out["r1"])
    assert not real.requires_grad  # the caller's batch is left alone
    out["total"].backward()
    assert disc.final_linear[1].weight.grad is not None
    with pytest.raises(ValueError, match="r1_weight"):
        discriminator_losses(disc, real, fake, r1_weight=-1.0)
