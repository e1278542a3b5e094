"""Turning motion latents into video: batched motion-decoder rendering and mp4 writing.

Rendering follows the official FLOAT decoder call: frame t is
``dec(appearance + motion[t], feats)`` where ``appearance`` and ``feats`` come
from encoding one reference image. The reference is encoded once and shared
by a batch of frames (MotionAutoEncoder.decode broadcasts batch-1 inputs), so
decoding costs one decoder pass per ``batch_size`` frames.

Video is written with PyAV only (no ffmpeg binary): H.264 (yuv420p) at 25 fps,
with the 16 kHz mono waveform muxed in as AAC.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from float.config import FPS, SAMPLING_RATE
from float.motion_autoencoder import MotionAutoEncoder
from preprocess import mp4

AAC_BITRATE = 64_000  # plenty for 16 kHz mono speech


@dataclass
class Reference:
    """One encoded reference image: what every rendered frame is decoded from."""

    image: np.ndarray  # (S, S, 3) uint8 RGB, the crop that was encoded
    appearance: Tensor  # (1, style_dim)
    motion: Tensor  # (1, style_dim): the reference motion latent wr
    feats: list[Tensor]  # encoder feature maps, batch 1


def image_to_tensor(image: np.ndarray) -> Tensor:
    """(S, S, 3) uint8 RGB -> (1, 3, S, S) float32 in [-1, 1] (the official normalisation)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (S, S, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (x / 127.5 - 1.0).unsqueeze(0)


def tensor_to_frames(images: Tensor) -> np.ndarray:
    """(B, 3, S, S) about [-1, 1] -> (B, S, S, 3) uint8 RGB, clamped."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_reference(autoencoder: MotionAutoEncoder, image: np.ndarray) -> Reference:
    """Encode the reference crop once: appearance, its motion latent wr and the feature maps."""
    if image.shape[:2] != (autoencoder.size, autoencoder.size):
        image = cv2.resize(image, (autoencoder.size, autoencoder.size), interpolation=cv2.INTER_AREA
                           if image.shape[0] > autoencoder.size else cv2.INTER_CUBIC)
    param = next(autoencoder.parameters())
    x = image_to_tensor(image).to(device=param.device, dtype=param.dtype)
    appearance, lambdas, feats = autoencoder.encode(x)
    return Reference(image=image, appearance=appearance, motion=autoencoder.motion_from_lambdas(lambdas),
                     feats=feats)


@torch.no_grad()
def render_motion(autoencoder: MotionAutoEncoder, reference: Reference, motion: Tensor,
                  batch_size: int = 16) -> np.ndarray:
    """Frames (T, S, S, 3) uint8 for motion latents (T, style_dim), ``batch_size`` frames per decoder pass."""
    if motion.ndim != 2 or motion.shape[1] != reference.appearance.shape[1]:
        raise ValueError(f"motion must be (frames, {reference.appearance.shape[1]}), got {tuple(motion.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    param = next(autoencoder.parameters())
    motion = motion.to(device=param.device, dtype=param.dtype)
    out = np.empty((motion.shape[0], autoencoder.size, autoencoder.size, 3), np.uint8)
    for start in range(0, motion.shape[0], batch_size):
        chunk = motion[start:start + batch_size]
        out[start:start + len(chunk)] = tensor_to_frames(
            autoencoder.decode(reference.appearance, chunk, reference.feats))
    return out


def label_frames(frames: np.ndarray, text: str) -> np.ndarray:
    """A copy of the frames with a small caption in the top-left corner."""
    out = frames.copy()
    scale = max(0.3, frames.shape[1] / 512)
    thickness = max(1, round(scale * 2))
    org = (max(2, round(6 * scale)), max(10, round(22 * scale)))
    for frame in out:
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str] | None = ("ground truth", "generated")
                 ) -> np.ndarray:
    """(T, H, 2W, 3): ``left`` | ``right`` per frame (the shorter clip sets T), optionally captioned."""
    n = min(len(left), len(right))
    if left.shape[1:] != right.shape[1:]:
        raise ValueError(f"side_by_side: frame shapes differ, {left.shape[1:]} vs {right.shape[1:]}")
    left, right = left[:n], right[:n]
    if labels:
        left, right = label_frames(left, labels[0]), label_frames(right, labels[1])
    return np.concatenate([left, right], axis=2)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad one black row/column where odd."""
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS, audio: np.ndarray | None = None,
              sample_rate: int = SAMPLING_RATE, crf: int = 18) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 mp4, with ``audio`` (mono float32) as AAC.

    The audio is clipped to [-1, 1] and cut or zero-padded to the video's length (T / fps
    seconds); odd sizes get one black row / column. Written by preprocess/mp4.py (atomically).
    """
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    frames = _even(frames)
    wave = None
    if audio is not None:
        wave = np.zeros(len(frames) * sample_rate // fps, np.float32)
        src = np.asarray(audio, np.float32).reshape(-1)[:len(wave)]
        wave[:len(src)] = np.clip(src, -1.0, 1.0)
    return mp4.write_mp4(path, frames, (frames.shape[2], frames.shape[1]), fps, wave, sample_rate, crf=crf,
                         preset="veryfast", threads=None, audio_bit_rate=AAC_BITRATE, aac_coder=None)
