"""StyleGAN2-style building blocks of the LIA motion auto-encoder, in plain torch.

The official FLOAT code takes these from StyleGAN2 (equalised learning rate,
modulated convolutions, FIR up/down-sampling). Here every op is written with
ordinary torch functions (no custom CUDA kernels) and nothing pins a device.
Attribute names (``weight``, ``bias``, ``kernel``, ``modulation``, ``conv``,
``upsample``...) follow the official modules, because they make up the
parameter names stored in the official checkpoint.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLUR_KERNEL = (1, 3, 3, 1)
LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)  # keeps the activation variance after the leaky ReLU


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = LEAKY_SLOPE,
                     scale: float = LEAKY_GAIN) -> Tensor:
    """Bias add + leaky ReLU + gain; what the official fused CUDA op computes."""
    return F.leaky_relu(x + bias, negative_slope) * scale


def make_kernel(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, FIR-filter, downsample (StyleGAN2's upfirdn2d).

    ``pad`` is (before, after), applied to both axes; negative values crop.
    """
    n, c, h, w = x.shape
    if up > 1:
        # zero insertion: every sample is followed by up-1 zeros on each axis
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    # true convolution (flipped kernel), each channel on its own (depthwise: about
    # 2x faster on CPU than folding channels into the batch); a strided valid
    # convolution equals the full-rate one subsampled by `down`
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias + scaled leaky ReLU on (B,C,H,W) maps."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channel, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    """Leaky ReLU without gain (the official module of this name); for bias-free ConvLayers."""

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE)


class Blur(nn.Module):
    """FIR low-pass with fixed padding; the gain restores energy after zero insertion."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * (upsample_factor ** 2))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling (used on the RGB and flow skip paths)."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * (factor ** 2))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv with weights stored at unit variance and scaled at run time (equalised lr)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride,
                        padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (no activation, as the auto-encoder uses it)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [activation]; a Sequential so the names are ``N.weight``."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int,
                 downsample: bool = False, bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(BLUR_KERNEL, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        # with an activation the bias lives in the activation, not the conv
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride,
                                  padding=padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU())
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Encoder residual block: two convs (second downsamples) + 1x1 downsampled skip."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, optionally 2x upsampling.

    The official code builds one weight per sample and runs a grouped conv.
    Here the style scales the input channels and the demodulation scales the
    output channels around one shared conv: the same maths, but no per-sample
    weight copies, which matters when a whole clip is decoded as one batch.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = Blur(BLUR_KERNEL, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        style = self.modulation(style)  # (B, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # norm of each sample's modulated filter: sum_i (w_oi * s_i)^2
            energy = style.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()  # (B, out)
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        if self.upsample:
            out = self.blur(out)  # per-channel linear, so it commutes with demodulation
        return out


class NoiseInjection(nn.Module):
    """Kept for the checkpoint's ``noise.weight``; the auto-encoder never injects noise."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return x if noise is None else x + self.weight * noise


class ConstantInput(nn.Module):
    """Learned 4x4 start map of the decoder, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv + (unused) noise + biased leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style)))


class ToRGB(nn.Module):
    """1x1 conv (with the official activation) to RGB, plus the upsampled coarser RGB."""

    def __init__(self, in_channel: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_KERNEL)
        self.conv = ConvLayer(in_channel, 3, 1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def identity_grid(size: int, batch: int, like: Tensor) -> Tensor:
    """(batch, size, size, 2) sampling grid of x, y in [-1, 1] (the official linspace grid)."""
    # built in float64 then cast, like the official numpy grid
    lin = torch.linspace(-1.0, 1.0, size, dtype=torch.float64, device=like.device)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(like.dtype)
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


class ToFlow(nn.Module):
    """Predicts a flow field and a mask, warps the encoder feature map with them.

    Returns (warped features, warped + unwarped blend, raw 3-channel flow output
    that feeds the next level's skip).
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_KERNEL)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, feat: Tensor,
                skip: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        batch = x.shape[0]
        # the official grid uses the height for both axes (square maps)
        flow = torch.tanh(out[:, 0:2]).permute(0, 2, 3, 1) + identity_grid(x.shape[2], batch, x)
        mask = torch.sigmoid(out[:, 2:3])
        if feat.shape[0] != batch:
            feat = feat.expand(batch, -1, -1, -1)  # one source image shared by all motions
        warped = F.grid_sample(feat, flow, align_corners=False) * mask
        return warped, warped + x * (1.0 - mask), out


class Direction(nn.Module):
    """Learned motion basis: ``lambdas`` are coefficients on the orthonormalised columns."""

    def __init__(self, style_dim: int, motion_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(style_dim, motion_dim))

    def basis(self) -> Tensor:
        """(style_dim, motion_dim) orthonormal basis: Q of QR(weight + 1e-8), as the official code."""
        # QR has no half-precision kernels; the basis is small, so do it in float32
        w = self.weight
        if w.dtype not in (torch.float32, torch.float64):
            w = w.float()
        q, _ = torch.linalg.qr(w + 1e-8)
        return q.to(self.weight.dtype)

    def forward(self, lambdas: Tensor) -> Tensor:
        return lambdas @ self.basis().t()
