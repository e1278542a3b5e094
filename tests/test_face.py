"""Face crop: geometry, the calibration against the official crop, and real clips."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess.clip import prepare_clip
from preprocess.discover import ClipSource, discover
from preprocess.face import (CROP_SCALE, HAAR_TO_SFD_SHIFT_Y, HAAR_TO_SFD_SIDE, CropBox, crop_box_from_detections,
                             crop_frame, crop_frames, detect_crop_box, detect_face)
from preprocess.media import ClipError, decode_audio, decode_video, iter_video_frames
from preprocess.mp4 import write_mp4
from preprocess.synthetic import actor_look, make_synthetic_ravdess

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
TALKING_HEAD = SAMPLES / "talking_head_512_25fps.mp4"
PORTRAIT = SAMPLES / "portrait_512.jpg"
needs_samples = pytest.mark.skipif(not TALKING_HEAD.is_file() or not PORTRAIT.is_file(),
                                   reason=f"shared samples not found in {SAMPLES}")


@pytest.fixture(scope="module")
def talking_head() -> dict:
    """The sample clip decoded once: its first 4 s, and every 25th frame of the whole clip."""
    if not TALKING_HEAD.is_file():
        pytest.skip(f"shared samples not found in {SAMPLES}")
    iterator, _ = iter_video_frames(str(TALKING_HEAD))
    head, every_25th = [], []
    for k, frame in enumerate(iterator):
        if k < 100:
            head.append(frame)
        if k % 25 == 0:
            every_25th.append(frame)
    return {"head": np.stack(head), "every_25th": every_25th, "audio": decode_audio(str(TALKING_HEAD))}


def test_crop_frame_pads_black_outside_the_image():
    frame = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    inside = crop_frame(frame, CropBox(cx=4, cy=3, side=4), 4)
    assert np.array_equal(inside, frame[1:5, 2:6])
    corner = crop_frame(frame, CropBox(cx=0, cy=0, side=4), 4)  # covers rows/cols -2..1
    assert np.all(corner[:2] == 0) and np.all(corner[:, :2] == 0)
    assert np.array_equal(corner[2:, 2:], frame[:2, :2])
    outside = crop_frame(frame, CropBox(cx=100, cy=100, side=4), 4)
    assert outside.shape == (4, 4, 3) and not outside.any()
    assert crop_frames([frame, frame], CropBox(4, 3, 4), 2).shape == (2, 2, 2, 3)


def test_crop_box_from_detections_rules():
    box = np.array([100.0, 100.0, 50.0, 50.0])
    crop = crop_box_from_detections([box] * 4)
    assert crop.cx == 125 and crop.cy == pytest.approx(125 + HAAR_TO_SFD_SHIFT_Y * 50)
    assert crop.side == int(np.ceil(CROP_SCALE * HAAR_TO_SFD_SIDE * 50))
    # a false positive far away is ignored, not averaged in or fitted
    assert crop_box_from_detections([box, box, box, np.array([400.0, 10, 50, 50])]) == crop
    # a head that moves a lot widens the crop so every sampled box fits
    moving = crop_box_from_detections([box, box + [45, 0, 0, 0], box - [45, 0, 0, 0]])
    assert moving.cx == 125 and moving.side > crop.side
    assert moving.side >= 2 * (moving.cx - 55) and moving.side >= 2 * (195 - moving.cx)
    with pytest.raises(ClipError, match=r"no face detected in most sampled frames \(.*1 of 4\)"):
        crop_box_from_detections([box, None, None, None])
    with pytest.raises(ClipError, match="no face detected in any of the 3"):
        crop_box_from_detections([None, None, None])


@needs_samples
def test_calibration_reproduces_the_official_crop(talking_head):
    """Re-derive the Haar -> SFD factors from official crops (see preprocess/face.py)."""
    images = [cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)] + talking_head["every_25th"]
    ratios = []
    for image in images:
        x, y, w, h = detect_face(image)
        # The official crop of these 512 images has its SFD box centred, 512 / 1.6 wide.
        ratios.append((512 / CROP_SCALE / w, (256 - (y + h / 2)) / h))
    side, shift = np.mean(ratios, axis=0)
    assert side == pytest.approx(HAAR_TO_SFD_SIDE, abs=0.03)
    assert shift == pytest.approx(HAAR_TO_SFD_SHIFT_Y, abs=0.03)
    box = detect_crop_box(talking_head["head"])
    assert abs(box.cx - 256) < 0.05 * box.side and abs(box.cy - 256) < 0.05 * box.side
    assert box.side == pytest.approx(512, rel=0.08)


def _ravdess_transcode(folder: Path, talking_head: dict, offset: tuple[int, int], seconds: float = 3.0) -> Path:
    """The 512 sample clip placed off-centre on a 1280x720 canvas, re-encoded at 29.97 fps
    with 48 kHz stereo audio, named like a RAVDESS file (made here, never stored)."""
    frames = talking_head["head"][: int(seconds * 25)]
    ox, oy = offset
    rate = Fraction(30000, 1001)

    def canvas_frames():
        for j in range(int(seconds * float(rate))):
            canvas = np.full((720, 1280, 3), (30, 60, 40), np.uint8)
            canvas[oy:oy + 512, ox:ox + 512] = frames[min(int(j / float(rate) * 25), len(frames) - 1)]
            yield canvas

    audio = talking_head["audio"][: int(seconds * 16000)]
    mono = np.interp(np.arange(int(seconds * 48000)) / 3, np.arange(len(audio)), audio).astype(np.float32)
    path = folder / "Actor_01" / "01-01-05-01-01-01-01.mp4"
    path.parent.mkdir(parents=True)
    return write_mp4(path, canvas_frames(), (1280, 720), rate, np.stack([mono, mono]), 48000)


@needs_samples
def test_ravdess_720p_transcode_is_cropped_around_the_face(tmp_path, talking_head):
    ox, oy = 700, 150
    _ravdess_transcode(tmp_path, talking_head, (ox, oy))
    clips, rejected = discover(tmp_path)
    assert rejected == [] and [c.clip_id for c in clips] == ["01-01-05-01-01-01-01"]
    assert clips[0].emotion == "angry"
    prepared = prepare_clip(clips[0], 128)
    assert prepared.source_fps == pytest.approx(29.97, abs=0.01)
    assert prepared.n_frames == pytest.approx(75, abs=1) and len(prepared.audio) == prepared.n_frames * 640
    box = prepared.box
    # The official crop of this clip is the whole 512 square; its face box is the centred 320 square.
    face_x, face_y = ox + 256, oy + 256
    assert abs(box.cx - face_x) < 0.1 * box.side and abs(box.cy - face_y) < 0.1 * box.side
    assert box.side == pytest.approx(512, rel=0.1)
    assert box.cx - box.side / 2 <= face_x - 160 and box.cx + box.side / 2 >= face_x + 160
    assert box.cy - box.side / 2 <= face_y - 160 and box.cy + box.side / 2 >= face_y + 160
    # And the pixels: our crop of the 720p frame looks like the official crop, resized.
    original = cv2.resize(talking_head["head"][0], (128, 128), interpolation=cv2.INTER_AREA)
    difference = np.abs(prepared.frames[0].astype(int) - original.astype(int)).mean()
    assert difference < 15, difference


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_ravdess(tmp_path_factory.mktemp("synthetic"), actors=(2, 3), statements=(1,),
                                  emotions=(1,), seed=7)


def test_crop_on_the_synthetic_set(synthetic_root):
    clips, _ = discover(synthetic_root)
    assert len(clips) == 2
    for clip in clips:
        prepared = prepare_clip(clip, 64)
        x, y, side = actor_look(7, int(clip.actor)).face_in_frame()
        box = prepared.box
        assert abs(box.cx - x) < 0.1 * box.side and abs(box.cy - y) < 0.1 * box.side
        assert box.side > side and box.side < 3 * side
        assert prepared.frames.shape == (prepared.n_frames, 64, 64, 3)


def test_long_clip_path_gives_the_same_result(synthetic_root):
    clip = discover(synthetic_root)[0][0]
    held = prepare_clip(clip, 48)
    streamed = prepare_clip(clip, 48, memory_budget_bytes=0)  # decode twice, never hold full frames
    assert held.box == streamed.box
    assert np.array_equal(held.frames, streamed.frames) and np.array_equal(held.audio, streamed.audio)


def test_no_face_is_rejected_never_centre_cropped(tmp_path):
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 640)[None, :, None].repeat(360, 0).repeat(3, 2)

    def frames():
        for k in range(75):
            noise = rng.integers(0, 40, (360, 640, 3))
            yield np.clip(gradient * (0.5 + k / 150) + noise, 0, 255).astype(np.uint8)

    t = np.arange(3 * 48000) / 48000
    path = write_mp4(tmp_path / "noface.mp4", frames(), (640, 360), 25,
                     (0.2 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32), 48000)
    src = ClipSource("noface", str(path), None, "x", None, {})
    with pytest.raises(ClipError, match="no face detected"):
        prepare_clip(src, 64)
    with pytest.raises(ClipError, match="no face detected"):
        prepare_clip(src, 64, memory_budget_bytes=0)
    with pytest.raises(ClipError, match="square"):
        prepare_clip(src, 64, crop="none")  # 'none' is for already cropped (square) clips


@needs_samples
def test_crop_none_only_resizes(tmp_path, talking_head):
    short = tmp_path / "short.mp4"
    mono = talking_head["audio"][: 2 * 16000 + 6400]
    write_mp4(short, talking_head["head"][:55], (512, 512), 25, mono[None], 16000)
    prepared = prepare_clip(ClipSource("s", str(short), None, "x", None, {}), 96, crop="none")
    assert prepared.box is None and prepared.n_frames == 55
    decoded, _ = decode_video(str(short))
    expected = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA) for f in decoded])
    assert np.array_equal(prepared.frames, expected)
