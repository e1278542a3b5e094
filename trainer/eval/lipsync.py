"""A lip-sync proxy that needs no downloaded network.

SyncNet-style scores need a pretrained lip-sync network; this one needs only
the video and its audio. It asks: does the mouth move when the loudness
changes? Per frame:

  mouth change   mean absolute grey-level difference between consecutive frames
                 inside the mouth box of the face crop;
  loudness change  absolute difference of consecutive frames' audio RMS (25 fps,
                 640 samples at 16 kHz per frame).

The score is their Pearson correlation, the best over lags of -2..+2 frames
(mouths lead or trail the sound by a frame or two). Both signals are changes,
so the score does not depend on whether an open mouth looks darker or brighter
than a closed one. It is near 0 for a mouth that moves independently of the
audio (or not at all), up to 1 for a mouth whose change follows the loudness.

Chance level is above 0: the best of five lags of unrelated signals is about +0.1..+0.3 for 50
frames (less for longer clips), so read a score against the same clip's ground truth or audio-dropped one.

Limits: head motion also changes the mouth box (a moving head scores like a
moving mouth when it moves with the loudness), and the score is only
comparable between videos of the same framing, e.g. generated vs the
ground-truth reconstruction of the same clip.

The mouth box follows from the official crop framing (preprocess/face.py): the
crop's side is 1.6x the face box, so the face box spans 0.19..0.81 of the crop
and the mouth, at about 70-85% of the face box's height, lies near 0.62-0.72
of the crop's height; the box is generous so that a moving head keeps the mouth in it.
"""
from __future__ import annotations

import math

import numpy as np

from float.config import SAMPLES_PER_FRAME
from preprocess import face_models
from preprocess.media import frame_energy

# (top, bottom, left, right) as fractions of the square face crop.
MOUTH_BOX = (0.58, 0.82, 0.33, 0.67)
MAX_LAG = 2  # frames searched either way
MIN_FRAMES = 8  # fewer frames give no meaningful correlation


def mouth_box(size: int, box: tuple[float, float, float, float] = MOUTH_BOX) -> tuple[int, int, int, int]:
    """Pixel bounds (y0, y1, x0, x1) of the mouth box in a size x size crop."""
    top, bottom, left, right = box
    return (int(round(top * size)), max(int(round(bottom * size)), int(round(top * size)) + 1),
            int(round(left * size)), max(int(round(right * size)), int(round(left * size)) + 1))


def mouth_change(frames: np.ndarray, box: tuple[float, float, float, float] = MOUTH_BOX) -> np.ndarray:
    """(T, S, S, 3) uint8 frames -> (T-1,) mean absolute grey change in the mouth box between frames."""
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    y0, y1, x0, x1 = mouth_box(frames.shape[1], box)
    region = frames[:, y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.abs(np.diff(region, axis=0)).mean(axis=(1, 2))


def loudness_change(waveform: np.ndarray, frames: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """(frames-1,) absolute change of the per-frame audio RMS (zero past the waveform's end)."""
    return np.abs(np.diff(frame_energy(waveform, frames, samples_per_frame)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return None if denom < 1e-12 else float((a * b).sum() / denom)


def lag_correlation(video: np.ndarray, audio: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float | None, int]:
    """(best Pearson r, its lag) over lags -max_lag..max_lag; lag > 0: the video trails the audio.
    (None, 0) when a signal is constant (a still mouth, silence) or too short."""
    n = min(len(video), len(audio))
    best, best_lag = None, 0
    for lag in range(-max_lag, max_lag + 1):
        v = video[max(lag, 0): n + min(lag, 0)]
        a = audio[max(-lag, 0): n - max(lag, 0)]
        if len(v) < MIN_FRAMES - 1:
            continue
        r = _pearson(v, a)
        if r is not None and (best is None or r > best):
            best, best_lag = r, lag
    return best, best_lag


def lipsync_score(frames: np.ndarray, waveform: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """{"r": best correlation or None, "lag": frames, "r_lag0": correlation without a lag, "frames": T}."""
    if len(frames) < MIN_FRAMES:
        return {"r": None, "lag": 0, "r_lag0": None, "frames": int(len(frames)),
                "note": f"fewer than {MIN_FRAMES} frames"}
    video, audio = mouth_change(frames), loudness_change(waveform, len(frames))
    r, lag = lag_correlation(video, audio, max_lag)
    out = {"r": r, "lag": lag, "r_lag0": _pearson(video, audio), "frames": int(len(frames))}
    if r is None:
        out["note"] = "a constant signal (still mouth or silent audio)"
    return out


def describe(score: dict) -> str:
    """How a score reads in a log line."""
    if score.get("r") is None:
        return f"n/a ({score.get('note', 'undefined')})"
    return f"{score['r']:+.2f} (lag {score['lag']:+d})"


# ---------------------------------------------------------------- in `floatctl sample`
SCORE_KEYS = ("lipsync_generated", "lipsync_truth", "lipsync_no_audio")


def clip_lipsync(entry: dict, name: str, waveform: np.ndarray, generated: np.ndarray,
                 truth: np.ndarray | None = None, no_audio: np.ndarray | None = None) -> str:
    """Score a clip's generated video (and its ground-truth reconstruction, and the video generated with
    the audio dropped) into ``entry``: ``lipsync_*`` = r (or None), ``lipsync`` = the details. Returns the log line."""
    details = {}
    for key, video in zip(SCORE_KEYS, (generated, truth, no_audio)):
        if video is not None:
            details[key.removeprefix("lipsync_")] = score = lipsync_score(video, waveform)
            entry[key] = score["r"]
    entry["lipsync"] = details
    parts = [f"{kind} {describe(score)}" for kind, score in details.items()]
    return f"{name}: lip-sync proxy (mouth change vs loudness change, r): " + ", ".join(parts)


def mean_lipsync(entries: list[dict], log=None) -> dict:
    """{"lipsync_mean": {key: mean r over the clips that have one}} ({} when no clip was scored)."""
    mean = {}
    for key in SCORE_KEYS:
        values = [e[key] for e in entries if e.get(key) is not None]
        if values:
            mean[key] = float(np.mean(values))
    if not mean:
        return {}
    if log is not None:
        log("lip-sync proxy, mean over clips: " + ", ".join(f"{k.removeprefix('lipsync_')} {v:+.2f}"
                                                           for k, v in mean.items()))
    return {"lipsync_mean": mean}


# ---------------------------------------------------------------- is it a face at all?
def face_rate(frames: np.ndarray, every: int = 2) -> float:
    """Fraction of frames (every ``every``-th) in which a face is found: dlib's HOG, as `floatctl eval` counts
    (trainer/eval/faces.py), or OpenCV's Haar cascade where dlib is not installed. A rendered video of colour
    noise scores 0."""
    picked = frames[::max(1, every)]
    if len(picked) == 0:
        return 0.0
    if face_models.available():
        from trainer.eval.faces import best_face, upsample_for

        up = upsample_for(picked.shape[1])
        return float(np.mean([best_face(frame, up) is not None for frame in picked]))
    from preprocess.face import detect_faces

    return float(np.mean([len(detect_faces(frame, detect_height=frame.shape[0] * 2)) > 0 for frame in picked]))


# ---------------------------------------------------------------- from face landmarks
MIN_FACE_RATE = 0.5  # below this share of frames with a face, the landmark score gives way to the proxy


def landmark_lipsync(opening: np.ndarray, waveform: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """Mouth opening per frame (T,; NaN where no face; trainer/eval/metrics.mouth_opening) against the
    audio envelope (per-frame RMS): {"r", "lag", "r_lag0", "frames", "method": "landmarks"}. A mouth
    opens when the voice is loud, so the signals themselves are compared, not their changes.
    Frames without a face are interpolated from their neighbours."""
    opening = np.asarray(opening, np.float64)
    found = np.isfinite(opening)
    out = {"method": "landmarks", "frames": int(len(opening)), "face_frames": int(found.sum())}
    if found.sum() < MIN_FRAMES:
        return {**out, "r": None, "lag": 0, "r_lag0": None, "note": f"a face in fewer than {MIN_FRAMES} frames"}
    filled = np.interp(np.arange(len(opening)), np.flatnonzero(found), opening[found])
    envelope = frame_energy(waveform, len(opening))
    r, lag = lag_correlation(filled, envelope, max_lag)
    out.update(r=r, lag=lag, r_lag0=_pearson(filled, envelope))
    if r is None:
        out["note"] = "a constant signal (still mouth or silent audio)"
    return out


def best_lipsync(frames: np.ndarray, opening: np.ndarray | None, waveform: np.ndarray) -> dict:
    """The landmark score where a face is found in at least MIN_FACE_RATE of the frames, else the
    mouth-box proxy, with "method" and a "note" saying why."""
    if opening is not None and np.isfinite(opening).mean() >= MIN_FACE_RATE:
        return landmark_lipsync(opening, waveform)
    score = {**lipsync_score(frames, waveform), "method": "mouth-box proxy"}
    rate = 0.0 if opening is None else float(np.isfinite(opening).mean())
    score["note"] = (score.get("note", "") + "; " if score.get("note") else "") + \
        f"a face in {100 * rate:.0f}% of the frames: the mouth-box proxy instead of landmarks"
    return score
