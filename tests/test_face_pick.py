"""Choosing the face to crop by confidence and consistency, and the re-detection check of the crop."""
from __future__ import annotations

import numpy as np
import pytest

from preprocess import face_pick
from preprocess.clip import prepare_clip
from preprocess.discover import discover
from preprocess.errors import ClipError
from preprocess.face import crop_box_from_detections, detect_face, sample_indices
from preprocess.face_pick import Detections, choose_crop_box, face_tracks
from preprocess.media import iter_video_frames
from preprocess.synthetic import actor_look, make_synthetic_ravdess

FACE = np.array([330.0, 90.0, 110.0, 110.0])
WALL = np.array([455.0, 160.0, 139.0, 139.0])  # larger than the face, weakly scored


def _decoy_half(n=12):
    """The face in every frame (confident); a larger low-confidence decoy in every other frame."""
    out = []
    for k in range(n):
        jitter = np.array([k % 3, k % 2, 0, 0], float)
        if k % 2 == 0:
            out.append(Detections(np.stack([WALL + jitter, FACE + jitter]), np.array([1.2, 8.5])))
        else:
            out.append(Detections((FACE + jitter)[None], np.array([7.9])))
    return out


def test_tracks_prefer_a_confident_consistent_face_over_a_larger_decoy():
    dets = _decoy_half()
    # What "largest box first" did: the decoy in half the frames drags the median off the face.
    largest = [d.boxes[np.argmax(d.boxes[:, 2])] for d in dets]
    old = crop_box_from_detections(largest)
    assert abs(old.cx - (FACE[0] + 55)) > 30
    tracks = face_tracks(dets)
    best = tracks[0]
    assert best.frames == 12 and all(abs(b[0] - FACE[0]) < 3 for b in best.boxes)
    decoy = next(t for t in tracks if t.boxes[0] is not None and abs(t.boxes[0][0] - WALL[0]) < 3)
    assert decoy.frames == 6 and decoy.score < best.score / 4
    box = crop_box_from_detections(list(best.boxes))
    assert abs(box.cx - (FACE[0] + 55)) < 3


def test_equal_confidence_still_prefers_the_box_seen_in_every_frame():
    dets = [Detections(np.stack([WALL, FACE]), np.array([3.0, 3.0])) if k % 2 == 0
            else Detections(FACE[None], np.array([3.0])) for k in range(12)]
    assert face_tracks(dets)[0].frames == 12


@pytest.mark.parametrize("detector", ["haar", "dlib"])
def test_a_crop_without_a_centred_face_is_rejected(monkeypatch, detector):
    """The detector fires consistently on something that is no face: the re-detection inside the crop
    finds nothing, so the clip is rejected with the reason rather than cropped around it."""
    from preprocess import face_dlib

    rng = np.random.default_rng(0)
    frames = [rng.integers(90, 110, (360, 640, 3), dtype=np.uint8) for _ in range(12)]
    module = face_pick if detector == "haar" else face_dlib
    real = module.detect_scored

    def fake(frame, detect_height=360):
        if frame.shape[:2] == (360, 640):  # the full frame: a confident phantom box
            return Detections(WALL[None], np.array([9.0]))
        return real(frame, detect_height)  # inside the crop: the real detector

    monkeypatch.setattr(module, "detect_scored", fake)
    with pytest.raises(ClipError, match=r"no crop holds a centred face.*0 of 12"):
        choose_crop_box(frames, detector=detector)


def test_no_detection_keeps_the_no_face_reason():
    with pytest.raises(ClipError, match="no face detected in any of the 2"):
        choose_crop_box([np.zeros((8, 8, 3), np.uint8)] * 2, [Detections(np.zeros((0, 4)), np.zeros(0))] * 2)
    with pytest.raises(ClipError, match="no face detected in most sampled frames"):
        choose_crop_box([np.zeros((8, 8, 3), np.uint8)] * 4,
                        [Detections(FACE[None], np.array([5.0]))] + [Detections(np.zeros((0, 4)), np.zeros(0))] * 3)


@pytest.fixture(scope="module")
def actor_08(tmp_path_factory):
    """The clip of `make demo`'s synthetic set (seed 0) whose largest Haar box is blank wall in 6 of
    its 12 sampled frames."""
    root = make_synthetic_ravdess(tmp_path_factory.mktemp("a8"), actors=(8,), statements=(1,), emotions=(1,), seed=0)
    return discover(root)[0][0]


def test_real_clip_with_a_wall_false_positive_in_half_the_frames(actor_08):
    frames = list(iter_video_frames(actor_08.video)[0])
    sampled = [frames[i] for i in sample_indices(len(frames), 12)]
    x, y, side = actor_look(0, 8).face_in_frame()
    largest = [detect_face(f) for f in sampled]
    off_face = sum(b is not None and abs(b[0] + b[2] / 2 - x) > side for b in largest)
    assert off_face >= 5  # the premise: the largest box is the wall in about half the frames
    old = crop_box_from_detections(largest)
    assert abs(old.cx - x) > 0.3 * old.side  # and the old rule cropped the wall
    prepared = prepare_clip(actor_08, 64, detector="haar")  # the scenario is Haar's false positive
    box = prepared.box
    assert abs(box.cx - x) < 0.1 * box.side and abs(box.cy - y) < 0.1 * box.side
    assert box.side < 3 * side
    streamed = prepare_clip(actor_08, 64, memory_budget_bytes=0, detector="haar")  # the long-clip path agrees
    assert streamed.box == box
