"""The trainable part of FLOAT: the FMT and the audio projection.

wav2vec2, the emotion classifier and the motion auto-encoder are frozen and run
offline (their outputs are in the shards), so training needs only these two
modules. Attribute names reproduce the official checkpoint's keys:
``fmt.*`` and ``audio_encoder.audio_projection.*``.
"""
from __future__ import annotations

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
        return self.fmt(t, x, wa, wr, we, prev_x, prev_wa, drop_conditions=False)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
