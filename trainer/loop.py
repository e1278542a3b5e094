"""The training loop of FLOAT's motion generator (FMT + audio projection), DiT train.py style.

One function, ``train(settings)``: set up (devices, data, model, optimizer,
resume), then a flat loop of optimizer steps with logging, validation, samples
and checkpoints at fixed step intervals.

Exact resume. Every random draw of a step (flow time, noise, condition
dropout) comes from a generator seeded by (seed, rank, step, micro-batch), so
a step is a pure function of the weights, the optimizer state and the batch;
the data loader restores its stream position from the checkpoint. A run killed
at any point and resumed from its last checkpoint therefore retraces the same
steps: on CPU with ``deterministic=True`` the final weights are bitwise equal
to an uninterrupted run's (global RNG states are saved and restored as well,
for any code that still uses them).

Run layout: ``runs/NAME/{config.json, checkpoints/, samples/, metrics.jsonl, tb/}``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from float.checkpoint import load_official_state_dict, load_parts
from float.config import FloatConfig, get_preset
from float.hf_checkpoint import state_fingerprint
from float.loss import LossWeights, rectified_flow_loss
from float.model import FloatMotionModel, count_parameters
from float.motion_autoencoder import MotionAutoEncoder
from shards.dataset import KNOWN_MEMBERS, ValWindows, check_compatible, make_loader, manifest_dims, shard_urls
from shards.manifest import read_manifest
from shards.stats import motion_statistics
from shards.windows import WindowSpec
from trainer import checkpoints as ckpt
from trainer.distributed import DistInfo, all_reduce_max, all_reduce_mean, barrier, init_distributed, wrap_ddp
from trainer.ema import EMA
from trainer.logging import RunLogger
from trainer.validate import generation_error, save_motion_samples, validation_loss

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TrainingError(RuntimeError):
    """The run cannot start or cannot go on; the message says why and what to do."""


# From-scratch peak learning rates: smaller transformers take larger steps (the
# tiny preset learns the synthetic set's audio-driven motion in minutes at 1e-3,
# and barely moves in the same time at 1e-4).
SCRATCH_LR = {"paper": 1e-4, "small": 3e-4, "tiny": 1e-3}


@dataclass
class TrainSettings:
    """Every option of ``floatctl train``; None / -1 mean "pick a default for the device" (printed)."""

    data_root: str = "data/shards"
    out: str | None = None  # run folder; default runs/float-<preset>
    preset: str | None = None  # default: paper on CUDA, tiny on CPU
    overrides: dict = field(default_factory=dict)  # FloatConfig fields over the preset (--set key=value)
    steps: int = 10000
    batch_size: int = 8  # per rank and micro-batch (the paper: 8)
    grad_accum: int = 1
    lr: float | None = None  # default: SCRATCH_LR of the preset, 1e-5 (the paper's) with --init
    weight_decay: float = 0.0
    warmup: int = -1  # -1: 5% of the steps, at most 1000
    schedule: str = "constant"  # after warmup: constant or cosine (down to 10% of lr)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    precision: str = "auto"  # auto: bf16 on CUDA when supported (else fp16 + scaler), fp32 on CPU
    compile: bool = False
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = -1  # -1: 0 on CPU (cores go to the model), up to 4 per GPU
    seed: int = 0
    log_step: int = 100
    val_step: int = 1000
    sample_step: int = 5000
    save_step: int = 1000
    keep: int = 3
    resume: str | None = None  # None, "auto" or a checkpoint path
    init: str | None = None  # official float.pth to fine-tune
    normalize_motion: str = "auto"  # auto: standardise latents of a random-weight motion encoder; on; off
    max_nonfinite: int = 20  # this many non-finite losses in a row stop the run
    windows_per_clip: int = 4
    shuffle_buffer: int = 64
    val_clips: int = 32
    val_windows_per_clip: int = 2
    val_batch_size: int = 16
    val_nfe: int = 10
    sample_count: int = 4
    progress: bool | None = None  # tqdm bar; None: when stderr is a terminal
    tensorboard: bool = True


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_checkpoint: Path | None
    stopped_by: str | None  # signal name when SIGTERM/SIGINT ended the run early
    nonfinite_steps: int
    last_val: dict
    model: nn.Module | None = None  # the trained (raw) model of this rank
    ema_model: nn.Module | None = None


# ---------------------------------------------------------------- defaults and small helpers
def default_preset(device: torch.device) -> str:
    return "paper" if device.type == "cuda" else "tiny"


def default_num_workers(device: torch.device, local_world: int) -> int:
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // max(1, local_world) - 1))


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if precision not in PRECISIONS:
        raise TrainingError(f"--precision {precision!r}: choose one of {PRECISIONS}")
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup, then flat or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up as (1 + n) / (10 + n): early steps track the weights closely, so short runs
    and fresh starts validate meaningful weights instead of the initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def parse_override(text: str) -> tuple[str, object]:
    """"depth=4" -> ("depth", 4): the value is parsed as JSON when it can be, else kept as a string."""
    if "=" not in text:
        raise TrainingError(f"--set {text!r}: expected KEY=VALUE, e.g. --set depth=4")
    key, value = text.split("=", 1)
    known = {f.name for f in dataclasses.fields(FloatConfig)}
    if key not in known:
        raise TrainingError(f"--set {key}: not a model setting; known: {sorted(known)}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


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


# ---------------------------------------------------------------- setup pieces
def _read_shard_manifest(data_root: str) -> dict:
    folder = Path(data_root)
    if not folder.exists():
        raise TrainingError(f"shard folder {folder} does not exist: write shards with `floatctl shards` "
                            f"or pass --data-root")
    if folder.is_dir() and not any(folder.iterdir()):
        raise TrainingError(f"shard folder {folder} is empty: write shards with `floatctl shards`")
    try:
        return read_manifest(folder)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def _load_official(path: str) -> dict[str, Tensor]:
    try:
        return load_official_state_dict(path)
    except ValueError as e:
        raise TrainingError(f"--init: {e}") from None


def _official_motion_fingerprint(state: dict[str, Tensor], size: int, path: str) -> str | None:
    """Fingerprint of the motion auto-encoder inside an official checkpoint, computed as the shard
    writer computes it (so it compares with the manifest's); None when the file has none."""
    prefix = "motion_autoencoder."
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        return None
    try:
        encoder = MotionAutoEncoder(size)
        encoder.load_state_dict(own, strict=True)
    except (RuntimeError, ValueError) as e:
        raise TrainingError(f"--init {path}: its motion auto-encoder does not fit the shards' {size}px encoder, so "
                            f"the shards were encoded with another one ({str(e).splitlines()[0]})") from None
    return state_fingerprint(encoder)


def _wants_motion_normalization(mode: str, manifest: dict) -> bool:
    """Random-encoder latents have an arbitrary tiny scale: standardise them. Real ones stay raw (official)."""
    if mode not in ("auto", "on", "off"):
        raise TrainingError(f"--normalize-motion must be auto, on or off, got {mode!r}")
    if mode == "auto":
        return bool(manifest.get("encoders", {}).get("motion", {}).get("random", False))
    return mode == "on"


def _init_from_official(model: FloatMotionModel, state: dict[str, Tensor], path: str, log: RunLogger) -> None:
    """Load fmt.* and audio_encoder.audio_projection.* of an official float.pth; report every key problem."""
    report = load_parts(state, {"fmt.": model.fmt,
                                "audio_encoder.audio_projection.": model.audio_encoder.audio_projection})
    log.info(f"--init {path}:\n{report}")
    if not report.ok:
        raise TrainingError(f"--init {path}: the weights do not fit this model config (missing keys or other "
                            f"shapes, listed above); pick the matching --preset / --set")


def _check_resume_state(state: dict, path: Path, cfg: FloatConfig, manifest: dict) -> None:
    try:
        saved = FloatConfig.from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise TrainingError(f"checkpoint {path}: unusable config ({e})") from None
    diffs = saved.differences(cfg)
    if diffs:
        listed = "\n  - ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diffs.items())
        raise TrainingError(f"checkpoint {path} was trained with another model config:\n  - {listed}\n"
                            f"(pass the checkpoint's --preset / --set, or start a new --out)")
    saved_fp = state.get("manifest_fingerprint")
    if saved_fp and saved_fp != manifest.get("fingerprint"):
        raise TrainingError(f"checkpoint {path} was trained on shards written with other settings "
                            f"(manifest fingerprint {saved_fp[:12]} vs {str(manifest.get('fingerprint'))[:12]} "
                            f"of the current shards): resume on the same shards or start a new --out")


def _gather_stream_states(loader_state: dict, info: DistInfo) -> list[dict]:
    if not info.is_distributed:
        return [loader_state]
    states: list = [None] * info.world_size
    dist.all_gather_object(states, loader_state)
    return states


def _write_run_config(run_dir: Path, content: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(content, indent=2, sort_keys=True, default=str).encode()
    ckpt.atomic_write_bytes(run_dir / "config.json", lambda f: f.write(text))


def _check_shard_files(urls: list[str]) -> None:
    """Open each local shard and read its first member header: a file that is not a tar, or a tar that
    holds no shard member, stops the run now instead of at some later step."""
    for url in urls:
        path = Path(url)
        if not path.is_file():
            continue  # pipe:/URL shards are checked when they are read
        try:
            with tarfile.open(path, mode="r|*") as tar:
                first = tar.next()
        except (tarfile.TarError, OSError) as e:
            raise TrainingError(f"{path}: not a shard (not a readable tar: {e})") from None
        suffix = first.name.split("/")[-1].split(".", 1)[-1] if first is not None else ""
        if suffix not in KNOWN_MEMBERS:
            raise TrainingError(f"{path}: not a FLOAT shard (first member {first.name if first else 'none'!r}; "
                                f"expected *.{' / *.'.join(KNOWN_MEMBERS)})")


# ---------------------------------------------------------------- setup
@dataclass
class _Run:
    """Everything the loop works with, built once by ``_prepare``."""

    s: TrainSettings
    info: DistInfo
    cfg: FloatConfig
    manifest: dict
    run_dir: Path
    log: RunLogger
    model: nn.Module  # the raw model: checkpoints, EMA, clipping
    train_model: nn.Module  # DDP / compiled wrapper used for the forward pass
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loader: object
    val_batches: list[dict]
    schedule: dict  # the resolved lr and warmup, kept by a resumed run
    start_step: int = 0
    nonfinite_total: int = 0

    @property
    def device(self) -> torch.device:
        return self.info.device

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def _prepare(s: TrainSettings, info: DistInfo) -> _Run:
    if s.schedule not in SCHEDULES:
        raise TrainingError(f"--schedule {s.schedule!r}: choose one of {SCHEDULES}")
    if s.steps < 1 or s.batch_size < 1 or s.grad_accum < 1:
        raise TrainingError("--steps, --batch-size and --grad-accum must be at least 1")
    device = info.device
    preset = s.preset or default_preset(device)
    run_dir = Path(s.out or f"runs/float-{preset}")

    # Data description and config: the audio width comes from the shards.
    manifest = _read_shard_manifest(s.data_root)
    _, audio_dim = manifest_dims(manifest)
    try:
        cfg = get_preset(preset, **{"audio_input_dim": audio_dim, **s.overrides})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"model config: {e}") from None
    warn = print if info.is_main else (lambda message: None)
    try:
        resumed = ckpt.resolve_resume(s.resume, run_dir / "checkpoints", warn)
    except ckpt.CheckpointError as e:
        raise TrainingError(str(e)) from None
    if s.resume == "auto" and resumed is None:
        warn(f"--resume auto: no usable checkpoint in {run_dir / 'checkpoints'}, starting from step 0")
    expected_motion_fp, official = None, None
    if resumed is not None:
        _check_resume_state(resumed[1], resumed[0], cfg, manifest)
        expected_motion_fp = resumed[1].get("motion_fingerprint")
    elif s.init:
        # Fine-tuning needs latents from the checkpoint's own motion encoder.
        official = _load_official(s.init)
        expected_motion_fp = _official_motion_fingerprint(official, int(manifest.get("input_size", 0)), s.init)
        if expected_motion_fp is None:
            warn(f"warning: --init {s.init} holds no motion_autoencoder.* weights: cannot check that the shards "
                 f"were encoded with its motion encoder")
    try:
        check_compatible(manifest, cfg, expected_motion_fp)
    except ValueError as e:
        raise TrainingError(f"{Path(s.data_root) / 'manifest.json'}: {e}") from None
    try:
        train_urls = shard_urls(s.data_root, "train", manifest)
    except (OSError, ValueError) as e:
        raise TrainingError(str(e)) from None
    _check_shard_files(train_urls)

    # Numerics.
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype, use_scaler = resolve_precision(s.precision, device)

    # Model, EMA, optimizer, schedule.
    torch.manual_seed(s.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = FloatMotionModel(cfg).to(device)
    start_step = int(resumed[1]["step"]) if resumed else 0
    log = RunLogger(run_dir, enabled=info.is_main, total_steps=s.steps, start_step=start_step,
                    tensorboard=s.tensorboard, progress=s.progress)
    try:
        if official is not None:
            _init_from_official(model, official, s.init, log)
            del official
        elif resumed is None and _wants_motion_normalization(s.normalize_motion, manifest):
            mean, std, frames = motion_statistics(train_urls)
            model.set_motion_stats(torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device))
            log.info(f"motion latents standardised with statistics of {frames} train frames "
                     f"(mean |mean| {abs(mean).mean():.3g}, mean std {std.mean():.3g}); --normalize-motion off to keep raw")
        # A resumed run keeps its learning rate and warmup unless they are given again explicitly.
        saved = resumed[1].get("schedule", {}) if resumed else {}
        lr = s.lr if s.lr is not None else saved.get("lr", 1e-5 if s.init else SCRATCH_LR.get(cfg.name, 1e-4))
        warmup = s.warmup if s.warmup >= 0 else saved.get("warmup", min(1000, s.steps // 20))
        ema = EMA(model, s.ema_decay)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, warmup, s.steps, s.schedule))
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        nonfinite_total, stream_state = 0, None
        if resumed is not None:
            path, state = resumed
            try:
                model.load_state_dict(state["model"])
                ema.load_state_dict(state["ema"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state["scaler"])
                ckpt.restore_rng_state(state["rng"])
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise TrainingError(f"checkpoint {path}: cannot restore the training state ({e})") from None
            # The schedule as configured now (the same numbers when nothing changed).
            scheduler.base_lrs = [lr for _ in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(start_step, warmup, s.steps, s.schedule)
            nonfinite_total = int(state.get("counters", {}).get("nonfinite", 0))
            streams = state.get("stream", {}).get("ranks") or []
            if len(streams) == info.world_size:
                stream_state = streams[info.rank]
            else:
                log.info(f"warning: {path} was written by {len(streams)} rank(s), this run has {info.world_size}: "
                         f"the data stream starts afresh (training goes on, but not bit-exactly)")
            log.info(f"resumed from {path} at step {start_step}")
        train_model = wrap_ddp(model, info)
        if s.compile:
            train_model = torch.compile(train_model)

        # Data.
        num_workers = s.num_workers if s.num_workers >= 0 else default_num_workers(
            device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        spec = WindowSpec.from_config(cfg, s.windows_per_clip)
        loader = make_loader(train_urls, spec, s.batch_size, num_workers, s.seed, info.rank, info.world_size,
                             pin_memory=device.type == "cuda", shuffle_buffer=s.shuffle_buffer,
                             motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)
        if stream_state is not None:
            # Not strict: other workers/settings restart the stream with a new salt (logged by the loader).
            loader.load_state_dict(stream_state, strict=False)
        val_batches: list[dict] = []
        if info.is_main and (s.val_step > 0 or s.sample_step > 0):
            if manifest["splits"].get("val", {}).get("shards"):
                val = ValWindows(shard_urls(s.data_root, "val", manifest), spec, s.val_windows_per_clip,
                                 max_clips=s.val_clips, motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)
                val_batches = [to_device(b, device) for b in val.batches(s.val_batch_size)]
            if not val_batches:
                log.info("warning: no val windows (empty val split): validation and samples are skipped")

        resolved = {"preset": preset, "device": str(device), "world_size": info.world_size, "lr": lr,
                    "warmup": warmup, "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                    "grad_scaler": use_scaler, "num_workers": num_workers,
                    "global_batch": s.batch_size * s.grad_accum * info.world_size,
                    "parameters": count_parameters(model), "train_shards": len(train_urls),
                    "val_windows": sum(b["motion"].shape[0] for b in val_batches)}
        log.info("floatctl train: " + ", ".join(f"{k} {v}" for k, v in resolved.items()))
        log.info(f"model {cfg.name}: dim_h {cfg.dim_h}, depth {cfg.depth}, heads {cfg.num_heads}, dim_w {cfg.dim_w}, "
                 f"audio_input_dim {cfg.audio_input_dim}; AdamW lr {lr:g}, {s.schedule} after {warmup} warmup "
                 f"steps, grad clip {s.grad_clip}, EMA decay {s.ema_decay}; run folder {run_dir}")
        if info.is_main:
            _write_run_config(run_dir, {"settings": dataclasses.asdict(s), "resolved": resolved,
                                        "config": cfg.to_dict(), "manifest_fingerprint": manifest.get("fingerprint")})
    except BaseException:
        log.close()
        raise
    return _Run(s, info, cfg, manifest, run_dir, log, model, train_model, ema, optimizer, scheduler, scaler,
                amp_dtype, loader, val_batches, {"lr": lr, "warmup": warmup}, start_step, nonfinite_total)


# ---------------------------------------------------------------- checkpoints and evaluation
def _checkpoint_state(run: _Run, step: int, stream: dict | None = None) -> dict:
    """The full training state; gathering the stream positions is collective, so every rank calls this."""
    streams = _gather_stream_states(stream or run.loader.state_dict(), run.info)
    return {
        "version": ckpt.CHECKPOINT_VERSION, "step": step,
        "model": run.model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
        "rng": ckpt.capture_rng_state(),
        "stream": {"ranks": streams},
        "config": run.cfg.to_dict(), "settings": dataclasses.asdict(run.s), "schedule": dict(run.schedule),
        "manifest_fingerprint": run.manifest.get("fingerprint"),
        "motion_fingerprint": (run.manifest.get("encoders", {}).get("motion") or {}).get("fingerprint"),
        "counters": {"nonfinite": run.nonfinite_total}, "world_size": run.info.world_size,
    }


def _save(run: _Run, step: int, final: bool = False, stream: dict | None = None) -> Path | None:
    state = _checkpoint_state(run, step, stream)
    path = None
    if run.info.is_main:
        ckpt_dir = run.run_dir / "checkpoints"
        path = ckpt.save_final(ckpt_dir, state) if final else ckpt.save_checkpoint(ckpt_dir, state, step, run.s.keep)
        run.log.info(f"saved {path}")
    barrier(run.info)
    return path


def _evaluate(run: _Run, step: int) -> dict:
    metrics = validation_loss(run.ema.shadow, run.val_batches, seed=run.s.seed, autocast=run.autocast)
    metrics.update(generation_error(run.ema.shadow, run.val_batches[:2], nfe=run.s.val_nfe, seed=run.s.seed,
                                    autocast=run.autocast))
    run.log.log(step, metrics, split="val")
    return metrics


# ---------------------------------------------------------------- one optimizer step
LOSS_KEYS = ("total", "current", "preceding", "velocity")


def _train_step(run: _Run, step: int, batches, loss_fn, timing: dict) -> tuple[Tensor, Tensor]:
    """Forward/backward over grad_accum micro-batches, then unscale and clip; returns (losses (4,), grad norm).

    The optimizer is not stepped here: the caller decides after agreeing with the other ranks."""
    s, info = run.s, run.info
    run.optimizer.zero_grad(set_to_none=True)
    losses = torch.zeros(len(LOSS_KEYS), device=run.device)
    for micro in range(s.grad_accum):
        waited = time.perf_counter()
        batch = to_device(next(batches), run.device)
        timing["wait"] += time.perf_counter() - waited
        generator = torch.Generator(device=run.device).manual_seed(step_seed(s.seed, info.rank, step, micro))
        last = micro == s.grad_accum - 1
        sync = run.train_model.no_sync() if info.is_distributed and not last else contextlib.nullcontext()
        with sync:
            with run.autocast():
                out = loss_fn(run.train_model, batch, LossWeights(), generator=generator)
            run.scaler.scale(out["total"] / s.grad_accum).backward()
        losses += torch.stack([out[k].detach().float() for k in LOSS_KEYS]) / s.grad_accum
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.grad_clip)
    return losses, grad_norm


# ---------------------------------------------------------------- the run
def train(settings: TrainSettings, info: DistInfo | None = None,
          loss_fn: Callable[..., dict] = rectified_flow_loss,
          samples_hook: Callable[[Path], None] | None = None) -> TrainResult:
    """Train to ``settings.steps`` optimizer steps (or until SIGTERM/SIGINT) and return where it ended.

    ``loss_fn`` has rectified_flow_loss's signature (tests inject failures through it);
    ``samples_hook`` gets each saved motion-sample file (default: render it to video)."""
    s = settings
    if s.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede CUDA work
    info = info or init_distributed(s.device)
    run = _prepare(s, info)
    log, use_scaler = run.log, run.scaler.is_enabled()
    if samples_hook is None:
        from trainer.sample_render import SampleRenderer

        samples_hook = SampleRenderer(run.manifest, s.data_root, run.cfg.dim_w, log.info)
    global_batch = s.batch_size * s.grad_accum * info.world_size
    step, last_val, consecutive_bad = run.start_step, {}, 0
    final_path, stopped_by = None, None
    window = {"losses": torch.zeros(len(LOSS_KEYS), device=run.device), "good": 0, "steps": 0, "grad": 0.0,
              "wait": 0.0, "t0": time.perf_counter()}
    stop = StopFlag()
    stop.install()
    try:
        batches = iter(run.loader)
        if step == 0 and run.val_batches and s.val_step > 0:
            last_val = _evaluate(run, 0)  # the baseline the curve falls from
        run.train_model.train()
        while step < s.steps:
            stream_before = run.loader.state_dict()
            try:
                losses, grad_norm = _train_step(run, step, batches, loss_fn, window)
            except Exception:
                if stop.signum is None:
                    raise
                # Ctrl-C reaches the DataLoader workers too, and they exit on it: the step cannot finish,
                # so save the last whole one (weights untouched, stream position from before this step).
                stopped_by = signal.Signals(stop.signum).name
                _save(run, step, stream=stream_before)
                log.info(f"stopped by {stopped_by} at step {step}; continue with --resume auto")
                break
            # One host sync per step; the flags are max-reduced so every rank takes the same branch.
            flags = torch.stack([(~torch.isfinite(losses[0])).float(),
                                 (~torch.isfinite(grad_norm)).float() * (0.0 if use_scaler else 1.0),
                                 torch.tensor(float(stop.signum is not None), device=run.device)])
            loss_bad, grad_bad, stop_now = (bool(v) for v in all_reduce_max(flags, info).tolist())
            if loss_bad or grad_bad:
                # Skip: the weights, optimizer moments and EMA stay as they were.
                run.optimizer.zero_grad(set_to_none=True)
                if use_scaler:
                    run.scaler.update()  # an fp16 overflow shrinks the loss scale
                run.nonfinite_total += 1
                consecutive_bad += 1
                if consecutive_bad >= s.max_nonfinite:
                    good = ckpt.resume_candidates(run.run_dir / "checkpoints")
                    raise TrainingError(
                        f"{consecutive_bad} non-finite losses in a row (up to step {step + 1}): the run stopped "
                        f"without saving; the last good checkpoint is {good[0] if good else 'none (none saved yet)'}. "
                        f"Try a lower --lr, --precision fp32, or check the shards for bad values.")
            else:
                consecutive_bad = 0
                run.scaler.step(run.optimizer)
                run.scaler.update()
                run.ema.update(run.model, ema_decay_at(step, s.ema_decay))
                window["losses"] += losses
                window["good"] += 1
                window["grad"] += float(grad_norm)
            run.scheduler.step()
            step += 1
            window["steps"] += 1
            log.advance(step, None if loss_bad else {"loss": float(losses[0])})

            if s.log_step > 0 and (step % s.log_step == 0 or step == s.steps):
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                mean = all_reduce_mean(window["losses"] / max(1, window["good"]), info).tolist()
                log.log(step, {**dict(zip(LOSS_KEYS, mean)),
                               "lr": run.optimizer.param_groups[0]["lr"],
                               "grad_norm": window["grad"] / max(1, window["good"]),
                               "samples_per_s": window["steps"] * global_batch / elapsed,
                               "data_wait_fraction": window["wait"] / elapsed,
                               "nonfinite_steps": run.nonfinite_total, "skipped_clips": run.loader.skipped})
                window.update(losses=torch.zeros_like(window["losses"]), good=0, steps=0, grad=0.0, wait=0.0,
                              t0=time.perf_counter())
            paused = time.perf_counter()  # validation, samples and saving are not training time
            if info.is_main and run.val_batches and s.val_step > 0 and step % s.val_step == 0:
                last_val = _evaluate(run, step)
            if info.is_main and run.val_batches and s.sample_step > 0 and step % s.sample_step == 0:
                path = save_motion_samples(run.ema.shadow, run.val_batches[0],
                                           run.run_dir / "samples" / f"step_{step:08d}.pt", step, s.sample_count,
                                           nfe=s.val_nfe, seed=s.seed)
                samples_hook(path)
            if stop_now:
                stopped_by = signal.Signals(stop.signum).name if stop.signum else "a signal on another rank"
                _save(run, step)
                log.info(f"stopped by {stopped_by} at step {step}; continue with --resume auto")
                break
            if s.save_step > 0 and step % s.save_step == 0 and step < s.steps:
                _save(run, step)
            window["t0"] += time.perf_counter() - paused
        if stopped_by is None:
            final_path = _save(run, step, final=True)
            if info.is_main and run.val_batches and s.val_step > 0 and step % s.val_step != 0:
                last_val = _evaluate(run, step)
    finally:
        stop.restore()
        log.close()
    return TrainResult(run.run_dir, step, final_path, stopped_by, run.nonfinite_total, last_val, run.model,
                       run.ema.shadow)
