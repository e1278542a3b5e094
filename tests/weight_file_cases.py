"""Wrong weight files for the loader tests: a truncated copy, and a pickle that would run code on load."""
from __future__ import annotations

import pathlib
from pathlib import Path

import torch


class RunsCodeOnLoad:
    """Unpickling this calls Path.touch(marker): a harmless stand-in for code a hostile file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def truncated_copy(src: Path, dst: Path, keep: int = 1 << 20) -> Path:
    """The first ``keep`` bytes of ``src`` (a download cut short)."""
    with open(src, "rb") as f:
        dst.write_bytes(f.read(keep))
    return dst


def code_running_pickle(dst: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling would create ``marker``."""
    torch.save({"weight": torch.zeros(2), "payload": RunsCodeOnLoad(marker)}, dst)
    return dst


def one_line(message: str) -> bool:
    return "\n" not in message.strip()


def calibrate_batchnorm(net: torch.nn.Module, forward) -> torch.nn.Module:
    """Set every BatchNorm's running statistics from one forward pass (``forward(net)``) in training mode.

    Seeded weights with made-up running statistics let activations shrink layer by layer: in a 50-layer
    Inception every image then gets the same features (spread 1e-9) and any Frechet distance is 0, which
    would make the formula tests pass for any formula. Statistics measured on the input keep each layer's
    output near unit scale, so different inputs get clearly different features."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one pass, exactly that batch's statistics
    net.train()
    with torch.no_grad():
        forward(net)
    return net.eval()
