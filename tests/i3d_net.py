"""A TorchScript-able Inception-I3D (pytorch-i3d's layout, Kinetics-400 logits) with the FVD detector's call.

The tests cannot download StyleGAN-V's ``i3d_torchscript.pt``; they script this network with seeded weights
and save it, so that ``load_i3d`` and ``fvd_score`` run on a real TorchScript file of the same architecture
and forward signature: ``forward(videos, rescale, resize, return_features)``, videos (B, 3, T, H, W) in
0..255. ``resize_to`` is 224 like the real detector; the tests pass a smaller side to stay fast.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weight_file_cases import calibrate_batchnorm


def same_pad(size: int, kernel: int, stride: int) -> List[int]:
    """TensorFlow 'SAME' padding (front, back) for one axis, as pytorch-i3d computes it."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return [total // 2, total - total // 2]


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.use_bn, self.relu = list(kernel), list(stride), bn, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        t = same_pad(x.shape[2], self.kernel[0], self.stride[0])
        h = same_pad(x.shape[3], self.kernel[1], self.stride[1])
        w = same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = self.bn(self.conv3d(F.pad(x, [w[0], w[1], h[0], h[1], t[0], t[1]])))
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = list(kernel), list(stride)

    def forward(self, x: Tensor) -> Tensor:
        t = same_pad(x.shape[2], self.kernel[0], self.stride[0])
        h = same_pad(x.shape[3], self.kernel[1], self.stride[1])
        w = same_pad(x.shape[4], self.kernel[2], self.stride[2])
        return F.max_pool3d(F.pad(x, [w[0], w[1], h[0], h[1], t[0], t[1]]), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: List[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3dDetector(nn.Module):
    """Inception-I3D, 400 classes; features are the logits averaged over the remaining time and space."""

    def __init__(self, num_classes: int = 400, resize_to: int = 224):
        super().__init__()
        self.resize_to = resize_to
        self.features = nn.Sequential(
            Unit3D(3, 64, (7, 7, 7), (2, 2, 2)), MaxPoolSame((1, 3, 3), (1, 2, 2)),
            Unit3D(64, 64), Unit3D(64, 192, (3, 3, 3)), MaxPoolSame((1, 3, 3), (1, 2, 2)),
            InceptionModule(192, [64, 96, 128, 16, 32, 32]), InceptionModule(256, [128, 128, 192, 32, 96, 64]),
            MaxPoolSame((3, 3, 3), (2, 2, 2)),
            InceptionModule(480, [192, 96, 208, 16, 48, 64]), InceptionModule(512, [160, 112, 224, 24, 64, 64]),
            InceptionModule(512, [128, 128, 256, 24, 64, 64]), InceptionModule(512, [112, 144, 288, 32, 64, 64]),
            InceptionModule(528, [256, 160, 320, 32, 128, 128]), MaxPoolSame((2, 2, 2), (2, 2, 2)),
            InceptionModule(832, [256, 160, 320, 32, 128, 128]), InceptionModule(832, [384, 192, 384, 48, 128, 128]))
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        x = x.float()
        if rescale:
            x = x * (2.0 / 255.0) - 1.0
        if resize:
            b, c, t, h, w = x.shape
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=[self.resize_to, self.resize_to], mode="bilinear", align_corners=False)
            x = frames.reshape(b, t, c, self.resize_to, self.resize_to).permute(0, 2, 1, 3, 4)
        logits = self.logits(self.features(x).mean(dim=[2, 3, 4], keepdim=True)).flatten(1)
        return logits if return_features else torch.softmax(logits, dim=1)


def seeded_i3d(seed: int = 0, resize_to: int = 224) -> InceptionI3dDetector:
    """The detector with seeded weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = InceptionI3dDetector(resize_to=resize_to)
    clips = torch.randint(0, 256, (4, 3, 16, 32, 32), generator=torch.Generator().manual_seed(seed + 1),
                          dtype=torch.uint8)
    return calibrate_batchnorm(net, lambda n: n(clips, rescale=True, resize=True, return_features=True))
