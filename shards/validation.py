"""Fixed validation sets: the same items in the same order on every call, served whole or as
one rank's collated batches. ``ValWindows`` here (latent shards); ``ValPairs`` (crop shards) in
shards/pairs.py.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from shards.errors import CorruptSample
from shards.sample import decode_clip
from shards.tar import iter_tar_samples
from shards.windows import WindowSpec, collate, cut_windows, even_starts

log = logging.getLogger(__name__)


class FixedItems(torch.utils.data.Dataset):
    """A fixed list of items (``self.items``) and the collate that batches them."""

    def __init__(self, collate_fn: Callable[[list[dict]], dict]):
        self.items: list[dict] = []
        self.collate_fn = collate_fn
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        """Collated batches of this rank's share (every ``world_size``-th item), in order."""
        mine = self.items[rank::world_size]
        return [self.collate_fn(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)]


class ValWindows(FixedItems):
    """A fixed, finite list of windows from (val) shards: shards in the given order, clips in tar
    order, ``windows_per_clip`` starts spread evenly over each clip, reference = frame 0 (the frame
    ref.jpg shows, as at inference). Windows are compact copies, so clips are not kept alive.
    """

    def __init__(self, urls: list[str], spec: WindowSpec = WindowSpec(), windows_per_clip: int = 2,
                 max_clips: int | None = None, emotion: str = "auto", motion_dim: int | None = None,
                 audio_dim: int | None = None):
        if not urls:
            raise ValueError("ValWindows: no shard URLs")
        super().__init__(collate)
        self.spec = spec
        self.windows = self.items  # the same list, under the name the callers read
        clips = 0
        for url in urls:
            for key, members in iter_tar_samples(url):
                if max_clips is not None and clips >= max_clips:
                    return
                try:
                    clip = decode_clip(key, members, spec.num_prev_frames, emotion, motion_dim, audio_dim)
                except CorruptSample as e:
                    log.warning("%s: skipping corrupt sample %s: %s", url, key, e)
                    self.skipped += 1
                    continue
                if clip.num_frames < spec.num_frames:
                    self.skipped += 1
                    continue
                starts = even_starts(clip, spec, windows_per_clip)
                for w in cut_windows(clip, spec, starts, np.zeros_like(starts)):
                    self.windows.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in w.items()})
                clips += 1
