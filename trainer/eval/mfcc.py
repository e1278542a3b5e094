"""MFCC exactly as python_speech_features' ``mfcc`` computes it with its defaults, in torch (float64).

SyncNet v2 was trained on these features (syncnet_python calls ``python_speech_features.mfcc(audio, 16000)``
on the int16 samples of the wav), and that package is not a dependency, so its recipe is rebuilt here:
pre-emphasis 0.97; 25 ms frames every 10 ms (400 / 160 samples at 16 kHz), zero-padded at the end so the
last frame is whole, no window; power spectrum |rfft_512|^2 / 512; 26 triangular mel filters on
floor(513 * mel2hz(m) / sr) bins, 0 Hz..sr/2; log (0 replaced by the float64 eps); DCT-II (orthonormal),
13 coefficients; cepstral lifter 22; coefficient 0 replaced by the log of the frame's total power.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16000
FRAME_SECONDS, STEP_SECONDS = 0.025, 0.01
NUM_CEPSTRA, NUM_FILTERS, NFFT = 13, 26, 512
PREEMPHASIS, LIFTER = 0.97, 22
FLOAT_EPS = float(np.finfo(float).eps)


def hz_to_mel(hz):
    return 2595 * np.log10(1 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700 * (10 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, num_filters: int = NUM_FILTERS, nfft: int = NFFT) -> Tensor:
    """(num_filters, nfft // 2 + 1) triangles on FFT bins, python_speech_features' get_filterbanks."""
    mels = np.linspace(hz_to_mel(0), hz_to_mel(sample_rate / 2), num_filters + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate)
    k = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]
    lo, mid, hi = bins[:-2, None], bins[1:-1, None], bins[2:, None]
    # Rising edge on [lo, mid), falling edge on [mid, hi): a filter whose edges coincide contributes nothing.
    rising = np.where((k >= lo) & (k < mid), (k - lo) / np.where(mid > lo, mid - lo, 1), 0.0)
    falling = np.where((k >= mid) & (k < hi), (hi - k) / np.where(hi > mid, hi - mid, 1), 0.0)
    return torch.from_numpy(rising + falling)


def dct_ortho_matrix(n: int, keep: int) -> Tensor:
    """(n, keep): x @ M is scipy's dct(x, type=2, norm='ortho')[:, :keep]."""
    i = torch.arange(n, dtype=torch.float64)[:, None]
    k = torch.arange(keep, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[:, 0] /= math.sqrt(2.0)
    return m


def _half_up(x: float) -> int:
    """Round half up, as python_speech_features rounds frame lengths."""
    return int(math.floor(x + 0.5))


def frame_count(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """How many MFCC frames a signal gives (at least one)."""
    frame, step = _half_up(FRAME_SECONDS * sample_rate), _half_up(STEP_SECONDS * sample_rate)
    return 1 if num_samples <= frame else 1 + math.ceil((num_samples - frame) / step)


def mfcc(signal: np.ndarray | Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """(frames, 13) float64 MFCC of a mono signal, on the scale given (syncnet_python gives int16 values)."""
    x = torch.as_tensor(np.asarray(signal), dtype=torch.float64).reshape(-1)
    if x.numel() == 0:
        raise ValueError("MFCC of an empty signal")
    frame, step = _half_up(FRAME_SECONDS * sample_rate), _half_up(STEP_SECONDS * sample_rate)
    x = torch.cat([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    n = frame_count(x.numel(), sample_rate)
    x = torch.cat([x, x.new_zeros((n - 1) * step + frame - x.numel())])
    frames = x.unfold(0, frame, step)  # (n, frame)
    power = torch.fft.rfft(frames, NFFT).abs() ** 2 / NFFT
    energy = power.sum(1)
    energy = torch.where(energy == 0, torch.full_like(energy, FLOAT_EPS), energy)
    filtered = power @ mel_filterbank(sample_rate).T
    filtered = torch.where(filtered == 0, torch.full_like(filtered, FLOAT_EPS), filtered)
    cepstra = torch.log(filtered) @ dct_ortho_matrix(NUM_FILTERS, NUM_CEPSTRA)
    lift = 1 + (LIFTER / 2.0) * torch.sin(math.pi * torch.arange(NUM_CEPSTRA, dtype=torch.float64) / LIFTER)
    cepstra = cepstra * lift
    cepstra[:, 0] = torch.log(energy)
    return cepstra
