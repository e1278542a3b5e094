"""Decoding, resampling, alignment and every bad-input reason, on files made here with PyAV."""
from __future__ import annotations

import builtins
import os
import wave
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from preprocess.clip import prepare_clip
from preprocess.discover import ClipSource, discover
from preprocess.media import ClipError, align, decode_audio, decode_video, open_bytes, probe_video
from preprocess.mp4 import write_mp4

NTSC = Fraction(30000, 1001)


def index_frames(n: int, size: int = 64) -> list[np.ndarray]:
    """Frames whose index is written in 8 black/white stripes (bit b = stripe b), robust to H.264."""
    stripe = size // 8
    frames = []
    for i in range(n):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        for bit in range(8):
            if i >> bit & 1:
                frame[:, bit * stripe:(bit + 1) * stripe] = 255
        frames.append(frame)
    return frames


def frame_indices(frames: np.ndarray) -> list[int]:
    stripe = frames.shape[2] // 8
    return [sum(1 << b for b in range(8) if f[:, b * stripe + 2:(b + 1) * stripe - 2].mean() > 128) for f in frames]


def tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def clip(tmp_path: Path, name: str, n_frames: int, fps=NTSC, seconds_audio: float | None = None,
         size: int = 64) -> Path:
    audio = None
    if seconds_audio is not None:
        audio = np.stack([tone(seconds_audio, 48000, 440), tone(seconds_audio, 48000, 1000)])
    return write_mp4(tmp_path / name, index_frames(n_frames, size), (size, size), fps, audio, 48000)


def source(path: Path, audio: Path | None = None) -> ClipSource:
    return ClipSource(clip_id=path.stem, video=str(path), audio=str(audio) if audio else None,
                      actor="a", emotion=None, fields={})


def test_ntsc_resampled_to_25_fps_by_timestamp(tmp_path):
    path = clip(tmp_path, "ntsc.mp4", 90)
    frames, source_fps = decode_video(str(path))
    assert source_fps == pytest.approx(29.97, abs=0.01)
    duration = 90 / float(NTSC)
    assert abs(len(frames) - duration * 25) <= 1
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    # Tick k (time k/25) shows the latest source frame at or before it.
    expected = [k * 30000 // (25 * 1001) for k in range(len(frames))]
    assert frame_indices(frames) == expected
    assert sorted(set(range(90)) - set(expected))[:3] == [6, 12, 18]  # about one in six dropped


def test_25_fps_passes_through_and_slower_sources_repeat_frames(tmp_path):
    frames, fps = decode_video(str(clip(tmp_path, "pal.mp4", 50, fps=25)))
    assert fps == 25 and frame_indices(frames) == list(range(50))
    frames, fps = decode_video(str(clip(tmp_path, "slow.mp4", 20, fps=20)))
    assert len(frames) == 25
    assert frame_indices(frames) == [k * 20 // 25 for k in range(25)]


def test_audio_16k_mono_from_48k_stereo_aac(tmp_path):
    path = clip(tmp_path, "tones.mp4", 75, seconds_audio=3.0)
    audio = decode_audio(str(path))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 3.0 * 16000) < 0.05 * 16000
    spectrum = np.abs(np.fft.rfft(audio[4000:36000]))
    freqs = np.fft.rfftfreq(32000, 1 / 16000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]].round())
    assert peaks == [440, 1000]  # both channels reach the mono downmix
    # a wav at another rate goes through the same resampler
    wav = decode_audio(str(write_wav(tmp_path / "a.wav", tone(1.0, 44100, 300), 44100)))
    assert len(wav) == pytest.approx(16000, abs=2)


def test_zip_member_decodes_like_the_file(tmp_path):
    path = clip(tmp_path, "z.mp4", 40, seconds_audio=1.6)
    archive = tmp_path / "Video_Speech_Actor_01.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "Actor_01/01-01-01-01-01-01-01.mp4")
    member = f"zip:{archive}::Actor_01/01-01-01-01-01-01-01.mp4"
    assert np.array_equal(decode_video(member)[0], decode_video(str(path))[0])
    assert np.array_equal(decode_audio(member), decode_audio(str(path)))
    assert probe_video(member).width == 64
    with pytest.raises(ClipError, match="no such member"):
        open_bytes(f"zip:{archive}::Actor_01/missing.mp4")


def test_align_cuts_pads_and_checks():
    frames = np.zeros((50, 4, 4, 3), np.uint8)
    f, a = align(frames, np.ones(50 * 640 - 100, np.float32))  # short by < 1 frame: padded
    assert len(f) == 50 and len(a) == 50 * 640 and a[-1] == 0 and a[0] == 1
    f, a = align(frames, np.ones(48 * 640 + 10, np.float32))  # short by 2 frames: video cut
    assert len(f) == 48 and len(a) == 48 * 640
    f, a = align(frames[:40], np.ones(45 * 640, np.float32))  # audio longer: audio cut
    assert len(f) == 40 and len(a) == 40 * 640
    with pytest.raises(ClipError, match=r"video is 2.00 s but audio is 1.00 s"):
        align(frames, np.ones(16000, np.float32))
    with pytest.raises(ClipError, match="empty"):
        align(frames[:0], np.ones(10, np.float32))


# ------------------------------------------------------------------ bad input


def test_zero_byte_mp4(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ClipError, match="zero-byte"):
        decode_video(str(tmp_path / "empty.mp4"))


def test_truncated_mp4(tmp_path):
    data = clip(tmp_path, "full.mp4", 60, seconds_audio=2.4).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipError, match="truncated"):
        decode_video(str(tmp_path / "cut.mp4"))


def test_truncated_mp4_with_index_at_front(tmp_path):
    # A "faststart" file keeps its index, so only the decoded length shows the cut.
    import av

    full = clip(tmp_path, "full.mp4", 75, seconds_audio=3.0)
    fast = tmp_path / "fast.mp4"
    with av.open(str(full)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = fast.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(ClipError, match="truncated"):
        decode_video(str(tmp_path / "cut.mp4"))


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are my notes, not a video\n" * 20)
    with pytest.raises(ClipError, match="text file"):
        decode_video(str(tmp_path / "notes.mp4"))
    with pytest.raises(ClipError, match="text file"):
        decode_audio(str(tmp_path / "notes.mp4"))


def test_unreadable_sources(tmp_path, monkeypatch):
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ClipError, match="folder"):
        decode_video(str(tmp_path / "dir.mp4"))
    os.symlink(tmp_path / "gone.mp4", tmp_path / "link.mp4")
    with pytest.raises(ClipError, match="broken symbolic link"):
        decode_video(str(tmp_path / "link.mp4"))
    with pytest.raises(ClipError, match="does not exist"):
        decode_video(str(tmp_path / "never.mp4"))
    path = clip(tmp_path, "locked.mp4", 30)
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(ClipError, match="permission denied"):
        decode_video(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_mode(tmp_path):
    path = clip(tmp_path, "mode.mp4", 30)
    path.chmod(0)
    with pytest.raises(ClipError, match="permission denied"):
        decode_video(str(path))


def test_video_without_audio_and_no_wav(tmp_path):
    path = clip(tmp_path, "silent.mp4", 75)
    with pytest.raises(ClipError, match="no audio track"):
        decode_audio(str(path))
    with pytest.raises(ClipError, match="no audio track in .*silent.mp4 and no paired audio file"):
        prepare_clip(source(path), 32, crop="none")
    # with a same-stem wav beside it, folder discovery pairs them and the clip works
    write_wav(tmp_path / "silent.wav", tone(3.0, 16000, 200), 16000)
    clips, _ = discover(tmp_path, kind="folder")
    prepared = prepare_clip(next(c for c in clips if c.video.endswith("silent.mp4")), 32, crop="none")
    assert prepared.frames.shape[1:] == (32, 32, 3)
    assert len(prepared.audio) == prepared.n_frames * 640
    assert prepared.n_frames == pytest.approx(75 / 29.97 * 25, abs=1)


def test_clip_shorter_than_min_seconds(tmp_path):
    path = clip(tmp_path, "short.mp4", 33, seconds_audio=33 / 29.97)  # 1.10 s: 28 frames at 25 fps
    with pytest.raises(ClipError, match=r"clip is 1.1 s, shorter than 2.0 s"):
        prepare_clip(source(path), 32, crop="none")
    assert prepare_clip(source(path), 32, crop="none", min_seconds=1.0).n_frames == 28


def test_audio_and_video_far_apart(tmp_path):
    path = clip(tmp_path, "mismatch.mp4", 75, seconds_audio=1.0)
    with pytest.raises(ClipError, match="apart"):
        prepare_clip(source(path), 32, crop="none")


def test_prepared_clip_sha256_and_bad_arguments(tmp_path):
    import hashlib

    path = clip(tmp_path, "ok.mp4", 75, seconds_audio=2.6)
    prepared = prepare_clip(source(path), 16, crop="none")
    assert prepared.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prepared.box is None and prepared.source_fps == pytest.approx(29.97, abs=0.01)
    with pytest.raises(ValueError, match="crop"):
        prepare_clip(source(path), 16, crop="centre")
