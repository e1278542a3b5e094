"""Held-out clips (val / test) read whole from a shard folder, for sampling and its error against the truth."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from shards.format import KNOWN_MEMBERS, REFERENCE, SPLITS
from shards.errors import CorruptSample, ShardError
from shards.sample import decode_clip, decode_reference, read_meta
from shards.remote import join_location
from shards.tar import iter_tar_samples

Log = Callable[[str], None]


@dataclass
class HeldoutClip:
    key: str
    motion: np.ndarray  # (T, dim_w) float32 ground truth
    audio: np.ndarray  # (T, D) float32 features
    emotion: np.ndarray  # (7,) probabilities when the shard has them, else the one-hot label
    reference: np.ndarray | None  # ref.jpg as (S, S, 3) uint8 RGB
    meta: dict = field(default_factory=dict)


def pick_split(manifest: dict, split: str = "auto") -> str:
    """"auto": test when it has clips (never seen in training or validation), else val."""
    splits = manifest.get("splits", {})
    if split == "auto":
        for name in ("test", "val"):
            if splits.get(name, {}).get("clips"):
                return name
        raise ShardError("the shards have no val or test clips to sample from; give --audio and --image")
    if split not in SPLITS:
        raise ShardError(f"--split {split!r}: choose one of auto, {', '.join(SPLITS)}")
    if not splits.get(split, {}).get("clips"):
        raise ShardError(f"the shards have no {split!r} clips (splits: "
                          f"{ {k: v.get('clips') for k, v in splits.items()} })")
    return split


def read_heldout_clips(folder: str | Path, manifest: dict, split: str, count: int, min_frames: int = 2,
                       log: Log = print) -> list[HeldoutClip]:
    """The first ``count`` usable clips of ``split``, in manifest shard order."""
    clips: list[HeldoutClip] = []
    for shard in manifest["splits"][split]["shards"]:
        path = join_location(str(folder), shard["name"])  # a local folder or a URL
        try:
            for key, members in iter_tar_samples(path, read=KNOWN_MEMBERS):
                try:
                    clip = decode_clip(key, members, pad=0, emotion="auto")
                except CorruptSample as e:
                    log(f"warning: {path}: skipping sample {key}: {e}")
                    continue
                if clip.num_frames < min_frames:
                    continue
                clips.append(HeldoutClip(key, clip.motion, clip.audio, clip.emotion,
                                         decode_reference(members.get(REFERENCE)), read_meta(members)))
                if len(clips) >= count:
                    return clips
        except (OSError, ShardError) as e:
            raise ShardError(f"shard {path}: unreadable ({e})") from None
    if not clips:
        raise ShardError(f"{folder}: no usable {split!r} clip in the shards")
    return clips
