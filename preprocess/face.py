"""One fixed square face crop per clip, framed like the official FLOAT crop.

The official code (generate.py, DataProcessor.process_img) runs face_alignment's SFD
detector on a ~360p copy of the image and crops a square of half-side
1.6 * max(half box width, half box height) around the box centre, padding with black.
SFD needs weights downloaded at run time, so we use OpenCV's Haar cascade, which ships
inside the opencv-python-headless 4.x wheel, and convert its box to the SFD box it
stands for.

Calibration (re-derived by tests/test_face.py when ../shared is present): on
shared/samples/portrait_512.jpg, an official crop, and on every 25th frame of
talking_head_512_25fps.mp4 (whose frames keep the framing of their official crop),
the SFD box must have max side 512 / 1.6 = 320 px centred at (256, 256). Haar boxes
detected at 360p give, averaged over those 16 images:
    SFD side / Haar side               = 1.157 (std 0.021)
    (SFD centre - Haar centre) / side  = x +0.011 (std 0.031), y +0.062 (std 0.038)
The Haar box is smaller than SFD's and reaches higher up the forehead. We use
side factor 1.16, vertical shift +0.06 and no horizontal shift (the sample face is
turned slightly; a frontal face is symmetric).

The other detector, dlib's HOG plus 68 landmarks (preprocess/face_dlib.py, the default), is
mapped onto the SFD box the same way with its own ``SfdMapping``; both share the crop rules here.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from preprocess.media import ClipError

CROP_SCALE = 1.6  # the official half-side / half-box factor
HAAR_TO_SFD_SIDE = 1.16
HAAR_TO_SFD_SHIFT_Y = 0.06
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECTOR = f"opencv-{cv2.__version__}-{CASCADE_FILE}"
# A detection farther than this (in median box sides) from the median centre, or more
# than 2x off the median size, is taken as a false positive (a face on a poster, a pattern).
OUTLIER_DISTANCE = 1.0
# Faces smaller than this fraction of the frame height are not looked for (at 360p: 43 px).
MIN_FACE_FRACTION = 0.12


@dataclass(frozen=True)
class SfdMapping:
    """How a detector's box (x, y, w, h) maps onto the SFD box the official crop is framed on:
    SFD side = side * max(w, h); SFD centre = box centre + (shift_x, shift_y) * max(w, h)."""

    side: float
    shift_x: float = 0.0
    shift_y: float = 0.0


HAAR_MAPPING = SfdMapping(HAAR_TO_SFD_SIDE, 0.0, HAAR_TO_SFD_SHIFT_Y)


@dataclass(frozen=True)
class Detections:
    """Face boxes of one frame (N, 4) as x, y, w, h in frame pixels, with their confidences (N,)."""

    boxes: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class CropBox:
    """A square crop in source pixels: centre (cx, cy) and side length."""

    cx: float
    cy: float
    side: int

    def as_dict(self) -> dict:
        return {"cx": self.cx, "cy": self.cy, "side": self.side}


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise RuntimeError(f"OpenCV {cv2.__version__} has no Haar cascades (removed in OpenCV 5); "
                           f"install opencv-python-headless>=4.8,<5")
    path = cv2.data.haarcascades + CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load the face detector {path}")
    return cascade


def detect_faces(frame: np.ndarray, detect_height: int = 360) -> np.ndarray:
    """Haar face boxes (N, 4) as x, y, w, h in the frame's pixels, largest first.

    The frame is scaled to `detect_height` rows first, as the official code does
    (INTER_AREA when shrinking, INTER_CUBIC when enlarging).
    """
    mult = detect_height / frame.shape[0]
    interpolation = cv2.INTER_AREA if mult < 1 else cv2.INTER_CUBIC
    small = cv2.resize(frame, dsize=(0, 0), fx=mult, fy=mult, interpolation=interpolation)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    # Talking-head faces are large; skipping the smallest scales halves the detector's time.
    min_side = max(24, int(MIN_FACE_FRACTION * detect_height))
    boxes = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64) / mult
    return boxes[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")]


def detect_face(frame: np.ndarray, detect_height: int = 360) -> np.ndarray | None:
    """The largest face box (x, y, w, h) in the frame, or None."""
    boxes = detect_faces(frame, detect_height)
    return boxes[0] if len(boxes) else None


def sample_indices(n_frames: int, n_samples: int) -> list[int]:
    """`n_samples` evenly spaced frame indices over the clip, first and last included."""
    if n_frames <= 0:
        return []
    count = min(n_samples, n_frames)
    return sorted(set(np.linspace(0, n_frames - 1, count).round().astype(int).tolist()))


def crop_box_from_detections(boxes: Sequence[np.ndarray | None], scale: float = CROP_SCALE,
                             mapping: SfdMapping = HAAR_MAPPING) -> CropBox:
    """Combine per-frame detector boxes (x, y, w, h; None where nothing was found) into one crop.

    Centre and size are medians over the frames, mapped by ``mapping`` to the SFD box they stand for;
    side = scale * SFD side, then enlarged so that every (non-outlier) box fits.
    Raises ClipError when a face was found in fewer than half of the frames.
    """
    n = len(boxes)
    found = np.array([b for b in boxes if b is not None], dtype=np.float64).reshape(-1, 4)
    if len(found) == 0:
        raise ClipError(f"no face detected in any of the {n} sampled frames")
    centres = found[:, :2] + found[:, 2:] / 2
    sides = found[:, 2:].max(axis=1)
    median_centre, median_side = np.median(centres, axis=0), np.median(sides)
    distance = np.linalg.norm(centres - median_centre, axis=1) / median_side
    ratio = sides / median_side
    keep = (distance <= OUTLIER_DISTANCE) & (ratio >= 0.5) & (ratio <= 2.0)
    if 2 * keep.sum() < n:
        raise ClipError(f"no face detected in most sampled frames (a consistent face in "
                        f"{int(keep.sum())} of {n})")
    found, centres, sides = found[keep], centres[keep], sides[keep]
    cx, cy = np.median(centres[:, 0]), np.median(centres[:, 1])
    side = float(np.median(sides))
    cx += mapping.shift_x * side
    cy += mapping.shift_y * side
    crop_side = scale * mapping.side * side
    # Head motion must stay inside the crop: reach every sampled box's corners.
    reach = np.maximum.reduce([np.abs(found[:, 0] - cx), np.abs(found[:, 0] + found[:, 2] - cx),
                               np.abs(found[:, 1] - cy), np.abs(found[:, 1] + found[:, 3] - cy)])
    crop_side = max(crop_side, 2 * float(reach.max()))
    return CropBox(cx=float(cx), cy=float(cy), side=max(2, int(math.ceil(crop_side))))


def detect_crop_box(frames: Sequence[np.ndarray] | np.ndarray, n_samples: int = 12,
                    scale: float = CROP_SCALE, detect_height: int = 360) -> CropBox:
    """The clip's crop box from the face detector on `n_samples` evenly spaced frames.

    `scale` is the official factor (1.6) applied to the SFD-equivalent box (see module
    doc). Raises ClipError("no face detected ...") when most sampled frames have no face.
    """
    picked = [frames[i] for i in sample_indices(len(frames), n_samples)]
    if not picked:
        raise ClipError("no face detected: the clip has no frames")
    return crop_box_from_detections([detect_face(f, detect_height) for f in picked], scale)


def crop_frame(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The box's square of one frame, black outside the image, resized to size x size."""
    h, w = frame.shape[:2]
    x0 = int(round(box.cx - box.side / 2))
    y0 = int(round(box.cy - box.side / 2))
    x1, y1 = x0 + box.side, y0 + box.side
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        region = frame[y0:y1, x0:x1]
    else:
        region = np.zeros((box.side, box.side, 3), dtype=frame.dtype)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx0 < sx1 and sy0 < sy1:
            region[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return resize_frame(region, size)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: INTER_AREA when shrinking (as the brief and the official
    crop do for large images), INTER_CUBIC when enlarging."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return np.ascontiguousarray(frame)
    shrinking = frame.shape[0] >= size and frame.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(frame, dsize=(size, size), interpolation=interpolation)


def crop_frames(frames: Sequence[np.ndarray] | np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """All frames cropped with one box: (T, size, size, 3) uint8."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = crop_frame(frame, box, size)
    return out
