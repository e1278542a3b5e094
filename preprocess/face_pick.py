"""Which detected face a clip is cropped around, and the check that the crop really holds it.

Taking the largest Haar box of each sampled frame goes wrong when the background fires the
cascade with a larger box than the face: in the synthetic set (seed 0) the clip
Actor_08/01-01-01-01-01-01-08 has a 139 px box on blank wall beside its 110 px face in 6 of
12 sampled frames, the median centre lands on the wall and the real face is dropped as the
"outlier". Size says little about which box is a face; two other signals do:

- confidence: OpenCV's ``detectMultiScale3`` gives each box a level weight (the last cascade
  stage's score). On the synthetic set and the shared talking-head clip real faces score 5-11,
  the wall 0.3-1.5.
- consistency: the face is where a box is found in most sampled frames (a talking head moves a
  few pixels), while a false positive comes and goes.

So the boxes of all sampled frames are grouped into tracks (boxes that agree in centre and size
across frames, one per frame), each scored by the sum over its frames of 1 + confidence, and the
best track is cropped. The crop is then checked: the detector must find a face near the centre
of the cropped frames (re-detection inside the crop). A crop that fails is not used: the next
track is tried, and a clip with no track that passes is rejected with the reason, never cropped
around the wrong thing silently.

Two detectors feed this (``--detector``): dlib's HOG + landmarks (preprocess/face_dlib.py, the
default: steadier and better centred, see benchmarks/crop_detectors.py) and OpenCV's Haar cascade,
kept so that shards made with it are rebuilt the same way. Tracks, crop and check are the same for
both; each maps its boxes onto the SFD box with its own calibration (``FaceDetector.mapping``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from preprocess.errors import ClipError, PreprocessError
from preprocess.face import (HAAR_MAPPING, MIN_FACE_FRACTION, CropBox, Detections, SfdMapping, _cascade,
                             crop_box_from_detections, crop_frame, detect_face)

# Two boxes of different frames are one face when their centres are within this many sides
# (of the larger box) and their sides within this ratio. A head moves and nods by far less.
AGREE_DISTANCE = 0.5
AGREE_RATIO = 1.5
# Tracks tried, best first, before the clip is rejected.
MAX_TRACKS = 3
# The crop check: the cropped frame is scaled to this side and searched; a face passes when its
# centre is within CENTRE_TOLERANCE crop sides of where the crop puts the face and its side is
# at least MIN_FACE_IN_CROP of the crop (the official framing gives about 0.54; head motion
# widens the crop, so less is allowed).
VERIFY_SIZE = 160
CENTRE_TOLERANCE = 0.2
MIN_FACE_IN_CROP = 0.25
METHOD = "scored-tracks-v1"  # recorded in the manifest's crop detector: changing it changes the fingerprint
DETECTORS = ("dlib", "haar")
DEFAULT_DETECTOR = "dlib"  # steadier, better centred and needs no OpenCV cascades (README: "The face crop")
DLIB_VERIFY_SIZE = 200  # HOG needs faces of ~80 px: the crop's face is about 0.5 of it


@dataclass(frozen=True)
class FaceDetector:
    """One of ``DETECTORS``: how it finds faces, how its boxes map onto the SFD box, how its check looks."""

    kind: str
    mapping: SfdMapping
    verify_size: int

    def detect(self, frame: np.ndarray, detect_height: int = 360) -> Detections:
        if self.kind == "haar":
            return detect_scored(frame, detect_height)
        from preprocess import face_dlib

        return face_dlib.detect_scored(frame, detect_height)

    def check_boxes(self, det: Detections) -> tuple[np.ndarray, np.ndarray]:
        """(centres (N, 2), sides (N,)) the crop check compares with the crop: Haar's raw boxes (as it always
        has: the face sits a little above the crop centre), dlib's SFD-equivalent boxes (centred)."""
        boxes = det.boxes
        if self.kind == "dlib" and len(boxes):
            from preprocess.face_dlib import sfd_boxes

            boxes = sfd_boxes(boxes)
        return boxes[:, :2] + boxes[:, 2:] / 2, boxes[:, 2:].max(axis=1) if len(boxes) else np.zeros(0)

    def name(self) -> str:
        """The manifest's crop detector: Haar's string is unchanged, so Haar shards keep their fingerprint."""
        from preprocess import face

        if self.kind == "haar":
            return f"{face.DETECTOR}+{METHOD}"
        from preprocess import face_dlib

        return f"{face_dlib.name()}+{METHOD}"


def get_detector(kind: str) -> FaceDetector:
    """The detector called ``kind`` (dlib or haar); PreprocessError naming the choices otherwise."""
    if kind == "haar":
        return FaceDetector("haar", HAAR_MAPPING, VERIFY_SIZE)
    if kind == "dlib":
        from preprocess.face_dlib import MAPPING

        return FaceDetector("dlib", MAPPING, DLIB_VERIFY_SIZE)
    raise PreprocessError(f"unknown face detector {kind!r}; choose one of {', '.join(DETECTORS)}")


def detector_kind(name: str | None) -> str:
    """Which detector a manifest's crop detector string names: dlib's start with "dlib", anything else
    (OpenCV's Haar string, or none recorded by shards older than the choice) is Haar."""
    return "dlib" if str(name or "").startswith("dlib") else "haar"


def check_available(kind: str) -> None:
    """PreprocessError with the fix when ``kind`` cannot run here (dlib not installed, OpenCV without cascades)."""
    get_detector(kind)
    if kind == "dlib":
        from preprocess import face_models

        if not face_models.available():
            face_models.version()  # raises FaceModelsMissing with the install hint
        return
    try:
        _cascade()
    except RuntimeError as e:
        raise PreprocessError(f"--detector haar: {e}; or use --detector dlib") from None


def default_detector() -> str:
    """dlib when its models are installed (the ``faces`` extra), else Haar."""
    from preprocess import face_models

    return DEFAULT_DETECTOR if face_models.available() else "haar"


def image_crop_box(image: np.ndarray, kind: str, detect_height: int = 360) -> CropBox | None:
    """The crop of one image (a reference portrait), or None when no face is found: Haar's largest box
    (as before), dlib's best-scored face."""
    detector = get_detector(kind)
    if kind == "haar":
        box = detect_face(image, detect_height)
    else:
        det = detector.detect(image, detect_height)
        box = det.boxes[0] if len(det.boxes) else None
    return None if box is None else crop_box_from_detections([box], mapping=detector.mapping)


def detect_scored(frame: np.ndarray, detect_height: int = 360) -> Detections:
    """All Haar boxes of a frame with their confidences (same scaling and limits as face.detect_faces)."""
    mult = detect_height / frame.shape[0]
    interpolation = cv2.INTER_AREA if mult < 1 else cv2.INTER_CUBIC
    small = cv2.resize(frame, dsize=(0, 0), fx=mult, fy=mult, interpolation=interpolation)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if small.ndim == 3 else small
    min_side = max(24, int(MIN_FACE_FRACTION * detect_height))
    boxes, _levels, weights = _cascade().detectMultiScale3(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True)
    if len(boxes) == 0:
        return Detections(np.zeros((0, 4)), np.zeros(0))
    return Detections(np.asarray(boxes, np.float64).reshape(-1, 4) / mult,
                      np.asarray(weights, np.float64).reshape(-1))


@dataclass(frozen=True)
class Track:
    """One candidate face: its box in each sampled frame (None where absent) and its score."""

    boxes: tuple
    score: float

    @property
    def frames(self) -> int:
        return sum(b is not None for b in self.boxes)


def _agrees(anchor: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    a_centre = anchor[:2] + anchor[2:] / 2
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    a_side, sides = anchor[2:].max(), boxes[:, 2:].max(axis=1)
    larger = np.maximum(a_side, sides)
    close = np.linalg.norm(centres - a_centre, axis=1) <= AGREE_DISTANCE * larger
    return close & (larger / np.minimum(a_side, sides) <= AGREE_RATIO)


def face_tracks(detections: Sequence[Detections]) -> list[Track]:
    """Candidate faces, best first. Every box seeds a track: in each frame the agreeing box of highest
    confidence joins it. Tracks that pick the same boxes are one. Deterministic (ties: first seed)."""
    tracks: dict[tuple, Track] = {}
    for det in detections:
        for anchor in det.boxes:
            picked, score, ident = [], 0.0, []
            for other in detections:
                ok = _agrees(anchor, other.boxes) if len(other.boxes) else np.zeros(0, bool)
                if not ok.any():
                    picked.append(None)
                    ident.append(-1)
                    continue
                best = int(np.flatnonzero(ok)[np.argmax(other.weights[ok])])
                picked.append(other.boxes[best])
                ident.append(best)
                score += 1.0 + max(float(other.weights[best]), 0.0)
            tracks.setdefault(tuple(ident), Track(tuple(picked), score))
    return sorted(tracks.values(), key=lambda t: -t.score)  # stable: ties keep seed order


def crop_holds_face(frames: Sequence[np.ndarray], box: CropBox, detector: str = DEFAULT_DETECTOR) -> tuple[int, int]:
    """(frames whose crop shows a centred face, frames checked): re-detection inside the crop."""
    passed = 0
    found = get_detector(detector)
    size = found.verify_size
    for frame in frames:
        crop = crop_frame(frame, box, size)
        centres, sides = found.check_boxes(found.detect(crop, size))
        off = np.abs(centres - size / 2).max(axis=1) if len(centres) else np.zeros(0)
        if np.any((off <= CENTRE_TOLERANCE * size) & (sides >= MIN_FACE_IN_CROP * size)):
            passed += 1
    return passed, len(frames)


def choose_crop_box(frames: Sequence[np.ndarray], detections: Sequence[Detections] | None = None,
                    detector: str = DEFAULT_DETECTOR) -> CropBox:
    """The clip's crop from its sampled frames: the best face track whose crop passes the check.

    Raises ClipError("no face detected ...") when no track covers most frames, and
    ClipError("... no centred face ...") when every candidate crop fails re-detection.
    """
    found = get_detector(detector)
    if detections is None:
        detections = [found.detect(f) for f in frames]
    if not frames:
        raise ClipError("no face detected: the clip has no frames")
    tracks = face_tracks(detections)
    if not tracks:
        raise ClipError(f"no face detected in any of the {len(frames)} sampled frames")
    reasons, first_error = [], None
    for track in tracks[:MAX_TRACKS]:
        try:
            box = crop_box_from_detections(list(track.boxes), mapping=found.mapping)
        except ClipError as e:
            first_error = first_error or e
            continue
        seen = [f for f, b in zip(frames, track.boxes) if b is not None]
        passed, checked = crop_holds_face(seen, box, detector)
        if 2 * passed >= checked:
            return box
        reasons.append(f"crop at ({box.cx:.0f}, {box.cy:.0f}) side {box.side} shows a centred face in "
                       f"{passed} of {checked} frames")
    if not reasons and first_error is not None:
        raise first_error
    raise ClipError("no crop holds a centred face on re-detection: " + "; ".join(reasons))
