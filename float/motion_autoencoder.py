"""LIA-style motion auto-encoder (the official FLOAT ``Generator``), pure torch.

An image is encoded into an appearance latent (style_dim) plus multi-scale
feature maps; an MLP maps the latent to ``motion_dim`` coefficients on a
learned orthonormal motion basis. The decoder is a StyleGAN2-like synthesis
network driven by ``appearance + motion``, which at every scale predicts a flow
field that warps the source's feature maps.

Module and parameter names equal the official ones (``enc.net_app.convs...``,
``enc.fc...``, ``dec.direction.weight``...), so the official checkpoint's
``motion_autoencoder.*`` entries load without renaming.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from float.motion_layers import (
    ConstantInput,
    ConvLayer,
    Direction,
    EqualConv2d,
    EqualLinear,
    ResBlock,
    StyledConv,
    ToFlow,
    ToRGB,
)

# feature channels per resolution (StyleGAN2 defaults, channel multiplier 1)
CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def channels_for(width: float) -> dict[int, int]:
    """Channels per resolution; ``width`` < 1 thins every layer for CPU presets.

    The official model is width 1. A thinner encoder is not compatible with
    ``float.pth``; it exists so the whole pipeline runs in minutes on a CPU.
    """
    if not 0 < width <= 1:
        raise ValueError(f"motion auto-encoder width must be in (0, 1], got {width}")
    return {res: max(8, int(round(c * width))) for res, c in CHANNELS.items()}


def _check_size(size: int) -> int:
    if size not in CHANNELS or size < 8:
        raise ValueError(f"motion auto-encoder size must be a power of two in [8, 1024], got {size}")
    return int(math.log2(size))


class AppearanceEncoder(nn.Module):
    """Official ``EncoderApp``: 1x1 stem, residual downsampling to 4x4, 4x4 conv to the latent."""

    def __init__(self, size: int, style_dim: int, width: float = 1.0):
        super().__init__()
        log_size = _check_size(size)
        CHANNELS = channels_for(width)
        self.convs = nn.ModuleList([ConvLayer(3, CHANNELS[size], 1)])
        in_channel = CHANNELS[size]
        for i in range(log_size, 2, -1):
            out_channel = CHANNELS[2 ** (i - 1)]
            self.convs.append(ResBlock(in_channel, out_channel))
            in_channel = out_channel
        self.convs.append(EqualConv2d(in_channel, style_dim, 4, padding=0, bias=False))

    def forward(self, x: Tensor, keep_feats: bool = True) -> tuple[Tensor, list[Tensor]]:
        """(latent (B,style_dim), feature maps coarse to fine: 8 px ... size px).

        The decoder warps the maps of every scale from 8 px up; the 4x4 map is
        not one of them. With ``keep_feats=False`` no map outlives the next layer.
        """
        feats: list[Tensor] = []
        last_kept = len(self.convs) - 3  # index of the conv that outputs the 8 px map
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if keep_feats and i <= last_kept:
                feats.append(x)
        return x.flatten(1), feats[::-1]


class MotionEncoder(nn.Module):
    """Official ``Encoder``: appearance network + 5-layer linear MLP to motion coefficients."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, width: float = 1.0):
        super().__init__()
        self.net_app = AppearanceEncoder(size, style_dim, width)
        layers = [EqualLinear(style_dim, style_dim) for _ in range(4)]
        layers.append(EqualLinear(style_dim, motion_dim))
        self.fc = nn.Sequential(*layers)


class MotionDecoder(nn.Module):
    """Official ``Synthesis``: flow-warping StyleGAN2 decoder from 4 px up to ``size``."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, width: float = 1.0):
        super().__init__()
        log_size = _check_size(size)
        CHANNELS = channels_for(width)
        self.size = size
        self.direction = Direction(style_dim, motion_dim)
        self.input = ConstantInput(CHANNELS[4])
        self.conv1 = StyledConv(CHANNELS[4], CHANNELS[4], 3, style_dim)
        # to_rgb1 exists in the checkpoint but the official forward never uses it
        self.to_rgb1 = ToRGB(CHANNELS[4], upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.to_flows = nn.ModuleList()
        in_channel = CHANNELS[4]
        for i in range(3, log_size + 1):
            out_channel = CHANNELS[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_channel))
            self.to_flows.append(ToFlow(out_channel, style_dim))
            in_channel = out_channel

    def forward(self, latent: Tensor, feats: list[Tensor]) -> Tensor:
        """Image (B,3,size,size) from latents (B,style_dim); feats coarse to fine, batch B or 1."""
        if len(feats) != len(self.to_flows):
            raise ValueError(f"decoder of size {self.size} needs {len(self.to_flows)} feature maps "
                             f"(8 px to {self.size} px), got {len(feats)}")
        # the official decoder repeats one latent for every layer, so pass it as is
        out = self.conv1(self.input(latent.shape[0]), latent)
        rgb = flow_skip = None
        for level, feat in enumerate(feats):
            out = self.convs[2 * level](out, latent)
            out = self.convs[2 * level + 1](out, latent)
            warped, out, flow_skip = self.to_flows[level](out, latent, feat, flow_skip)
            rgb = self.to_rgbs[level](warped, rgb)
        return rgb


class MotionAutoEncoder(nn.Module):
    """The official FLOAT ``Generator`` (``enc`` + ``dec``), with a batched API."""

    def __init__(self, size: int = 512, style_dim: int = 512, motion_dim: int = 20, width: float = 1.0):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.motion_dim = motion_dim
        self.width = width
        self.enc = MotionEncoder(size, style_dim, motion_dim, width)
        self.dec = MotionDecoder(size, style_dim, motion_dim, width)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.size, self.size):
            raise ValueError(f"expected images of shape (B,3,{self.size},{self.size}) in [-1,1], "
                             f"got {tuple(images.shape)}")

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """images (B,3,S,S) in [-1,1] -> (appearance (B,style_dim), lambdas (B,motion_dim), feats)."""
        self._check_images(images)
        appearance, feats = self.enc.net_app(images)
        return appearance, self.enc.fc(appearance), feats

    def motion_from_lambdas(self, lambdas: Tensor) -> Tensor:
        """Motion latent (B,style_dim): the coefficients on the orthonormal motion basis."""
        return self.dec.direction(lambdas)

    def encode_motion(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame (motion (B,style_dim), lambdas (B,motion_dim)); feature maps are not kept."""
        self._check_images(images)
        appearance, _ = self.enc.net_app(images, keep_feats=False)
        lambdas = self.enc.fc(appearance)
        return self.dec.direction(lambdas), lambdas

    def decode(self, appearance: Tensor, motion: Tensor, feats: list[Tensor]) -> Tensor:
        """Image (B,3,S,S), about [-1,1], from appearance + motion, warping ``feats``.

        Any of appearance (B or 1, style_dim), motion (B or 1, style_dim) and the
        feature maps (B or 1 each) may have batch 1 and is then shared by all B.
        """
        batches = {appearance.shape[0], motion.shape[0], *(f.shape[0] for f in feats)}
        batch = max(batches)
        if not batches <= {1, batch}:
            raise ValueError(f"decode: batch sizes must be equal or 1, got appearance "
                             f"{appearance.shape[0]}, motion {motion.shape[0]}, "
                             f"feats {[f.shape[0] for f in feats]}")
        latent = (appearance + motion).expand(batch, -1)
        return self.dec(latent, feats)

    def forward(self, source: Tensor, driving: Tensor) -> Tensor:
        """The driving frames rebuilt from the source frames' appearance and feature maps, moved by the
        driving frames' motion (the official ``Generator.forward``; what stage 1 trains)."""
        if source.shape != driving.shape:
            raise ValueError(f"source and driving batches differ in shape: "
                             f"{tuple(source.shape)} vs {tuple(driving.shape)}")
        appearance, _, feats = self.encode(source)
        motion, _ = self.encode_motion(driving)  # its feature maps are not needed
        return self.decode(appearance, motion, feats)
