"""The optimizer update of a training step without a host read: skips and tallies stay on the device.

A host read (``float(loss)``, ``.item()``, ``.tolist()``, ``if torch.isfinite(...)``) inside the step makes
the CPU wait for the GPU to drain its queue, so the GPU idles while the CPU prepares the next step. Here the
decisions a step takes are device tensors:

- **the skip** of a non-finite step: the optimizer gets it as ``found_inf``, the flag a GradScaler hands to
  the fused Adam/AdamW kernels (``optimizer.found_inf``; the kernel leaves weights, moments and its step
  count as they were when it is 1). The EMA's lerp weight is multiplied by ``1 - skip``. So a non-finite
  step changes nothing, as before, without the host knowing it yet. An optimizer without that support (not
  fused: a checkpoint's own choice, or a device with no fused kernel) falls back to one host read.
- **the tallies** (``StepTally``): loss sums, gradient norms, non-finite counts and the longest run of
  non-finite steps, summed on the device and read only at log steps, before checkpoints and at the end.
  --max-nonfinite is therefore checked there: a run of bad steps stops at the next log step or checkpoint
  at the latest (never after saving a checkpoint past the limit), not at the very step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from trainer import checkpoints as ckpt
from trainer.errors import TrainingError


def fused_supported(device: torch.device) -> bool:
    """Whether torch has fused Adam/AdamW kernels (with ``found_inf``) for this device."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Fused Adam/AdamW read ``optimizer.found_inf``; the for-loop and foreach versions ignore it."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups)


def keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: a checkpoint's param groups carry their own ``fused`` / ``foreach`` flags
    (torch restores them), and a non-fused checkpoint's step counts stay on the CPU. A fused optimizer
    stays fused: flags set back and step counts moved to their parameter's device as float32."""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def optimizer_step(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """``optimizer.step()`` unless ``skip`` (a 0-dim float tensor, 1.0 = skip) is set; no host read when
    the optimizer is fused. Gradients must already be unscaled (GradScaler.unscale_)."""
    if supports_found_inf(optimizer):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float().reshape(())
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not bool(skip):  # the one host read of a non-fused optimizer
        optimizer.step()


class StepTally:
    """Device-side sums over the steps since the last read (a log window), and the non-finite streak."""

    def __init__(self, loss_count: int, device: torch.device):
        self.device = device
        zero = lambda: torch.zeros((), device=device)  # noqa: E731
        self.losses = torch.zeros(loss_count, device=device)
        self.good, self.grad, self.bad = zero(), zero(), zero()
        self.extra: dict[str, Tensor] = {}
        self.streak, self.longest = zero(), zero()  # non-finite steps in a row: now, and the most since a read

    def add(self, losses: Tensor, grad_norm: Tensor, counted_bad: Tensor, extra: dict[str, Tensor]) -> None:
        """One step: ``counted_bad`` (0-dim float, 1.0 = a non-finite step) keeps it out of the means."""
        good = 1.0 - counted_bad
        self.losses += torch.where(good > 0, losses, torch.zeros_like(losses))
        self.good += good
        self.grad += torch.where((good > 0) & torch.isfinite(grad_norm), grad_norm.float(), 0.0)
        self.bad += counted_bad
        self.streak = (self.streak + 1.0) * counted_bad
        self.longest = torch.maximum(self.longest, self.streak)
        for name, value in extra.items():
            value = torch.as_tensor(value, device=self.device, dtype=torch.float32)
            self.extra[name] = self.extra.get(name, 0.0) + torch.where(good > 0, value, 0.0)

    def new_window(self) -> None:
        """Zero the window's sums; the streak goes on across windows."""
        self.losses.zero_()
        self.good.zero_(), self.grad.zero_()
        self.extra = {}

    def read_bad(self) -> tuple[int, int]:
        """(non-finite steps since the last read, the longest streak since it): one host read; resets both."""
        bad, longest = (int(v) for v in torch.stack([self.bad, self.longest]).tolist())
        self.bad.zero_()
        self.longest.copy_(self.streak)
        return bad, longest


def check_nonfinite(run, tally: StepTally, step: int) -> None:
    """Fold the non-finite steps since the last check into the run's counter; stop the run (without saving)
    when --max-nonfinite of them came in a row."""
    bad, longest = tally.read_bad()
    run.counters["nonfinite"] += bad
    if longest >= run.s.max_nonfinite:
        good = ckpt.resume_candidates(run.run_dir / "checkpoints")
        raise TrainingError(
            f"{longest} non-finite losses in a row (seen at step {step}; --max-nonfinite {run.s.max_nonfinite}): "
            f"the run stopped without saving; the last good checkpoint is "
            f"{good[0] if good else 'none (none saved yet)'}. "
            f"Try a lower --lr, --precision fp32, or check the shards for bad values.")
