"""torchrun support: detect the launch environment, start the process group, wrap in DDP.

Run ``torchrun --nproc_per_node N -m cli train ...`` (or ``python -m
torch.distributed.run``): torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Without
them the trainer runs as a single process and nothing here starts a group.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from float.device import resolve_device
from trainer.errors import TrainerError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(prefer_device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read torchrun's environment; start a gloo (CPU) or nccl (GPU) group when WORLD_SIZE > 1."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    try:
        device = resolve_device(prefer_device, local_rank)
    except ValueError as e:
        raise TrainerError(str(e)) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


class ModelDDP(DistributedDataParallel):
    """DDP that still exposes the wrapped model's ``cfg`` (the loss reads ``model.cfg``)."""

    @property
    def cfg(self):
        return self.module.cfg


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP-wrap when distributed (parameters are broadcast from rank 0 here); else the model itself."""
    if not info.is_distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return ModelDDP(model, device_ids=device_ids)


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max over ranks (used for stop/skip flags, so all ranks take the same branch)."""
    if info.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
