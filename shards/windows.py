"""Clips and training windows: decode a shard sample once, cut windows by slicing.

A clip's motion and audio arrays are decoded straight into arrays that carry
``num_prev_frames`` zero rows in front. A window starting at frame ``s`` is then
two plain slices of those arrays: ``[s, s+P)`` are the preceding frames (zero
rows where ``s < P``) and ``[s+P, s+P+N)`` the current ones. No per-frame Python
work and no copies happen until ``collate`` packs a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from float.config import FloatConfig
from shards.sample import Clip
# Window entries that collate stacks into tensors (everything else but "key" is ignored).
ARRAY_KEYS = ("motion", "prev_motion", "prev_mask", "audio", "prev_audio", "ref_motion", "emotion")
INDEX_KEYS = ("start", "ref_frame")


@dataclass(frozen=True)
class WindowSpec:
    num_frames: int = 50  # current frames per window
    num_prev_frames: int = 10  # preceding frames (zero-padded before the clip start)
    windows_per_clip: int = 4  # windows cut from each decoded clip

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.num_prev_frames < 0 or self.windows_per_clip < 1:
            raise ValueError(f"invalid {self}: need num_frames >= 1, num_prev_frames >= 0, "
                             "windows_per_clip >= 1")

    @classmethod
    def from_config(cls, cfg: FloatConfig, windows_per_clip: int = 4) -> "WindowSpec":
        return cls(cfg.num_frames, cfg.num_prev_frames, windows_per_clip)


@lru_cache(maxsize=None)
def _prev_mask(pad: int, start: int) -> np.ndarray:
    """True where the preceding frame ``start - pad + i`` exists (shared, read-only)."""
    mask = np.arange(start - pad, start) >= 0
    mask.flags.writeable = False
    return mask


def num_starts(clip: Clip, spec: WindowSpec) -> int:
    """How many window start frames the clip offers (0 when shorter than a window)."""
    return max(0, clip.num_frames - spec.num_frames + 1)


def random_draws(clip: Clip, spec: WindowSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random window starts (at most ``windows_per_clip``) and a random reference frame each."""
    n = num_starts(clip, spec)
    k = min(spec.windows_per_clip, n)
    starts = rng.choice(n, size=k, replace=False) if k < n else rng.permutation(n)
    refs = rng.integers(0, clip.num_frames, size=k)
    return starts, refs


def even_starts(clip: Clip, spec: WindowSpec, count: int) -> np.ndarray:
    """``count`` window starts spread evenly over the clip (fewer if the clip is short)."""
    n = num_starts(clip, spec)
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def cut_windows(clip: Clip, spec: WindowSpec, starts, ref_frames) -> list[dict]:
    """Windows as dicts of views into the clip's arrays (see the module docstring)."""
    if clip.pad != spec.num_prev_frames:
        raise ValueError(f"clip {clip.key} was padded with {clip.pad} rows, spec wants {spec.num_prev_frames}")
    P, N = spec.num_prev_frames, spec.num_frames
    m, a = clip.motion, clip.audio
    windows = []
    for s, r in zip(np.asarray(starts).tolist(), np.asarray(ref_frames).tolist()):
        if not (0 <= s <= clip.num_frames - N and 0 <= r < clip.num_frames):
            raise ValueError(f"clip {clip.key} ({clip.num_frames} frames): bad window start {s} / ref {r}")
        windows.append({
            "key": clip.key, "start": s, "ref_frame": r,
            "motion": m[s + P:s + P + N], "prev_motion": m[s:s + P], "prev_mask": _prev_mask(P, s),
            "audio": a[s + P:s + P + N], "prev_audio": a[s:s + P],
            "ref_motion": m[P + r], "emotion": clip.emotion,
            "_clip": clip,  # the clip itself: clip records (shards/clip_records.py) pack its rows once a batch
        })
    return windows


def _empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A batch tensor; inside a DataLoader worker it is allocated in shared memory, which
    saves the copy the worker->main transfer would otherwise make (as default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty((0,), dtype=dtype).set_(storage, 0, shape)


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.bool_): torch.bool}


def shape_mismatch(name: str, window: dict, first: dict) -> str:
    """The error of a batch whose windows differ in the shape of ``name`` (collate and clip records say the same)."""
    return (f"collate: {name} of window {window['key']}@{window.get('start')} has shape "
            f"{window[name].shape}, {first['key']} has {first[name].shape} (mixed feature widths?)")


def collate(windows: list[dict]) -> dict:
    """Batch windows into contiguous tensors (keys of ARRAY_KEYS and INDEX_KEYS) plus "key" (a list)."""
    if not windows:
        raise ValueError("collate: empty list of windows")
    batch: dict = {"key": [w["key"] for w in windows]}
    B = len(windows)
    for name in ARRAY_KEYS:
        first = windows[0][name]
        dtype = _TORCH_DTYPES.get(first.dtype)
        if dtype is None:
            raise ValueError(f"collate: {name} has dtype {first.dtype}, expected float32 or bool")
        out = _empty((B,) + first.shape, dtype)
        out_np = out.numpy()
        for i, w in enumerate(windows):
            if w[name].shape != first.shape:
                raise ValueError(shape_mismatch(name, w, windows[0]))
            out_np[i] = w[name]
        batch[name] = out
    for name in INDEX_KEYS:
        if name in windows[0]:
            batch[name] = torch.tensor([w[name] for w in windows], dtype=torch.int64)
    return batch
