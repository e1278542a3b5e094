"""Media in the logs: a tiny FMT run and a tiny stage-1 run write their sample images, plots, audio and
short videos into TensorBoard, read back here with tensorboard's EventAccumulator."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import trainer.sample.step_renderer as step_renderer
from crop_factory import make_crop_shards
from shard_factory import make_shards
from shards.manifest import write_manifest
from trainer.media_log import TAG_GRID, MediaLog, clip_tag, gif_bytes, strip_image, strip_picks
from trainer.settings import MotionSettings, TrainSettings

DIM_W = 512  # the seeded motion decoder's latent size: the run's samples are rendered
TINY = {"dim_w": DIM_W, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "audio": 0, "scalars": 0})
    acc.Reload()
    return acc


def decoded(event) -> Image.Image:
    return Image.open(io.BytesIO(event.encoded_image_string))


def speech(meta: dict, n_frames: int) -> np.ndarray:
    """Stand-in for the clip's source audio (the synthetic shards name no source file)."""
    t = np.arange(n_frames * 640) / 16000
    return (0.4 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_strip_shows_every_few_frames_row_by_row_and_the_gif_is_animated():
    assert strip_picks(12, every=5, columns=8) == [0, 5, 10] and strip_picks(60, every=5, columns=3) == [0, 5, 10]
    rows = [np.full((3, 8, 6, 3), value, np.uint8) for value in (10, 120, 250)]
    rows[1][1] = 77  # the second column of the middle row
    strip = strip_image(rows)
    assert strip.shape == (3 * 8, 3 * 6, 3)  # three frames in each of three rows
    assert strip[8:16, 6:12].max() == 77 and strip[:8].max() == 10 and strip[16:].min() == 250
    frames = np.random.default_rng(0).integers(0, 255, (60, 200, 100, 3), dtype=np.uint8)
    gif = Image.open(io.BytesIO(gif_bytes(frames, fps=25, seconds=2.0, every=2, max_size=64)))
    assert gif.format == "GIF" and gif.n_frames == 25 and gif.size == (32, 64)


def test_fmt_run_logs_strips_plots_audio_and_video(tmp_path, monkeypatch):
    manifest = make_shards(tmp_path / "shards", {"train": 2, "val": 2}, frames=60, dim_w=DIM_W, audio_dim=12)
    manifest["encoders"]["motion"]["width"] = 0.125  # a thin seeded decoder keeps the rendering fast
    write_manifest(tmp_path / "shards", manifest)
    monkeypatch.setattr(step_renderer, "source_waveform", speech)
    from trainer.train_fmt import train

    run = tmp_path / "run"
    train(TrainSettings(data_root=str(tmp_path / "shards"), out=str(run), preset="tiny", overrides=dict(TINY),
                        steps=2, batch_size=2, log_step=1, val_step=2, sample_step=2, save_step=0, progress=False,
                        tensorboard=True, val_nfe=2, sample_count=2))
    acc = events(run)
    images, audio = set(acc.Tags()["images"]), set(acc.Tags()["audio"])
    for slot in (0, 1):
        assert {clip_tag(slot, "strip"), clip_tag(slot, "motion_plot"), clip_tag(slot, "video")} <= images
        assert clip_tag(slot, "audio") in audio
    strip = acc.Images(clip_tag(0, "strip"))[-1]
    assert strip.step == 2
    size = decoded(strip).size  # three labelled rows (ground truth | generated | audio dropped)
    assert size[1] % 3 == 0 and size[0] > size[1] // 3
    assert decoded(acc.Images(clip_tag(0, "motion_plot"))[-1]).format == "PNG"
    assert decoded(acc.Images(clip_tag(0, "video"))[-1]).n_frames > 1  # an animation, not a still
    clip = acc.Audio(clip_tag(0, "audio"))[-1]
    assert clip.sample_rate == 16000 and clip.encoded_audio_string[:4] == b"RIFF"
    assert clip.length_frames == 50 * 640  # the sampled window's audio (the FMT window is 50 frames)
    assert (run / "samples" / "sample_step_2").is_dir()  # the files beside the run stay as they were


def test_stage1_run_logs_its_grid(tmp_path):
    make_crop_shards(tmp_path / "crops", {"train": 4, "val": 2}, frames=8, size=32, seed=0)
    from trainer.train_motion import train

    run = tmp_path / "run"
    train(MotionSettings(data_root=str(tmp_path / "crops"), out=str(run), preset="tiny", steps=2, batch_size=2,
                         log_step=1, val_step=2, sample_step=2, save_step=0, progress=False, tensorboard=True,
                         val_clips=2, val_pairs_per_clip=2, sample_count=3, pairs_per_clip=2))
    grid = events(run).Images(TAG_GRID)
    assert [e.step for e in grid] == [2]
    assert decoded(grid[0]).format == "JPEG"
    assert decoded(grid[0]).size == (3 * 32, 3 * 32)  # three pairs; source | driving | reconstruction rows


def test_a_logger_without_tensorboard_or_wandb_has_no_media_log(tmp_path):
    from trainer.logging import RunLogger

    quiet = RunLogger(tmp_path, tensorboard=False, progress=False)
    assert MediaLog.of(quiet) is None
    quiet.close()
    logger = RunLogger(tmp_path, tensorboard=True, progress=False)
    media = MediaLog.of(logger)
    media.audio("x/audio", np.zeros(1600, np.float32), 3)
    assert media.seconds > 0
    logger.close()
    assert events(tmp_path).Audio("x/audio")[0].step == 3


def test_wandb_gets_the_same_tags_as_tensorboard(tmp_path, monkeypatch):
    """wandb is optional (not installed here): a stand-in module records what would be logged, and when."""
    import sys
    import types

    made = []
    fake = types.ModuleType("wandb")
    for kind in ("Image", "Audio", "Video"):
        setattr(fake, kind, lambda data, _kind=kind, **kw: made.append((_kind, data, kw)) or _kind)
    monkeypatch.setitem(sys.modules, "wandb", fake)

    class Run:
        logged: list = []

        def log(self, payload, step):
            self.logged.append((step, payload))

    run = Run()
    media = MediaLog(None, run)
    frames = np.zeros((10, 16, 16, 3), np.uint8)
    plot = tmp_path / "plot.png"
    Image.new("RGB", (4, 4)).save(plot)
    media.image(TAG_GRID, frames[0], 5)
    media.image_file(clip_tag(0, "motion_plot"), plot, 5)
    media.audio(clip_tag(0, "audio"), np.full(800, 2.0), 5)
    media.video(clip_tag(0, "video"), frames, 5, mp4=tmp_path / "clip.mp4")
    media.video(clip_tag(1, "video"), frames, 5)  # no mp4 written: wandb gets no video
    assert run.logged == [(5, {TAG_GRID: "Image"}), (5, {clip_tag(0, "motion_plot"): "Image"}),
                          (5, {clip_tag(0, "audio"): "Audio"}), (5, {clip_tag(0, "video"): "Video"})]
    audio = next(data for kind, data, _ in made if kind == "Audio")
    assert audio.max() == 1.0  # clipped to [-1, 1] as for TensorBoard
    assert [kw for kind, _, kw in made if kind == "Video"] == [{"fps": 25, "format": "mp4"}]
