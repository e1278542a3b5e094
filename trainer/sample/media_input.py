"""User inputs for `floatctl sample`: a speech file, a reference portrait and the emotion.

Audio: wav / mp3 / flac, or the audio track of a video, decoded with PyAV
(preprocess.media.decode_audio) to 16 kHz mono float32, as training audio is; for the
official float.pth with librosa.load, as the official inference reads it. Image: any size and
format OpenCV reads, face-cropped the way the shard stage crops clips
(preprocess.face_pick: dlib, or Haar without it, at 360p; official 1.6x framing, black padding)
or, with ``crop=False``, only resized as the official ``--no_crop`` does.

Every refusal is an ``InputError`` whose message names the file and the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from float.config import EMOTIONS, SAMPLES_PER_FRAME, SAMPLING_RATE
from preprocess.face import crop_frame, resize_frame
from preprocess.media import ClipError, decode_audio
from trainer.errors import SampleError

# Peak amplitude under which a waveform counts as silence (-80 dBFS): digital
# silence or a muted track, which would give the model nothing to follow.
SILENCE_PEAK = 1e-4


class InputError(ValueError):
    """An audio or image input that cannot be used; the message names the file and why."""


def load_audio(path: str | Path, sr: int = SAMPLING_RATE, samples_per_frame: int = SAMPLES_PER_FRAME,
               silence_peak: float = SILENCE_PEAK, reader: str = "pyav") -> np.ndarray:
    """The first audio track of ``path`` as float32 mono at ``sr`` Hz.

    ``reader``: "pyav" (preprocess.media.decode_audio, as the shard stage reads training audio) or
    "librosa" (``librosa.load(path, sr=sr)``, as the official FLOAT inference reads its audio; used for an
    official float.pth). Raises InputError when the file is missing or unreadable, has no audio,
    is shorter than one video frame, or is silent.
    """
    path = Path(path)
    if reader == "librosa":
        audio = _librosa_load(path, sr)
    else:
        try:
            audio = decode_audio(str(path), sr=sr)
        except ClipError as e:
            raise InputError(f"audio {path}: {e.reason}") from None
    if len(audio) < samples_per_frame:
        raise InputError(f"audio {path}: {len(audio)} samples ({1000 * len(audio) / sr:.0f} ms) at {sr} Hz is "
                         f"shorter than one video frame ({samples_per_frame} samples, "
                         f"{1000 * samples_per_frame / sr:.0f} ms)")
    peak = float(np.abs(audio).max())
    if not np.isfinite(peak):
        raise InputError(f"audio {path}: holds NaN or infinite samples")
    if peak < silence_peak:
        raise InputError(f"audio {path}: the audio is silent (peak amplitude {peak:.1e}); "
                         "give speech to drive the motion")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _librosa_load(path: Path, sr: int) -> np.ndarray:
    """``librosa.load(path, sr=sr)`` (mono, librosa's default resampler), its failures as one InputError line."""
    if not path.is_file():
        raise InputError(f"audio {path}: no such file")
    try:
        import librosa
    except ImportError as e:
        raise InputError(f"audio {path}: librosa is needed to read audio as the official code does ({e}); "
                         "pip install librosa") from None
    try:
        audio, _ = librosa.load(str(path), sr=sr)
    except Exception as e:  # soundfile, audioread and the resampler raise many kinds; the file is the cause
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"audio {path}: librosa cannot read it ({type(e).__name__}: {detail})") from None
    if audio.ndim != 1 or len(audio) == 0:
        raise InputError(f"audio {path}: no audio samples")
    return audio


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (alpha dropped, grey expanded); InputError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode: also works for non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"image {path}: unreadable (not an image format OpenCV can decode, or truncated)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop_face(image: np.ndarray, size: int, source: str = "image", detector: str | None = None) -> np.ndarray:
    """The face crop of one image at size x size, framed like the shard stage's clip crop.

    ``detector``: dlib or haar; None: the shard stage's default (dlib when installed, else Haar)."""
    from preprocess.face_pick import default_detector, image_crop_box

    box = image_crop_box(image, detector or default_detector())
    if box is None:
        raise InputError(f"image {source}: no face detected (pass --no-crop if it is already a face crop)")
    return crop_frame(image, box, size)


def load_reference_image(path: str | Path, size: int, crop: bool = True,
                         warn: Callable[[str], None] = print, detector: str | None = None) -> np.ndarray:
    """The reference portrait as (size, size, 3) uint8 RGB, face-cropped (by ``detector``, see crop_face)
    unless ``crop`` is False."""
    image = read_image(path)
    if crop:
        return crop_face(image, size, str(path), detector)
    h, w = image.shape[:2]
    if abs(h - w) > 0.02 * max(h, w):
        # The official --no_crop also stretches; say so, the face will look squashed.
        warn(f"warning: image {path} is {w}x{h}, not square; --no-crop stretches it to {size}x{size}")
    return resize_frame(image, size)


# ---------------------------------------------------------------- emotion
EMOTION_CHOICES = (*EMOTIONS, "auto", "none")


def parse_emotion(name: str | None) -> str | None:
    """Validate --emotion: a label, "auto", "none" or None (each mode's default)."""
    if name is None:
        return None
    choice = name.strip().lower()
    if choice not in EMOTION_CHOICES:
        raise SampleError(f"unknown emotion {name!r}; valid: {', '.join(EMOTIONS)}, auto (speech-emotion model) "
                          "or none")
    return choice


def emotion_vector(choice: str, waveform: np.ndarray | None = None, encoder=None) -> np.ndarray:
    """(7,) float32 for a label (one-hot), "none" (zeros) or "auto" (the SER probabilities)."""
    if choice == "none":
        return np.zeros(len(EMOTIONS), np.float32)
    if choice == "auto":
        if encoder is None or encoder.emotion is None:
            raise SampleError("--emotion auto needs the speech-emotion model: pass --ser DIR (none is recorded in "
                              "the shard manifest)")
        if waveform is None:
            raise SampleError("--emotion auto needs the waveform")
        return encoder.emotion_probs(waveform)
    out = np.zeros(len(EMOTIONS), np.float32)
    out[EMOTIONS.index(choice)] = 1.0
    return out


def emotion_name(vector: np.ndarray) -> str:
    """How an emotion vector reads in logs: a label, "none", or "probs (top LABEL)"."""
    if not np.any(vector):
        return "none"
    top = int(np.argmax(vector))
    return EMOTIONS[top] if np.isclose(vector.sum(), 1.0) and vector.max() == 1.0 else f"probs (top {EMOTIONS[top]})"
