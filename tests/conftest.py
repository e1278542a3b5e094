"""Shared test helpers: where the official parity fixtures live, and how to
rebuild the fixture weights from parameter names (see the fixtures' README)."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """The official-float fixtures: $FLOAT_REFERENCE_DIR, else ../shared beside the repo."""
    env = os.environ.get("FLOAT_REFERENCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "reference" / "official-float"


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    d = reference_dir()
    if not d.is_dir():
        pytest.skip(f"official FLOAT fixtures not found at {d} (set FLOAT_REFERENCE_DIR)")
    return d


def crc_fill(module: torch.nn.Module, prefix: str, scale: float, skip=()) -> None:
    """Fill every parameter as the fixtures were made: randn seeded by crc32(prefix + name) * scale."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = prefix + name
            if full in skip:
                continue
            g = torch.Generator().manual_seed(zlib.crc32(full.encode()))
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine spinning OpenMP threads are slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class IdentityNorm:
    """Mixin for fake models: the official model's (identity) motion normalisation."""

    def normalize_motion(self, x):
        return x

    def denormalize_motion(self, x):
        return x

    def motion_to_flow(self, x, ref):
        return x - ref.unsqueeze(1) if self.cfg.relative_motion else x

    def flow_to_motion(self, x, ref):
        return x + ref.unsqueeze(1) if self.cfg.relative_motion else x
