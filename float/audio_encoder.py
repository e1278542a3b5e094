"""Frozen wav2vec2 audio features at the video frame rate, and the trainable audio projection.

Official semantics (FLOAT's `Wav2VecModel` + `AudioEncoder`): the convolutional features (50 Hz)
are linearly interpolated (align_corners=True) to `seq_len` frames *before* the feature
projection and transformer; the per-frame feature is every transformer layer's output
concatenated (12 x 768 = 9216 for wav2vec2-base-960h), or only the last hidden state.
The waveform is normalised once per clip (`normalize`), by the caller, before windowing.
"""
from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.models import Wav2Vec2Model

from float.config import FPS, SAMPLES_PER_FRAME, SAMPLING_RATE
from float.hf_checkpoint import build_wav2vec2, load_hf_wav2vec2, state_fingerprint

# HF config.json fields of facebook/wav2vec2-base-960h (the official audio encoder) and of a
# tiny model of the same structure, for seeded random stand-ins.
_CONV_STACK = dict(conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])
WAV2VEC2_CONFIGS: dict[str, dict] = {
    "base": dict(
        _CONV_STACK, model_type="wav2vec2", feat_extract_norm="group", conv_bias=False,
        conv_dim=[512] * 7, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        do_stable_layer_norm=False, layer_norm_eps=1e-5,
    ),
    "tiny": dict(
        _CONV_STACK, model_type="wav2vec2", feat_extract_norm="group", conv_bias=False,
        conv_dim=[32] * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=False, layer_norm_eps=1e-5,
    ),
}

# The official checkpoint stores the projection under this prefix (float.pth).
OFFICIAL_PROJECTION_PREFIX = "audio_encoder.audio_projection."


def normalize_waveform(waveform: Tensor) -> Tensor:
    """Zero mean, unit variance per waveform over the last axis, as HF's Wav2Vec2FeatureExtractor
    (x - mean) / sqrt(var + 1e-7), population variance. Computed in float64 for stability."""
    x = waveform.double()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    out_dtype = waveform.dtype if waveform.is_floating_point() else torch.float32
    return ((x - mean) / torch.sqrt(var + 1e-7)).to(out_dtype)


def seeded_random_wav2vec2(config: dict, seed: int) -> Wav2Vec2Model:
    """torchaudio's default initialisation under a fixed seed, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_wav2vec2(config)
    return model.eval().requires_grad_(False)


def receptive_field(config: dict) -> int:
    """Samples one output frame of the conv stack sees: the shortest waveform it accepts."""
    field = 1
    for kernel, stride in reversed(list(zip(config["conv_kernel"], config["conv_stride"]))):
        field = (field - 1) * stride + kernel
    return field


def frames_for_samples(n_samples: int, fps: float = FPS, sr: int = SAMPLING_RATE) -> int:
    """Video frames covering `n_samples` audio samples, rounded up like the official sampler."""
    return math.ceil(n_samples * fps / sr)


def pad_to_frames(waveform: Tensor, seq_len: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> Tensor:
    """Replicate-pad the last axis to seq_len * samples_per_frame samples, as the official
    `AudioEncoder.inference` does before encoding. Waveforms already that long are returned
    unchanged (the interpolation to seq_len handles any length)."""
    target = seq_len * samples_per_frame
    n = waveform.shape[-1]
    if n >= target:
        return waveform
    flat = waveform.reshape(-1, 1, n)  # replicate padding wants (batch, channel, time)
    padded = F.pad(flat, (0, target - n), mode="replicate")
    return padded.reshape(*waveform.shape[:-1], target)


class Wav2Vec2Features(nn.Module):
    """Frozen wav2vec2 (torchaudio implementation) producing per-video-frame audio features."""

    def __init__(self, model: Wav2Vec2Model, config: dict):
        super().__init__()
        self.wav2vec2 = model.eval().requires_grad_(False)
        self.config = dict(config)
        self.num_layers = int(config["num_hidden_layers"])
        self.hidden_size = int(config["hidden_size"])
        # Stable-layer-norm models (HF Wav2Vec2EncoderStableLayerNorm) apply the encoder's final
        # layer norm to the last hidden state only; post-norm models (base-960h) norm before the layers.
        self.final_norm_on_last = bool(config.get("do_stable_layer_norm", False))
        self.min_samples = receptive_field(config)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Wav2Vec2Features":
        model, config = load_hf_wav2vec2(folder)
        return cls(model, config)

    @classmethod
    def random(cls, seed: int = 0, size: str = "base") -> "Wav2Vec2Features":
        """Seeded random weights in the base-960h architecture ("base") or a tiny one ("tiny"),
        for runs without the real model folder."""
        if size not in WAV2VEC2_CONFIGS:
            raise ValueError(f"unknown wav2vec2 size {size!r}; choose one of {sorted(WAV2VEC2_CONFIGS)}")
        config = WAV2VEC2_CONFIGS[size]
        return cls(seeded_random_wav2vec2(config, seed), config)

    def train(self, mode: bool = True) -> "Wav2Vec2Features":
        # Frozen feature extractor: stays in eval mode whatever the surrounding model does.
        return super().train(False)

    def normalize(self, waveform: Tensor) -> Tensor:
        """(B, N) 16 kHz waveform -> zero mean, unit variance per row (the HF feature extractor)."""
        return normalize_waveform(waveform)

    def feature_dim(self, all_layers: bool = True) -> int:
        return self.num_layers * self.hidden_size if all_layers else self.hidden_size

    @cached_property
    def fingerprint(self) -> str:
        return state_fingerprint(self.wav2vec2)

    @torch.no_grad()
    def forward(self, waveform: Tensor, seq_len: int, all_layers: bool = True) -> Tensor:
        """(B, N) normalised 16 kHz waveform -> (B, seq_len, L*H) every layer's output concatenated
        per frame (layer 1 first), or (B, seq_len, H) the last hidden state."""
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be (batch, samples); got shape {tuple(waveform.shape)}")
        if waveform.shape[1] < self.min_samples:
            raise ValueError(f"waveform has {waveform.shape[1]} samples; wav2vec2 needs at least {self.min_samples}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        param = next(self.wav2vec2.parameters())
        x = waveform.to(device=param.device, dtype=param.dtype)
        conv, _ = self.wav2vec2.feature_extractor(x, None)  # (B, T50, C)
        conv = F.interpolate(conv.transpose(1, 2), size=seq_len, mode="linear", align_corners=True).transpose(1, 2)
        encoder = self.wav2vec2.encoder
        hidden = encoder.feature_projection(conv)
        layers = encoder.transformer.get_intermediate_outputs(hidden)
        if self.final_norm_on_last:
            layers[-1] = encoder.transformer.layer_norm(layers[-1])
        return torch.cat(layers, dim=-1) if all_layers else layers[-1]


class AudioProjection(nn.Sequential):
    """Trainable projection of the wav2vec2 features: Linear, LayerNorm, SiLU (official names
    audio_projection.0 / .1)."""

    def __init__(self, in_dim: int, dim_a: int):
        super().__init__(nn.Linear(in_dim, dim_a), nn.LayerNorm(dim_a), nn.SiLU())

    def load_official(self, state: dict[str, Tensor], prefix: str = OFFICIAL_PROJECTION_PREFIX) -> None:
        """Load the projection from an official-style state dict (other keys are ignored)."""
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not own:
            raise KeyError(f"no keys under {prefix!r} in the given state dict")
        self.load_state_dict(own, strict=True)
