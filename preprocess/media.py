"""Decode one clip's video and audio with PyAV: frames at 25 fps picked by
timestamp, audio as 16 kHz mono float32, and the two made the same length.

Every failure a bad input can cause is raised as `ClipError` whose text is the
reason a person reads in errors.jsonl; nothing here is silently repaired.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import av
import numpy as np

from float.config import FPS, SAMPLES_PER_FRAME, SAMPLING_RATE  
from preprocess.discover import split_zip_member_path
from preprocess.errors import ClipError
# A clip whose decoded video ends this much before the container says it should is truncated.
TRUNCATION_TOLERANCE_S = 0.5


def describe(src: str) -> str:
    """The name of a source as shown in reasons: the file name, or archive::member."""
    zipped = split_zip_member_path(src)
    if zipped:
        return f"{os.path.basename(zipped[0])}::{zipped[1]}"
    return src


def open_bytes(src: str) -> BinaryIO:
    """A readable binary file object for a path or a "zip:ARCHIVE::MEMBER" string.

    Zip members are streamed from the archive, never extracted. Raises ClipError with
    the reason for a missing, unreadable, empty or non-regular source.
    """
    try:
        zipped = split_zip_member_path(src)
    except ValueError as exc:
        raise ClipError(str(exc)) from None
    if zipped:
        archive, member = zipped
        try:
            zf = zipfile.ZipFile(archive)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ClipError(f"cannot read zip archive {archive}: {exc}") from None
        try:
            info = zf.getinfo(member)
            if info.file_size == 0:
                raise ClipError(f"{describe(src)} is a zero-byte file")
            # The member keeps the archive's file handle open after zf.close().
            return zf.open(info)
        except KeyError:
            raise ClipError(f"{describe(src)}: no such member in the archive") from None
        except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # RuntimeError: encrypted
            raise ClipError(f"cannot read {describe(src)}: {exc}") from None
        finally:
            zf.close()
    try:
        if os.path.isdir(src):
            raise ClipError(f"{src} is a folder, not a media file")
        if os.path.islink(src) and not os.path.exists(src):
            raise ClipError(f"{src} is a broken symbolic link")
        if os.path.getsize(src) == 0:
            raise ClipError(f"{src} is a zero-byte file")
        return open(src, "rb")
    except FileNotFoundError:
        raise ClipError(f"{src} does not exist") from None
    except PermissionError:
        raise ClipError(f"{src} is not readable (permission denied)") from None
    except OSError as exc:
        raise ClipError(f"cannot read {src}: {exc.strerror or exc}") from None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _open_failure(src: str, exc: Exception) -> ClipError:
    """Explain why FFmpeg could not open a source, sniffing the bytes for a clearer reason."""
    try:
        with open_bytes(src) as f:
            head = f.read(512)
    except ClipError as inner:
        return inner
    if _looks_like_text(head):
        return ClipError(f"{describe(src)} is a text file, not a video or audio file")
    detail = getattr(exc, "strerror", None) or str(exc)
    return ClipError(f"cannot open {describe(src)} as media (truncated, corrupt, or not a media file): {detail}")


class _Container:
    """av.open on a path or zip member, closing both the container and the file object."""

    def __init__(self, src: str):
        self.src = src
        self.file = open_bytes(src)
        try:
            self.container = av.open(self.file, mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            self.file.close()
            raise _open_failure(src, exc) from None

    def __enter__(self) -> av.container.InputContainer:
        return self.container

    def __exit__(self, *exc_info) -> None:
        self.container.close()
        self.file.close()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    seconds: float | None  # declared by the container; None when unknown
    fps: float


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _stream_rate(stream) -> Fraction | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate and rate > 0 else None


def probe_video(src: str) -> VideoInfo:
    """Size, declared duration and frame rate of the first video stream, without decoding."""
    with _Container(src) as container:
        if not container.streams.video:
            raise ClipError(f"{describe(src)} has no video stream")
        stream = container.streams.video[0]
        rate = _stream_rate(stream)
        return VideoInfo(width=stream.codec_context.width, height=stream.codec_context.height,
                         seconds=_declared_seconds(container, stream), fps=float(rate or 0))


def _frame_time(frame: av.VideoFrame, index: int, frame_duration: Fraction) -> Fraction:
    if frame.pts is None or frame.time_base is None:
        return index * frame_duration
    return frame.pts * frame.time_base


def iter_video_frames(src: str, fps: int = FPS) -> tuple[Iterator[np.ndarray], float]:
    """A lazy iterator over the clip's RGB frames resampled to `fps`, and the source fps.

    Resampling is by timestamp: tick k (time k/fps after the first frame) shows the
    latest source frame whose time is <= k/fps, so 29.97 fps drops about one frame in
    six and a 25 fps source passes through unchanged. The clip lasts until the last
    frame's time plus one source frame. Only one decoded frame is held at a time.
    Raises ClipError when the source is unreadable, has no video, or is truncated.
    """
    holder = _Container(src)
    container = holder.container
    if not container.streams.video:
        holder.__exit__(None, None, None)
        raise ClipError(f"{describe(src)} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = _stream_rate(stream)
    if rate is None:
        holder.__exit__(None, None, None)
        raise ClipError(f"{describe(src)}: the video stream has no frame rate")
    frame_duration = 1 / rate
    declared = _declared_seconds(container, stream)

    def frames() -> Iterator[np.ndarray]:
        with holder:
            start = None
            tick = 0
            previous: tuple[Fraction, av.VideoFrame] | None = None
            cached: np.ndarray | None = None
            try:
                for index, frame in enumerate(container.decode(stream)):
                    t = _frame_time(frame, index, frame_duration)
                    if start is None:
                        start = t
                    t -= start
                    # Ticks before this frame's time show the previous frame.
                    while previous is not None and Fraction(tick, fps) < t:
                        if cached is None:
                            cached = previous[1].to_ndarray(format="rgb24")
                        yield cached
                        tick += 1
                    previous, cached = (t, frame), None
            except av.FFmpegError as exc:
                raise ClipError(f"{describe(src)}: video stream is corrupt after {tick / fps:.2f} s "
                                f"(truncated?): {exc.strerror or exc}") from None
            if previous is None:
                raise ClipError(f"{describe(src)}: the video stream has no decodable frames")
            end = previous[0] + frame_duration
            if declared is not None and float(end) < declared - TRUNCATION_TOLERANCE_S:
                raise ClipError(f"{describe(src)} is truncated: decoded {float(end):.2f} s of video "
                                f"but the file declares {declared:.2f} s")
            while Fraction(tick, fps) < end:
                if cached is None:
                    cached = previous[1].to_ndarray(format="rgb24")
                yield cached
                tick += 1

    return frames(), float(rate)


def decode_video(src: str, fps: int = FPS) -> tuple[np.ndarray, float]:
    """All frames of a video at `fps` as (T, H, W, 3) uint8 RGB, and the source fps.

    See iter_video_frames for the timestamp rule; raises ClipError for bad input.
    """
    iterator, source_fps = iter_video_frames(src, fps)
    frames = list(iterator)
    return np.stack(frames), source_fps


def decode_audio(src: str, sr: int = SAMPLING_RATE) -> np.ndarray:
    """The first audio track as float32 mono at `sr` Hz (PyAV's resampler downmixes).

    Raises ClipError("no audio track ...") when there is none, and for unreadable input.
    """
    with _Container(src) as container:
        if not container.streams.audio:
            raise ClipError(f"no audio track in {describe(src)}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.FFmpegError as exc:
            raise ClipError(f"{describe(src)}: audio stream is corrupt (truncated?): {exc.strerror or exc}") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise ClipError(f"the audio track of {describe(src)} is empty")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def align(frames: Sequence[np.ndarray] | np.ndarray, audio: np.ndarray,
          samples_per_frame: int = SAMPLES_PER_FRAME, max_mismatch_s: float = 0.5,
          fps: int = FPS) -> tuple[Sequence[np.ndarray] | np.ndarray, np.ndarray]:
    """Cut video and audio to the same T frames: T = min(frames, audio // samples_per_frame).

    Audio short of the video by less than one frame is zero-padded rather than losing a
    frame. Raises ClipError when the two differ by more than `max_mismatch_s` (a sign of
    a broken file or a wrong pairing) or when nothing is left.
    """
    n_video = len(frames)
    video_s = n_video / fps
    audio_s = len(audio) / (samples_per_frame * fps)
    if abs(video_s - audio_s) > max_mismatch_s:
        raise ClipError(f"video is {video_s:.2f} s but audio is {audio_s:.2f} s "
                        f"(more than {max_mismatch_s} s apart)")
    shortfall = n_video * samples_per_frame - len(audio)
    if 0 < shortfall < samples_per_frame:
        audio = np.concatenate([audio, np.zeros(shortfall, dtype=audio.dtype)])
    n = min(n_video, len(audio) // samples_per_frame)
    if n == 0:
        raise ClipError("no complete frame: the video or the audio is empty")
    return frames[:n], audio[: n * samples_per_frame]


def source_waveform(meta: dict, n_frames: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray | None:
    """The clip's 16 kHz waveform re-decoded from the source file named in meta.json, if it still exists.

    The shard stage cuts audio to n_frames * SAMPLES_PER_FRAME samples from the start, so the
    first samples of the decoded source line up with the shard's frames.
    """
    # The shard stage writes "source": {"video": ..., "audio": ...} (audio: a paired wav, or None
    # when the video's own track was used); plain strings are accepted too.
    source = meta.get("source")
    candidates = [source.get("audio"), source.get("video")] if isinstance(source, dict) else [source]
    for src in candidates:
        if not isinstance(src, str) or not src:
            continue
        if not (src.startswith("zip:") or Path(src).is_file()):
            continue
        try:
            audio = decode_audio(src)
        except ClipError:
            continue
        if len(audio) < (n_frames - 1) * samples_per_frame:
            continue  # not this clip's audio (or a different cut)
        return audio[: n_frames * samples_per_frame]
    return None


def frame_energy(waveform: np.ndarray, frames: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """RMS of the waveform over each video frame's samples, (frames,); zero past its end."""
    wave = np.zeros(frames * samples_per_frame, np.float64)
    src = np.asarray(waveform, np.float64).reshape(-1)[: len(wave)]
    wave[: len(src)] = src
    return np.sqrt((wave.reshape(frames, samples_per_frame) ** 2).mean(axis=1))
