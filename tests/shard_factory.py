"""Small synthetic shard folders for tests (plain functions, reused by the trainer tests).

The data is learnable on purpose: each frame's motion latent is a fixed
function of that frame's audio features plus a per-clip identity offset and an
emotion offset, so a model that uses the audio can beat one that does not.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from shards.format import (
    AUDIO, EMOTION, EMOTION_PROBS, EMOTIONS, FORMAT_VERSION, LAMBDAS, META, MOTION, REFERENCE,
    decode_npy, encode_json, encode_npy,
)
from shards.manifest import CREATED_BY, fingerprint_inputs, settings_fingerprint, write_manifest
from shards.writer import ShardWriter


def tiny_jpeg(value: int = 128, size: int = 16) -> bytes:
    """A small grey JPEG for ref.jpg (its content does not matter to the training stream)."""
    import cv2  # imported here: only the shard members need it

    ok, data = cv2.imencode(".jpg", np.full((size, size, 3), value, np.uint8))
    assert ok
    return data.tobytes()


def clip_members(motion: np.ndarray, audio: np.ndarray, emotion_index: int | None = None,
                 probs: np.ndarray | None = None, key: str = "clip") -> dict[str, bytes]:
    """The members of one shard sample, encoded as the shard writer stores them."""
    frames = motion.shape[0]
    emotion = np.zeros(len(EMOTIONS), np.float32)
    if emotion_index is not None:
        emotion[emotion_index] = 1.0
    members = {
        MOTION: encode_npy(motion.astype(np.float32)),
        LAMBDAS: encode_npy(np.zeros((frames, 20), np.float32)),
        AUDIO: encode_npy(audio.astype(np.float16)),
        EMOTION: encode_npy(emotion),
        REFERENCE: tiny_jpeg(),
        META: encode_json({"key": key, "n_frames": frames, "fps": 25, "source": "synthetic"}),
    }
    if probs is not None:
        members[EMOTION_PROBS] = encode_npy(probs.astype(np.float32))
    return members


def synthetic_clip(rng: np.random.Generator, frames: int, mixing: np.ndarray, emotion_offsets: np.ndarray,
                   emotion_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(motion (T, D), audio (T, A)): smooth audio; motion = tanh(audio @ mixing) + identity + emotion."""
    audio_dim, dim_w = mixing.shape
    t = np.arange(frames)[:, None] / 25.0
    freq = rng.uniform(0.3, 3.0, size=audio_dim)
    phase = rng.uniform(0, 2 * np.pi, size=audio_dim)
    audio = np.sin(2 * np.pi * freq * t + phase).astype(np.float16).astype(np.float32)
    identity = rng.normal(0, 0.5, size=dim_w)
    motion = np.tanh(audio @ mixing) + identity + emotion_offsets[emotion_index]
    return motion.astype(np.float32), audio


def make_shards(folder: str | Path, clips_per_split: int | dict[str, int] | None = None,
                frames: int | tuple[int, int] = 80, dim_w: int = 16, audio_dim: int = 12, seed: int = 0, *,
                clips_per_shard: int = 4, emotion_probs: bool = False,
                motion_fingerprint: str = "synthetic-motion-seed-0") -> dict:
    """Write ``{split}-NNNNNN.tar`` shards and a valid manifest.json into ``folder``; return the manifest.

    ``clips_per_split``: {split: clips} (an int means that many train and val clips;
    default 8 train, 4 val). ``frames``: frames per clip, or an inclusive (min, max)
    range drawn per clip. Keys are ``{split}-s{shard:03d}-c{clip:04d}``.
    """
    folder = Path(folder)
    if clips_per_split is None:
        clips_per_split = {"train": 8, "val": 4}
    elif isinstance(clips_per_split, int):
        clips_per_split = {"train": clips_per_split, "val": clips_per_split}
    rng = np.random.default_rng(seed)
    mixing = rng.normal(0, 1.0 / np.sqrt(audio_dim), size=(audio_dim, dim_w))
    emotion_offsets = rng.normal(0, 0.3, size=(len(EMOTIONS), dim_w))
    splits = {}
    for split, count in clips_per_split.items():
        total_frames = 0
        with ShardWriter(folder, split, max_bytes=2**40, max_samples=clips_per_shard) as writer:
            for i in range(count):
                n = frames if isinstance(frames, int) else int(rng.integers(frames[0], frames[1] + 1))
                emotion_index = i % len(EMOTIONS)
                motion, audio = synthetic_clip(rng, n, mixing, emotion_offsets, emotion_index)
                probs = None
                if emotion_probs:
                    logits = rng.normal(size=len(EMOTIONS))
                    logits[emotion_index] += 3.0
                    probs = np.exp(logits) / np.exp(logits).sum()
                key = f"{split}-s{i // clips_per_shard:03d}-c{i:04d}"
                writer.add(key, clip_members(motion, audio, emotion_index, probs, key))
                total_frames += n
        infos = writer.completed
        splits[split] = {"clips": count, "frames": total_frames, "shards": [s.manifest_entry() for s in infos]}
    settings = {"synthetic": True, "seed": seed, "frames": frames if isinstance(frames, int) else list(frames),
                "clips_per_shard": clips_per_shard}
    encoders = {"motion": motion_fingerprint, "audio": "synthetic-audio", "emotion": None}
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": CREATED_BY + " (tests/shard_factory.py)",
        "splits": splits,
        "features": {
            "motion": {"dim": dim_w, "dtype": "float32"},
            "lambdas": {"dim": 20, "dtype": "float32"},
            "audio": {"dim": audio_dim, "dtype": "float16", "kind": "wav2vec2", "layers": "all"},
            "emotion": {"dim": len(EMOTIONS), "probs": emotion_probs},
        },
        "fps": 25,
        "sampling_rate": 16000,
        "input_size": 64,
        "encoders": {
            "motion": {"fingerprint": motion_fingerprint, "source": "random-seed-0", "random": True},
            "audio": {"fingerprint": "synthetic-audio", "source": "synthetic", "random": True},
            "emotion": None,
        },
        "crop": {"mode": "none", "scale": 1.6, "detector": "none"},
        "settings": settings,
        "fingerprint_inputs": fingerprint_inputs(settings, encoders),
        "fingerprint": settings_fingerprint(settings, encoders),
    }
    write_manifest(folder, manifest)
    return manifest


def write_tar(path: str | Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A plain tar of arbitrary (possibly broken) samples, for failure-mode tests."""
    path = Path(path)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}" if suffix else key)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def read_clips(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{key: {"motion", "audio", "emotion"}} read back with tarfile + np.load (independent of shards.dataset)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            key, _, suffix = Path(info.name).name.partition(".")
            names = {MOTION: "motion", AUDIO: "audio", EMOTION: "emotion", EMOTION_PROBS: "emotion_probs"}
            if suffix in names:
                out.setdefault(key, {})[names[suffix]] = decode_npy(tar.extractfile(info).read())
    return out


def read_split(folder: str | Path, split: str) -> dict[str, dict[str, np.ndarray]]:
    """read_clips over every shard of a split listed in the folder's manifest."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for shard in manifest["splits"][split]["shards"]:
        out.update(read_clips(folder / shard["name"]))
    return out
