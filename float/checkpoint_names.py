"""Checkpoint file names and the one rule for naming a checkpoint on the command line.

A training run writes ``runs/NAME/checkpoints/``:
  checkpoint_step_1000.pt ...   the last K periodic checkpoints
  final_step_3000.pt            written when a run completes (an extended run adds another)
  best_step_N.pt                --early-stop's best weights (never chosen here)
  latest                        text file naming the newest good checkpoint
Runs written before these names (``step_00001000.pt``, ``final.pt``) are still found.

Every option that takes a checkpoint (``--init``, ``--motion-ckpt``, ``sample``, ``export``,
``--resume PATH``) takes a run folder (or its ``checkpoints/``) too: ``pick_checkpoint`` chooses its
final checkpoint, else its newest one (by step; a final one before a periodic one of the same step,
so an extended run that was stopped gives its newest state), and says which file it chose.
Here in ``float/`` because both ``preprocess`` (``--motion-ckpt``) and ``trainer`` need it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from float.safe_load import CheckpointError

LATEST = "latest"
LEGACY_FINAL = "final.pt"  # step unknown from the name
STEP_NAME = re.compile(r"^(?:checkpoint_step_(\d+)|step_(\d{8}))\.pt$")
FINAL_NAME = re.compile(r"^final_step_(\d+)\.pt$")
BEST_NAME = re.compile(r"^best_step_(\d+)\.pt$")


def step_filename(step: int) -> str:
    return f"checkpoint_step_{step}.pt"


def final_filename(step: int) -> str:
    return f"final_step_{step}.pt"


def step_of_name(name: str) -> int | None:
    """The step a periodic or final checkpoint's file name carries (None for other files and final.pt)."""
    m = STEP_NAME.match(name) or FINAL_NAME.match(name)
    return None if m is None else int(next(g for g in m.groups() if g is not None))


def checkpoints_folder(folder: str | Path) -> Path:
    """A run folder's ``checkpoints/``, or the folder itself."""
    folder = Path(folder)
    return folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder


def ranked_checkpoints(folder: str | Path) -> list[tuple[int, bool, Path]]:
    """(step, is final, path) of the periodic and final checkpoints in ``folder``, newest first
    (a legacy final.pt without a step in its name comes first: it was the run's last word)."""
    ckpt_dir = checkpoints_folder(folder)
    if not ckpt_dir.is_dir():
        return []
    ranked = []
    for path in ckpt_dir.iterdir():
        if FINAL_NAME.match(path.name) or STEP_NAME.match(path.name):
            ranked.append((step_of_name(path.name), bool(FINAL_NAME.match(path.name)), path))
        elif path.name == LEGACY_FINAL and path.is_file():
            ranked.append((1 << 62, True, path))
    return sorted(ranked, key=lambda r: (r[0], r[1]), reverse=True)


def pick_checkpoint(path: str | Path, option: str = "", log: Callable[[str], None] | None = print) -> Path:
    """``path`` itself when it is a file; for a run folder its final checkpoint, else its newest one.

    ``log`` gets one line naming the file chosen in a folder; CheckpointError names the folder when it
    holds no checkpoint. A missing path is returned as it is (the loader names it)."""
    path = Path(path)
    if not path.is_dir():
        return path
    ranked = ranked_checkpoints(path)
    if not ranked:
        raise CheckpointError(f"{option + ' ' if option else ''}{path}: a folder with no checkpoint in it (expected "
                              f"a run folder with checkpoints/{final_filename(1000)} or {step_filename(1000)})")
    _, final, chosen = ranked[0]
    if log is not None:
        which = "its final checkpoint" if final else "its newest checkpoint (no final one yet)"
        log(f"{option + ': ' if option else ''}{path} is a run folder: using {chosen} ({which})")
    return chosen
