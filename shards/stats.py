"""Per-dimension statistics of the motion latents in a set of shards.

The spread returned is the pooled *within-clip* standard deviation: the motion a
clip makes around its own mean. The clip's identity offset is given to the model
by the reference latent; scaling by the within-clip spread puts the motion the
audio has to explain on the scale of the flow's unit noise.
"""
from __future__ import annotations

import numpy as np

from shards.tar import iter_tar_samples
from shards.format import MOTION, decode_npy


def motion_statistics(urls: list[str], max_clips: int = 256) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, within-clip std, frames) over up to ``max_clips`` clips, taken round-robin over the shards.

    float64 accumulation; the std is floored so a constant dimension cannot divide by zero.
    """
    iterators = [iter_tar_samples(u, read={MOTION}) for u in urls]
    total = within_sq = None
    frames = clips = 0
    while iterators and clips < max_clips:
        for it in list(iterators):
            sample = next(it, None)
            if sample is None:
                iterators.remove(it)
                continue
            members = sample[1]
            if MOTION not in members:
                continue
            m = decode_npy(members[MOTION]).astype(np.float64)
            dev_sq = ((m - m.mean(0)) ** 2).sum(0)
            total = m.sum(0) if total is None else total + m.sum(0)
            within_sq = dev_sq if within_sq is None else within_sq + dev_sq
            frames += len(m)
            clips += 1
            if clips >= max_clips:
                break
    if not frames:
        raise ValueError(f"no motion latents found in {len(urls)} shard(s) to compute statistics from")
    mean = total / frames
    std = np.sqrt(within_sq / frames)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32), frames
