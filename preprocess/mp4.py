"""The one mp4 writer: RGB frames as H.264 (yuv420p) and float audio as AAC, written atomically.

Two callers, each with its own encoder settings: the synthetic RAVDESS-format set
(preprocess/synthetic.py: 29.97 fps, stereo 48 kHz, x264 on one thread so the
bytes are the same on every machine) and rendered samples (trainer/sample/render.py:
25 fps, mono 16 kHz, audio fitted to the video). Frames are streamed, one in
memory at a time; the file appears under its name only once complete.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from float.config import SAMPLING_RATE
from shards.files import atomic_path

AAC_FRAME = 1024  # samples per AAC frame: audio is handed to the encoder in chunks of this size


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: Fraction | int,
              audio: np.ndarray | None = None, audio_rate: int = SAMPLING_RATE, *, crf: int = 20,
              preset: str = "ultrafast", threads: int | None = 1, audio_bit_rate: int | None = None,
              aac_coder: str | None = "fast") -> Path:
    """Write (H, W, 3) uint8 RGB frames of ``size`` = (W, H) (both even) and optional audio
    (channels, n) or (n,) float32 in [-1, 1], mono or stereo, at ``audio_rate`` to ``path``.

    ``threads``: x264 threads (its output depends on the count; None: x264's choice).
    ``audio_bit_rate`` / ``aac_coder``: None leaves the AAC encoder's default (the default
    two-loop coder is about 3x slower than "fast").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rate = Fraction(fps)
    with atomic_path(path) as temporary, av.open(str(temporary), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        options = {"preset": preset, "crf": str(crf)}
        if threads is not None:
            options["threads"] = str(threads)
        video.codec_context.options = options
        sound = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            sound = container.add_stream("aac", rate=audio_rate, layout=layout)
            if aac_coder is not None:
                sound.codec_context.options = {"aac_coder": aac_coder}
            if audio_bit_rate is not None:
                sound.bit_rate = audio_bit_rate
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = k, 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            for start in range(0, audio.shape[1], AAC_FRAME):
                chunk = np.ascontiguousarray(audio[:, start:start + AAC_FRAME])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=sound.layout.name)
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, Fraction(1, audio_rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path
