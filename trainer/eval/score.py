"""Scoring a set of clips with the shipped face models: one row per clip, and the mean over clips.

Per clip, for the generated video, the real one (the ground-truth reconstruction in a run) and the one
generated with the audio dropped, where each exists:
  face_rate_*  share of frames with a HOG face;
  csim_*       identity similarity to the reference image (generated and real);
  lmd_*        mouth landmarks against the real video's (generated and audio-dropped; trainer/eval/metrics.py);
  lipsync_*    mouth opening against the audio envelope, best Pearson r over +-2 frames (lipsync_lag_*: that
               lag); the mouth-box proxy where too few faces are found (lipsync_method_*);
  blink_*, jitter_*  blinks per minute and the face centre's frame-to-frame move (naturalness);
  psnr_*, ssim_*     against the real frames (generated and audio-dropped).

Metrics from weights the user gives (FID, FVD, LSE-C/D) plug in through UserMetrics: per clip they get the
decoded Clip (generated / real frames (T, H, W, 3) uint8, the reference image, the 16 kHz waveform), per set
the lists of real and generated videos.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from trainer.eval import metrics
from trainer.eval.clips import Clip, SampleSet, load_clip
from trainer.eval.faces import FaceTrack, analyse, reference_embedding
from trainer.eval.lipsync import best_lipsync

VIDEOS = (("generated", "generated"), ("truth", "real"), ("no_audio", "no_audio"))  # (metric suffix, Clip field)
# Metric keys in table order: (key, heading, what it is).
FACE_COLUMNS = (
    ("face_rate_generated", "face rate", "share of generated frames with a dlib HOG face"),
    ("face_rate_truth", "face rate GT", "the same for the ground truth"),
    ("csim_generated", "CSIM gen.", "identity cosine similarity, generated frames vs the reference image"),
    ("csim_truth", "CSIM GT", "the same for the ground-truth reconstruction"),
    ("lmd_generated", "LMD", "mouth landmark distance to the ground truth, px at 256 px, eyes and nose aligned"),
    ("lmd_no_audio", "LMD no audio", "the same with the audio dropped (should be higher)"),
    ("lipsync_generated", "lip sync gen.", "mouth opening vs audio RMS, best r over +-2 frames"),
    ("lipsync_truth", "lip sync GT", "the same for the ground truth"),
    ("lipsync_no_audio", "lip sync no audio", "the same with the audio dropped"),
    ("blink_generated", "blinks/min", "eye aspect ratio under 0.2, blinks per minute"),
    ("blink_truth", "blinks/min GT", "the same for the ground truth"),
    ("jitter_generated", "jitter", "face-centre move per frame over the inter-ocular distance"),
    ("jitter_truth", "jitter GT", "the same for the ground truth"),
    ("psnr_generated", "PSNR dB", f"generated vs ground-truth frames (identical: {metrics.PSNR_CAP:g})"),
    ("ssim_generated", "SSIM", "generated vs ground-truth frames, Gaussian 11x11, sigma 1.5"),
)


@dataclass
class UserMetrics:
    """Where the metrics from the user's weights plug in (the lead wires FID, FVD and LSE here):
    ``per_clip`` functions take a Clip and return {name: value}, e.g. LSE-C/D from
    lse_scores(model, clip.generated, clip.waveform); ``per_set`` functions take (real videos, generated
    videos), lists of (T, H, W, 3) uint8, and return {name: value}, e.g. {"fid": fid_score(model, real, fake)}.
    The set's videos are kept in memory only when a ``per_set`` function is given."""

    per_clip: list[Callable[[Clip], dict]] = field(default_factory=list)
    per_set: list[Callable[[list[np.ndarray], list[np.ndarray]], dict]] = field(default_factory=list)


def score_clip(clip: Clip, identity_every: int = 1) -> tuple[dict, dict[str, FaceTrack]]:
    """One clip's face metrics (a flat row) and the face tracks they came from."""
    row: dict = {"name": clip.name, "frames": int(len(clip.generated)), "size": int(clip.generated.shape[2])}
    reference = reference_embedding(clip.reference) if clip.reference is not None else None
    if clip.reference is not None and reference is None:
        clip.notes.append("no face found in the reference image: no CSIM")
    tracks = {}
    for suffix, attribute in VIDEOS:
        video = getattr(clip, attribute)
        if video is None:
            continue
        want_identity = reference is not None and suffix != "no_audio"
        track = tracks[suffix] = analyse(video, identity=want_identity, identity_every=identity_every)
        row[f"face_rate_{suffix}"] = track.face_rate
        row[f"blink_{suffix}"] = metrics.blink_rate(track.points)
        row[f"jitter_{suffix}"] = metrics.jitter(track.points)
        if want_identity:
            row[f"csim_{suffix}"] = metrics.csim(track.embeddings, reference)
        if clip.waveform is not None:
            score = best_lipsync(video, metrics.mouth_opening(track.points), clip.waveform)
            row[f"lipsync_{suffix}"], row[f"lipsync_lag_{suffix}"] = score["r"], score["lag"]
            row[f"lipsync_method_{suffix}"] = score["method"]
            if score.get("note"):
                clip.notes.append(f"lip sync {suffix}: {score['note']}")
    if clip.real is not None:
        for suffix in ("generated", "no_audio"):
            video = getattr(clip, suffix)
            if video is None:
                continue
            row[f"lmd_{suffix}"] = metrics.lmd(tracks[suffix].points, tracks["truth"].points, video.shape[2])
            row[f"psnr_{suffix}"] = metrics.psnr(video, clip.real)
            row[f"ssim_{suffix}"] = metrics.ssim(video, clip.real)
    row["notes"] = list(clip.notes)
    return row, tracks


def mean_row(rows: list[dict]) -> dict:
    """The mean over clips of every numeric metric (clips without it left out)."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("name", "frames", "size")]
    means = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        if values and "lag" not in key:
            means[key] = metrics.finite_mean(values)
    return means


def score_set(sample_set: SampleSet, user: UserMetrics | None = None, identity_every: int = 1,
              log: Callable[[str], None] = print, keep_tracks: bool = False) -> dict:
    """Every clip of a set scored: {"name", "folder", "step", "kind", "clips": [rows], "mean": {...},
    "seconds"}; with ``keep_tracks`` also "first": (clip, tracks) of its first clip, for a picture."""
    user = user or UserMetrics()
    start = time.perf_counter()
    rows, reals, fakes, first = [], [], [], None
    for files in sample_set.clips:
        clip = load_clip(files)
        row, tracks = score_clip(clip, identity_every)
        for hook in user.per_clip:
            row.update(hook(clip))
        if user.per_set and clip.real is not None:
            reals.append(clip.real)
            fakes.append(clip.generated)
        if keep_tracks and first is None:
            first = (clip, tracks)
        rows.append(row)
        log(f"{sample_set.name}/{clip.name}: " + describe(row))
    result = {"name": sample_set.name, "folder": str(sample_set.folder), "step": sample_set.step,
              "kind": sample_set.kind, "clips": rows, "mean": mean_row(rows)}
    for hook in user.per_set:
        result["mean"].update(hook(reals, fakes))
    result["seconds"] = time.perf_counter() - start
    if keep_tracks:
        result["first"] = first
    return result


def describe(row: dict) -> str:
    """A log line of a row's main figures."""
    parts = []
    for key, heading, _ in FACE_COLUMNS:
        value = row.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{heading} {value:.3g}")
    return ", ".join(parts) or "no face metrics"
