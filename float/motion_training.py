"""Losses of one stage-1 batch: training the motion auto-encoder as LIA does.

A source and a driving frame come from the same clip. The driving frame is
reconstructed from the source's appearance latent and feature maps, moved by
the driving frame's motion. The generator side is weighted L1 +
perceptual + non-saturating adversarial (LIA: all weights 1, with its VGG
loss carrying per-layer weights of 10); the discriminator side is the
logistic loss, plus R1 when the caller asks for it.

No optimiser logic here: the trainer owns optimisers, ``zero_grad`` and
``requires_grad`` switching. Note that the generator's adversarial term
backpropagates through the discriminator too; LIA switches the discriminator's
``requires_grad`` off for the generator step to save that work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from float.discriminator import d_logistic_loss, g_nonsaturating_loss, r1_penalty
from float.motion_autoencoder import MotionAutoEncoder


@dataclass(frozen=True)
class MotionLossWeights:
    """Generator-side loss weights; 0 switches a term off (its module is then not run)."""

    l1: float = 1.0
    perceptual: float = 1.0
    adversarial: float = 1.0

    def __post_init__(self):
        for name in ("l1", "perceptual", "adversarial"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {value}")
        if not (self.l1 or self.perceptual or self.adversarial):
            raise ValueError("all loss weights are 0: nothing to train")


def reconstruct(model: MotionAutoEncoder, source: Tensor, driving: Tensor) -> Tensor:
    """The driving frames as rebuilt from the source frames' appearance + driving motion."""
    if source.shape != driving.shape:
        raise ValueError(f"source and driving batches differ in shape: "
                         f"{tuple(source.shape)} vs {tuple(driving.shape)}")
    appearance, _, feats = model.encode(source)
    motion, _ = model.encode_motion(driving)  # its feature maps are not needed
    return model.decode(appearance, motion, feats)


def generator_losses(model: MotionAutoEncoder, source: Tensor, driving: Tensor,
                     perceptual: nn.Module | None = None,
                     discriminator: nn.Module | None = None,
                     weights: MotionLossWeights = MotionLossWeights(),
                     ) -> tuple[dict[str, Tensor], Tensor]:
    """({"total", "l1", "perceptual", "adversarial"}, reconstruction) of one batch.

    Images are (B,3,S,S) in [-1,1]. The per-term values are unweighted and
    detached (for logging); ``total`` is the weighted sum and carries the graph.
    A term whose weight is 0 is reported as 0 and its module is not called.
    """
    if weights.perceptual and perceptual is None:
        raise ValueError("perceptual weight > 0 but no perceptual module given")
    if weights.adversarial and discriminator is None:
        raise ValueError("adversarial weight > 0 but no discriminator given")
    recon = reconstruct(model, source, driving)
    zero = recon.new_zeros(())
    terms = {"l1": zero, "perceptual": zero, "adversarial": zero}
    if weights.l1:
        terms["l1"] = F.l1_loss(recon, driving)
    if weights.perceptual:
        terms["perceptual"] = perceptual(recon, driving)
    if weights.adversarial:
        terms["adversarial"] = g_nonsaturating_loss(discriminator(recon))
    total = (weights.l1 * terms["l1"] + weights.perceptual * terms["perceptual"]
             + weights.adversarial * terms["adversarial"])
    losses = {"total": total, **{name: value.detach() for name, value in terms.items()}}
    return losses, recon


def discriminator_losses(discriminator: nn.Module, real: Tensor, fake: Tensor,
                         r1_weight: float = 0.0) -> dict[str, Tensor]:
    """{"total", "logistic", "r1"} of one discriminator step.

    ``fake`` is detached (this step trains the discriminator only). With
    ``r1_weight`` > 0 the R1 penalty of the real batch is added as
    ``r1_weight * r1``; for StyleGAN2's lazy scheme pass
    ``lazy_r1_weight(gamma, k)`` on every k-th step and 0 otherwise. ``r1`` is
    reported unweighted and detached (0 when not computed).
    """
    if r1_weight < 0 or not math.isfinite(r1_weight):
        raise ValueError(f"r1_weight must be finite and >= 0, got {r1_weight}")
    real = real.detach()
    if r1_weight:
        real.requires_grad_(True)
    real_logits = discriminator(real)
    fake_logits = discriminator(fake.detach())
    logistic = d_logistic_loss(real_logits, fake_logits)
    total, r1 = logistic, logistic.new_zeros(())
    if r1_weight:
        r1 = r1_penalty(real_logits, real)
        total = total + r1_weight * r1
    return {"total": total, "logistic": logistic.detach(), "r1": r1.detach()}
