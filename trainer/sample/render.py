"""Turning motion latents into video: batched motion-decoder rendering and mp4 writing.

Rendering follows the official FLOAT decoder call: frame t is
``dec(appearance + motion[t], feats)`` where ``appearance`` and ``feats`` come
from encoding one reference image. The reference is encoded once and shared
by a batch of frames (MotionAutoEncoder.decode broadcasts batch-1 inputs), so
decoding costs one decoder pass per ``batch_size`` frames.

The decoder runs in float32, or under bf16 autocast (``precision``: "auto" is
bf16 on CUDA, float32 elsewhere, so CPU results stay exactly as they were).

Video is written with PyAV only (no ffmpeg binary): H.264 (yuv420p) at 25 fps,
with the 16 kHz mono waveform muxed in as AAC. ``render_to_mp4`` encodes in a
writer thread while the next batches decode (trainer/sample/video_stream.py).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from float.config import FPS, SAMPLING_RATE
from float.motion_autoencoder import MotionAutoEncoder
from preprocess import mp4
from trainer.sample.video_stream import Mp4Stream

AAC_BITRATE = 64_000  # plenty for 16 kHz mono speech
PRECISIONS = ("auto", "fp32", "bf16")


def decoder_precision(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16" for the decoder on ``device``: "auto" is bf16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"decoder precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def _autocast(precision: str, device: torch.device):
    """bf16 autocast on the decoder's device, or nothing (fp32 weights run as they are)."""
    if decoder_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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
                  batch_size: int = 16, precision: str = "fp32",
                  sink: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Frames (T, S, S, 3) uint8 for motion latents (T, style_dim), ``batch_size`` frames per decoder pass.

    ``precision``: "fp32", "bf16" (autocast) or "auto" (see ``decoder_precision``). ``sink`` gets each
    decoded batch of frames as soon as it is ready (an mp4 writer thread's ``put``)."""
    if motion.ndim != 2 or motion.shape[1] != reference.appearance.shape[1]:
        raise ValueError(f"motion must be (frames, {reference.appearance.shape[1]}), got {tuple(motion.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    param = next(autoencoder.parameters())
    motion = motion.to(device=param.device, dtype=param.dtype)
    out = np.empty((motion.shape[0], autoencoder.size, autoencoder.size, 3), np.uint8)
    for start in range(0, motion.shape[0], batch_size):
        chunk = motion[start:start + batch_size]
        with _autocast(precision, param.device):
            images = autoencoder.decode(reference.appearance, chunk, reference.feats)
        frames = out[start:start + len(chunk)]
        frames[:] = tensor_to_frames(images)
        if sink is not None:
            sink(frames)
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
    return _encode(path, frames, (frames.shape[2], frames.shape[1]), _fit_audio(audio, len(frames), fps, sample_rate),
                   fps, sample_rate, crf)


def _fit_audio(audio: np.ndarray | None, frames: int, fps: int, sample_rate: int) -> np.ndarray | None:
    """The audio clipped to [-1, 1] and cut or zero-padded to ``frames`` / fps seconds."""
    if audio is None:
        return None
    wave = np.zeros(frames * sample_rate // fps, np.float32)
    src = np.asarray(audio, np.float32).reshape(-1)[:len(wave)]
    wave[:len(src)] = np.clip(src, -1.0, 1.0)
    return wave


def _encode(path, frames, size: tuple[int, int], wave, fps: int = FPS, sample_rate: int = SAMPLING_RATE,
            crf: int = 18) -> Path:
    return mp4.write_mp4(path, frames, size, fps, wave, sample_rate, crf=crf, preset="veryfast", threads=None,
                         audio_bit_rate=AAC_BITRATE, aac_coder=None)


def mp4_stream(path: str | Path, frames: int, size: tuple[int, int], audio: np.ndarray | None = None) -> Mp4Stream:
    """An mp4 of ``frames`` frames of ``size`` = (W, H) encoded in a writer thread as they are ``put``; the
    same file ``write_mp4`` writes (same settings, the audio fitted to ``frames`` frames). Even sizes only."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"mp4_stream: frame size {size} is odd (yuv420p needs even sizes)")
    wave = _fit_audio(audio, frames, FPS, SAMPLING_RATE)
    return Mp4Stream(path, lambda target, stream: _encode(target, stream, size, wave))


def render_to_mp4(autoencoder: MotionAutoEncoder, reference: Reference, motion: Tensor, path: str | Path,
                  audio: np.ndarray | None = None, batch_size: int = 16, precision: str = "fp32",
                  overlap: bool = True) -> tuple[np.ndarray, Path]:
    """``render_motion`` with each batch encoded to ``path`` while the next one decodes: (frames, mp4 path).
    An encoder failure is one SampleError naming the file (never a hang). ``overlap=False`` decodes
    everything first, then encodes (the former way, kept for benchmarks/gpu.py's comparison)."""
    if not overlap:
        frames = render_motion(autoencoder, reference, motion, batch_size, precision)
        return frames, write_mp4(path, frames, audio=audio)
    with mp4_stream(path, len(motion), (autoencoder.size, autoencoder.size), audio) as stream:
        frames = render_motion(autoencoder, reference, motion, batch_size, precision, sink=stream.put)
    return frames, stream.close()
