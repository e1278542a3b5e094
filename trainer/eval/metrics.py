"""The metrics of `floatctl eval` on frames and on 68-point landmarks: plain numpy, no face model.

Frames are (T, H, W, 3) uint8 RGB; landmarks are (T, 68, 2) float x, y in the frame's pixels, NaN in
frames where no face was found (trainer/eval/faces.py). Each metric says its unit:

  PSNR   dB per frame against the paired real frame, averaged over frames; identical frames give
         PSNR_CAP (a finite stand-in for infinity, so that means and tables stay numbers).
  SSIM   Wang et al. 2004: Gaussian window 11x11 with sigma 1.5, K1 0.01, K2 0.03, data range 255, per
         colour channel, the map's border (5 px) left out, averaged (as skimage's structural_similarity
         with gaussian_weights=True, use_sample_covariance=False).
  CSIM   cosine similarity of two identity embeddings (-1..1; 1: the same face).
  LMD    mean distance of the 20 mouth points from the real frame's, after a similarity transform fit on
         the eyes and nose maps the generated face onto the real one (so head pose and position do not
         count, only the mouth's shape); in pixels of a LMD_SIZE px frame (measured in the video's own
         pixels, scaled by LMD_SIZE / width, so that 128 px and 512 px runs compare).
  mouth opening  the mean gap of the three inner-lip point pairs over the inter-ocular distance.
  blink rate     blinks per minute: a blink starts where the eye aspect ratio (Soukupova and Cech 2016)
         drops below EAR_BLINK.
  jitter the mean frame-to-frame move of the face centre (mean of the 68 points) over the inter-ocular
         distance: 0 for a still head; high for a shaking one.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

from float.config import FPS
from preprocess.face_models import LEFT_EYE, MOUTH, NOSE, RIGHT_EYE

PSNR_CAP = 100.0  # dB, for identical frames
LMD_SIZE = 256  # LMD is reported in pixels of a frame this wide
EAR_BLINK = 0.2  # eye aspect ratio under which an eye is shut (the usual threshold for 68-point eyes)
ALIGN_POINTS = np.r_[RIGHT_EYE, LEFT_EYE, NOSE]  # both eyes and the nose: they do not move when one speaks
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper and lower inner lip, left to right

SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # an 11 x 11 window
SSIM_K1, SSIM_K2, SSIM_RANGE = 0.01, 0.03, 255.0


# ---------------------------------------------------------------- pixels
def psnr(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean over frames of the per-frame PSNR in dB (PSNR_CAP where the frames are identical)."""
    _check_pair(fake, real)
    diff = fake.astype(np.float64) - real.astype(np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    per_frame = np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-30)), PSNR_CAP)
    return float(np.minimum(per_frame, PSNR_CAP).mean())


def _gaussian_kernel() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return k / k.sum()


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian over the two image axes of (..., H, W), mirrored at the border as skimage does."""
    k = _gaussian_kernel()
    return correlate1d(correlate1d(image, k, axis=-2, mode="reflect"), k, axis=-1, mode="reflect")


def ssim_frame(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) or (H, W, C) images (uint8 or float on 0..255), mean over channels."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: image shapes differ, {a.shape} vs {b.shape}")
    if min(a.shape[:2]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"ssim: images of {a.shape[:2]} are smaller than the 11 x 11 window")
    x = np.asarray(a, np.float64).reshape(*a.shape[:2], -1).transpose(2, 0, 1)
    y = np.asarray(b, np.float64).reshape(*b.shape[:2], -1).transpose(2, 0, 1)
    mx, my = _blur(x), _blur(y)
    vx, vy, cxy = _blur(x * x) - mx * mx, _blur(y * y) - my * my, _blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * SSIM_RANGE) ** 2, (SSIM_K2 * SSIM_RANGE) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    r = SSIM_RADIUS
    return float(s[:, r:-r, r:-r].mean())


def ssim(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean SSIM over paired frames."""
    _check_pair(fake, real)
    return float(np.mean([ssim_frame(f, r) for f, r in zip(fake, real)]))


def _check_pair(fake: np.ndarray, real: np.ndarray) -> None:
    if fake.shape != real.shape or fake.ndim != 4:
        raise ValueError(f"paired videos must have one (T, H, W, 3) shape, got {fake.shape} and {real.shape}")


# ---------------------------------------------------------------- identity
def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def csim(embeddings: np.ndarray, reference: np.ndarray) -> float | None:
    """Mean cosine similarity of the frames' embeddings (T, 128; NaN rows: no face) to the reference's."""
    rows = [e for e in embeddings if np.all(np.isfinite(e))]
    return float(np.mean([cosine_similarity(e, reference) for e in rows])) if rows else None


# ---------------------------------------------------------------- landmarks
def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, rotation 2x2, translation) minimising |scale * R @ src + t - dst|^2 over points (N, 2)
    (Umeyama 1991, no reflection)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / max((s * s).sum(), 1e-12))
    return scale, rotation, mu_d - scale * rotation @ mu_s


def aligned_mouth_distance(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean distance of the 20 mouth points of one frame's landmarks (68, 2) after aligning the fake face
    on the real one's eyes and nose; in the real frame's pixels."""
    scale, rotation, shift = similarity_transform(fake[ALIGN_POINTS], real[ALIGN_POINTS])
    mouth = fake[MOUTH] @ (scale * rotation).T + shift
    return float(np.linalg.norm(mouth - real[MOUTH], axis=1).mean())


def lmd(fake: np.ndarray, real: np.ndarray, width: int) -> float | None:
    """LMD over the frames where both have a face, in pixels of a LMD_SIZE-wide frame; None when none do."""
    n = min(len(fake), len(real))
    both = [i for i in range(n) if _found(fake[i]) and _found(real[i])]
    if not both:
        return None
    return float(np.mean([aligned_mouth_distance(fake[i], real[i]) for i in both]) * LMD_SIZE / width)


def _found(points: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(points)))


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """Distance between the eye centres, (T,) for (T, 68, 2)."""
    return np.linalg.norm(points[:, RIGHT_EYE].mean(axis=1) - points[:, LEFT_EYE].mean(axis=1), axis=-1)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap over the inter-ocular distance (NaN where no face)."""
    gap = np.mean([np.linalg.norm(points[:, lo] - points[:, up], axis=-1) for up, lo in INNER_LIP_PAIRS], axis=0)
    return gap / np.maximum(inter_ocular(points), 1e-6)


def eye_aspect_ratio(points: np.ndarray) -> np.ndarray:
    """(T,) eye aspect ratio, the mean of both eyes: about 0.3 open, under 0.2 shut."""
    ratios = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = points[:, eye]  # six points: corner, top, top, corner, bottom, bottom
        vertical = np.linalg.norm(p[:, 1] - p[:, 5], axis=-1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1)
        ratios.append(vertical / np.maximum(2 * np.linalg.norm(p[:, 0] - p[:, 3], axis=-1), 1e-6))
    return np.mean(ratios, axis=0)


def blink_rate(points: np.ndarray, fps: float = FPS, threshold: float = EAR_BLINK) -> float | None:
    """Blinks per minute: the frames where the eye aspect ratio falls below ``threshold`` after being at or
    above it (frames without a face neither start nor end a blink). None without any face."""
    ear = eye_aspect_ratio(points)
    seen = ear[np.isfinite(ear)]
    if len(seen) == 0:
        return None
    shut = seen < threshold
    starts = int(shut[0]) + int(np.sum(shut[1:] & ~shut[:-1]))
    return starts / (len(seen) / fps / 60.0)


def jitter(points: np.ndarray) -> float | None:
    """Mean move of the face centre between consecutive frames that both have a face, over the
    inter-ocular distance; None with fewer than two such frames."""
    centre, iod = points.mean(axis=1), inter_ocular(points)
    step = np.linalg.norm(np.diff(centre, axis=0), axis=-1) / np.maximum(iod[1:], 1e-6)
    step = step[np.isfinite(step)]
    return float(step.mean()) if len(step) else None


def fill_gaps(signal: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN frames (the ends hold the nearest value); all-NaN stays NaN."""
    ok = np.isfinite(signal)
    if ok.all() or not ok.any():
        return signal
    t = np.arange(len(signal))
    return np.interp(t, t[ok], signal[ok])


def finite_mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(kept)) if kept else None
