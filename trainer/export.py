"""`floatctl export`: a training checkpoint's weights under the official float.pth names, verified by loading
them back into a fresh model (the name mapping itself is float.checkpoint.official_state_dict)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import typer

from float.checkpoint import (MOTION_AUTOENCODER, CheckpointError, load_official_state_dict, load_parts,
                              motion_autoencoder_state, official_state_dict)
from float.model import FloatMotionModel
from shards.files import atomic_write_bytes
from trainer.checkpoints import Log, load_sampling_model
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
                    float_ckpt: str | Path | None = None, log: Log = print) -> ExportReport:
    """Write an official-format state dict of a training checkpoint and verify it loads.

    ``float_ckpt``: also copy ``motion_autoencoder.*`` from an official float.pth,
    so the official inference code (which warns about every parameter it does
    not find) gets a complete file.
    """
    sm = load_sampling_model(checkpoint, use_ema=use_ema, log=log)
    if getattr(sm.model, "normalizes_motion", False):
        # The flow was learned on standardised latents; the official sampler integrates raw latents
        # from N(0, I), which no change of the weights can make equivalent.
        log("WARNING: this model was trained on standardised motion latents (motion_mean / motion_std, used "
            "for seeded random encoders); the official code has no such step, so it will not reproduce this "
            "model's motion. The export is exact for models trained on raw latents (official float.pth encoder).")
    try:
        state = official_state_dict(sm.model)
    except CheckpointError as e:
        raise SampleError(str(e)) from None
    keys = len(state)
    copied = 0
    if float_ckpt is not None:
        try:
            official = load_official_state_dict(float_ckpt)
        except CheckpointError as e:
            raise SampleError(f"--float-ckpt: {e}") from None
        motion = {MOTION_AUTOENCODER + k: v for k, v in motion_autoencoder_state(official).items()}
        if not motion:
            raise SampleError(f"--float-ckpt {float_ckpt}: no motion_autoencoder.* keys; not an official float.pth")
        state.update(motion)
        copied = len(motion)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda f: torch.save(state, f))
    # Read the file back the way a user of it would, into a fresh model: nothing may be missing.
    fresh = FloatMotionModel(sm.cfg)
    report = load_parts(load_official_state_dict(out),
                        {"fmt.": fresh.fmt, "audio_encoder.audio_projection.": fresh.audio_encoder.audio_projection})
    if not report.ok:
        raise SampleError(f"{out}: the exported file does not load back into a fresh model:\n{report}")
    return ExportReport(out, sm.weights, sm.step, keys, copied, str(report))


def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint."),
    out: Path = typer.Argument(..., help="Output .pth: an official-format state dict."),
    ema: bool = typer.Option(True, "--ema/--raw", help="EMA weights (default) or the raw training weights."),
    float_ckpt: Optional[Path] = typer.Option(None, help="Also copy motion_autoencoder.* from this official "
                                                         "float.pth, so the official code finds every weight."),
) -> None:
    """Write fmt.* and audio_encoder.audio_projection.* under the official names."""
    try:
        report = export_official(checkpoint, out, ema, float_ckpt, log=lambda m: print(m, flush=True))
    except SampleError as e:
        exit_with_error(str(e))
        return
    extra = f" + {report.motion_autoencoder_keys} motion_autoencoder.* from {float_ckpt}" \
        if report.motion_autoencoder_keys else " (no motion_autoencoder.*: pass --float-ckpt for a complete file)"
    print(f"wrote {report.path}: {report.keys} tensors from the {report.weights.upper()} weights of step "
          f"{report.step}{extra}")
    print(f"read back into a fresh model:\n{report.load_report}")
