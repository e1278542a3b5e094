"""The on-disk contract between the offline stage and the trainer.

One WebDataset sample per clip. Member names (the part after the key) and the
dtypes stored in them are fixed here and nowhere else; shards/sample.py encodes,
decodes and checks samples with them, shards/tar.py reads them from tar files.
"""
from __future__ import annotations

import io
import json

import numpy as np

from float.config import EMOTIONS  # noqa: F401  (the model's classes; emotion.npy is a vector over them)

FORMAT_VERSION = 1

# member suffix -> (dtype on disk, description)
MOTION = "motion.npy"  # (T, dim_w) float32: per-frame motion latent dec.direction(enc.fc(enc(frame)))
LAMBDAS = "lambda.npy"  # (T, dim_m) float32: the motion coefficients of each frame
AUDIO = "audio.npy"  # (T, D) float16: audio features at the video frame rate
EMOTION = "emotion.npy"  # (7,) float32: one-hot label from the file name (zeros if unknown)
EMOTION_PROBS = "emotion_probs.npy"  # (7,) float32: speech-emotion model softmax (optional)
REFERENCE = "ref.jpg"  # JPEG of the cropped first frame at the crop size (input_size)
META = "meta.json"  # actor, source path and sha256, fps, n_frames, crop box, fingerprints

# Every member a sample may hold; the ones training decodes (the rest is skipped unread); the ones every
# sample must hold (EMOTION_PROBS too when the manifest says features.emotion.probs).
KNOWN_MEMBERS = (MOTION, AUDIO, LAMBDAS, EMOTION, EMOTION_PROBS, REFERENCE, META)
TRAINING_MEMBERS = frozenset((MOTION, AUDIO, EMOTION, EMOTION_PROBS))
REQUIRED_MEMBERS = (MOTION, LAMBDAS, AUDIO, EMOTION, REFERENCE, META)
# meta.json: the keys every sample's meta must have (the writer adds crop, emotion, fields, encoders...).
REQUIRED_META = ("key", "actor", "split", "n_frames", "fps", "sha256", "source", "settings_fingerprint")

MOTION_DTYPE = np.float32
AUDIO_DTYPE = np.float16

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"

# RAVDESS file-name emotion codes -> FLOAT's classes (calm has no class of its own: neutral).
RAVDESS_TO_FLOAT: dict[int, str] = {
    1: "neutral",
    2: "neutral",
    3: "happy",
    4: "sad",
    5: "angry",
    6: "fear",
    7: "disgust",
    8: "surprise",
}


def ravdess_emotion_index(code: int) -> int:
    """Index into EMOTIONS of a RAVDESS emotion code (the third field of its file names)."""
    if code not in RAVDESS_TO_FLOAT:
        raise ValueError(f"unknown RAVDESS emotion code {code!r}; expected 1..8")
    return EMOTIONS.index(RAVDESS_TO_FLOAT[code])


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=None).encode()


def member_problems(members, expected, where: str) -> list[str]:
    """A sample's missing and unexpected members, as ``floatctl inspect`` reports them."""
    problems = []
    missing = sorted(set(expected) - set(members))
    extra = sorted(set(members) - set(expected))
    if missing:
        problems.append(f"{where}: missing members {missing}")
    if extra:
        problems.append(f"{where}: unexpected members {extra}")
    return problems
