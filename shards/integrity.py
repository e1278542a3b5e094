"""Start-up check of a local shard folder against its manifest: training reads what ``inspect`` sees.

``floatctl inspect`` reports a shard whose size differs from the manifest (a copy cut short, a
disk that filled while it was written, a file replaced by another). The readers used to warn
and train on the samples before the cut, so a run could finish with exit 0 on a quarter of its
clips. Now a training run checks every listed shard of the splits it reads before any step:
each one's size against the manifest, and for a damaged one how many of its samples are still
whole. A damaged set is refused with each shard's name and both sizes, unless the run accepts it
knowingly (``--accept-damaged-shards``), which then says how many clips are lost.

Sizes are compared, not sha256 sums: a size costs one ``stat``, a sum reads every byte of what
may be terabytes (``floatctl inspect`` does that). Remote shards are checked as they stream
(shards/dataset.py: retry, skip, stop after a run of failures).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from shards.errors import DamagedShardsError, ShardError
from shards.format import KNOWN_MEMBERS
from shards.tar import iter_tar_samples

MAX_NAMED = 3  # damaged shards named in the one-line refusal; the rest are counted
ACCEPT_FLAG = "--accept-damaged-shards"


@dataclass
class ShardDamage:
    path: Path
    size: int  # bytes on disk (-1: missing)
    expected_size: int  # bytes the manifest gives
    whole: int  # samples still readable in full
    expected: int  # samples the manifest gives
    problem: str = ""  # e.g. "not a tar file (...)" when nothing in it is a shard

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.whole)

    def __str__(self) -> str:
        on_disk = "missing" if self.size < 0 else f"{self.size} bytes"
        problem = f"; {self.problem}" if self.problem else ""
        return (f"{self.path}: {on_disk}, manifest says {self.expected_size} "
                f"({self.whole} of {self.expected} clips readable{problem})")


def readable_samples(path: Path, known_members: Collection[str] = KNOWN_MEMBERS) -> tuple[int, str]:
    """(samples of a possibly cut-short tar that are whole, as the lenient training reader would yield them;
    why none are, when the file is no shard at all)."""
    quiet = logging.getLogger("shards.tar")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the cut is reported by our caller, once
    try:
        return sum(1 for _ in iter_tar_samples(path, read=(), known_members=known_members)), ""
    except (ShardError, OSError) as e:
        return 0, str(e).replace(f"{path}: ", "")
    finally:
        quiet.setLevel(level)


def damaged_shards(folder: str | Path, manifest: dict, splits: Collection[str],
                   known_members: Collection[str] = KNOWN_MEMBERS) -> tuple[list[ShardDamage], int]:
    """(the listed shards of ``splits`` whose size differs from the manifest, clips the splits list)."""
    folder = Path(folder)
    found, total = [], 0
    for split in splits:
        for shard in (manifest.get("splits", {}).get(split) or {}).get("shards", []):
            total += int(shard["samples"])
            path = folder / shard["name"]
            size = path.stat().st_size if path.is_file() else -1
            if size == int(shard["bytes"]):
                continue
            whole, problem = readable_samples(path, known_members) if size > 0 else (0, "")
            found.append(ShardDamage(path, size, int(shard["bytes"]), whole, int(shard["samples"]), problem))
    return found, total


def check_shard_folder(folder: str | Path, manifest: dict, splits: Collection[str], accept: bool = False,
                       known_members: Collection[str] = KNOWN_MEMBERS,
                       warn: Callable[[str], None] = print) -> int:
    """Refuse (DamagedShardsError, one line) a local folder whose listed shards differ from its manifest;
    with ``accept`` warn instead. Returns the clips lost (0 for a sound folder)."""
    damage, total = damaged_shards(folder, manifest, splits, known_members)
    if not damage:
        return 0
    lost = sum(d.lost for d in damage)
    named = "; ".join(str(d) for d in damage[:MAX_NAMED])
    more = f"; and {len(damage) - MAX_NAMED} more" if len(damage) > MAX_NAMED else ""
    summary = (f"{folder}: {len(damage)} shard(s) differ from manifest.json: {named}{more}; "
               f"{lost} of {total} clips lost")
    if not accept:
        raise DamagedShardsError(f"{summary}. `floatctl inspect {folder}` lists every problem; rewrite the shards "
                                 f"(floatctl shards), or pass {ACCEPT_FLAG} to train on the clips that remain")
    warn(f"warning: {ACCEPT_FLAG}: {summary}; training on the {total - lost} that remain")
    return lost
