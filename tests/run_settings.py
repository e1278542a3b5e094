"""Settings of tiny, quick training runs of both stages for tests (CPU, no validation, samples or TensorBoard)."""
from __future__ import annotations

from pathlib import Path

from trainer.settings import MotionSettings, TrainSettings

DIM_W, AUDIO_DIM = 16, 12  # shard widths the tiny FMT below reads
TINY = {"dim_w": DIM_W, "dim_a": 16, "dim_h": 32, "depth": 1, "num_heads": 2}


def fmt_settings(shards: Path, out: Path, **changes) -> TrainSettings:
    base = dict(data_root=str(shards), out=str(out), preset="tiny", overrides=dict(TINY), steps=6, batch_size=2,
                lr=1e-3, log_step=3, val_step=0, sample_step=0, save_step=0, progress=False, tensorboard=False)
    return TrainSettings(**(base | changes))


def motion_settings(crops: Path, out: Path, **changes) -> MotionSettings:
    base = dict(data_root=str(crops), out=str(out), preset="tiny", steps=4, batch_size=2, log_step=2, val_step=0,
                sample_step=0, save_step=0, progress=False, tensorboard=False, pairs_per_clip=2)
    return MotionSettings(**(base | changes))
