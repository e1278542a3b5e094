"""Rectified-flow training objective of FLOAT.

x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) and x1 the current motion latents;
the FMT predicts the velocity v = x1 - x0. Three L1 terms (each weighted):
  current    L1(v_hat, v) on the current frames,
  preceding  L1(output at the preceding positions, the preceding latents), on
             real preceding frames whose condition was not dropped,
  velocity   L1 between neighbouring-frame differences of v_hat and v.
Condition dropout for classifier-free guidance is sampled here (with the FMT's
own ``sample_condition_keep``) rather than inside the FMT, so the loss knows
which preceding frames were hidden from the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from float.fmt import sample_condition_keep


@dataclass(frozen=True)
class LossWeights:
    current: float = 1.0
    preceding: float = 1.0
    velocity: float = 1.0


def _masked_l1(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over positions where mask (broadcastable to a[..., 0]) is 1."""
    diff = (a - b).abs().mean(-1) * mask
    return diff.sum() / mask.sum().clamp_min(1.0)


def rectified_flow_loss(
    model,
    batch: dict[str, Tensor],
    weights: LossWeights = LossWeights(),
    t: Tensor | None = None,
    noise: Tensor | None = None,
    keep: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Loss terms for one batch of windows (keys as yielded by shards.dataset).

    ``t``, ``noise`` and ``keep`` default to fresh random draws; validation
    passes fixed ones (and keep=all ones) to make the loss deterministic.
    """
    core = getattr(model, "module", model)  # DDP wraps the model
    cfg = core.cfg
    prev_mask = batch.get("prev_mask")
    prev_mask = torch.ones(batch["prev_motion"].shape[:2], device=batch["motion"].device) if prev_mask is None else prev_mask.float()
    # The flow is learned on normalised latents (identity for the official model);
    # padded preceding frames stay zero, as the sampler feeds for the first window.
    x1 = core.motion_to_flow(batch["motion"], batch["ref_motion"])
    prev_x = core.motion_to_flow(batch["prev_motion"], batch["ref_motion"]) * prev_mask.unsqueeze(-1)
    ref = core.normalize_motion(batch["ref_motion"])  # the reference condition: standardised, never relative
    B, N, _ = x1.shape
    device = x1.device
    if t is None:
        t = torch.rand(B, device=device, generator=generator)
    if noise is None:
        noise = torch.randn(x1.shape, device=device, generator=generator, dtype=x1.dtype)
    if keep is None:
        keep = sample_condition_keep(cfg, B, device, generator)

    tt = t.view(B, 1, 1).to(x1.dtype)
    x_t = (1 - tt) * noise + tt * x1
    v = x1 - noise

    p_keep = keep["prev"].view(B, 1)
    out = model(
        t,
        x_t,
        audio=batch["audio"],
        prev_audio=batch["prev_audio"],
        wr=ref * keep["ref"].view(B, 1),
        we=batch["emotion"] * keep["emotion"].view(B, 1),
        prev_x=prev_x * p_keep.unsqueeze(-1),
        prev_mask=prev_mask * keep["prev_audio"].view(B, 1),
        audio_keep=keep["audio"],
    )
    P = prev_x.shape[1]
    v_hat, prev_hat = out[:, P:].float(), out[:, :P].float()

    current = (v_hat - v).abs().mean()
    preceding = _masked_l1(prev_hat, prev_x, prev_mask * p_keep)
    velocity = (v_hat.diff(dim=1) - v.diff(dim=1)).abs().mean()
    total = weights.current * current + weights.preceding * preceding + weights.velocity * velocity
    return {"total": total, "current": current, "preceding": preceding, "velocity": velocity}
