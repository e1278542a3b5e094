"""(source, driving) frame pairs from crop shards, for training the motion auto-encoder.

The stream is TrainWindows's (shards/dataset.py) with two hooks changed: a clip
is a lazily decoded crop sample (shards/crops.py) and what is drawn from it is
``pairs_per_clip`` pairs of two different frames. Blocks, shuffle buffer, shard
assignment, skipping of corrupt samples and the exact-resume positions are the
same code, so ``make_pair_loader`` returns a WindowLoader (shards/loader.py) with the same
``state_dict()`` / ``load_state_dict()`` / ``skipped`` API.

Only the drawn frames are JPEG-decoded, in the worker, when the clip is drawn
(so a frame that does not decode skips the clip like any corrupt sample).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from shards.augment import PairAugment, augment_pairs
from shards.crops import CROP_ONLY_MEMBERS, JPEGS, OFFSETS, CropClip
from shards.format import META
from shards.dataset import TrainWindows
from shards.errors import CorruptSample
from shards.loader import WindowLoader, loader_over
from shards.tar import iter_tar_samples
from shards.validation import FixedItems
from shards.windows import _empty

log = logging.getLogger(__name__)

# The pair stream reads the frames only; audio, emotion and meta stay unread in the tar.
_PAIR_MEMBERS = frozenset((JPEGS, OFFSETS))


HARD_CANDIDATES = 8  # driving frames a "hard" pair chooses among
_THUMB = 16  # side of the thumbnails that measure how far a frame is from the source


@dataclass(frozen=True)
class PairSpec:
    pairs_per_clip: int = 4  # (source, driving) pairs drawn from each decoded clip
    hard_fraction: float = 0.0  # share of pairs whose driving frame is the farthest of HARD_CANDIDATES
    augment: PairAugment = PairAugment()  # transforms shared by a pair's two frames (shards/augment.py)
    actor_weights: tuple = ()  # ((actor, weight), ...): pairs of a clip x its actor's weight (actor_weights())

    def __post_init__(self) -> None:
        if self.pairs_per_clip < 1:
            raise ValueError(f"pairs_per_clip must be at least 1, got {self.pairs_per_clip}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    s = frame.shape[0] // _THUMB
    return frame[:s * _THUMB, :s * _THUMB].reshape(_THUMB, s, _THUMB, s, 3).mean(axis=(1, 3))


def draw_pairs(clip: CropClip, count: int, rng: np.random.Generator, size: int | None = None,
               hard_fraction: float = 0.0) -> list[dict]:
    """``count`` pairs of two different frames; frames decoded once each.

    The driving frame is uniform over the clip's other frames, except for a ``hard_fraction`` of the
    pairs, whose driving frame is, of HARD_CANDIDATES uniform ones, the one that differs most from the
    source (mean absolute difference of 16x16 thumbnails). Most frame pairs of a talking head barely
    differ; the hard ones (an open mouth against a closed one, the far end of a nod) are what teaches
    the motion code, and the auto-encoder learns to open a mouth several times sooner with them.

    Items: ``key``, ``source`` / ``driving`` (S,S,3) RGB uint8, ``source_frame`` / ``driving_frame``.
    """
    n = clip.num_frames
    src = rng.integers(0, n, size=count)
    drv = (src + rng.integers(1, n, size=count)) % n  # uniform over the other n - 1 frames
    hard = rng.random(count) < hard_fraction
    candidates = (src[:, None] + rng.integers(1, n, size=(count, HARD_CANDIDATES))) % n
    decoded: dict[int, np.ndarray] = {}
    thumbs: dict[int, np.ndarray] = {}

    def frame(i: int) -> np.ndarray:
        if i not in decoded:
            img = clip.frame(i)  # CropSampleError (a CorruptSample) when it does not decode
            if size is not None and img.shape[0] != size:
                raise CorruptSample(f"frame {i} is {img.shape[0]} px, expected {size}")
            decoded[i] = img
        return decoded[i]

    def thumb(i: int) -> np.ndarray:
        if i not in thumbs:
            thumbs[i] = _thumbnail(frame(i).astype(np.float32))
        return thumbs[i]

    for k in np.flatnonzero(hard):
        s = int(src[k])
        distances = [float(np.abs(thumb(int(c)) - thumb(s)).mean()) for c in candidates[k]]
        drv[k] = candidates[k][int(np.argmax(distances))]
    return [{"key": clip.key, "source": frame(s), "driving": frame(d), "source_frame": s, "driving_frame": d}
            for s, d in zip(src.tolist(), drv.tolist())]


def collate_pairs(items: list[dict]) -> dict:
    """``source`` / ``driving`` (B,3,S,S) uint8 tensors (the trainer maps them to [-1, 1]),
    ``source_frame`` / ``driving_frame`` (B,) int64 and ``key`` (a list)."""
    if not items:
        raise ValueError("collate_pairs: empty list of pairs")
    shape = items[0]["source"].shape
    batch: dict = {"key": [it["key"] for it in items]}
    for name in ("source", "driving"):
        out = _empty((len(items), 3, shape[0], shape[1]), torch.uint8)
        out_np = out.numpy()
        for i, it in enumerate(items):
            if it[name].shape != shape:
                raise ValueError(f"collate_pairs: {it['key']} has {name} frames of shape {it[name].shape}, "
                                 f"{items[0]['key']} has {shape} (crop shards of different sizes?)")
            out_np[i] = it[name].transpose(2, 0, 1)
        batch[name] = out
    for name in ("source_frame", "driving_frame"):
        batch[name] = torch.tensor([it[name] for it in items], dtype=torch.int64)
    return batch


class CropPairs(TrainWindows):
    """Infinite (``resampled``) stream of frame pairs; see TrainWindows for streams and resume.

    ``size``: the expected crop side (from the crop manifest); frames of another size skip the clip.
    ``stream_kwargs``: TrainWindows's mixing (``sources``, ``weights``: several crop sets drawn by
    share) and unreadable-shard rule (``read_retries``, ``retry_delay``, ``max_failed_reads``).
    """

    read_members = _PAIR_MEMBERS
    known_members = CROP_ONLY_MEMBERS
    collate = staticmethod(collate_pairs)

    def __init__(self, urls: list[str], spec: PairSpec = PairSpec(), seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, resampled: bool = True,
                 shards_per_block: int = 2, size: int | None = None, **stream_kwargs):
        super().__init__(urls, spec, seed=seed, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer,
                         resampled=resampled, shards_per_block=shards_per_block, **stream_kwargs)
        self.size = size
        self._weights = dict(spec.actor_weights)
        if self._weights:
            self.read_members = _PAIR_MEMBERS | {META}  # the clip's actor is in its meta.json

    @property
    def min_frames(self) -> int:
        return 2  # a pair needs two different frames

    def spec_state(self) -> list:
        # hard_fraction only when used, so streams saved before it existed still resume exactly
        # (and the augmentation likewise)
        later = self.spec.augment.active or bool(self._weights)
        hard = [self.spec.hard_fraction] if self.spec.hard_fraction or later else []
        augment = [",".join(self.spec.augment.names())] if later else []
        balanced = [[[a, round(w, 6)] for a, w in self.spec.actor_weights]] if self._weights else []
        return ["pairs", self.spec.pairs_per_clip, self.size, *hard, *augment, *balanced]

    def decode(self, key: str, members: dict[str, bytes]) -> CropClip:
        return CropClip(key, members)  # CropSampleError is a CorruptSample: the stream skips the clip

    def draw(self, clip: CropClip, rng: np.random.Generator) -> list[dict]:
        count = self.spec.pairs_per_clip
        if self._weights:  # stochastic rounding: on average pairs_per_clip x weight pairs
            actor = clip.meta().get("actor")
            if actor in (None, ""):
                raise CorruptSample("meta.json names no actor (needed by --balance-actors)")
            actor = str(actor)
            count = int(np.floor(count * self._weights.get(actor, 1.0) + rng.random()))
            if count == 0:
                return []
        pairs = draw_pairs(clip, count, rng, self.size, self.spec.hard_fraction)
        return augment_pairs(pairs, self.spec.augment, rng)


def make_pair_loader(urls: list[str], batch_size: int, num_workers: int = 0, seed: int = 0, rank: int = 0,
                     world_size: int = 1, pairs_per_clip: int = 4, pin_memory: bool | None = None, *,
                     size: int | None = None, state: dict | None = None, prefetch_factor: int = 2,
                     hard_fraction: float = 0.0, augment: PairAugment = PairAugment(),
                     actor_weights: tuple = (), **dataset_kwargs) -> WindowLoader:
    """A WindowLoader of collated pair batches over CropPairs(urls, ...).

    ``state``: a saved ``state_dict()`` to continue from (strict). ``dataset_kwargs``:
    shuffle_buffer, shards_per_block, resampled, and CropPairs's stream_kwargs (sources and
    weights of mixed sets: ``ShardSets.loader_kwargs``; the retry rule).
    """
    dataset = CropPairs(urls, PairSpec(pairs_per_clip, hard_fraction, augment, actor_weights), seed=seed, rank=rank, world_size=world_size,
                        size=size, **dataset_kwargs)
    return loader_over(dataset, batch_size, num_workers, pin_memory, prefetch_factor, state)


def actor_weights(urls: list[str]) -> tuple:
    """((actor, weight), ...) that draw every actor's pairs evenly: weight = (clips / actors) / the actor's
    clips, read from each clip's meta.json in ``urls`` (one pass over the shards; only meta.json is kept).
    With a few people and unequal footage (one speaker's 60 s cut into six clips, another's single 5 s
    clip), uniform clips give the long-footage speakers most of the pairs and teach their faces."""
    import json

    counts: dict[str, int] = {}
    for url in urls:
        for key, members in iter_tar_samples(url, frozenset({META}), known_members=CROP_ONLY_MEMBERS):
            try:
                actor = json.loads(members[META]).get("actor")
            except (KeyError, ValueError, AttributeError):
                actor = None
            if actor in (None, ""):
                raise ValueError(f"{url}: {key} has no actor in its meta.json (needed to balance actors)")
            actor = str(actor)
            counts[actor] = counts.get(actor, 0) + 1
    if not counts:
        raise ValueError(f"no clips in {len(urls)} train shard(s) to balance actors over")
    mean = sum(counts.values()) / len(counts)
    return tuple((actor, mean / n) for actor, n in sorted(counts.items()))


class ValPairs(FixedItems):
    """A fixed list of held-out pairs: shards in the given order, clips in tar order, clip ``c``'s
    pairs drawn with ``default_rng([seed, c])``, so the list depends only on the data and the seed."""

    def __init__(self, urls: list[str], pairs_per_clip: int = 2, max_clips: int | None = None, seed: int = 0,
                 size: int | None = None):
        if not urls:
            raise ValueError("ValPairs: no shard URLs")
        PairSpec(pairs_per_clip)  # validates the count
        super().__init__(collate_pairs)
        self.pairs = self.items  # the same list, under the name the callers read
        clips = 0
        for url in urls:
            for key, members in iter_tar_samples(url, _PAIR_MEMBERS, known_members=CROP_ONLY_MEMBERS):
                if max_clips is not None and clips >= max_clips:
                    return
                try:
                    clip = CropClip(key, members)
                    if clip.num_frames < 2:
                        self.skipped += 1
                        continue
                    pairs = draw_pairs(clip, pairs_per_clip, np.random.default_rng([seed, clips]), size)
                except CorruptSample as e:  # CropSampleError included
                    log.warning("%s: skipping corrupt sample %s: %s", url, key, e)
                    self.skipped += 1
                    continue
                self.pairs.extend(pairs)
                clips += 1
