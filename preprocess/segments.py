"""Long videos (HDTF-style, minutes of one speaker) cut into segments of bounded length.

A shard sample holds a whole clip's features (9,216-wide wav2vec2 rows at 25 fps: ~7 MB per
15 s), and the loader reads a sample whole, so a ten-minute video must not become one sample.
A video longer than ``segment_frames`` is prepared in two streaming passes over its frames,
never holding more than one decoded frame, plus one segment of crops, at a time:

1. plan (in a worker process): count the frames, mark scene cuts (a jump in a 32x32 grey
   thumbnail), and run the face detector on one frame per second. Scene cuts end a segment;
   two or more seconds in a row with no face end it too and are left out (errors.jsonl says
   which frames and why), instead of failing the whole video. What remains is cut into
   pieces of at most ``segment_frames`` at frame boundaries, of equal length within a run;
   each piece gets its own crop from its own detections (preprocess/face_pick.py).
2. crop (``iter_segments``, in the main process, one segment at a time): decode again, crop
   each piece's frames, check that the crop shows a centred face at the piece's sampled frames
   (a piece that fails is rejected with the reason), and yield it as a PreparedClip.

Keys are ``<clip>-sNNN`` (NNN: the piece's index in the plan, so a rejected piece leaves a
gap rather than renaming the others); every segment keeps the video's speaker, hence its
split. A video no longer than one segment keeps the plain clip key and the old path.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from preprocess.clip import MEMORY_BUDGET_BYTES, PreparedClip, load_clip_audio, prepare_clip, sha256_of
from preprocess.discover import ClipSource
from preprocess.errors import ClipError
from preprocess.face import CropBox, crop_box_from_detections, crop_frame
from preprocess.face_pick import DEFAULT_DETECTOR, Detections, crop_holds_face, face_tracks, get_detector
from preprocess.media import FPS, SAMPLES_PER_FRAME, align, describe, iter_video_frames, probe_video

SAMPLE_STRIDE = FPS  # one detection per second of video
# Mean absolute difference (0-255) of consecutive 32x32 grey thumbnails above which a frame
# starts a new shot. Speech and head motion stay far below (a few levels); a cut to another
# shot or a black frame jumps by tens.
CUT_THRESHOLD = 30.0
MIN_FACELESS_RUN = 2  # seconds in a row without a face that end a segment (one miss is the detector's)
SEGMENT_SECONDS = 15.0


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # first frame (25 fps, in the source video)
    end: int  # one past the last frame
    box: CropBox
    checks: tuple[int, ...]  # frames where the crop is re-checked for a centred face


@dataclass
class SegmentPlan:
    """What the plan pass found: the segments to crop and the frame spans left out (with reasons)."""

    n_frames: int
    source_fps: float
    sha256: str
    audio: np.ndarray  # the whole aligned 16 kHz audio (small next to the frames)
    segments: list[Segment]
    errors: list[dict] = field(default_factory=list)
    detector: str = DEFAULT_DETECTOR  # the crop check of the crop pass uses the plan's detector


def segment_key(clip_id: str, index: int) -> str:
    return f"{clip_id}-s{index:03d}"


def _thumb(frame: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _runs(n_frames: int, cuts: list[int], faceless: set[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Frame runs to keep (split at cuts, faceless stretches removed) and the faceless stretches."""
    gone = np.zeros(n_frames, bool)
    samples = list(range(0, n_frames, SAMPLE_STRIDE))
    stretches = []
    k = 0
    while k < len(samples):
        j = k
        while j < len(samples) and samples[j] in faceless:
            j += 1
        if j - k >= MIN_FACELESS_RUN:
            a, b = samples[k], min(n_frames, samples[j - 1] + SAMPLE_STRIDE)
            gone[a:b] = True
            stretches.append((a, b))
        k = max(j, k + 1)
    edges = sorted(set([0, n_frames] + [c for c in cuts if 0 < c < n_frames]))
    runs = []
    for a, b in zip(edges[:-1], edges[1:]):
        start = None
        for f in range(a, b + 1):
            if f < b and not gone[f]:
                start = f if start is None else start
            elif start is not None:
                runs.append((start, f))
                start = None
    return runs, stretches


def plan_segments(src: ClipSource, audio: np.ndarray, sha256: str, segment_frames: int,
                  min_frames: int, detector: str = DEFAULT_DETECTOR) -> SegmentPlan:
    """The plan pass (see the module doc). Raises ClipError only when nothing of the video is usable."""
    found = get_detector(detector)
    iterator, source_fps = iter_video_frames(src.video)
    cuts, detections, previous, n_video = [], {}, None, 0
    for i, frame in enumerate(iterator):
        thumb = _thumb(frame)
        if previous is not None and float(np.abs(thumb - previous).mean()) > CUT_THRESHOLD:
            cuts.append(i)
        previous = thumb
        if i % SAMPLE_STRIDE == 0:
            detections[i] = found.detect(frame)
        n_video = i + 1
    _, audio = align(range(n_video), audio, SAMPLES_PER_FRAME)
    n_frames = len(audio) // SAMPLES_PER_FRAME
    name = describe(src.video)
    faceless = {i for i, d in detections.items() if len(d.boxes) == 0}
    runs, stretches = _runs(n_frames, cuts, faceless)
    errors = [{"file": src.video, "reason": f"{name}: frames {a}-{b - 1} ({a / FPS:.1f}-{b / FPS:.1f} s) left out: "
                                            f"no face detected for {math.ceil((b - a) / SAMPLE_STRIDE)} s"}
              for a, b in stretches]
    segments, index = [], 0
    for a, b in runs:
        pieces = math.ceil((b - a) / segment_frames)
        bounds = [a + round(k * (b - a) / pieces) for k in range(pieces + 1)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            where = f"{name}: segment {segment_key(src.clip_id, index)} (frames {start}-{end - 1})"
            sampled = [detections[f] for f in range(start, end) if f in detections]
            checks = tuple(f for f in range(start, end) if f in detections and len(detections[f].boxes))
            try:
                if end - start < min_frames:
                    raise ClipError(f"is {(end - start) / FPS:.1f} s, shorter than {min_frames / FPS:.1f} s")
                box = _piece_box(sampled, detector)
            except ClipError as e:
                errors.append({"file": src.video, "reason": f"{where} left out: {e}"})
            else:
                segments.append(Segment(index, start, end, box, checks))
            index += 1
    if not segments:
        reasons = "; ".join(e["reason"] for e in errors[:3]) or "nothing left"
        raise ClipError(f"no usable segment in {name} ({n_frames / FPS:.1f} s): {reasons}")
    return SegmentPlan(n_frames, source_fps, sha256, audio, segments, errors, detector)


def _piece_box(sampled: list[Detections], detector: str) -> CropBox:
    if not sampled:
        raise ClipError("no frame was sampled for the face detector")
    tracks = face_tracks(sampled)
    if not tracks:
        raise ClipError(f"no face detected in any of the {len(sampled)} sampled frames")
    return crop_box_from_detections(list(tracks[0].boxes), mapping=get_detector(detector).mapping)


def iter_segments(src: ClipSource, plan: SegmentPlan, size: int) -> Iterator[tuple[object, dict | None]]:
    """The crop pass: (PreparedClip, None) per segment that passes its crop check, else (None, error)."""

    iterator, _ = iter_video_frames(src.video)
    todo = iter(plan.segments)
    seg = next(todo, None)
    frames, passed = None, 0
    for i, frame in enumerate(iterator):
        if seg is None or i >= plan.n_frames:
            break
        if i < seg.start:
            continue
        if frames is None:
            frames, passed = np.empty((seg.end - seg.start, size, size, 3), np.uint8), 0
        frames[i - seg.start] = crop_frame(frame, seg.box, size)
        if i in seg.checks:
            passed += crop_holds_face([frame], seg.box, plan.detector)[0]
        if i == seg.end - 1:
            key = segment_key(src.clip_id, seg.index)
            if 2 * passed < len(seg.checks):
                yield None, {"file": src.video, "reason": f"{describe(src.video)}: segment {key} left out: its crop "
                                                          f"shows a centred face in {passed} of {len(seg.checks)} "
                                                          f"checked frames"}
            else:
                info = {"source_clip": src.clip_id, "index": seg.index, "start_frame": seg.start,
                        "end_frame": seg.end, "start_s": seg.start / FPS, "end_s": seg.end / FPS}
                audio = plan.audio[seg.start * SAMPLES_PER_FRAME: seg.end * SAMPLES_PER_FRAME]
                yield PreparedClip(source=dataclasses.replace(src, clip_id=key), frames=frames,
                                   audio=np.ascontiguousarray(audio), box=seg.box, source_fps=plan.source_fps,
                                   sha256=plan.sha256, segment=info), None
            frames, seg = None, next(todo, None)


def prepare_source(src: ClipSource, input_size: int, crop: str = "auto", min_seconds: float = 2.0,
                   segment_seconds: float = 0.0, memory_budget_bytes: int = MEMORY_BUDGET_BYTES,
                   detector: str = DEFAULT_DETECTOR):
    """A PreparedClip, or for a video longer than ``segment_seconds`` (crop "auto", > 0) the
    SegmentPlan of its segments, cropped later one segment at a time."""
    segment_frames = int(round(segment_seconds * FPS))
    if crop == "auto" and segment_frames > 0:
        declared = probe_video(src.video).seconds
        # Unknown length: plan it (the plan pass counts the frames and makes one segment of a short clip).
        if declared is None or declared * FPS > segment_frames:
            sha256 = sha256_of(src.video)
            return plan_segments(src, load_clip_audio(src), sha256, segment_frames,
                                 max(1, int(math.ceil(min_seconds * FPS))), detector)
    return prepare_clip(src, input_size, crop, min_seconds, memory_budget_bytes, detector)
