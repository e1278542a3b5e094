"""One clip from source files to aligned, cropped 25 fps frames and 16 kHz audio.

Runs in worker processes: inputs and outputs are plain picklable data and nothing
here imports torch. Full-resolution frames are dropped as soon as they are cropped;
a clip too long to hold at full resolution is decoded again instead (count, find
the face, crop), one frame in memory at a time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from preprocess.discover import ClipSource
from preprocess.face import CropBox, crop_frame, resize_frame, sample_indices
from preprocess.face_pick import DEFAULT_DETECTOR, choose_crop_box
from preprocess.media import (FPS, SAMPLES_PER_FRAME, ClipError, align, decode_audio, describe,
                              iter_video_frames, open_bytes, probe_video)

CROP_MODES = ("auto", "none")
# Above this many bytes of decoded full-resolution frames, decode twice instead of holding them.
MEMORY_BUDGET_BYTES = 1 << 30
DETECT_SAMPLES = 12


@dataclass
class PreparedClip:
    source: ClipSource
    frames: np.ndarray  # (T, S, S, 3) uint8 RGB at 25 fps
    audio: np.ndarray  # (T * 640,) float32 mono 16 kHz
    box: CropBox | None  # None for crop="none"
    source_fps: float
    sha256: str  # of the source video file (or zip member) bytes
    segment: dict | None = None  # a segment of a long video: where it sits in the source (meta.json)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def seconds(self) -> float:
        return self.n_frames / FPS


def sha256_of(src: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_bytes(src) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_clip_audio(src: ClipSource) -> np.ndarray:
    try:
        return decode_audio(src.audio or src.video)
    except ClipError as exc:
        if src.audio is None and exc.reason.startswith("no audio track"):
            raise ClipError(f"no audio track in {describe(src.video)} and no paired audio file "
                            f"(put a same-stem .wav beside it)") from None
        raise


def _estimated_frame_bytes(video: str) -> int:
    """Bytes the clip's 25 fps RGB frames would take, from the container's metadata."""
    info = probe_video(video)
    return int((info.seconds or 0.0) * FPS) * info.width * info.height * 3


def _check_length(n_frames: int, min_seconds: float) -> None:
    seconds = n_frames / FPS
    if seconds < min_seconds:
        raise ClipError(f"clip is {seconds:.1f} s, shorter than {min_seconds:.1f} s")


def _crop_held(src: ClipSource, audio: np.ndarray, size: int, min_seconds: float, detector: str):
    """Decode once holding full frames, find the face, crop, dropping each full frame."""
    iterator, source_fps = iter_video_frames(src.video)
    full = list(iterator)
    full, audio = align(full, audio, SAMPLES_PER_FRAME)
    full = list(full)
    _check_length(len(full), min_seconds)
    picked = sample_indices(len(full), DETECT_SAMPLES)
    box = choose_crop_box([full[i] for i in picked], detector=detector)
    frames = np.empty((len(full), size, size, 3), dtype=np.uint8)
    for i in range(len(full)):
        frames[i] = crop_frame(full[i], box, size)
        full[i] = None  # free the full frame now
    return frames, audio, box, source_fps


def _crop_two_pass(src: ClipSource, audio: np.ndarray, size: int, min_seconds: float, detector: str):
    """Clips too long to hold: decode three times (count frames, detect on the sampled
    frames, crop) holding one full frame at a time. Same result as _crop_held."""
    iterator, source_fps = iter_video_frames(src.video)
    n_video = sum(1 for _ in iterator)
    _, audio = align(range(n_video), audio, SAMPLES_PER_FRAME)  # checks and cuts the audio
    n_frames = len(audio) // SAMPLES_PER_FRAME
    _check_length(n_frames, min_seconds)
    wanted = set(sample_indices(n_frames, DETECT_SAMPLES))
    sampled = []  # a dozen full frames: the face choice re-detects inside its crop of them
    iterator, _ = iter_video_frames(src.video)
    for i, frame in enumerate(iterator):
        if i in wanted:
            sampled.append(frame)
        if i >= n_frames - 1:
            break
    box = choose_crop_box(sampled, detector=detector)
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    iterator, _ = iter_video_frames(src.video)
    for i, frame in enumerate(iterator):
        if i >= n_frames:
            break
        frames[i] = crop_frame(frame, box, size)
    return frames, audio, box, source_fps


def _resize_only(src: ClipSource, audio: np.ndarray, size: int, min_seconds: float):
    iterator, source_fps = iter_video_frames(src.video)
    frames = []
    for frame in iterator:
        h, w = frame.shape[:2]
        if abs(h - w) > 0.02 * max(h, w):
            raise ClipError(f"crop 'none' needs square frames (an already cropped clip), "
                            f"got {w}x{h}; use crop 'auto'")
        frames.append(resize_frame(frame, size))
    frames, audio = align(frames, audio, SAMPLES_PER_FRAME)
    _check_length(len(frames), min_seconds)
    return np.stack(frames), audio, None, source_fps


def prepare_clip(src: ClipSource, input_size: int, crop: str = "auto", min_seconds: float = 2.0,
                 memory_budget_bytes: int = MEMORY_BUDGET_BYTES, detector: str = DEFAULT_DETECTOR) -> PreparedClip:
    """Decode, align, length-check and crop one clip. Raises ClipError with the reason.

    crop="auto": one square crop for the whole clip from the face detector (no face ->
    ClipError, never a silent centre crop); crop="none": the frames are already face
    crops and are only resized to input_size. ``detector``: dlib or haar (preprocess/face_pick.py).
    """
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r}; expected one of {CROP_MODES}")
    if input_size < 8:
        raise ValueError(f"input_size {input_size} is too small")
    sha256 = sha256_of(src.video)  # also fails fast on unreadable / zero-byte files
    audio = load_clip_audio(src)
    if crop == "none":
        frames, audio, box, source_fps = _resize_only(src, audio, input_size, min_seconds)
    elif _estimated_frame_bytes(src.video) <= memory_budget_bytes:
        frames, audio, box, source_fps = _crop_held(src, audio, input_size, min_seconds, detector)
    else:
        frames, audio, box, source_fps = _crop_two_pass(src, audio, input_size, min_seconds, detector)
    return PreparedClip(source=src, frames=frames, audio=np.ascontiguousarray(audio, dtype=np.float32),
                        box=box, source_fps=source_fps, sha256=sha256)
