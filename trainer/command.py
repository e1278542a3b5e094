"""`floatctl train`: the command-line front of trainer.loop.

``floatctl train --steps 10000`` works with no other option: shards from
data/shards, the paper-size model on a GPU (tiny on a CPU), everything else at
the defaults printed when the run starts. Under ``torchrun`` (WORLD_SIZE > 1)
every process runs this command; rank 0 logs and saves.

Exit codes: 0 done, 2 bad input (message on stderr), 130 / 143 stopped by
SIGINT / SIGTERM after saving a checkpoint (``--resume auto`` continues).
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from shards.dataset import ShardError
from trainer.checkpoints import CheckpointError
from trainer.loop import TrainingError, TrainSettings, parse_override, train as run_training


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code=2)


def train(
    steps: int = typer.Option(10000, help="Optimizer steps to train to (a resumed run continues up to this)."),
    data_root: Path = typer.Option(Path("data/shards"), help="Shard folder holding manifest.json."),
    batch_size: int = typer.Option(8, help="Windows per micro-batch per process (the paper: 8)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default from scratch: paper 1e-4, small 3e-4, tiny 1e-3; 1e-5 with --init)."),
    num_workers: int = typer.Option(-1, help="DataLoader workers per process (-1: 0 on CPU, up to 4 per GPU)."),
    log_step: int = typer.Option(100, help="Log losses, lr, grad norm, samples/s every N steps."),
    val_step: int = typer.Option(1000, help="Validation loss and generation error every N steps (0: never)."),
    sample_step: int = typer.Option(5000, help="Save sampled motion of val windows every N steps (0: never)."),
    save_step: int = typer.Option(1000, help="Checkpoint every N steps (0: only final.pt)."),
    resume: Optional[str] = typer.Option(None, help="'auto': newest good checkpoint of --out (fresh if none); or a path."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/float-<preset>)."),
    preset: Optional[str] = typer.Option(None, help="paper, small or tiny (default: paper on CUDA, tiny on CPU)."),
    init: Optional[Path] = typer.Option(None, help="Official float.pth: start from its fmt.* and audio projection."),
    seed: int = typer.Option(0, help="Seed of the weights, the data stream and the flow noise."),
    normalize_motion: str = typer.Option(
        "auto", help="Standardise motion latents per dimension with train-shard statistics (stored in the "
                     "checkpoint): auto = when the shards' motion encoder had random weights; on; off (raw "
                     "latents, as the official model; always off with --init)."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    warmup: int = typer.Option(-1, help="Linear warmup steps (-1: 5% of --steps, at most 1000)."),
    schedule: str = typer.Option("constant", help="After warmup: constant or cosine (to 10% of --lr)."),
    ema_decay: float = typer.Option(0.9999, help="EMA decay (warmed up as (1+n)/(10+n)); the EMA is validated."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16 (auto: bf16 on CUDA, else fp16 + scaler; fp32 on CPU)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    deterministic: bool = typer.Option(False, "--deterministic",
                                       help="Deterministic kernels: a resumed run matches an uninterrupted one."),
    keep: int = typer.Option(3, help="Periodic checkpoints to keep (0: all)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    set_: List[str] = typer.Option([], "--set", help="Override a model setting, e.g. --set depth=4 (repeatable)."),
    max_nonfinite: int = typer.Option(20, help="Stop after this many non-finite losses in a row."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="tqdm bar (default: on a terminal)."),
) -> None:
    """Train the Flow Matching Transformer and the audio projection on shards."""
    from trainer.distributed import cleanup

    try:
        overrides = dict(parse_override(item) for item in set_)
        settings = TrainSettings(
            data_root=str(data_root), out=str(out) if out else None, preset=preset, overrides=overrides,
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup, schedule=schedule,
            ema_decay=ema_decay, precision=precision, compile=compile, deterministic=deterministic, device=device,
            num_workers=num_workers, seed=seed, log_step=log_step, val_step=val_step, sample_step=sample_step,
            save_step=save_step, keep=keep, resume=resume, init=str(init) if init else None,
            max_nonfinite=max_nonfinite, progress=progress, normalize_motion=normalize_motion)
        result = run_training(settings)
    except (TrainingError, CheckpointError, ShardError) as e:
        _fail(str(e))
        return
    except (FileNotFoundError, NotADirectoryError) as e:
        _fail(str(e))
        return
    finally:
        cleanup()
    if result.stopped_by:
        code = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}.get(result.stopped_by, 1)
        raise typer.Exit(code=int(code))
    print(f"done: step {result.step}, final checkpoint {result.final_checkpoint}", flush=True)


if __name__ == "__main__":  # `python -m trainer.command ...` (what torchrun launches in the tests)
    typer.run(train)
