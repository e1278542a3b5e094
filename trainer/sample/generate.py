"""Generation only: motion latents for one clip from a model, its error against the truth, and saving them.

What generation needs comes from its kin: the model from trainer/checkpoints.py
(``load_sampling_model``), held-out clips from shards/heldout.py, encoders rebuilt
from the shard manifest from preprocess/manifest_encoders.py, user inputs from
trainer/sample/media_input.py.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from float.model import FloatMotionModel
from float.sampler import generate_motion, generate_motion_clips
from shards.files import atomic_write_bytes
from trainer.errors import SampleError


@dataclass
class Generated:
    motion: Tensor  # (T, dim_w) float32 on the CPU
    seconds: float


def generate(model: FloatMotionModel, audio: np.ndarray | Tensor, wr: np.ndarray | Tensor, we: np.ndarray | Tensor,
             nfe: int = 10, solver: str = "euler", a_cfg_scale: float = 2.0, e_cfg_scale: float = 1.0,
             seed: int = 0, drop_audio: bool = False, official_grid: bool = False) -> Generated:
    """Motion latents for one clip: audio features (T, A), reference motion (dim_w,), emotion (7,).

    ``official_grid``: the official time grid and per-window noise seeding (float.sampler)."""
    param = next(model.parameters())

    def tensor(x) -> Tensor:
        return torch.as_tensor(np.asarray(x, np.float32) if not isinstance(x, Tensor) else x).to(
            device=param.device, dtype=param.dtype)

    a, r, e = tensor(audio), tensor(wr).reshape(1, -1), tensor(we).reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != model.cfg.audio_input_dim:
        raise SampleError(f"audio features must be (frames, {model.cfg.audio_input_dim}), got {tuple(a.shape)}")
    start = time.perf_counter()
    try:
        motion = generate_motion(model, a[None], r, e, nfe=nfe, solver=solver, a_cfg_scale=a_cfg_scale,
                                 e_cfg_scale=e_cfg_scale, seed=seed, drop_audio=drop_audio,
                                 official_grid=official_grid)
    except ValueError as err:  # bad solver / nfe combination
        raise SampleError(str(err)) from None
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)
    return Generated(motion[0].float().cpu(), time.perf_counter() - start)


def generate_clips(model: FloatMotionModel, audios: list, wrs: list, wes: list, nfe: int = 10, solver: str = "euler",
                   a_cfg_scale: float = 2.0, e_cfg_scale: float = 1.0, seed: int = 0, drop_audio: bool = False,
                   official_grid: bool = False) -> list[Generated]:
    """``generate`` for several clips in one batch through the FMT (float.sampler.generate_motion_clips): each
    clip's motion equals what ``generate`` gives it alone, up to float rounding. The batch's time is shared
    out by frames, so per-clip speeds add up to the batch's."""
    param = next(model.parameters())

    def tensor(x) -> Tensor:
        return torch.as_tensor(np.asarray(x, np.float32) if not isinstance(x, Tensor) else x).to(
            device=param.device, dtype=param.dtype)

    audio = [tensor(a) for a in audios]
    for a in audio:
        if a.ndim != 2 or a.shape[1] != model.cfg.audio_input_dim or len(a) == 0:
            raise SampleError(f"audio features must be (frames, {model.cfg.audio_input_dim}), got {tuple(a.shape)}")
    wr = torch.stack([tensor(r).reshape(-1) for r in wrs])
    we = torch.stack([tensor(e).reshape(-1) for e in wes])
    start = time.perf_counter()
    try:
        motion = generate_motion_clips(model, audio, wr, we, nfe=nfe, solver=solver, a_cfg_scale=a_cfg_scale,
                                       e_cfg_scale=e_cfg_scale, seed=seed, drop_audio=drop_audio,
                                       official_grid=official_grid)
    except ValueError as err:  # bad solver / nfe combination
        raise SampleError(str(err)) from None
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)
    seconds = time.perf_counter() - start
    total = sum(len(m) for m in motion)
    return [Generated(m.float().cpu(), seconds * len(m) / max(total, 1)) for m in motion]


def generate_items(model: FloatMotionModel, items: list, o, log) -> list[tuple[Generated, Generated | None]]:
    """Each item's motion and, where it has a ground truth (``item.target``), its motion with the audio dropped:
    ``o.clip_batch`` items at a time in one batch through the FMT, each equal to what it gets alone. ``items``
    carry ``features``, ``wr``, ``we``, ``target`` (trainer/sample/command.py's Item); ``o`` the SampleOptions."""
    out = []
    for first in range(0, len(items), o.clip_batch):
        group = items[first:first + o.clip_batch]
        inputs = ([i.features for i in group], [i.wr for i in group], [i.we for i in group])
        common = dict(nfe=o.nfe, solver=o.solver, a_cfg_scale=o.a_cfg, e_cfg_scale=o.e_cfg, seed=o.seed,
                      official_grid=o.official_grid)
        gens = generate_clips(model, *inputs, **common)
        scored = [i.target is not None for i in group]
        silent = generate_clips(model, *inputs, drop_audio=True, **common) if any(scored) else [None] * len(group)
        out += [(g, q if has_target else None) for g, q, has_target in zip(gens, silent, scored)]
        if len(group) > 1:
            log(f"generated {len(group)} clips in one batch through the FMT")
    return out


def compile_fmt(model: FloatMotionModel, device: torch.device, log) -> None:
    """``--compile``: torch.compile the FMT's forward in place (the guidance's batched pass calls it once per
    evaluation), on CUDA only; elsewhere a note says it is not applied. Shapes are fixed within a call (one
    window, one batch), so it compiles once per batch size."""
    if torch.device(device).type != "cuda":
        log(f"note: --compile applies on CUDA only; the FMT runs uncompiled on {device}")
        return
    model.fmt.forward = torch.compile(model.fmt.forward, dynamic=False)
    log("the FMT's forward is compiled (torch.compile); the first window pays the compilation")


def motion_errors(pred: Tensor, target: np.ndarray | Tensor) -> dict[str, float]:
    """L1 and MSE of generated vs ground-truth latents over their common frames."""
    t = torch.as_tensor(np.asarray(target, np.float32) if not isinstance(target, Tensor) else target).float()
    n = min(len(pred), len(t))
    diff = pred[:n].float() - t[:n]
    return {"l1": float(diff.abs().mean()), "mse": float(diff.pow(2).mean())}


def save_latents(path: Path, record: dict) -> Path:
    """torch.save a dict of tensors and plain values (loads with weights_only=True), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(record, buf)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return path
