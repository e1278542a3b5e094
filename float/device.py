"""Which torch device a "--device" option names: the one resolver of the project."""
from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """"auto": cuda when torch sees a GPU, else cpu; "cpu"; "cuda" / "cuda:N" (``local_rank`` for plain
    "cuda", as torchrun's processes each take their own GPU; None: the current one). ValueError names the option's problem."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        try:
            index = local_rank if name == "cuda" else torch.device(name).index
        except RuntimeError:
            index = None
        if name != "cuda" and (index is None or not name.startswith("cuda:")):
            raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
        return torch.device("cuda") if index is None else torch.device("cuda", index)
    if name != "cpu":
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")
