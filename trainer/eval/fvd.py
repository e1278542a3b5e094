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


def video_clips(videos: Sequence[np.ndarray], clip_frames: int = CLIP_FRAMES, side: str = "") -> np.ndarray:
    """Consecutive non-overlapping clips (N, clip_frames, H, W, 3) uint8 from videos uint8 (T, H, W, 3)."""
    clips = []
    for i, video in enumerate(videos):
        video = np.asarray(video)
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise TrainerError(f"FVD: {side} video {i} is {video.dtype} {video.shape}, expected uint8 (T, H, W, 3)")
        clips += [video[s:s + clip_frames] for s in range(0, len(video) - clip_frames + 1, clip_frames)]
    if len(clips) < 2:
        raise TrainerError(f"FVD: {len(clips)} {side} clips of {clip_frames} frames; a covariance needs at least 2 "
                           f"(videos shorter than {clip_frames} frames give none)")
    sizes = {c.shape[1:3] for c in clips}
    if len(sizes) > 1:
        raise TrainerError(f"FVD: {side} videos of different frame sizes {sorted(sizes)}; resize them to one size")
    return np.stack(clips)


def fvd_score(model, real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray],
              clip_frames: int = CLIP_FRAMES, batch_size: int = 8) -> float:
    """FVD between the clips of ``real_videos`` and of ``fake_videos`` (lists of uint8 (T, H, W, 3))."""
    real = i3d_features(model, video_clips(real_videos, clip_frames, "real"), batch_size).numpy()
    fake = i3d_features(model, video_clips(fake_videos, clip_frames, "generated"), batch_size).numpy()
    return frechet_of_features(real, fake, unbiased=False)
