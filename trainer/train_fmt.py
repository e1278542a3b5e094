"""Stage 2: the Flow Matching Transformer (+ audio projection) trained on latent shards.

``train(settings)`` reads the shards' manifest, builds the model (optionally from
an official ``float.pth``), and hands a ``Run`` and this stage's ``FMTStage`` to
the shared loop (trainer/loop.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from float.checkpoint import CheckpointError, load_official_state_dict, load_parts, official_motion_fingerprint
from float.config import FloatConfig, get_preset
from float.loss import LossWeights, rectified_flow_loss
from float.model import FloatMotionModel, count_parameters
from shards.loader import make_loader
from shards.mix import ShardSets
from shards.sources import check_compatible, manifest_dims, manifest_location, shard_urls
from shards.validation import ValWindows
from shards.stats import motion_statistics
from shards.tar import ShardError, check_local_shards
from shards.windows import WindowSpec
from trainer import run as setup
from trainer.distributed import DistInfo, init_distributed, wrap_ddp
from trainer.ema import EMA
from trainer.logging import RunLogger
from trainer.loop import TrainResult, run_loop
from trainer.errors import TrainingError
from trainer.run import (FMT_KIND, MOTION_KIND, Run, check_local_folders, check_same_shards, read_shard_sets,
                         to_device)
from trainer.schedule import resolve_schedule
from trainer.settings import TrainSettings
from trainer.validate import LOSS_KEYS, generation_error, save_motion_samples, validation_loss


# ---------------------------------------------------------------- data and official weights
def wants_motion_normalization(mode: str, manifest: dict) -> bool:
    """Latents of the official float.pth encoder stay raw, as the official model was trained on them.
    Any other encoder's latents (seeded random weights, or a stage-1 auto-encoder trained here) have a
    scale nothing ties to the flow's unit noise: "auto" standardises them."""
    if mode not in ("auto", "on", "off"):
        raise TrainingError(f"--normalize-motion must be auto, on or off, got {mode!r}")
    if mode == "auto":
        motion = manifest.get("encoders", {}).get("motion", {})
        return bool(motion.get("random", False)) or motion.get("kind") == MOTION_KIND
    return mode == "on"


def resolve_window_cut(mode: str, device: torch.device) -> str:
    """--window-cut: "host" or "device" ("auto": device on CUDA, where the copy to the GPU is what it saves)."""
    if mode not in ("auto", "host", "device"):
        raise TrainingError(f"--window-cut must be auto, host or device, got {mode!r}")
    if mode == "auto":
        return "device" if device.type == "cuda" else "host"
    return mode


def init_from_official(model: FloatMotionModel, state: dict[str, Tensor], path: str, log: RunLogger) -> None:
    """Load fmt.* and audio_encoder.audio_projection.* of an official float.pth; report every key problem."""
    report = load_parts(state, {"fmt.": model.fmt,
                                "audio_encoder.audio_projection.": model.audio_encoder.audio_projection})
    log.info(f"--init {path}:\n{report}")
    if not report.ok:
        raise TrainingError(f"--init {path}: the weights do not fit this model config (missing keys or other "
                            f"shapes, listed above); pick the matching --preset / --set")


# ---------------------------------------------------------------- the stage
class FMTStage:
    """What the shared loop needs to know about the FMT: its loss, validation and samples."""

    loss_keys = LOSS_KEYS
    score_key, score_sign = "val_total", 1.0  # --early-stop watches the validation flow loss

    def __init__(self, run: Run, manifest: dict, val_batches: list[dict], samples_hook: Callable[[Path], None],
                 loss_fn: Callable[..., dict]):
        self.run, self.manifest, self.val_batches = run, manifest, val_batches
        self.samples_hook, self.loss_fn = samples_hook, loss_fn
        self.has_val = bool(val_batches)
        self.weights = parse_loss_weights(run.s.loss_weights)

    def loss(self, train_model, batch: dict, generator: torch.Generator, step: int) -> dict:
        return self.loss_fn(train_model, batch, self.weights, generator=generator)

    def after_step(self, step: int, skip: Tensor | None = None) -> dict:
        return {}

    def evaluate(self, step: int) -> dict:
        run = self.run
        metrics = validation_loss(run.ema.shadow, self.val_batches, seed=run.s.seed, autocast=run.autocast)
        metrics.update(generation_error(run.ema.shadow, self.val_batches[:2], nfe=run.s.val_nfe, seed=run.s.seed,
                                        autocast=run.autocast))
        run.log.log(step, metrics, split="val")
        return metrics

    def save_samples(self, step: int) -> None:
        run = self.run
        path = save_motion_samples(run.ema.shadow, self.val_batches[0],
                                   run.run_dir / "samples" / f"sample_step_{step}.pt", step, run.s.sample_count,
                                   nfe=run.s.val_nfe, seed=run.s.seed)
        self.samples_hook(path)

    def checkpoint_extra(self) -> dict:
        return {"manifest_fingerprint": self.manifest.get("fingerprint"),
                "motion_fingerprint": (self.manifest.get("encoders", {}).get("motion") or {}).get("fingerprint")}


def parse_loss_weights(text: str) -> LossWeights:
    """"current,preceding,velocity" -> LossWeights; 0 switches a term off."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not v >= 0 for v in values) or not any(values):
        raise TrainingError(f"--loss-weights {text!r}: give three numbers >= 0, current,preceding,velocity "
                            f"(e.g. 1,1,1; 0 switches a term off; not all 0)")
    return LossWeights(*values)


def _model_config(s: TrainSettings, preset: str, manifest: dict) -> FloatConfig:
    """The preset with the audio width of the shards and the user's --set overrides."""
    _, audio_dim = manifest_dims(manifest)
    try:
        return get_preset(preset, **{"audio_input_dim": audio_dim, **s.overrides})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"model config: {e}") from None


INIT_TAKES = "--init takes the official float.pth (to resume a run of floatctl train, use --resume)"


def _expected_motion_fingerprint(s: TrainSettings, resumed, manifest: dict, warn) -> tuple[str | None, dict | None]:
    """(fingerprint the shards' motion encoder must have, the official state dict when --init is given)."""
    if resumed is not None:
        return resumed[1].get("motion_fingerprint"), None
    if not s.init:
        return None, None
    # Fine-tuning needs latents from the checkpoint's own motion encoder.
    try:
        official = load_official_state_dict(s.init, "--init ", INIT_TAKES)
        expected = official_motion_fingerprint(official, int(manifest.get("input_size", 0)), s.init)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    if expected is None:
        warn(f"warning: --init {s.init} holds no motion_autoencoder.* weights: cannot check that the shards "
             f"were encoded with its motion encoder")
    return expected, official


def _val_batches(s: TrainSettings, sets: ShardSets, spec: WindowSpec, cfg: FloatConfig, info: DistInfo,
                 log: RunLogger) -> list[dict]:
    """Val windows of the first --data-root (mixed sets validate on the first one)."""
    manifest = sets.manifests[0]
    if not info.is_main or (s.val_step <= 0 and s.sample_step <= 0):
        return []
    batches: list[dict] = []
    if manifest["splits"].get("val", {}).get("shards"):
        val = ValWindows(shard_urls(sets.primary, "val", manifest), spec, s.val_windows_per_clip,
                         max_clips=s.val_clips, motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim)
        batches = [to_device(b, info.device) for b in val.batches(s.val_batch_size)]
    if not batches:
        log.info("warning: no val windows (empty val split): validation and samples are skipped")
    return batches


def prepare(s: TrainSettings, info: DistInfo, loss_fn: Callable[..., dict] = rectified_flow_loss,
            samples_hook: Callable[[Path], None] | None = None) -> tuple[Run, FMTStage]:
    setup.check_loop_options(s)
    parse_loss_weights(s.loss_weights)  # a bad value stops the run before anything is read
    device = info.device
    window_cut = resolve_window_cut(s.window_cut, device)
    preset = s.preset or setup.default_preset(device)
    run_dir = Path(s.out or f"runs/float-{preset}")
    setup.check_out_writable(run_dir, info)
    sets = read_shard_sets(s.data_root)
    check_local_folders(sets, s.accept_damaged_shards, print if info.is_main else (lambda message: None))
    manifest = sets.manifest()
    cfg = _model_config(s, preset, manifest)
    resumed = setup.resume_point(s.resume, run_dir / "checkpoints", FMT_KIND, info)
    if resumed is not None:
        setup.check_same_config(resumed[1], resumed[0], cfg)
        check_same_shards(resumed[1], resumed[0], manifest)
    warn = print if info.is_main else (lambda message: None)
    expected_motion_fp, official = _expected_motion_fingerprint(s, resumed, manifest, warn)
    try:
        check_compatible(manifest, cfg, expected_motion_fp)
        train_urls, mix = sets.loader_kwargs("train")
    except (OSError, ValueError) as e:
        raise TrainingError(f"{manifest_location(sets.primary)}: {e}") from None
    try:
        check_local_shards(train_urls)
    except ShardError as e:
        raise TrainingError(str(e)) from None
    amp_dtype, use_scaler = setup.configure_numerics(s, device)

    torch.manual_seed(s.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = FloatMotionModel(cfg).to(device)
    start_step = int(resumed[1]["step"]) if resumed else 0
    log = setup.open_logger(s, run_dir, info, start_step)
    try:
        if official is not None:
            init_from_official(model, official, s.init, log)
            del official
        elif resumed is None and wants_motion_normalization(s.normalize_motion, manifest):
            mean, std, frames = motion_statistics(train_urls)
            model.set_motion_stats(torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device))
            log.info(f"motion latents standardised with statistics of {frames} train frames "
                     f"(mean |mean| {abs(mean).mean():.3g}, mean std {std.mean():.3g}); --normalize-motion off to keep raw")
        schedule = resolve_schedule(s.lr, s.warmup, resumed[1].get("schedule", {}) if resumed else {}, cfg.name,
                                    s.steps, fine_tune=bool(s.init), lr_factor=setup.lr_factor(s, info))
        ema = EMA(model, s.ema_decay)
        optimizer = setup.make_optimizer(model.parameters(), schedule["lr"], s.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        counters, stream_state = setup.saved_counters(resumed), None
        if resumed is not None:
            path, state = resumed
            setup.restore_training_state(path, state, model, ema, optimizer, scaler)
            stream_state = setup.saved_stream_state(state, path, info, log)
            log.info(f"resumed from {path} at step {start_step}")
        train_model = wrap_ddp(model, info)
        if s.compile:
            train_model = torch.compile(train_model)

        num_workers = setup.worker_count(s, device)
        spec = WindowSpec.from_config(cfg, s.windows_per_clip)
        loader = make_loader(train_urls, spec, s.batch_size, num_workers, s.seed, info.rank, info.world_size,
                             pin_memory=device.type == "cuda", cut=window_cut, shuffle_buffer=s.shuffle_buffer,
                             motion_dim=cfg.dim_w, audio_dim=cfg.audio_input_dim, **mix)
        if stream_state is not None:
            # Not strict: other workers/settings restart the stream with a new salt (logged by the loader).
            loader.load_state_dict(stream_state, strict=False)
        val_batches = _val_batches(s, sets, spec, cfg, info, log)

        resolved = {"preset": preset, "device": str(device), "world_size": info.world_size, "lr": schedule["lr"],
                    "lr_scaling": setup.describe_lr_scaling(s, info, resumed), "warmup": schedule["warmup"],
                    "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                    "grad_scaler": use_scaler, "num_workers": num_workers, "window_cut": window_cut,
                    "global_batch": s.batch_size * s.grad_accum * info.world_size,
                    "parameters": count_parameters(model), "train_shards": len(train_urls),
                    "data_mix": {r.location: r.weight for r in sets.roots} if mix else None,
                    "val_windows": sum(b["motion"].shape[0] for b in val_batches)}
        log.info("floatctl train: " + ", ".join(f"{k} {v}" for k, v in resolved.items()))
        log.info(f"model {cfg.name}: dim_h {cfg.dim_h}, depth {cfg.depth}, heads {cfg.num_heads}, dim_w {cfg.dim_w}, "
                 f"audio_input_dim {cfg.audio_input_dim}; AdamW lr {schedule['lr']:g}, {s.schedule} after "
                 f"{schedule['warmup']} warmup steps, grad clip {s.grad_clip}, EMA decay {s.ema_decay}; "
                 f"run folder {run_dir}")
        if info.is_main:
            setup.write_run_config(run_dir, {"settings": dataclasses.asdict(s), "resolved": resolved,
                                             "config": cfg.to_dict(),
                                             "manifest_fingerprint": manifest.get("fingerprint")})
        if samples_hook is None:
            from trainer.media_log import MediaLog
            from trainer.sample.step_renderer import SampleRenderer

            samples_hook = SampleRenderer(sets.manifests[0], sets.primary, cfg.dim_w, log.info, MediaLog.of(log))
    except BaseException:
        log.close()
        raise
    run = Run(s, info, cfg, FMT_KIND, run_dir, log, model, train_model, ema, optimizer, scaler, amp_dtype,
              loader, schedule, start_step, counters)
    return run, FMTStage(run, manifest, val_batches, samples_hook, loss_fn)


def train(settings: TrainSettings, info: DistInfo | None = None,
          loss_fn: Callable[..., dict] = rectified_flow_loss,
          samples_hook: Callable[[Path], None] | None = None) -> TrainResult:
    """Train the FMT to ``settings.steps`` (or until SIGTERM/SIGINT) and return where it ended.

    ``loss_fn`` has rectified_flow_loss's signature (tests inject failures through it);
    ``samples_hook`` gets each saved motion-sample file (default: render it to video)."""
    if settings.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede CUDA work
    info = info or init_distributed(settings.device)
    run, stage = prepare(settings, info, loss_fn, samples_hook)
    return run_loop(run, stage)
