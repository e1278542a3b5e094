"""SyncNet v2 of syncnet_python in pure torch, and LSE-D / LSE-C computed as its ``evaluate()`` does.

The network (``syncnet_v2.model``, a state dict of syncnet_python's ``S``) embeds 5 video frames (0.2 s)
and 20 MFCC steps (0.2 s) into 1024-d vectors; lips in sync with the audio give near vectors. Its
evaluate(), which the talking-head papers' LSE figures come from, does, for a video at 25 fps with 16 kHz
audio:

- frames: the face crop at 224x224, BGR (OpenCV's order), pixels 0..255 unscaled, as (1, 3, T, 224, 224);
- audio: ``python_speech_features.mfcc`` of the int16 samples (100 steps a second), as (1, 1, 13, M);
- n = min(frames, samples // 640) - 5 windows; window i: frames i..i+4 and MFCC steps 4i..4i+19;
- distances: each video feature i against the audio features i-15..i+15 (zero vectors past the ends),
  ``pairwise_distance`` (the Euclidean norm of the difference plus 1e-6); their mean over i per offset;
- LSE-D = the smallest mean distance, LSE-C = the median of the 31 means minus that minimum, and the
  AV offset = 15 - the index of the minimum (positive: the audio leads the video).

How our frames are fed: any square RGB face crop (our 128 or 512 px crops) is resized to 224x224
(bilinear, rounded to uint8 as an OpenCV resize would give) and turned to BGR. syncnet_python's own
pipeline crops differently (a square 2.8 times half the S3FD face box, from the box centre minus half the
box down), so absolute figures from our crops are comparable with each other, and with papers only as far
as the framing matches.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from float.config import SAMPLES_PER_FRAME
from trainer.errors import TrainerError
from trainer.eval.mfcc import SAMPLE_RATE, mfcc
from trainer.eval.weight_files import load_exact_state_dict

SYNCNET_FILE = "syncnet_v2.model"
SYNCNET_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
SYNCNET_SIZE = 224
WINDOW_FRAMES, MFCC_PER_FRAME, WINDOW_MFCC = 5, 4, 20
VSHIFT = 15
INT16_SCALE = 32768.0


def _bn_relu(cls, ch):
    return [cls(ch), nn.ReLU(inplace=True)]


class SyncNetV2(nn.Module):
    """syncnet_python's ``S`` (1024-d embeddings); layer indices match its nn.Sequential names."""

    def __init__(self, embedding: int = 1024):
        super().__init__()
        bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), *_bn_relu(bn2, 64), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, padding=1), *_bn_relu(bn2, 192), nn.MaxPool2d(3, stride=(1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), *_bn_relu(bn2, 384),
            nn.Conv2d(384, 256, 3, padding=1), *_bn_relu(bn2, 256),
            nn.Conv2d(256, 256, 3, padding=1), *_bn_relu(bn2, 256), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(256, 512, (5, 4)), *_bn_relu(bn2, 512))
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), *_bn_relu(bn3, 96),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), *_bn_relu(bn3, 256),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(bn3, 256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(bn3, 256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(bn3, 256),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), *_bn_relu(bn3, 512))

    def forward_aud(self, mfcc_windows: Tensor) -> Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def forward_lip(self, frame_windows: Tensor) -> Tensor:
        """(N, 3, 5, 224, 224) BGR 0..255 windows -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(frame_windows).flatten(1))


def load_syncnet(path: str | Path) -> SyncNetV2:
    """SyncNet v2 from syncnet_python's ``syncnet_v2.model``; TrainerError (one line) for any other file."""
    return load_exact_state_dict(SyncNetV2(), path, "SyncNet v2 weights", SYNCNET_FILE)


def syncnet_frames(frames: np.ndarray, chunk: int = 32) -> Tensor:
    """(3, T, 224, 224) float BGR 0..255 from RGB face crops uint8 (T, H, W, 3) of any size.

    Resized ``chunk`` frames at a time: a float copy of 250 frames at 512 px would take 0.8 GB.
    """
    frames = torch.as_tensor(np.asarray(frames))
    out = []
    for i in range(0, len(frames), chunk):
        x = frames[i:i + chunk].permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (SYNCNET_SIZE, SYNCNET_SIZE):
            x = F.interpolate(x, size=(SYNCNET_SIZE, SYNCNET_SIZE), mode="bilinear", align_corners=False)
            x = x.round().clamp(0, 255)
        out.append(x.flip(1))  # RGB -> BGR
    return torch.cat(out).permute(1, 0, 2, 3)


def int16_samples(waveform: np.ndarray) -> np.ndarray:
    """float [-1, 1] samples on the int16 scale syncnet_python's wav reading gives (MFCC depends on it)."""
    return np.clip(np.round(np.asarray(waveform, dtype=np.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)


def offset_distances(video_feat: Tensor, audio_feat: Tensor, vshift: int = VSHIFT) -> Tensor:
    """(N, 2 vshift + 1): distance of video feature i to audio feature i + k - vshift (zeros past the ends)."""
    padded = F.pad(audio_feat, (0, 0, vshift, vshift))
    windows = padded.unfold(0, 2 * vshift + 1, 1).permute(0, 2, 1)  # (N, 2 vshift + 1, D)
    n, k, d = windows.shape
    return F.pairwise_distance(video_feat[:, None, :].expand_as(windows).reshape(n * k, d),
                               windows.reshape(n * k, d)).reshape(n, k)


@torch.no_grad()
def lse_scores(model: SyncNetV2, frames: np.ndarray, waveform: np.ndarray, vshift: int = VSHIFT,
               batch_size: int = 20) -> dict:
    """{"lse_d", "lse_c", "offset"} of face crops uint8 (T, H, W, 3) at 25 fps and their float 16 kHz audio.

    ``offset`` is in frames (positive: the audio leads). Needs at least 6 frames and 6 x 640 samples.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise TrainerError(f"LSE: frames are {frames.dtype} {frames.shape}, expected uint8 (T, H, W, 3) face crops")
    samples = int16_samples(np.asarray(waveform).reshape(-1))
    usable = min(len(frames), len(samples) // SAMPLES_PER_FRAME)
    windows = usable - WINDOW_FRAMES  # syncnet_python's "lastframe = min_length - 5"
    if windows < 1:
        raise TrainerError(f"LSE: {len(frames)} frames with {len(samples) / SAMPLE_RATE:.2f} s of audio; "
                           f"SyncNet needs at least {WINDOW_FRAMES + 1} frames and as much audio")
    video = syncnet_frames(frames[:usable])
    cepstra = mfcc(samples).T.float()  # (13, M)
    device = next(model.parameters()).device
    vid_feat, aud_feat = [], []
    for start in range(0, windows, batch_size):
        idx = range(start, min(windows, start + batch_size))
        lips = torch.stack([video[:, i:i + WINDOW_FRAMES] for i in idx])
        auds = torch.stack([cepstra[None, :, i * MFCC_PER_FRAME:i * MFCC_PER_FRAME + WINDOW_MFCC] for i in idx])
        vid_feat.append(model.forward_lip(lips.to(device)).cpu())
        aud_feat.append(model.forward_aud(auds.to(device)).cpu())
    mean_dist = offset_distances(torch.cat(vid_feat), torch.cat(aud_feat), vshift).mean(0)
    min_dist, min_at = torch.min(mean_dist, 0)
    return {"lse_d": float(min_dist), "lse_c": float(torch.median(mean_dist) - min_dist),
            "offset": int(vshift - min_at)}
