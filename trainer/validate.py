"""Deterministic validation: flow loss at fixed t and noise, and generation error with/without audio.

Both run on the EMA model over a fixed list of held-out val batches, so two
evaluations of the same weights give the same numbers and curves are comparable
across runs. The generation error compares motion sampled from noise (fixed
seed) with the ground-truth latents of each window, once with the audio and
once with the projected audio zeroed (the unconditional input of
classifier-free training): if the model uses the audio, the first is lower.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from float.fmt import keep_all_conditions
from float.loss import LossWeights, rectified_flow_loss
from float.sampler import generate_motion
from shards.files import atomic_write_bytes

VAL_T_VALUES = (0.1, 0.3, 0.5, 0.7, 0.9)
LOSS_KEYS = ("total", "current", "preceding", "velocity")


def _no_autocast() -> ContextManager:
    return contextlib.nullcontext()


@torch.no_grad()
def validation_loss(model: nn.Module, batches: list[dict], weights: LossWeights = LossWeights(),
                    t_values: tuple[float, ...] = VAL_T_VALUES, seed: int = 0,
                    autocast: Callable[[], ContextManager] = _no_autocast) -> dict[str, float]:
    """Mean loss terms over ``batches`` x ``t_values`` with fixed noise and no condition dropout.

    Returns val_total/current/preceding/velocity and val_current_t<t> per t value."""
    if not batches:
        raise ValueError("validation_loss: no val batches (is the val split empty?)")
    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in LOSS_KEYS}
    per_t = {t: 0.0 for t in t_values}
    count = 0
    for index, batch in enumerate(batches):
        x1 = batch["motion"]
        b, device = x1.shape[0], x1.device
        # Noise fixed per batch index; generated on the CPU so it is the same on every device.
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        noise = torch.randn(x1.shape, generator=g).to(device=device, dtype=x1.dtype)
        keep = keep_all_conditions(b, device)
        for t in t_values:
            tt = torch.full((b,), t, device=device)
            with autocast():
                out = rectified_flow_loss(model, batch, weights, t=tt, noise=noise, keep=keep)
            for k in LOSS_KEYS:
                sums[k] += float(out[k]) * b
            per_t[t] += float(out["current"]) * b
        count += b
    model.train(was_training)
    n = count * len(t_values)
    result = {f"val_{k}": v / n for k, v in sums.items()}
    result.update({f"val_current_t{t:g}": v / count for t, v in per_t.items()})
    return result


@torch.no_grad()
def generation_error(model: nn.Module, batches: list[dict], nfe: int = 10, seed: int = 0,
                     a_cfg_scale: float = 1.0, autocast: Callable[[], ContextManager] = _no_autocast
                     ) -> dict[str, float]:
    """L1 and MSE of sampled vs ground-truth motion, with the audio and with the audio dropped.

    ``a_cfg_scale`` 1 (no guidance) measures what the model learned rather than
    the guidance; ``gen_audio_gain`` = error without audio / error with audio (> 1: audio helps)."""
    was_training = model.training
    model.eval()
    totals = {"gen_l1_audio": 0.0, "gen_mse_audio": 0.0, "gen_l1_no_audio": 0.0, "gen_mse_no_audio": 0.0}
    count = 0
    for batch in batches:
        target = batch["motion"].float()
        b = target.shape[0]
        for suffix, drop in (("audio", False), ("no_audio", True)):
            with autocast():
                pred = generate_motion(model, batch["audio"], batch["ref_motion"], batch["emotion"], nfe=nfe,
                                       a_cfg_scale=a_cfg_scale, e_cfg_scale=1.0, seed=seed, drop_audio=drop)
            diff = pred.float() - target
            totals[f"gen_l1_{suffix}"] += float(diff.abs().mean()) * b
            totals[f"gen_mse_{suffix}"] += float(diff.pow(2).mean()) * b
        count += b
    model.train(was_training)
    if count == 0:
        raise ValueError("generation_error: no val batches (is the val split empty?)")
    result = {k: v / count for k, v in totals.items()}
    result["gen_audio_gain"] = result["gen_l1_no_audio"] / max(result["gen_l1_audio"], 1e-12)
    return result


@torch.no_grad()
def save_motion_samples(model: nn.Module, batch: dict, path: str | Path, step: int, count: int = 4,
                        nfe: int = 10, seed: int = 0, a_cfg_scale: float = 2.0) -> Path:
    """Sample motion for the first ``count`` windows of ``batch`` and save them with the targets.

    The .pt file holds plain tensors and lists (loads with weights_only=True):
    motion (n, T, dim_w) sampled, motion_no_audio (the same noise with the audio dropped, for the
    logged strips), target (n, T, dim_w), ref_motion, emotion, keys, step."""
    was_training = model.training
    model.eval()
    n = min(count, batch["motion"].shape[0])
    pred = generate_motion(model, batch["audio"][:n], batch["ref_motion"][:n], batch["emotion"][:n], nfe=nfe,
                           a_cfg_scale=a_cfg_scale, seed=seed)
    silent = generate_motion(model, batch["audio"][:n], batch["ref_motion"][:n], batch["emotion"][:n], nfe=nfe,
                             a_cfg_scale=a_cfg_scale, seed=seed, drop_audio=True)
    model.train(was_training)
    keys = batch.get("key")
    record = {
        "step": step,
        "motion": pred.float().cpu(),
        "motion_no_audio": silent.float().cpu(),
        "target": batch["motion"][:n].float().cpu(),
        "ref_motion": batch["ref_motion"][:n].float().cpu(),
        "emotion": batch["emotion"][:n].float().cpu(),
        "keys": list(keys[:n]) if keys is not None else [],
        "starts": batch["start"][:n].tolist() if "start" in batch else [],  # the windows' first frames
        "nfe": nfe,
        "a_cfg_scale": a_cfg_scale,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: torch.save(record, f))  # the one writer: full disk -> StorageError
    return path
