"""FID: the Frechet distance between Gaussian fits of InceptionV3 pool3 features, as pytorch-fid computes it.

Every frame of every video counts as one image (the talking-head papers' FID is a per-frame image metric).
The statistics are pytorch-fid's: the mean and the unbiased covariance (``np.cov``, rows are samples), and
the distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` with scipy's ``sqrtm``, retried with 1e-6 added
to both diagonals when the product is singular, keeping the real part (an imaginary part above 1e-3 on the
diagonal is an error, as there). FVD (fvd.py) uses the same distance on I3D clip features.

Speed without changing the figure: with fewer samples than feature dimensions (a few hundred frames against
2048 features) every mean and covariance lies in the span of the samples. The distance is invariant under
an orthonormal change of basis, and in a basis of that span S1 S2 is zero outside it, so
``frechet_of_features`` computes the same formula (the same scipy ``sqrtm``) in those coordinates: a
k x k problem (k <= number of samples) instead of 2048 x 2048, which takes about a minute on a CPU.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import linalg

from trainer.errors import TrainerError
from trainer.eval.inception import FIDInceptionV3

SINGULAR_EPS = 1e-6


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SINGULAR_EPS) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), computed as pytorch-fid does."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Frechet distance of statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # pytorch-fid silences sqrtm's singular-matrix notice (disp=False) too
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            # A singular product (fewer samples than feature dimensions): pytorch-fid's offset.
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise TrainerError(f"Frechet distance: the covariance product's square root has an imaginary part of "
                               f"{np.max(np.abs(covmean.imag)):.3g}; too few samples for these features")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_of_features(real: np.ndarray, fake: np.ndarray, unbiased: bool = True) -> float:
    """Frechet distance between Gaussian fits of two feature sets (N1, D) and (N2, D).

    ``unbiased``: the covariance divides by N - 1 (pytorch-fid's ``np.cov``); False divides by N (StyleGAN-V's
    FVD statistics). Computed in an orthonormal basis of the samples' span when that is smaller than D.
    """
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"feature sets of different shapes: {real.shape} vs {fake.shape}")
    if len(real) + len(fake) < real.shape[1]:
        basis, _ = np.linalg.qr(np.concatenate([real, fake]).T)  # (D, k): spans every sample, so every mean
        real, fake = real @ basis, fake @ basis
    ddof = 1 if unbiased else 0
    return frechet_distance(real.mean(axis=0), np.cov(real, rowvar=False, ddof=ddof),
                            fake.mean(axis=0), np.cov(fake, rowvar=False, ddof=ddof))


def _frame_features(model: FIDInceptionV3, videos: Sequence[np.ndarray], side: str, batch_size: int) -> np.ndarray:
    """Features of every frame, one video at a time (all frames of a set at 512 px would not fit in memory)."""
    feats = []
    for i, video in enumerate(videos):
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise TrainerError(f"FID: {side} video {i} is {video.dtype} {video.shape}, expected uint8 (T, H, W, 3)")
        feats.append(model.features(video, batch_size).numpy())
    count = sum(len(f) for f in feats)
    if count < 2:
        raise TrainerError(f"FID: {count} {side} frames; a covariance needs at least 2")
    return np.concatenate(feats)


def fid_score(model: FIDInceptionV3, real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray],
              batch_size: int = 32) -> float:
    """FID between all frames of ``real_videos`` and all of ``fake_videos`` (lists of uint8 (T, H, W, 3)).

    Frames may have any size (each is resized to 299x299). Few frames give a biased, noisy FID: pytorch-fid
    warns below 2048 images; report the frame count next to the figure.
    """
    real = _frame_features(model, real_videos, "real", batch_size)
    fake = _frame_features(model, fake_videos, "generated", batch_size)
    return frechet_of_features(real, fake, unbiased=True)
