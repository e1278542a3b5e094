"""The learning-rate and EMA schedules: stateless functions of the step (nanoGPT's ``get_lr(it)``).

Every number of the schedule is decided here: the from-scratch peak rates per
preset, the default warmup, how a resumed run keeps its schedule, and the rate
at each step. The loop sets ``lr_at(step)`` on the optimizer before every step,
so a resumed run needs no scheduler state to retrace the same rates.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")

# From-scratch peak learning rates of the FMT: smaller transformers take larger
# steps (the tiny preset learns the synthetic set's audio-driven motion in minutes
# at 1e-3, and barely moves in the same time at 1e-4).
SCRATCH_LR = {"paper": 1e-4, "small": 3e-4, "tiny": 1e-3}
FINE_TUNE_LR = 1e-5  # the paper's rate, used with --init
COSINE_FLOOR = 0.1  # cosine decays to this fraction of the peak


def default_lr(preset: str, fine_tune: bool = False, table: dict[str, float] = SCRATCH_LR) -> float:
    if fine_tune:
        return FINE_TUNE_LR
    return table.get(preset, 1e-4)


def default_warmup(steps: int) -> int:
    """5% of the run, at most 1000 steps."""
    return min(1000, steps // 20)


LR_SCALINGS = ("none", "sqrt", "linear")
PAPER_BATCH = 8  # the paper's batch (one A100): the batch every default rate is meant for


def lr_batch_factor(rule: str, global_batch: int, reference: int = PAPER_BATCH) -> float:
    """How much a rate meant for ``reference`` samples a step grows at ``global_batch``: 1 (none), the
    square root of the ratio (sqrt: the rule for Adam, Malladi et al. 2022) or the ratio (linear: Goyal et
    al. 2017, for SGD)."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"--lr-scaling {rule!r}: choose one of {LR_SCALINGS}")
    ratio = global_batch / reference
    return {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


def resolve_schedule(lr: float | None, warmup: int, saved: dict, preset: str, steps: int,
                     fine_tune: bool = False, table: dict[str, float] = SCRATCH_LR, lr_factor: float = 1.0) -> dict:
    """{"lr", "warmup"} of a run: given values win; a resumed run keeps its saved ones; else the defaults.
    ``lr_factor`` (lr_batch_factor) scales a given or default rate, never a saved one (already scaled)."""
    return {
        "lr": lr * lr_factor if lr is not None else saved.get("lr", default_lr(preset, fine_tune, table) * lr_factor),
        "warmup": warmup if warmup >= 0 else saved.get("warmup", default_warmup(steps)),
    }


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str = "constant") -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then flat or cosine to 10%."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: choose one of {SCHEDULES}")
    if warmup > 0 and step < warmup:
        return peak * ((step + 1) / warmup)
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return peak


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up as (1 + n) / (10 + n): early steps track the weights closely, so short runs
    and fresh starts validate meaningful weights instead of the initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))
