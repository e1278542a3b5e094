"""Exponential moving average of the model weights (used for validation and samples)."""
from __future__ import annotations

import copy

import torch
from torch import nn

# Devices where reading a flag costs nothing (no queue to drain): there the masked update is one fused lerp
# after a host read, 2.4x faster on a CPU than the masked form (tests empty this set to check that form).
HOST_READ_FREE = {"cpu"}


class EMA:
    """Keeps ``shadow``, a frozen copy of the model whose float weights track
    ``decay * shadow + (1 - decay) * weights`` after each optimizer step.

    Buffers (fixed tables, masks) are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None, skip: torch.Tensor | None = None) -> None:
        """One EMA step towards ``model``'s weights (``decay`` overrides the default, e.g. during warmup).

        ``skip``: a 0-dim device tensor, 1.0 for a step that changed nothing (non-finite): the shadow then
        stays as it is, decided on the device without a host read (trainer/device_step.py)."""
        decay = self.decay if decay is None else decay
        ema_params = dict(self.shadow.named_parameters())
        shadow, current = [], []
        for name, p in model.named_parameters():
            target = ema_params[name]
            if p.requires_grad and target.is_floating_point():
                shadow.append(target)
                current.append(p.detach())
            else:  # frozen tables follow the model exactly
                target.copy_(p)
        if shadow and skip is None:
            # shadow += (1 - decay) * (current - shadow), one fused op over all tensors
            torch._foreach_lerp_(shadow, current, 1.0 - decay)
        elif shadow and skip.device.type in HOST_READ_FREE:
            # On the CPU reading the flag costs nothing (no queue to drain): one fused lerp, or nothing
            if not bool(skip):
                torch._foreach_lerp_(shadow, current, 1.0 - decay)
        elif shadow:
            # foreach lerp takes no tensor weight: the same update as sub, mul by a device scalar, add
            step = torch._foreach_sub(current, shadow)
            torch._foreach_mul_(step, (1.0 - skip.float()) * (1.0 - decay))
            torch._foreach_add_(shadow, step)
        for (_, b_ema), (_, b) in zip(self.shadow.named_buffers(), model.named_buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
