"""The training loop both stages share, DiT train.py style: a flat loop of optimizer steps.

``run_loop(run, stage)`` trains ``run.model`` to ``settings.steps`` with logging,
validation, samples and checkpoints at fixed step intervals. What differs between
the stages lives in the ``stage`` object (``trainer/train_fmt.py``,
``trainer/train_motion.py``):

- ``loss_keys``: names of the loss terms, ``"total"`` first;
- ``loss(train_model, batch, generator, step) -> {key: tensor}``;
- ``after_step(step, skip) -> {name: tensor}``: work after the model's optimizer step
  (the stage-1 discriminator's update), empty for the FMT; ``skip`` is the step's device-side
  non-finite flag (1.0: the model's update was skipped), to be honoured without a host read;
- ``evaluate(step) -> metrics``, ``save_samples(step)``, ``has_val``;
- ``checkpoint_extra() -> dict`` and the ``"kind"`` recorded in checkpoints;
- ``score_key``, ``score_sign``: the validation metric early stopping watches (sign +1: lower is better).

Exact resume. Every random draw of a step comes from a generator seeded by
(seed, rank, step, micro-batch), so a step is a pure function of the weights, the
optimizer state and the batch; the learning rate is a function of the step
(trainer/schedule.py); the data loader restores its stream position from the
checkpoint. A run killed at any point and resumed from its last checkpoint
therefore retraces the same steps: on CPU with ``deterministic=True`` the final
weights are bitwise equal to an uninterrupted run's.

Run layout: ``runs/NAME/{config.json, checkpoints/, samples/, metrics.jsonl, tb/}``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from shards.errors import StorageError
from trainer import checkpoints as ckpt
from trainer.device_feed import DeviceFeed
from trainer.device_step import StepTally, check_nonfinite, optimizer_step
from trainer.distributed import all_reduce_max, all_reduce_mean, barrier
from trainer.run import Run, StopFlag, gather_stream_states, step_seed, to_device
from trainer.schedule import ema_decay_at, lr_at
from trainer.step_profiler import StepProfiler, parse_profile_steps


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
    best_checkpoint: Path | None = None  # with --early-stop: the best validated weights


def set_lr(run: Run, step: int) -> float:
    lr = lr_at(step, run.schedule["lr"], run.schedule["warmup"], run.s.steps, run.s.schedule)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def checkpoint_state(run: Run, stage, step: int, stream: dict | None = None) -> dict:
    """The full training state; gathering the stream positions is collective, so every rank calls this."""
    streams = gather_stream_states(stream or run.loader.state_dict(), run.info)
    return {
        "version": ckpt.CHECKPOINT_VERSION, "kind": run.kind, "step": step,
        "model": run.model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), "rng": ckpt.capture_rng_state(), "stream": {"ranks": streams},
        "config": run.cfg.to_dict(), "settings": dataclasses.asdict(run.s), "schedule": dict(run.schedule),
        "counters": dict(run.counters), "world_size": run.info.world_size,
        **stage.checkpoint_extra(),
    }


def save(run: Run, stage, step: int, final: bool = False, stream: dict | None = None) -> Path | None:
    state = checkpoint_state(run, stage, step, stream)
    path = None
    if run.info.is_main:
        ckpt_dir = run.run_dir / "checkpoints"
        path = ckpt.save_final(ckpt_dir, state) if final else ckpt.save_checkpoint(ckpt_dir, state, step, run.s.keep)
        run.log.info(f"saved {path}")
    barrier(run.info)
    return path


def compute_gradients(run: Run, stage, step: int, batches, timing: dict) -> tuple[Tensor, Tensor]:
    """Forward/backward over grad_accum micro-batches, then unscale and clip; returns (losses, grad norm).

    The optimizer is not stepped here: the caller decides after agreeing with the other ranks."""
    s, info = run.s, run.info
    run.optimizer.zero_grad(set_to_none=True)
    losses = torch.zeros(len(stage.loss_keys), device=run.device)
    for micro in range(s.grad_accum):
        waited = time.perf_counter()
        batch = to_device(next(batches), run.device)
        timing["wait"] += time.perf_counter() - waited
        generator = torch.Generator(device=run.device).manual_seed(step_seed(s.seed, info.rank, step, micro))
        last = micro == s.grad_accum - 1
        sync = run.train_model.no_sync() if info.is_distributed and not last else contextlib.nullcontext()
        with sync:
            with run.autocast():
                out = stage.loss(run.train_model, batch, generator, step)
            run.scaler.scale(out["total"] / s.grad_accum).backward()
        losses += torch.stack([out[k].detach().float() for k in stage.loss_keys]) / s.grad_accum
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.grad_clip)
    return losses, grad_norm


def apply_update(run: Run, stage, step: int, losses: Tensor, grad_norm: Tensor) -> tuple[Tensor, dict]:
    """The optimizer, EMA and stage updates of one step, all skipped on the device when the loss or the
    gradient is non-finite (trainer/device_step.py): no host read. Returns (counted non-finite: a 0-dim
    float tensor, the stage's extra log values as tensors).

    With a GradScaler (fp16) an overflowing gradient is its business: the update is skipped and the scale
    shrinks, but the step is not counted as non-finite (only a non-finite loss is)."""
    loss_bad = ~torch.isfinite(losses[0])
    grad_bad = ~torch.isfinite(grad_norm)
    counted = loss_bad if run.scaler.is_enabled() else loss_bad | grad_bad
    # Max-reduced on the device so every rank skips alike (DDP's gradients agree already; the losses not).
    counted, skip = all_reduce_max(torch.stack([counted, loss_bad | grad_bad]).float(), run.info).unbind()
    optimizer_step(run.optimizer, skip)
    if run.scaler.is_enabled():
        run.scaler.update()  # from the inf checks unscale_ recorded: an fp16 overflow shrinks the scale
    run.ema.update(run.model, ema_decay_at(step, run.s.ema_decay), skip=skip)
    return counted, stage.after_step(step, skip)


def _new_window() -> dict:
    return {"steps": 0, "wait": 0.0, "t0": time.perf_counter()}


def _log_window(run: Run, stage, step: int, window: dict, tally: StepTally, samples_per_step: int) -> float:
    """Log the means since the last log (one host read); returns the mean total loss."""
    elapsed = max(time.perf_counter() - window["t0"], 1e-9)
    names = list(tally.extra)
    values = torch.cat([tally.losses, torch.stack([tally.good, tally.grad, *tally.extra.values()])]).tolist()
    count = len(stage.loss_keys)
    good = max(1.0, values[count])
    mean = all_reduce_mean(tally.losses / good, run.info).tolist()
    extra = {name: value / good for name, value in zip(names, values[count + 2:])}
    run.log.log(step, {**dict(zip(stage.loss_keys, mean)), **extra,
                       "lr": lr_at(step, run.schedule["lr"], run.schedule["warmup"], run.s.steps, run.s.schedule),
                       "grad_norm": values[count + 1] / good,
                       "samples_per_s": window["steps"] * samples_per_step / elapsed,
                       "data_wait_fraction": window["wait"] / elapsed,
                       "nonfinite_steps": run.counters["nonfinite"], "skipped_clips": run.loader.skipped})
    return mean[0]


def _stop_asked(run: Run, stop: StopFlag) -> bool:
    """Whether to stop after this step: the signal flag of this process; under DDP every rank must agree,
    which costs one small all-reduce and host read a step (a single process reads no device value)."""
    if not run.info.is_distributed:
        return stop.signum is not None
    flag = torch.tensor([float(stop.signum is not None)], device=run.device)
    return bool(all_reduce_max(flag, run.info).item())


class EarlyStop:
    """--early-stop PATIENCE: the best validation score so far and how many validations since it improved.

    Its state lives in ``run.counters["early_stop"]``, so it is saved with every checkpoint and a
    resumed run keeps counting where it stopped."""

    def __init__(self, run: Run, stage):
        self.run, self.patience = run, run.s.early_stop
        self.key, self.sign = stage.score_key, stage.score_sign
        self.state = run.counters.setdefault("early_stop", {"best": None, "best_step": None, "stale": 0})

    def update(self, step: int, metrics: dict) -> tuple[bool, bool]:
        """(improved, patience exhausted) after a validation on the main rank."""
        value = self.sign * float(metrics[self.key])
        best = self.state["best"]
        if best is None or value < best:
            self.state.update(best=value, best_step=step, stale=0)
            return True, False
        self.state["stale"] += 1
        return False, self.state["stale"] >= self.patience

    def agree(self, improved: bool, exhausted: bool) -> tuple[bool, bool]:
        """Every rank takes the main rank's decision (only it validates)."""
        flags = torch.tensor([float(improved), float(exhausted)], device=self.run.device)
        improved, exhausted = (bool(v) for v in all_reduce_max(flags, self.run.info).tolist())
        return improved, exhausted

    def describe(self, path: Path | None) -> str:
        value = self.sign * self.state["best"] if self.state["best"] is not None else float("nan")
        return (f"best {self.key} {value:.4g} at step {self.state['best_step']}"
                + (f": {path}" if path is not None else ""))


def storage_stop_message(run: Run, step: int, error: StorageError) -> str:
    """A write failed (full disk, read-only folder): the one line that ends the run, with where it can resume."""
    good = ckpt.resume_candidates(run.run_dir / "checkpoints")
    kept = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was saved yet"
    return (f"{error}; training stopped at step {step}: {kept}; free some space (or fix the folder) and run the "
            f"same command with --resume auto")


def save_best(run: Run, stage, step: int, stream: dict | None = None) -> Path | None:
    state = checkpoint_state(run, stage, step, stream)
    path = ckpt.save_best(run.run_dir / "checkpoints", state) if run.info.is_main else None
    barrier(run.info)
    return path


def run_loop(run: Run, stage) -> TrainResult:
    """Train to ``settings.steps`` optimizer steps (or until SIGTERM/SIGINT) and return where it ended.

    No host read inside a step (trainer/device_step.py): losses, gradient norms and non-finite steps are
    summed on the device and read at log steps, before every checkpoint and at the end."""
    s, info, log = run.s, run.info, run.log
    samples_per_step = s.batch_size * s.grad_accum * info.world_size
    step, last_val = run.start_step, {}
    final_path, stopped_by = None, None
    feed = DeviceFeed(run.loader, run.device)  # batches copied onto the device one step ahead on CUDA
    tally, window = StepTally(len(stage.loss_keys), run.device), _new_window()
    validating = info.is_main and stage.has_val and s.val_step > 0
    sampling = info.is_main and stage.has_val and s.sample_step > 0
    early = EarlyStop(run, stage) if s.early_stop > 0 and s.val_step > 0 else None
    best_checkpoint = ckpt.best_checkpoint(run.run_dir / "checkpoints") if early else None
    if early is not None and not stage.has_val and info.is_main:
        log.info("warning: --early-stop needs validation data; no val split, so the run goes to --steps")

    def checkpoint(at: int, final: bool = False, stream: dict | None = None) -> Path | None:
        check_nonfinite(run, tally, at)  # never a checkpoint past --max-nonfinite bad steps in a row
        return save(run, stage, at, final=final, stream=stream or feed.state_dict())

    profiler = StepProfiler(parse_profile_steps(s.profile_steps), run.run_dir, run.device, info.is_main, log.info)
    stop = StopFlag()
    stop.install()
    try:
        batches = iter(feed)
        if step == 0 and validating:
            last_val = stage.evaluate(0)  # the baseline the curve falls from
        if step == 0 and early is not None:
            improved, _ = early.agree(*(early.update(0, last_val) if validating else (False, False)))
            if improved:
                best_checkpoint = save_best(run, stage, 0, feed.state_dict())
        run.train_model.train()
        while step < s.steps:
            profiler.before(step)
            stream_before = feed.state_dict()
            set_lr(run, step)
            try:
                losses, grad_norm = compute_gradients(run, stage, step, batches, window)
            except Exception:
                if stop.signum is None:
                    raise
                # Ctrl-C reaches the DataLoader workers too, and they exit on it: the step cannot finish,
                # so save the last whole one (weights untouched, stream position from before this step).
                stopped_by = signal.Signals(stop.signum).name
                checkpoint(step, stream=stream_before)
                log.info(f"stopped by {stopped_by} at step {step}; continue with --resume auto")
                break
            counted_bad, extra = apply_update(run, stage, step, losses, grad_norm)
            tally.add(losses, grad_norm, counted_bad, extra)
            step += 1
            window["steps"] += 1
            profiler.after(step)
            stop_now = _stop_asked(run, stop)

            if s.log_step > 0 and (step % s.log_step == 0 or step == s.steps):
                check_nonfinite(run, tally, step)
                loss = _log_window(run, stage, step, window, tally, samples_per_step)
                log.advance(step, {"loss": loss})
                tally.new_window()
                window = _new_window()
            else:
                log.advance(step)
            paused = time.perf_counter()  # validation, samples and saving are not training time
            exhausted = False
            if validating and step % s.val_step == 0:
                last_val = stage.evaluate(step)
            if early is not None and step % s.val_step == 0:
                improved, exhausted = early.agree(*(early.update(step, last_val) if validating else (False, False)))
                if improved:
                    check_nonfinite(run, tally, step)
                    best_checkpoint = save_best(run, stage, step, feed.state_dict())
            if sampling and step % s.sample_step == 0:
                stage.save_samples(step)
            if stop_now:
                stopped_by = signal.Signals(stop.signum).name if stop.signum else "a signal on another rank"
                checkpoint(step)
                log.info(f"stopped by {stopped_by} at step {step}; continue with --resume auto")
                break
            if exhausted:
                log.info(f"early stop at step {step}: {s.early_stop} validations without a better "
                         f"{early.key}; {early.describe(best_checkpoint)}")
                break
            if s.save_step > 0 and step % s.save_step == 0 and step < s.steps:
                checkpoint(step)
            window["t0"] += time.perf_counter() - paused
        if stopped_by is None:
            final_path = checkpoint(step, final=True)
            if validating and step % s.val_step != 0:
                last_val = stage.evaluate(step)
            if early is not None and early.state["best"] is not None:
                log.info(f"{early.describe(best_checkpoint)}")
    except StorageError as e:
        raise StorageError(storage_stop_message(run, step, e)) from None
    finally:
        profiler.close()
        stop.restore()
        log.close()
    return TrainResult(run.run_dir, step, final_path, stopped_by, run.counters["nonfinite"], last_val, run.model,
                       run.ema.shadow, best_checkpoint)
