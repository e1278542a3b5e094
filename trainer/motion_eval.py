"""Stage-1 evaluation pieces: PSNR and the source | driving | reconstruction grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from shards.files import atomic_write_image, writing


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured in [0, 1] pixel space."""
    a = images.float().clamp(-1, 1).add(1).div(2)
    b = targets.float().clamp(-1, 1).add(1).div(2)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def mouth_region(images: Tensor) -> Tensor:
    """The MOUTH_BOX of face crops (B,3,S,S): what a talking-head model must move and a whole-frame PSNR
    barely weighs."""
    from float.motion_training import MOUTH_BOX

    side_y, side_x = images.shape[-2:]
    x0, x1, y0, y1 = MOUTH_BOX
    return images[..., int(y0 * side_y):int(round(y1 * side_y)), int(x0 * side_x):int(round(x1 * side_x))]


def to_uint8_rgb(images: Tensor) -> np.ndarray:
    """(B,3,S,S) in [-1, 1] -> (B,S,S,3) uint8."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def pair_grid(source: Tensor, driving: Tensor, recon: Tensor) -> np.ndarray:
    """(3S, B*S, 3) uint8 RGB: one column per pair, rows source, driving, reconstruction."""
    rows = [np.concatenate(list(to_uint8_rgb(x)), axis=1) for x in (source, driving, recon)]
    return np.concatenate(rows, axis=0)


def save_pair_grid(path: Path, source: Tensor, driving: Tensor, recon: Tensor) -> Path:
    """A PNG of pair_grid."""
    grid = pair_grid(source, driving, recon)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_image(path, grid)  # the one writer: StorageError on a full disk
    return path
