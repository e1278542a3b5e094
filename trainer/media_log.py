"""Media in the run's logs: the sample images, plots, audio and short videos, in TensorBoard and wandb.

The PNG and mp4 files of every sample step stay in ``runs/NAME/samples/``; this
module also puts them where a researcher watching a run looks: TensorBoard's
Images and Audio tabs (and the wandb run when ``--wandb`` is on). Tags are
fixed names with the clip's slot in the fixed validation set, not its key, so
two runs on different data still line up:

  samples/grid                 stage 1: source | driving | reconstruction rows
  samples/clipN/strip          FMT: ground truth | generated | audio dropped rows, one frame in STRIP_EVERY
  samples/clipN/motion_plot    FMT: the motion trajectory plot (trainer/sample/plot.py)
  samples/clipN/audio          FMT: the window's audio
  samples/clipN/video          FMT: ground truth | generated, a short animated GIF (TensorBoard) or mp4 (wandb)

TensorBoard's own ``add_video`` needs moviepy; an animated GIF in an image
summary is what it writes too, so the GIF is encoded here with Pillow (a
matplotlib dependency). ``seconds`` sums the time spent here, so the cost of
the media can be reported against the run's time.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from float.config import FPS, SAMPLING_RATE

TAG_GRID = "samples/grid"
STRIP_EVERY = 5  # frames between two strip columns (0.2 s at 25 fps)
STRIP_COLUMNS = 8
VIDEO_SECONDS = 2.0  # the GIF's length: short, so the event file stays small
VIDEO_EVERY = 2  # keep one frame in two (12.5 fps)
VIDEO_MAX_SIZE = 128  # px, the GIF's longer side at most
JPEG_QUALITY = 90  # the strips and grids


def clip_tag(slot: int, kind: str) -> str:
    """The stable tag of one FMT sample's medium: ``samples/clip{slot}/{kind}``."""
    return f"samples/clip{slot}/{kind}"


def strip_picks(frames: int, every: int = STRIP_EVERY, columns: int = STRIP_COLUMNS) -> list[int]:
    """The frames a strip shows: 0, every, 2*every, ... (at most ``columns``)."""
    return list(range(0, frames, every))[:columns] or [0]


def strip_image(rows: list[np.ndarray]) -> np.ndarray:
    """One image from rows of picked frames (each (K, H, W, 3) uint8, the same K): a row per array."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def gif_bytes(frames: np.ndarray, fps: int = FPS, seconds: float = VIDEO_SECONDS, every: int = VIDEO_EVERY,
              max_size: int = VIDEO_MAX_SIZE) -> bytes:
    """The first ``seconds`` of (T, H, W, 3) uint8 frames as a looping animated GIF, downscaled."""
    from PIL import Image

    picked = frames[: max(1, int(seconds * fps)): every]
    h, w = picked.shape[1:3]
    scale = min(1.0, max_size / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = [Image.fromarray(f).resize(size, Image.BILINEAR) if scale < 1 else Image.fromarray(f) for f in picked]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=round(1000 * every / fps))
    return buffer.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An (H, W, 3) uint8 RGB image as JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class MediaLog:
    """Writes media to a run's TensorBoard writer and wandb run (either may be absent)."""

    def __init__(self, writer=None, wandb_run=None):
        self.writer, self.wandb_run = writer, wandb_run
        self.seconds = 0.0

    @classmethod
    def of(cls, logger) -> "MediaLog | None":
        """The media log of a trainer.logging.RunLogger, or None when it has no backend (other ranks, or
        --no-tensorboard without --wandb)."""
        writer, wandb_run = logger.media_backends
        return cls(writer, wandb_run) if writer is not None or wandb_run is not None else None

    def _timed(self, write, *args) -> None:
        start = time.perf_counter()
        try:
            write(*args)
        finally:
            self.seconds += time.perf_counter() - start

    # ------------------------------------------------------------ the media kinds
    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 RGB image."""
        self._timed(self._image, tag, image, step)

    def image_file(self, tag: str, path: str | Path, step: int) -> None:
        """A PNG already on disk (the motion plot): its bytes go in as they are, nothing is re-encoded."""
        self._timed(self._image_file, tag, Path(path), step)

    def audio(self, tag: str, waveform: np.ndarray, step: int, sample_rate: int = SAMPLING_RATE) -> None:
        """Mono float audio in [-1, 1]."""
        self._timed(self._audio, tag, waveform, step, sample_rate)

    def video(self, tag: str, frames: np.ndarray, step: int, mp4: str | Path | None = None) -> None:
        """(T, H, W, 3) uint8 frames: a short GIF in TensorBoard; in wandb the rendered ``mp4`` when given."""
        self._timed(self._video, tag, frames, step, mp4)

    # ------------------------------------------------------------ the backends
    def _summary_image(self, tag: str, encoded: bytes, height: int, width: int, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:  # JPEG: a strip is ~10x smaller than as PNG, and every sample step adds one
            self._summary_image(tag, jpeg_bytes(image), image.shape[0], image.shape[1], step)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(image)}, step=step)

    def _image_file(self, tag: str, path: Path, step: int) -> None:
        if self.writer is not None:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
            self._summary_image(tag, path.read_bytes(), height, width, step)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(str(path))}, step=step)

    def _audio(self, tag: str, waveform: np.ndarray, step: int, sample_rate: int) -> None:
        wave = np.clip(np.asarray(waveform, np.float32).reshape(-1), -1.0, 1.0)
        if self.writer is not None:
            import torch

            self.writer.add_audio(tag, torch.from_numpy(wave).unsqueeze(0), step, sample_rate=sample_rate)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Audio(wave, sample_rate=sample_rate)}, step=step)

    def _video(self, tag: str, frames: np.ndarray, step: int, mp4: str | Path | None) -> None:
        if self.writer is not None:
            encoded = gif_bytes(frames)
            h, w = frames.shape[1:3]
            scale = min(1.0, VIDEO_MAX_SIZE / max(h, w))
            self._summary_image(tag, encoded, max(1, round(h * scale)), max(1, round(w * scale)), step)
        if self.wandb_run is not None and mp4 is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Video(str(mp4), fps=FPS, format="mp4")}, step=step)
