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

import itertools
import math
from dataclasses import dataclass

import torch
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
    mouth: float = 0.0  # extra L1 on the mouth region (MOUTH_BOX); not in LIA

    def __post_init__(self):
        for name in ("l1", "perceptual", "adversarial", "mouth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {value}")
        if not (self.l1 or self.perceptual or self.adversarial or self.mouth):
            raise ValueError("all loss weights are 0: nothing to train")


# Where the mouth and jaw are in a face crop of the official framing (1.6x the SFD box, dlib's landmark box;
# preprocess/face_dlib.py): x0, x1, y0, y1 as shares of the side. Measured with dlib's 68 points on the
# real development crops: the mouth points span x 0.36-0.63 and y 0.55-0.77 over 44 frames of 8 people.
MOUTH_BOX = (0.30, 0.70, 0.52, 0.82)


def mouth_region(images: Tensor) -> Tensor:
    """The MOUTH_BOX of face crops (..., S, S): what a talking-head model must move and a whole-frame loss or
    PSNR barely weighs."""
    side_y, side_x = images.shape[-2:]
    x0, x1, y0, y1 = MOUTH_BOX
    return images[..., int(y0 * side_y):int(round(y1 * side_y)), int(x0 * side_x):int(round(x1 * side_x))]


def mouth_l1(recon: Tensor, driving: Tensor) -> Tensor:
    """L1 inside MOUTH_BOX. The mouth is a few percent of a crop: the whole-frame L1 hardly sees it, and a
    model trained on a few people learns the head's motion and leaves an unseen person's mouth closed."""
    return F.l1_loss(mouth_region(recon), mouth_region(driving))


def reconstruct(model: nn.Module, source: Tensor, driving: Tensor) -> Tensor:
    """The driving frames as rebuilt from the source frames' appearance + driving motion.

    Goes through ``model(source, driving)`` (MotionAutoEncoder.forward), so a DDP or
    compiled wrapper of the auto-encoder works here as well as the bare module."""
    return model(source, driving)


def generator_losses(model: nn.Module, source: Tensor, driving: Tensor,
                     perceptual: nn.Module | None = None,
                     discriminator: nn.Module | None = None,
                     weights: MotionLossWeights = MotionLossWeights(),
                     ) -> tuple[dict[str, Tensor], Tensor]:
    """({"total", "l1", "perceptual", "adversarial", "mouth"}, reconstruction) of one batch.

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
    terms = {"l1": zero, "perceptual": zero, "adversarial": zero, "mouth": zero}
    if weights.l1:
        terms["l1"] = F.l1_loss(recon, driving)
    if weights.mouth:
        terms["mouth"] = mouth_l1(recon, driving)
    if weights.perceptual:
        terms["perceptual"] = perceptual(recon, driving)
    if weights.adversarial:
        terms["adversarial"] = g_nonsaturating_loss(discriminator(recon))
    total = (weights.l1 * terms["l1"] + weights.perceptual * terms["perceptual"]
             + weights.adversarial * terms["adversarial"] + weights.mouth * terms["mouth"])
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


@torch.no_grad()
def prepare_for_training(model: MotionAutoEncoder, mask_logit: float = 4.0) -> MotionAutoEncoder:
    """Start a from-scratch auto-encoder at "copy the source frame" instead of at noise.

    With the StyleGAN2 initialisation the first reconstructions are colour noise
    and plain L1 spends hundreds of steps learning to pass the source image
    through. Here, before any training:
    - every flow head predicts zero offset (the identity warp) and the finest
      level's mask opens (sigmoid(mask_logit)) to the warped source features;
    - the encoder's 1x1 stem copies the RGB channels into its first three
      feature channels (shifted to stay positive through the leaky ReLU), and
      the finest ToRGB maps them back, while the coarser ToRGBs start at zero.
    So the decoder's first output is the source frame itself; training then only
    has to learn the motion. Names and shapes are untouched (official layout).

    The parameters the official forward never uses (``dec.to_rgb1.*``, every
    ``noise.weight``: kept for the checkpoint's names) are frozen, so DDP does not
    wait for gradients that never come.
    """
    for name, parameter in model.named_parameters():
        if name.startswith("dec.to_rgb1.") or name.endswith(".noise.weight"):
            parameter.requires_grad_(False)
    for level, to_flow in enumerate(model.dec.to_flows):
        to_flow.conv.weight.zero_()
        to_flow.bias.zero_()
        to_flow.bias[0, 2] = mask_logit if level == len(model.dec.to_flows) - 1 else 0.0
    stem_conv, stem_act = model.enc.net_app.convs[0][0], model.enc.net_app.convs[0][1]
    stem_conv.weight[:3].zero_()
    for channel in range(3):
        stem_conv.weight[channel, channel, 0, 0] = 1.0 / stem_conv.scale  # effective weight 1
    stem_act.bias[0, :3] = 1.0  # feature = sqrt2 * (x + 1) >= 0 for x in [-1, 1]: the leaky ReLU is linear
    last = len(model.dec.to_rgbs) - 1
    for level, to_rgb in enumerate(model.dec.to_rgbs):
        conv = to_rgb.conv[0]
        conv.weight.zero_()
        to_rgb.conv[1].bias.zero_()
        to_rgb.bias.zero_()
        if level == last:
            for channel in range(3):
                conv.weight[channel, channel, 0, 0] = 0.5 / conv.scale  # sqrt2 * lrelu(0.5 * sqrt2 * (x+1)) = x + 1
            to_rgb.bias.fill_(-1.0)
    return model


def to_channels_last(*items):
    """Modules and 4-D image tensors in channels-last (NHWC) memory format, the layout cuDNN's tensor-core
    convolutions run on without transposing; values and shapes are unchanged. A module's 4-D parameters and
    buffers are converted in place (``Module.to(memory_format=...)`` refuses the 5-D modulated-conv weights
    these modules hold). Returns the items (one item: itself), so ``x = to_channels_last(x)`` reads as a
    conversion."""
    out = []
    for item in items:
        if isinstance(item, nn.Module):
            with torch.no_grad():
                for tensor in itertools.chain(item.parameters(), item.buffers()):
                    if tensor.dim() == 4:
                        tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
            out.append(item)
        else:
            out.append(item.contiguous(memory_format=torch.channels_last))
    return out[0] if len(out) == 1 else tuple(out)
