"""The dlib face box: HOG finds the face, the 68 landmarks place it, and a box built from the eyes and
the mouth corners stands for the SFD box the official crop is framed on.

Why landmarks: the HOG box (like Haar's) is one of a few window sizes on an image pyramid, so its
side jumps from frame to frame, and its framing drifts with the background. The eyes and the mouth
corners are found to about a pixel and move only with the head, so a box built from them is steady.
It is a square (x, y, s, s):
  centre  the mean of the right-eye centre, the left-eye centre and the mouth-corner midpoint
          (the lower lip is left out: speech moves it);
  side    sqrt(interocular distance * eye-to-mouth distance): turning the head shrinks the first,
          nodding the second, the geometric mean halves each effect.

Calibration (re-derived by tests/test_face_dlib.py when ../shared is present), on the images the
Haar mapping was calibrated on (preprocess/face.py: shared/samples/portrait_512.jpg and every 25th
frame of talking_head_512_25fps.mp4, where the SFD box has side 320 centred at (256, 256)), over
those 17 images:
    SFD side / landmark side               = 2.990 (std 0.063: 2.1 %; Haar's: 1.8 %)
    (SFD centre - landmark centre) / side  = x +0.035 (std 0.078), y +0.031 (std 0.097)
(in SFD sides the centre's spread is 0.026 across and 0.032 down, Haar's 0.027 and 0.033).
We use side factor 2.99, vertical shift +0.03 and no horizontal shift (as for Haar: the sample
face is turned slightly, a frontal face is symmetric).

Detection runs on a copy scaled to 360 rows, as the official SFD does; HOG finds faces of about
80 px and up there, so a frame where nothing is found is searched again with the image doubled
(``upsample``, 4x the time; faces down to about 40 px). Landmarks are placed on the full frame.
"""
from __future__ import annotations

import cv2
import numpy as np

from preprocess import face_models
from preprocess.face import Detections, SfdMapping

DETECT_HEIGHT = 360
LANDMARK_TO_SFD_SIDE = 2.99
LANDMARK_TO_SFD_SHIFT_Y = 0.03
MAPPING = SfdMapping(LANDMARK_TO_SFD_SIDE, 0.0, LANDMARK_TO_SFD_SHIFT_Y)
METHOD = "landmark-box-v1"  # recorded in the manifest's crop detector: changing the box changes the fingerprint


def landmark_box(points: np.ndarray) -> np.ndarray:
    """The square (x, y, s, s) of 68 landmarks (68, 2): centred on the eyes and mouth corners (module doc)."""
    right_eye = points[face_models.RIGHT_EYE].mean(axis=0)
    left_eye = points[face_models.LEFT_EYE].mean(axis=0)
    mouth = points[face_models.MOUTH]
    mouth_mid = (mouth[0] + mouth[6]) / 2  # points 48 and 54: the mouth corners
    eyes_mid = (right_eye + left_eye) / 2
    centre = (right_eye + left_eye + mouth_mid) / 3
    side = float(np.sqrt(np.linalg.norm(left_eye - right_eye) * np.linalg.norm(mouth_mid - eyes_mid)))
    return np.array([centre[0] - side / 2, centre[1] - side / 2, side, side], np.float64)


def hog_boxes(frame: np.ndarray, detect_height: int = DETECT_HEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """HOG boxes (N, 4) in frame pixels and their scores, best first: at ``detect_height`` rows,
    again with the image doubled when nothing is found (small faces)."""
    mult = detect_height / frame.shape[0]
    if mult == 1:
        small = frame
    else:
        interpolation = cv2.INTER_AREA if mult < 1 else cv2.INTER_CUBIC
        small = cv2.resize(frame, dsize=(0, 0), fx=mult, fy=mult, interpolation=interpolation)
    boxes, scores = face_models.detect(small, upsample=0)
    if len(boxes) == 0:
        boxes, scores = face_models.detect(small, upsample=1)
    return boxes / mult, scores


def detect_scored(frame: np.ndarray, detect_height: int = DETECT_HEIGHT) -> Detections:
    """Landmark boxes (N, 4) of every HOG face of an RGB uint8 frame, with the HOG scores, best first."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    boxes, scores = hog_boxes(frame, detect_height)
    if len(boxes) == 0:
        return Detections(np.zeros((0, 4)), np.zeros(0))
    return Detections(np.stack([landmark_box(face_models.landmarks(frame, b)) for b in boxes]), scores)


def sfd_boxes(boxes: np.ndarray) -> np.ndarray:
    """The SFD boxes (N, 4) that landmark boxes stand for (x, y, w, h)."""
    side = boxes[:, 2:].max(axis=1)
    cx = boxes[:, 0] + boxes[:, 2] / 2 + MAPPING.shift_x * side
    cy = boxes[:, 1] + boxes[:, 3] / 2 + MAPPING.shift_y * side
    s = MAPPING.side * side
    return np.stack([cx - s / 2, cy - s / 2, s, s], axis=1)


def name() -> str:
    """What the manifest records: dlib's and the model files' versions, and this box's method."""
    return f"{face_models.version()}+{METHOD}"
