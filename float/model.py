"""The trainable part of FLOAT: the FMT and the audio projection.

wav2vec2, the emotion classifier and the motion auto-encoder are frozen and run
offline (their outputs are in the shards), so training needs only these two
modules. Attribute names reproduce the official checkpoint's keys:
``fmt.*`` and ``audio_encoder.audio_projection.*``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from float.audio_encoder import AudioProjection
from float.config import FloatConfig
from float.fmt import FlowMatchingTransformer


class _AudioProjectionHolder(nn.Module):
    """Only exists to give the projection its official prefix ``audio_encoder.``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.audio_projection = AudioProjection(in_dim, out_dim)


class FloatMotionModel(nn.Module):
    def __init__(self, cfg: FloatConfig):
        super().__init__()
        self.cfg = cfg
        self.fmt = FlowMatchingTransformer(cfg)
        self.audio_encoder = _AudioProjectionHolder(cfg.audio_input_dim, cfg.dim_a)
        # Per-dimension motion statistics. Identity (0, 1) means raw latents, as the
        # official model uses; latents of a seeded random encoder have an arbitrary,
        # tiny scale, so the trainer standardises them with statistics of the data.
        self.register_buffer("motion_mean", torch.zeros(cfg.dim_w))
        self.register_buffer("motion_std", torch.ones(cfg.dim_w))

    @torch.no_grad()
    def set_motion_stats(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.motion_mean.shape or std.shape != self.motion_std.shape:
            raise ValueError(f"motion stats must have shape ({self.cfg.dim_w},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("motion stats must be finite with a positive std")
        self.motion_mean.copy_(mean)
        self.motion_std.copy_(std)

    @property
    def normalizes_motion(self) -> bool:
        return bool((self.motion_mean != 0).any() or (self.motion_std != 1).any())

    def normalize_motion(self, x: Tensor) -> Tensor:
        """Raw motion latents (..., dim_w) -> the space the flow is learned in."""
        return (x - self.motion_mean) / self.motion_std

    def denormalize_motion(self, x: Tensor) -> Tensor:
        return x * self.motion_std + self.motion_mean

    def motion_to_flow(self, x: Tensor, ref: Tensor) -> Tensor:
        """Raw motion (B, T, dim_w) -> what the flow generates: standardised, or with ``cfg.relative_motion``
        the difference from the raw reference motion ``ref`` (B, dim_w) in units of the motion std."""
        if self.cfg.relative_motion:
            return (x - ref.unsqueeze(1)) / self.motion_std
        return self.normalize_motion(x)

    def flow_to_motion(self, x: Tensor, ref: Tensor) -> Tensor:
        """The inverse of ``motion_to_flow``: generated (B, T, dim_w) -> raw motion latents."""
        if self.cfg.relative_motion:
            return x * self.motion_std + ref.unsqueeze(1)
        return self.denormalize_motion(x)

    def project_audio(self, features: Tensor) -> Tensor:
        """(B, T, audio_input_dim) precomputed features -> (B, T, dim_a)."""
        return self.audio_encoder.audio_projection(features)

    def forward(
        self,
        t: Tensor,
        x: Tensor,
        audio: Tensor,
        prev_audio: Tensor,
        wr: Tensor,
        we: Tensor,
        prev_x: Tensor,
        prev_mask: Tensor | None = None,
        audio_keep: Tensor | None = None,
    ) -> Tensor:
        """Vector field at all preceding + current positions, (B, P + N, dim_w).

        ``prev_mask`` (B, P) marks real preceding frames whose audio is shown;
        the projected audio elsewhere is zeroed, as the official sampler feeds
        zeros for the first window. ``audio_keep`` (B,) drops the current audio
        per sample; like the unconditional pass of the guidance it zeroes the
        *projected* current audio only. Dropout is sampled by float.loss.
        """
        wa = self.project_audio(audio)
        prev_wa = self.project_audio(prev_audio)
        if prev_mask is not None:
            prev_wa = prev_wa * prev_mask.unsqueeze(-1).to(prev_wa.dtype)
        if audio_keep is not None:
            wa = wa * audio_keep.view(-1, 1, 1).to(wa.dtype)
        return self.fmt(t, x, wa, wr, we, prev_x, prev_wa)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
