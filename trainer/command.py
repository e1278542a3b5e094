"""`floatctl train` and `floatctl train-motion`: command-line fronts of the two training stages.

The options are generated from the settings dataclasses (trainer/settings.py),
so each default and help text is written once. ``floatctl train --steps 10000``
works with no other option: shards from data/shards, the paper-size model on a
GPU (tiny on a CPU), everything else at the defaults printed when the run
starts. Under ``torchrun`` (WORLD_SIZE > 1) every process runs the command;
rank 0 logs and saves.

Exit codes: 0 done, 1 a file could not be written (full disk, read-only --out: one line on stderr
naming the file, the free space and how to resume), 2 bad input (message on stderr), 130 / 143
stopped by SIGINT / SIGTERM after saving a checkpoint (``--resume auto`` continues).
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

import typer

from trainer.settings import MotionSettings, TrainSettings, typer_command


def run_stage(train: Callable, settings) -> None:
    """Run a stage's ``train(settings)``, turning known errors into exit code 2 and signals into 130/143."""
    from float.checkpoint import CheckpointError
    from shards.errors import DamagedShardsError, StorageError
    from shards.tar import ShardError
    from trainer.distributed import cleanup
    from trainer.errors import TrainerError, exit_with_error
    from trainer.settings import SettingsError

    try:
        result = train(settings)
    except StorageError as e:  # not bad input: the disk or the folder; exit 1
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(code=1)
    except (TrainerError, CheckpointError, ShardError, DamagedShardsError, SettingsError, FileNotFoundError,
            NotADirectoryError) as e:
        exit_with_error(str(e))
        return
    finally:
        cleanup()
    if result.stopped_by:
        code = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}.get(result.stopped_by, 1)
        raise typer.Exit(code=int(code))
    print(f"done: step {result.step}, final checkpoint {result.final_checkpoint}", flush=True)


def _train_fmt(settings: TrainSettings) -> None:
    from trainer.train_fmt import train

    run_stage(train, settings)


train = typer_command(TrainSettings, _train_fmt, "train",
                      "Train the Flow Matching Transformer and the audio projection on latent shards.")


def _train_motion(settings: MotionSettings) -> None:
    from trainer.train_motion import train

    run_stage(train, settings)


train_motion = typer_command(MotionSettings, _train_motion, "train-motion",
                             "Train the motion auto-encoder (stage 1) on crop shards.")


def _main() -> None:
    """`python -m trainer.command [train-motion] ...`: what torchrun launches (the FMT unless the first
    argument names stage 1)."""
    if sys.argv[1:2] == ["train-motion"]:
        sys.argv.pop(1)
        typer.run(train_motion)
    else:
        typer.run(train)


if __name__ == "__main__":
    _main()
