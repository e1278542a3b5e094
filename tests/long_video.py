"""A long synthetic talking-head video, cheap to make: the astronaut face (preprocess/synthetic.py's
actor) on a small canvas, a few pre-rendered mouth poses cycled, a stretch of black frames (no face)
and a scene cut where the camera moves. Used by tests/test_segments.py."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from preprocess.mp4 import write_mp4
from preprocess.synthetic import FACE_CENTRE, MOUTH_CENTRE, MOUTH_HALF_WIDTH, _astronaut

SIZE = (256, 144)  # small frames: a 10-minute video encodes and decodes in seconds


def poses(shift: float, background=(90, 110, 130), size=SIZE) -> list[np.ndarray]:
    """Eight frames of the face placed off centre by ``shift`` (fraction of the width), mouth opening."""
    photo = _astronaut()
    width, height = size
    scale = height * 0.34 / 95.0
    tx = width * (0.5 + shift) - scale * FACE_CENTRE[0]
    ty = height * 0.45 - scale * FACE_CENTRE[1]
    matrix = np.array([[scale, 0, tx], [0, scale, ty]])
    out = []
    for k in range(8):
        image = photo.copy()
        opening = 0.3 * abs(np.sin(k * np.pi / 8))  # a wide-open mouth defeats the Haar cascade at this size
        cv2.ellipse(image, MOUTH_CENTRE, (MOUTH_HALF_WIDTH + int(6 * opening), 1 + int(22 * opening)),
                    0, 0, 360, (70, 20, 30), -1, lineType=cv2.LINE_AA)
        out.append(cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA, borderValue=background))
    return out


def write_long_video(path: Path, seconds: float, black: tuple[float, float] | None = None,
                     cut_at: float | None = None, fps: int = 5) -> Path:
    """``seconds`` of video at ``fps`` with 16 kHz audio; frames in ``black`` (s, s) are black and the face
    jumps sideways at ``cut_at`` s (a new shot)."""
    first, second = poses(-0.12), poses(0.12, (200, 170, 60))  # a new shot: new place, new wall
    dark = np.zeros_like(first[0])
    n = int(round(seconds * fps))

    def frames():
        for i in range(n):
            t = i / fps
            if black and black[0] <= t < black[1]:
                yield dark
            else:
                yield (second if cut_at is not None and t >= cut_at else first)[i % 8]

    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return write_mp4(path, frames(), SIZE, fps, audio[None], 16000, crf=30)
