"""StyleGAN2 discriminator and GAN losses for training the motion auto-encoder (stage 1).

LIA trains its generator against the StyleGAN2 discriminator (residual
architecture) with the non-saturating logistic loss. Module names follow the
StyleGAN2 PyTorch port LIA uses (``convs``, ``final_conv``, ``final_linear``),
built from the same layers as the auto-encoder's encoder.

R1 regularisation (StyleGAN2): ``r1_penalty`` is the squared gradient norm of
the real logits w.r.t. the real images. StyleGAN2 applies it lazily, every
``k`` (16) discriminator steps, weighted ``gamma / 2 * k`` so that its average
strength equals ``gamma / 2`` per step (``lazy_r1_weight``). LIA's own trainer
does not use R1; whether and how often to apply it is the trainer's choice.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from float.motion_autoencoder import CHANNELS, channels_for
from float.motion_layers import ConvLayer, EqualLinear, ResBlock, fused_leaky_relu


class EqualLinearLeaky(EqualLinear):
    """EqualLinear + biased, scaled leaky ReLU (StyleGAN2's ``activation='fused_lrelu'``)."""

    def forward(self, x: Tensor) -> Tensor:
        # the bias is added inside the activation, as in StyleGAN2's fused op
        return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias)


def minibatch_stddev(x: Tensor, group_size: int = 4, num_features: int = 1) -> Tensor:
    """Append ``num_features`` maps holding the feature std within groups of samples.

    Lets the discriminator see a lack of variety across a batch. The group is
    min(group_size, batch), reduced to the largest divisor of the batch, so
    any batch size works (StyleGAN2 requires the batch to be divisible).
    Samples i, i + B/G, i + 2B/G, ... form one group, as in StyleGAN2.
    """
    b, c, h, w = x.shape
    if c % num_features:
        raise ValueError(f"{c} channels cannot be split into {num_features} stddev features")
    group = min(group_size, b)
    while b % group:
        group -= 1
    y = x.view(group, -1, num_features, c // num_features, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)  # (B/G, F, C/F, H, W)
    y = y.mean(dim=(2, 3, 4))  # (B/G, F)
    y = y.repeat(group, 1)[:, :, None, None].expand(b, num_features, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Images (B,3,size,size) in [-1,1] -> realness logits (B,1)."""

    def __init__(self, size: int, width: float = 1.0, stddev_group: int = 4):
        super().__init__()
        if size not in CHANNELS or size < 8:
            raise ValueError(f"discriminator size must be a power of two in [8, 1024], got {size}")
        ch = channels_for(width)
        self.size = size
        self.stddev_group = stddev_group
        self.stddev_feat = 1
        layers: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_channel = ch[size]
        for i in range(int(math.log2(size)), 2, -1):
            out_channel = ch[2 ** (i - 1)]
            layers.append(ResBlock(in_channel, out_channel))
            in_channel = out_channel
        self.convs = nn.Sequential(*layers)
        self.final_conv = ConvLayer(in_channel + self.stddev_feat, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinearLeaky(ch[4] * 4 * 4, ch[4]),
                                          EqualLinear(ch[4], 1))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.size, self.size):
            raise ValueError(f"discriminator expects images (B,3,{self.size},{self.size}), "
                             f"got {tuple(images.shape)}")
        x = self.convs(images)
        x = minibatch_stddev(x, self.stddev_group, self.stddev_feat)
        x = self.final_conv(x)
        return self.final_linear(x.flatten(1))


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator's non-saturating logistic loss: softplus(-real) + softplus(fake), means."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator's non-saturating loss: softplus(-fake), mean."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1: per-sample sum of squared d(real logits)/d(real images), mean over the batch.

    ``real_images`` must have ``requires_grad`` set before the discriminator
    ran on them. The gradient graph is kept (create_graph), so the penalty
    can be backpropagated into the discriminator's parameters. A logit that
    does not depend on the images gives 0.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad before the discriminator "
                         "runs on them (real.detach().requires_grad_())")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True, allow_unused=True)
    if grad is None:
        return real_logits.new_zeros(())
    return grad.pow(2).flatten(1).sum(1).mean()


def lazy_r1_weight(gamma: float, every: int) -> float:
    """Weight of R1 on the steps it is applied (every ``every`` steps): gamma / 2 * every."""
    if gamma < 0 or every < 1:
        raise ValueError(f"need gamma >= 0 and every >= 1, got gamma={gamma}, every={every}")
    return gamma / 2 * every
