"""Perceptual losses for training the motion auto-encoder (stage 1).

``VGGPerceptualLoss`` is LIA's ``VGGLoss``: L1 between frozen VGG19 features
of the reconstruction and the target at relu1_1, relu2_1, relu3_1, relu4_1 and
relu5_1 (LIA's five slices end at torchvision indices 1, 6, 11, 20, 29), each
weighted 10, summed over an image pyramid of scales 1, 1/2, 1/4, 1/8 made by
Gaussian low-pass + subsampling. Inputs in [-1, 1] are clamped, mapped to
[0, 1] and normalised with the ImageNet mean/std, as LIA does.

Pretrained weights cannot be downloaded here, so they come from a user-given
file: a torchvision ``vgg19`` state dict saved with ``torch.save``. Without
one, ``build_perceptual`` returns ``StructureLoss``, a weight-free stand-in
(multi-scale L1 + image gradients) that is *not* a perceptual loss; its
description says so, so that logs and reports can label it.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from float.safe_load import CheckpointError, safe_torch_load, wrong_kind

# torchvision's vgg19 ``features``: conv channels, "M" = 2x2 max pool. Every conv
# is followed by a ReLU, so each conv takes two indices and each pool one.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

# index (in ``features``) of the ReLU output each tap reads; LIA's slices end here
VGG19_TAPS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
LIA_LAYER_WEIGHTS = (10.0, 10.0, 10.0, 10.0, 10.0)
LIA_PYRAMID_LEVELS = 4  # scales 1, 1/2, 1/4, 1/8
VGG_MIN_SIZE = 16  # four 2x2 poolings come before relu5_1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualWeightsError(CheckpointError):
    """A weights file that is not a torchvision VGG19 state dict (a CheckpointError: one line, file and reason)."""


VGG19_TAKES = "--perceptual-weights takes torchvision's vgg19 state dict (torch.save(vgg19(weights=...).state_dict()))"


def vgg19_feature_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every ``features.*`` entry of torchvision's vgg19 state dict, in order."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    index, in_ch = 0, 3
    for item in VGG19_CFG:
        if item == "M":
            index += 1
            continue
        shapes.append((f"features.{index}.weight", (item, in_ch, 3, 3)))
        shapes.append((f"features.{index}.bias", (item,)))
        index, in_ch = index + 2, item
    return shapes


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features`` rebuilt in plain torch (same state-dict names)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.Conv2d(in_ch, item, 3, padding=1))
                # not in-place: the tapped outputs must survive the next layer
                layers.append(nn.ReLU(inplace=False))
                in_ch = item
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor, taps: Sequence[int] = tuple(VGG19_TAPS.values())) -> list[Tensor]:
        """Outputs of the layers at ``taps`` (indices into ``features``), in that order.

        Layers past the last tap are not run (relu5_1 is index 29 of 37).
        """
        wanted = set(taps)
        outs: dict[int, Tensor] = {}
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                outs[i] = x
        return [outs[i] for i in taps]


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
    """A ``VGG19Features`` with the weights of a torchvision vgg19 state dict file.

    The file may hold the whole model's state dict (``classifier.*`` is ignored)
    or only ``features.*``. Anything else is refused with ``PerceptualWeightsError``.
    """
    path = os.fspath(path)
    try:
        state = safe_torch_load(path, label="--perceptual-weights ", takes=VGG19_TAKES)
    except CheckpointError as exc:
        raise PerceptualWeightsError(str(exc)) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PerceptualWeightsError(str(wrong_kind(path, state, "--perceptual-weights ", VGG19_TAKES)))
    features = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    expected = vgg19_feature_shapes()
    for name, shape in expected:
        if name not in features:
            raise PerceptualWeightsError(
                f"{path}: not a torchvision VGG19 state dict: missing key '{name}' "
                f"(expected shape {shape})")
        if tuple(features[name].shape) != shape:
            raise PerceptualWeightsError(
                f"{path}: not a torchvision VGG19 state dict: key '{name}' has shape "
                f"{tuple(features[name].shape)}, expected {shape}")
    extra = sorted(set(features) - {name for name, _ in expected})
    if extra:
        raise PerceptualWeightsError(
            f"{path}: not a torchvision VGG19 state dict: unexpected key '{extra[0]}' "
            f"(VGG19 has convs only at features indices {sorted({int(n.split('.')[1]) for n, _ in expected})})")
    module = VGG19Features()
    module.load_state_dict(features)
    return module


def gaussian_downsample(x: Tensor, factor: int) -> Tensor:
    """Anti-aliased subsampling by an integer ``factor`` (LIA's AntiAliasInterpolation2d).

    Gaussian of sigma (factor - 1) / 2 over 2 * round(4 sigma) + 1 taps, then every
    ``factor``-th pixel. Edges are replicated where LIA pads with zeros, so the
    border does not fade towards grey.
    """
    if factor == 1:
        return x
    sigma = (factor - 1) / 2
    radius = round(4 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    taps = torch.exp(-t ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    c = x.shape[1]
    x = F.pad(x, [radius] * 4, mode="replicate")
    # separable filter; a strided conv equals filter-then-subsample
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, factor), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(factor, 1), groups=c)


def image_pyramid(x: Tensor, levels: int, min_size: int = 1) -> list[Tensor]:
    """[x, x/2, x/4, ...]: up to ``levels`` scales, skipping any smaller than ``min_size`` px."""
    out = []
    for k in range(levels):
        factor = 2 ** k
        if min(x.shape[-2:]) // factor < min_size:
            break
        out.append(gaussian_downsample(x, factor))
    return out


def _check_pair(recon: Tensor, target: Tensor, min_size: int) -> None:
    if recon.shape != target.shape or recon.ndim != 4 or recon.shape[1] != 3:
        raise ValueError(f"expected two image batches of equal shape (B,3,H,W), got "
                         f"{tuple(recon.shape)} and {tuple(target.shape)}")
    if min(recon.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size} px, got {tuple(recon.shape[-2:])}")


class VGGPerceptualLoss(nn.Module):
    """LIA's pyramid VGG19 loss; frozen, and stays in eval mode."""

    def __init__(self, features: VGG19Features, layer_weights: Sequence[float] = LIA_LAYER_WEIGHTS,
                 levels: int = LIA_PYRAMID_LEVELS):
        super().__init__()
        if len(layer_weights) != len(VGG19_TAPS):
            raise ValueError(f"need one weight per tap {list(VGG19_TAPS)}, got {len(layer_weights)}")
        self.vgg = features
        self.vgg.requires_grad_(False)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.levels = levels
        # not persistent: constants, not weights, so they stay out of checkpoints
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # a loss network never trains

    def _features(self, x: Tensor) -> list[Tensor]:
        x = (x.clamp(-1, 1) + 1) / 2
        return self.vgg((x - self.mean) / self.std)

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        """Scalar loss; gradients flow into ``recon`` only (the target is ground truth)."""
        _check_pair(recon, target, VGG_MIN_SIZE)
        # scales whose image would be under 16 px are skipped (LIA trains at 256 px)
        recon_pyr = image_pyramid(recon, self.levels, VGG_MIN_SIZE)
        with torch.no_grad():
            target_pyr = image_pyramid(target, self.levels, VGG_MIN_SIZE)
        total = recon.new_zeros(())
        for r, t in zip(recon_pyr, target_pyr):
            with torch.no_grad():
                t_feats = self._features(t)
            for w, rf, tf in zip(self.layer_weights, self._features(r), t_feats):
                if w:
                    total = total + w * (rf - tf).abs().mean()
        return total


class StructureLoss(nn.Module):
    """Weight-free stand-in for the perceptual loss: multi-scale L1 + L1 of image gradients.

    Not perceptual: it only adds coarse-scale and edge emphasis to plain L1.
    The gradient term responds to misplaced edges, not to a uniform colour shift.
    """

    def __init__(self, levels: int = LIA_PYRAMID_LEVELS, gradient_weight: float = 1.0):
        super().__init__()
        self.levels = levels
        self.gradient_weight = float(gradient_weight)

    @staticmethod
    def _grads(x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        _check_pair(recon, target, 2)
        total = recon.new_zeros(())
        for r, t in zip(image_pyramid(recon, self.levels, 2), image_pyramid(target, self.levels, 2)):
            total = total + (r - t).abs().mean()
            if self.gradient_weight:
                (rx, ry), (tx, ty) = self._grads(r), self._grads(t)
                total = total + self.gradient_weight * ((rx - tx).abs().mean() + (ry - ty).abs().mean())
        return total


def build_perceptual(weights_path: str | os.PathLike | None,
                     device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """(loss module on ``device``, one-line description of which loss it is)."""
    if weights_path:
        module = VGGPerceptualLoss(load_vgg19_features(weights_path)).to(device)
        return module, f"VGG19 perceptual (weights: {os.fspath(weights_path)})"
    return (StructureLoss().to(device),
            "weight-free structure loss (no VGG19 weights given: multi-scale L1 + gradients)")
