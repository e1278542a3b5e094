"""Small crop shard folders for tests, built directly (no video, no face detection)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.crops import SAMPLES_PER_FRAME, crop_manifest_base, crop_members
from shards.format import EMOTIONS
from shards.manifest import write_manifest
from shards.writer import ShardWriter


def crop_frames(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """Smooth frames (a moving blob on a gradient): JPEG keeps them close, and each frame differs."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 200, size=3)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        cx, cy = 0.5 + 0.3 * np.sin(t / 5 + base[0]), 0.5 + 0.3 * np.cos(t / 7)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
        for c in range(3):
            out[t, :, :, c] = np.clip(base[c] * (0.5 + 0.5 * x) + 60 * blob, 0, 255)
    return out


def clip_sample(key: str, split: str, frames: np.ndarray, wave: np.ndarray, fingerprint: str,
                actor: str = "01", emotion_index: int | None = None) -> dict[str, bytes]:
    emotion = np.zeros(len(EMOTIONS), np.float32)
    if emotion_index is not None:
        emotion[emotion_index] = 1.0
    meta = {"key": key, "actor": actor, "split": split, "source": {"video": "synthetic", "audio": None},
            "settings_fingerprint": fingerprint}
    return crop_members(frames, wave, emotion, meta)


def make_crop_shards(folder: str | Path, clips_per_split: dict[str, int] | None = None,
                     frames: int | tuple[int, int] = 12, size: int = 32, seed: int = 0,
                     clips_per_shard: int = 2, frames_fn=crop_frames, actor_fn=None) -> dict:
    """Crop shards + a valid crop manifest; keys ``{split}-c{clip:03d}``, actor per split.
    ``frames_fn(rng, frames, size)``: each clip's (T,S,S,3) RGB uint8 frames (default: synthetic);
    ``actor_fn(split, i)``: clip i's actor (default: two per split, alternating)."""
    actor_fn = actor_fn or (lambda split, i: f"{split}{i % 2}")
    folder = Path(folder)
    clips_per_split = clips_per_split or {"train": 8, "val": 3}
    rng = np.random.default_rng(seed)
    base = crop_manifest_base(size, {"mode": "none", "scale": None, "detector": None},
                              {"synthetic": True, "seed": seed}, {"synthetic": True},
                              created_by="tests/crop_factory.py")
    splits = {}
    for split, count in clips_per_split.items():
        total = 0
        with ShardWriter(folder, split, max_bytes=2**40, max_samples=clips_per_shard) as writer:
            for i in range(count):
                n = frames if isinstance(frames, int) else int(rng.integers(frames[0], frames[1] + 1))
                wave = rng.normal(0, 0.1, n * SAMPLES_PER_FRAME).astype(np.float32)
                key = f"{split}-c{i:03d}"
                writer.add(key, clip_sample(key, split, frames_fn(rng, n, size), wave, base["fingerprint"],
                                            actor=actor_fn(split, i), emotion_index=i % len(EMOTIONS)))
                total += n
        splits[split] = {"clips": count, "frames": total, "shards": [s.manifest_entry() for s in writer.completed]}
    manifest = dict(base, splits=splits)
    write_manifest(folder, manifest)
    return manifest


def write_stage1_checkpoint(path: str | Path, size: int = 32, width: float = 0.125, seed: int = 0,
                            step: int = 3, **extra) -> Path:
    """A stage-1 checkpoint in the trainer's layout from a seeded MotionAutoEncoder (dim_w 512, dim_m 20)."""
    import torch

    from float.config import get_preset
    from float.motion_autoencoder import MotionAutoEncoder

    cfg = get_preset("tiny").replace(input_size=size, ae_width=width)
    torch.manual_seed(seed)
    model = MotionAutoEncoder(cfg.input_size, cfg.dim_w, cfg.dim_m, cfg.ae_width)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in state.items()}  # EMA != raw
    obj = {"kind": "motion_autoencoder", "step": step, "config": cfg.to_dict(), "model": state, "ema": ema}
    torch.save(obj | extra, path)
    return Path(path)
