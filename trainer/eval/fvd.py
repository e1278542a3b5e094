"""FVD: the Frechet distance between Gaussian fits of I3D clip features, as StyleGAN-V computes it.

StyleGAN-V (fvd2048_16f) cuts 16 consecutive frames per clip and takes one 400-d I3D feature per clip; its
statistics divide the covariance by N (FeatureStats), not N - 1, and the distance is the FID formula. We
cut every video into consecutive, non-overlapping 16-frame clips (the tail that does not fill a clip is
left out) so that short held-out sets still give several clips per video; with few clips the figure is
noisy and biased upward: report the clip count next to it. Frames should be the same size on both sides
(the network resizes them to 224x224).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from trainer.errors import TrainerError
from trainer.eval.fid import frechet_of_features
from trainer.eval.i3d import CLIP_FRAMES, i3d_features


def video_clips(video: np.ndarray, clip_frames: int = CLIP_FRAMES) -> np.ndarray:
    """Consecutive non-overlapping clips (N, clip_frames, H, W, 3) of one video (T, H, W, 3); N may be 0."""
    starts = range(0, len(video) - clip_frames + 1, clip_frames)
    if not len(starts):
        return np.zeros((0, clip_frames, *video.shape[1:]), video.dtype)
    return np.stack([video[s:s + clip_frames] for s in starts])


def clip_features(model, videos: Sequence[np.ndarray], side: str, clip_frames: int = CLIP_FRAMES,
                  batch_size: int = 8) -> np.ndarray:
    """I3D features (N, 400) of every clip of every video, one video at a time (memory stays one video's)."""
    feats, sizes = [], set()
    for i, video in enumerate(videos):
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise TrainerError(f"FVD: {side} video {i} is {video.dtype} {video.shape}, expected uint8 (T, H, W, 3)")
        sizes.add(video.shape[1:3])
        if len(sizes) > 1:
            raise TrainerError(f"FVD: {side} videos of different frame sizes {sorted(sizes)}; resize them to one size")
        clips = video_clips(video, clip_frames)
        if len(clips):
            feats.append(i3d_features(model, clips, batch_size).numpy())
    count = sum(len(f) for f in feats)
    if count < 2:
        raise TrainerError(f"FVD: {count} {side} clips of {clip_frames} frames; a covariance needs at least 2 "
                           f"(videos shorter than {clip_frames} frames give none)")
    return np.concatenate(feats)


def fvd_score(model, real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray],
              clip_frames: int = CLIP_FRAMES, batch_size: int = 8) -> float:
    """FVD between the clips of ``real_videos`` and of ``fake_videos`` (lists of uint8 (T, H, W, 3))."""
    real = clip_features(model, real_videos, "real", clip_frames, batch_size)
    fake = clip_features(model, fake_videos, "generated", clip_frames, batch_size)
    return frechet_of_features(real, fake, unbiased=False)
