"""Clips and training windows: decode a shard sample once, cut windows by slicing.

A clip's motion and audio arrays are decoded straight into arrays that carry
``num_prev_frames`` zero rows in front. A window starting at frame ``s`` is then
two plain slices of those arrays: ``[s, s+P)`` are the preceding frames (zero
rows where ``s < P``) and ``[s+P, s+P+N)`` the current ones. No per-frame Python
work and no copies happen until ``collate`` packs a batch.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from float.config import FloatConfig
from shards.format import AUDIO, EMOTION, EMOTION_PROBS, EMOTIONS, MOTION

EMOTION_MODES = ("auto", "probs", "label")
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


class CorruptSample(ValueError):
    """A shard sample that cannot be used; the message says why (the caller adds shard and key)."""


@dataclass
class Clip:
    key: str
    motion: np.ndarray  # (P + T, D) float32, rows [0, P) are zeros
    audio: np.ndarray  # (P + T, A) float32, rows [0, P) are zeros
    emotion: np.ndarray  # (7,) float32
    num_frames: int  # T
    pad: int  # P


def _npy_into_padded(data: bytes, name: str, pad: int) -> np.ndarray:
    """Decode an .npy payload of a 2-D array into a float32 array with ``pad`` zero rows in front.

    Reads the header and views the payload in place, so the only copy is the
    one into the padded float32 array (which also converts float16 audio).
    """
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:  # rare header versions: let numpy parse them (one extra copy)
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            shape, fortran, dtype = arr.shape, False, arr.dtype
    except Exception as e:  # numpy raises ValueError/SyntaxError/... on garbage headers
        raise CorruptSample(f"{name} is not a valid .npy ({type(e).__name__}: {e})") from e
    if dtype.hasobject or dtype.kind not in "fiu":
        raise CorruptSample(f"{name} has dtype {dtype}, expected a numeric array")
    if len(shape) != 2:
        raise CorruptSample(f"{name} has shape {shape}, expected (frames, features)")
    count = shape[0] * shape[1]
    offset = buf.tell()
    if version not in ((1, 0), (2, 0)):
        src = arr
    else:
        if len(data) - offset < count * dtype.itemsize:
            raise CorruptSample(f"{name} is truncated: {len(data) - offset} data bytes for shape {shape} {dtype}")
        order = "F" if fortran else "C"
        src = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order=order)
    out = np.empty((pad + shape[0], shape[1]), np.float32)
    out[:pad] = 0.0
    out[pad:] = src
    # One reduction instead of an isfinite mask: NaN/inf anywhere makes the sum non-finite.
    if not np.isfinite(out[pad:].sum()):
        raise CorruptSample(f"{name} holds NaN or infinite values")
    return out


def _small_vector(data: bytes, name: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise CorruptSample(f"{name} is not a valid .npy ({type(e).__name__}: {e})") from e
    if arr.shape != (len(EMOTIONS),) or arr.dtype.kind not in "fiu":
        raise CorruptSample(f"{name} has shape {arr.shape} {arr.dtype}, expected ({len(EMOTIONS)},) numbers")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CorruptSample(f"{name} holds NaN or infinite values")
    return arr


def decode_clip(key: str, members: dict[str, bytes], pad: int, emotion: str = "auto",
                motion_dim: int | None = None, audio_dim: int | None = None) -> Clip:
    """Decode one shard sample (member suffix -> bytes) into a padded Clip; CorruptSample if unusable.

    ``emotion``: "auto" uses the speech-emotion probabilities when the sample has
    them and the one-hot label otherwise; "probs" requires the probabilities;
    "label" always uses the label.
    """
    if emotion not in EMOTION_MODES:
        raise ValueError(f"emotion must be one of {EMOTION_MODES}, got {emotion!r}")
    wanted = [MOTION, AUDIO, EMOTION_PROBS if emotion == "probs" else EMOTION]
    missing = [m for m in wanted if m not in members]
    if missing:
        raise CorruptSample(f"missing member(s) {missing} (has {sorted(members)})")
    motion = _npy_into_padded(members[MOTION], MOTION, pad)
    audio = _npy_into_padded(members[AUDIO], AUDIO, pad)
    frames = motion.shape[0] - pad
    if audio.shape[0] - pad != frames:
        raise CorruptSample(f"{AUDIO} has {audio.shape[0] - pad} frames but {MOTION} has {frames}")
    if motion_dim is not None and motion.shape[1] != motion_dim:
        raise CorruptSample(f"{MOTION} is {motion.shape[1]} wide, expected {motion_dim}")
    if audio_dim is not None and audio.shape[1] != audio_dim:
        raise CorruptSample(f"{AUDIO} is {audio.shape[1]} wide, expected {audio_dim}")
    use_probs = emotion == "probs" or (emotion == "auto" and EMOTION_PROBS in members)
    emo_name = EMOTION_PROBS if use_probs else EMOTION
    return Clip(key, motion, audio, _small_vector(members[emo_name], emo_name), frames, pad)


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
                raise ValueError(f"collate: {name} of window {w['key']}@{w.get('start')} has shape "
                                 f"{w[name].shape}, {windows[0]['key']} has {first.shape} (mixed feature widths?)")
            out_np[i] = w[name]
        batch[name] = out
    for name in INDEX_KEYS:
        if name in windows[0]:
            batch[name] = torch.tensor([w[name] for w in windows], dtype=torch.int64)
    return batch
