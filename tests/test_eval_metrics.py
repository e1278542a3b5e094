"""The face and frame metrics of `floatctl eval` (trainer/eval/metrics.py, lipsync.landmark_lipsync) on
inputs whose answer is known."""
import math

import numpy as np
import pytest

from float.config import SAMPLES_PER_FRAME
from trainer.eval import metrics
from trainer.eval.lipsync import best_lipsync, landmark_lipsync


def face_points(mouth_gap: float = 4.0, eye_open: float = 6.0) -> np.ndarray:
    """A plausible 68-point face in a 128 px frame: eyes 30 px apart, a mouth whose inner lips are
    ``mouth_gap`` px apart, eyes ``eye_open`` px high."""
    p = np.zeros((68, 2))
    p[0:17] = np.c_[np.linspace(34, 94, 17), 60 + 30 * np.sin(np.linspace(0, np.pi, 17))]
    p[17:27] = np.c_[np.linspace(40, 88, 10), np.full(10, 44.0)]
    p[27:36] = np.c_[np.r_[np.full(4, 64.0), np.linspace(56, 72, 5)], np.r_[np.linspace(50, 68, 4), np.full(5, 72.0)]]
    for start, cx in ((36, 49.0), (42, 79.0)):  # corner, top, top, corner, bottom, bottom
        p[start:start + 6] = [[cx - 8, 52], [cx - 3, 52 - eye_open / 2], [cx + 3, 52 - eye_open / 2], [cx + 8, 52],
                              [cx + 3, 52 + eye_open / 2], [cx - 3, 52 + eye_open / 2]]
    outer = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    p[48:60] = np.c_[64 + 14 * np.cos(outer), 88 + (6 + mouth_gap / 2) * np.sin(outer)]
    p[60:65] = np.c_[[52, 58, 64, 70, 76], [88, 88 - mouth_gap / 2, 88 - mouth_gap / 2, 88 - mouth_gap / 2, 88]]
    p[65:68] = np.c_[[70, 64, 58], np.full(3, 88 + mouth_gap / 2)]
    return p


def video(seed=0, t=4, size=32):
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def test_identical_videos_give_capped_psnr_ssim_one_and_lmd_zero():
    v = video()
    assert metrics.psnr(v, v) == metrics.PSNR_CAP
    assert metrics.ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    points = np.stack([face_points(g) for g in (2, 4, 6)])
    assert metrics.lmd(points, points, width=128) == pytest.approx(0.0, abs=1e-9)


def test_psnr_of_a_known_error():
    real = np.full((2, 8, 8, 3), 100, np.uint8)
    fake = real + np.uint8(5)  # MSE 25 everywhere
    assert metrics.psnr(fake, real) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    with pytest.raises(ValueError, match="one .T, H, W, 3. shape"):
        metrics.psnr(fake[:1], real)


def test_ssim_matches_skimage_and_falls_with_noise():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    y, x = np.mgrid[:48, :48]
    a = np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth: noise shows
    b = np.clip(a.astype(int) + np.random.default_rng(2).integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ours = metrics.ssim_frame(a, b)
    theirs = skimage_metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False, data_range=255)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert 0 < ours < 0.95
    assert metrics.ssim_frame(a, 255 - a) < 0  # inverted contrast: negative structure term
    with pytest.raises(ValueError, match="smaller than the 11 x 11 window"):
        metrics.ssim_frame(a[:8, :8], a[:8, :8])


def test_csim_of_a_face_with_itself_is_one_and_no_face_rows_are_left_out():
    rng = np.random.default_rng(3)
    e = rng.normal(size=128)
    assert metrics.cosine_similarity(e, 3 * e) == pytest.approx(1.0)
    assert metrics.cosine_similarity(e, -e) == pytest.approx(-1.0)
    rows = np.stack([e, np.full(128, np.nan), -e])
    assert metrics.csim(rows, e) == pytest.approx(0.0)
    assert metrics.csim(np.full((2, 128), np.nan), e) is None


def test_lmd_ignores_pose_and_measures_a_shifted_mouth_in_256px_units():
    real = face_points()
    angle, scale, shift = 0.3, 1.4, np.array([12.0, -7.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = real @ (scale * rotation).T + shift  # the same face elsewhere, turned and bigger
    assert metrics.lmd(moved[None], real[None], width=128) == pytest.approx(0.0, abs=1e-9)
    lowered = real.copy()
    lowered[48:68, 1] += 3.0  # the mouth 3 px lower
    assert metrics.lmd(lowered[None], real[None], width=128) == pytest.approx(6.0)  # 3 px at 128 = 6 at 256
    assert metrics.lmd(lowered[None] @ (scale * rotation).T + shift, real[None], 128) == pytest.approx(6.0)
    nothing = np.full((1, 68, 2), np.nan)
    assert metrics.lmd(nothing, real[None], 128) is None


def test_blinks_per_minute_from_the_eye_aspect_ratio():
    open_eye, shut = face_points(eye_open=6.0), face_points(eye_open=1.0)
    assert metrics.eye_aspect_ratio(open_eye[None])[0] == pytest.approx(6 / 16)
    frames = np.stack([open_eye] * 150)  # 6 s at 25 fps
    frames[[20, 21, 80, 140]] = shut  # three blinks (20-21 is one)
    assert metrics.blink_rate(frames) == pytest.approx(3 / 0.1)
    assert metrics.blink_rate(np.full((5, 68, 2), np.nan)) is None


def test_jitter_is_zero_for_a_still_head_and_the_move_over_the_eye_distance():
    still = np.stack([face_points()] * 10)
    assert metrics.jitter(still) == pytest.approx(0.0)
    shaking = still.copy()
    shaking[1::2] += np.array([3.0, 0.0])  # 3 px right every other frame; eyes 30 px apart
    assert metrics.jitter(shaking) == pytest.approx(0.1)
    assert metrics.jitter(still[:1]) is None


def test_mouth_opening_is_the_inner_lip_gap_over_the_eye_distance():
    points = np.stack([face_points(g) for g in (0.0, 3.0, 9.0)])
    assert metrics.mouth_opening(points) == pytest.approx([0.0, 0.1, 0.3])


def opening_following(envelope: np.ndarray, lag: int) -> np.ndarray:
    """Mouth openings that trail the envelope by ``lag`` frames."""
    return np.r_[np.full(lag, envelope[0]), envelope[:len(envelope) - lag]] * 0.5


def speech(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A waveform whose per-frame RMS varies a lot, and that RMS."""
    rng = np.random.default_rng(seed)
    loudness = np.abs(np.sin(np.arange(frames) * 0.45)) + 0.2 * rng.random(frames)
    wave = (rng.normal(size=(frames, SAMPLES_PER_FRAME)) * loudness[:, None]).reshape(-1).astype(np.float32)
    rms = np.sqrt((wave.reshape(frames, -1).astype(np.float64) ** 2).mean(axis=1))
    return wave, rms


def test_landmark_lip_sync_finds_r_one_at_the_known_lag():
    wave, rms = speech(60)
    score = landmark_lipsync(opening_following(rms, 2), wave)
    assert score["method"] == "landmarks" and score["lag"] == 2 and score["r"] == pytest.approx(1.0, abs=1e-3)
    assert score["r_lag0"] < 0.9
    unrelated = np.random.default_rng(9).random(60)
    assert abs(landmark_lipsync(unrelated, wave)["r"]) < 0.5


def test_frames_without_a_face_are_bridged_and_too_few_faces_fall_back_to_the_proxy():
    wave, rms = speech(60)
    opening = opening_following(rms, 1)
    gappy = opening.copy()
    gappy[[10, 30]] = np.nan
    score = best_lipsync(np.zeros((60, 32, 32, 3), np.uint8), gappy, wave)
    assert score["method"] == "landmarks" and score["face_frames"] == 58 and score["r"] > 0.9 and score["lag"] == 1
    mostly_missing = np.full(60, np.nan)
    mostly_missing[:10] = opening[:10]
    fallback = best_lipsync(np.zeros((60, 32, 32, 3), np.uint8), mostly_missing, wave)
    assert fallback["method"] == "mouth-box proxy" and "a face in 17% of the frames" in fallback["note"]
