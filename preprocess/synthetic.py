"""A small synthetic dataset in RAVDESS's layout and formats, made on this machine.

It is the embedded default that lets the whole project run on a fresh clone: each
clip is H.264 at 29.97 fps with 48 kHz stereo AAC (so resampling and downmixing are
exercised), named Actor_NN/01-01-EE-01-SS-01-NN.mp4. The picture is the
public-domain astronaut photo that ships with scikit-image (a real face, so the
detector does real work). The audio is synthetic "speech" -- voiced syllables whose
harmonics follow vowel formants -- and its loudness envelope opens the mouth and
nods the head, so audio and motion are genuinely correlated. Emotions are visible
as a colour/brightness tint and audible as pitch, loudness and tempo.
Everything is a function of the seed.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from preprocess.discover import RAVDESS_EMOTIONS
from preprocess.mp4 import write_mp4

VIDEO_RATE = Fraction(30000, 1001)  # RAVDESS's 29.97 fps
AUDIO_RATE = 48000

# In the astronaut photo (512 x 512): the face's centre and size, and the mouth.
FACE_CENTRE = (224.0, 113.0)
FACE_SIDE = 95.0
MOUTH_CENTRE = (224, 148)
MOUTH_HALF_WIDTH = 13

# Per RAVDESS emotion code: RGB gains, brightness offset, and the voice's
# (pitch factor, loudness, tempo factor).
EMOTION_LOOKS = {
    1: ((1.00, 1.00, 1.00), 0, (1.00, 0.7, 1.00)),  # neutral
    2: ((0.95, 1.00, 1.05), -5, (0.95, 0.6, 0.90)),  # calm
    3: ((1.10, 1.05, 0.90), 15, (1.20, 0.9, 1.15)),  # happy
    4: ((0.85, 0.90, 1.10), -25, (0.85, 0.5, 0.80)),  # sad
    5: ((1.30, 0.85, 0.85), 0, (1.10, 1.0, 1.20)),  # angry
    6: ((0.90, 1.00, 1.05), 10, (1.30, 0.7, 1.30)),  # fearful
    7: ((0.95, 1.15, 0.80), -10, (0.90, 0.8, 0.90)),  # disgust
    8: ((1.05, 1.05, 1.20), 25, (1.35, 0.9, 1.10)),  # surprised
}
# Vowel formants (Hz) the syllables cycle through.
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def _astronaut() -> np.ndarray:
    from skimage.data import astronaut  # ships inside scikit-image, nothing downloaded

    return astronaut()


def synth_speech(rng: np.random.Generator, seconds: float, f0: float, loudness: float = 0.8,
                 tempo: float = 1.0, sr: int = AUDIO_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio (n,) float32 in [-1, 1] and its syllable envelope (n,) in [0, 1]."""
    n = int(round(seconds * sr))
    signal = np.zeros(n, dtype=np.float64)
    envelope = np.zeros(n, dtype=np.float64)
    position = rng.uniform(0.3, 0.5)  # leading silence, as in RAVDESS
    end = seconds - rng.uniform(0.25, 0.4)
    while position < end - 0.1:
        length = min(rng.uniform(0.12, 0.28) / tempo, end - position)
        i0, i1 = int(position * sr), int((position + length) * sr)
        m = i1 - i0
        shape = np.sin(np.pi * np.linspace(0.0, 1.0, m)) ** 1.5 * rng.uniform(0.6, 1.0)
        pitch = f0 * (1 + 0.08 * rng.uniform(-1, 1)) * np.linspace(1.0, rng.uniform(0.85, 1.15), m)
        phase = 2 * np.pi * np.cumsum(pitch) / sr
        formants = VOWELS[rng.integers(len(VOWELS))]
        mean_pitch = float(pitch.mean())
        voiced = np.zeros(m)
        for k in range(1, int(4000 // mean_pitch) + 1):
            amplitude = sum(np.exp(-(((k * mean_pitch - f) / (80 + 0.05 * f)) ** 2)) / (j + 1)
                            for j, f in enumerate(formants))
            if amplitude > 1e-3:
                voiced += amplitude * np.sin(k * phase)
        voiced /= np.abs(voiced).max() + 1e-9
        # A short noise burst at the onset stands in for a consonant.
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.015 * sr)) * 0.3
        signal[i0:i1] += shape * voiced + burst * shape.max()
        envelope[i0:i1] = np.maximum(envelope[i0:i1], shape)
        position += length + rng.uniform(0.03, 0.12) / tempo + (0.2 if rng.random() < 0.15 else 0.0)
    signal = signal / (np.abs(signal).max() + 1e-9) * 0.6 * loudness
    signal += rng.standard_normal(n) * 1e-3  # a faint noise floor: real rooms are never silent
    envelope /= envelope.max() + 1e-9
    return signal.astype(np.float32), envelope.astype(np.float32)


def _frame_envelope(envelope: np.ndarray, n_frames: int) -> np.ndarray:
    """Mean envelope over each video frame's span."""
    edges = (np.arange(n_frames + 1) / float(VIDEO_RATE) * AUDIO_RATE).astype(int)
    edges = np.minimum(edges, len(envelope))
    cumulative = np.concatenate([[0.0], np.cumsum(envelope, dtype=np.float64)])
    return (cumulative[edges[1:]] - cumulative[edges[:-1]]) / np.maximum(edges[1:] - edges[:-1], 1)


def _tinted(image: np.ndarray, gains: np.ndarray, offset: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gains + offset, 0, 255).astype(np.uint8)


def _head_transform(t: float, opening: float, base: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Affine map astronaut -> canvas: the actor's placement plus sway and a speech nod."""
    # The free sway is kept small next to the speech-driven nod, so most of the
    # motion a (random-weight) encoder sees is predictable from the audio.
    angle = 0.8 * np.sin(2 * np.pi * 0.35 * t + phases[0]) + 4.0 * opening
    dx = 2.0 * np.sin(2 * np.pi * 0.23 * t + phases[1])
    dy = 1.2 * np.sin(2 * np.pi * 0.31 * t + phases[2]) + 8.0 * opening
    rotation = cv2.getRotationMatrix2D(FACE_CENTRE, angle, 1.0)
    rotation = np.vstack([rotation, [0, 0, 1]])
    moved = base.copy()
    moved[:2, 2] += (dx, dy)
    return (moved @ rotation)[:2]


@dataclass(frozen=True)
class ActorLook:
    """How one synthetic actor looks: colour gains, background, voice pitch and placement."""

    gains: tuple[float, float, float]
    background: tuple[int, int, int]
    f0: float
    placement: np.ndarray  # 3x3 affine: astronaut photo -> frame, at rest

    def face_in_frame(self) -> tuple[float, float, float]:
        """The face's centre (x, y) and side in frame pixels, at rest (sway is a few pixels)."""
        scale = float(self.placement[0, 0])
        x, y, _ = self.placement @ np.array([*FACE_CENTRE, 1.0])
        return float(x), float(y), FACE_SIDE * scale

    def mouth_in_frame(self) -> tuple[float, float]:
        x, y, _ = self.placement @ np.array([*MOUTH_CENTRE, 1.0])
        return float(x), float(y)


def actor_look(seed: int, actor: int, size: tuple[int, int] = (640, 360)) -> ActorLook:
    width, height = size
    rng = np.random.default_rng([seed, actor, 1000])
    gains = tuple(float(g) for g in rng.uniform(0.85, 1.15, 3))
    background = tuple(int(v) for v in rng.integers(20, 200, 3))
    f0 = float(rng.uniform(110, 220))
    # The face is about a third of the frame height, off centre by actor.
    scale = height * rng.uniform(0.28, 0.36) / FACE_SIDE
    target = (width * (0.5 + rng.uniform(-0.12, 0.12)), height * (0.45 + rng.uniform(-0.05, 0.05)))
    placement = np.array([[scale, 0, target[0] - scale * FACE_CENTRE[0]],
                          [0, scale, target[1] - scale * FACE_CENTRE[1]],
                          [0, 0, 1]])
    return ActorLook(gains, background, f0, placement)


def _make_clip(path: Path, photo: np.ndarray, look: ActorLook, seed: int, actor: int, statement: int,
               emotion: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng([seed, actor, statement, emotion])
    colour, offset, (pitch, loudness, tempo) = EMOTION_LOOKS[emotion]
    face = _tinted(photo, np.array(look.gains) * np.array(colour), offset)
    seconds = rng.uniform(3.0, 4.0)
    audio, envelope = synth_speech(rng, seconds, look.f0 * pitch, loudness, tempo)
    n_frames = int(seconds * float(VIDEO_RATE))
    opening = _frame_envelope(envelope, n_frames)
    phases = rng.uniform(0, 2 * np.pi, 3)

    def frames() -> Iterator[np.ndarray]:
        for k in range(n_frames):
            image = face.copy()
            amount = float(opening[k])
            axes = (MOUTH_HALF_WIDTH + int(6 * amount), 1 + int(22 * amount))
            cv2.ellipse(image, MOUTH_CENTRE, axes, 0, 0, 360, (70, 20, 30), -1, lineType=cv2.LINE_AA)
            matrix = _head_transform(k / float(VIDEO_RATE), amount, look.placement, phases)
            yield cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=look.background)

    # Stereo like RAVDESS, the channels slightly different so downmixing matters.
    write_mp4(path, frames(), size, VIDEO_RATE, np.stack([audio, 0.8 * audio]), AUDIO_RATE)


# Eight actors with fewer clips each rather than four with more: the same cost, but a
# model trained on the default set sees more identities (4 train actors, not 2) and
# generalises its use of the reference to the held-out ones.
def make_synthetic_ravdess(root: Path, actors=tuple(range(1, 9)), statements=(1, 2), emotions=(1, 5),
                           seed: int = 0, size: tuple[int, int] = (640, 360)) -> Path:
    """Write Actor_NN/01-01-EE-01-SS-01-NN.mp4 clips (3-4 s each) under `root`; returns root.

    size is (width, height), both even. Deterministic given the arguments.
    """
    width, height = size
    if width % 2 or height % 2 or width < 64 or height < 64:
        raise ValueError(f"size {size} must be even and at least 64x64 (H.264 4:2:0)")
    for label, values, allowed in (("actor", actors, range(1, 100)), ("statement", statements, (1, 2)),
                                   ("emotion", emotions, RAVDESS_EMOTIONS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{label} code(s) {bad} are not valid RAVDESS codes")
    root = Path(root)
    photo = _astronaut()
    jobs = []
    for actor in actors:
        look = actor_look(seed, actor, size)
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for statement in statements:
            for emotion in emotions:
                name = f"01-01-{emotion:02d}-01-{statement:02d}-01-{actor:02d}.mp4"
                jobs.append((folder / name, photo, look, seed, actor, statement, emotion, (width, height)))
    # Each clip depends only on its own seeds, so threads (x264 and OpenCV release the
    # GIL) speed this up without changing a byte.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(lambda job: _make_clip(*job), jobs))
    return root
