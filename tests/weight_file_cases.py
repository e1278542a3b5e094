"""Wrong weight files for the loader tests: a truncated copy, and a pickle that would run code on load."""
from __future__ import annotations

import pathlib
from pathlib import Path

import torch


class RunsCodeOnLoad:
    """Unpickling this calls Path.touch(marker): a harmless stand-in for code a hostile file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def truncated_copy(src: Path, dst: Path, keep: int = 1 << 20) -> Path:
    """The first ``keep`` bytes of ``src`` (a download cut short)."""
    with open(src, "rb") as f:
        dst.write_bytes(f.read(keep))
    return dst


def code_running_pickle(dst: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling would create ``marker``."""
    torch.save({"weight": torch.zeros(2), "payload": RunsCodeOnLoad(marker)}, dst)
    return dst


def one_line(message: str) -> bool:
    return "\n" not in message.strip()
