"""Per-video face analysis with dlib's shipped models (preprocess/face_models.py): for every frame the best
HOG face, its 68 landmarks and, when asked, its 128-d identity embedding.

The evaluated videos are small face crops (the tiny preset renders 128 px, the face about 70 px wide), and
HOG misses faces under about 80 px, so frames under UPSAMPLE_BELOW px high are searched at twice their size
(dlib's own upsampling; the boxes come back in the frame's pixels). Measured on make demo's 128 px crops
and renderings (README, "Evaluation").

Frames without a face keep NaN rows, so that the metrics (trainer/eval/metrics.py) can tell them apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocess import face_models

UPSAMPLE_BELOW = 256  # frame height in px under which HOG looks at the frame upsampled twice
EMBEDDING_SIZE = 128


@dataclass
class FaceTrack:
    """What dlib found in one video: per frame, NaN where no face was found."""

    boxes: np.ndarray  # (T, 4) x, y, w, h
    scores: np.ndarray  # (T,) HOG detection score
    points: np.ndarray  # (T, 68, 2) landmarks x, y
    embeddings: np.ndarray | None  # (T, 128) identity, or None when not asked for
    width: int
    upsample: int

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.scores)

    @property
    def face_rate(self) -> float:
        return float(self.found.mean()) if len(self.scores) else 0.0


def upsample_for(height: int) -> int:
    return 1 if height < UPSAMPLE_BELOW else 0


def best_face(frame: np.ndarray, upsample: int) -> tuple[np.ndarray, float] | None:
    """The highest-scoring HOG box (x, y, w, h) and its score, or None."""
    boxes, scores = face_models.detect(frame, upsample)
    return (boxes[0], float(scores[0])) if len(boxes) else None


def analyse(frames: np.ndarray, identity: bool = False, identity_every: int = 1,
            upsample: int | None = None) -> FaceTrack:
    """Detect, landmark and (with ``identity``, every ``identity_every``-th frame) embed the face of each
    frame of a (T, H, W, 3) uint8 RGB video."""
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    t = len(frames)
    up = upsample_for(frames.shape[1]) if upsample is None else upsample
    boxes, scores = np.full((t, 4), np.nan), np.full(t, np.nan)
    points = np.full((t, 68, 2), np.nan)
    embeddings = np.full((t, EMBEDDING_SIZE), np.nan) if identity else None
    for i, frame in enumerate(frames):
        face = best_face(frame, up)
        if face is None:
            continue
        boxes[i], scores[i] = face
        points[i] = face_models.landmarks(frame, face[0])
        if identity and i % max(1, identity_every) == 0:
            embeddings[i] = face_models.identity(frame, face[0])
    return FaceTrack(boxes, scores, points, embeddings, int(frames.shape[2]), up)


def reference_embedding(image: np.ndarray) -> np.ndarray | None:
    """The identity embedding of the best face in one RGB image, or None when no face is found."""
    face = best_face(image, upsample_for(image.shape[0]))
    return None if face is None else face_models.identity(image, face[0])
