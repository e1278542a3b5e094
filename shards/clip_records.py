"""Clip records: a batch of training windows shipped as the clip rows they use, cut where it is consumed.

Why. ``collate`` (shards/windows.py) copies every window's P + N rows into a float32 batch. The
windows of one clip overlap (a few windows of 60 rows from a clip of ~100-375 frames), and the
audio features are stored float16, so at paper width most of those bytes are duplicates or
conversions, copied once by the worker and again by the pin-memory thread. A clip record carries
each row a batch uses once, in its stored dtype, and per window the offset of its first row; the
consumer cuts the windows after the record is on the device (``cut_records``: one gather per
array), on CUDA in trainer/device_feed.py's side stream right after the copy.

Record (``pack_records``, made in the DataLoader worker, tensors in shared memory):

- ``clip_motion`` (R, D) float32 and ``clip_audio`` (R, A) float16 as stored (float32 shards stay
  float32): for every clip of the batch the union of its windows' row ranges ``[start, start + P + N)``
  of its padded arrays (``P`` zero rows in front, as ``Clip`` holds them), overlapping ranges merged,
  each row once;
- ``window_row`` (B,) int64: where each window's P + N rows begin in ``clip_*``;
- ``ref_motion`` (B, D) float32 and ``emotion`` (B, 7) float32 per window (small: the reference
  frame may lie outside the rows the windows use, so it travels by itself);
- ``start``, ``ref_frame`` (B,) int64 and ``key`` (a list), as ``collate`` gives them.

``cut_records`` turns a record into exactly the batch ``collate`` makes of the same windows (the
float16 -> float32 conversion is exact), on any device, without reading anything back to the host.
``motion`` / ``prev_motion`` (and the audio pair) are views of one gathered (B, P + N, .) tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from shards.windows import ARRAY_KEYS, _empty, shape_mismatch

RECORD_ONLY_KEYS = ("clip_motion", "clip_audio", "window_row")
_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def _check_batch(windows: list[dict]) -> None:
    """Refuse what ``collate`` refuses, in its words: windows that differ in a shape (mixed feature widths)."""
    first = windows[0]
    for name in ARRAY_KEYS:
        shape = first[name].shape
        for w in windows:
            if w[name].shape != shape:
                raise ValueError(shape_mismatch(name, w, first))
    for w in windows:
        if "_clip" not in w:
            raise ValueError(f"pack_records: window {w['key']}@{w.get('start')} does not carry its clip "
                             "(windows come from shards.windows.cut_windows)")


def _row_ranges(windows: list[dict], span: int) -> tuple[list[tuple], np.ndarray, int]:
    """((clip, first row, end row) segments to pack, each window's row in the packed arrays, rows in all).

    Clips in the order their first window comes; a clip's windows sorted by start, overlapping or
    touching ranges merged into one segment."""
    by_clip: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_clip.setdefault(id(w["_clip"]), []).append(i)
    segments: list[tuple] = []
    rows = np.empty(len(windows), np.int64)
    total = 0
    for members in by_clip.values():
        clip = windows[members[0]]["_clip"]
        lo = hi = -1
        for i in sorted(members, key=lambda i: windows[i]["start"]):
            s = windows[i]["start"]
            if s > hi:  # a gap after the current segment: close it, open a new one
                if hi >= 0:
                    segments.append((clip, lo, hi))
                    total += hi - lo
                lo = s
            hi = max(hi, s + span)
            rows[i] = total + s - lo
        segments.append((clip, lo, hi))
        total += hi - lo
    return segments, rows, total


def pack_records(windows: list[dict]) -> dict:
    """One batch of windows as a clip record (see the module docstring); in a worker, in shared memory."""
    if not windows:
        raise ValueError("pack_records: empty list of windows")
    _check_batch(windows)
    first = windows[0]
    P, N = first["prev_motion"].shape[0], first["motion"].shape[0]
    segments, rows, total = _row_ranges(windows, P + N)
    audio_dtype = np.result_type(*{w["_clip"].audio.dtype for w in windows})
    clip_motion = _empty((total, first["motion"].shape[1]), torch.float32)
    clip_audio = _empty((total, first["audio"].shape[1]), _TORCH[audio_dtype])
    motion_np, audio_np = clip_motion.numpy(), clip_audio.numpy()
    at = 0
    for clip, lo, hi in segments:
        motion_np[at:at + hi - lo] = clip.motion[lo:hi]
        audio_np[at:at + hi - lo] = clip.audio[lo:hi]
        at += hi - lo
    B = len(windows)
    per_window = {name: _empty((B,) + first[name].shape, torch.float32) for name in ("ref_motion", "emotion")}
    for name, out in per_window.items():
        out_np = out.numpy()
        for i, w in enumerate(windows):
            out_np[i] = w[name]
    return {"key": [w["key"] for w in windows], "clip_motion": clip_motion, "clip_audio": clip_audio,
            "window_row": torch.from_numpy(rows), **per_window,
            "start": torch.tensor([w["start"] for w in windows], dtype=torch.int64),
            "ref_frame": torch.tensor([w["ref_frame"] for w in windows], dtype=torch.int64)}


def cut_records(record: dict, num_prev_frames: int, num_frames: int) -> dict:
    """The batch ``collate`` would have made, cut from a clip record on the record's device.

    Tensor ops only (no ``.item()``, no loop over windows), so on CUDA it queues on the current
    stream without waiting for the host."""
    P, N = num_prev_frames, num_frames
    rows = record["window_row"]
    B, device = rows.shape[0], rows.device
    index = (rows[:, None] + torch.arange(P + N, device=device)).reshape(-1)
    motion = record["clip_motion"].index_select(0, index).view(B, P + N, -1)
    audio = record["clip_audio"].index_select(0, index).view(B, P + N, -1).float()
    batch = {k: v for k, v in record.items() if k not in RECORD_ONLY_KEYS}
    batch.update(motion=motion[:, P:], prev_motion=motion[:, :P], audio=audio[:, P:], prev_audio=audio[:, :P],
                 prev_mask=torch.arange(P, device=device) >= (P - record["start"])[:, None])
    return batch


def record_bytes(batch: dict) -> int:
    """Bytes of a batch's tensors (what a worker hands over and the pin-memory thread copies again)."""
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))
