"""The lip-sync proxy: a mouth that follows the loudness scores high, a shuffled or still one does not."""
import numpy as np
import pytest

from float.config import SAMPLES_PER_FRAME
from trainer.eval.lipsync import lag_correlation, lipsync_score, mouth_box, mouth_change

SIZE, T = 64, 100


def speech(seed: int = 0, frames: int = T) -> tuple[np.ndarray, np.ndarray]:
    """A waveform whose loudness varies frame to frame (syllable-like bursts), and that loudness."""
    rng = np.random.default_rng(seed)
    loudness = np.clip(np.convolve(rng.random(frames), np.ones(3) / 3, mode="same"), 0.05, 1)
    carrier = rng.standard_normal(frames * SAMPLES_PER_FRAME)
    carrier /= np.sqrt((carrier.reshape(frames, -1) ** 2).mean(axis=1)).repeat(SAMPLES_PER_FRAME)
    return (0.3 * carrier * np.repeat(loudness, SAMPLES_PER_FRAME)).astype(np.float32), loudness


def talking_video(loudness: np.ndarray, noise: float = 2.0, seed: int = 1) -> np.ndarray:
    """A face-crop-sized video: textured background, the mouth box's brightness following the loudness."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 190, (SIZE, SIZE, 3)).astype(np.float32)
    frames = np.repeat(base[None], len(loudness), axis=0)
    y0, y1, x0, x1 = mouth_box(SIZE)
    frames[:, y0:y1, x0:x1] -= 50 * loudness[:, None, None, None]  # the mouth opens dark
    frames += rng.normal(0, noise, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def test_mouth_following_the_loudness_scores_high():
    wave, loudness = speech()
    score = lipsync_score(talking_video(loudness), wave)
    assert score["r"] > 0.8 and score["lag"] == 0 and score["frames"] == T


def test_a_lagging_mouth_is_found_at_its_lag():
    wave, loudness = speech()
    late = np.concatenate([loudness[:2], loudness[:-2]])  # the mouth trails the sound by two frames
    score = lipsync_score(talking_video(late), wave)
    assert score["r"] > 0.8 and score["lag"] == 2
    assert score["r_lag0"] < 0.5


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_shuffled_frames_score_near_zero(seed):
    wave, loudness = speech()
    video = talking_video(loudness)[np.random.default_rng(seed).permutation(T)]
    assert abs(lipsync_score(video, wave)["r"]) < 0.35


def test_mouth_following_other_audio_scores_near_zero():
    wave, _ = speech(seed=0)
    _, other = speech(seed=7)
    assert abs(lipsync_score(talking_video(other), wave)["r"]) < 0.35


def test_change_outside_the_mouth_box_is_not_counted():
    wave, loudness = speech()
    video = talking_video(np.zeros(T), noise=0)
    video[:, :10] = (200 * loudness)[:, None, None, None].astype(np.uint8)  # forehead flicker
    assert np.all(mouth_change(video) == 0)
    score = lipsync_score(video, wave)
    assert score["r"] is None and "constant" in score["note"]


def test_too_short_and_silent_inputs_give_no_score():
    wave, loudness = speech(frames=5)
    assert lipsync_score(talking_video(loudness), wave)["r"] is None
    _, loudness = speech()
    assert lipsync_score(talking_video(loudness), np.zeros(T * SAMPLES_PER_FRAME, np.float32))["r"] is None


def test_lag_correlation_is_exact_for_shifted_copies():
    rng = np.random.default_rng(0)
    audio = rng.random(50)
    r, lag = lag_correlation(np.concatenate([[0.0], audio[:-1]]), audio)
    assert lag == 1 and r == pytest.approx(1.0)


@pytest.mark.parametrize("dlib", [True, False], ids=["dlib", "haar-without-dlib"])
def test_face_rate_tells_a_face_from_noise(dlib, monkeypatch):
    import cv2
    from skimage.data import astronaut

    from preprocess import face_models
    from trainer.eval.lipsync import face_rate

    if dlib and not face_models.available():
        pytest.skip("dlib face models not installed")
    if not dlib:  # an install without the faces extra counts with OpenCV's Haar cascade
        monkeypatch.setattr(face_models, "available", lambda: False)
        monkeypatch.setattr(face_models, "detect", lambda *a, **k: pytest.fail("dlib used without the extra"))
    face = cv2.resize(astronaut()[30:230, 130:330], (128, 128), interpolation=cv2.INTER_AREA)
    frames = np.stack([face] * 6)
    noise = np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    assert face_rate(frames) == 1.0
    assert face_rate(noise) == 0.0
    assert face_rate(np.concatenate([frames[:3], noise[:3]]), every=1) == 0.5
