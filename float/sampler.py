"""ODE sampling of motion from audio.

Fixed-step solvers take exactly ``nfe`` vector-field evaluations:
  euler     nfe steps of one evaluation,
  midpoint  nfe/2 steps of two,
  rk4       nfe/4 steps of four.
``official_grid=True`` reproduces the official sampler, which integrates
Euler over ``linspace(0, 1, nfe)``: nfe-1 steps, so nfe-1 evaluations; and its
fixed-seed noise (``--fix_noise_seed``): the generator is re-seeded with
``seed`` before every window, so every window starts from the same noise.

Generation is chunked and autoregressive like the official model: audio of any
length is cut into windows of ``cfg.num_frames``; the last ``num_prev_frames``
generated latents and their projected audio condition the next window (zeros
for the first); a short last window is padded by repeating its last frame.
``generate_motion_clips`` runs clips of different lengths as one batch, each
as it would run alone.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

VectorField = Callable[[Tensor, Tensor], Tensor]  # (t scalar tensor, x) -> dx/dt
SOLVER_EVALS = {"euler": 1, "midpoint": 2, "rk4": 4}


def time_grid(nfe: int, solver: str = "euler", official_grid: bool = False, device=None) -> Tensor:
    if solver not in SOLVER_EVALS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVER_EVALS)}")
    per_step = SOLVER_EVALS[solver]
    if official_grid:
        if solver != "euler" or nfe < 2:
            raise ValueError("official_grid reproduces the official Euler sampler: solver 'euler', nfe >= 2")
        return torch.linspace(0, 1, nfe, device=device)
    if nfe < per_step or nfe % per_step:
        raise ValueError(f"solver {solver!r} uses {per_step} evaluations per step; nfe={nfe} is not a positive multiple")
    return torch.linspace(0, 1, nfe // per_step + 1, device=device)


def integrate(f: VectorField, x0: Tensor, nfe: int = 10, solver: str = "euler", official_grid: bool = False) -> Tensor:
    """Integrate dx/dt = f(t, x) from t=0 to 1 with a fixed-step solver."""
    grid = time_grid(nfe, solver, official_grid, device=x0.device)
    x = x0
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        if solver == "euler":
            x = x + h * f(t0, x)
        elif solver == "midpoint":
            x = x + h * f(t0 + h / 2, x + h / 2 * f(t0, x))
        else:  # rk4
            k1 = f(t0, x)
            k2 = f(t0 + h / 2, x + h / 2 * k1)
            k3 = f(t0 + h / 2, x + h / 2 * k2)
            k4 = f(t1, x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def _pad_window(x: Tensor, length: int) -> Tensor:
    """Pad (B, T, C) to ``length`` frames by repeating the last frame (official 'replicate')."""
    if x.shape[1] >= length:
        return x
    return torch.cat([x, x[:, -1:].expand(-1, length - x.shape[1], -1)], dim=1)


@torch.no_grad()
def generate_motion(
    model,
    audio: Tensor,
    wr: Tensor,
    we: Tensor,
    nfe: int = 10,
    solver: str = "euler",
    a_cfg_scale: float = 2.0,
    e_cfg_scale: float = 1.0,
    r_cfg_scale: float = 1.0,
    seed: int | None = None,
    official_grid: bool = False,
    drop_audio: bool = False,
) -> Tensor:
    """Raw motion latents (B, T, dim_w) for audio features (B, T, audio_input_dim).

    ``model`` is a FloatMotionModel; ``wr`` (B, dim_w) the reference motion;
    ``we`` (B, dim_e) emotion (zeros for none). ``drop_audio`` zeroes the
    projected audio, the unconditional input the model saw in training,
    to measure how much the audio drives the motion. One generator seeded
    with ``seed`` draws the noise of the whole batch, window by window.
    """
    cfg = model.cfg
    B = audio.shape[0]
    generator = torch.Generator(device=audio.device)
    base_seed = seed if seed is not None else torch.seed()
    generator.manual_seed(base_seed)

    def noise(first_window: bool) -> Tensor:
        if official_grid and not first_window:
            # The official sampler re-seeds before each window: identical x0 in every window.
            generator.manual_seed(base_seed)
        return torch.randn(B, cfg.num_frames, cfg.dim_w, device=audio.device, dtype=wr.dtype, generator=generator)

    return _flow(model, audio, wr, we, noise, nfe, solver, a_cfg_scale, e_cfg_scale, r_cfg_scale, official_grid,
                 drop_audio)


@torch.no_grad()
def generate_motion_clips(
    model,
    audios: list[Tensor],
    wr: Tensor,
    we: Tensor,
    nfe: int = 10,
    solver: str = "euler",
    a_cfg_scale: float = 2.0,
    e_cfg_scale: float = 1.0,
    r_cfg_scale: float = 1.0,
    seed: int = 0,
    official_grid: bool = False,
    drop_audio: bool = False,
) -> list[Tensor]:
    """Several clips of different lengths in one batch: raw motion (T_i, dim_w) for each audio (T_i, A).

    Each clip gets what ``generate_motion`` gives it alone with batch 1 (up to the float
    rounding of a larger batch): its noise comes from its own generator seeded with
    ``seed``, and a shorter clip's audio is padded to the longest by repeating its last
    frame, which is exactly how its own last window is padded; windows past its end only
    read that padding, and generation runs forward, so they change none of its frames.
    ``wr`` (B, dim_w) and ``we`` (B, dim_e) hold one row per clip.
    """
    if not audios:
        return []
    cfg = model.cfg
    device = audios[0].device
    lengths = [a.shape[0] for a in audios]
    longest = max(lengths)
    padded = torch.stack([_pad_window(a[None], longest)[0] for a in audios])
    generators = [torch.Generator(device=device).manual_seed(seed) for _ in audios]

    def noise(first_window: bool) -> Tensor:
        if official_grid and not first_window:
            for g in generators:
                g.manual_seed(seed)
        return torch.cat([torch.randn(1, cfg.num_frames, cfg.dim_w, device=device, dtype=wr.dtype, generator=g)
                          for g in generators])

    motion = _flow(model, padded, wr, we, noise, nfe, solver, a_cfg_scale, e_cfg_scale, r_cfg_scale, official_grid,
                   drop_audio)
    return [motion[i, :n] for i, n in enumerate(lengths)]


def _flow(model, audio: Tensor, wr: Tensor, we: Tensor, noise: Callable[[bool], Tensor], nfe: int, solver: str,
          a_cfg_scale: float, e_cfg_scale: float, r_cfg_scale: float, official_grid: bool, drop_audio: bool) -> Tensor:
    """The window loop both entry points share; ``noise(first_window)`` gives each window's x0 (B, N, dim_w).

    The guidance's three passes (unconditional, audio only, all conditions) are one batched
    forward per evaluation: FlowMatchingTransformer.forward_with_cfv stacks them."""
    cfg = model.cfg
    B, T, _ = audio.shape
    N, P = cfg.num_frames, cfg.num_prev_frames
    device, dtype = audio.device, wr.dtype

    wr_raw = wr
    wr = model.normalize_motion(wr)  # the flow lives in the model's (normalised) latent space
    wa = model.project_audio(audio)
    if drop_audio:
        wa = torch.zeros_like(wa)
    we = we.reshape(B, 1, -1)
    prev_x = torch.zeros(B, P, cfg.dim_w, device=device, dtype=dtype)
    prev_wa = torch.zeros(B, P, wa.shape[-1], device=device, dtype=wa.dtype)
    chunks = []
    for start in range(0, T, N):
        wa_t = _pad_window(wa[:, start : start + N], N)

        def field(t: Tensor, x: Tensor) -> Tensor:
            out = model.fmt.forward_with_cfv(
                t.reshape(1), x, wa_t, wr, we, prev_x, prev_wa,
                a_cfg_scale=a_cfg_scale, r_cfg_scale=r_cfg_scale, e_cfg_scale=e_cfg_scale,
            )
            return out[:, P:]

        sample = integrate(field, noise(start == 0), nfe, solver, official_grid)
        chunks.append(sample)
        prev_x, prev_wa = sample[:, -P:], wa_t[:, -P:]
    return model.flow_to_motion(torch.cat(chunks, dim=1)[:, :T], wr_raw)
