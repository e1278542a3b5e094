"""What both training stages share before and around the loop, in small named steps.

A stage (``trainer/train_fmt.py``, ``trainer/train_motion.py``) reads its data
description, builds its model, then calls these steps in order: resolve the
resume point, set the numerics, build EMA / optimizer / scaler, restore a
checkpoint's training state, and assemble a ``Run`` for ``trainer.loop``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Collection
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from float.config import FloatConfig
from float.motion_checkpoint import MOTION_CKPT_KIND
from shards.files import atomic_write_bytes, check_writable
from shards.format import KNOWN_MEMBERS
from shards.integrity import check_shard_folder
from shards.mix import ShardSets, open_shard_sets, parse_data_root
from shards.remote import is_url
from trainer import checkpoints as ckpt
from trainer.device_step import fused_supported, keep_fused
from trainer.distributed import DistInfo
from trainer.ema import EMA
from trainer.errors import TrainingError
from trainer.logging import RunLogger
from trainer.schedule import LR_SCALINGS, PAPER_BATCH, SCHEDULES, lr_batch_factor
from trainer.step_profiler import parse_profile_steps

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What a checkpoint holds: an FMT run (older checkpoints have no kind) or a stage-1 auto-encoder run.
FMT_KIND = "fmt"
MOTION_KIND = MOTION_CKPT_KIND  # read back by float.motion_checkpoint.load_motion_checkpoint


def default_preset(device: torch.device) -> str:
    return "paper" if device.type == "cuda" else "tiny"


def default_num_workers(device: torch.device, local_world: int) -> int:
    if device.type != "cuda":
        return 0
    # Up to 8 a GPU: at paper width 4 host-collating workers fed 1,525 windows/s on an H200 (issue 16), a fifth
    # of what the compiled model takes; clip records (--window-cut device) lighten each worker's batch.
    return max(1, min(8, (os.cpu_count() or 2) // max(1, local_world) - 1))


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if precision not in PRECISIONS:
        raise TrainingError(f"--precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """Seed of every random draw of one micro-batch: a step is a pure function of its inputs."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


class StopFlag:
    """SIGTERM / SIGINT ask the loop to save and exit after the current step; a second Ctrl-C aborts."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------- set-up steps
def check_loop_options(s) -> None:
    if s.schedule not in SCHEDULES:
        raise TrainingError(f"--schedule {s.schedule!r}: choose one of {SCHEDULES}")
    if s.steps < 1 or s.batch_size < 1 or s.grad_accum < 1:
        raise TrainingError("--steps, --batch-size and --grad-accum must be at least 1")
    if s.lr_scaling not in LR_SCALINGS:
        raise TrainingError(f"--lr-scaling {s.lr_scaling!r}: choose one of {', '.join(LR_SCALINGS)}")
    try:
        parse_profile_steps(s.profile_steps)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """--channels-last / --no-channels-last, or by default: on CUDA only (where NHWC convolutions pay)."""
    return device.type == "cuda" if choice is None else bool(choice)


def lr_factor(s, info: DistInfo) -> float:
    """--lr-scaling's factor at this run's global batch (batch x grad-accum x processes)."""
    return lr_batch_factor(s.lr_scaling, s.batch_size * s.grad_accum * info.world_size)


def describe_lr_scaling(s, info: DistInfo, resumed) -> str:
    """How the start line explains the rate: the rule, the global batch against the paper's, the factor."""
    if resumed is not None and s.lr is None:
        return "kept from the checkpoint"
    global_batch = s.batch_size * s.grad_accum * info.world_size
    return f"{s.lr_scaling} (global batch {global_batch} vs the paper's {PAPER_BATCH}: x{lr_factor(s, info):.4g})"


def check_out_writable(run_dir: Path, info: DistInfo) -> None:
    """Before any work: --out must take files (StorageError, exit 1, on a read-only or full file system)."""
    if info.is_main:
        check_writable(run_dir, "--out")


def resume_point(resume: str | None, ckpt_dir: Path, kind: str, info: DistInfo) -> tuple[Path, dict] | None:
    """The checkpoint to continue from (None: a fresh run), refused when it belongs to the other stage."""
    warn = print if info.is_main else (lambda message: None)
    try:
        resumed = ckpt.resolve_resume(resume, ckpt_dir, warn)
    except ckpt.CheckpointError as e:
        raise TrainingError(str(e)) from None
    if resume == "auto" and resumed is None:
        warn(f"--resume auto: no usable checkpoint in {ckpt_dir}, starting from step 0")
    if resumed is not None:
        found = resumed[1].get("kind", FMT_KIND)
        if found != kind:
            raise TrainingError(f"checkpoint {resumed[0]} is a {found} checkpoint, not a {kind} one: "
                                f"resume it with the command that wrote it, or start a new --out")
    return resumed


def check_same_config(state: dict, path: Path, cfg: FloatConfig) -> None:
    try:
        saved = FloatConfig.from_dict(state["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise TrainingError(f"checkpoint {path}: unusable config ({e})") from None
    diffs = saved.differences(cfg)
    if diffs:
        listed = "\n  - ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diffs.items())
        raise TrainingError(f"checkpoint {path} was trained with another model config:\n  - {listed}\n"
                            f"(pass the checkpoint's --preset / --set, or start a new --out)")


def configure_numerics(s, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Deterministic kernels and TF32 as asked; returns (autocast dtype, whether to use a GradScaler)."""
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return resolve_precision(s.precision, device)


def open_logger(s, run_dir: Path, info: DistInfo, start_step: int) -> RunLogger:
    return RunLogger(run_dir, enabled=info.is_main, total_steps=s.steps, start_step=start_step,
                     tensorboard=s.tensorboard, progress=s.progress,
                     wandb=dataclasses.asdict(s) if s.wandb else None)


def saved_counters(resumed: tuple[Path, dict] | None) -> dict:
    """The run's counters (non-finite steps, early-stopping state) as a checkpoint left them."""
    counters = dict(resumed[1].get("counters") or {}) if resumed else {}
    counters["nonfinite"] = int(counters.get("nonfinite", 0))
    return counters


def make_optimizer(params, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel (CUDA, CPU): one kernel over all parameters, and it skips a
    non-finite step on the device (trainer/device_step.py); elsewhere torch's default implementation."""
    params = [p for p in params]
    fused = bool(params) and all(fused_supported(p.device) and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def worker_count(s, device: torch.device) -> int:
    if s.num_workers >= 0:
        return s.num_workers
    return default_num_workers(device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def write_run_config(run_dir: Path, content: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(content, indent=2, sort_keys=True, default=str).encode()
    atomic_write_bytes(run_dir / "config.json", lambda f: f.write(text))


# ---------------------------------------------------------------- the run the loop works with
@dataclass
class Run:
    """The stage-independent state of a training run; a stage builds one and hands it to the loop."""

    s: object  # the stage's settings (CommonSettings subclass)
    info: DistInfo
    cfg: FloatConfig
    kind: str  # checkpoint kind: FMT_KIND or MOTION_KIND
    run_dir: Path
    log: RunLogger
    model: nn.Module  # the raw model: checkpoints, EMA, clipping
    train_model: nn.Module  # DDP / compiled wrapper used for the forward pass
    ema: EMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loader: object  # iterable of batches with state_dict / load_state_dict / skipped
    schedule: dict  # {"lr", "warmup"}: kept by a resumed run
    start_step: int = 0
    counters: dict = field(default_factory=lambda: {"nonfinite": 0})  # saved with every checkpoint
    extra: dict = field(default_factory=dict)  # the stage's own checkpoint entries (fingerprints...)

    @property
    def device(self) -> torch.device:
        return self.info.device

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def restore_training_state(path: Path, state: dict, model: nn.Module, ema: EMA,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Weights, EMA, optimizer moments, loss scale and global RNG states of a checkpoint.

    Checkpoints written before the schedule became a function of the step carry a
    ``scheduler`` entry; it is not needed (the rate is recomputed) and is ignored."""
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        keep_fused(optimizer)
        scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng_state(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise TrainingError(f"checkpoint {path}: cannot restore the training state ({e})") from None


def saved_stream_state(state: dict, path: Path, info: DistInfo, log: RunLogger) -> dict | None:
    """This rank's data-stream position in a checkpoint, or None when the world size changed."""
    streams = state.get("stream", {}).get("ranks") or []
    if len(streams) == info.world_size:
        return streams[info.rank]
    log.info(f"warning: {path} was written by {len(streams)} rank(s), this run has {info.world_size}: "
             f"the data stream starts afresh (training goes on, but not bit-exactly)")
    return None


def gather_stream_states(loader_state: dict, info: DistInfo) -> list[dict]:
    if not info.is_distributed:
        return [loader_state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, loader_state)
    return states


# ---------------------------------------------------------------- the run's shard sets (both stages)
def read_shard_sets(data_root: list[str] | str) -> ShardSets:
    """The run's shard sets (local folders, URLs or patterns; several are mixed: shards/mix.py)."""
    for root in [data_root] if isinstance(data_root, str) else data_root:
        try:
            location = parse_data_root(root).location
        except ValueError as e:
            raise TrainingError(str(e)) from None
        if is_url(location) or "{" in location:
            continue
        folder = Path(location)
        if not folder.exists():
            raise TrainingError(f"shard folder {folder} does not exist: write shards with `floatctl shards` "
                                f"or pass --data-root")
        if folder.is_dir() and not any(folder.iterdir()):
            raise TrainingError(f"shard folder {folder} is empty: write shards with `floatctl shards`")
    try:
        return open_shard_sets(data_root)
    except (OSError, ValueError) as e:
        raise TrainingError(str(e)) from None


def check_local_folders(sets: ShardSets, accept: bool, warn, known_members: Collection[str] = KNOWN_MEMBERS) -> int:
    """Every local shard folder of the run against its manifest (shards/integrity.py); clips lost.
    ``known_members``: the members a shard of this kind holds (crop shards: CROP_ONLY_MEMBERS)."""
    lost = 0
    for root, manifest in zip(sets.roots, sets.manifests):
        if Path(root.location).is_dir():
            lost += check_shard_folder(root.location, manifest, ("train", "val"), accept, known_members, warn)
    return lost


def check_same_shards(state: dict, path: Path, manifest: dict) -> None:
    saved_fp = state.get("manifest_fingerprint")
    if saved_fp and saved_fp != manifest.get("fingerprint"):
        raise TrainingError(f"checkpoint {path} was trained on shards written with other settings "
                            f"(manifest fingerprint {saved_fp[:12]} vs {str(manifest.get('fingerprint'))[:12]} "
                            f"of the current shards): resume on the same shards or start a new --out")
