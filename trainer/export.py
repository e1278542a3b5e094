"""`floatctl export`: a training checkpoint's weights under the official float.pth names, verified by loading
them back into a fresh model (the name mapping itself is float.checkpoint.official_state_dict)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import typer

from float.checkpoint import (MOTION_AUTOENCODER, CheckpointError, load_official_state_dict, load_parts,
                              motion_autoencoder_state, official_state_dict, safe_torch_load)
from float.model import FloatMotionModel
from float.motion_autoencoder import MotionAutoEncoder
from float.motion_checkpoint import MOTION_CKPT_KIND, load_motion_checkpoint
from shards.files import atomic_write_bytes
from float.checkpoint_names import pick_checkpoint
from trainer.checkpoints import CHECKPOINT_VERSION, Log, load_sampling_model
from trainer.errors import SampleError, exit_with_error


@dataclass
class ExportReport:
    path: Path
    weights: str  # "ema" or "raw"
    step: int
    keys: int  # fmt + audio projection tensors written
    motion_autoencoder_keys: int  # copied from --float-ckpt (0 when none)
    load_report: str  # float.checkpoint.load_parts on a fresh model, read back from the file


def export_official(checkpoint: str | Path, out: str | Path, use_ema: bool = True,
                    float_ckpt: str | Path | None = None, log: Log = print,
                    motion_ckpt: str | Path | None = None) -> ExportReport:
    """Write an official-format state dict of a training checkpoint and verify it loads.

    ``float_ckpt``: also copy ``motion_autoencoder.*`` from an official float.pth,
    so the official inference code (which warns about every parameter it does
    not find) gets a complete file. ``motion_ckpt``: take them from a stage-1
    checkpoint instead (a model trained here from scratch, both stages).
    """
    if float_ckpt is not None and motion_ckpt is not None:
        raise SampleError("give --float-ckpt or --motion-ckpt, not both: one motion auto-encoder per file")
    sm = load_sampling_model(checkpoint, use_ema=use_ema, log=log)
    if getattr(sm.model, "normalizes_motion", False):
        # The flow was learned on standardised latents; the official sampler integrates raw latents
        # from N(0, I), which no change of the weights can make equivalent.
        log("WARNING: this model was trained on standardised motion latents (motion_mean / motion_std, used "
            "for seeded random encoders); the official code has no such step, so it will not reproduce this "
            "model's motion. The export is exact for models trained on raw latents (official float.pth encoder).")
    if sm.model.cfg.relative_motion:
        log("WARNING: this model generates motion relative to the reference frame (relative_motion); the official "
            "code adds no reference to what it generates, so it will not reproduce this model's motion.")
    try:
        state = official_state_dict(sm.model)
    except CheckpointError as e:
        raise SampleError(str(e)) from None
    keys = len(state)
    copied = 0
    if float_ckpt is not None:
        try:
            official = load_official_state_dict(float_ckpt, "--float-ckpt ", "--float-ckpt takes the official "
                                                "float.pth (a stage-1 checkpoint goes to --motion-ckpt)")
        except CheckpointError as e:
            raise SampleError(str(e)) from None
        motion = {MOTION_AUTOENCODER + k: v for k, v in motion_autoencoder_state(official).items()}
        if not motion:
            raise SampleError(f"--float-ckpt {float_ckpt}: no motion_autoencoder.* keys; not an official float.pth")
        state.update(motion)
        copied = len(motion)
    parts_to_check = {}
    if motion_ckpt is not None:
        motion, stage1_model = stage1_official_state(motion_ckpt)
        state.update(motion)
        copied = len(motion)
        parts_to_check[MOTION_AUTOENCODER] = MotionAutoEncoder(stage1_model.size, stage1_model.style_dim,
                                                               stage1_model.motion_dim, stage1_model.width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: torch.save(state, f))
    # Read the file back the way a user of it would, into a fresh model: nothing may be missing.
    fresh = FloatMotionModel(sm.cfg)
    report = load_parts(load_official_state_dict(out),
                        {"fmt.": fresh.fmt, "audio_encoder.audio_projection.": fresh.audio_encoder.audio_projection,
                         **parts_to_check})
    if not report.ok:
        raise SampleError(f"{out}: the exported file does not load back into a fresh model:\n{report}")
    return ExportReport(out, sm.weights, sm.step, keys, copied, str(report))


def stage1_official_state(path: str | Path) -> tuple[dict[str, torch.Tensor], MotionAutoEncoder]:
    """(``motion_autoencoder.*`` under the official names, the model) of a stage-1 checkpoint's EMA weights."""
    try:
        model, _, _ = load_motion_checkpoint(path)
    except CheckpointError as e:
        raise SampleError(str(e) if str(e).startswith("--motion-ckpt") else f"--motion-ckpt {e}") from None
    return {MOTION_AUTOENCODER + k: v for k, v in model.state_dict().items()}, model


def export_stage1(checkpoint: str | Path, out: str | Path, half: bool = False) -> tuple[Path, dict]:
    """A slim stage-1 checkpoint: the EMA weights, config and step only (what --motion-ckpt needs),
    optionally in float16 (half the bytes; loading casts back to float32)."""
    try:
        model, info, cfg = load_motion_checkpoint(checkpoint)
    except CheckpointError as e:
        raise SampleError(str(e)) from None
    weights = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    slim = {"version": CHECKPOINT_VERSION, "kind": MOTION_CKPT_KIND, "step": info["step"], "config": cfg.to_dict(), "ema": weights,
            "exported_from": str(checkpoint)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: torch.save(slim, f))
    _, reloaded, _ = load_motion_checkpoint(out)  # read back as its users will
    return out, reloaded


def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (FMT or stage 1), or a run folder."),
    out: Path = typer.Argument(..., help="Output .pth: an official-format state dict."),
    ema: bool = typer.Option(True, "--ema/--raw", help="EMA weights (default) or the raw training weights."),
    float_ckpt: Optional[Path] = typer.Option(None, help="Also copy motion_autoencoder.* from this official "
                                                         "float.pth, so the official code finds every weight."),
    motion_ckpt: Optional[Path] = typer.Option(None, help="Also write motion_autoencoder.* from this stage-1 "
                                                          "checkpoint (floatctl train-motion): a complete float.pth "
                                                          "trained here from scratch."),
    half: bool = typer.Option(False, "--half", help="Stage-1 checkpoint given: store its weights in float16."),
) -> None:
    """FMT checkpoint: write fmt.* and audio_encoder.audio_projection.* (+ motion_autoencoder.*) under the
    official names. Stage-1 checkpoint: write a slim one (EMA weights, config, step) for --motion-ckpt."""
    if checkpoint.is_dir():  # a run folder: its final checkpoint, else its newest (said which)
        try:
            checkpoint = pick_checkpoint(checkpoint, "checkpoint", lambda m: print(m, flush=True))
        except CheckpointError as e:
            exit_with_error(str(e))
            return
    if _is_stage1(checkpoint):
        try:
            path, info = export_stage1(checkpoint, out, half)
        except SampleError as e:
            exit_with_error(str(e))
            return
        print(f"wrote {path}: stage-1 EMA weights of step {info['step']} ({path.stat().st_size / 1e6:.1f} MB, "
              f"fingerprint {info['fingerprint']})")
        return
    try:
        report = export_official(checkpoint, out, ema, float_ckpt, log=lambda m: print(m, flush=True),
                                 motion_ckpt=motion_ckpt)
    except SampleError as e:
        exit_with_error(str(e))
        return
    extra = f" + {report.motion_autoencoder_keys} motion_autoencoder.* from {float_ckpt or motion_ckpt}" \
        if report.motion_autoencoder_keys else (" (no motion_autoencoder.*: pass --float-ckpt or --motion-ckpt for "
                                                "a complete file)")
    print(f"wrote {report.path}: {report.keys} tensors from the {report.weights.upper()} weights of step "
          f"{report.step}{extra}")
    print(f"read back into a fresh model:\n{report.load_report}")


def _is_stage1(path: Path) -> bool:
    try:
        state = safe_torch_load(path, mmap=True)  # a look at one key: map the tensors, do not read them
    except (CheckpointError, FileNotFoundError):
        return False  # export_official reports the problem
    return isinstance(state, dict) and state.get("kind") == MOTION_CKPT_KIND
