"""Stage-1 evaluation pieces: PSNR and the source | driving | reconstruction grid."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from float.motion_training import mouth_region
from shards.files import atomic_write_image, writing


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 (B,3,S,S) -> float in [-1, 1], as the auto-encoder expects."""
    return images.float().div_(127.5).sub_(1.0)


def psnr(images: Tensor, targets: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured in [0, 1] pixel space."""
    a = images.float().clamp(-1, 1).add(1).div(2)
    b = targets.float().clamp(-1, 1).add(1).div(2)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


@torch.no_grad()
def heldout_psnr(model, batches, autocast=contextlib.nullcontext) -> dict:
    """Mean PSNR (dB) over pair batches (uint8 ``source`` / ``driving``) of the model's reconstruction and of
    copying the source frame, whole frame and mouth region: {"recon", "copy", "mouth", "mouth_copy", "pairs"}.
    The trainer's validation and benchmarks/stage1_heldout.py both score with it."""
    db: dict[str, list] = {"recon": [], "copy": [], "mouth": [], "mouth_copy": []}
    for batch in batches:
        source, driving = to_unit_range(batch["source"]), to_unit_range(batch["driving"])
        with autocast():
            recon = model(source, driving).float()
        db["recon"].append(psnr(recon, driving))
        db["copy"].append(psnr(source, driving))
        db["mouth"].append(psnr(mouth_region(recon), mouth_region(driving)))
        db["mouth_copy"].append(psnr(mouth_region(source), mouth_region(driving)))
    out = {k: float(torch.cat(v).mean()) for k, v in db.items()}
    out["pairs"] = sum(len(v) for v in db["recon"])
    return out


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
